//! The chat example in a real browser: headless Chromium, driven through chromedriver with
//! `fantoccini`, against the real `examples/chat` binary on a free loopback port.
//!
//! Two users chat from two browser sessions, HTML in a message shows as text, and after the
//! server is killed and restarted on the same port both pages reconnect by themselves and
//! chat again. Every wait polls the page until a condition holds, within [`WAIT`], and every
//! WebDriver command is bounded by [`WAIT`] too (see [`bounded`]).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `CHROMIUM` and `CHROMEDRIVER` name others). Without them the test fails
//! under CI (`CI` set) and otherwise prints a notice and passes. `UPDATE_SCREENSHOT=1` also
//! writes `docs/chat.png`, the README's picture of two users chatting.
#![cfg(unix)] // chromedriver runs in its own process group, ended with `kill`

mod common;

use common::ChatServer;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Upper bound for any single wait, so a broken page fails instead of hanging.
const WAIT: Duration = Duration::from_secs(20);

/// How often a condition is checked again while waiting for it.
const POLL: Duration = Duration::from_millis(50);

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Awaits one WebDriver command (or other step) for at most [`WAIT`]: chromedriver or a
/// page that stops answering makes it an error saying what was awaited, instead of a hang.
async fn bounded<T, E>(what: &str, step: impl Future<Output = Result<T, E>>) -> Result<T>
where
    E: Into<Box<dyn std::error::Error>>,
{
    match tokio::time::timeout(WAIT, step).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(format!("timed out after {WAIT:?} waiting for {what}").into()),
    }
}

/// chromedriver in its own process group, with the browsers it starts; all killed on drop.
struct ChromeDriver {
    child: std::process::Child,
    url: String,
    profiles: Vec<PathBuf>,
}

impl ChromeDriver {
    fn start(chromedriver: &Path) -> ChromeDriver {
        // A free port: bind port 0, note it, let it go for chromedriver.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new(chromedriver)
                .args([format!("--port={port}"), "--silent".into()])
                .stdout(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()))
        };
        ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profiles: Vec::new(),
        }
    }

    /// A new browser (its own fresh profile) with a desktop-sized window.
    #[cfg_attr(not(any(feature = "redis", feature = "signalr")), allow(dead_code))]
    async fn browser(&mut self, chromium: &Path) -> Result<Client> {
        self.browser_with(chromium, &[]).await
    }

    /// A browser session with `extra` command-line switches.
    async fn browser_with(&mut self, chromium: &Path, extra: &[&str]) -> Result<Client> {
        // Unique across the tests of this process, which run side by side: two browsers
        // sharing one profile directory end each other's sessions.
        static NEXT_PROFILE: std::sync::atomic::AtomicUsize =
            std::sync::atomic::AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "websocket-handler-browser-{}-{}",
            std::process::id(),
            NEXT_PROFILE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile)?;
        self.profiles.push(profile.clone());
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-quic".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1000,700".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|arg| (*arg).to_owned()))
            .collect();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        // chromedriver may still be starting: retry until it answers, within WAIT.
        let started = Instant::now();
        loop {
            // Plain HTTP to chromedriver on loopback: no TLS needed (the `client-legacy`
            // connector comes with fantoccini's own hyper-util features).
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            // Each attempt is bounded too: chromedriver may accept and never answer.
            match bounded(
                "a browser session from chromedriver",
                ClientBuilder::new(connector)
                    .capabilities(capabilities.clone())
                    .connect(&self.url),
            )
            .await
            {
                Ok(client) => return Ok(client),
                Err(_) if started.elapsed() < WAIT => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(format!("chromedriver exited ({status})").into());
                    }
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => return Err(format!("no browser session: {error}").into()),
            }
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any browser it started that is still running.
        let group = self.child.id();
        let _ = std::process::Command::new("sh")
            .args(["-c", &format!("kill -KILL -{group} 2>/dev/null")])
            .status();
        // Killed by its id as well, so this wait ends even if the group's kill failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
        for profile in &self.profiles {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

/// Where Debian puts the browser and its driver, unless the environment says otherwise.
fn tool(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The browser and its driver, or `None` after saying the test `test` is skipped.
fn tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = tool("CHROMIUM", "/usr/bin/chromium");
    let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
    let missing: Vec<_> = [&chromium, &chromedriver]
        .into_iter()
        .filter(|path| !path.is_file())
        .collect();
    if !missing.is_empty() {
        let why =
            format!("needs {missing:?} (Debian: apt-get install -y chromium chromium-driver)");
        common::skip(test, &why);
        return None;
    }
    Some((chromium, chromedriver))
}

/// What each page showed, added to `error`, to see why a scenario failed.
async fn report(error: &dyn std::error::Error, pages: &[(&Client, &str)]) -> String {
    let mut report = error.to_string();
    for (client, name) in pages {
        let status = bounded(
            &format!("{name}'s status"),
            client.execute(
                "return document.getElementById('status').textContent;",
                vec![],
            ),
        )
        .await;
        report += &format!(
            "\n{name}'s status: {status:?}\n{name}'s lines: {:?}",
            lines(client).await
        );
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_and_reconnect_after_a_server_restart() {
    chat_and_restart_in_two_browsers(
        "browser::two_browsers_chat_and_reconnect_after_a_server_restart",
        &[],
        &[],
    )
    .await;
}

/// The restart scenario ([`chat`]) in two browsers started with the switches `flags`,
/// against a chat started with `args`; skipped (as `test`) without the browser's tools.
async fn chat_and_restart_in_two_browsers(test: &str, args: &[&str], flags: &[&str]) {
    let Some((chromium, chromedriver)) = tools(test) else {
        return;
    };
    let started = Instant::now();
    let server = ChatServer::start_with("127.0.0.1:0", args).await;
    let mut driver = ChromeDriver::start(&chromedriver);
    let alice = driver
        .browser_with(&chromium, flags)
        .await
        .expect("alice's browser");
    let bob = driver
        .browser_with(&chromium, flags)
        .await
        .expect("bob's browser");
    let mut outcome = chat(server, args, &alice, &bob).await;
    if let Err(error) = &outcome {
        outcome = Err(report(&**error, &[(&alice, "alice"), (&bob, "bob")])
            .await
            .into());
    }
    // Close the browsers whatever happened; the driver's drop ends anything left.
    let _ = bounded("alice's browser to close", alice.close()).await;
    let _ = bounded("bob's browser to close", bob.close()).await;
    drop(driver);
    if let Err(error) = outcome {
        panic!("{error}");
    }
    eprintln!("{test} took {:.1} s", started.elapsed().as_secs_f64());
}

/// The chat over HTTPS (a certificate the test makes, which the browsers are told to
/// accept): the page loads, two users chat; and the chat's `/metrics` tells over which HTTP
/// version Chromium opened its WebSockets. The chat serves TLS with the `tls` feature.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_over_https() {
    let Some((chromium, chromedriver)) = tools("browser::two_browsers_chat_over_https") else {
        return;
    };
    let (cert, key, _) = common::self_signed_certificate("browser-https");
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let server =
        ChatServer::start_with("127.0.0.1:0", &["--tls-cert", &cert, "--tls-key", &key]).await;
    let mut driver = ChromeDriver::start(&chromedriver);
    let trusting = ["--ignore-certificate-errors"];
    let alice = driver
        .browser_with(&chromium, &trusting)
        .await
        .expect("alice's browser");
    let bob = driver
        .browser_with(&chromium, &trusting)
        .await
        .expect("bob's browser");
    let mut outcome = chat_over_https(&server, &alice, &bob).await;
    if let Err(error) = &outcome {
        outcome = Err(report(&**error, &[(&alice, "alice"), (&bob, "bob")])
            .await
            .into());
    }
    let _ = bounded("alice's browser to close", alice.close()).await;
    let _ = bounded("bob's browser to close", bob.close()).await;
    drop(driver);
    match outcome {
        Ok(by_version) => eprintln!("Chromium's WebSockets over HTTPS: {by_version}"),
        Err(error) => panic!("{error}"),
    }
}

/// The first test's whole scenario (compression, markup shown as text, the server killed
/// and started again on the same port, both pages back by themselves, rooms) over HTTPS:
/// every WebSocket through the crate's TLS stream.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_and_reconnect_after_a_server_restart_over_https() {
    let (cert, key, _) = common::self_signed_certificate("browser-https-restart");
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    chat_and_restart_in_two_browsers(
        "browser::two_browsers_chat_and_reconnect_after_a_server_restart_over_https",
        &["--tls-cert", &cert, "--tls-key", &key],
        &["--ignore-certificate-errors"],
    )
    .await;
}

/// Alice and bob chat over HTTPS; returns the chat's count of WebSockets by HTTP version.
#[cfg(feature = "tls")]
async fn chat_over_https(server: &ChatServer, alice: &Client, bob: &Client) -> Result<String> {
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        join_chat(client, name, &format!("{base}/chat.htm")).await?;
    }
    wait_for_line(alice, "alice", "bob joined (2 online)", 0).await?;
    say(alice, "Hello Bob, over TLS.").await?;
    say(bob, "Hello Alice, over TLS too.").await?;
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        wait_for_line(client, name, "alice: Hello Bob, over TLS.", 0).await?;
        wait_for_line(client, name, "bob: Hello Alice, over TLS too.", 0).await?;
    }
    // Which HTTP the two WebSockets used, as the server counted them.
    bounded("the metrics page", bob.goto(&format!("{base}/metrics"))).await?;
    let metrics = bounded(
        "the metrics text",
        bob.execute("return document.body.innerText;", vec![]),
    )
    .await?;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let count = |http: &str| -> u64 {
        metrics
            .lines()
            .find(|line| {
                line.starts_with(&format!("websocket_chat_upgrades_total{{http=\"{http}\"}}"))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (http1, http2) = (count("1.1"), count("2"));
    if http1 + http2 != 2 {
        return Err(
            format!("expected 2 WebSockets counted, got {http1} + {http2}: {metrics}").into(),
        );
    }
    Ok(format!("{http2} over HTTP/2, {http1} over HTTP/1.1"))
}

/// Two chat servers sharing the room through Redis (lossless). The page is on server A;
/// A is killed; a client on server B says five things; A starts again: the page
/// reconnects, shows each of the five once, in order, and says it recovered them.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_recovers_what_was_said_while_its_server_restarted() {
    use common::redis_server::RedisServer;

    let test = "browser::a_page_recovers_what_was_said_while_its_server_restarted";
    let Some((chromium, chromedriver)) = tools(test) else {
        return;
    };
    let Some(redis) = RedisServer::start(test).await else {
        return;
    };
    let args = ["--no-notices", "--redis", &redis.url()].map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut a = ChatServer::start_with("127.0.0.1:0", &args).await;
    let mut b = ChatServer::start_with("127.0.0.1:0", &args).await;
    a.wait_for_stderr("Redis backplane: Connected").await;
    b.wait_for_stderr("Redis backplane: Connected").await;
    let mut driver = ChromeDriver::start(&chromedriver);
    let carol = driver.browser(&chromium).await.expect("carol's browser");
    let mut outcome = recover(a, &b, &args, &carol).await;
    if let Err(error) = &outcome {
        outcome = Err(report(&**error, &[(&carol, "carol")]).await.into());
    }
    let _ = bounded("carol's browser to close", carol.close()).await;
    drop(driver);
    if let Err(error) = outcome {
        panic!("{error}");
    }
}

#[cfg(feature = "redis")]
async fn recover(a: ChatServer, b: &ChatServer, args: &[&str], carol: &Client) -> Result<()> {
    use common::{next_text, send_text};

    let addr = a.addr;
    bounded(
        "carol's page to load",
        carol.goto(&format!("http://{addr}/chat.htm")),
    )
    .await?;
    let field = bounded(
        "carol's username field",
        carol.wait().for_element(Locator::Id("username")),
    )
    .await?;
    bounded(
        "carol's username to be typed",
        field.send_keys(&format!("carol{}", char::from(Key::Enter))),
    )
    .await?;
    wait_for_state(carol, "carol", "connected").await?;
    say(carol, "carol is here").await?;
    wait_for_line(carol, "carol", "carol: carol is here", 0).await?;

    // Dave, on the other server, speaks the classic protocol.
    let mut dave = common::connect(b.addr, "/api/Chat?username=dave").await;
    send_text(&mut dave, "before").await;
    wait_for_line(carol, "carol", "dave: before", 0).await?;

    a.kill().await;
    wait_for_state(carol, "carol", "reconnecting").await?;
    let missed: Vec<String> = (1..=5).map(|n| format!("missed {n}")).collect();
    for text in &missed {
        send_text(&mut dave, text).await;
    }
    // Dave sees his own lines once they are in Redis: they are there to recover.
    let mut echoed = 0;
    while echoed < missed.len() {
        if next_text(&mut dave).await.starts_with("dave: missed") {
            echoed += 1;
        }
    }

    let a = ChatServer::start_with(&addr.to_string(), args).await;
    wait_for_state(carol, "carol", "connected").await?;
    wait_for_line(carol, "carol", "Recovered 5 missed messages", 0).await?;
    send_text(&mut dave, "live again").await;
    wait_for_line(carol, "carol", "dave: live again", 0).await?;
    // Everything once, in order: the five between "before" and the notice, and no
    // line twice anywhere.
    let shown = lines(carol).await?;
    let dave_lines: Vec<&str> = shown
        .iter()
        .map(String::as_str)
        .filter(|line| line.starts_with("dave: "))
        .collect();
    let mut expected = vec!["dave: before".to_owned()];
    expected.extend(missed.iter().map(|text| format!("dave: {text}")));
    expected.push("dave: live again".into());
    if dave_lines != expected {
        return Err(format!("carol's page shows {dave_lines:?}, not {expected:?}").into());
    }
    let notice = shown
        .iter()
        .position(|line| line == "Recovered 5 missed messages");
    let last_missed = shown.iter().position(|line| line == "dave: missed 5");
    if notice < last_missed {
        return Err("the page said it recovered before showing what it recovered".into());
    }
    drop(a);
    Ok(())
}

/// The scenario itself; an error says which condition was not met in time.
/// `args` are the chat server's flags: with `--tls-cert`, all of it over HTTPS and `wss://`.
async fn chat(server: ChatServer, args: &[&str], alice: &Client, bob: &Client) -> Result<()> {
    let addr = server.addr;
    let scheme = if args.contains(&"--tls-cert") {
        "https"
    } else {
        "http"
    };
    let page = format!("{scheme}://{addr}/chat.htm");
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        join_chat(client, name, &page).await?;
    }
    // Bob is in the room once alice has seen him join: only then can he hear her.
    wait_for_line(alice, "alice", "bob joined (2 online)", 0).await?;
    // Chromium offers permessage-deflate and the chat takes it.
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        let extensions = bounded(
            &format!("{name}'s WebSocket extensions"),
            client.execute("return socket ? socket.extensions : null;", vec![]),
        )
        .await?;
        if !extensions
            .as_str()
            .is_some_and(|agreed| agreed.starts_with("permessage-deflate"))
        {
            return Err(format!(
                "{name}'s WebSocket did not agree permessage-deflate: {extensions}"
            )
            .into());
        }
    }
    // Long enough to go compressed (over the 256-byte threshold), both ways.
    let words: Vec<String> = (0..60).map(|n| format!("word{n}")).collect();
    let long = format!("A long one, to see compression work: {}", words.join(" "));
    say(alice, &long).await?;
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        wait_for_line(client, name, &format!("alice: {long}"), 0).await?;
    }

    say(alice, "Hi Bob! Is the new chat page working for you?").await?;
    say(
        bob,
        "It is: I see who is online, and <b>bold</b> stays text.",
    )
    .await?;
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        wait_for_line(
            client,
            name,
            "alice: Hi Bob! Is the new chat page working for you?",
            0,
        )
        .await?;
        wait_for_line(
            client,
            name,
            "bob: It is: I see who is online, and <b>bold</b> stays text.",
            0,
        )
        .await?;
        // The markup was shown, not parsed: no <b> element anywhere on the page.
        let bold = bounded(
            &format!("{name}'s count of <b> elements"),
            client.execute("return document.getElementsByTagName('b').length;", vec![]),
        )
        .await?;
        if bold != json!(0) {
            return Err(format!("{name}'s page made <b> elements from a message: {bold}").into());
        }
    }
    say(alice, "Great. Let me restart the server and see.").await?;
    wait_for_line(
        bob,
        "bob",
        "alice: Great. Let me restart the server and see.",
        0,
    )
    .await?;

    if std::env::var_os("UPDATE_SCREENSHOT").is_some_and(|value| value == "1") {
        let png = bounded("alice's screenshot", alice.screenshot()).await?;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/chat.png");
        std::fs::write(&path, png)?;
        eprintln!("wrote {}", path.display());
    }

    // The server goes away; both pages say so and keep trying.
    let before_alice = lines(alice).await?.len();
    let before_bob = lines(bob).await?.len();
    server.kill().await;
    wait_for_state(alice, "alice", "reconnecting").await?;
    wait_for_state(bob, "bob", "reconnecting").await?;

    // Back on the same port: both pages return by themselves.
    let server = ChatServer::start_with(&addr.to_string(), args).await;
    assert_eq!(server.addr, addr);
    wait_for_state(alice, "alice", "connected").await?;
    wait_for_state(bob, "bob", "connected").await?;
    // The new process has no history of the old one's room: each page says so.
    for (client, name, before) in [(alice, "alice", before_alice), (bob, "bob", before_bob)] {
        wait_for(name, "that it could not recover what it missed", || async {
            Ok(lines(client).await?[before..]
                .iter()
                .any(|line| line.starts_with("Could not recover the messages you missed")))
        })
        .await?;
    }
    // Whoever came back second was announced to both as the second one online.
    for (client, name, before) in [(alice, "alice", before_alice), (bob, "bob", before_bob)] {
        wait_for(
            name,
            "a join notice with 2 online after the restart",
            || async {
                Ok(lines(client).await?[before..]
                    .iter()
                    .any(|line| line.ends_with(" joined (2 online)")))
            },
        )
        .await?;
    }
    say(bob, "Back again!").await?;
    say(alice, "Me too.").await?;
    for (client, name, before) in [(alice, "alice", before_alice), (bob, "bob", before_bob)] {
        wait_for_line(client, name, "bob: Back again!", before).await?;
        wait_for_line(client, name, "alice: Me too.", before).await?;
    }

    // Rooms: alice moves with a command; the page shows her new room, and each room keeps
    // its messages.
    say(alice, "/join red").await?;
    wait_for_line(alice, "alice", "You are in room red", before_alice).await?;
    wait_for_line(bob, "bob", "alice left (1 online)", before_bob).await?;
    wait_for("alice", "the room shown as \"# red\"", || async {
        let room = alice.find(Locator::Id("room-name")).await?.text().await?;
        Ok(room == "# red")
    })
    .await?;
    say(bob, "Lobby only.").await?;
    say(alice, "Red only.").await?;
    wait_for_line(bob, "bob", "bob: Lobby only.", before_bob).await?;
    wait_for_line(alice, "alice", "alice: Red only.", before_alice).await?;
    // Each sender's own line is out, so the other room's broadcast is over: nothing crossed.
    for (client, name, foreign) in [
        (alice, "alice", "bob: Lobby only."),
        (bob, "bob", "alice: Red only."),
    ] {
        if lines(client).await?.iter().any(|line| line == foreign) {
            return Err(format!("{name} saw {foreign:?} from another room").into());
        }
    }
    drop(server);
    Ok(())
}

/// Types a message and presses Enter.
/// Opens the chat page at `page` and joins as `name`, until the page says it is connected.
async fn join_chat(client: &Client, name: &str, page: &str) -> Result<()> {
    bounded(&format!("{name}'s page to load"), client.goto(page)).await?;
    let field = bounded(
        &format!("{name}'s username field"),
        client.wait().for_element(Locator::Id("username")),
    )
    .await?;
    // Enter submits the form, as a person would.
    bounded(
        &format!("{name}'s username to be typed"),
        field.send_keys(&format!("{name}{}", char::from(Key::Enter))),
    )
    .await?;
    wait_for_state(client, name, "connected").await
}

async fn say(client: &Client, text: &str) -> Result<()> {
    let input = bounded("the input box", client.find(Locator::Id("inputbox"))).await?;
    bounded(
        &format!("{text:?} to be typed"),
        input.send_keys(&format!("{text}{}", char::from(Key::Enter))),
    )
    .await?;
    Ok(())
}

/// The text of every line in the message list, oldest first.
async fn lines(client: &Client) -> Result<Vec<String>> {
    let value = bounded(
        "the page's lines",
        client.execute(
            "return Array.from(document.querySelectorAll('#messages li'), li => li.textContent);",
            vec![],
        ),
    )
    .await?;
    Ok(serde_json::from_value(value)?)
}

/// Waits until the page lists `line`, exactly, at index `from` or later.
async fn wait_for_line(client: &Client, name: &str, line: &str, from: usize) -> Result<()> {
    wait_for(name, &format!("the line {line:?}"), || async {
        Ok(lines(client)
            .await?
            .iter()
            .skip(from)
            .any(|shown| shown == line))
    })
    .await
}

/// Waits until the page's connection state (`#status[data-state]`) is `state`.
async fn wait_for_state(client: &Client, name: &str, state: &str) -> Result<()> {
    wait_for(name, &format!("the state {state:?}"), || async {
        let status = client.find(Locator::Id("status")).await?;
        Ok(status.attr("data-state").await?.as_deref() == Some(state))
    })
    .await
}

/// Checks `condition` every [`POLL`] until it holds; an error after [`WAIT`], or if one
/// check takes longer than [`WAIT`].
async fn wait_for<F, Fut>(name: &str, what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        let check = format!("{name}'s page to answer a check for {what}");
        if bounded(&check, condition()).await? {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            return Err(format!("{name}'s page did not show {what} within {WAIT:?}").into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The SignalR example's page (`examples/signalr_chat.htm`, on the npm client that the
/// example serves from `tests/signalr/node_modules`), or `None` after saying the test is
/// skipped.
#[cfg(feature = "signalr")]
fn signalr_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let client = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/signalr/node_modules/@microsoft/signalr/dist/browser/signalr.js");
    if !client.is_file() {
        common::skip(
            test,
            "the SignalR client is not installed: run `npm ci` in tests/signalr",
        );
        return None;
    }
    tools(test)
}

/// Two browsers on the SignalR example's page: each one's `SendMessage` reaches the other
/// as `ReceiveMessage`; groups reach their members only; a `Counter` stream shows item by
/// item and completes.
#[cfg(feature = "signalr")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalr_pages_chat_in_groups_and_show_a_stream() {
    use common::signalr_example::SignalrExample;

    let test = "browser::signalr_pages_chat_in_groups_and_show_a_stream";
    let Some((chromium, chromedriver)) = signalr_tools(test) else {
        return;
    };
    let example = SignalrExample::start("127.0.0.1:0").await;
    let mut driver = ChromeDriver::start(&chromedriver);
    let alice = driver.browser(&chromium).await.expect("alice's browser");
    let bob = driver.browser(&chromium).await.expect("bob's browser");
    let mut outcome = signalr_chat(&example, &alice, &bob).await;
    if let Err(error) = &outcome {
        outcome = Err(
            signalr_report(&**error, &[(&alice, "alice"), (&bob, "bob")])
                .await
                .into(),
        );
    }
    let _ = bounded("alice's browser to close", alice.close()).await;
    let _ = bounded("bob's browser to close", bob.close()).await;
    drop(driver);
    if let Err(error) = outcome {
        panic!("{error}");
    }
}

#[cfg(feature = "signalr")]
async fn signalr_chat(
    example: &common::signalr_example::SignalrExample,
    alice: &Client,
    bob: &Client,
) -> Result<()> {
    let page = format!("http://{}/", example.addr);
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        bounded(&format!("{name}'s page to load"), client.goto(&page)).await?;
        wait_for_status(client, name, "connected").await?;
        fill(client, "user", name).await?;
    }
    // SendMessage: every page shows it (the sender's own too).
    send_to_all(alice, "Hello Bob, from SignalR.").await?;
    send_to_all(bob, "Hello Alice.").await?;
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        wait_for_signalr_line(client, name, "alice: Hello Bob, from SignalR.").await?;
        wait_for_signalr_line(client, name, "bob: Hello Alice.").await?;
    }

    // Groups: alice alone in red, then both, then bob alone.
    join_or_leave(alice, "alice", "join", "red").await?;
    send_to_group(alice, "red", "Red, alice only.").await?;
    wait_for_signalr_line(alice, "alice", "alice: Red, alice only.").await?;
    // Alice's calls run in order: once bob has her next message to all, he would have
    // had the group's before it.
    send_to_all(alice, "Back in the lobby.").await?;
    wait_for_signalr_line(bob, "bob", "alice: Back in the lobby.").await?;
    not_shown(bob, "bob", "alice: Red, alice only.").await?;

    join_or_leave(bob, "bob", "join", "red").await?;
    send_to_group(bob, "red", "Red, both of us.").await?;
    for (client, name) in [(alice, "alice"), (bob, "bob")] {
        wait_for_signalr_line(client, name, "bob: Red, both of us.").await?;
    }
    join_or_leave(alice, "alice", "leave", "red").await?;
    send_to_group(bob, "red", "Red, bob only.").await?;
    wait_for_signalr_line(bob, "bob", "bob: Red, bob only.").await?;
    send_to_all(bob, "Lobby again.").await?;
    wait_for_signalr_line(alice, "alice", "bob: Lobby again.").await?;
    not_shown(alice, "alice", "bob: Red, bob only.").await?;

    // A stream: Counter(5, 100 ms), each item shown as it comes, then its completion.
    fill(alice, "count", "5").await?;
    click(alice, "count-up").await?;
    wait_for("alice", "the counter at 0 1 2 (or further)", || async {
        Ok(counter(alice).await?.starts_with("0 1 2"))
    })
    .await?;
    wait_for("alice", "the counter done at 0 1 2 3 4", || async {
        Ok(counter(alice).await? == "0 1 2 3 4 (done)")
    })
    .await?;
    Ok(())
}

/// A page on `localhost` whose hub is on `127.0.0.1`, another origin: the JavaScript client
/// sends negotiate with credentials after a CORS preflight. A hub that allows the page's
/// origin answers both and the page chats; one that allows only its own origin refuses,
/// and the page says it failed (though that hub serves its own page).
#[cfg(feature = "signalr")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signalr_page_negotiates_with_a_hub_of_another_origin_only_if_allowed() {
    use common::signalr_example::SignalrExample;

    let test = "browser::a_signalr_page_negotiates_with_a_hub_of_another_origin_only_if_allowed";
    let Some((chromium, chromedriver)) = signalr_tools(test) else {
        return;
    };
    // The page's server, and two hubs: one allowing the page's origin, one its own only.
    let pages = SignalrExample::start("127.0.0.1:0").await;
    let page_origin = format!("http://localhost:{}", pages.addr.port());
    let allowing = SignalrExample::start_with(
        "127.0.0.1:0",
        &["--same-origin", "--allowed-origin", &page_origin],
    )
    .await;
    let refusing = SignalrExample::start_with("127.0.0.1:0", &["--same-origin"]).await;
    let mut driver = ChromeDriver::start(&chromedriver);
    let carol = driver.browser(&chromium).await.expect("carol's browser");
    let mut outcome = async {
        let page = |hub: &SignalrExample| format!("{page_origin}/?hub={}", hub.hub_url());
        bounded("carol's page to load", carol.goto(&page(&allowing))).await?;
        wait_for_status(&carol, "carol", "connected").await?;
        fill(&carol, "user", "carol").await?;
        send_to_all(&carol, "Across origins.").await?;
        wait_for_signalr_line(&carol, "carol", "carol: Across origins.").await?;

        // The refusing hub works for its own page...
        let own = format!("http://{}/", refusing.addr);
        bounded("carol's page to load", carol.goto(&own)).await?;
        wait_for_status(&carol, "carol", "connected").await?;
        // ...and not for the page of another origin: negotiate is refused (the browser
        // has no CORS headers to let the page read the answer).
        bounded("carol's page to load", carol.goto(&page(&refusing))).await?;
        wait_for(
            "carol",
            "the status \"failed: ...negotiation...\"",
            || async {
                let status = status(&carol).await?;
                Ok(status.starts_with("failed: ") && status.contains("negotiation"))
            },
        )
        .await
    }
    .await;
    if let Err(error) = &outcome {
        outcome = Err(signalr_report(&**error, &[(&carol, "carol")]).await.into());
    }
    let _ = bounded("carol's browser to close", carol.close()).await;
    drop(driver);
    if let Err(error) = outcome {
        panic!("{error}");
    }
}

/// What each SignalR page showed, added to `error`.
#[cfg(feature = "signalr")]
async fn signalr_report(error: &dyn std::error::Error, pages: &[(&Client, &str)]) -> String {
    let mut report = error.to_string();
    for (client, name) in pages {
        report += &format!(
            "\n{name}'s status: {:?}\n{name}'s lines: {:?}\n{name}'s counter: {:?}",
            status(client).await,
            signalr_lines(client).await,
            counter(client).await
        );
    }
    report
}

/// The text of the SignalR page's status.
#[cfg(feature = "signalr")]
async fn status(client: &Client) -> Result<String> {
    let status = bounded("the status", client.find(Locator::Id("status"))).await?;
    bounded("the status's text", status.text()).await
}

/// Waits until the SignalR page's status says `state`.
#[cfg(feature = "signalr")]
async fn wait_for_status(client: &Client, name: &str, state: &str) -> Result<()> {
    wait_for(name, &format!("the status {state:?}"), || async {
        Ok(status(client).await? == state)
    })
    .await
}

/// The text of the SignalR page's counter.
#[cfg(feature = "signalr")]
async fn counter(client: &Client) -> Result<String> {
    let counter = bounded("the counter", client.find(Locator::Id("counter"))).await?;
    bounded("the counter's text", counter.text()).await
}

/// Replaces the text of the field `id` with `text`.
#[cfg(feature = "signalr")]
async fn fill(client: &Client, id: &str, text: &str) -> Result<()> {
    let field = bounded(&format!("the field #{id}"), client.find(Locator::Id(id))).await?;
    bounded(&format!("#{id} to be cleared"), field.clear()).await?;
    bounded(
        &format!("{text:?} to be typed in #{id}"),
        field.send_keys(text),
    )
    .await?;
    Ok(())
}

#[cfg(feature = "signalr")]
async fn click(client: &Client, id: &str) -> Result<()> {
    let button = bounded(&format!("the button #{id}"), client.find(Locator::Id(id))).await?;
    bounded(&format!("a click on #{id}"), button.click()).await?;
    Ok(())
}

/// Types `text` as the message and presses Enter: `SendMessage(user, text)`.
#[cfg(feature = "signalr")]
async fn send_to_all(client: &Client, text: &str) -> Result<()> {
    fill(
        client,
        "message",
        &format!("{text}{}", char::from(Key::Enter)),
    )
    .await
}

/// `SendToGroup(group, user, text)`, with the page's button.
#[cfg(feature = "signalr")]
async fn send_to_group(client: &Client, group: &str, text: &str) -> Result<()> {
    fill(client, "group", group).await?;
    fill(client, "message", text).await?;
    click(client, "send-group").await
}

/// `JoinGroup` or `LeaveGroup` (`action`: "join" or "leave"), until the page says it is done.
#[cfg(feature = "signalr")]
async fn join_or_leave(client: &Client, name: &str, action: &str, group: &str) -> Result<()> {
    fill(client, "group", group).await?;
    click(client, action).await?;
    let done = if action == "join" { "joined" } else { "left" };
    wait_for_signalr_line(client, name, &format!("You {done} {group}")).await
}

/// The SignalR page's lines, oldest first: `user: message`, or the page's own notes.
#[cfg(feature = "signalr")]
async fn signalr_lines(client: &Client) -> Result<Vec<String>> {
    let value = bounded(
        "the page's lines",
        client.execute(
            "return Array.from(document.querySelectorAll('#messages li'), li => \
               li.className === 'note' ? li.textContent \
               : li.firstChild.textContent + ': ' + li.lastChild.textContent);",
            vec![],
        ),
    )
    .await?;
    Ok(serde_json::from_value(value)?)
}

#[cfg(feature = "signalr")]
async fn wait_for_signalr_line(client: &Client, name: &str, line: &str) -> Result<()> {
    wait_for(name, &format!("the line {line:?}"), || async {
        Ok(signalr_lines(client)
            .await?
            .iter()
            .any(|shown| shown == line))
    })
    .await
}

/// Fails if the SignalR page shows `line`.
#[cfg(feature = "signalr")]
async fn not_shown(client: &Client, name: &str, line: &str) -> Result<()> {
    if signalr_lines(client)
        .await?
        .iter()
        .any(|shown| shown == line)
    {
        return Err(format!("{name}'s page shows {line:?}, which was not for it").into());
    }
    Ok(())
}

//! The chat example end to end: the real `examples/chat` binary on a free loopback port, with
//! real WebSocket and HTTP clients.

mod common;

use common::{http_get, next_text, send_text, within, ChatServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// Whether `text` is one of the chat's join or leave notices, `NAME joined (N online)` or
/// `NAME left (N online)`.
fn is_notice(text: &str) -> bool {
    let Some(rest) = text.strip_suffix(" online)") else {
        return false;
    };
    let Some((before, count)) = rest.rsplit_once(" (") else {
        return false;
    };
    !count.is_empty()
        && count.chars().all(|c| c.is_ascii_digit())
        && (before.ends_with(" joined") || before.ends_with(" left"))
}

/// The next chat line (`NAME: text`) a client receives, skipping join and leave notices.
async fn next_chat(client: &mut common::Client) -> String {
    loop {
        let text = next_text(client).await;
        if !is_notice(&text) {
            return text;
        }
    }
}

#[tokio::test]
async fn two_users_chat_and_see_each_other() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let mut alice = common::connect(server.addr, "/api/Chat?username=alice").await;

    // A user's own echo proves they are in the room.
    send_text(&mut alice, "alice here").await;
    assert_eq!(next_chat(&mut alice).await, "alice: alice here");
    let mut bob = common::connect(server.addr, "/api/Chat?username=B%C3%B6b").await;
    send_text(&mut bob, "hi alice").await;
    assert_eq!(next_chat(&mut bob).await, "Böb: hi alice");
    assert_eq!(next_chat(&mut alice).await, "Böb: hi alice");

    send_text(&mut alice, "hello <b>bob</b>").await;
    assert_eq!(next_chat(&mut alice).await, "alice: hello <b>bob</b>");
    assert_eq!(next_chat(&mut bob).await, "alice: hello <b>bob</b>");

    // When alice leaves, bob keeps chatting alone.
    drop(alice);
    send_text(&mut bob, "anyone?").await;
    assert_eq!(next_chat(&mut bob).await, "Böb: anyone?");
}

/// Everyone sees who joins and leaves, with how many are online, counted by the room itself.
#[tokio::test]
async fn join_and_leave_notices_carry_the_online_count() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let mut alice = common::connect(server.addr, "/api/Chat?username=alice").await;
    assert_eq!(next_text(&mut alice).await, "alice joined (1 online)");
    let mut bob = common::connect(server.addr, "/api/Chat?username=bob").await;
    assert_eq!(next_text(&mut bob).await, "bob joined (2 online)");
    assert_eq!(next_text(&mut alice).await, "bob joined (2 online)");

    // Chat lines keep their exact `NAME: text` form between the notices.
    send_text(&mut bob, "hi").await;
    assert_eq!(next_text(&mut bob).await, "bob: hi");
    assert_eq!(next_text(&mut alice).await, "bob: hi");

    let mut carol = common::connect(server.addr, "/api/Chat?username=carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(next_text(client).await, "carol joined (3 online)");
    }

    // A clean close and a vanished client are both announced, without the one who left.
    within("bob's close", bob.close(None)).await.expect("close");
    assert_eq!(next_text(&mut alice).await, "bob left (2 online)");
    assert_eq!(next_text(&mut carol).await, "bob left (2 online)");
    drop(carol);
    assert_eq!(next_text(&mut alice).await, "carol left (1 online)");

    send_text(&mut alice, "alone").await;
    assert_eq!(next_text(&mut alice).await, "alice: alone");
}

#[tokio::test]
async fn page_and_routes() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let page = http_get(server.addr, "/chat.htm", "").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html"));
    assert!(page.contains("/api/Chat?username="));
    assert!(page.contains("textContent"), "messages are shown as text");
    assert!(
        !page.contains("innerHTML"),
        "messages must never be parsed as HTML"
    );
    for state in ["connecting", "connected", "reconnecting", "closed"] {
        assert!(page.contains(&format!("\"{state}\"")), "state {state}");
    }
    assert!(!page.contains("<script src"), "no external scripts");

    let root = http_get(server.addr, "/", "").await;
    assert!(root.starts_with("HTTP/1.1 302"), "{root}");
    assert!(root.to_ascii_lowercase().contains("location: /chat.htm"));

    let missing = http_get(server.addr, "/nope", "").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

/// The headers of a valid WebSocket upgrade request, for [`http_get`].
const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn missing_or_empty_username_is_refused_with_400() {
    let server = ChatServer::start("127.0.0.1:0").await;
    for target in [
        "/api/Chat",
        "/api/Chat?username=",
        "/api/Chat?username=%20",
        "/api/Chat?other=1",
    ] {
        let response = http_get(server.addr, target, UPGRADE).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{target}: {response}");
        assert!(
            response.contains("missing username"),
            "{target}: {response}"
        );
    }
    let response = http_get(server.addr, "/api/Chat?username=%FF", UPGRADE).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("UTF-8"), "{response}");
}

#[tokio::test]
async fn too_long_or_control_character_usernames_are_refused_with_400() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let too_long = "username too long: at most 32 characters";
    let control = "invalid username: control characters are not allowed";
    let cases = [
        // 10 KiB: hyper accepts the URI, so the example itself answers.
        (
            format!("/api/Chat?username={}", "a".repeat(10 * 1024)),
            too_long,
        ),
        // 33 characters (66 bytes of UTF-8) is one too many.
        (
            format!("/api/Chat?username={}", "%C3%A9".repeat(33)),
            too_long,
        ),
        ("/api/Chat?username=al%07ice".to_owned(), control),
        ("/api/Chat?username=a%0Ab".to_owned(), control),
        ("/api/Chat?username=%7F".to_owned(), control),
    ];
    for (target, problem) in cases {
        let response = http_get(server.addr, &target, UPGRADE).await;
        let shown = &target[..target.len().min(60)];
        assert!(response.starts_with("HTTP/1.1 400"), "{shown}: {response}");
        assert!(
            response.ends_with(&format!("\r\n\r\n{problem}\n")),
            "{shown}: {response}"
        );
    }
}

#[tokio::test]
async fn unusual_but_valid_usernames_are_accepted() {
    let server = ChatServer::start("127.0.0.1:0").await;
    // "Zoë 🙂": a non-ASCII letter, a space and an emoji.
    let mut zoe = common::connect(server.addr, "/api/Chat?username=Zo%C3%AB%20%F0%9F%99%82").await;
    send_text(&mut zoe, "hi").await;
    assert_eq!(next_chat(&mut zoe).await, "Zoë 🙂: hi");

    // Surrounding whitespace (a tab included) is trimmed; `+` reads as a space.
    let mut bob = common::connect(server.addr, "/api/Chat?username=%09+bob+").await;
    send_text(&mut bob, "hi").await;
    assert_eq!(next_chat(&mut bob).await, "bob: hi");
    assert_eq!(next_chat(&mut zoe).await, "bob: hi");

    // 32 characters is the limit, counted in characters: 64 bytes of UTF-8 still fit.
    let path = format!("/api/Chat?username={}", "%C3%A9".repeat(32));
    let mut long = common::connect(server.addr, &path).await;
    send_text(&mut long, "hi").await;
    assert_eq!(
        next_chat(&mut long).await,
        format!("{}: hi", "é".repeat(32))
    );
}

/// The benchmark tooling works: `examples/loadgen` drives the chat example, every broadcast
/// reaches every client, and the JSON line carries the figures the benchmarks read.
#[tokio::test]
async fn loadgen_drives_the_chat_example_without_losing_a_message() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let loadgen = common::example_binary("loadgen");
    let pid = server.child.id().expect("chat example pid").to_string();
    let url = format!("ws://{}/api/Chat", server.addr);
    let run = Command::new(&loadgen)
        .args(["--url", &url, "--clients", "20", "--senders", "2"])
        .args([
            "--duration",
            "1",
            "--warmup",
            "0",
            "--quiet",
            "--server-pid",
            &pid,
        ])
        .output();
    let output = tokio::time::timeout(WAIT * 3, run)
        .await
        .expect("loadgen finished in time")
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| json_number(&stdout, name);
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    assert!(field("deliveries") >= 20.0, "{stdout}");
    assert_eq!(field("lost"), 0.0, "{stdout}");
    assert_eq!(
        field("deliveries"),
        field("expected_deliveries"),
        "{stdout}"
    );
    assert!(field("server_rss_kib_connected") > 0.0, "{stdout}");
    assert!(stdout.contains("\"errors\":[]"), "{stdout}");
}

/// The number `name` of loadgen's JSON line.
fn json_number(stdout: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let start = stdout
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {stdout}"))
        + key.len();
    let value: String = stdout[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {stdout}"))
}

/// `loadgen --rooms`: every client joins its room through the chat's `/join` before the run,
/// and a broadcast is expected at its room's clients only, which is what the chat delivers:
/// nothing lost, nothing from another room.
#[tokio::test]
async fn loadgen_in_rooms_expects_each_broadcast_at_its_rooms_clients() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let loadgen = common::example_binary("loadgen");
    let url = format!("ws://{}/api/Chat", server.addr);
    let run = Command::new(&loadgen)
        .args(["--url", &url, "--clients", "20", "--senders", "4"])
        .args([
            "--rooms",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--quiet",
        ])
        .output();
    let output = tokio::time::timeout(WAIT * 3, run)
        .await
        .expect("loadgen finished in time")
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| json_number(&stdout, name);
    assert_eq!(field("rooms"), 4.0, "{stdout}");
    assert!(field("deliveries") >= 5.0, "{stdout}");
    // 20 clients in 4 rooms, one sender in each: every broadcast for 5 clients.
    assert_eq!(
        field("expected_deliveries"),
        field("sent") * 5.0,
        "{stdout}"
    );
    assert_eq!(
        field("deliveries"),
        field("expected_deliveries"),
        "{stdout}"
    );
    assert_eq!(field("lost"), 0.0, "{stdout}");
    assert_eq!(field("wrong_room"), 0.0, "{stdout}");
    assert_eq!(field("gaps") + field("reordered"), 0.0, "{stdout}");
    assert!(stdout.contains("\"errors\":[]"), "{stdout}");
}

/// Only the chat's own page may connect: another site's page gets 403 before the upgrade.
#[tokio::test]
async fn only_pages_of_the_chat_itself_may_connect() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = ChatServer::start("127.0.0.1:0").await;
    let evil = format!("{UPGRADE}Origin: http://evil.example\r\n");
    let response = http_get(server.addr, "/api/Chat?username=eve", &evil).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");

    let mut request = format!("ws://{}/api/Chat?username=ann", server.addr)
        .into_client_request()
        .expect("request");
    let origin = format!("http://{}", server.addr);
    request
        .headers_mut()
        .insert("Origin", origin.parse().expect("origin header"));
    let (mut ann, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .expect("the chat's own origin is accepted");
    send_text(&mut ann, "hi").await;
    assert_eq!(next_chat(&mut ann).await, "ann: hi");
}

/// Ctrl-C (SIGINT) stops the chat gracefully: each user gets close code 1001, and the
/// process exits successfully.
#[tokio::test]
async fn ctrl_c_says_goodbye_with_1001_and_exits() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let mut ann = common::connect(server.addr, "/api/Chat?username=ann").await;
    send_text(&mut ann, "bye all").await;
    assert_eq!(next_chat(&mut ann).await, "ann: bye all");
    server.ctrl_c_expecting_goodbye(&mut ann).await;
}

/// A client that connects and never sends its request is disconnected (handshake timeout).
#[tokio::test]
async fn a_client_that_never_sends_its_request_is_dropped() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let mut stream = within("a TCP connection", TcpStream::connect(server.addr))
        .await
        .expect("connect");
    within(
        "the partial request to be written",
        stream.write_all(b"GET /api/Chat?user"),
    )
    .await
    .expect("partial request");
    let mut rest = Vec::new();
    // The example's handshake timeout is 10 s; give it twice as long to act.
    tokio::time::timeout(WAIT * 2, stream.read_to_end(&mut rest))
        .await
        .expect("server closes the connection")
        .expect("read");
}

/// Rooms: `?room=` picks one (default `lobby`), messages and notices stay in their room,
/// `/join ROOM` moves, and `/msg NAME text` reaches every tab of one user.
#[tokio::test]
async fn rooms_keep_their_messages_and_users_can_move_and_whisper() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let mut ann = common::connect(server.addr, "/api/Chat?username=ann").await;
    assert_eq!(next_text(&mut ann).await, "ann joined (1 online)");
    let mut bob = common::connect(server.addr, "/api/Chat?username=bob&room=red").await;
    assert_eq!(
        next_text(&mut bob).await,
        "bob joined (1 online)",
        "red is a room of its own"
    );
    let mut cat = common::connect(server.addr, "/api/Chat?username=cat&room=red").await;
    assert_eq!(next_text(&mut cat).await, "cat joined (2 online)");
    assert_eq!(next_text(&mut bob).await, "cat joined (2 online)");

    send_text(&mut bob, "red only").await;
    assert_eq!(next_text(&mut bob).await, "bob: red only");
    assert_eq!(next_text(&mut cat).await, "bob: red only");
    // ann, in the lobby, saw none of it: her next line is her own.
    send_text(&mut ann, "lobby only").await;
    assert_eq!(next_text(&mut ann).await, "ann: lobby only");

    // ann moves to red: the lobby (empty now) is gone, red sees her arrive, she is told.
    send_text(&mut ann, "/join red").await;
    for client in [&mut bob, &mut cat, &mut ann] {
        assert_eq!(next_text(client).await, "ann joined (3 online)");
    }
    assert_eq!(next_text(&mut ann).await, "You are in room red");
    send_text(&mut ann, "hi red").await;
    for client in [&mut bob, &mut cat, &mut ann] {
        assert_eq!(next_text(client).await, "ann: hi red");
    }
    // cat leaves red for blue: red hears it, and so does cat's new room's one member (cat).
    send_text(&mut cat, "/join blue").await;
    assert_eq!(next_text(&mut ann).await, "cat left (2 online)");
    assert_eq!(next_text(&mut bob).await, "cat left (2 online)");
    assert_eq!(next_text(&mut cat).await, "cat joined (1 online)");
    assert_eq!(next_text(&mut cat).await, "You are in room blue");
    send_text(&mut cat, "/join no spaces allowed").await;
    assert!(
        next_text(&mut cat)
            .await
            .starts_with("Cannot join: invalid room name"),
        "a bad room name is refused"
    );

    // A private message reaches both of bob's tabs and ann's own, and nobody else.
    let mut bob_tab2 = common::connect(server.addr, "/api/Chat?username=bob&room=green").await;
    assert_eq!(next_text(&mut bob_tab2).await, "bob joined (1 online)");
    send_text(&mut ann, "/msg bob psst").await;
    assert_eq!(next_text(&mut bob).await, "ann → bob: psst");
    assert_eq!(next_text(&mut bob_tab2).await, "ann → bob: psst");
    assert_eq!(next_text(&mut ann).await, "ann → bob: psst");
    send_text(&mut ann, "/msg nobody hello?").await;
    assert_eq!(
        next_text(&mut ann).await,
        "Cannot send: nobody is not online"
    );
    send_text(&mut cat, "still alone").await;
    assert_eq!(
        next_text(&mut cat).await,
        "cat: still alone",
        "cat got no whisper"
    );
}

#[tokio::test]
async fn a_bad_room_name_is_refused_with_400() {
    let server = ChatServer::start("127.0.0.1:0").await;
    for (room, why) in [
        ("a%20b", "invalid room name"),
        (&"r".repeat(33), "room name too long"),
        ("", "missing room name"),
    ] {
        let response = http_get(
            server.addr,
            &format!("/api/Chat?username=ann&room={room}"),
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{room}: {response}");
        assert!(response.contains(why), "{room}: {response}");
    }
}

/// `/metrics` is the crate's counters in the Prometheus text format.
#[tokio::test]
async fn metrics_endpoint_counts_connections_messages_and_closes() {
    let server = ChatServer::start("127.0.0.1:0").await;
    let mut ann = common::connect(server.addr, "/api/Chat?username=ann").await;
    assert_eq!(next_text(&mut ann).await, "ann joined (1 online)");
    send_text(&mut ann, "hello").await;
    assert_eq!(next_text(&mut ann).await, "ann: hello");
    let mut bob = common::connect(server.addr, "/api/Chat?username=bob").await;
    assert_eq!(next_text(&mut bob).await, "bob joined (2 online)");
    assert_eq!(next_text(&mut ann).await, "bob joined (2 online)");
    within("bob's close", bob.close(None)).await.expect("close");
    assert_eq!(next_text(&mut ann).await, "bob left (1 online)");

    // Sent: ann got 4 lines (her join, her echo, bob's join and leave), bob 1 (his join).
    // A message is counted just after its write returns, so a client can read it a moment
    // before it is counted: ask again until the count is there.
    let deadline = tokio::time::Instant::now() + WAIT;
    let response = loop {
        let response = http_get(server.addr, "/metrics", "").await;
        if response
            .lines()
            .any(|l| l == "websocket_messages_sent_total 5")
        {
            break response;
        }
        assert!(tokio::time::Instant::now() < deadline, "{response}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/plain; version=0.0.4"), "{response}");
    for line in [
        "# TYPE websocket_connections_open gauge",
        "websocket_connections_open 1",
        "websocket_connections_opened_total 2",
        "websocket_messages_received_total 1",
        "websocket_received_bytes_total 5",
        "websocket_closes_total{code=\"1005\"} 1",
        "websocket_chat_rooms 1",
    ] {
        assert!(
            response.lines().any(|l| l == line),
            "no line {line:?} in:\n{response}"
        );
    }
}

/// `loadgen --idle --control` (what `bench/scale.py` drives): two processes of idle clients
/// on one server, from two loopback source addresses, with usernames that do not collide;
/// a probe sent by one process's client 0 reaches every client of both, and each process
/// answers on stdout when its clients have it.
#[tokio::test]
async fn loadgen_control_times_one_broadcast_across_processes() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let server = ChatServer::start_with("127.0.0.1:0", &["--no-notices"]).await;
    let loadgen = common::example_binary("loadgen");
    let url = format!("ws://{}/api/Chat", server.addr);
    let mut gens = Vec::new();
    for first_id in ["0", "30"] {
        let mut child = Command::new(&loadgen)
            .args(["--url", &url, "--idle", "--control", "--quiet"])
            .args(["--clients", "30", "--senders", "0", "--first-id", first_id])
            .args(["--source-addrs", "2"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start loadgen");
        let stdin = child.stdin.take().expect("loadgen stdin");
        let lines = BufReader::new(child.stdout.take().expect("loadgen stdout")).lines();
        gens.push((child, stdin, lines));
    }
    // loadgen's next line on stdout, within the tests' timeout.
    async fn next_line(
        lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        what: &str,
    ) -> String {
        let line = within(what, lines.next_line()).await;
        line.expect("read loadgen")
            .unwrap_or_else(|| panic!("loadgen ended before {what}"))
    }
    for (_, _, lines) in &mut gens {
        let ready = next_line(lines, "loadgen's ready line").await;
        assert!(
            ready.starts_with("{\"ready\":true,\"clients\":30,"),
            "{ready}"
        );
    }
    gens[0].1.write_all(b"send 7\n").await.expect("write send");
    for (_, stdin, _) in &mut gens {
        stdin.write_all(b"wait 7 5000\n").await.expect("write wait");
    }
    let sent = next_line(&mut gens[0].2, "the send's answer").await;
    assert!(
        sent.starts_with("{\"sent\":7,") && sent.ends_with("\"error\":null}"),
        "{sent}"
    );
    for (_, _, lines) in &mut gens {
        let answer = next_line(lines, "the probe's count").await;
        // Both processes' clients, the sender's own included, had the one broadcast.
        assert!(
            answer.starts_with("{\"probe\":7,\"received\":30,\"clients\":30,"),
            "{answer}"
        );
        assert!(json_number(&answer, "max_us") > 0.0, "{answer}");
    }
    for (mut child, mut stdin, mut lines) in gens {
        stdin.write_all(b"quit\n").await.expect("write quit");
        drop(stdin);
        let report = next_line(&mut lines, "loadgen's report").await;
        assert!(report.contains("\"mode\":\"idle\""), "{report}");
        assert!(report.contains("\"errors\":[]"), "{report}");
        let status = within("loadgen's exit", child.wait()).await.expect("wait");
        assert!(status.success(), "loadgen failed: {report}");
    }
}

//! The small examples (`json_protocol`, `ticker`, `stream`, `rooms`, `token_auth`, `scale_out`,
//! `tls`) do what
//! their doc comments say: each real example binary on a free loopback port, with real
//! WebSocket clients, checked on its main behaviour.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;

use common::{connect, next_message, next_text, send_text, Client, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// An example process, listening; killed when dropped.
struct Example {
    child: Child,
    addr: SocketAddr,
    /// What it printed after its first line, not yet read by [`Example::wait_for_line`].
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only scale_out's test reads it
    stdout: mpsc::UnboundedReceiver<String>,
}

impl Example {
    /// Starts example `name` with `--addr 127.0.0.1:0` and `args`, and waits until it
    /// prints the address it listens on (`... ws://ADDR/...` or `wss://`, its first line): the port
    /// the system chose, so no other process can take it between a probe and the bind.
    async fn start(name: &str, args: &[&str]) -> Example {
        let binary = common::example_binary(name);
        let mut child = Command::new(&binary)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{name} printed nothing within {WAIT:?}"))
            .expect("read its stdout")
            .unwrap_or_else(|| panic!("{name} exited before listening"));
        let addr = first
            .split_whitespace()
            .find_map(|word| {
                word.strip_prefix("ws://")
                    .or_else(|| word.strip_prefix("wss://"))
            })
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no ws://ADDR in {name}'s first line: {first:?}"));
        // Keep reading, so the example never blocks on a full pipe.
        let (tx, stdout) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Example {
            child,
            addr,
            stdout,
        }
    }

    /// Waits until the example prints a line containing `needle`; panics after [`WAIT`].
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    async fn wait_for_line(&mut self, needle: &str) {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.stdout.recv().await {
                if line.contains(needle) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "{} never printed {needle:?}", self.addr);
    }

    async fn client(&self, path: &str) -> Client {
        connect(self.addr, path).await
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        // Our own child, by its PID (kill_on_drop would too; this says so).
        let _ = self.child.start_kill();
    }
}

/// The next text message, parsed as JSON.
#[cfg(feature = "json")]
async fn next_json(client: &mut Client) -> serde_json::Value {
    let text = next_text(client).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[cfg(feature = "json")]
#[tokio::test]
async fn json_protocol_broadcasts_events_and_answers_a_bad_command_with_its_error() {
    use serde_json::json;

    let example = Example::start("json_protocol", &[]).await;
    let mut ana = example.client("/?name=ana").await;
    assert_eq!(
        next_json(&mut ana).await,
        json!({"type": "welcome", "high": null})
    );
    let mut ben = example.client("/?name=ben").await;
    assert_eq!(next_json(&mut ben).await["type"], "welcome");

    // A command in, the event out, to every bidder.
    send_text(&mut ben, r#"{"type": "bid", "amount": 120}"#).await;
    let new_high = json!({"type": "new_high", "bidder": "ben", "amount": 120});
    assert_eq!(next_json(&mut ana).await, new_high);
    assert_eq!(next_json(&mut ben).await, new_high);

    // A message of the wrong shape: the JsonError's text, to its sender, who stays.
    send_text(&mut ana, r#"{"type": "bid", "amount": "lots"}"#).await;
    let error = next_json(&mut ana).await;
    assert_eq!(error["type"], "error", "{error}");
    let message = error["message"].as_str().expect("a message");
    assert!(message.starts_with("JSON of the wrong shape"), "{message}");
    send_text(&mut ana, r#"{"type": "bid", "amount": 150}"#).await;
    assert_eq!(next_json(&mut ana).await["amount"], 150);
}

#[tokio::test]
async fn ticker_pushes_ticks_from_its_background_task() {
    let example = Example::start("ticker", &[]).await;
    let mut client = example.client("/").await;
    let tick_number = |text: &str| -> u64 {
        let number = text
            .strip_prefix("tick ")
            .and_then(|rest| rest.split(' ').next());
        number
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a tick: {text:?}"))
    };
    let first = next_text(&mut client).await;
    let second = next_text(&mut client).await;
    assert!(second.ends_with("(1 watching)"), "{second}");
    assert!(
        tick_number(&second) > tick_number(&first),
        "{first} / {second}"
    );
}

/// Far more than the queue holds (1024 messages, 1 MiB): with `send` instead of
/// `send_wait`, the example would trip the slow-consumer policy.
const STREAMED_LINES: u64 = 200_000;

#[tokio::test]
async fn stream_sends_every_line_in_order_then_closes() {
    let example = Example::start("stream", &[]).await;
    let mut client = example.client(&format!("/?lines={STREAMED_LINES}")).await;
    for n in 1..=STREAMED_LINES {
        let text = next_text(&mut client).await;
        assert!(
            text.starts_with(&format!("line {n}: ")),
            "line {n}: {text:?}"
        );
    }
    match next_message(&mut client).await {
        Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a normal close after the last line, got {other:?}"),
    }
}

#[tokio::test]
async fn rooms_reach_their_members_only() {
    let example = Example::start("rooms", &[]).await;
    let mut ana = example.client("/?user=ana").await;
    assert_eq!(next_text(&mut ana).await, "lobby: ana joined (1 here)");
    let mut ben = example.client("/?user=ben").await;
    assert_eq!(next_text(&mut ben).await, "lobby: ben joined (2 here)");
    assert_eq!(next_text(&mut ana).await, "lobby: ben joined (2 here)");

    send_text(&mut ana, "/join rust").await;
    assert_eq!(next_text(&mut ana).await, "rust: ana joined (1 here)");
    // To rust, then to the lobby: ben, not in rust, gets the second only. (Had the first
    // reached him, it would come before: one handler broadcasts them in this order.)
    send_text(&mut ana, "/say rust secret").await;
    assert_eq!(next_text(&mut ana).await, "[rust] ana: secret");
    send_text(&mut ana, "/say lobby hi all").await;
    assert_eq!(next_text(&mut ana).await, "[lobby] ana: hi all");
    assert_eq!(next_text(&mut ben).await, "[lobby] ana: hi all");

    // Per user, and where one is.
    send_text(&mut ana, "/msg ben psst").await;
    assert_eq!(next_text(&mut ben).await, "[ana → ben] psst");
    assert_eq!(next_text(&mut ana).await, "[ana → ben] psst");
    send_text(&mut ana, "/rooms").await;
    assert_eq!(next_text(&mut ana).await, "your rooms: lobby, rust");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn scale_out_carries_a_message_from_one_process_to_the_other() {
    use common::redis_server::RedisServer;

    let test = "examples_smoke::scale_out_carries_a_message_from_one_process_to_the_other";
    let Some(redis) = RedisServer::start(test).await else {
        return;
    };
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut server = Example::start("scale_out", &["--redis", &redis.url()]).await;
        // Subscribed: from now on it gets every broadcast of the room.
        server.wait_for_line("Redis backplane: Connected").await;
        servers.push(server);
    }
    let mut ana = servers[0].client("/?name=ana").await;
    let mut ben = servers[1].client("/?name=ben").await;

    send_text(&mut ben, "hello from the other process").await;
    let expected = format!(
        "ben (via {}): hello from the other process",
        servers[1].addr
    );
    assert_eq!(next_text(&mut ana).await, expected);
    assert_eq!(next_text(&mut ben).await, expected);
}

#[tokio::test]
async fn token_auth_admits_a_known_token_and_refuses_others_with_401() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error as WsError;

    let example = Example::start("token_auth", &[]).await;
    let mut ana = example.client("/?token=ana-secret").await;
    assert_eq!(next_text(&mut ana).await, "welcome, ana");

    // The same check with the token in a header, for clients that can send one.
    let mut request = format!("ws://{}/", example.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        "Bearer bob-secret".parse().expect("header value"),
    );
    let (mut bob, _) = common::within("bob's handshake", tokio_tungstenite::connect_async(request))
        .await
        .expect("bob admitted");
    assert_eq!(next_text(&mut bob).await, "welcome, bob");
    send_text(&mut bob, "hi").await;
    assert_eq!(next_text(&mut ana).await, "bob: hi");

    for path in ["/?token=guess", "/"] {
        let url = format!("ws://{}{path}", example.addr);
        match common::within("a refused handshake", tokio_tungstenite::connect_async(url)).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status(), 401, "{path}");
                assert_eq!(
                    response
                        .headers()
                        .get("www-authenticate")
                        .map(|v| v.as_bytes()),
                    Some(&b"Bearer"[..]),
                    "{path}"
                );
            }
            other => panic!("{path} was not refused with 401: {other:?}"),
        }
    }
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_chats_over_http1_and_http2_on_one_port() {
    use common::tls::{wss_http1, H2Connection};

    let (cert, key, root) = common::self_signed_certificate("examples-smoke-tls");
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let example = Example::start("tls", &["--tls-cert", &cert, "--tls-key", &key]).await;

    let mut ana = wss_http1(example.addr, &root, "/").await;
    assert_eq!(next_text(&mut ana).await, "welcome (1 here)");
    let mut h2 = H2Connection::connect(example.addr, &root).await;
    let mut ben = h2.websocket("/").await;
    assert_eq!(next_text(&mut ben).await, "welcome (2 here)");

    send_text(&mut ben, "hello from an HTTP/2 stream").await;
    for client_text in [next_text(&mut ana).await, next_text(&mut ben).await] {
        assert!(
            client_text.ends_with(": hello from an HTTP/2 stream"),
            "{client_text}"
        );
    }
    send_text(&mut ana, "hello over HTTP/1.1").await;
    assert!(next_text(&mut ben).await.ends_with(": hello over HTTP/1.1"));
    assert!(next_text(&mut ana).await.ends_with(": hello over HTTP/1.1"));
}

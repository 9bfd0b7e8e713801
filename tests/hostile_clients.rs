//! Hostile clients cannot hold the server's memory, over real sockets: a message that never
//! ends is cut off, the bytes of half-received messages stay within the server's budget,
//! and one address cannot take every connection; each time the right connections close
//! with the right code, the others keep chatting, and a fresh client still chats.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{masked_frame, within, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use websocket_handler::{
    CloseFrame, Connection, Error, IpNetwork, Message, WebSocketCollection, WebSocketHandler,
    WebSocketServer,
};

/// The chat, reporting errors and closes.
struct Chat {
    room: WebSocketCollection,
    events: mpsc::UnboundedSender<String>,
}

impl WebSocketHandler for Chat {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
    }
    async fn on_message(&mut self, _conn: &Connection, message: Message) {
        if let Some(text) = message.as_text() {
            self.room
                .broadcast(format!("said: {}", &text[..text.len().min(20)]));
        }
    }
    async fn on_error(&mut self, _conn: &Connection, error: &Error) {
        let kind = match error {
            Error::MessageTimeout { .. } => "message timeout",
            Error::PartialBudget { .. } => "partial budget",
            _ => "other",
        };
        let _ = self.events.send(format!("error: {kind}: {error}"));
    }
    async fn on_close(&mut self, _conn: &Connection, frame: &CloseFrame) {
        let _ = self.events.send(format!("close: {}", frame.code));
    }
}

async fn start(server: WebSocketServer) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let room = WebSocketCollection::new();
    let (events, receiver) = mpsc::unbounded_channel();
    let addr = common::serve(server, move |_| Chat {
        room: room.clone(),
        events: events.clone(),
    })
    .await;
    (addr, receiver)
}

/// A raw client from `local` (another loopback address gives another client address).
async fn raw_from(local: &str, addr: SocketAddr, extra_headers: &str) -> (TcpStream, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{local}:0").parse().expect("local address"))
        .expect("bind the client's address");
    let mut stream = within("connecting", socket.connect(addr))
        .await
        .expect("connect");
    let mut request = String::from_utf8(common::raw_handshake("/")).expect("ascii");
    request.truncate(request.len() - 2);
    request += extra_headers;
    request += "\r\n";
    within(
        "sending the handshake",
        stream.write_all(request.as_bytes()),
    )
    .await
    .expect("write");
    let head = common::read_until_contains(&mut stream, b"\r\n\r\n").await;
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    (stream, status)
}

/// What a raw client sees from the server until it closes: the close code, if one came.
async fn close_code(stream: &mut TcpStream, within_time: Duration) -> Option<u16> {
    let mut received = Vec::new();
    let reading = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(within_time, reading)
        .await
        .expect("the server did not close the connection in time");
    // Server frames are unmasked: find the close frame (0x88) and its code.
    let mut at = 0;
    while at + 2 <= received.len() {
        let (opcode, len) = (received[at] & 0x0f, usize::from(received[at + 1] & 0x7f));
        let (header, len) = match len {
            126 => (
                4,
                usize::from(u16::from_be_bytes([received[at + 2], received[at + 3]])),
            ),
            127 => return None,
            n => (2, n),
        };
        if opcode == 0x8 && len >= 2 {
            let code = &received[at + header..at + header + 2];
            return Some(u16::from_be_bytes([code[0], code[1]]));
        }
        at += header + len;
    }
    None
}

/// A well-behaved client keeps chatting.
async fn chats(addr: SocketAddr, line: &str) {
    chats_from("127.0.0.1", addr, line).await;
}

/// A well-behaved client from the address `local` keeps chatting.
async fn chats_from(local: &str, addr: SocketAddr, line: &str) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{local}:0").parse().expect("local address"))
        .expect("bind the client's address");
    let stream = within("connecting", socket.connect(addr))
        .await
        .expect("connect");
    let url = format!("ws://{addr}/");
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut client, _) = within(
        "the handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("handshake");
    common::send_text(&mut client, line).await;
    let expected = format!("said: {}", &line[..line.len().min(20)]);
    let deadline = Instant::now() + WAIT;
    while common::next_text(&mut client).await != expected {
        assert!(Instant::now() < deadline, "never heard back {expected:?}");
    }
}

const MESSAGE_TIMEOUT: Duration = Duration::from_millis(800);

fn trickle_server() -> WebSocketServer {
    WebSocketServer::builder()
        .message_timeout(MESSAGE_TIMEOUT)
        .min_message_rate(64 * 1024)
        .build()
}

#[tokio::test]
async fn a_fragmented_message_that_never_ends_is_cut_off_and_others_chat_on() {
    let (addr, mut events) = start(trickle_server()).await;
    let mut listener = common::connect(addr, "/").await;
    let (mut attacker, status) = raw_from("127.0.0.1", addr, "").await;
    assert!(status.contains("101"), "{status}");
    // 59,000 bytes, FIN clear, then a byte every 100 ms, with a ping in between each: the
    // message goes on forever, as RFC 6455 allows, and the peer is never idle.
    attacker
        .write_all(&masked_frame(false, 0x1, &vec![b'x'; 59_000]))
        .await
        .expect("first fragment");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            let mut bytes = masked_frame(true, 0x9, b"ping");
            bytes.extend(masked_frame(false, 0x0, b"y"));
            if attacker.write_all(&bytes).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        attacker
    });
    common::send_text(&mut listener, "meanwhile").await;
    assert_eq!(common::next_text(&mut listener).await, "said: meanwhile");
    let error = within("the attacker's on_error", events.recv())
        .await
        .expect("event");
    assert!(error.starts_with("error: message timeout"), "{error}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= MESSAGE_TIMEOUT && elapsed < MESSAGE_TIMEOUT + Duration::from_secs(3),
        "cut off at the message timeout, not {elapsed:?}: control frames do not reset it"
    );
    assert_eq!(
        within("the attacker's on_close", events.recv())
            .await
            .expect("event"),
        "close: 1008"
    );
    let mut attacker = within("the trickle to stop", trickle)
        .await
        .expect("trickle task");
    assert_eq!(close_code(&mut attacker, WAIT).await, Some(1008));
    common::send_text(&mut listener, "still here").await;
    assert_eq!(common::next_text(&mut listener).await, "said: still here");
    chats(addr, "a fresh client").await;
}

#[tokio::test]
async fn a_single_frame_trickled_byte_by_byte_is_cut_off() {
    let (addr, mut events) = start(trickle_server()).await;
    let (mut attacker, _) = raw_from("127.0.0.1", addr, "").await;
    let frame = masked_frame(true, 0x2, &vec![7u8; 59_000]);
    // The header and a first part at once, then a byte every 50 ms.
    attacker.write_all(&frame[..1000]).await.expect("start");
    let mut rest = frame[1000..].to_vec();
    let trickle = tokio::spawn(async move {
        while !rest.is_empty() {
            if attacker.write_all(&rest[..1]).await.is_err() {
                break;
            }
            rest.remove(0);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        attacker
    });
    let error = within("on_error", events.recv()).await.expect("event");
    assert!(error.starts_with("error: message timeout"), "{error}");
    let mut attacker = within("the trickle to stop", trickle)
        .await
        .expect("trickle task");
    assert_eq!(close_code(&mut attacker, WAIT).await, Some(1008));
    chats(addr, "a fresh client").await;
}

#[tokio::test]
async fn half_received_messages_share_one_budget_and_the_largest_holders_go() {
    let server = WebSocketServer::builder()
        .max_partial_bytes(200_000)
        .message_timeout(WAIT * 10)
        .build();
    let (addr, mut events) = start(server.clone()).await;
    // One that declared a big frame but sent little holds only what arrived.
    let (mut small, _) = raw_from("127.0.0.1", addr, "").await;
    let frame = masked_frame(true, 0x2, &vec![1u8; 60_000]);
    small
        .write_all(&frame[..108])
        .await
        .expect("a header and 100 bytes");
    let deadline = Instant::now() + WAIT;
    while server.partial_bytes() == 0 {
        assert!(
            Instant::now() < deadline,
            "the partial message was never counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        server.partial_bytes() < 1000,
        "held {} bytes for 100 that arrived",
        server.partial_bytes()
    );
    // Five clients each 59,000 bytes into a message: 295,000 bytes for a budget of 200,000.
    let mut holders = Vec::new();
    for _ in 0..5 {
        let (mut holder, _) = raw_from("127.0.0.1", addr, "").await;
        holder
            .write_all(&masked_frame(false, 0x1, &vec![b'h'; 59_000]))
            .await
            .expect("first fragment");
        holders.push(holder);
    }
    let mut refused = 0;
    let deadline = Instant::now() + WAIT;
    while refused < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(event)) if event.starts_with("error: partial budget") => refused += 1,
            Ok(Some(event)) if event.starts_with("close") => {}
            other => panic!("expected two refusals, got {refused} and then {other:?}"),
        }
    }
    assert!(
        server.partial_bytes() <= 200_000,
        "over budget: {}",
        server.partial_bytes()
    );
    // The refused ones get 1013 and their connection ends; the others stay open.
    let mut codes = Vec::new();
    for holder in &mut holders {
        let mut received = Vec::new();
        let ended = tokio::time::timeout(
            Duration::from_millis(500),
            holder.read_to_end(&mut received),
        )
        .await
        .is_ok();
        codes.push(ended.then(|| received.get(2..4).map(|c| u16::from_be_bytes([c[0], c[1]]))));
    }
    let refused_codes: Vec<_> = codes.iter().flatten().collect();
    assert_eq!(refused_codes, [&Some(1013), &Some(1013)], "{codes:?}");
    // The survivors finish their messages and are heard.
    chats(addr, "within the budget").await;
    drop(holders);
    drop(small);
    let deadline = Instant::now() + WAIT;
    while server.partial_bytes() > 0 {
        assert!(
            Instant::now() < deadline,
            "closed connections give their share back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn one_address_over_its_limit_gets_429_while_another_still_connects() {
    let server = WebSocketServer::builder()
        .max_connections_per_address(2)
        .build();
    let (addr, _events) = start(server).await;
    let (_first, status) = raw_from("127.0.0.1", addr, "").await;
    assert!(status.contains("101"), "{status}");
    let (_second, status) = raw_from("127.0.0.1", addr, "").await;
    assert!(status.contains("101"), "{status}");
    let (_third, status) = raw_from("127.0.0.1", addr, "").await;
    assert!(
        status.contains("429"),
        "the third from one address: {status}"
    );
    // Another address is another client.
    let (_other, status) = raw_from("127.0.0.2", addr, "").await;
    assert!(status.contains("101"), "another address: {status}");
}

#[tokio::test]
async fn new_handshakes_per_address_are_rate_limited() {
    let server = WebSocketServer::builder()
        .handshake_rate_per_address(1, 2)
        .build();
    let (addr, _events) = start(server).await;
    for _ in 0..2 {
        let (_, status) = raw_from("127.0.0.1", addr, "").await;
        assert!(status.contains("101"), "the burst: {status}");
    }
    let (_, status) = raw_from("127.0.0.1", addr, "").await;
    assert!(status.contains("429"), "past the burst: {status}");
    let (_, status) = raw_from("127.0.0.3", addr, "").await;
    assert!(status.contains("101"), "another address: {status}");
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_a_trusted_proxy() {
    let proxy: IpNetwork = "127.0.0.2".parse().expect("network");
    let server = WebSocketServer::builder()
        .max_connections_per_address(1)
        .trusted_proxies([proxy])
        .build();
    let (addr, _events) = start(server).await;
    // An untrusted peer cannot pass for someone else with a header of its own.
    let (_first, status) = raw_from("127.0.0.1", addr, "").await;
    assert!(status.contains("101"), "{status}");
    let forged = "X-Forwarded-For: 198.51.100.99\r\n";
    let (_, status) = raw_from("127.0.0.1", addr, forged).await;
    assert!(
        status.contains("429"),
        "a forged X-Forwarded-For is ignored: {status}"
    );
    // Through the trusted proxy, each forwarded client counts on its own.
    let client_a = "X-Forwarded-For: 198.51.100.1\r\n";
    let (_a, status) = raw_from("127.0.0.2", addr, client_a).await;
    assert!(status.contains("101"), "{status}");
    let (_, status) = raw_from("127.0.0.2", addr, client_a).await;
    assert!(
        status.contains("429"),
        "the same forwarded client again: {status}"
    );
    let client_b = "Forwarded: for=198.51.100.2;proto=http\r\n";
    let (_b, status) = raw_from("127.0.0.2", addr, client_b).await;
    assert!(status.contains("101"), "another forwarded client: {status}");
    chats_from("127.0.0.5", addr, "a fresh client").await;
}

// ---- h2-listener: connections that never upgrade (issue 25) ----

/// `WebSocketServer::serve` on a free port.
async fn start_serve(server: WebSocketServer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let room = WebSocketCollection::new();
    let (events, _) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, move |upgrade| {
                let chat = Chat {
                    room: room.clone(),
                    events: events.clone(),
                };
                async move { upgrade.accept(chat) }
            })
            .await;
    });
    addr
}

/// Reads until the server closes; when that was.
async fn closed_at(stream: &mut TcpStream) -> Instant {
    within("the server to close the connection", async {
        let mut buf = [0u8; 256];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    Instant::now()
}

#[tokio::test]
async fn pending_connections_are_capped_and_silent_ones_dropped() {
    let server = WebSocketServer::builder()
        .max_pending_connections(2)
        .handshake_timeout(Duration::from_millis(500))
        .build();
    let addr = start_serve(server).await;
    // An upgraded connection is no longer pending: two more fit beside it.
    let (mut upgraded, status) = raw_from("127.0.0.1", addr, "").await;
    assert!(status.contains("101"), "{status}");
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(
            within("a TCP connection", TcpStream::connect(addr))
                .await
                .expect("connect"),
        );
    }
    let connected = Instant::now();
    // The two silent ones take every place: the next client waits in the backlog, and is
    // served once the handshake timeout has dropped them, not before.
    let [first, second] = &mut silent[..] else {
        unreachable!()
    };
    let (_, _, (served, status)) = tokio::join!(closed_at(first), closed_at(second), async {
        let (_stream, status) = raw_from("127.0.0.1", addr, "").await;
        (Instant::now(), status)
    });
    assert!(status.contains("101"), "{status}");
    assert!(
        served - connected >= Duration::from_millis(500),
        "served {:?} after the silent ones took the places, within the handshake timeout",
        served - connected
    );
    // The upgraded one was not dropped with them.
    within(
        "a message",
        upgraded.write_all(&masked_frame(true, 1, b"still here")),
    )
    .await
    .expect("write");
    let mut head = [0u8; 2];
    within("the broadcast", upgraded.read_exact(&mut head))
        .await
        .expect("the upgraded connection is open");
}

//! Handler callbacks, their order, round trips, closing, and the message size limit, over
//! real loopback sockets.

mod common;

use std::net::SocketAddr;

use common::{connect, next_message, next_text, send_text, serve, within, WAIT};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::{
    CloseCode, Connection, Error, Message, SendError, WebSocketHandler, WebSocketServer,
};

#[derive(Debug)]
enum Event {
    Open(Connection),
    Message(Message),
    Error(String, Option<CloseCode>),
    Close(CloseCode, String),
}

/// Records every callback; echoes messages; "quit" makes the server say "bye" and close.
struct Recorder {
    events: mpsc::UnboundedSender<Event>,
}

impl WebSocketHandler for Recorder {
    async fn on_open(&mut self, conn: &Connection) {
        let _ = self.events.send(Event::Open(conn.clone()));
    }
    async fn on_message(&mut self, conn: &Connection, message: Message) {
        if message.as_text() == Some("quit") {
            conn.send("bye").expect("queue bye");
            conn.close(CloseCode::NORMAL, "done").expect("queue close");
            assert_eq!(conn.send("too late"), Err(SendError::Closed));
            assert!(!conn.is_open());
        } else {
            conn.send(message.clone()).expect("echo");
        }
        let _ = self.events.send(Event::Message(message));
    }
    async fn on_error(&mut self, _conn: &Connection, error: &Error) {
        let _ = self
            .events
            .send(Event::Error(error.to_string(), error.close_code()));
    }
    async fn on_close(&mut self, _conn: &Connection, frame: &websocket_handler::CloseFrame) {
        let _ = self
            .events
            .send(Event::Close(frame.code, frame.reason.clone()));
    }
}

async fn start(server: WebSocketServer) -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (events, receiver) = mpsc::unbounded_channel();
    let addr = serve(server, move |_| Recorder {
        events: events.clone(),
    })
    .await;
    (addr, receiver)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("timed out waiting for a handler event")
        .expect("event channel closed")
}

async fn expect_open(events: &mut mpsc::UnboundedReceiver<Event>) -> Connection {
    match next_event(events).await {
        Event::Open(conn) => conn,
        other => panic!("expected on_open first, got {other:?}"),
    }
}

#[tokio::test]
async fn callbacks_run_in_order_and_close_handshake_completes() {
    let (addr, mut events) = start(WebSocketServer::new()).await;
    let mut client = connect(addr, "/chat?username=ana%20b&x=1").await;
    let conn = expect_open(&mut events).await;
    assert_eq!(conn.path(), "/chat");
    assert_eq!(conn.query_param("username").as_deref(), Some("ana b"));
    let local = client.get_ref();
    let client_addr = match local {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("addr"),
        _ => unreachable!("plain TCP"),
    };
    assert_eq!(conn.remote_addr(), Some(client_addr));
    assert!(conn.headers().contains_key("sec-websocket-key"));
    assert!(conn.is_open());

    send_text(&mut client, "hello").await;
    within(
        "the binary message to be sent",
        client.send(WsMessage::binary(vec![0u8, 1, 2, 255])),
    )
    .await
    .expect("send binary");
    assert_eq!(next_text(&mut client).await, "hello");
    assert_eq!(
        next_message(&mut client).await,
        Some(WsMessage::binary(vec![0u8, 1, 2, 255]))
    );
    match next_event(&mut events).await {
        Event::Message(Message::Text(text)) => assert_eq!(text.as_str(), "hello"),
        other => panic!("expected the text message, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Message(Message::Binary(bytes)) => assert_eq!(&bytes[..], &[0, 1, 2, 255]),
        other => panic!("expected the binary message, got {other:?}"),
    }

    within(
        "the client's close",
        client.close(Some(WsCloseFrame {
            code: WsCloseCode::Away,
            reason: "leaving".into(),
        })),
    )
    .await
    .expect("close");
    // The server answers the close frame and ends the stream.
    match next_message(&mut client).await {
        Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected the server's close answer, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Close(code, reason) => {
            assert_eq!(code, CloseCode::GOING_AWAY);
            assert_eq!(reason, "leaving");
        }
        other => panic!("expected on_close without on_error, got {other:?}"),
    }
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed() resolves");
    assert!(!conn.is_open());
    assert_eq!(conn.send("after close"), Err(SendError::Closed));
}

#[tokio::test]
async fn abrupt_tcp_drop_reports_error_then_close_1006() {
    let (addr, mut events) = start(WebSocketServer::new()).await;
    let mut client = connect(addr, "/").await;
    let conn = expect_open(&mut events).await;
    send_text(&mut client, "last words").await;
    assert_eq!(next_text(&mut client).await, "last words");
    drop(client); // no close frame: the TCP connection just goes away

    assert!(matches!(next_event(&mut events).await, Event::Message(_)));
    match next_event(&mut events).await {
        Event::Error(message, None) => {
            assert!(message.contains("without a close frame"), "{message}")
        }
        other => panic!("expected on_error, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Close(code, _) => assert_eq!(code, CloseCode::ABNORMAL),
        other => panic!("expected on_close last, got {other:?}"),
    }
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed() resolves");
    // Nothing follows on_close.
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn server_close_goes_out_after_queued_messages() {
    let (addr, mut events) = start(WebSocketServer::new()).await;
    let mut client = connect(addr, "/").await;
    let conn = expect_open(&mut events).await;
    send_text(&mut client, "quit").await;
    assert_eq!(next_text(&mut client).await, "bye");
    match next_message(&mut client).await {
        Some(WsMessage::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1000);
            assert_eq!(frame.reason.as_str(), "done");
        }
        other => panic!("expected close 1000, got {other:?}"),
    }
    assert!(
        next_message(&mut client).await.is_none(),
        "stream ends after close"
    );
    assert!(matches!(next_event(&mut events).await, Event::Message(_)));
    match next_event(&mut events).await {
        Event::Close(code, reason) => {
            assert_eq!(code, CloseCode::NORMAL);
            assert_eq!(reason, "done");
        }
        other => panic!("expected on_close, got {other:?}"),
    }
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed() resolves");
}

#[tokio::test]
async fn close_rejects_codes_and_reasons_that_cannot_be_sent() {
    let (addr, mut events) = start(WebSocketServer::new()).await;
    let _client = connect(addr, "/").await;
    let conn = expect_open(&mut events).await;
    assert_eq!(
        conn.close(CloseCode::ABNORMAL, ""),
        Err(SendError::InvalidCloseCode(1006))
    );
    assert_eq!(
        conn.close(CloseCode::NORMAL, &"x".repeat(124)),
        Err(SendError::CloseReasonTooLong(124))
    );
    assert!(conn.is_open(), "a refused close leaves the connection open");
}

#[tokio::test]
async fn oversized_message_closes_with_1009_and_reports_error() {
    let (addr, mut events) = start(WebSocketServer::builder().max_message_size(1024).build()).await;
    let mut client = connect(addr, "/").await;
    expect_open(&mut events).await;
    // A message exactly at the limit is fine...
    send_text(&mut client, &"a".repeat(1024)).await;
    assert_eq!(next_text(&mut client).await.len(), 1024);
    assert!(matches!(next_event(&mut events).await, Event::Message(_)));
    // ...one byte more is not.
    send_text(&mut client, &"a".repeat(1025)).await;
    match next_message(&mut client).await {
        Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Error(message, code) => {
            assert_eq!(code, Some(CloseCode::MESSAGE_TOO_BIG));
            assert!(message.contains("1024"), "{message}");
        }
        other => panic!("expected on_error, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Close(code, _) => assert_eq!(code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected on_close, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_fragmented_message_closes_with_1009() {
    let (addr, mut events) = start(WebSocketServer::builder().max_message_size(1000).build()).await;
    let mut client = connect(addr, "/").await;
    expect_open(&mut events).await;
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    // Three 400-byte fragments: each frame is small, the message is not.
    let fragments = [
        (OpCode::Data(Data::Text), false),
        (OpCode::Data(Data::Continue), false),
        (OpCode::Data(Data::Continue), true),
    ];
    for (opcode, fin) in fragments {
        let frame = Frame::message(vec![b'x'; 400], opcode, fin);
        if within(
            "a fragment to be sent",
            client.send(WsMessage::Frame(frame)),
        )
        .await
        .is_err()
        {
            break; // the server may already have closed
        }
    }
    match next_message(&mut client).await {
        Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        Event::Error(_, Some(CloseCode::MESSAGE_TOO_BIG))
    ));
    assert!(matches!(
        next_event(&mut events).await,
        Event::Close(CloseCode::MESSAGE_TOO_BIG, _)
    ));
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_after_queued_messages() {
    let (addr, mut events) = start(WebSocketServer::new()).await;
    let mut client = connect(addr, "/").await;
    expect_open(&mut events).await;
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    let frame = Frame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true);
    // A valid message right before the bad one: its echo was queued first and must not be
    // lost to the error close.
    within(
        "the valid message to be fed",
        client.feed(WsMessage::text("valid")),
    )
    .await
    .expect("feed");
    within(
        "the invalid frame to be sent",
        client.send(WsMessage::Frame(frame)),
    )
    .await
    .expect("send");
    assert_eq!(next_text(&mut client).await, "valid");
    assert!(matches!(next_event(&mut events).await, Event::Message(_)));
    match next_message(&mut client).await {
        Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1007),
        other => panic!("expected close 1007, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        Event::Error(_, Some(CloseCode::INVALID_PAYLOAD))
    ));
    assert!(matches!(
        next_event(&mut events).await,
        Event::Close(CloseCode::INVALID_PAYLOAD, _)
    ));
}

#[tokio::test]
async fn send_from_outside_the_handler_and_large_round_trip() {
    let (addr, mut events) = start(
        WebSocketServer::builder()
            .max_message_size(256 * 1024)
            .max_frame_size(256 * 1024)
            .build(),
    )
    .await;
    let mut client = connect(addr, "/").await;
    let conn = expect_open(&mut events).await;
    // Another task holds a clone of the handle and sends through it.
    let handle = conn.clone();
    let task = tokio::spawn(async move { handle.send("pushed from a task").expect("send") });
    within("the sending task to finish", task)
        .await
        .expect("task");
    assert_eq!(next_text(&mut client).await, "pushed from a task");

    let big: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    send_text(&mut client, &big).await;
    assert_eq!(next_text(&mut client).await, big);
}

/// A client may send its first frame in the same packet as its handshake; hyper reads both,
/// and the frame must still reach the handler.
#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_not_lost() {
    use tokio::io::AsyncWriteExt;

    let (addr, mut events) = start(WebSocketServer::new()).await;
    let mut stream = within("a TCP connection", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut request = common::raw_handshake("/early");
    // A masked text frame "early" (RFC 6455 section 5.3), zero mask for simplicity.
    request.extend_from_slice(&[0x81, 0x80 | 5, 0, 0, 0, 0]);
    request.extend_from_slice(b"early");
    within(
        "the handshake and frame to be written",
        stream.write_all(&request),
    )
    .await
    .expect("send handshake and frame");

    // The answer: the 101 response, then the echo as an unmasked text frame.
    let echo = [0x81, 5, b'e', b'a', b'r', b'l', b'y'];
    let received = common::read_until_contains(&mut stream, &echo).await;
    assert!(received.starts_with(b"HTTP/1.1 101"));
    assert!(matches!(
        within("on_open", events.recv()).await,
        Some(Event::Open(_))
    ));
    match within("on_message with the early frame", events.recv()).await {
        Some(Event::Message(message)) => assert_eq!(message.as_text(), Some("early")),
        other => panic!("expected the early message, got {other:?}"),
    }
}

/// Once the peer has sent its close frame, sending is over: the server answers it, writes
/// no data after the answer, and the connection ends at once rather than at the close
/// timeout, even while another task keeps sending.
#[tokio::test]
async fn after_the_peers_close_nothing_follows_the_answer() {
    // A close timeout far beyond WAIT: waiting it out would fail the test.
    let config = WebSocketServer::builder().close_timeout(WAIT * 6).build();
    let (addr, mut events) = start(config).await;
    let mut client = connect(addr, "/").await;
    let conn = expect_open(&mut events).await;
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        while conn.send(format!("data {sent}")).is_ok() {
            sent += 1;
            tokio::task::yield_now().await;
        }
        sent
    });
    assert!(next_text(&mut client).await.starts_with("data "));
    within("the client's close", client.close(None))
        .await
        .expect("send close");
    // Data already queued may come first; after the close answer, nothing. One bound for
    // the whole loop: data that never stops must not keep it going.
    within("the close answer after the queued data", async {
        loop {
            match next_message(&mut client).await {
                Some(WsMessage::Text(_)) => continue,
                Some(WsMessage::Close(_)) => break,
                other => panic!("expected data or the close answer, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(
        next_message(&mut client).await,
        None,
        "nothing after the answer"
    );
    tokio::time::timeout(WAIT, sender)
        .await
        .expect("sending stops")
        .expect("sender task");
    loop {
        match next_event(&mut events).await {
            Event::Close(code, _) => {
                assert_eq!(code, CloseCode::NO_STATUS);
                break;
            }
            Event::Message(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Panics in `on_open` or `on_message` close only their own connection, with 1011; the
/// handler still hears `on_error` and `on_close`, and other connections carry on.
#[tokio::test]
async fn a_panicking_handler_closes_only_its_own_connection_with_1011() {
    struct Fragile {
        events: mpsc::UnboundedSender<Event>,
        panic_on_open: bool,
    }
    impl WebSocketHandler for Fragile {
        async fn on_open(&mut self, conn: &Connection) {
            let _ = self.events.send(Event::Open(conn.clone()));
            assert!(!self.panic_on_open, "on_open panics on purpose");
        }
        async fn on_message(&mut self, conn: &Connection, message: Message) {
            assert_ne!(
                message.as_text(),
                Some("panic"),
                "on_message panics on purpose"
            );
            let _ = conn.send(message);
        }
        async fn on_error(&mut self, _conn: &Connection, error: &Error) {
            let _ = self
                .events
                .send(Event::Error(error.to_string(), error.close_code()));
        }
        async fn on_close(&mut self, _conn: &Connection, frame: &websocket_handler::CloseFrame) {
            let _ = self
                .events
                .send(Event::Close(frame.code, frame.reason.clone()));
        }
    }

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let addr = serve(WebSocketServer::new(), move |req| Fragile {
        events: events_tx.clone(),
        panic_on_open: req.uri().path() == "/panic-on-open",
    })
    .await;

    let mut steady = connect(addr, "/").await;
    expect_open(&mut events).await;
    for (path, trigger) in [("/", true), ("/panic-on-open", false)] {
        let mut fragile = connect(addr, path).await;
        expect_open(&mut events).await;
        if trigger {
            send_text(&mut fragile, "panic").await;
        }
        match next_message(&mut fragile).await {
            Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1011),
            other => panic!("expected close 1011 on {path}, got {other:?}"),
        }
        match next_event(&mut events).await {
            Event::Error(message, code) => {
                assert!(message.contains("on purpose"), "{message}");
                assert_eq!(code, Some(CloseCode::INTERNAL_ERROR));
            }
            other => panic!("expected on_error, got {other:?}"),
        }
        // The connection still ends properly; `on_close` comes last.
        drop(fragile);
        match next_event(&mut events).await {
            Event::Close(..) => {}
            other => panic!("expected on_close, got {other:?}"),
        }
    }
    send_text(&mut steady, "still here").await;
    assert_eq!(next_text(&mut steady).await, "still here");
}

/// A client over its rate limit is closed with 1008, and its handler hears why.
#[tokio::test]
async fn a_client_over_its_rate_limit_is_closed_with_1008() {
    let (addr, mut events) = start(WebSocketServer::builder().rate_limit(1, 3).build()).await;
    let mut client = connect(addr, "/").await;
    expect_open(&mut events).await;
    for i in 0..10 {
        send_text(&mut client, &format!("m{i}")).await;
    }
    let mut echoes = 0;
    loop {
        match next_message(&mut client).await {
            Some(WsMessage::Text(_)) => echoes += 1,
            Some(WsMessage::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1008);
                break;
            }
            other => panic!("expected echoes then close 1008, got {other:?}"),
        }
    }
    assert!((3..10).contains(&echoes), "{echoes} echoes");
    loop {
        match next_event(&mut events).await {
            Event::Message(_) => {}
            Event::Error(message, code) => {
                assert!(message.contains("per second"), "{message}");
                assert_eq!(code, Some(CloseCode::POLICY_VIOLATION));
                break;
            }
            other => panic!("expected on_error, got {other:?}"),
        }
    }
}

/// A protocol violation (here an unmasked frame from the client) closes with 1002.
#[tokio::test]
async fn a_protocol_violation_closes_with_1002() {
    use tokio::io::AsyncWriteExt;

    let (addr, mut events) = start(WebSocketServer::new()).await;
    let mut stream = within("a TCP connection", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut request = common::raw_handshake("/");
    request.extend_from_slice(&[0x81, 2, b'h', b'i']); // not masked
    within(
        "the handshake and frame to be written",
        stream.write_all(&request),
    )
    .await
    .expect("send");
    common::read_until_contains(&mut stream, &[0x88, 2, 0x03, 0xea]).await; // close 1002
    expect_open(&mut events).await;
    match next_event(&mut events).await {
        Event::Error(_, code) => assert_eq!(code, Some(CloseCode::PROTOCOL_ERROR)),
        other => panic!("expected on_error, got {other:?}"),
    }
}

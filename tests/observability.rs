//! What the application can see: `Metrics` counters, over real sockets (the `tracing` spans
//! are in tests/tracing_spans.rs).

mod common;

use common::{connect, next_text, send_text, within, Options};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use websocket_handler::{
    CloseFrame, Connection, Message, WebSocketCollection, WebSocketHandler, WebSocketServer,
};

/// Joins `room`, says "in", echoes, and reports each close.
struct Echo {
    room: WebSocketCollection,
    closed: mpsc::UnboundedSender<u16>,
}

impl WebSocketHandler for Echo {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        let _ = conn.send("in");
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = conn.send(message);
    }

    async fn on_close(&mut self, _conn: &Connection, frame: &CloseFrame) {
        let _ = self.closed.send(frame.code.as_u16());
    }
}

#[tokio::test]
async fn metrics_count_connections_messages_bytes_drops_and_closes() {
    let room = WebSocketCollection::new();
    let (tx, mut closed) = mpsc::unbounded_channel();
    let config = WebSocketServer::builder()
        .outbound_queue_capacity(4)
        .close_timeout(std::time::Duration::from_millis(200))
        .build();
    let metrics = config.metrics().clone();
    let options = Options {
        send_buffer: Some(4096),
        ..Options::default()
    };
    let (r, t) = (room.clone(), tx.clone());
    let addr = common::serve_with(config, options, move |_| Echo {
        room: r.clone(),
        closed: t.clone(),
    })
    .await;

    // One client: three messages of 5, 3 and 1000 bytes, echoed, then a normal close.
    let mut client = connect(addr, "/").await;
    assert_eq!(next_text(&mut client).await, "in");
    for text in ["hello", "abc", &"x".repeat(1000)] {
        send_text(&mut client, text).await;
        assert_eq!(next_text(&mut client).await, text);
    }
    // A message is counted just after its write returns, so the client can read it a
    // moment before: wait for the count.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while metrics.snapshot().messages_sent < 4 {
        assert!(tokio::time::Instant::now() < deadline, "{metrics:?}");
        tokio::task::yield_now().await;
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.connections_open(), 1);
    assert_eq!(
        (snapshot.messages_received, snapshot.bytes_received),
        (3, 1008)
    );
    assert_eq!(
        (snapshot.messages_sent, snapshot.bytes_sent),
        (4, 1010),
        "with the \"in\""
    );
    within(
        "the client's close",
        client.close(Some(WsCloseFrame {
            code: WsCloseCode::Normal,
            reason: "".into(),
        })),
    )
    .await
    .expect("close");
    assert_eq!(
        within("on_close after the client's close", closed.recv()).await,
        Some(1000)
    );

    // Another that never reads: a burst of large broadcasts fills its socket and then its
    // queue of 4, so it is closed with 1008 and the rest is counted as dropped.
    let mut stalled = connect(addr, "/").await;
    assert_eq!(next_text(&mut stalled).await, "in", "in the room");
    let big = "y".repeat(64 * 1024 - 1);
    let mut refused = 0;
    for _ in 0..64 {
        if room.broadcast(big.as_str()) == 0 {
            refused += 1;
        }
    }
    assert!(refused > 0, "the queue never filled");
    assert_eq!(
        within("on_close of the stalled client", closed.recv()).await,
        Some(1008)
    );
    drop(stalled);

    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.connections_opened, 2);
    assert_eq!(snapshot.connections_open(), 0);
    assert_eq!(snapshot.slow_consumer_disconnects, 1);
    assert!(
        snapshot.messages_dropped >= 1,
        "dropped: {}",
        snapshot.messages_dropped
    );
    assert_eq!(
        snapshot.closes.into_iter().collect::<Vec<_>>(),
        [(1000, 1), (1008, 1)]
    );
}

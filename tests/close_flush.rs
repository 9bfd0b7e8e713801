//! What a close drops from a full queue is counted.

mod common;

use websocket_handler::{
    CloseCode, Connection, Message, SlowConsumer, WebSocketHandler, WebSocketServer,
};

use common::{raw_client, within};

const MESSAGE_SIZE: usize = 1024;

/// Fills its own queue while the client reads nothing, then closes, and reports the
/// messages queued and dropped before the close and those dropped after it.
struct FillThenClose {
    report: tokio::sync::mpsc::UnboundedSender<(usize, u64, u64)>,
    metrics: websocket_handler::Metrics,
}

impl WebSocketHandler for FillThenClose {
    async fn on_open(&mut self, conn: &Connection) {
        let message = Message::from("y".repeat(MESSAGE_SIZE));
        // The socket fills, then the queue: then `send` refuses.
        let mut sent = 0;
        while conn.send(message.clone()).is_ok() {
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        let queued = conn.queued().messages;
        let before = self.metrics.snapshot().messages_dropped;
        conn.close(CloseCode::NORMAL, "bye").expect("close");
        let after = self.metrics.snapshot().messages_dropped;
        let _ = self.report.send((queued, before, after));
    }
}

#[tokio::test]
async fn a_close_on_a_full_queue_counts_the_messages_it_drops() {
    let server = WebSocketServer::builder()
        .outbound_queue_capacity(8)
        .slow_consumer(SlowConsumer::DropMessages)
        .build();
    let metrics = server.metrics().clone();
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let options = common::Options {
        send_buffer: Some(4096),
        ..Default::default()
    };
    let addr = common::serve_with(server, options, move |_| FillThenClose {
        report: report.clone(),
        metrics: metrics.clone(),
    })
    .await;
    // Never reads.
    let _client = raw_client(addr, "/", Some(4096)).await;
    let (queued, before, after) = within("the handler's report", reports.recv())
        .await
        .expect("a report");
    assert_eq!(queued, 8, "the queue was full");
    assert_eq!(before, 1, "the send the full queue refused");
    assert_eq!(
        after - before,
        queued as u64,
        "the close frame went ahead of the full queue: its messages count as dropped"
    );
}

//! `Connection::send_wait` over a real socket: a server streaming far more than the queue
//! holds to a client that reads slowly waits for it, with no slow-consumer close and the
//! queue within its bounds.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{next_message, within};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::{Connection, WebSocketHandler, WebSocketServer};

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 1600; // 100 MiB
const QUEUE_BYTES: usize = 1 << 20;

/// Streams `CHUNKS` numbered chunks with `send_wait`, then "done"; notes the most bytes
/// its queue ever held.
struct Streamer {
    peak: Arc<AtomicUsize>,
}

impl WebSocketHandler for Streamer {
    async fn on_open(&mut self, conn: &Connection) {
        let mut chunk = vec![0u8; CHUNK];
        for n in 0..CHUNKS {
            chunk[..8].copy_from_slice(&(n as u64).to_be_bytes());
            conn.send_wait(websocket_handler::Bytes::copy_from_slice(&chunk))
                .await
                .expect("the client is still there");
            self.peak.fetch_max(conn.queued().bytes, Ordering::Relaxed);
        }
        conn.send_wait("done")
            .await
            .expect("the client is still there");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_100_mib_to_a_slow_reader_waits_for_it_within_the_queue_bounds() {
    let server = WebSocketServer::builder()
        .outbound_queue_bytes(QUEUE_BYTES)
        .idle_timeout(Some(Duration::from_secs(60)))
        .build();
    let metrics = server.metrics().clone();
    let peak = Arc::new(AtomicUsize::new(0));
    let shared = peak.clone();
    let addr = common::serve(server, move |_| Streamer {
        peak: shared.clone(),
    })
    .await;
    let mut client = common::connect(addr, "/").await;
    within("the whole stream, read slowly", async {
        for n in 0..CHUNKS {
            match next_message(&mut client).await {
                Some(WsMessage::Binary(chunk)) => {
                    assert_eq!(chunk.len(), CHUNK);
                    let got = u64::from_be_bytes(chunk[..8].try_into().expect("8 bytes"));
                    assert_eq!(got, n as u64, "in order, none lost");
                }
                other => panic!("chunk {n}: {other:?}"),
            }
            // A reader slower than the server: a pause every 16 chunks (1 MiB).
            if n % 16 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        match next_message(&mut client).await {
            Some(WsMessage::Text(text)) => assert_eq!(text.as_str(), "done"),
            other => panic!("the end: {other:?}"),
        }
    })
    .await;
    assert_eq!(
        metrics.snapshot().slow_consumer_disconnects,
        0,
        "waited, never closed as a slow consumer"
    );
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= QUEUE_BYTES,
        "the queue held at most its bound: {peak} bytes"
    );
    assert!(peak >= QUEUE_BYTES / 2, "the queue did fill: {peak} bytes");
}

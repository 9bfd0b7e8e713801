//! Slow consumers: clients that never read, among hundreds that do, under a sustained
//! broadcast. The readers get everything in order; the slow ones are disconnected by the
//! default policy within the close timeout; no connection's queue grows past its bound.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{connect, next_message, within, WAIT};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, Notify};
use websocket_handler::{
    CloseFrame, Connection, ConnectionId, Error, WebSocketCollection, WebSocketHandler,
    WebSocketServer,
};

const READERS: usize = 200;
const MESSAGES: u64 = 600;
const PAYLOAD: usize = 1024;
/// The broadcaster stays at most this many messages ahead of the slowest reader.
const AHEAD: u64 = 32;
const QUEUE_BYTES: usize = 64 * 1024;
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

enum Event {
    Open(Connection),
    Error(ConnectionId, String, bool),
    Close(ConnectionId),
}

struct Member {
    room: WebSocketCollection,
    events: mpsc::UnboundedSender<Event>,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        let _ = self.events.send(Event::Open(conn.clone()));
    }
    async fn on_error(&mut self, conn: &Connection, error: &Error) {
        let slow = matches!(error, Error::SlowConsumer { .. });
        let _ = self
            .events
            .send(Event::Error(conn.id(), error.to_string(), slow));
    }
    async fn on_close(&mut self, conn: &Connection, _frame: &CloseFrame) {
        let _ = self.events.send(Event::Close(conn.id()));
    }
}

/// Messages each reader has received, in order, and a wake-up for the broadcaster.
struct Progress {
    received: Vec<AtomicU64>,
    changed: Notify,
}

impl Progress {
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|count| count.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

async fn next_open(events: &mut mpsc::UnboundedReceiver<Event>) -> Connection {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(Event::Open(conn))) => conn,
        _ => panic!("expected on_open"),
    }
}

fn payload(seq: u64) -> Vec<u8> {
    let mut bytes = vec![(seq % 251) as u8; PAYLOAD];
    bytes[..8].copy_from_slice(&seq.to_be_bytes());
    bytes
}

async fn run(slow_clients: usize) {
    let config = WebSocketServer::builder()
        .outbound_queue_capacity(10_000)
        .outbound_queue_bytes(QUEUE_BYTES)
        .close_timeout(CLOSE_TIMEOUT)
        .build();
    let room = WebSocketCollection::new();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let server_room = room.clone();
    let options = common::Options {
        send_buffer: Some(16 * 1024),
        ..Default::default()
    };
    let addr = common::serve_with(config, options, move |_| Member {
        room: server_room.clone(),
        events: events_tx.clone(),
    })
    .await;

    // Readers: each checks that it gets every message, in order.
    let progress = Arc::new(Progress {
        received: (0..READERS).map(|_| AtomicU64::new(0)).collect(),
        changed: Notify::new(),
    });
    let mut readers = Vec::new();
    for index in 0..READERS {
        let mut client = connect(addr, "/").await;
        next_open(&mut events).await;
        let progress = progress.clone();
        readers.push(tokio::spawn(async move {
            for seq in 0..MESSAGES {
                let message = next_message(&mut client).await.expect("reader stays open");
                assert_eq!(
                    message.into_data(),
                    payload(seq),
                    "reader {index}, message {seq}"
                );
                progress.received[index].store(seq + 1, Ordering::Release);
                progress.changed.notify_one();
            }
        }));
    }

    // Slow clients: a tiny receive buffer, and never read.
    let mut slow = Vec::new();
    let mut slow_conns = Vec::new();
    for _ in 0..slow_clients {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let stream = within("a slow client's TCP connection", socket.connect(addr))
            .await
            .expect("connect");
        let (client, _) = within(
            "a slow client's handshake",
            tokio_tungstenite::client_async(format!("ws://{addr}/"), stream),
        )
        .await
        .expect("handshake");
        slow.push(client);
        slow_conns.push(next_open(&mut events).await);
    }
    assert_eq!(room.len(), READERS + slow_clients);

    // A sustained broadcast, paced by the readers.
    for seq in 0..MESSAGES {
        while progress.slowest() + AHEAD <= seq {
            tokio::time::timeout(WAIT, progress.changed.notified())
                .await
                .expect("readers keep up");
        }
        room.broadcast(payload(seq));
        for conn in &slow_conns {
            let bytes = conn.queued().bytes;
            assert!(
                bytes <= QUEUE_BYTES,
                "queue of {bytes} bytes past its bound"
            );
        }
    }
    for reader in readers {
        tokio::time::timeout(WAIT, reader)
            .await
            .expect("readers finish")
            .expect("reader got every message in order");
    }

    // Every slow client was reported and dropped, within the close timeout of its overflow.
    // (Readers that finished drop their sockets; their events are not counted.)
    let slow_ids: Vec<ConnectionId> = slow_conns.iter().map(Connection::id).collect();
    let mut reported = Vec::new();
    let mut closed = Vec::new();
    while closed.len() < slow_clients {
        match tokio::time::timeout(CLOSE_TIMEOUT + WAIT, events.recv()).await {
            Ok(Some(Event::Error(id, error, is_slow))) if slow_ids.contains(&id) => {
                assert!(is_slow, "unexpected error: {error}");
                reported.push(id);
            }
            Ok(Some(Event::Close(id))) if slow_ids.contains(&id) => closed.push(id),
            Ok(Some(Event::Error(..) | Event::Close(_))) => {}
            Ok(Some(Event::Open(_))) => panic!("no new connection expected"),
            Ok(None) | Err(_) => panic!("only {} slow clients dropped", closed.len()),
        }
    }
    for conn in &slow_conns {
        assert!(reported.contains(&conn.id()), "slow consumer reported");
        assert!(closed.contains(&conn.id()), "slow consumer closed");
        assert!(!room.contains(conn.id()), "slow consumer left the room");
    }
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_that_never_reads_is_dropped_and_the_others_get_everything() {
    run(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clients_that_never_read_are_dropped_and_the_others_get_everything() {
    run(10).await;
}

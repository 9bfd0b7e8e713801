//! WebSocketCollection over real loopback clients: broadcast, broadcast_except, and automatic
//! removal of closed connections.

mod common;

use common::{connect, next_message, next_text, within, Client, WAIT};
use futures_util::future::join_all;
use tokio::sync::mpsc;
use websocket_handler::{Connection, WebSocketCollection, WebSocketHandler, WebSocketServer};

/// Joins `room` on open and reports the connection.
struct Member {
    room: WebSocketCollection,
    opened: mpsc::UnboundedSender<Connection>,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        assert!(self.room.add(conn.clone()));
        let _ = self.opened.send(conn.clone());
    }
}

/// Starts a server whose connections join one room, and connects `n` clients to it.
/// Returns the room, the clients and their server-side handles, in connect order.
async fn room_with_clients(n: usize) -> (WebSocketCollection, Vec<Client>, Vec<Connection>) {
    room_with_clients_and(n, WebSocketServer::new(), common::Options::default()).await
}

/// Like [`room_with_clients`], with the server using `config` and `options`.
async fn room_with_clients_and(
    n: usize,
    config: WebSocketServer,
    options: common::Options,
) -> (WebSocketCollection, Vec<Client>, Vec<Connection>) {
    let room = WebSocketCollection::new();
    let (opened, mut opened_rx) = mpsc::unbounded_channel();
    let server_room = room.clone();
    let addr = common::serve_with(config, options, move |_| Member {
        room: server_room.clone(),
        opened: opened.clone(),
    })
    .await;
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..n {
        clients.push(connect(addr, "/").await);
        let conn = tokio::time::timeout(WAIT, opened_rx.recv())
            .await
            .expect("on_open in time")
            .expect("server running");
        conns.push(conn);
    }
    assert_eq!(room.len(), n);
    (room, clients, conns)
}

async fn wait_closed(conn: &Connection) {
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("connection closes in time");
}

#[tokio::test]
async fn broadcast_reaches_every_client_exactly_once_in_order() {
    let (room, mut clients, _) = room_with_clients(20).await;
    for i in 0..300 {
        assert_eq!(room.broadcast(format!("message {i}")), 20);
    }
    // A marker after the burst: if any message were duplicated, it would arrive before it.
    assert_eq!(room.broadcast("end"), 20);
    let readers = clients.iter_mut().map(|client| async move {
        for i in 0..300 {
            assert_eq!(next_text(client).await, format!("message {i}"));
        }
        assert_eq!(next_text(client).await, "end");
    });
    join_all(readers).await;
}

#[tokio::test]
async fn binary_broadcast_reaches_everyone() {
    let (room, mut clients, _) = room_with_clients(3).await;
    let payload = bytes::Bytes::from(vec![7u8; 4096]);
    assert_eq!(room.broadcast(payload.clone()), 3);
    for client in &mut clients {
        match next_message(client).await {
            Some(tokio_tungstenite::tungstenite::Message::Binary(bytes)) => {
                assert_eq!(bytes, payload)
            }
            other => panic!("expected binary, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn broadcast_except_skips_one_connection() {
    let (room, mut clients, conns) = room_with_clients(3).await;
    assert_eq!(room.broadcast_except(conns[1].id(), "not for 1"), 2);
    assert_eq!(room.broadcast("for all"), 3);
    assert_eq!(next_text(&mut clients[0]).await, "not for 1");
    assert_eq!(next_text(&mut clients[1]).await, "for all");
    assert_eq!(next_text(&mut clients[2]).await, "not for 1");
}

#[tokio::test]
async fn closed_connections_leave_the_collection_by_themselves() {
    let (room, mut clients, conns) = room_with_clients(4).await;
    let other_room = WebSocketCollection::new();
    for conn in &conns {
        assert!(other_room.add(conn.clone()));
        assert!(!other_room.add(conn.clone()), "adding twice is refused");
    }

    // Client 0 closes cleanly; client 1 vanishes without a close frame.
    within("client 0's close", clients[0].close(None))
        .await
        .expect("close");
    let abrupt = clients.remove(1);
    drop(abrupt);
    wait_closed(&conns[0]).await;
    wait_closed(&conns[1]).await;
    for room in [&room, &other_room] {
        assert!(!room.contains(conns[0].id()));
        assert!(!room.contains(conns[1].id()));
        assert_eq!(room.len(), 2);
    }
    assert_eq!(room.broadcast("still here"), 2);
    assert_eq!(next_text(&mut clients[1]).await, "still here");
    assert_eq!(next_text(&mut clients[2]).await, "still here");

    // A closed connection cannot be added back.
    assert!(!room.add(conns[0].clone()));

    // Explicit removal, then close: nothing is left anywhere.
    assert_eq!(
        room.remove(conns[2].id()).map(|c| c.id()),
        Some(conns[2].id())
    );
    assert!(room.remove(conns[2].id()).is_none());
    drop(clients);
    wait_closed(&conns[2]).await;
    wait_closed(&conns[3]).await;
    assert!(room.is_empty());
    assert!(other_room.is_empty());
    assert_eq!(room.broadcast("nobody"), 0);
}

#[tokio::test]
async fn collection_snapshot_and_concurrent_broadcasters() {
    let (room, mut clients, conns) = room_with_clients(5).await;
    let mut ids: Vec<_> = room.connections().iter().map(Connection::id).collect();
    ids.sort();
    let mut expected: Vec<_> = conns.iter().map(Connection::id).collect();
    expected.sort();
    assert_eq!(ids, expected);

    // Two tasks broadcast at once: every client gets all 200 messages, each task's in order.
    let tasks = ["a", "b"].map(|tag| {
        let room = room.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                room.broadcast(format!("{tag}{i}"));
                tokio::task::yield_now().await;
            }
        })
    });
    for task in tasks {
        within("a broadcaster task to finish", task)
            .await
            .expect("broadcaster");
    }
    for client in &mut clients {
        let (mut next_a, mut next_b) = (0, 0);
        for _ in 0..200 {
            let text = next_text(client).await;
            let (tag, n) = text.split_at(1);
            let n: usize = n.parse().expect("number");
            let next = if tag == "a" { &mut next_a } else { &mut next_b };
            assert_eq!(n, *next, "per-sender order");
            *next += 1;
        }
    }
}

/// A client that stops reading fills its socket; the write that meets the full socket is
/// handed to that connection's own task, so the others are not held up, and once the slow
/// client reads again it gets everything, in order.
#[tokio::test]
async fn a_client_that_stops_reading_holds_up_nobody_and_loses_nothing() {
    stop_reading_then_resume(common::Options::default()).await;
}

/// The same over a transport that buffers writes (like TLS): its flush can be pending too,
/// and writing must still resume.
#[tokio::test]
async fn writing_resumes_over_a_buffering_transport() {
    let options = common::Options {
        buffered: true,
        ..Default::default()
    };
    stop_reading_then_resume(options).await;
}

async fn stop_reading_then_resume(options: common::Options) {
    // Queue bounds big enough for the whole burst: this is about writing, not the policy.
    let config = WebSocketServer::builder()
        .outbound_queue_bytes(16 << 20)
        .build();
    let (room, mut clients, _) = room_with_clients_and(2, config, options).await;
    let mut slow = clients.pop().expect("two clients");
    let mut fast = clients.pop().expect("two clients");
    // 200 x 32 KiB = 6.4 MiB: far more than loopback socket buffers hold.
    const COUNT: usize = 200;
    let payload = |i: usize| {
        let mut bytes = vec![(i % 251) as u8; 32 * 1024];
        bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
        bytes
    };
    for i in 0..COUNT {
        assert_eq!(room.broadcast(payload(i)), 2, "message {i} queued to both");
    }
    // The fast client gets everything while the slow one has read nothing.
    for i in 0..COUNT {
        let message = next_message(&mut fast).await.expect("fast client open");
        assert_eq!(message.into_data(), payload(i), "fast client, message {i}");
    }
    // Then a few more messages to the slow one, queued while its socket is still full.
    for i in COUNT..COUNT + 3 {
        assert_eq!(room.broadcast(payload(i)), 2, "message {i} queued to both");
    }
    for i in 0..COUNT + 3 {
        let message = next_message(&mut slow).await.expect("slow client open");
        assert_eq!(message.into_data(), payload(i), "slow client, message {i}");
    }
}

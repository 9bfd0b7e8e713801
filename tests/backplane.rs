//! Collections joined by a backplane, over real sockets: [`MemoryBackplane`] stands in for
//! the network (tests/backplane_redis.rs does the same through a real Redis).

mod common;

use common::{connect, next_text, send_text, Client};
use websocket_handler::backplane::MemoryBackplane;
use websocket_handler::{
    Connection, Message, WebSocketCollection, WebSocketHandler, WebSocketServer,
};

/// A chat member: joins `room`, says "in", and broadcasts what it receives, except to itself
/// when `except_me`, and only locally for lines starting with "local ".
struct Member {
    room: WebSocketCollection,
    except_me: bool,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        conn.send("in").expect("queue has room");
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let Some(text) = message.as_text() else {
            return;
        };
        if text.starts_with("local ") {
            self.room.broadcast_local(text);
        } else if self.except_me {
            self.room.broadcast_except(conn.id(), text);
        } else {
            self.room.broadcast(text);
        }
    }
}

/// A server whose connections join `room`.
async fn server(room: &WebSocketCollection, except_me: bool) -> std::net::SocketAddr {
    let room = room.clone();
    common::serve(WebSocketServer::new(), move |_| Member {
        room: room.clone(),
        except_me,
    })
    .await
}

async fn member(addr: std::net::SocketAddr) -> Client {
    let mut client = connect(addr, "/").await;
    assert_eq!(next_text(&mut client).await, "in");
    client
}

#[tokio::test]
async fn broadcasts_reach_every_collection_on_the_topic_once_and_in_order() {
    let bus = MemoryBackplane::new();
    let room_a = WebSocketCollection::with_backplane("chat", bus.clone());
    let room_b = WebSocketCollection::with_backplane("chat", bus.clone());
    let elsewhere = WebSocketCollection::with_backplane("other", bus.clone());
    let (a, b, c) = (
        server(&room_a, false).await,
        server(&room_b, false).await,
        server(&elsewhere, false).await,
    );
    let mut on_a = member(a).await;
    let mut on_b = member(b).await;
    let mut other_topic = member(c).await;

    for n in 0..100 {
        send_text(&mut on_a, &format!("a{n}")).await;
    }
    for client in [&mut on_b, &mut on_a] {
        for n in 0..100 {
            assert_eq!(next_text(client).await, format!("a{n}"));
        }
    }
    // Nothing came twice: the next message anyone gets is this one.
    send_text(&mut on_b, "from b").await;
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(next_text(client).await, "from b");
    }
    // The other topic heard none of it: its first message is its own.
    send_text(&mut other_topic, "mine").await;
    assert_eq!(next_text(&mut other_topic).await, "mine");
    assert_eq!(
        (room_a.len(), room_b.len()),
        (1, 1),
        "membership stays local"
    );
}

#[tokio::test]
async fn broadcast_local_stays_and_broadcast_except_skips_only_the_sender() {
    let bus = MemoryBackplane::new();
    let room_a = WebSocketCollection::with_backplane("chat", bus.clone());
    let room_b = WebSocketCollection::with_backplane("chat", bus.clone());
    let (a, b) = (server(&room_a, true).await, server(&room_b, true).await);
    let mut sender = member(a).await;
    let mut neighbour = member(a).await;
    let mut remote = member(b).await;

    send_text(&mut sender, "local hi").await;
    send_text(&mut sender, "everyone else").await;
    assert_eq!(next_text(&mut sender).await, "local hi");
    assert_eq!(next_text(&mut neighbour).await, "local hi");
    assert_eq!(next_text(&mut neighbour).await, "everyone else");
    // The remote server never got "local hi": its first message is the second one.
    assert_eq!(next_text(&mut remote).await, "everyone else");
    // And the sender did not get its own "everyone else": its next message is this one.
    send_text(&mut remote, "reply").await;
    assert_eq!(next_text(&mut sender).await, "reply");
}

#[tokio::test]
async fn a_dropped_collection_stops_receiving() {
    let bus = MemoryBackplane::new();
    let room_a = WebSocketCollection::with_backplane("chat", bus.clone());
    let room_b = WebSocketCollection::with_backplane("chat", bus.clone());
    drop(room_b);
    // Delivering to the dropped room's inbox finds it closed; nothing is queued anywhere.
    assert_eq!(room_a.broadcast("anyone?"), 0);
    assert_eq!(format!("{bus:?}"), "MemoryBackplane { topics: 1 }");
    // The last collection on the topic ends its subscription.
    let clone = room_a.clone();
    drop(room_a);
    assert_eq!(
        format!("{bus:?}"),
        "MemoryBackplane { topics: 1 }",
        "a clone is left"
    );
    drop(clone);
    assert_eq!(format!("{bus:?}"), "MemoryBackplane { topics: 0 }");
}

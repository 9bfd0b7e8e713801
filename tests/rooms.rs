//! `Rooms` over real sockets: joining, leaving, sending to a room, to all but the sender, to
//! every tab of one user, and rooms that go away with their last member.

mod common;

use std::net::SocketAddr;

use common::{connect, next_text, send_text, within, Client};
use tokio::sync::mpsc;
use websocket_handler::{
    query_param, CloseFrame, Connection, Message, Rooms, WebSocketHandler, WebSocketServer,
};

/// A client speaking a tiny command language:
/// `join R`, `leave R`, `to R TEXT`, `others R TEXT`, `user U TEXT`, `count R`, `mine`.
/// Every connection is also in its user's room (`?user=U`), for sends to all of a user's
/// tabs. Says "in" once joined; reports each close on `closed`.
struct Member {
    user: String,
    rooms: Rooms<String>,
    users: Rooms<String>,
    closed: mpsc::UnboundedSender<()>,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        assert!(self.users.join(self.user.clone(), conn));
        conn.send("in").expect("queue has room");
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let text = message.as_text().unwrap_or_default().to_owned();
        let mut words = text.splitn(3, ' ');
        let (command, room, rest) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or("").to_owned(),
            words.next().unwrap_or(""),
        );
        let reply = match command {
            "join" => format!("joined {room}: {}", self.rooms.join(room.clone(), conn)),
            "leave" => format!("left {room}: {}", self.rooms.leave(&room, conn.id())),
            "to" => format!("to {room}: {}", self.rooms.broadcast_to(&room, rest)),
            "others" => format!(
                "others {room}: {}",
                self.rooms.broadcast_to_except(&room, conn.id(), rest)
            ),
            "user" => format!("user {room}: {}", self.users.broadcast_to(&room, rest)),
            "count" => format!("count {room}: {}", self.rooms.count(&room)),
            "mine" => {
                let mut mine = self.rooms.rooms_of(conn);
                mine.sort();
                format!("mine: {}", mine.join(","))
            }
            other => format!("unknown command {other}"),
        };
        let _ = conn.send(reply);
    }

    async fn on_close(&mut self, _conn: &Connection, _frame: &CloseFrame) {
        let _ = self.closed.send(());
    }
}

struct Server {
    addr: SocketAddr,
    rooms: Rooms<String>,
    users: Rooms<String>,
    closed: mpsc::UnboundedReceiver<()>,
}

async fn server() -> Server {
    let (rooms, users) = (Rooms::new(), Rooms::new());
    let (tx, closed) = mpsc::unbounded_channel();
    let (r, u) = (rooms.clone(), users.clone());
    let addr = common::serve(WebSocketServer::new(), move |req| {
        let query = req.uri().query().unwrap_or("");
        Member {
            user: query_param(query, "user")
                .ok()
                .flatten()
                .unwrap_or_default(),
            rooms: r.clone(),
            users: u.clone(),
            closed: tx.clone(),
        }
    })
    .await;
    Server {
        addr,
        rooms,
        users,
        closed,
    }
}

async fn client(server: &Server, user: &str) -> Client {
    let mut client = connect(server.addr, &format!("/?user={user}")).await;
    assert_eq!(next_text(&mut client).await, "in");
    client
}

/// Sends a command and returns the reply (skipping nothing: callers know what comes next).
async fn ask(client: &mut Client, command: &str) -> String {
    send_text(client, command).await;
    next_text(client).await
}

#[tokio::test]
async fn messages_stay_in_their_room() {
    let server = server().await;
    let mut ann = client(&server, "ann").await;
    let mut bob = client(&server, "bob").await;
    let mut cat = client(&server, "cat").await;
    assert_eq!(ask(&mut ann, "join red").await, "joined red: true");
    assert_eq!(ask(&mut ann, "join red").await, "joined red: false");
    assert_eq!(ask(&mut bob, "join red").await, "joined red: true");
    assert_eq!(ask(&mut cat, "join blue").await, "joined blue: true");
    assert_eq!(ask(&mut ann, "join blue").await, "joined blue: true");
    assert_eq!(ask(&mut ann, "mine").await, "mine: blue,red");
    assert_eq!(ask(&mut ann, "count red").await, "count red: 2");

    // To red: ann (the sender) and bob; cat is only in blue.
    send_text(&mut ann, "to red hello red").await;
    assert_eq!(next_text(&mut ann).await, "hello red");
    assert_eq!(next_text(&mut ann).await, "to red: 2");
    assert_eq!(next_text(&mut bob).await, "hello red");
    // To blue but not the sender: only ann.
    assert_eq!(ask(&mut cat, "others blue psst").await, "others blue: 1");
    assert_eq!(next_text(&mut ann).await, "psst");
    // cat got nothing from red, and bob nothing from blue: their next lines are these.
    assert_eq!(ask(&mut cat, "count red").await, "count red: 2");
    assert_eq!(ask(&mut bob, "count blue").await, "count blue: 2");

    // Leaving: ann leaves red; red still has bob.
    assert_eq!(ask(&mut ann, "leave red").await, "left red: true");
    assert_eq!(ask(&mut ann, "leave red").await, "left red: false");
    assert_eq!(ask(&mut bob, "to red only bob").await, "only bob");
    assert_eq!(next_text(&mut bob).await, "to red: 1");
    let mut names = server.rooms.rooms();
    names.sort();
    assert_eq!(names, ["blue", "red"]);
    assert_eq!(server.rooms.members(&"red".to_string()).len(), 1);
}

#[tokio::test]
async fn a_closed_connection_leaves_all_its_rooms_and_empty_rooms_go() {
    let mut server = server().await;
    let mut ann = client(&server, "ann").await;
    let mut bob = client(&server, "bob").await;
    for room in ["a", "b", "c"] {
        assert_eq!(
            ask(&mut ann, &format!("join {room}")).await,
            format!("joined {room}: true")
        );
    }
    assert_eq!(ask(&mut bob, "join a").await, "joined a: true");
    assert_eq!(server.rooms.len(), 3);

    // A room emptied by leaving goes.
    assert_eq!(ask(&mut ann, "leave c").await, "left c: true");
    assert_eq!(server.rooms.len(), 2);
    assert_eq!(server.rooms.count(&"c".to_string()), 0);

    // Closing leaves every room; "b" is left empty and goes, "a" keeps bob.
    drop(ann);
    within("ann's on_close", server.closed.recv())
        .await
        .expect("ann's on_close");
    assert_eq!(server.rooms.rooms(), ["a"]);
    assert_eq!(ask(&mut bob, "count a").await, "count a: 1");
    assert_eq!(server.users.rooms(), ["bob"], "ann's user room went too");

    // A room can be made again after it went.
    assert_eq!(ask(&mut bob, "join b").await, "joined b: true");
    assert_eq!(ask(&mut bob, "count b").await, "count b: 1");
}

#[tokio::test]
async fn a_user_is_reached_in_every_tab() {
    let server = server().await;
    let mut tab1 = client(&server, "ann").await;
    let mut tab2 = client(&server, "ann").await;
    let mut bob = client(&server, "bob").await;
    assert_eq!(ask(&mut bob, "user ann hi ann").await, "user ann: 2");
    assert_eq!(next_text(&mut tab1).await, "hi ann");
    assert_eq!(next_text(&mut tab2).await, "hi ann");
    // bob got only his reply: his next line is this one.
    assert_eq!(ask(&mut bob, "user nobody hello?").await, "user nobody: 0");
}

/// Rooms on a backplane: the same room in two "processes" (here two servers on one
/// `MemoryBackplane`), and a send to a room with members only on the other side.
#[tokio::test]
async fn rooms_on_a_backplane_span_servers() {
    use websocket_handler::backplane::MemoryBackplane;

    let bus = MemoryBackplane::new();
    let (tx, _closed) = mpsc::unbounded_channel();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let rooms: Rooms<String> = Rooms::with_backplane("room:", bus.clone());
        let users: Rooms<String> = Rooms::with_backplane("user:", bus.clone());
        let tx = tx.clone();
        addrs.push(
            common::serve(WebSocketServer::new(), move |req| Member {
                user: query_param(req.uri().query().unwrap_or(""), "user")
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
                rooms: rooms.clone(),
                users: users.clone(),
                closed: tx.clone(),
            })
            .await,
        );
    }
    let connect_as = |addr: SocketAddr, user: &'static str| async move {
        let mut client = connect(addr, &format!("/?user={user}")).await;
        assert_eq!(next_text(&mut client).await, "in");
        client
    };
    let mut ann = connect_as(addrs[0], "ann").await;
    let mut bob = connect_as(addrs[1], "bob").await;
    let mut cat = connect_as(addrs[1], "cat").await;
    assert_eq!(ask(&mut ann, "join red").await, "joined red: true");
    assert_eq!(ask(&mut bob, "join red").await, "joined red: true");
    assert_eq!(ask(&mut cat, "join blue").await, "joined blue: true");

    send_text(&mut ann, "to red across").await;
    assert_eq!(next_text(&mut ann).await, "across");
    assert_eq!(
        next_text(&mut ann).await,
        "to red: 1",
        "one member on this server"
    );
    assert_eq!(next_text(&mut bob).await, "across");
    // ann's server has no "blue" room, yet the send reaches cat on the other server.
    assert_eq!(ask(&mut ann, "to blue from afar").await, "to blue: 0");
    assert_eq!(next_text(&mut cat).await, "from afar");
    // A user's tabs on another server.
    assert_eq!(ask(&mut ann, "user bob psst").await, "user bob: 0");
    assert_eq!(next_text(&mut bob).await, "psst");
    // Nothing leaked between rooms: cat's and bob's next lines are their replies.
    assert_eq!(ask(&mut cat, "count blue").await, "count blue: 1");
    assert_eq!(ask(&mut bob, "count red").await, "count red: 1");
}

/// A room key whose `Hash` panics for room 1 once `PANICKY` is set: user code that runs when
/// a closed connection leaves its rooms.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Key(u32);

static PANICKY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if self.0 == 1 && PANICKY.load(std::sync::atomic::Ordering::Relaxed) {
            panic!("a room key that panics");
        }
        self.0.hash(state);
    }
}

/// Joins rooms 1 and 2 and hands its connection to the test.
struct JoinsTwo {
    rooms: Rooms<Key>,
    connections: mpsc::UnboundedSender<Connection>,
}

impl WebSocketHandler for JoinsTwo {
    async fn on_open(&mut self, conn: &Connection) {
        self.rooms.join(Key(1), conn);
        self.rooms.join(Key(2), conn);
        let _ = self.connections.send(conn.clone());
    }
}

#[tokio::test]
async fn a_room_key_that_panics_while_a_connection_leaves_does_not_hang_closed() {
    let rooms = Rooms::new();
    let (connections, mut handed) = mpsc::unbounded_channel();
    let shared = rooms.clone();
    let addr = common::serve(WebSocketServer::new(), move |_| JoinsTwo {
        rooms: shared.clone(),
        connections: connections.clone(),
    })
    .await;
    let client = connect(addr, "/").await;
    let conn = within("the connection", handed.recv())
        .await
        .expect("a connection");
    assert_eq!(rooms.count(&Key(2)), 1);
    PANICKY.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(client);
    within(
        "closed() after a panic in the room key's Hash",
        conn.closed(),
    )
    .await;
    assert_eq!(
        rooms.count(&Key(2)),
        0,
        "it left the other room all the same"
    );
}

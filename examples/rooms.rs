//! Rooms and users with [`Rooms`]: one `Rooms<String>` keyed by room name, another keyed by
//! user name (every tab of one user is a member of that user's "room"), and
//! [`Rooms::rooms_of`] to list where a connection is. Everyone starts in `lobby`.
//!
//! ```text
//! cargo run --example rooms
//! ```
//!
//! Then, in two browser tabs' consoles (F12), as `ana` and as `ben`:
//!
//! ```text
//! ws = new WebSocket("ws://127.0.0.1:3004/?user=ana"); ws.onmessage = e => console.log(e.data)
//! ws.send("/join rust")           // rust: ana joined (1 here)
//! ws.send("/say rust hello")      // [rust] ana: hello          (ben, not in rust, sees nothing)
//! ws.send("/say lobby hi all")    // [lobby] ana: hi all        (both)
//! ws.send("/msg ben psst")        // [ana → ben] psst           (every tab of ben's, and ana's)
//! ws.send("/rooms")               // your rooms: lobby, rust
//! ws.send("/leave rust")
//! ```

use std::net::SocketAddr;

use websocket_handler::http::StatusCode;
use websocket_handler::{Connection, Message, Rooms};
use websocket_handler::{WebSocketHandler, WebSocketServer};

const HELP: &str = "commands: /join ROOM, /leave ROOM, /say ROOM TEXT, /msg USER TEXT, /rooms";

/// Shared by every connection: clones of the same two sets of rooms.
#[derive(Clone, Default)]
struct Chat {
    rooms: Rooms<String>,
    /// One "room" per user: all of that user's connections.
    users: Rooms<String>,
}

struct Member {
    user: String,
    chat: Chat,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.chat.users.join(self.user.clone(), conn);
        self.join("lobby".to_owned(), conn);
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        // `/COMMAND NAME WORDS...`, NAME being a room or a user.
        let text = message.as_text().unwrap_or_default();
        let (command, rest) = text.split_once(' ').unwrap_or((text, ""));
        let (name, words) = rest.split_once(' ').unwrap_or((rest, ""));
        let name = name.to_owned();
        let (rooms, users) = (&self.chat.rooms, &self.chat.users);
        match command {
            "/join" if !name.is_empty() => self.join(name, conn),
            "/leave" => {
                if rooms.leave(&name, conn.id()) {
                    let _ = conn.send(format!("you left {name}"));
                    rooms.broadcast_to(&name, format!("{name}: {} left", self.user));
                }
            }
            "/say" => {
                // Only to a room one is in: `rooms_of` reads the connection's own memberships.
                if rooms.rooms_of(conn).contains(&name) {
                    rooms.broadcast_to(&name, format!("[{name}] {}: {words}", self.user));
                } else {
                    let _ = conn.send(format!("you are not in {name}: /join {name} first"));
                }
            }
            "/msg" => {
                let text = format!("[{} → {name}] {words}", self.user);
                // To every tab of the recipient, then of the sender (its other tabs too).
                if users.broadcast_to(&name, text.as_str()) == 0 {
                    let _ = conn.send(format!("{name} is not online"));
                } else if name != self.user {
                    users.broadcast_to(&self.user, text);
                }
            }
            "/rooms" => {
                let mut mine = rooms.rooms_of(conn);
                mine.sort();
                let _ = conn.send(format!("your rooms: {}", mine.join(", ")));
            }
            _ => {
                let _ = conn.send(HELP);
            }
        }
    }
    // No `on_close`: a closed connection leaves every room (and its user's) by itself, and
    // a room goes away with its last member.
}

impl Member {
    /// Joins `room` and tells its members, the newcomer included.
    fn join(&self, room: String, conn: &Connection) {
        let rooms = &self.chat.rooms;
        rooms.join(room.clone(), conn);
        let here = rooms.count(&room);
        rooms.broadcast_to(&room, format!("{room}: {} joined ({here} here)", self.user));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = addr_argument("rooms", "127.0.0.1:3004")?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("Rooms listening on ws://{addr}/?user=NAME");

    let chat = Chat::default();
    WebSocketServer::new()
        .serve(listener, move |upgrade| {
            let chat = chat.clone();
            async move {
                // `?user=ana`; without it, 400.
                match upgrade.query_param("user") {
                    Some(user) => upgrade.accept(Member { user, chat }),
                    _ => upgrade.refuse(StatusCode::BAD_REQUEST, "?user=NAME is needed\n"),
                }
            }
        })
        .await?;
    Ok(())
}

/// `--addr HOST:PORT`, or `default`.
fn addr_argument(example: &str, default: &str) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = default.parse()?;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?.parse()?,
            _ => return Err(format!("usage: {example} [--addr HOST:PORT]").into()),
        }
    }
    Ok(addr)
}

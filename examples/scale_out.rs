//! Scaling out: one room across several server processes through Redis. It is the one-room
//! chat of the README with two lines changed; the room is made with a backplane:
//!
//! ```text
//! - let room = WebSocketCollection::new();
//! + let redis = RedisBackplane::new(url)?;
//! + let room = WebSocketCollection::with_backplane("scale-out-room", redis.clone());
//! ```
//!
//! and everything else (`add`, `broadcast`) is as before: a broadcast on any server reaches
//! the room's clients on every server, in one order (Redis streams, the lossless mode; see
//! the README, "Scaling out"). Two servers and a Redis on one machine (Debian:
//! `apt-get install -y redis-server`):
//!
//! ```text
//! redis-server --port 6379 --save "" &
//! cargo run --example scale_out --features redis -- --addr 127.0.0.1:3005 &
//! cargo run --example scale_out --features redis -- --addr 127.0.0.1:3006 &
//! ```
//!
//! Then, in two browser tabs' consoles (F12), one on each server:
//!
//! ```text
//! ws = new WebSocket("ws://127.0.0.1:3005/?name=ana"); ws.onmessage = e => console.log(e.data)
//! ws = new WebSocket("ws://127.0.0.1:3006/?name=ben"); ws.onmessage = e => console.log(e.data)
//! ws.send("hello from 3006")  // both tabs: ben (via 127.0.0.1:3006): hello from 3006
//! ```
//!
//! `--redis URL` points at another Redis (default `redis://127.0.0.1:6379`). Each server
//! prints its backplane's state as it changes: stop Redis and watch it reconnect.

use std::net::SocketAddr;

use websocket_handler::backplane::RedisBackplane;
use websocket_handler::http::StatusCode;
use websocket_handler::{Connection, Message, WebSocketCollection};
use websocket_handler::{WebSocketHandler, WebSocketServer};

/// One client: its name and the room, exactly as in a single process.
struct Chat {
    name: String,
    room: WebSocketCollection,
    /// This server's address, to show which server a message came through.
    server: SocketAddr,
}

impl WebSocketHandler for Chat {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone()); // members stay per process; broadcasts cross
    }

    async fn on_message(&mut self, _conn: &Connection, message: Message) {
        if let Some(text) = message.as_text() {
            let line = format!("{} (via {}): {text}", self.name, self.server);
            self.room.broadcast(line);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, url) = arguments()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let server = listener.local_addr()?;
    println!("Scale-out chat listening on ws://{server}/?name=NAME, through {url}");

    // The two lines: a backplane, and the room made with it.
    let redis = RedisBackplane::new(url)?;
    let room = WebSocketCollection::with_backplane("scale-out-room", redis.clone());

    // Not needed, but good to see: connecting, connected, reconnecting...
    let mut state = redis.state_changes();
    tokio::spawn(async move {
        loop {
            let now = *state.borrow_and_update();
            println!("Redis backplane: {now:?}");
            if state.changed().await.is_err() {
                return;
            }
        }
    });

    WebSocketServer::new()
        .serve(listener, move |upgrade| {
            let room = room.clone();
            async move {
                match upgrade.query_param("name") {
                    Some(name) => upgrade.accept(Chat { name, room, server }),
                    _ => upgrade.refuse(StatusCode::BAD_REQUEST, "?name=NAME is needed\n"),
                }
            }
        })
        .await?;
    Ok(())
}

/// `--addr HOST:PORT` (default 127.0.0.1:3005) and `--redis URL`.
fn arguments() -> Result<(SocketAddr, String), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:3005".parse()?;
    let mut url = "redis://127.0.0.1:6379".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?.parse()?,
            "--redis" => url = args.next().ok_or("--redis needs a URL")?,
            _ => return Err("usage: scale_out [--addr HOST:PORT] [--redis URL]".into()),
        }
    }
    Ok((addr, url))
}

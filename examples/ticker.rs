//! Server push: a background task broadcasts a tick every second to whoever is watching.
//! Clients join the [`WebSocketCollection`] when they connect and leave it when they go
//! (nothing to do: a closed connection leaves by itself); `stop` and `start` leave and join
//! again without disconnecting.
//!
//! ```text
//! cargo run --example ticker
//! ```
//!
//! Then, in a browser's console (F12), in as many tabs as you like:
//!
//! ```text
//! ws = new WebSocket("ws://127.0.0.1:3002/"); ws.onmessage = e => console.log(e.data)
//! // tick 7 at 12:00:07 UTC (2 watching)
//! ws.send("stop")  // no more ticks for this tab; ws.send("start") brings them back
//! ```

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use websocket_handler::WebSocketServer;
use websocket_handler::{Connection, Message, WebSocketCollection, WebSocketHandler};

/// One connection: it only needs to know where the ticks are broadcast.
struct Watcher {
    watchers: WebSocketCollection,
}

impl WebSocketHandler for Watcher {
    async fn on_open(&mut self, conn: &Connection) {
        self.watchers.add(conn.clone());
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        match message.as_text() {
            Some("stop") => {
                self.watchers.remove(conn.id());
            }
            Some("start") => {
                self.watchers.add(conn.clone());
            }
            _ => {
                let _ = conn.send("say stop or start");
            }
        }
    }
}

/// The background task: one broadcast per second, queued to every watcher without waiting
/// for any of them (a client that stops reading is let go, not waited for).
async fn tick(watchers: WebSocketCollection) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    // After a pause (a laptop asleep), carry on from now rather than catching up.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for n in 1u64.. {
        interval.tick().await;
        if watchers.is_empty() {
            continue; // nobody to tell: skip the formatting too
        }
        let text = format!("tick {n} at {} ({} watching)", utc_now(), watchers.len());
        watchers.broadcast(text);
    }
}

/// The time of day, `HH:MM:SS UTC`.
fn utc_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let seconds = since_epoch % 86_400;
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    format!("{hours:02}:{minutes:02}:{seconds:02} UTC")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = addr_argument("ticker", "127.0.0.1:3002")?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("Ticker listening on ws://{}/", listener.local_addr()?);

    let watchers = WebSocketCollection::new();
    tokio::spawn(tick(watchers.clone()));
    WebSocketServer::new()
        .serve(listener, move |upgrade| {
            let watchers = watchers.clone();
            async move { upgrade.accept(Watcher { watchers }) }
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

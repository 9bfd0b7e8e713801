//! A typed JSON protocol: a tiny auction. Clients send commands, the server broadcasts
//! events, and both are plain Rust enums (serde). A message that is not a command is
//! answered with what was wrong and where ([`JsonError`]), and the connection stays open.
//!
//! ```text
//! cargo run --example json_protocol --features json
//! ```
//!
//! Then, in two browser tabs' consoles (F12):
//!
//! ```text
//! ws = new WebSocket("ws://127.0.0.1:3001/?name=ana"); ws.onmessage = e => console.log(e.data)
//! ws.send('{"type": "bid", "amount": 120}')   // every tab: {"type":"new_high","bidder":"ana","amount":120}
//! ws.send('{"type": "say", "text": "mine!"}') // every tab: {"type":"said","from":"ana","text":"mine!"}
//! ws.send('{"type": "bid", "amount": "lots"}') // this tab: {"type":"error","message":"JSON of the wrong shape: ..."}
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use websocket_handler::http::StatusCode;
use websocket_handler::{Connection, JsonError, Message};
use websocket_handler::{WebSocketCollection, WebSocketHandler, WebSocketServer};

/// What a client may send: `{"type": "bid", "amount": 120}` or `{"type": "say", "text": ".."}`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Command {
    Bid { amount: u64 },
    Say { text: String },
}

/// What the server sends: to a client that connects, the bid to beat (`Welcome`); to
/// everyone, `NewHigh` and `Said`; to one client, a refused bid or the [`JsonError`]'s text.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    Welcome { high: Option<Bid> },
    NewHigh(Bid),
    Said { from: String, text: String },
    Rejected { reason: String },
    Error { message: String },
}

#[derive(Serialize, Clone)]
struct Bid {
    bidder: String,
    amount: u64,
}

/// What every connection shares: the bidders and the highest bid so far.
#[derive(Clone, Default)]
struct Auction {
    bidders: WebSocketCollection,
    high: Arc<Mutex<Option<Bid>>>,
}

struct Bidder {
    name: String,
    auction: Auction,
}

impl WebSocketHandler for Bidder {
    async fn on_open(&mut self, conn: &Connection) {
        // Under the lock, as new highs are broadcast: none is missed or told twice.
        let high = self.auction.high.lock().unwrap();
        let _ = conn.send_json(&Event::Welcome { high: high.clone() });
        self.auction.bidders.add(conn.clone());
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let command: Result<Command, JsonError> = message.json();
        match command {
            Ok(Command::Bid { amount }) => self.bid(conn, amount),
            Ok(Command::Say { text }) => {
                let from = self.name.clone();
                let said = Event::Said { from, text };
                let _ = self.auction.bidders.broadcast_json(&said);
            }
            // Not JSON, or not a command: say why, to the sender only, and carry on.
            Err(error) => {
                let message = error.to_string();
                let _ = conn.send_json(&Event::Error { message });
            }
        }
    }
}

impl Bidder {
    fn bid(&self, conn: &Connection, amount: u64) {
        let mut high = self.auction.high.lock().unwrap();
        let to_beat = high.as_ref().map_or(0, |high| high.amount);
        if amount <= to_beat {
            let reason = format!("bid more than {to_beat}");
            let _ = conn.send_json(&Event::Rejected { reason });
            return;
        }
        let bidder = self.name.clone();
        let bid = high.insert(Bid { bidder, amount });
        // Under the lock, so that everyone sees the highs in the order they were taken.
        // Encoded once, whatever the number of bidders; it never waits for one.
        let new_high = Event::NewHigh(bid.clone());
        let _ = self.auction.bidders.broadcast_json(&new_high);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = addr_argument("json_protocol", "127.0.0.1:3001")?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("Auction listening on ws://{addr}/?name=NAME");

    let auction = Auction::default();
    WebSocketServer::new()
        .serve(listener, move |upgrade| {
            let auction = auction.clone();
            async move {
                // `?name=ana`; without it, 400.
                match upgrade.query_param("name") {
                    Some(name) => upgrade.accept(Bidder { name, auction }),
                    _ => upgrade.refuse(StatusCode::BAD_REQUEST, "?name=NAME is needed\n"),
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

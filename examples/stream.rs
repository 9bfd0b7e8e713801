//! A stream to one client at the client's own pace, with [`Connection::send_wait`]: numbered
//! log lines, `?lines=N` of them (then a normal close) or endless.
//!
//! `send` vs `send_wait`:
//!
//! - [`send`](Connection::send) never waits. Use it for what must not wait for one client:
//!   a chat line, a broadcast's copy, a reply. A client whose queue is full (1024 messages
//!   or 1 MiB by default) is behind: it is closed with 1008, the slow-consumer policy, so
//!   that it cannot hold the server's memory or hold up the others.
//! - [`send_wait`](Connection::send_wait) waits while the queue is full. Use it when the
//!   server produces for one client faster than that client reads: a file, a log, a
//!   model's tokens, a database export. This loop would fill the queue in microseconds
//!   with `send`; with `send_wait` it runs as fast as the client reads, and memory stays
//!   within the queue's bounds.
//!
//! ```text
//! cargo run --example stream
//! ```
//!
//! Then, in a browser's console (F12), a thousand lines, or the endless log:
//!
//! ```text
//! ws = new WebSocket("ws://127.0.0.1:3003/?lines=1000"); ws.onmessage = e => console.log(e.data)
//! ws = new WebSocket("ws://127.0.0.1:3003/"); n = 0; ws.onmessage = () => n++  // read n now and then
//! ```
//!
//! The server prints how far each client is and how much waits in its queue (`queued`).

use std::net::SocketAddr;

use websocket_handler::http::StatusCode;
use websocket_handler::{CloseCode, Connection, WebSocketHandler, WebSocketServer};

/// One client's stream: how many lines it asked for (`None`: no end).
struct Log {
    lines: Option<u64>,
}

impl WebSocketHandler for Log {
    // The whole stream runs in `on_open`: a callback may take as long as it needs, and the
    // connection keeps going meanwhile (pings answered, a close from the client carried
    // out, which ends `send_wait` with an error). To read the client's messages while
    // streaming, spawn the loop on a task of its own with a clone of `conn` instead.
    async fn on_open(&mut self, conn: &Connection) {
        let mut n = 0;
        while self.lines.is_none_or(|lines| n < lines) {
            n += 1;
            let line = format!("line {n}: the quick brown fox jumps over the lazy dog");
            if conn.send_wait(line).await.is_err() {
                println!("client {}: gone, {} lines queued", conn.id(), n - 1);
                return;
            }
            if n % 100_000 == 0 {
                let queued = conn.queued();
                println!(
                    "client {}: line {n}, {} messages ({} bytes) waiting in its queue",
                    conn.id(),
                    queued.messages,
                    queued.bytes
                );
            }
        }
        // Behind every line still queued: the client reads them all, then the close.
        let _ = conn.close(CloseCode::NORMAL, "end of stream");
        println!("client {}: all {n} lines queued", conn.id());
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = addr_argument("stream", "127.0.0.1:3003")?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("Stream listening on ws://{addr}/?lines=N");

    WebSocketServer::new()
        .serve(listener, |upgrade| async move {
            // `?lines=N`; no `lines`: endless; anything else: 400.
            match upgrade.query_param("lines").map(|n| n.parse()) {
                None => upgrade.accept(Log { lines: None }),
                Some(Ok(lines)) => upgrade.accept(Log { lines: Some(lines) }),
                Some(Err(_)) => upgrade.refuse(StatusCode::BAD_REQUEST, "?lines=N, a number\n"),
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

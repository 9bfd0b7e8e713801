//! Benchmark baseline: the chat room hand-written on plain tokio-tungstenite.
//!
//! This server exists only so `bench/compare.py` has something ordinary to compare the
//! `chat` example against. It is deliberately the straightforward pattern, not a
//! recommendation:
//!
//! * a `tokio::net::TcpListener` and `tokio_tungstenite::accept_hdr_async`, whose
//!   callback reads the username from the request URI (400 without one),
//! * one `Mutex<HashMap<id, mpsc::UnboundedSender<Message>>>` of per-client unbounded
//!   queues; a broadcast locks it, iterates and sends every client a clone,
//! * a writer task per client that `send`s each queued message on its own (one send, so
//!   one flush, per message),
//! * tungstenite's default configuration.
//!
//! Like every server in the comparison it sets `TCP_NODELAY` on accepted sockets.
//!
//! ```text
//! cargo run --release --example baseline_tungstenite -- --addr 127.0.0.1:0
//! ```
//!
//! Protocol: `/api/Chat?username=NAME` is the WebSocket; every text message is broadcast
//! to everyone, the sender included, as `NAME: message`.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

type Clients = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = parse_addr()?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("Chat server running. Open http://{local}/chat.htm in a browser.");
    std::io::stdout().flush()?;

    let clients: Clients = Arc::new(Mutex::new(HashMap::new()));
    let mut next_id = 0u64;
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        tokio::spawn(handle_connection(stream, next_id, clients.clone()));
    }
}

// tungstenite fixes the callback's error type (an `http::Response`), large or not.
#[allow(clippy::result_large_err)]
async fn handle_connection(stream: TcpStream, id: u64, clients: Clients) {
    let mut username = None;
    let callback = |request: &Request, response: Response| {
        if request.uri().path() != "/api/Chat" {
            return Err(reject(StatusCode::NOT_FOUND, "not found\n"));
        }
        match query_username(request.uri().query().unwrap_or("")) {
            Some(name) => {
                username = Some(name);
                Ok(response)
            }
            None => Err(reject(
                StatusCode::BAD_REQUEST,
                "missing username: connect to /api/Chat?username=NAME\n",
            )),
        }
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        // Rejected handshakes and clients that gave up land here; nothing to do.
        Err(_) => return,
    };
    let Some(name) = username else { return };

    let (mut write, mut read) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    clients.lock().expect("clients lock").insert(id, tx);

    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if write.send(message).await.is_err() {
                break;
            }
        }
    });

    while let Some(Ok(message)) = read.next().await {
        match message {
            Message::Text(text) => {
                let outgoing = Message::text(format!("{name}: {}", text.as_str()));
                let clients = clients.lock().expect("clients lock");
                for client in clients.values() {
                    // A closed queue belongs to a client on its way out.
                    let _ = client.send(outgoing.clone());
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }

    clients.lock().expect("clients lock").remove(&id);
    writer.abort();
}

fn reject(status: StatusCode, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() = status;
    response
}

/// The non-empty `username` parameter of a query string, percent-decoded.
fn query_username(query: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == "username")
        .and_then(|(_, value)| percent_decode(value))
        .filter(|name| !name.trim().is_empty())
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn parse_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:8080".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "-h" | "--help" => {
                println!(
                    "usage: baseline_tungstenite [--addr HOST:PORT]   (default 127.0.0.1:8080)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    addr.parse()
        .map_err(|error| format!("invalid --addr {addr:?}: {error}"))
}

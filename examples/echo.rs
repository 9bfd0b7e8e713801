//! Echoes every text and binary message back; the server the Autobahn conformance suite runs
//! against. It is the whole server: [`WebSocketServer::serve`] does the HTTP part.
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:9001
//! ```

use std::net::SocketAddr;

use websocket_handler::{Connection, Message, WebSocketHandler, WebSocketServer};

struct Echo;

impl WebSocketHandler for Echo {
    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = conn.send(message);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:9001".parse()?;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?.parse()?,
            other => {
                return Err(
                    format!("unknown argument {other:?}; usage: echo [--addr HOST:PORT]").into(),
                )
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("Echo server listening on ws://{}", listener.local_addr()?);

    // The conformance suite sends messages of up to 16 MiB.
    // permessage-deflate for the clients that offer it (the suite's cases 12 and 13).
    let server = WebSocketServer::builder()
        .max_message_size(64 << 20)
        .max_frame_size(16 << 20)
        .permessage_deflate(true)
        .build();
    // Ctrl-C stops it, returning from `main` (so that profilers see a normal exit).
    tokio::select! {
        served = server.serve(listener, |upgrade| async move { upgrade.accept(Echo) }) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

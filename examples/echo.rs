//! Echoes every text and binary message back; the server the Autobahn conformance suite runs
//! against. It is the whole server: [`WebSocketServer::serve`] does the HTTP part.
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:9001
//! ```
//!
//! With the `tls` feature, `--tls-cert FILE --tls-key FILE` serves `wss://` instead (the
//! suite's TLS run).

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
    let usage = "usage: echo [--addr HOST:PORT] [--tls-cert FILE --tls-key FILE]";
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:9001".parse()?;
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?.parse()?,
            "--tls-cert" => cert = Some(args.next().ok_or("--tls-cert needs a file")?),
            "--tls-key" => key = Some(args.next().ok_or("--tls-key needs a file")?),
            other => return Err(format!("unknown argument {other:?}; {usage}").into()),
        }
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;

    // The conformance suite sends messages of up to 16 MiB.
    // permessage-deflate for the clients that offer it (the suite's cases 12 and 13).
    let server = WebSocketServer::builder()
        .max_message_size(64 << 20)
        .max_frame_size(16 << 20)
        .permessage_deflate(true)
        .build();
    let admit = |upgrade: websocket_handler::WebSocketUpgrade| async move { upgrade.accept(Echo) };
    // Ctrl-C stops it, returning from `main` (so that profilers see a normal exit).
    match (cert, key) {
        (None, None) => {
            println!("Echo server listening on ws://{}", listener.local_addr()?);
            tokio::select! {
                served = server.serve(listener, admit) => served?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => {
            let tls = websocket_handler::TlsConfig::from_pem_files(cert, key)?;
            println!("Echo server listening on wss://{}", listener.local_addr()?);
            tokio::select! {
                served = server.serve_tls(listener, tls, admit) => served?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => return Err("--tls-cert needs the `tls` feature".into()),
        _ => return Err(format!("--tls-cert and --tls-key go together; {usage}").into()),
    }
    Ok(())
}

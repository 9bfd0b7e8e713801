//! A chat room over TLS (`wss://`, cargo feature `tls`): `serve_tls` with a certificate and
//! key from PEM files, HTTP/2 and HTTP/1.1 on one port (the client chooses by ALPN; over
//! HTTP/2 each WebSocket is a stream of the connection), every message to everyone.
//!
//! ```text
//! cargo run --example tls --features tls -- --tls-cert cert.pem --tls-key key.pem
//! # without the two flags: a self-signed certificate for localhost, made at start-up
//! cargo run --example tls --features tls
//! ```
//!
//! A certificate of your own for local use (README, "TLS and HTTP/2"):
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
//!     -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
//!     -addext basicConstraints=critical,CA:FALSE -keyout key.pem -out cert.pem
//! ```
//!
//! Then open <https://localhost:3007/> once and accept the certificate (the page itself is
//! an error: this server speaks only WebSocket), and in that tab's console (F12):
//!
//! ```text
//! ws = new WebSocket("wss://localhost:3007/"); ws.onmessage = e => console.log(e.data)
//! ws.send("hello over TLS")
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use websocket_handler::{Connection, Message, TlsConfig, WebSocketCollection};
use websocket_handler::{WebSocketHandler, WebSocketServer};

struct Member {
    room: WebSocketCollection,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        let _ = conn.send(format!("welcome ({} here)", self.room.len()));
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        if let Some(text) = message.as_text() {
            self.room.broadcast(format!("{}: {text}", conn.id()));
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, files) = parse_args()?;
    let (cert, key) = match files {
        Some(files) => files,
        None => self_signed()?,
    };
    // Read once: a missing file, a file without a certificate or key, or a key of another
    // certificate is an error that names the file (shown by its message).
    let tls = TlsConfig::from_pem_files(&cert, &key).map_err(|error| error.to_string())?;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "TLS chat listening on wss://{}/ (HTTP/2 and HTTP/1.1)",
        listener.local_addr()?
    );

    let server = WebSocketServer::new();
    let room = WebSocketCollection::new();
    let admit = move |upgrade: websocket_handler::WebSocketUpgrade| {
        let room = room.clone();
        async move { upgrade.accept(Member { room }) }
    };
    tokio::select! {
        served = server.serve_tls(listener, tls, admit) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    // Goodbye (1001) to everyone, then TLS close_notify.
    server.close_all(Duration::from_secs(5)).await;
    Ok(())
}

/// A certificate for `localhost` and `127.0.0.1` signed by itself, written as PEM files
/// into a directory of its own, for trying the example without making one. rcgen is a
/// dev-dependency of this crate: a server of your own loads real files instead.
fn self_signed() -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let made = rcgen::generate_simple_self_signed(names)?;
    let dir = std::env::temp_dir().join(format!("websocket-handler-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.signing_key.serialize_pem())?;
    eprintln!("self-signed certificate: {}", cert.display());
    Ok((cert, key))
}

/// `--addr HOST:PORT` (default 127.0.0.1:3007), `--tls-cert FILE --tls-key FILE`.
type Args = (SocketAddr, Option<(PathBuf, PathBuf)>);

fn parse_args() -> Result<Args, Box<dyn std::error::Error>> {
    let usage = "usage: tls [--addr HOST:PORT] [--tls-cert FILE --tls-key FILE]";
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:3007".parse()?;
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value; {usage}"));
        match arg.as_str() {
            "--addr" => addr = value()?.parse()?,
            "--tls-cert" => cert = Some(PathBuf::from(value()?)),
            "--tls-key" => key = Some(PathBuf::from(value()?)),
            _ => return Err(usage.into()),
        }
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok((addr, Some((cert, key)))),
        (None, None) => Ok((addr, None)),
        _ => Err(format!("--tls-cert and --tls-key go together; {usage}").into()),
    }
}

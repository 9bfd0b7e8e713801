//! Benchmark baseline: the chat room written the way most axum tutorials write it.
//!
//! This server exists only so `bench/compare.py` has something ordinary to compare the
//! `chat` example against. It is deliberately the common pattern, not a recommendation:
//!
//! * one `tokio::sync::broadcast` channel for the whole room (capacity 1024 by default,
//!   `--capacity N` to change it; axum's own chat example uses 100, which drops messages
//!   at once under any real fan-out),
//! * each socket split into a send task that `recv()`s from its own broadcast receiver and
//!   `send`s every message on its own (one send, so one flush, per message), and a receive
//!   task that formats `NAME: text` and pushes it into the channel,
//! * a receiver that lags behind skips the messages it missed; the skipped count is
//!   reported on stderr once a second.
//!
//! Two small liberties make it a fairer (stronger) baseline than the tutorials: the channel
//! carries axum's ref-counted `Utf8Bytes` rather than `String`, so a receiver's `recv()`
//! copies no payload, and accepted sockets get `TCP_NODELAY`, as in every server of the
//! comparison, so that Nagle's algorithm does not decide the latency.
//!
//! ```text
//! cargo run --release --example baseline_axum -- --addr 127.0.0.1:0
//! cargo run --release --example baseline_axum -- --tls-cert cert.pem --tls-key key.pem
//! ```
//!
//! With `--tls-cert` and `--tls-key` it serves TLS, HTTP/2 or HTTP/1.1 by ALPN, with the
//! extended CONNECT for WebSockets over HTTP/2 (RFC 8441), as the chat example does.
//! `axum::serve` has no TLS, so that path is a hand-written accept loop around hyper's
//! connection builders, which is what an axum application serving TLS itself writes (or
//! takes from a crate that wraps it).
//!
//! Protocol: `/api/Chat?username=NAME` is the WebSocket (400 without a username); every
//! text message is broadcast to everyone, the sender included, as `NAME: message`.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// What every connection shares.
struct Room {
    tx: broadcast::Sender<Utf8Bytes>,
    /// Messages skipped by lagging receivers since the last report.
    skipped: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, capacity, tls) = parse_args()?;
    let tls = match tls {
        Some((cert, key)) => Some(tls_acceptor(&cert, &key)?),
        None => None,
    };
    let (tx, _) = broadcast::channel(capacity);
    let room = Arc::new(Room {
        tx,
        skipped: AtomicU64::new(0),
    });

    tokio::spawn(report_skipped(room.clone()));

    // `any`: over HTTP/2 the WebSocket is a CONNECT, not a GET.
    let app = Router::new().route("/api/Chat", any(chat)).with_state(room);

    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("Chat server running. Open {scheme}://{local}/chat.htm in a browser.");
    std::io::stdout().flush()?;

    let Some(tls) = tls else {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        return Ok(());
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (tls, service) = (tls.clone(), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let stream = match tls.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => return eprintln!("TLS handshake from {peer} failed: {error}"),
            };
            let served = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await
            };
            if let Err(error) = served {
                eprintln!("connection from {peer} failed: {error}");
            }
        });
    }
}

/// The acceptor for the certificate chain and key in these PEM files: rustls with ring,
/// ALPN `h2` then `http/1.1`, written by hand as an axum application without this crate does.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::ServerConfig;

    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("--tls-cert {}: {error}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("--tls-key {}: {error}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| format!("TLS: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn chat(
    ws: WebSocketUpgrade,
    Query(params): Query<HashMap<String, String>>,
    State(room): State<Arc<Room>>,
) -> Response {
    match params.get("username") {
        Some(name) if !name.trim().is_empty() => {
            let name = name.clone();
            ws.on_upgrade(move |socket| handle_socket(socket, name, room))
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "missing username: connect to /api/Chat?username=NAME\n",
        )
            .into_response(),
    }
}

async fn handle_socket(socket: WebSocket, name: String, room: Arc<Room>) {
    let (mut sender, mut receiver) = socket.split();
    let mut rx = room.tx.subscribe();

    let send_room = room.clone();
    let mut send_task = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(text) => {
                    if sender.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    send_room.skipped.fetch_add(count, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });

    let tx = room.tx.clone();
    let mut recv_task = tokio::spawn(async move {
        while let Some(Ok(message)) = receiver.next().await {
            match message {
                Message::Text(text) => {
                    // An error only means nobody is subscribed right now.
                    let _ = tx.send(Utf8Bytes::from(format!("{name}: {}", text.as_str())));
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });

    // Whichever half finishes first ends the other.
    tokio::select! {
        _ = &mut send_task => recv_task.abort(),
        _ = &mut recv_task => send_task.abort(),
    }
}

async fn report_skipped(room: Arc<Room>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let skipped = room.skipped.swap(0, Ordering::Relaxed);
        if skipped > 0 {
            eprintln!("lagging receivers skipped {skipped} messages");
        }
    }
}

/// The certificate chain and key files of `--tls-cert` and `--tls-key`.
type TlsFiles = Option<(std::path::PathBuf, std::path::PathBuf)>;

fn parse_args() -> Result<(SocketAddr, usize, TlsFiles), String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut capacity = 1024usize;
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "--capacity" => {
                let value = args.next().ok_or("--capacity needs a number")?;
                capacity = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("invalid --capacity {value:?}"))?;
            }
            "--tls-cert" => cert = Some(args.next().ok_or("--tls-cert needs a FILE")?.into()),
            "--tls-key" => key = Some(args.next().ok_or("--tls-key needs a FILE")?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: baseline_axum [--addr HOST:PORT] [--capacity N] \
                     [--tls-cert FILE --tls-key FILE]   (defaults 127.0.0.1:8080, 1024)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    let addr = addr
        .parse()
        .map_err(|error| format!("invalid --addr {addr:?}: {error}"))?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    Ok((addr, capacity, tls))
}

//! Limits per address need the peer's address: a server that does not give it (no
//! `SocketAddr` in the request's extensions) is told so, once, instead of having its limits
//! silently off.
//!
//! On its own in this file: `tracing` caches per call site whether anyone listens.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use websocket_handler::{WebSocketHandler, WebSocketServer};

struct Quiet;

impl WebSocketHandler for Quiet {}

/// Where the subscriber writes: every line, kept.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn limits_per_address_without_a_peer_address_are_warned_about_once() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime: the server's tasks run on this thread, with this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);

    let server = WebSocketServer::builder()
        .max_connections_per_address(1)
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _peer)) = listener.accept().await {
            let server = server.clone();
            // No `SocketAddr` in the extensions.
            let service = service_fn(move |request| {
                let response = server.upgrade(request, Quiet);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    // The limit cannot count them: both are served...
    let _first = common::connect(addr, "/").await;
    let _second = common::connect(addr, "/").await;
    // ...and the server was told why, once.
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).expect("UTF-8");
    let warnings = text
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("no peer address"))
        .count();
    assert_eq!(warnings, 1, "{text}");
}

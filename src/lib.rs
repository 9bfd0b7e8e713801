//! Real-time WebSocket servers made easy and fast.
//!
//! Implement [`WebSocketHandler`] for a type that holds one connection's state, make one
//! [`WebSocketServer`] when the program starts, and let it answer upgrade requests
//! ([`serve`](WebSocketServer::serve) on its own, or [`upgrade`](WebSocketServer::upgrade)
//! from any hyper 1.x service or axum handler). Keep live connections in a
//! [`WebSocketCollection`] to [`broadcast`](WebSocketCollection::broadcast) to all of them.
//!
//! This guide goes from a first server to the classic chat room, [rooms and
//! users](#rooms-and-users), [many server processes](#scaling-out), [what the server is
//! doing](#observability), and the [limits for a server exposed to the
//! internet](#exposed-to-the-internet). The runnable versions are in `examples/`
//! (`examples/README.md` lists them).
//!
//! # Getting started
//!
//! In `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! websocket-handler = "0.1"
//! tokio = { version = "1", features = ["macros", "rt-multi-thread", "net"] }
//! ```
//!
//! A whole chat server: every message goes to everyone as `NAME: message`. Connect to
//! `ws://127.0.0.1:8080/?username=ana`.
//!
//! ```no_run
//! use websocket_handler::http::StatusCode;
//! use websocket_handler::{Connection, Message};
//! use websocket_handler::{WebSocketCollection, WebSocketHandler, WebSocketServer};
//!
//! struct Chat { username: String, room: WebSocketCollection }
//!
//! impl WebSocketHandler for Chat {
//!     async fn on_open(&mut self, conn: &Connection) {
//!         self.room.add(conn.clone()); // leaves the room by itself on close
//!     }
//!     async fn on_message(&mut self, _conn: &Connection, message: Message) {
//!         if let Some(text) = message.as_text() {
//!             self.room.broadcast(format!("{}: {text}", self.username));
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let room = WebSocketCollection::new();
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     WebSocketServer::new()
//!         .serve(listener, move |upgrade| {
//!             let room = room.clone();
//!             async move {
//!                 // Any check may go here, awaiting if it must (a token, a database).
//!                 match upgrade.query_param("username") {
//!                     Some(username) => upgrade.accept(Chat { username, room }),
//!                     _ => upgrade.refuse(StatusCode::BAD_REQUEST, "?username=NAME is needed\n"),
//!                 }
//!             }
//!         })
//!         .await
//! }
//! ```
//!
//! [`serve`](WebSocketServer::serve) upgrades every request. A server that also serves
//! pages calls [`upgrade`](WebSocketServer::upgrade) from its own routes, as below.
//!
//! # The classic chat room, in hyper
//!
//! The page at `/chat.htm`, the WebSocket at `/api/Chat?username=NAME`. With hyper
//! directly, `Cargo.toml` also needs `hyper = { version = "1", features = ["server",
//! "http1"] }` and `hyper-util = { version = "0.1", features = ["tokio"] }`.
//!
//! ```
//! use std::convert::Infallible;
//! use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
//! use hyper_util::rt::TokioIo;
//! use websocket_handler::{query_param, Body, Connection, Message};
//! use websocket_handler::{WebSocketCollection, WebSocketHandler, WebSocketServer};
//!
//! struct Chat {
//!     username: String,
//!     room: WebSocketCollection,
//! }
//!
//! impl WebSocketHandler for Chat {
//!     async fn on_open(&mut self, conn: &Connection) {
//!         self.room.add(conn.clone());
//!     }
//!     async fn on_message(&mut self, _conn: &Connection, message: Message) {
//!         if let Message::Text(text) = message {
//!             self.room.broadcast(format!("{}: {}", self.username, text));
//!         }
//!     }
//! }
//!
//! fn route(request: Request<Incoming>, server: &WebSocketServer, room: &WebSocketCollection) -> Response<Body> {
//!     match request.uri().path() {
//!         "/chat.htm" => Response::new(Body::from("<!doctype html>...")),
//!         "/api/Chat" => {
//!             let query = request.uri().query().unwrap_or("");
//!             let username = query_param(query, "username").ok().flatten().unwrap_or_default();
//!             server.upgrade(request, Chat { username, room: room.clone() })
//!         }
//!         _ => Response::new(Body::from("not found")),
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = WebSocketServer::builder().same_origin().build(); // once, shared
//! let room = WebSocketCollection::new();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((stream, peer)) = listener.accept().await {
//!         let (server, room) = (server.clone(), room.clone());
//!         let service = service_fn(move |mut request: Request<Incoming>| {
//!             request.extensions_mut().insert(peer); // for Connection::remote_addr
//!             let response = route(request, &server, &room);
//!             async move { Ok::<_, Infallible>(response) }
//!         });
//!         let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
//!         tokio::spawn(conn.with_upgrades()); // without it, every WebSocket is dropped
//!     }
//! });
//!
//! // A client joins as "ana" and hears its own message back.
//! # use futures_util::{SinkExt, StreamExt};
//! let url = format!("ws://{addr}/api/Chat?username=ana");
//! let (mut client, _) = tokio_tungstenite::connect_async(url).await?;
//! client.send("hello".into()).await?;
//! let reply = client.next().await.expect("a reply")?;
//! assert_eq!(reply.into_text()?.as_str(), "ana: hello");
//! # Ok(())
//! # }
//! ```
//!
//! The same handler works in axum: its `Request` is an `http::Request`, so a route handler
//! calls `server.upgrade(request, chat).map(axum::body::Body::new)`; put the peer's
//! `SocketAddr` (from axum's `ConnectInfo`) in the request's extensions for
//! [`Connection::remote_addr`]. `examples/axum_chat.rs` does all of it.
//!
//! # Rooms and users
//!
//! [`Rooms`] keys many collections: a chat's rooms, a game's tables, or every connection
//! (tab) of one user. A connection may be in many rooms and leaves them all when it closes;
//! a room exists while it has members.
//!
//! ```
//! use websocket_handler::{Connection, Message, Rooms, WebSocketHandler};
//!
//! struct Chat { username: String, room: String, rooms: Rooms<String>, users: Rooms<String> }
//!
//! impl WebSocketHandler for Chat {
//!     async fn on_open(&mut self, conn: &Connection) {
//!         self.rooms.join(self.room.clone(), conn);
//!         self.users.join(self.username.clone(), conn); // all of this user's tabs
//!     }
//!     async fn on_message(&mut self, conn: &Connection, message: Message) {
//!         let Some(text) = message.as_text() else { return };
//!         if let Some(room) = text.strip_prefix("/join ") {
//!             self.rooms.leave(&self.room, conn.id());
//!             self.room = room.to_owned();
//!             self.rooms.join(self.room.clone(), conn);
//!         } else {
//!             let line = format!("{}: {text}", self.username);
//!             self.rooms.broadcast_to(&self.room, line);
//!         }
//!     }
//! }
//! ```
//!
//! # Scaling out
//!
//! A room that outgrows one process spans many: a collection or rooms built with a
//! [backplane] reach the same room in every other process on the backplane,
//! each client getting each message once and each sender's messages in order. The cargo
//! feature `redis` adds `RedisBackplane`, over Redis streams (every message in one order
//! everywhere, nothing lost across a Redis restart) or pub/sub; the feature `nats` adds
//! `NatsBackplane`, over NATS JetStream streams (the same, and positions kept through the
//! loss of a server of a cluster); see [`backplane`] for the guarantees and for what
//! happens when the server goes away.
//!
//! ```
//! use websocket_handler::backplane::MemoryBackplane;
//! use websocket_handler::{Rooms, WebSocketCollection};
//!
//! // In production: RedisBackplane::new("redis://127.0.0.1:6379")?
//! let backplane = MemoryBackplane::new();
//! let room = WebSocketCollection::with_backplane("chat", backplane.clone());
//! room.broadcast("to this process's clients, then to every other process on \"chat\"");
//! let rooms: Rooms<String> = Rooms::with_backplane("chat-rooms", backplane);
//! ```
//!
//! # Observability
//!
//! [`Metrics`] counts, for a server's connections: open connections, messages and bytes
//! each way, messages dropped for slow consumers, and closes by code; the chat example
//! exports them at `/metrics` in the Prometheus text format. Each connection runs in a
//! `tracing` span named `websocket` with its `id` and `remote` address, so the handler's
//! own events carry them too.
//!
//! ```
//! use websocket_handler::WebSocketServer;
//!
//! let server = WebSocketServer::new();
//! assert_eq!(server.metrics().snapshot().connections_open(), 0);
//! ```
//!
//! # Cargo features
//!
//! - `redis` (off by default): `backplane::RedisBackplane`, with the `redis` crate: one
//!   Redis server, or the primary Redis Sentinel names.
//! - `nats` (off by default): `backplane::NatsBackplane`, with the `async-nats` crate: NATS
//!   JetStream, one server or a cluster.
//! - `json` (off by default): typed JSON messages with serde: `Message::json`,
//!   `Connection::send_json`, `WebSocketCollection::broadcast_json`, `JsonError`.
//! - `axum` (off by default): `WebSocketUpgrade` as an axum extractor, and the peer's
//!   address from axum's `ConnectInfo`.
//! - `tls` (off by default): HTTPS with HTTP/2 and HTTP/1.1 on one port, with rustls
//!   (`ring`, through its unbuffered API: an idle connection keeps no TLS buffer):
//!   `TlsConfig` from PEM files or a rustls `ServerConfig`,
//!   `WebSocketServer::serve_tls`, `ConnectionSlot::serve_tls`, and `rustls` re-exported.
//!
//! # Dependencies in the public API
//!
//! These crates' types appear in this crate's signatures, so a new major version of one of
//! them is a breaking change here: `http` 1 (requests, responses, headers), `http-body` 1
//! (what [`Body`] implements), `hyper` 1 (the upgrade mechanism [`upgrade`] relies on, and
//! `serve`'s connections), `bytes` 1 (re-exported as [`Bytes`]), `tokio` 1 (`serve`'s
//! listener) and `async-trait` 0.1 (re-exported as [`async_trait`](macro@async_trait), for
//! [`backplane::Backplane`]'s async method); with the `tls` feature, `rustls` 0.23 too (a
//! `ServerConfig` of one's own, re-exported as `rustls`). Message text is this crate's own
//! [`Utf8Bytes`]; tungstenite is an implementation detail.
//!
//! [`upgrade`]: WebSocketServer::upgrade
//!
//! # Exposed to the internet
//!
//! [`ServerBuilder`] sets the limits, with defaults for a server of thousands of
//! connections: bounded queues and a [`SlowConsumer`] policy (a client that stops reading
//! is closed with 1008 before it costs memory), pings and an idle timeout (half-open
//! connections go away), message size and rate limits, allowed origins (403), a connection
//! limit (503) and subprotocols. A handler that panics closes only its own connection
//! (1011), and [`WebSocketServer::close_all`] closes every connection gracefully (1001).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![deny(unsafe_code)]

// The layers, from the bottom up: each may use those above it in this list, never those
// below (ARCHITECTURE.md; `tests/layering.rs` checks it).
pub mod backplane;
mod connection;
mod engine;
mod error;
mod fanout;
#[cfg(feature = "json")]
mod json;
mod protocol;
mod server;
#[cfg(feature = "signalr")]
#[cfg_attr(docsrs, doc(cfg(feature = "signalr")))]
pub mod signalr;

/// The attribute on an `impl` of [`backplane::Backplane`] that implements its async method,
/// [`missed`](backplane::Backplane::missed): a trait used as an object (`Box<dyn Backplane>`).
/// Handlers need no attribute.
pub use async_trait::async_trait;
pub use bytes::Bytes;
/// The `http` crate, whose types (`Request`, `Response`, `StatusCode`, `HeaderMap`...) the
/// API takes and returns: usable without a dependency of its own, at the version the crate's.
pub use http;
/// The `rustls` crate (cargo feature `tls`), for a [`ServerConfig`](rustls::ServerConfig) of
/// one's own ([`TlsConfig::from_rustls`]) at the version the crate takes, without a
/// dependency of one's own.
#[cfg(feature = "tls")]
pub use rustls;

pub use connection::handler::WebSocketHandler;
pub use connection::{Connection, Queued};
pub use engine::id::ConnectionId;
pub use engine::metrics::{Metrics, MetricsSnapshot};
pub use engine::settings::SlowConsumer;
pub use error::{Error, SendError};
pub use fanout::collection::WebSocketCollection;
pub use fanout::history::{
    History, Lost, LostKind, Position, PositionError, ResumeError, Resumed, Tag,
};
pub use fanout::rooms::Rooms;
#[cfg(feature = "json")]
pub use json::{JsonError, SendJsonError};
pub use protocol::close::{CloseCode, CloseFrame};
pub use protocol::handshake::HandshakeError;
pub use protocol::message::{Message, Utf8Bytes};
pub use protocol::query::{query_param, query_params, QueryError};
pub use server::address::{IpNetwork, IpNetworkError};
pub use server::body::Body;
pub use server::builder::ServerBuilder;
pub use server::config::Config;
pub use server::listener::ConnectionSlot;
#[cfg(feature = "tls")]
pub use server::tls::config::TlsConfig;
#[cfg(feature = "tls")]
pub use server::tls::connection::TlsConnectionError;
#[cfg(feature = "tls")]
pub use server::tls::pem::TlsConfigError;
pub use server::upgrade::WebSocketUpgrade;
pub use server::WebSocketServer;

/// Every Rust snippet of README.md, compiled as a doc test so that none can rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeSnippets;

/// Entry points for the fuzz targets in `fuzz/` (built with `cargo fuzz`, which sets
/// `--cfg fuzzing`); not part of the public API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// The upgrade request checks of [`upgrade`](crate::WebSocketServer::upgrade): the accept
    /// key, or why the request is refused.
    pub fn check_handshake(
        request: &http::Request<()>,
    ) -> Result<http::HeaderValue, crate::HandshakeError> {
        crate::protocol::handshake::check_handshake(request)
    }

    /// The checks of either kind of upgrade request, HTTP/2's extended CONNECT included
    /// (`protocol` is its `:protocol`): `Ok(true)` for a CONNECT to answer with 200,
    /// `Ok(false)` for an HTTP/1.1 upgrade, or why the request is refused.
    pub fn check_request(
        request: &http::Request<()>,
        protocol: Option<&str>,
    ) -> Result<bool, crate::HandshakeError> {
        use crate::protocol::handshake::{check_request, Accept};
        check_request(request, protocol).map(|accept| accept == Accept::Connect)
    }

    /// The frame decoder on `data` as a client's byte stream, whole, byte by byte and in
    /// other chunkings, with generous and with tight limits: panics if the results differ,
    /// or if the decoder holds more than twice what arrived.
    pub fn decoder_chunking(data: &[u8]) {
        crate::protocol::decode::check_chunking_invariance(data)
    }

    /// The client address of a request from `peer` with these header lines (`name: value`,
    /// one per line), through `trusted` proxies.
    pub fn client_address(
        peer: std::net::SocketAddr,
        headers: &http::HeaderMap,
        trusted: &[crate::IpNetwork],
    ) -> std::net::IpAddr {
        crate::server::address::client_address(peer, headers, trusted)
    }

    /// permessage-deflate negotiation on `data` split at `\n` into `Sec-WebSocket-Extensions`
    /// lines, with the default settings and with a 9-bit window: panics if an answer does
    /// not start with `permessage-deflate`, names a window outside 8 to 15 bits or other than
    /// the one agreed, agrees a window larger than the server's, or is not accepted the same
    /// when offered back.
    pub fn extension_offers(data: &[u8]) {
        use crate::protocol::deflate::{negotiate, DeflateSettings};
        for window_bits in [15, 9] {
            let settings = DeflateSettings {
                window_bits,
                ..DeflateSettings::default()
            };
            let Some((agreed, answer)) = negotiate(data.split(|&b| b == b'\n'), &settings) else {
                continue;
            };
            assert!(answer.starts_with("permessage-deflate"), "{answer}");
            let named = answer
                .split("; ")
                .find_map(|param| param.strip_prefix("server_max_window_bits="));
            match named {
                Some(bits) => {
                    let bits: u8 = bits.parse().expect("server_max_window_bits is a number");
                    assert!((8..=15).contains(&bits), "{answer}");
                    assert_eq!(bits, agreed.server_window_bits, "{answer}");
                }
                None => assert_eq!(agreed.server_window_bits, 15, "{answer}"),
            }
            // The server never compresses with more than its own window, nor with 8 bits.
            assert!(agreed.server_window_bits <= window_bits || !agreed.compress);
            assert_eq!(agreed.compress, agreed.server_window_bits >= 9);
            let again = negotiate(std::iter::once(answer.as_bytes()), &settings);
            assert_eq!(again, Some((agreed, answer)));
        }
    }

    /// `data` inflated as a client's compressed message within 64 KiB, and `data` (up to
    /// 64 KiB) compressed and inflated back: panics if a message passes the limit or the
    /// round trip changes the data.
    pub fn inflate_bounded(data: &[u8]) {
        use crate::protocol::deflate::{compress, inflate};
        const LIMIT: usize = 64 * 1024;
        if let Ok(message) = inflate(data, LIMIT) {
            assert!(message.len() <= LIMIT, "{} bytes", message.len());
        }
        if data.len() <= LIMIT {
            // Levels and windows drawn from the input, besides the defaults.
            let level = u32::from(data.first().copied().unwrap_or(0) % 10);
            let bits = 9 + (data.len() % 7) as u8;
            for (level, bits) in [(3, 15), (level, bits)] {
                let compressed = compress(data, level, bits).expect("compress");
                let inflated =
                    inflate(&compressed, data.len()).expect("inflate what was compressed");
                assert!(inflated == data, "level {level}, {bits} bits");
            }
        }
    }

    /// A client's text message to a SignalR hub, as the hub reads it (the handshake, then
    /// the records): panics if a record that parsed does not hold what its text said, or
    /// if what the server would send back from it does not parse again.
    #[cfg(feature = "signalr")]
    pub fn signalr_records(data: &[u8]) {
        crate::signalr::records::check_message(data)
    }

    /// A client's bytes into the server's TLS stream (`server/tls/stream.rs`): raw during
    /// the handshake, or, after a real client's handshake, that client's records split at
    /// the points the input gives, raw bytes, server writes and closes. Panics if the
    /// stream keeps more than its bounds, reads other than what the client sent, or a real
    /// handshake fails.
    #[cfg(feature = "tls")]
    pub fn tls_stream(data: &[u8]) {
        crate::server::tls::fuzzing::check(data)
    }

    /// A NATS message on a backplane topic's subject, as the NATS backplane splits it into
    /// envelopes: its batch header, a newline, then its payload. Panics if what it splits
    /// is not the payload, in order and whole.
    #[cfg(feature = "nats")]
    pub fn nats_batch(data: &[u8]) {
        crate::backplane::check_nats_batch(data)
    }
}

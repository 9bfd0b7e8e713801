//! Real-time WebSocket servers made easy and fast.
//!
//! Implement [`WebSocketHandler`] for a type that holds one connection's state, answer upgrade
//! requests with [`upgrade`] from any hyper 1.x service (or axum handler), and keep live
//! connections in a [`WebSocketCollection`] to [`broadcast`](WebSocketCollection::broadcast)
//! to all of them.
//!
//! This guide goes from the classic chat room to [rooms and users](#rooms-and-users), then
//! to [many server processes](#scaling-out), [what the server is doing](#observability),
//! and the [limits for a server exposed to the internet](#exposed-to-the-internet). The
//! runnable versions are `examples/chat` (hyper) and `examples/axum_chat` (axum).
//!
//! # The classic chat room
//!
//! ```
//! use std::convert::Infallible;
//! use async_trait::async_trait;
//! use futures_util::{SinkExt, StreamExt};
//! use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
//! use hyper_util::rt::TokioIo;
//! use websocket_handler::{upgrade, Config, Connection, Message, WebSocketCollection, WebSocketHandler};
//!
//! struct Chat {
//!     username: String,
//!     room: WebSocketCollection,
//! }
//!
//! #[async_trait]
//! impl WebSocketHandler for Chat {
//!     async fn on_open(&mut self, conn: &Connection) {
//!         self.room.add(conn.clone()); // leaves the room by itself on close
//!     }
//!     async fn on_message(&mut self, _conn: &Connection, message: Message) {
//!         if let Message::Text(text) = message {
//!             self.room.broadcast(format!("{}: {}", self.username, text));
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let room = WebSocketCollection::new();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((stream, _)) = listener.accept().await {
//!         let room = room.clone();
//!         let service = service_fn(move |req: Request<Incoming>| {
//!             let username = req.uri().query().and_then(|q| {
//!                 websocket_handler::query_param(q, "username").ok().flatten()
//!             });
//!             let chat = Chat { username: username.unwrap_or_default(), room: room.clone() };
//!             async move { Ok::<_, Infallible>(upgrade(req, &Config::default(), chat)) }
//!         });
//!         let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
//!         tokio::spawn(conn.with_upgrades());
//!     }
//! });
//!
//! // A client joins as "ana" and hears its own message back.
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
//! calls `upgrade(request, &config, chat).map(axum::body::Body::new)`
//! (`examples/axum_chat.rs`). Put the peer's `SocketAddr` in the request's extensions for
//! [`Connection::remote_addr`].
//!
//! # Rooms and users
//!
//! [`Rooms`] keys many collections: a chat's rooms, a game's tables, or every connection
//! (tab) of one user. A connection may be in many rooms and leaves them all when it closes;
//! a room exists while it has members.
//!
//! ```
//! use websocket_handler::{async_trait, Connection, Message, Rooms, WebSocketHandler};
//!
//! struct Chat { username: String, room: String, rooms: Rooms<String>, users: Rooms<String> }
//!
//! #[async_trait]
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
//! feature `redis` adds `RedisBackplane`, over Redis pub/sub; see [`backplane`] for the
//! guarantees and for what happens when Redis goes away.
//!
//! ```
//! use websocket_handler::backplane::MemoryBackplane;
//! use websocket_handler::{Rooms, WebSocketCollection};
//!
//! // In production: RedisBackplane::new(RedisConfig::new("redis://127.0.0.1:6379"))?
//! let backplane = MemoryBackplane::new();
//! let room = WebSocketCollection::with_backplane("chat", backplane.clone());
//! room.broadcast("to this process's clients, then to every other process on \"chat\"");
//! let rooms: Rooms<String> = Rooms::with_backplane("chat-rooms", backplane);
//! ```
//!
//! # Observability
//!
//! [`Metrics`] counts, for the connections of a [`Config`]: open connections, messages and
//! bytes each way, messages dropped for slow consumers, and closes by code; the chat
//! example exports them at `/metrics` in the Prometheus text format. Each connection runs
//! in a `tracing` span named `websocket` with its `id` and `remote` address, so the
//! handler's own events carry them too.
//!
//! ```
//! use websocket_handler::{Config, Metrics};
//!
//! let metrics = Metrics::new();
//! let config = Config::default().metrics(&metrics);
//! assert_eq!(metrics.snapshot().connections_open(), 0);
//! ```
//!
//! # Cargo features
//!
//! - `redis` (off by default): `backplane::RedisBackplane`, with the `redis` crate.
//!
//! # Exposed to the internet
//!
//! [`Config`] holds the limits, with defaults for a server of thousands of connections:
//! bounded queues and a [`SlowConsumer`] policy (a client that stops reading is closed with
//! 1008 before it costs memory), pings and an idle timeout (half-open connections go away),
//! message size and rate limits, allowed origins (403), a connection limit (503) and
//! subprotocols. A handler that panics closes only its own connection (1011), and a
//! [`Shutdown`] closes every connection gracefully (1001).
#![deny(missing_docs)]

pub mod backplane;
mod close;
mod collection;
mod config;
mod connection;
mod driver;
mod error;
mod handler;
mod keepalive;
mod message;
mod metrics;
mod outbound;
mod query;
mod rate_limit;
mod rooms;
mod shutdown;
mod stream;
mod upgrade;
mod writer;

pub use async_trait::async_trait;
pub use bytes::Bytes;

pub use close::{CloseCode, CloseFrame};
pub use collection::WebSocketCollection;
pub use config::{Config, SlowConsumer};
pub use connection::{Connection, ConnectionId};
pub use error::{Error, HandshakeError, QueryError, SendError};
pub use handler::WebSocketHandler;
pub use message::{Message, Utf8Bytes};
pub use metrics::{Metrics, MetricsSnapshot};
pub use query::query_param;
pub use rooms::Rooms;
pub use shutdown::Shutdown;
pub use upgrade::{try_upgrade, upgrade};

/// Entry points for the fuzz targets in `fuzz/` (built with `cargo fuzz`, which sets
/// `--cfg fuzzing`); not part of the public API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// The upgrade request checks of [`upgrade`](crate::upgrade): the accept key, or why the
    /// request is refused.
    pub fn check_handshake(
        request: &http::Request<()>,
    ) -> Result<http::HeaderValue, crate::HandshakeError> {
        crate::upgrade::check_handshake(request)
    }
}

//! Real-time WebSocket servers made easy and fast.
//!
//! Implement [`WebSocketHandler`] for a type that holds one connection's state, answer upgrade
//! requests with [`upgrade`] from any hyper 1.x service (or axum handler), and keep live
//! connections in a [`WebSocketCollection`] to [`broadcast`](WebSocketCollection::broadcast)
//! to all of them.
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
//! # Scaling out
//!
//! A room that outgrows one process spans many:
//! [`WebSocketCollection::with_backplane`] makes every broadcast reach the collections on
//! the same topic in other processes too, each client getting each message once and each
//! sender's messages in order. The cargo feature `redis` adds `RedisBackplane`, over Redis
//! pub/sub; see [`backplane`] for the guarantees and for what happens when Redis goes away.
//!
//! ```
//! use websocket_handler::backplane::MemoryBackplane;
//! use websocket_handler::WebSocketCollection;
//!
//! // In production: RedisBackplane::new(RedisConfig::new("redis://127.0.0.1:6379"))?
//! let backplane = MemoryBackplane::new();
//! let room = WebSocketCollection::with_backplane("chat", backplane);
//! room.broadcast("to this process's clients, then to every other process on \"chat\"");
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

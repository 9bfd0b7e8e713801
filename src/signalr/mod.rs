//! A SignalR server (cargo feature `signalr`): the official clients (`@microsoft/signalr` for
//! JavaScript, and the .NET, Java and Swift ones) connect to a [`Hub`], call its methods,
//! and have their own methods called, alone, in groups, or all at once.
//!
//! What is served: negotiate (version 0 and 1) and clients that skip it, the WebSockets
//! transport, the JSON hub protocol (versions 1 and 2), methods with serde-typed arguments
//! and results, server-to-client streams with cancellation, client results, groups and
//! users, server pings, and a Close that lets clients reconnect on
//! [`close_all`](crate::WebSocketServer::close_all). Not served: the Server-Sent Events
//! and long-polling transports, the MessagePack protocol, and streams from the client.
//!
//! It is built on the rest of the crate: each hub connection is a WebSocket
//! [`Connection`](crate::Connection); all clients, each group and each user's connections are
//! [`Rooms`](crate::Rooms), so a send to many is encoded once and a backplane carries
//! it to other processes.
//!
//! ```no_run
//! use websocket_handler::signalr::Hub;
//! use websocket_handler::WebSocketServer;
//!
//! # async fn run() -> std::io::Result<()> {
//! let server = WebSocketServer::new();
//! let hub = Hub::builder("/hubs/chat")
//!     .method("SendMessage", |call, (user, message): (String, String)| async move {
//!         call.clients().all().send("ReceiveMessage", (user, message))?;
//!         Ok(())
//!     })
//!     .method("JoinGroup", |call, (group,): (String,)| async move {
//!         call.join(&group);
//!         Ok(())
//!     })
//!     .build(&server);
//! // In JavaScript: new signalR.HubConnectionBuilder().withUrl("/hubs/chat").build()
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! hub.serve(listener).await
//! # }
//! ```

mod call;
mod clients;
mod error;
mod hub;
mod keepalive;
mod methods;
mod negotiate;
pub(crate) mod records;
mod session;
mod shared;
mod socket;
mod streaming;

pub use call::Call;
pub use clients::{Client, Clients, Target};
pub use error::HubError;
pub use hub::{Hub, HubBuilder};
pub use streaming::StreamItems;

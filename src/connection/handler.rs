//! The trait an application implements to handle one connection.

use async_trait::async_trait;

use crate::connection::Connection;
use crate::error::Error;
use crate::protocol::close::CloseFrame;
use crate::protocol::message::Message;

/// Handles the events of one WebSocket connection. Create one value per connection and pass
/// it to [`WebSocketServer::upgrade`](crate::WebSocketServer::upgrade); per-connection state lives in its fields.
///
/// Callbacks run one at a time, in this order:
///
/// 1. [`on_open`](WebSocketHandler::on_open), first, once;
/// 2. [`on_message`](WebSocketHandler::on_message) for each whole text or binary message;
/// 3. [`on_error`](WebSocketHandler::on_error) at most once, when the connection fails;
/// 4. [`on_close`](WebSocketHandler::on_close) exactly once and last, also when the peer
///    vanished without a close frame.
///
/// Every method has a default that does nothing, so implement only what you need.
///
/// While a callback runs, the connection keeps going: its queued messages are written,
/// pings go out and the peer's are answered, the close handshake proceeds, and the idle and
/// close timeouts run. At most one further message is read meanwhile and held for the next
/// `on_message`, so a slow handler slows down only its own client. If the connection ends
/// while a callback runs (the peer vanished, or a timeout), it ends at once (the socket
/// closes, the connection leaves its collections); the callback is never cancelled, and
/// `on_error` and `on_close` follow when it returns.
///
/// A callback that panics ends only its own connection: the peer gets close code 1011,
/// [`on_error`](WebSocketHandler::on_error) gets
/// [`Error::HandlerPanicked`](crate::Error::HandlerPanicked), the panic is logged with
/// `tracing`, and [`on_close`](WebSocketHandler::on_close) still comes last.
///
/// ```
/// use websocket_handler::{async_trait, Connection, Message, WebSocketHandler};
///
/// /// Echoes every message back to its sender.
/// struct Echo;
///
/// #[async_trait]
/// impl WebSocketHandler for Echo {
///     async fn on_message(&mut self, conn: &Connection, message: Message) {
///         let _ = conn.send(message);
///     }
/// }
/// ```
///
/// # `#[async_trait]`
///
/// Put [`#[async_trait]`](crate::async_trait) (re-exported by this crate, so no dependency
/// of your own is needed) on every `impl WebSocketHandler`. Without it the compiler reports
/// `E0195: lifetime parameters or bounds on method ... do not match the trait declaration`
/// on each `async fn`, which says nothing of the missing attribute.
///
/// What it costs: each callback's future is boxed, one heap allocation per call (a few
/// dozen nanoseconds, and tens of bytes while the callback runs), and its calls go through
/// a pointer. Next to reading a frame from a socket and writing the answer, that is small;
/// it is what lets a handler be stored and driven without naming its future's type.
#[async_trait]
pub trait WebSocketHandler: Send + 'static {
    /// The connection is open. Called first, once.
    async fn on_open(&mut self, _conn: &Connection) {}

    /// A whole text or binary message arrived (fragments are already reassembled).
    async fn on_message(&mut self, _conn: &Connection, _message: Message) {}

    /// The connection failed; `on_close` follows. Called at most once.
    async fn on_error(&mut self, _conn: &Connection, _error: &Error) {}

    /// The connection has ended and left every collection. Called exactly once, last.
    /// [`WebSocketServer::close_all`](crate::WebSocketServer::close_all) waits for it.
    async fn on_close(&mut self, _conn: &Connection, _frame: &CloseFrame) {}
}

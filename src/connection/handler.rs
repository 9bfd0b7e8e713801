//! The trait an application implements to handle one connection.

use std::future::Future;

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
/// ```
/// use websocket_handler::{Connection, Message, WebSocketHandler};
///
/// /// Echoes every message back to its sender.
/// struct Echo;
///
/// impl WebSocketHandler for Echo {
///     async fn on_message(&mut self, conn: &Connection, message: Message) {
///         let _ = conn.send(message);
///     }
/// }
/// ```
///
/// # While a callback runs
///
/// A callback may take as long as it likes (a slow database, a streaming model call): the
/// connection keeps going meanwhile. Its queued messages are written, pings go out and the
/// peer's are answered, the timers run, and the server keeps reading, so the peer's pongs
/// and close frame are heard: a client that answers pings stays connected however long the
/// callback takes.
///
/// - Messages that arrive meanwhile are held for the next calls of `on_message`, in order,
///   at most two (the second counts against
///   [`max_partial_bytes`](crate::ServerBuilder::max_partial_bytes)). With two held the
///   server reads nothing more from that client until the handler takes one: TCP slows
///   the client down, so a slow handler slows down only its own client. Meanwhile no
///   pings go out and the idle timeout is suspended (a peer's silence cannot be heard
///   while nothing is read); both resume with reading.
/// - A close asked for meanwhile ([`Connection::close`],
///   [`close_all`](crate::WebSocketServer::close_all), or the peer's close frame) does not
///   wait for the callback: the close handshake completes as soon as the peer answers, or
///   the connection fails with [`Error::CloseTimeout`](crate::Error::CloseTimeout) at the
///   close timeout. To reach the peer's answer, the server then reads on past what it
///   holds, dropping the messages that do not fit. Messages held when the handshake
///   completes are still delivered to `on_message` after the callback, before `on_close`,
///   though the connection is over by then (sends return
///   [`SendError::Closed`](crate::SendError::Closed)).
/// - If the connection fails meanwhile (the peer vanished, a timeout, a protocol error),
///   it ends at once: the socket closes, the connection leaves its collections, and the
///   messages held for the handler are dropped.
///
/// Either way the callback is never cancelled: `on_error` (after a failure) and `on_close`
/// follow when it returns.
///
/// # A callback that panics
///
/// It ends only its own connection: the peer gets close code 1011,
/// [`on_error`](WebSocketHandler::on_error) gets
/// [`Error::HandlerPanicked`](crate::Error::HandlerPanicked), the panic is logged with
/// `tracing`, and [`on_close`](WebSocketHandler::on_close) still comes last.
///
/// # Plain `async fn`, `Send` futures
///
/// The methods are declared as returning `impl Future<Output = ()> + Send`, so an
/// implementation writes plain `async fn`, with no attribute. What a callback holds across
/// an `.await` must be `Send` (the connection runs on tokio's worker threads): a
/// `std::sync::MutexGuard` held across an `.await` is refused by the compiler, with an
/// error that names the guard; drop it before awaiting, or use `tokio::sync::Mutex`.
///
/// Each callback's future is boxed by the engine while it runs, one allocation per call,
/// so that an idle connection's task stays small whatever its handler's futures hold.
pub trait WebSocketHandler: Send + 'static {
    /// The connection is open. Called first, once.
    fn on_open(&mut self, conn: &Connection) -> impl Future<Output = ()> + Send {
        let _ = conn;
        async {}
    }

    /// A whole text or binary message arrived (fragments are already reassembled).
    fn on_message(
        &mut self,
        conn: &Connection,
        message: Message,
    ) -> impl Future<Output = ()> + Send {
        let _ = (conn, message);
        async {}
    }

    /// The connection failed; `on_close` follows. Called at most once.
    fn on_error(&mut self, conn: &Connection, error: &Error) -> impl Future<Output = ()> + Send {
        let _ = (conn, error);
        async {}
    }

    /// The connection has ended and left every collection. Called exactly once, last.
    /// [`WebSocketServer::close_all`](crate::WebSocketServer::close_all) waits for it.
    fn on_close(
        &mut self,
        conn: &Connection,
        frame: &CloseFrame,
    ) -> impl Future<Output = ()> + Send {
        let _ = (conn, frame);
        async {}
    }
}

//! The task that runs one connection: it waits for messages, calls the handler, and ends
//! the connection, in the order the handler's docs promise.
//!
//! While a callback runs, the session keeps the connection going ([`Session::watch`]): the
//! timers fire, pings and the close handshake are answered, handed-over writes continue.
//! If the connection is over meanwhile (the close timeout, the idle timeout, the peer gone),
//! it ends at once: the socket goes and the connection leaves its collections, and the
//! callback is left to finish before `on_error` and `on_close`. A callback is never
//! cancelled halfway.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;

use futures_util::future::{select, Either};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::connection::handler::WebSocketHandler;
use crate::connection::Connection;
use crate::engine::budget::PartialBudget;
use crate::engine::flush::HasCore;
use crate::engine::session::{End, Event, Session};
use crate::engine::settings::Settings;
use crate::engine::writer::WriteSide;
use crate::error::Error;
use crate::protocol::close::CloseFrame;

/// Drives one connection until it ends, calling `handler` along the way. `lease` (the
/// server's count of this connection, say) is held until `on_close` has returned.
pub(crate) async fn run<R, W, H, L>(
    read: R,
    write: W,
    conn: Connection,
    mut handler: H,
    settings: Settings,
    budget: Arc<PartialBudget>,
    lease: L,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Send + 'static,
    H: WebSocketHandler,
    L: Send,
{
    // Whatever happens below, the connection ends up closed, out of its collections, and its
    // socket released; the lease goes last.
    let guard = Guard {
        conn: conn.clone(),
        _lease: lease,
    };
    let core = conn.core();
    core.metrics.opened();
    // Anything queued before the socket was in place (a shutdown's close frame) goes now.
    core.attach(WriteSide::new(Box::pin(write), settings.write_buffer_size));
    let mut run = Running {
        session: Session::new(read, &settings, budget, conn.id()),
        conn: &conn,
        ended: false,
        failure: None,
        closed_cleanly: false,
    };

    run.call(handler.on_open(&conn)).await;
    while !run.ended && run.failure.is_none() && !run.closed_cleanly {
        match run.session.next(core).await {
            Event::Message(message) => run.call(handler.on_message(&conn, message)).await,
            Event::End(end) => run.note(end),
        }
    }

    // The slow-consumer policy ended it: that is the cause, whatever the reader saw.
    if let Some((messages, bytes)) = core.overflow() {
        run.failure = Some(Error::SlowConsumer { messages, bytes });
    }
    if let Some(error) = run.failure.take() {
        tracing::debug!(%error, "connection failed");
        if let Error::HandlerPanicked { message } = &error {
            tracing::error!(%message, "WebSocket handler panicked");
        }
        run.call(handler.on_error(&conn, &error)).await;
        // Fail the connection with the code that says why, if it can still be sent:
        // written within the close timeout, not waiting for the peer's answer.
        if let Some(code) = error.close_code() {
            if !run.ended {
                core.queue_close(CloseFrame {
                    code,
                    reason: String::new(),
                });
                run.session.write_close(core).await;
            }
        }
    }
    run.end();
    drop(run);

    let frame = core.first_close().unwrap_or_else(CloseFrame::abnormal);
    core.metrics.closed(frame.code.as_u16());
    tracing::debug!(code = frame.code.as_u16(), "connection closed");
    if let Err(Error::HandlerPanicked { message }) = caught(handler.on_close(&conn, &frame)).await {
        tracing::error!(%message, "WebSocket handler panicked in on_close");
    }
    drop(guard);
}

/// The connection while its task runs it.
struct Running<'a, R> {
    session: Session<R>,
    conn: &'a Connection,
    /// The connection is over: its socket is gone and it has left its collections.
    ended: bool,
    /// The first thing that went wrong.
    failure: Option<Error>,
    /// The close handshake completed.
    closed_cleanly: bool,
}

impl<R: AsyncRead + Unpin> Running<'_, R> {
    /// Runs a handler callback while the session keeps the connection going. A panic
    /// becomes the connection's failure; if the connection is over before the callback
    /// returns, it is ended at once and the callback then finishes.
    async fn call(&mut self, callback: impl Future<Output = ()>) {
        let mut callback = pin!(caught(callback));
        let outcome = if self.ended {
            Ok(callback.as_mut().await)
        } else {
            let watch = pin!(self.session.watch(self.conn.core()));
            match select(callback.as_mut(), watch).await {
                Either::Left((result, _)) => Ok(result),
                Either::Right((end, _)) => Err(end),
            }
        };
        let result = match outcome {
            Ok(result) => result,
            Err(end) => {
                self.note(end);
                self.end();
                callback.await
            }
        };
        if let Err(panic) = result {
            self.failure.get_or_insert(panic);
        }
    }

    fn note(&mut self, end: End) {
        match end {
            End::Closed => self.closed_cleanly = true,
            End::Failed(error) => {
                self.failure.get_or_insert(error);
            }
        }
    }

    /// Ends the connection now: the socket goes, and it leaves every collection.
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.session.close_read();
            end_connection(self.conn);
        }
    }
}

/// Drops the socket (both halves, once the session has let go of the read half) and marks
/// the connection closed: it leaves every collection and `closed()` resolves.
fn end_connection(conn: &Connection) {
    conn.core().detach();
    conn.mark_closed();
}

/// Ends the connection however `run` stops, and holds the lease until then.
struct Guard<L> {
    conn: Connection,
    _lease: L,
}

impl<L> Drop for Guard<L> {
    fn drop(&mut self) {
        end_connection(&self.conn);
    }
}

/// Runs a handler callback, turning a panic into [`Error::HandlerPanicked`]: a panicking
/// handler ends only its own connection (with 1011), never the server's other ones.
async fn caught<F: Future<Output = ()>>(callback: F) -> Result<(), Error> {
    AssertUnwindSafe(callback)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic payload".to_owned());
            Error::HandlerPanicked { message }
        })
}

//! The task that runs one connection: it waits for messages, calls the handler, and ends
//! the connection, in the order the handler's docs promise.
//!
//! While a callback runs, the session keeps the connection going ([`Session::watch`]): the
//! timers fire, pings and the close handshake are answered, handed-over writes continue.
//! If the connection is over meanwhile (the close timeout, the idle timeout, the peer gone),
//! it ends at once: the socket goes and the connection leaves its collections, and the
//! callback is left to finish before `on_error` and `on_close`. A callback is never
//! cancelled halfway. After a clean close, the messages the session held for the handler
//! meanwhile are still delivered, before `on_close`.

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use futures_util::future::{select, Either};
use futures_util::FutureExt;
use tokio::io::AsyncRead;

use crate::connection::handler::WebSocketHandler;
use crate::connection::Connection;
use crate::engine::flush::HasCore;
use crate::engine::session::{End, Event, Session};
use crate::engine::writer::{WriteIo, WriteSide};
use crate::error::Error;
use crate::protocol::close::CloseFrame;
use crate::protocol::message::Message;

/// Drives one connection until it ends, calling `handler` along the way. `lease` (the
/// server's count of this connection, say) is held until `on_close` has returned.
///
/// The returned future is what an idle connection costs, so it holds each piece once: an
/// `async fn` would keep a second copy of every argument (rustc moves each parameter into
/// a local of the body), while a block's captures are used in place.
pub(crate) fn run<R, H, L>(
    socket: Socket<'_, R>,
    conn: Connection,
    handler: H,
    lease: L,
) -> impl Future<Output = ()> + Send
where
    R: AsyncRead + Unpin + Send + 'static,
    H: WebSocketHandler,
    L: Send,
{
    let Socket {
        read,
        leftover,
        write,
    } = socket;
    let core = conn.core();
    let session = Session::new(read, leftover, core);
    // Anything queued before the socket was in place (a shutdown's close frame) goes now.
    core.attach(WriteSide::new(write, core.settings().write_buffer_size));
    let mut driver = Driver {
        run: Running { session, conn },
        handler: Some(handler),
        _lease: lease,
    };
    async move {
        // Counted as open once it runs, as it is counted closed at the end of `finish`.
        driver.run.conn.core().metrics().opened();
        // Every callback, and the end, is a boxed future of its own, and the wait for the
        // next message a poll of the session: while it waits, the task holds `driver` and
        // one pointer. (Awaited here, not in a method of the driver's, whose state would
        // be one more layer around this one.)
        driver.open().await;
        loop {
            // Not `while let`, which would keep the `Option` alive across the callback.
            let Some(message) = poll_fn(|cx| driver.poll_next(cx)).await else {
                break;
            };
            driver.message(message).await;
        }
        Box::pin(driver.finish()).await;
    }
}

pin_project_lite::pin_project! {
    /// A future polled inside a span, like `tracing::Instrumented`, which holds its `Span`
    /// (40 bytes) inline: every idle connection's task would carry those bytes. Here the
    /// span is boxed, and a disabled span (unless a subscriber asked for it) is not kept at
    /// all (see [`spawn_in_current_span`]).
    pub(crate) struct InSpan<F> {
        span: Box<tracing::Span>,
        #[pin]
        future: F,
    }
}

/// Spawns `future`, polled inside the span the caller is in if that span is enabled, and
/// bare otherwise: then the task carries not even the span's pointer.
pub(crate) fn spawn_in_current_span<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let future = crate::engine::flush::Corked::new(future);
    let span = tracing::Span::current();
    if span.is_disabled() {
        tokio::spawn(future);
    } else {
        tokio::spawn(InSpan {
            span: Box::new(span),
            future,
        });
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        this.future.poll(cx)
    }
}

/// The upgraded connection's two halves.
pub(crate) struct Socket<'a, R> {
    pub(crate) read: R,
    /// What the client sent behind its handshake, read along with it: decoded first.
    pub(crate) leftover: &'a [u8],
    pub(crate) write: WriteIo,
}

/// Everything one connection's task holds. Dropped however the task ends (a panic in the
/// runtime, a cancelled task), it still ends the connection; the lease goes last.
struct Driver<R, H, L> {
    run: Running<R>,
    /// Taken once `on_close` has returned, so that the handler goes before the lease.
    handler: Option<H>,
    _lease: L,
}

impl<R: AsyncRead + Unpin, H: WebSocketHandler, L> Driver<R, H, L> {
    /// `on_open`, while the session keeps the connection going.
    fn open(&mut self) -> Pin<Box<impl Future<Output = ()> + '_>> {
        // Boxed, each callback: what a callback in progress needs (its watch of the
        // session) is then not part of what every idle connection holds.
        Box::pin(async move {
            if let Some(handler) = self.handler.as_mut() {
                let conn = self.run.conn.clone();
                self.run.call(handler.on_open(&conn)).await;
            }
        })
    }

    /// The next message for the handler, or `None` once there will be none.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            let run = &mut self.run;
            if self.handler.is_none() || run.session.failed() {
                return Poll::Ready(None);
            }
            if run.session.closed_cleanly() {
                // The close handshake completed while a callback ran, behind messages read
                // meanwhile: they came before the peer's close, so the handler still gets
                // them.
                return Poll::Ready(run.session.take_held());
            }
            if run.ended() {
                return Poll::Ready(None);
            }
            match std::task::ready!(run.session.poll_next(cx, run.conn.core())) {
                Event::Message(message) => return Poll::Ready(Some(message)),
                Event::End(end) => run.session.note(end),
            }
        }
    }

    /// `on_message` with `message`, while the session keeps the connection going.
    fn message(&mut self, message: Message) -> Pin<Box<impl Future<Output = ()> + '_>> {
        Box::pin(async move {
            if let Some(handler) = self.handler.as_mut() {
                let conn = self.run.conn.clone();
                self.run.call(handler.on_message(&conn, message)).await;
            }
        })
    }

    /// `on_error` if it failed, the end of the connection, then `on_close`.
    async fn finish(&mut self) {
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let run = &mut self.run;
        let conn = run.conn.clone();
        let core = conn.core();

        let failure = match core.overflow() {
            // The slow-consumer policy ended it: that is the cause, whatever the reader saw.
            Some((messages, bytes)) => Some(Error::SlowConsumer { messages, bytes }),
            None => run.session.take_failure(),
        };
        if let Some(error) = failure {
            tracing::debug!(%error, "connection failed");
            if let Error::HandlerPanicked { message } = &error {
                tracing::error!(%message, "WebSocket handler panicked");
            }
            run.call(handler.on_error(&conn, &error)).await;
            // Fail the connection with the code that says why, if it can still be sent:
            // written within the close timeout, not waiting for the peer's answer.
            if let Some(code) = error.close_code() {
                if !run.ended() {
                    core.queue_close(CloseFrame {
                        code,
                        reason: String::new(),
                    });
                    run.session.write_close(core).await;
                }
            }
        }
        // The socket goes (the read half with `close_read`, the write half with `detach`)
        // and the connection leaves every collection before `on_close`.
        run.end();

        let frame = core.first_close().unwrap_or_else(CloseFrame::abnormal);
        core.metrics().closed(frame.code.as_u16());
        tracing::debug!(code = frame.code.as_u16(), "connection closed");
        if let Err(Error::HandlerPanicked { message }) =
            caught(handler.on_close(&conn, &frame)).await
        {
            tracing::error!(%message, "WebSocket handler panicked in on_close");
        }
        self.handler = None;
    }
}

impl<R, H, L> Drop for Driver<R, H, L> {
    fn drop(&mut self) {
        end_connection(&self.run.conn);
        // Fields drop after this, in order: the session, the handler, then the lease.
    }
}

/// The connection while its task runs it: the session keeps how it is ending (the close
/// handshake done, the first failure), in bytes it would have as padding anyway.
struct Running<R> {
    session: Session<R>,
    conn: Connection,
}

impl<R: AsyncRead + Unpin> Running<R> {
    /// The connection is over: its socket is gone and it has left its collections.
    fn ended(&self) -> bool {
        self.session.is_read_closed()
    }

    /// Runs a handler callback while the session keeps the connection going. A panic
    /// becomes the connection's failure; if the connection is over before the callback
    /// returns, it is ended at once and the callback then finishes.
    async fn call(&mut self, callback: impl Future<Output = ()>) {
        let mut callback = pin!(caught(callback));
        let outcome = if self.ended() {
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
                self.session.note(end);
                self.end();
                callback.await
            }
        };
        if let Err(panic) = result {
            self.session.note(End::Failed(panic));
        }
    }

    /// Ends the connection now: the socket goes, and it leaves every collection.
    fn end(&mut self) {
        if !self.ended() {
            self.session.close_read();
            end_connection(&self.conn);
        }
    }
}

/// Drops the socket (both halves, once the session has let go of the read half) and marks
/// the connection closed: it leaves every collection and `closed()` resolves.
fn end_connection(conn: &Connection) {
    conn.core().detach();
    conn.mark_closed();
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

/// The parts of a connection's task future and their sizes, for the test that bounds it.
#[cfg(test)]
pub(crate) fn sizes<R, H: WebSocketHandler, L>() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("Driver", size_of::<Driver<R, H, L>>()),
        ("Running", size_of::<Running<R>>()),
        ("Session", size_of::<Session<R>>()),
        ("Reader", size_of::<crate::engine::reader::Reader<R>>()),
        ("handler", size_of::<H>()),
        ("lease", size_of::<L>()),
    ]
}

//! The task that runs one connection: it reads, calls the handler, and finishes writes that
//! met a full socket (see [`crate::engine::core`] for how writing is arranged).

use tokio::time::Instant;

use futures_util::future::{select, Either};
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::connection::handler::WebSocketHandler;
use crate::connection::Connection;
use crate::engine::flush::HasCore;
use crate::engine::keepalive::{Due, KeepAlive};
use crate::engine::rate_limit::Bucket;
use crate::engine::settings::Settings;
use crate::engine::stream::{
    close_from_wire, error_from_tungstenite, tungstenite_config, ProtocolStream,
};
use crate::engine::writer::WriteSide;
use crate::error::Error;
use crate::protocol::close::CloseFrame;
use crate::protocol::message::{Message, Utf8Bytes};

/// Drives one connection until it ends, calling `handler` along the way. `lease` (the
/// server's count of this connection, say) is held until the connection has ended.
pub(crate) async fn run<R, W, H, L>(
    read: R,
    write: W,
    conn: Connection,
    mut handler: H,
    settings: Settings,
    lease: L,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Send + 'static,
    H: WebSocketHandler,
    L: Send,
{
    // Whatever happens below, even a panicking handler, the connection ends up closed, out
    // of its collections, and its socket released.
    let _guard = EndGuard {
        conn: conn.clone(),
        _lease: lease,
    };
    let core = conn.core();
    let close_timeout = settings.close_timeout;
    core.metrics.opened();

    // Anything queued before the socket was in place (a shutdown's close frame) goes now.
    core.attach(WriteSide::new(Box::pin(write), settings.write_buffer_size));
    let mut socket = WebSocketStream::from_raw_socket(
        ProtocolStream::new(read, conn.clone()),
        Role::Server,
        Some(tungstenite_config(&settings)),
    )
    .await;

    let failure = {
        let reads = async {
            if let Err(panic) = caught(handler.on_open(&conn)).await {
                return Some(panic);
            }
            read_loop(&mut socket, &mut handler, &conn, &settings).await
        };
        let writes = core.write_handed_over();
        match select(std::pin::pin!(reads), std::pin::pin!(writes)).await {
            Either::Left((failure, _)) => failure,
            // Writing has ended (our close frame is out, or the socket failed); reading
            // goes on until the peer's answer or the close timeout.
            Either::Right((_, reads)) => reads.await,
        }
    };

    // The slow-consumer policy ended it: that is the cause, whatever the reader saw.
    let failure = match core.overflow() {
        Some((messages, bytes)) => Some(Error::SlowConsumer { messages, bytes }),
        None => failure,
    };
    if let Some(error) = &failure {
        tracing::debug!(%error, "connection failed");
        if let Error::HandlerPanicked { message } = error {
            tracing::error!(%message, "WebSocket handler panicked");
        }
        let _ = caught(handler.on_error(&conn, error)).await;
        if let Some(code) = error.close_code() {
            core.queue_close(CloseFrame {
                code,
                reason: String::new(),
            });
        }
    }
    // Write what is still queued (our close frame, or tungstenite's answer to the peer's)
    // before the socket goes, within the close timeout; a peer that is gone gets nothing.
    let peer_gone = matches!(
        failure,
        Some(Error::IdleTimeout(_) | Error::AbruptClose | Error::Io(_))
    );
    if !peer_gone {
        core.queue.hand_over();
        let _ = tokio::time::timeout(close_timeout, core.write_queue()).await;
    }
    drop(socket);
    let frame = core.first_close().unwrap_or_else(CloseFrame::abnormal);
    drop(_guard);
    core.metrics.closed(frame.code.as_u16());
    tracing::debug!(code = frame.code.as_u16(), "connection closed");
    if let Err(Error::HandlerPanicked { message }) = caught(handler.on_close(&conn, &frame)).await {
        tracing::error!(%message, "WebSocket handler panicked in on_close");
    }
}

struct EndGuard<L> {
    conn: Connection,
    _lease: L,
}

impl<L> Drop for EndGuard<L> {
    fn drop(&mut self) {
        // Dropping the write half (with the read half, already gone) closes the socket.
        self.conn.core().detach();
        self.conn.mark_closed();
    }
}

/// Reads until the connection ends. Returns the failure, if it did not end cleanly.
async fn read_loop<R, H>(
    stream: &mut WebSocketStream<ProtocolStream<R, Connection>>,
    handler: &mut H,
    conn: &Connection,
    settings: &Settings,
) -> Option<Error>
where
    R: AsyncRead + Unpin,
    H: WebSocketHandler,
{
    // Once our close frame is out, the peer has `close_timeout` to answer it.
    let core = conn.core();
    let close_timeout = settings.close_timeout;
    let close_deadline = async {
        core.close_sent.notified().await;
        tokio::time::sleep(close_timeout).await;
    };
    tokio::pin!(close_deadline);
    let mut keepalive = KeepAlive::new(
        settings.ping_interval,
        settings.idle_timeout,
        Instant::now(),
    );
    let mut rate = settings
        .rate_limit
        .map(|limit| Bucket::new(limit, Instant::now()));
    let keepalive_timer =
        tokio::time::sleep_until(keepalive.deadline().unwrap_or_else(Instant::now));
    tokio::pin!(keepalive_timer);
    loop {
        let item = tokio::select! {
            biased;
            item = stream.next() => item,
            () = &mut close_deadline => return Some(Error::CloseTimeout(close_timeout)),
            () = &mut keepalive_timer, if keepalive.deadline().is_some() => {
                match keepalive.due(Instant::now()) {
                    Due::Idle => {
                        let idle = keepalive.idle_timeout().unwrap_or_default();
                        return Some(Error::IdleTimeout(idle));
                    }
                    Due::Ping => core.send_ping(),
                    Due::Nothing => {}
                }
                if let Some(next) = keepalive.deadline() {
                    keepalive_timer.as_mut().reset(next);
                }
                continue;
            }
        };
        let message = match item {
            None => return None,
            Some(Err(error)) => return Some(error_from_tungstenite(error)),
            Some(Ok(message)) => message,
        };
        // Only noted here: re-arming the timer on every message would cost a timer-wheel
        // update per message. When the timer fires early, `due` says so and it is re-armed.
        keepalive.seen(Instant::now());
        let message = match message {
            tungstenite::Message::Text(text) => {
                Message::Text(Utf8Bytes::from_validated(text.into()))
            }
            tungstenite::Message::Binary(bytes) => Message::Binary(bytes),
            // tungstenite queues the answer to a close frame and sends it on the next read.
            tungstenite::Message::Close(frame) => {
                core.peer_closed(close_from_wire(frame));
                continue;
            }
            // tungstenite answers pings itself; pongs and raw frames need nothing more.
            tungstenite::Message::Ping(_)
            | tungstenite::Message::Pong(_)
            | tungstenite::Message::Frame(_) => continue,
        };
        core.metrics.received(conn.id(), message.len());
        if let Some(bucket) = &mut rate {
            if !bucket.take(Instant::now()) {
                let per_second = settings
                    .rate_limit
                    .map_or(0, |limit| limit.per_second as u32);
                return Some(Error::RateLimited { per_second });
            }
        }
        if let Err(panic) = caught(handler.on_message(conn, message)).await {
            return Some(panic);
        }
    }
}

/// Runs a handler callback, turning a panic into [`Error::HandlerPanicked`]: a panicking
/// handler ends only its own connection (with 1011), never the server's other ones.
async fn caught<F: std::future::Future<Output = ()>>(callback: F) -> Result<(), Error> {
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

//! The per-connection engine: one task reads, calls the handler, and finishes writes that
//! met a full socket (see [`crate::writer`] for how writing is arranged).

use tokio::time::Instant;

use futures_util::future::{select, Either};
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::close::CloseFrame;
use crate::config::{Config, Permit};
use crate::connection::{lock, Connection};
use crate::error::Error;
use crate::handler::WebSocketHandler;
use crate::keepalive::{Due, KeepAlive};
use crate::message::Message;
use crate::rate_limit::Bucket;
use crate::stream::ProtocolStream;
use crate::writer::WriteSide;

/// Drives one connection until it ends, calling `handler` along the way.
pub(crate) async fn run<R, W, H>(
    read: R,
    write: W,
    conn: Connection,
    mut handler: H,
    config: Config,
    permit: Permit,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Send + 'static,
    H: WebSocketHandler,
{
    // Whatever happens below, even a panicking handler, the connection ends up closed, out
    // of its collections, and its socket released.
    let _guard = EndGuard {
        conn: conn.clone(),
        _permit: permit,
    };
    let close_timeout = config.get_close_timeout();
    conn.shared().metrics.opened();

    *lock(&conn.shared().write_side) = Some(WriteSide::new(
        Box::pin(write),
        config.get_write_buffer_size(),
    ));
    // Anything queued before the socket was in place (a shutdown's close frame) goes now.
    conn.flush_now();
    let mut socket = WebSocketStream::from_raw_socket(
        ProtocolStream::new(read, conn.clone()),
        Role::Server,
        Some(config.to_tungstenite()),
    )
    .await;

    let failure = {
        let reads = async {
            if let Err(panic) = caught(handler.on_open(&conn)).await {
                return Some(panic);
            }
            read_loop(&mut socket, &mut handler, &conn, &config).await
        };
        let writes = conn.write_handed_over();
        match select(std::pin::pin!(reads), std::pin::pin!(writes)).await {
            Either::Left((failure, _)) => failure,
            // Writing has ended (our close frame is out, or the socket failed); reading
            // goes on until the peer's answer or the close timeout.
            Either::Right((_, reads)) => reads.await,
        }
    };

    // The slow-consumer policy ended it: that is the cause, whatever the reader saw.
    let failure = match conn.overflow() {
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
            conn.queue_close(CloseFrame {
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
        conn.shared().queue.hand_over();
        let _ = tokio::time::timeout(close_timeout, conn.write_queue()).await;
    }
    drop(socket);
    let frame = conn.first_close().unwrap_or_else(CloseFrame::abnormal);
    drop(_guard);
    conn.shared().metrics.closed(frame.code.as_u16());
    tracing::debug!(code = frame.code.as_u16(), "connection closed");
    if let Err(Error::HandlerPanicked { message }) = caught(handler.on_close(&conn, &frame)).await {
        tracing::error!(%message, "WebSocket handler panicked in on_close");
    }
}

struct EndGuard {
    conn: Connection,
    /// Counts the connection against `Config::max_connections` until it has ended.
    _permit: Permit,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.conn.shared().queue.stop();
        // Dropping the write half (with the read half, already gone) closes the socket.
        let write_side = lock(&self.conn.shared().write_side).take();
        drop(write_side);
        self.conn.mark_closed();
    }
}

/// Reads until the connection ends. Returns the failure, if it did not end cleanly.
async fn read_loop<R, H>(
    stream: &mut WebSocketStream<ProtocolStream<R>>,
    handler: &mut H,
    conn: &Connection,
    config: &Config,
) -> Option<Error>
where
    R: AsyncRead + Unpin,
    H: WebSocketHandler,
{
    // Once our close frame is out, the peer has `close_timeout` to answer it.
    let close_timeout = config.get_close_timeout();
    let close_deadline = async {
        conn.shared().close_sent.notified().await;
        tokio::time::sleep(close_timeout).await;
    };
    tokio::pin!(close_deadline);
    let mut keepalive = KeepAlive::new(
        config.get_ping_interval(),
        config.get_idle_timeout(),
        Instant::now(),
    );
    let mut rate = config
        .get_rate_limit()
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
                    Due::Ping => conn.send_ping(),
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
            Some(Err(error)) => return Some(Error::from_tungstenite(error)),
            Some(Ok(message)) => message,
        };
        // Only noted here: re-arming the timer on every message would cost a timer-wheel
        // update per message. When the timer fires early, `due` says so and it is re-armed.
        keepalive.seen(Instant::now());
        let message = match message {
            tungstenite::Message::Text(text) => Message::Text(text),
            tungstenite::Message::Binary(bytes) => Message::Binary(bytes),
            // tungstenite queues the answer to a close frame and sends it on the next read.
            tungstenite::Message::Close(frame) => {
                conn.peer_closed(CloseFrame::from_wire(frame));
                continue;
            }
            // tungstenite answers pings itself; pongs and raw frames need nothing more.
            tungstenite::Message::Ping(_)
            | tungstenite::Message::Pong(_)
            | tungstenite::Message::Frame(_) => continue,
        };
        conn.shared().metrics.received(conn.id(), message.len());
        if let Some(bucket) = &mut rate {
            if !bucket.take(Instant::now()) {
                let per_second = config
                    .get_rate_limit()
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

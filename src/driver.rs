//! The per-connection engine: a reader that calls the handler, and a writer that drains the
//! outbound queue in batches.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::WebSocketStream;

use crate::close::CloseFrame;
use crate::connection::Connection;
use crate::error::Error;
use crate::handler::WebSocketHandler;
use crate::message::Message;
use crate::outbound::{Outbound, Taken};

/// Drives one connection until it ends, calling `handler` along the way.
pub(crate) async fn run<S, H>(
    socket: WebSocketStream<S>,
    conn: Connection,
    mut handler: H,
    close_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: WebSocketHandler,
{
    // Whatever happens below, even a panicking handler, the connection ends up closed,
    // out of its collections, and its writer stopped.
    let (sink, mut stream) = socket.split();
    let mut guard = EndGuard {
        conn: conn.clone(),
        writer: Some(tokio::spawn(write_loop(sink, conn.clone()))),
    };

    handler.on_open(&conn).await;
    let failure = read_loop(&mut stream, &mut handler, &conn, close_timeout).await;

    if let Some(error) = failure {
        tracing::debug!(id = %conn.id(), %error, "connection failed");
        handler.on_error(&conn, &error).await;
        if let Some(code) = error.close_code() {
            conn.queue_close(CloseFrame {
                code,
                reason: String::new(),
            });
            // Give the writer a bounded time to write what is queued and the close frame.
            if let Some(writer) = guard.writer.as_mut() {
                let _ = tokio::time::timeout(close_timeout, writer).await;
            }
        }
    }
    drop(stream);
    let frame = conn.first_close().unwrap_or_else(CloseFrame::abnormal);
    drop(guard);
    handler.on_close(&conn, &frame).await;
}

struct EndGuard {
    conn: Connection,
    writer: Option<JoinHandle<()>>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
        self.conn.shared().queue.stop();
        self.conn.mark_closed();
    }
}

/// Reads until the connection ends. Returns the failure, if it did not end cleanly.
async fn read_loop<S, H>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    handler: &mut H,
    conn: &Connection,
    close_timeout: Duration,
) -> Option<Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: WebSocketHandler,
{
    // Once our close frame is out, the peer has `close_timeout` to answer it.
    let close_deadline = async {
        conn.shared().close_sent.notified().await;
        tokio::time::sleep(close_timeout).await;
    };
    tokio::pin!(close_deadline);
    loop {
        let item = tokio::select! {
            biased;
            item = stream.next() => item,
            () = &mut close_deadline => return Some(Error::CloseTimeout(close_timeout)),
        };
        let message = match item {
            None => return None,
            Some(Err(error)) => return Some(Error::from_tungstenite(error)),
            Some(Ok(message)) => message,
        };
        match message {
            tungstenite::Message::Text(text) => handler.on_message(conn, Message::Text(text)).await,
            tungstenite::Message::Binary(bytes) => {
                handler.on_message(conn, Message::Binary(bytes)).await
            }
            // tungstenite queues the answer to a close frame and sends it on the next read.
            tungstenite::Message::Close(frame) => conn.record_close(CloseFrame::from_wire(frame)),
            // tungstenite answers pings itself; pongs and raw frames need nothing.
            tungstenite::Message::Ping(_)
            | tungstenite::Message::Pong(_)
            | tungstenite::Message::Frame(_) => {}
        }
    }
}

/// Writes queued messages until the connection closes or the socket fails; then the queue
/// refuses further messages, so senders learn at once that nothing more will be written.
async fn write_loop<S>(sink: SplitSink<WebSocketStream<S>, tungstenite::Message>, conn: Connection)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_batches(sink, &conn).await;
    conn.shared().queue.stop();
}

/// Everything queued is taken at once, fed, then flushed once.
async fn write_batches<S>(
    mut sink: SplitSink<WebSocketStream<S>, tungstenite::Message>,
    conn: &Connection,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let queue = &conn.shared().queue;
    let mut batch = VecDeque::new();
    loop {
        match std::future::poll_fn(|cx| queue.poll_take(cx, &mut batch)).await {
            Taken::Urgent(frame) => {
                batch.clear();
                send_close(&mut sink, conn, frame).await;
                return;
            }
            Taken::Items => {
                while let Some(item) = batch.pop_front() {
                    match item {
                        Outbound::Message(message) => {
                            if sink.feed(message).await.is_err() {
                                return;
                            }
                        }
                        Outbound::Close(frame) => {
                            batch.clear();
                            send_close(&mut sink, conn, frame).await;
                            return;
                        }
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn send_close<S>(
    sink: &mut SplitSink<WebSocketStream<S>, tungstenite::Message>,
    conn: &Connection,
    frame: CloseFrame,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let wire = frame.to_wire();
    conn.record_close(frame);
    if sink
        .send(tungstenite::Message::Close(Some(wire)))
        .await
        .is_ok()
    {
        conn.shared().close_sent.notify_one();
    }
}

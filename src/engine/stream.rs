//! The stream tungstenite runs on: it reads from the socket's read half, and what tungstenite
//! writes (pongs, its answer to a close frame) joins the connection's outbound queue, so it
//! goes out in order with everything else and only the writer ever writes to the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::engine::flush::HasCore;
use crate::engine::queue::Outbound;
use crate::engine::settings::Settings;
use crate::error::Error;
use crate::protocol::close::{CloseCode, CloseFrame};
use crate::protocol::frame::frame_len;

/// The socket's read half, and the connection whose queue takes what tungstenite writes.
pub(crate) struct ProtocolStream<R, C> {
    read: R,
    conn: C,
}

impl<R, C> ProtocolStream<R, C> {
    pub(crate) fn new(read: R, conn: C) -> Self {
        ProtocolStream { read, conn }
    }
}

impl<R: AsyncRead + Unpin, C: Unpin> AsyncRead for ProtocolStream<R, C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R, C: HasCore + Unpin> AsyncWrite for ProtocolStream<R, C> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut rest = buf;
        while !rest.is_empty() {
            let len = frame_len(rest).unwrap_or(rest.len()).min(rest.len());
            let (frame, after) = rest.split_at(len);
            rest = after;
            let bytes = Bytes::copy_from_slice(frame);
            let item = match frame[0] & 0x0f {
                0x8 => Outbound::Reply(bytes),
                0xa => Outbound::Pong(bytes),
                _ => Outbound::Raw(bytes),
            };
            // After a close frame nothing more may be sent; the queue drops it, and
            // tungstenite must not see an error for that.
            let core = self.conn.core();
            if let Ok(pushed) = core.queue.push_protocol(item) {
                core.after_push(pushed);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A reader of the bytes the client sent right behind its handshake, which hyper read along
/// with it; chained before the socket. They are copied: hyper's slice would keep its whole
/// 8 KiB read buffer alive as long as the reader lives.
pub(crate) fn leftover(bytes: Bytes) -> io::Cursor<Bytes> {
    let bytes = if bytes.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&bytes)
    };
    io::Cursor::new(bytes)
}

/// tungstenite's settings for our [`Settings`].
pub(crate) fn tungstenite_config(settings: &Settings) -> WebSocketConfig {
    // tungstenite writes only its own replies (pongs, the answer to a close frame), into
    // the outbound queue; with no write buffer they join the queue at once.
    WebSocketConfig::default()
        .read_buffer_size(settings.read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_frame_size.min(settings.max_message_size)))
}

/// The close frame the peer sent, as tungstenite read it.
pub(crate) fn close_from_wire(frame: Option<tungstenite::protocol::CloseFrame>) -> CloseFrame {
    match frame {
        Some(frame) => CloseFrame {
            code: CloseCode(frame.code.into()),
            reason: frame.reason.as_str().to_owned(),
        },
        None => CloseFrame {
            code: CloseCode::NO_STATUS,
            reason: String::new(),
        },
    }
}

/// Our error for one of tungstenite's.
pub(crate) fn error_from_tungstenite(error: tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
    use tokio_tungstenite::tungstenite::Error as Ws;
    match error {
        Ws::Capacity(CapacityError::MessageTooLong { size, max_size }) => Error::MessageTooLarge {
            size,
            max: max_size,
        },
        Ws::Utf8(_) => Error::InvalidUtf8,
        Ws::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Error::AbruptClose,
        Ws::Io(io) => Error::Io(io),
        other => Error::Protocol {
            reason: other.to_string(),
        },
    }
}

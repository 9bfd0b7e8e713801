//! The stream tungstenite runs on: it reads from the socket's read half, and what tungstenite
//! writes (pongs, its answer to a close frame) joins the connection's outbound queue, so it
//! goes out in order with everything else and only the writer ever writes to the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::Connection;

pub(crate) struct ProtocolStream<R> {
    read: R,
    conn: Connection,
}

impl<R> ProtocolStream<R> {
    pub(crate) fn new(read: R, conn: Connection) -> Self {
        ProtocolStream { read, conn }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ProtocolStream<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R> AsyncWrite for ProtocolStream<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // After our close frame nothing more may be sent; the queue drops it, and tungstenite
        // must not see an error for that.
        if let Ok(pushed) = self
            .conn
            .shared()
            .queue
            .push_raw(Bytes::copy_from_slice(buf))
        {
            self.conn.after_push(pushed);
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

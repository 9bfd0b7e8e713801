//! The stream tungstenite runs on: it reads from the socket's read half, and what tungstenite
//! writes (pongs, its answer to a close frame) joins the connection's outbound queue, so it
//! goes out in order with everything else and only the writer ever writes to the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::Connection;
use crate::outbound::Outbound;

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
            if let Ok(pushed) = self.conn.shared().queue.push_protocol(item) {
                self.conn.after_push(pushed);
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

/// Length of the unmasked frame at the start of `bytes`, if its header is all there.
/// tungstenite writes whole frames (it has no write buffer here), usually one at a time.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let short = usize::from(*bytes.get(1)? & 0x7f);
    let (header, payload): (usize, usize) = match short {
        126 => (
            4,
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
        ),
        127 => {
            let long: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (10, usize::try_from(u64::from_be_bytes(long)).ok()?)
        }
        short => (2, short),
    };
    header.checked_add(payload)
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

#[cfg(test)]
mod tests {
    use super::frame_len;

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_len(b"\x8a\x00"), Some(2));
        assert_eq!(frame_len(b"\x88\x02\x03\xe8\x8a\x00"), Some(4));
        assert_eq!(frame_len(&[0x82, 126, 1, 0]), Some(4 + 256));
        assert_eq!(
            frame_len(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            Some(10 + 65536)
        );
        assert_eq!(frame_len(&[0x82]), None);
        assert_eq!(frame_len(&[0x82, 127, 0]), None);
    }
}

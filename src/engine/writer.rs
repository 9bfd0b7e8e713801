//! The write side of a connection: queued frames go to the socket with vectored writes,
//! header and payload straight from the queue, no copy. A transport without vectored writes
//! (hyper's HTTP/2 stream, which would take one slice per write) gets each batch copied
//! together into one write instead.
//!
//! A close frame counts as written only once the transport has flushed it: a buffering
//! transport (TLS, an HTTP/2 stream) may hold it after accepting it. The end of the
//! connection then shuts the write half down ([`WriteSide::poll_shutdown`]).
//!
//! Who calls it, and when, is [`core`](crate::engine::core)'s business (see there how
//! writing is arranged without a task per connection); this module only knows how to empty
//! a queue into a socket.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;

use crate::engine::memory;
use crate::engine::queue::{Outbound, OutboundQueue};
use crate::protocol::close::CloseFrame;

/// Most slices handed to one vectored write (Linux allows 1024).
const MAX_SLICES: usize = 128;

/// Writes up to this size are copied together and sent with one plain write.
const SMALL_WRITE: usize = 1024;

/// Most bytes in one write to a transport without vectored writes. hyper's HTTP/2 stream
/// takes every write whole into buffers of its own (up to three writes per stream), outside
/// the connection's bounded queue: large writes would only widen that. 16 KiB is one DATA
/// frame at HTTP/2's default frame size.
const MAX_JOINED_WRITE: usize = 16 * 1024;

/// The socket's write half: a plain TCP one as it is, any other (TLS, hyper's upgraded
/// stream) boxed. Every idle connection holds one, and boxing the TCP one would cost each
/// 32 bytes.
pub(crate) enum WriteIo {
    Tcp(OwnedWriteHalf),
    Boxed(Pin<Box<dyn AsyncWrite + Send>>),
}

impl WriteIo {
    /// Any write half, boxed.
    pub(crate) fn boxed(io: impl AsyncWrite + Send + 'static) -> Self {
        WriteIo::Boxed(Box::pin(io))
    }

    fn as_mut(&mut self) -> Pin<&mut (dyn AsyncWrite + Send)> {
        match self {
            WriteIo::Tcp(tcp) => {
                let tcp: Pin<&mut OwnedWriteHalf> = Pin::new(tcp);
                tcp
            }
            WriteIo::Boxed(boxed) => boxed.as_mut(),
        }
    }
}

/// The socket's write half and what has been taken from the queue but not yet written.
pub(crate) struct WriteSide {
    io: WriteIo,
    in_flight: VecDeque<Outbound>,
    /// Bytes of `in_flight[0]` already written.
    written: usize,
    /// Most bytes handed to one write.
    max_write: u32,
    /// The transport writes many slices at once; if not, a batch is copied into one.
    vectored: bool,
    /// A close frame (ours, or the answer to the peer's) is written: nothing more may be.
    closed: bool,
    /// ... and flushed, and reported so (`Written::final_frame`).
    close_reported: bool,
    /// The write half is shut down.
    shut_down: bool,
    failed: bool,
}

/// What writing put on the wire, for the connection to count and record.
#[derive(Default)]
pub(crate) struct Written {
    /// Data messages written, and their payload bytes.
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    /// Our close frame, once the transport has taken it.
    pub(crate) close: Option<CloseFrame>,
    /// A close frame (ours, or our answer to the peer's) is on the wire, flushed: nothing
    /// follows.
    pub(crate) final_frame: bool,
}

/// Why the writing stopped for good.
pub(crate) enum WriteEnd {
    /// A close frame is on the wire.
    Closed,
    /// The socket failed.
    Failed,
}

impl WriteSide {
    pub(crate) fn new(io: WriteIo, max_write: usize) -> Self {
        let vectored = match &io {
            WriteIo::Tcp(_) => true,
            WriteIo::Boxed(boxed) => boxed.is_write_vectored(),
        };
        let max_write = if vectored {
            max_write
        } else {
            max_write.min(MAX_JOINED_WRITE)
        };
        WriteSide {
            io,
            vectored,
            in_flight: VecDeque::new(),
            written: 0,
            max_write: u32::try_from(max_write).unwrap_or(u32::MAX).max(1),
            closed: false,
            close_reported: false,
            shut_down: false,
            failed: false,
        }
    }

    /// Writes until the queue is empty (`Ready(None)`), the socket is full (`Pending`), or
    /// writing ended for good.
    pub(crate) fn poll_write_queue(
        &mut self,
        queue: &OutboundQueue,
        cx: &mut Context<'_>,
        written: &mut Written,
    ) -> Poll<Option<WriteEnd>> {
        if self.failed {
            return Poll::Ready(Some(WriteEnd::Failed));
        }
        loop {
            if self.in_flight.is_empty() {
                // Flush before looking for more: the queue may be marked idle only once all
                // is on the wire. Marked idle while a flush is pending, a producer could poll
                // the socket with another waker and strand this one (buffering transports).
                match self.io.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Some(self.fail(queue))),
                    Poll::Pending => return Poll::Pending,
                }
                if self.closed {
                    // Only now, flushed, is the close frame on its way to the peer.
                    written.final_frame = !std::mem::replace(&mut self.close_reported, true);
                    return Poll::Ready(Some(WriteEnd::Closed));
                }
                if queue.take(&mut self.in_flight) {
                    continue;
                }
                // Idle: give the buffer back; an idle connection should hold no queue memory.
                let buffer = std::mem::take(&mut self.in_flight);
                memory::freed(buffer.capacity() * std::mem::size_of::<Outbound>());
                return Poll::Ready(None);
            }

            let mut slices = Vec::with_capacity(MAX_SLICES.min(2 * self.in_flight.len()));
            let mut skip = self.written;
            let mut gathered = 0;
            for item in &self.in_flight {
                // Joined, a write may take any number of slices.
                let full = self.vectored && slices.len() >= MAX_SLICES - 1;
                if full || gathered >= self.max_write as usize {
                    break;
                }
                gathered += item.slices(skip, &mut slices);
                skip = 0;
            }
            let polled = if gathered <= SMALL_WRITE {
                // Typical at low rates: one small frame. A plain send of a copy is cheaper
                // in the kernel than a vectored write.
                let mut small = [0u8; SMALL_WRITE];
                let mut at = 0;
                for slice in &slices {
                    small[at..at + slice.len()].copy_from_slice(slice);
                    at += slice.len();
                }
                self.io.as_mut().poll_write(cx, &small[..at])
            } else if !self.vectored {
                // One slice per write would make every frame header a write of its own
                // (over HTTP/2: a DATA frame, a copy and a task wake-up each).
                let mut joined = Vec::with_capacity(gathered);
                slices
                    .iter()
                    .for_each(|slice| joined.extend_from_slice(slice));
                self.io.as_mut().poll_write(cx, &joined)
            } else {
                self.io.as_mut().poll_write_vectored(cx, &slices)
            };
            drop(slices);
            let wrote = match polled {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Some(self.fail(queue)))
                }
                Poll::Ready(Ok(wrote)) => wrote,
                Poll::Pending => return Poll::Pending,
            };
            self.advance(wrote, written);
        }
    }

    /// Flushes and shuts the write half down, once the last frame is written: TLS's
    /// `close_notify`, TCP's FIN, the end of an HTTP/2 stream. Ready once done, or at
    /// once if the socket has failed (or fails now: nothing more can be done).
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.failed || self.shut_down {
            return Poll::Ready(());
        }
        let mut io = self.io.as_mut();
        let done = match io.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => io.poll_shutdown(cx),
            other => other,
        };
        match done {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.shut_down = true;
                self.failed = result.is_err();
                Poll::Ready(())
            }
        }
    }

    /// Drops the items `wrote` bytes completed.
    fn advance(&mut self, wrote: usize, written: &mut Written) {
        let mut done = self.written + wrote;
        while let Some(front) = self.in_flight.front() {
            let len = front.len();
            if done < len {
                break;
            }
            done -= len;
            match self.in_flight.pop_front() {
                Some(Outbound::Data(frame)) => {
                    written.messages += 1;
                    written.bytes += frame.payload().len() as u64;
                }
                // `take` put nothing behind a close frame; it counts as on the wire once
                // flushed (see `poll_write_queue`).
                Some(Outbound::Close(close)) => {
                    written.close = Some(close.0);
                    self.closed = true;
                }
                Some(Outbound::Reply(_)) => self.closed = true,
                _ => {}
            }
        }
        self.written = done;
    }

    fn fail(&mut self, queue: &OutboundQueue) -> WriteEnd {
        self.failed = true;
        self.in_flight.clear();
        queue.stop();
        WriteEnd::Failed
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use tokio::io::AsyncWrite;

    use super::{WriteEnd, WriteIo, WriteSide, Written};
    use crate::engine::queue::OutboundQueue;
    use crate::protocol::close::{CloseCode, CloseFrame};
    use crate::protocol::frame::Frame;

    /// A transport that takes everything and records the length of every write call.
    struct Recorder {
        writes: Arc<Mutex<Vec<usize>>>,
        vectored: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            // Without vectored writes, as tokio's default: the first non-empty slice only.
            let bufs = if self.vectored { bufs } else { &bufs[..1] };
            let len = bufs.iter().map(|b| b.len()).sum();
            self.writes.lock().unwrap().push(len);
            Poll::Ready(Ok(len))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The write calls that `count` queued 64-byte messages take.
    fn writes_for(count: usize, vectored: bool) -> Vec<usize> {
        let queue = OutboundQueue::new(1000, 1 << 20);
        for _ in 0..count {
            let frame = Frame::new(0x1, bytes::Bytes::from_static(&[b'a'; 64]));
            assert!(queue.push_data(frame).is_ok(), "queued");
        }
        let writes = Arc::new(Mutex::new(Vec::new()));
        let io = WriteIo::boxed(Recorder {
            writes: writes.clone(),
            vectored,
        });
        let mut side = WriteSide::new(io, 64 * 1024);
        let mut written = Written::default();
        let mut cx = Context::from_waker(Waker::noop());
        let polled = side.poll_write_queue(&queue, &mut cx, &mut written);
        assert!(matches!(polled, Poll::Ready(None)), "the queue emptied");
        assert_eq!(written.messages, count as u64);
        let writes = writes.lock().unwrap().clone();
        assert_eq!(
            writes.iter().sum::<usize>(),
            count * 66,
            "every byte written once"
        );
        writes
    }

    #[test]
    fn a_batch_is_one_vectored_write() {
        assert_eq!(writes_for(40, true), [40 * 66]);
    }

    #[test]
    fn a_batch_is_one_write_on_a_transport_without_vectored_writes() {
        // Such as hyper's HTTP/2 stream: slice by slice it would be 80 writes.
        assert_eq!(writes_for(40, false), [40 * 66]);
    }

    #[test]
    fn joined_writes_stop_at_16_kib() {
        // What the HTTP/2 stream takes in beyond the bounded queue stays small. A vectored
        // write ends at 128 slices (64 frames) first.
        // The frame that reaches 16 KiB goes whole.
        assert_eq!(writes_for(400, false), [249 * 66, 151 * 66]);
        assert_eq!(writes_for(400, true).len(), 400_usize.div_ceil(64));
    }

    /// A buffering transport (TLS, an HTTP/2 stream): what it takes waits for a flush,
    /// which answers `Pending` once. Records whether it was shut down.
    #[derive(Default)]
    struct Buffering {
        buffered: bool,
        flushes_pending: bool,
        shut_down: Arc<Mutex<bool>>,
    }

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.buffered = true;
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.buffered && std::mem::take(&mut self.flushes_pending) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.buffered = false;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            *self.shut_down.lock().unwrap() = true;
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_close_frame_counts_as_written_once_flushed_then_the_write_half_shuts_down() {
        // Until the transport's flush completes, the close frame is not on the wire.
        let queue = OutboundQueue::new(10, 1 << 20);
        let close = CloseFrame {
            code: CloseCode::MESSAGE_TOO_BIG,
            reason: String::new(),
        };
        assert!(queue.push_close(close, false).is_ok());
        let shut_down = Arc::new(Mutex::new(false));
        let io = WriteIo::boxed(Buffering {
            flushes_pending: true,
            shut_down: shut_down.clone(),
            ..Buffering::default()
        });
        let mut side = WriteSide::new(io, 64 * 1024);
        let mut cx = Context::from_waker(Waker::noop());
        let mut written = Written::default();
        let polled = side.poll_write_queue(&queue, &mut cx, &mut written);
        assert!(polled.is_pending(), "the flush is pending");
        assert!(!written.final_frame, "not on the wire before the flush");

        let mut written = Written::default();
        let polled = side.poll_write_queue(&queue, &mut cx, &mut written);
        assert!(matches!(polled, Poll::Ready(Some(WriteEnd::Closed))));
        assert!(written.final_frame, "flushed: on the wire");
        assert!(!*shut_down.lock().unwrap());
        assert!(side.poll_shutdown(&mut cx).is_ready());
        assert!(*shut_down.lock().unwrap(), "close_notify, FIN");

        let mut written = Written::default();
        let polled = side.poll_write_queue(&queue, &mut cx, &mut written);
        assert!(matches!(polled, Poll::Ready(Some(WriteEnd::Closed))));
        assert!(!written.final_frame, "reported once");
    }
}

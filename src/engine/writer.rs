//! The write side of a connection: queued frames go to the socket with vectored writes,
//! header and payload straight from the queue, no copy. A transport without vectored writes
//! (hyper's HTTP/2 stream, which would take one slice per write) gets each batch copied
//! together into one write instead, at most 16 KiB of it (a large message is split over
//! several writes; a part that fills a write alone goes uncopied).
//!
//! A close frame counts as written only once the transport has flushed it: a buffering
//! transport (TLS, an HTTP/2 stream) may hold it after accepting it. The end of the
//! connection then shuts the write half down ([`WriteSide::poll_shutdown`]).
//!
//! Who calls it, and when, is [`core`](crate::engine::core)'s business (see there how
//! writing is arranged without a task per connection); this module only knows how to empty
//! a queue into a socket.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::engine::memory;
use crate::engine::queue::{self, Outbound, OutboundQueue};
use crate::engine::tcp::TcpWrite;
use crate::protocol::close::CloseFrame;

/// Most slices handed to one vectored write (Linux allows 1024).
const MAX_SLICES: usize = 128;

/// Writes up to this size are copied together and sent with one plain write.
const SMALL_WRITE: usize = 1024;

/// Parts shorter than this on average (small messages' frames: a header and a payload
/// each) are copied together rather than gathered by a vectored write: copying them costs
/// less than the kernel's work per slice (profiled at 64 B broadcasts: a tenth less kernel
/// time per delivery).
const GATHER_MIN_PART: usize = 256;

/// Most bytes in one write to a transport without vectored writes. hyper's HTTP/2 stream
/// takes every write whole into buffers of its own (up to three writes per stream), outside
/// the connection's bounded queue: large writes would only widen that. 16 KiB is one DATA
/// frame at HTTP/2's default frame size.
const MAX_JOINED_WRITE: usize = 16 * 1024;

thread_local! {
    /// Each worker thread's buffer for joined writes: no allocation per write, and nothing
    /// held per connection.
    static JOINED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(MAX_JOINED_WRITE));
}

/// The socket's write half: a plain TCP one as it is, any other (TLS, hyper's upgraded
/// stream) boxed. Every idle connection holds one, and boxing the TCP one would cost each
/// 32 bytes.
pub(crate) enum WriteIo {
    Tcp(TcpWrite),
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
                let tcp: Pin<&mut TcpWrite> = Pin::new(tcp);
                tcp
            }
            WriteIo::Boxed(boxed) => boxed.as_mut(),
        }
    }
}

/// The socket's write half and what has been taken from the queue but not yet written.
pub(crate) struct WriteSide {
    io: WriteIo,
    /// The batch taken from the queue, written from `in_flight[sent]` on.
    in_flight: Vec<Outbound>,
    /// Bytes of `in_flight[sent]` already written.
    written: usize,
    /// Most bytes handed to one write.
    max_write: u32,
    /// Items of `in_flight` written (their payloads already let go).
    sent: u32,
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
            in_flight: Vec::new(),
            written: 0,
            max_write: u32::try_from(max_write).unwrap_or(u32::MAX).max(1),
            sent: 0,
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
            if self.unsent().is_empty() {
                self.in_flight.clear();
                self.sent = 0;
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
                let bytes = buffer.capacity() * std::mem::size_of::<Outbound>();
                if queue::give_back(buffer) {
                    memory::freed(bytes);
                }
                return Poll::Ready(None);
            }

            let polled = self.poll_write_some(cx);
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

    /// One write of what is in flight, from `written` on: at most `max_write` bytes, and
    /// on a vectored transport at most `MAX_SLICES` slices.
    fn poll_write_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // The slices are on the stack, not allocated per write; one item (the usual case at
        // low rates) has two parts at most, and needs no room for more.
        if self.unsent().len() == 1 {
            self.poll_write_parts::<2>(cx)
        } else {
            self.poll_write_parts::<MAX_SLICES>(cx)
        }
    }

    /// [`poll_write_some`](Self::poll_write_some) with room for `N` slices.
    fn poll_write_parts<const N: usize>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let in_flight = self.in_flight.get(self.sent as usize..).unwrap_or_default();
        let written = self.written;
        let cap = self.max_write as usize;
        let mut slices = [IoSlice::new(&[]); N];
        let (count, total) = for_each_pending(in_flight, written, cap, N, |at, part| {
            slices[at] = IoSlice::new(part)
        });
        let slices = &slices[..count];
        let mut io = self.io.as_mut();
        if count == 1 {
            // One contiguous part (a large payload, a control frame): as it is, no copy.
            return io.poll_write(cx, &slices[0]);
        }
        if total <= SMALL_WRITE {
            // Typical at low rates: one small frame. A plain send of a copy is cheaper in
            // the kernel than a vectored write.
            let mut small = [0u8; SMALL_WRITE];
            let mut at = 0;
            for slice in slices {
                small[at..at + slice.len()].copy_from_slice(slice);
                at += slice.len();
            }
            return io.poll_write(cx, &small[..at]);
        }
        if self.vectored && total >= count * GATHER_MIN_PART {
            return io.poll_write_vectored(cx, slices);
        }
        // One slice per write would make every frame header a write of its own (over
        // HTTP/2: a DATA frame, a copy and a task wake-up each): joined, up to the cap (at
        // most MAX_JOINED_WRITE, which bounds the thread's buffer).
        let join_cap = cap.min(MAX_JOINED_WRITE);
        let join = |joined: &mut Vec<u8>| {
            joined.clear();
            slices
                .iter()
                .for_each(|slice| joined.extend_from_slice(slice));
            if count == N {
                for_each_pending(
                    in_flight,
                    written + total,
                    join_cap.saturating_sub(total),
                    usize::MAX,
                    |_, part| joined.extend_from_slice(part),
                );
            }
        };
        let shared = JOINED.try_with(|joined| {
            let mut joined = joined.try_borrow_mut().ok()?;
            join(&mut joined);
            Some(io.as_mut().poll_write(cx, &joined))
        });
        match shared {
            Ok(Some(polled)) => polled,
            // The thread's buffer is in use (a transport's write came back here on the same
            // thread) or gone (the thread is exiting): one for this write alone.
            _ => {
                let mut joined = Vec::new();
                join(&mut joined);
                io.poll_write(cx, &joined)
            }
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

    /// What is taken from the queue and not yet written.
    fn unsent(&self) -> &[Outbound] {
        self.in_flight.get(self.sent as usize..).unwrap_or_default()
    }

    /// Lets go of the items `wrote` bytes completed (their payloads at once: the slot
    /// keeps an empty placeholder until the batch is done).
    fn advance(&mut self, wrote: usize, written: &mut Written) {
        let mut done = self.written + wrote;
        while let Some(front) = self.in_flight.get_mut(self.sent as usize) {
            let len = front.len();
            if done < len {
                break;
            }
            done -= len;
            self.sent += 1;
            match std::mem::replace(front, Outbound::Raw(bytes::Bytes::new())) {
                Outbound::Data(frame) => {
                    written.messages += 1;
                    written.bytes += frame.payload().len() as u64;
                }
                // `take` put nothing behind a close frame; it counts as on the wire once
                // flushed (see `poll_write_queue`).
                Outbound::Close(close) => {
                    written.close = Some(close.0);
                    self.closed = true;
                }
                Outbound::Reply(_) => self.closed = true,
                _ => {}
            }
        }
        self.written = done;
    }

    fn fail(&mut self, queue: &OutboundQueue) -> WriteEnd {
        self.failed = true;
        self.in_flight.clear();
        self.sent = 0;
        queue.stop();
        WriteEnd::Failed
    }
}

/// Calls `f` with the number and bytes of each part of `in_flight` not yet written (its
/// first `written` bytes are), in order, the last one cut so that they add up to at most
/// `cap` bytes, and at most `most` of them. Returns how many parts and bytes that was.
#[inline]
fn for_each_pending<'a>(
    in_flight: &'a [Outbound],
    written: usize,
    cap: usize,
    most: usize,
    mut f: impl FnMut(usize, &'a [u8]),
) -> (usize, usize) {
    let (mut skip, mut count, mut total) = (written, 0, 0);
    for item in in_flight {
        for part in item.parts() {
            if skip >= part.len() {
                // Written already, or an empty payload.
                skip -= part.len();
                continue;
            }
            if count == most || total == cap {
                return (count, total);
            }
            let part = &part[skip..];
            skip = 0;
            let part = &part[..part.len().min(cap - total)];
            f(count, part);
            count += 1;
            total += part.len();
        }
    }
    (count, total)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use tokio::io::AsyncWrite;

    use super::{for_each_pending, WriteEnd, WriteIo, WriteSide, Written, MAX_JOINED_WRITE};
    use crate::engine::queue::{Bounded, Outbound, OutboundQueue};
    use crate::protocol::close::{CloseCode, CloseFrame};
    use crate::protocol::frame::Frame;

    /// What a [`Recorder`] saw: each write call's bytes and where they were, and flushes.
    #[derive(Default)]
    struct Seen {
        writes: Vec<(usize, Vec<u8>)>,
        /// Of those, the vectored write calls of more than one slice.
        gathered: usize,
        /// Written since the last flush.
        buffered: bool,
        /// Flushes of buffered bytes still to answer `Pending` (each wakes at once).
        pending_flushes: usize,
        shut_down: bool,
    }

    /// A transport that takes everything and records every write call.
    struct Recorder {
        seen: Arc<Mutex<Seen>>,
        vectored: bool,
    }

    impl Recorder {
        fn record(&self, bufs: &[io::IoSlice<'_>]) -> usize {
            let at = bufs.first().map_or(0, |buf| buf.as_ptr() as usize);
            let bytes: Vec<u8> = bufs.iter().flat_map(|buf| buf.to_vec()).collect();
            let len = bytes.len();
            let mut seen = self.seen.lock().unwrap();
            seen.writes.push((at, bytes));
            seen.buffered = true;
            len
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(self.record(&[io::IoSlice::new(buf)])))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            // Without vectored writes, as tokio's default: the first non-empty slice only.
            let bufs = if self.vectored { bufs } else { &bufs[..1] };
            if bufs.len() > 1 {
                self.seen.lock().unwrap().gathered += 1;
            }
            Poll::Ready(Ok(self.record(bufs)))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut seen = self.seen.lock().unwrap();
            if seen.buffered && seen.pending_flushes > 0 {
                seen.pending_flushes -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            seen.buffered = false;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.seen.lock().unwrap().shut_down = true;
            Poll::Ready(Ok(()))
        }
    }

    fn side(vectored: bool) -> (WriteSide, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let io = WriteIo::boxed(Recorder {
            seen: seen.clone(),
            vectored,
        });
        (WriteSide::new(io, 64 * 1024), seen)
    }

    /// Writes `queue` out; returns each write call's bytes and address.
    fn write_all(queue: &OutboundQueue, vectored: bool) -> (Vec<(usize, Vec<u8>)>, Written) {
        let (mut side, seen) = side(vectored);
        let mut written = Written::default();
        let mut cx = Context::from_waker(Waker::noop());
        let polled = side.poll_write_queue(queue, &mut cx, &mut written);
        assert!(matches!(polled, Poll::Ready(None)), "the queue emptied");
        let writes = std::mem::take(&mut seen.lock().unwrap().writes);
        (writes, written)
    }

    /// The lengths of the write calls that `count` queued 64-byte messages take.
    fn writes_for(count: usize, vectored: bool) -> Vec<usize> {
        writes_of(count, 64, vectored).0
    }

    /// The lengths of the write calls that `count` queued messages of `size` bytes take,
    /// and how many of those calls gathered several slices.
    fn writes_of(count: usize, size: usize, vectored: bool) -> (Vec<usize>, usize) {
        let queue = Bounded::new(1000, 1 << 20);
        for _ in 0..count {
            let frame = Frame::new(0x1, Bytes::from(vec![b'a'; size]));
            assert!(queue.push_data(frame).is_ok(), "queued");
        }
        let (mut side, seen) = side(vectored);
        let mut written = Written::default();
        let polled = side.poll_write_queue(
            &queue,
            &mut Context::from_waker(Waker::noop()),
            &mut written,
        );
        assert!(matches!(polled, Poll::Ready(None)), "the queue emptied");
        assert_eq!(written.messages, count as u64);
        let seen = seen.lock().unwrap();
        let writes: Vec<usize> = seen.writes.iter().map(|(_, bytes)| bytes.len()).collect();
        let header = if size < 126 { 2 } else { 4 };
        assert_eq!(
            writes.iter().sum::<usize>(),
            count * (header + size),
            "every byte written once"
        );
        (writes, seen.gathered)
    }

    #[test]
    fn a_batch_of_small_messages_is_one_plain_write_of_a_copy() {
        // Copying 80 small parts costs less than the kernel gathering them.
        assert_eq!(writes_of(40, 64, true), (vec![40 * 66], 0));
    }

    #[test]
    fn a_batch_of_larger_messages_is_one_vectored_write() {
        assert_eq!(writes_of(40, 1024, true), (vec![40 * 1028], 1));
    }

    #[test]
    fn a_batch_is_one_write_on_a_transport_without_vectored_writes() {
        // Such as hyper's HTTP/2 stream: slice by slice it would be 80 writes.
        assert_eq!(writes_for(40, false), [40 * 66]);
    }

    #[test]
    fn joined_writes_stop_at_16_kib() {
        // What the HTTP/2 stream takes in beyond the bounded queue stays small: a frame is
        // cut where the write reaches 16 KiB; so are small frames joined for a vectored
        // transport.
        assert_eq!(writes_for(400, false), [16 * 1024, 400 * 66 - 16 * 1024]);
        assert_eq!(writes_for(400, true), [16 * 1024, 400 * 66 - 16 * 1024]);
        // Vectored writes of larger frames end at 128 slices (64 frames).
        assert_eq!(writes_of(200, 1024, true).0.len(), 200_usize.div_ceil(64));
    }

    #[test]
    fn a_large_message_is_split_and_no_joined_write_exceeds_the_cap() {
        // A 1 MiB message between small ones, to a transport without vectored writes:
        // never more than 16 KiB per write, every byte once and in order, and the parts
        // of the payload that fill a write alone are handed over uncopied.
        let queue = Bounded::new(1000, 4 << 20);
        let big = Bytes::from((0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let frames = [
            Frame::new(0x1, Bytes::from_static(b"before")),
            Frame::new(0x2, big.clone()),
            Frame::new(0x1, Bytes::from_static(b"after")),
        ];
        let mut expected = Vec::new();
        for frame in frames {
            expected.extend_from_slice(frame.header());
            expected.extend_from_slice(frame.payload());
            assert!(queue.push_data(frame).is_ok());
        }
        let (writes, written) = write_all(&queue, false);
        assert_eq!(written.messages, 3);
        assert!(
            writes
                .iter()
                .all(|(_, bytes)| bytes.len() <= MAX_JOINED_WRITE),
            "a write over 16 KiB: {:?}",
            writes.iter().map(|(_, b)| b.len()).collect::<Vec<_>>()
        );
        assert_eq!(writes.len(), (1 << 20) / MAX_JOINED_WRITE + 1);
        let all: Vec<u8> = writes.iter().flat_map(|(_, b)| b.clone()).collect();
        assert!(all == expected, "the bytes arrive intact and in order");
        let payload = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
        let uncopied = writes.iter().filter(|(at, _)| payload.contains(at)).count();
        assert_eq!(
            uncopied,
            writes.len() - 2,
            "all but the first and last writes come straight from the payload"
        );

        // Vectored, the same bound holds: at most `max_write` (64 KiB) per write.
        let queue = Bounded::new(1000, 4 << 20);
        assert!(queue.push_data(Frame::new(0x2, big)).is_ok());
        let (writes, _) = write_all(&queue, true);
        assert!(writes.iter().all(|(_, bytes)| bytes.len() <= 64 * 1024));
        assert_eq!(
            writes.iter().map(|(_, b)| b.len()).sum::<usize>(),
            10 + (1 << 20)
        );
    }

    #[test]
    fn pending_parts_resume_mid_item_and_stop_at_the_cap() {
        let items = vec![
            Outbound::Data(Frame::new(0x1, Bytes::from_static(b"hello"))),
            Outbound::Raw(Bytes::from_static(&[0x89, 0])),
        ];
        let parts = |written, cap, most| {
            let mut parts: Vec<&[u8]> = Vec::new();
            let counted = for_each_pending(&items, written, cap, most, |_, part| parts.push(part));
            assert_eq!(counted, (parts.len(), parts.concat().len()));
            parts
        };
        assert_eq!(
            parts(3, 100, 10),
            [&b"ello"[..], &[0x89, 0][..]],
            "three bytes skipped"
        );
        assert_eq!(
            parts(0, 4, 10),
            [&[0x81, 5][..], &b"he"[..]],
            "cut at four bytes"
        );
        assert_eq!(
            parts(0, 100, 2),
            [&[0x81, 5][..], &b"hello"[..]],
            "two parts"
        );
    }

    #[test]
    fn a_close_frame_counts_as_written_once_flushed_then_the_write_half_shuts_down() {
        // A buffering transport (TLS, an HTTP/2 stream) may hold the close frame after
        // taking it: until its flush completes, the close is not on the wire.
        let queue = Bounded::new(10, 1 << 20);
        let close = CloseFrame {
            code: CloseCode::MESSAGE_TOO_BIG,
            reason: String::new(),
        };
        assert!(queue.push_close(close, false).is_ok());
        let (mut side, seen) = side(false);
        seen.lock().unwrap().pending_flushes = 1;
        let mut cx = Context::from_waker(Waker::noop());
        let mut written = Written::default();
        let polled = side.poll_write_queue(&queue, &mut cx, &mut written);
        assert!(polled.is_pending(), "the flush is pending");
        assert_eq!(seen.lock().unwrap().writes.len(), 1, "the frame was taken");
        assert!(!written.final_frame, "not on the wire before the flush");

        let mut written = Written::default();
        let polled = side.poll_write_queue(&queue, &mut cx, &mut written);
        assert!(matches!(polled, Poll::Ready(Some(WriteEnd::Closed))));
        assert!(written.final_frame, "flushed: on the wire");
        assert!(!seen.lock().unwrap().shut_down);
        assert!(side.poll_shutdown(&mut cx).is_ready());
        assert!(seen.lock().unwrap().shut_down, "close_notify, FIN");

        let mut written = Written::default();
        let polled = side.poll_write_queue(&queue, &mut cx, &mut written);
        assert!(matches!(polled, Poll::Ready(Some(WriteEnd::Closed))));
        assert!(!written.final_frame, "reported once");
    }

    /// A transport without vectored writes whose every write first drives another
    /// connection's writer on the same thread, as a transport layered over another
    /// connection might: the thread's buffer for joined writes is in use then.
    struct Nesting {
        inner: (WriteSide, Bounded),
        outer: Recorder,
    }

    impl AsyncWrite for Nesting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let (side, queue) = &mut self.inner;
            let _ = side.poll_write_queue(queue, cx, &mut Written::default());
            Pin::new(&mut self.outer).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_joined_write_that_reenters_another_writer_on_the_same_thread_does_not_panic() {
        let queued = |byte: u8| {
            let queue = Bounded::new(10, 1 << 20);
            let mut wire = Vec::new();
            for _ in 0..3 {
                let frame = Frame::new(0x2, Bytes::from(vec![byte; 600]));
                wire.extend_from_slice(frame.header());
                wire.extend_from_slice(frame.payload());
                assert!(queue.push_data(frame).is_ok());
            }
            (queue, wire)
        };
        let (inner_queue, inner_wire) = queued(b'i');
        let (outer_queue, outer_wire) = queued(b'o');
        let (inner_side, inner_seen) = side(false);
        let outer_seen = Arc::new(Mutex::new(Seen::default()));
        let io = WriteIo::boxed(Nesting {
            inner: (inner_side, inner_queue),
            outer: Recorder {
                seen: outer_seen.clone(),
                vectored: false,
            },
        });
        let mut outer = WriteSide::new(io, 64 * 1024);
        let mut cx = Context::from_waker(Waker::noop());
        let polled = outer.poll_write_queue(&outer_queue, &mut cx, &mut Written::default());
        assert!(matches!(polled, Poll::Ready(None)), "the queue emptied");
        let bytes = |seen: &Arc<Mutex<Seen>>| -> Vec<u8> {
            let seen = seen.lock().unwrap();
            seen.writes.iter().flat_map(|(_, b)| b.clone()).collect()
        };
        assert!(
            bytes(&outer_seen) == outer_wire,
            "the outer connection's bytes"
        );
        assert!(
            bytes(&inner_seen) == inner_wire,
            "the inner connection's bytes"
        );
    }
}

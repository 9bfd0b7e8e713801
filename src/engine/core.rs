//! The engine's part of one connection: its bounded outbound queue, its socket's write
//! half, and where it is in its life (open, closing, closed).
//!
//! Writing is arranged without a task per connection. Whoever finds a connection's queue
//! idle when queueing ([`Pushed::MustFlush`]) makes sure it gets flushed: `send` flushes at
//! once ([`Core::flush_now`]), and a broadcast hands all the connections it found idle to a
//! few flush tasks ([`flush_all`](crate::engine::flush::flush_all)), which write to each in
//! turn, oldest broadcast first. Those writes never wait: when a socket is full, the
//! connection's own task takes over and waits for it ([`Core::poll_write_handed_over`]), so
//! a slow client never holds up a flush task, nor any other client.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use once_cell::race::OnceBox;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::engine::clock;
use crate::engine::id::ConnectionId;
use crate::engine::memory;
use crate::engine::metrics::Metrics;
use crate::engine::queue::{Bounds, Outbound, OutboundQueue, Pushed, Rejected};
use crate::engine::settings::{Settings, SlowConsumer};
use crate::engine::shared::Shared;
use crate::engine::sync::{lock_handover, HandoverMutex};
use crate::engine::writer::{WriteEnd, WriteSide, Written};
use crate::error::SendError;
use crate::protocol::close::{CloseCode, CloseFrame};
use crate::protocol::deflate::{Agreed, DeflateSettings};
use crate::protocol::frame::{opcode, Frame};
use crate::protocol::message::Message;

const OPEN: u8 = 0;
const CLOSING: u8 = 1;
const CLOSED: u8 = 2;

/// What permessage-deflate was agreed with one client, in four bytes of its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// 0: not agreed; 1: agreed, but the client gets plain frames (it asked for an 8-bit
    /// window, which zlib cannot deflate with); 9 to 15: compress with this window.
    bits: u8,
    level: u8,
    /// Shorter messages go plain.
    threshold: u16,
}

impl Deflate {
    pub(crate) fn new(agreed: Option<Agreed>, settings: &DeflateSettings) -> Self {
        let Some(agreed) = agreed else {
            return Deflate::default();
        };
        Deflate {
            bits: if agreed.compress {
                agreed.server_window_bits
            } else {
                1
            },
            level: settings.level.min(9) as u8,
            threshold: u16::try_from(settings.threshold).unwrap_or(u16::MAX),
        }
    }

    /// Whether the client may send compressed messages.
    pub(crate) fn agreed(self) -> bool {
        self.bits != 0
    }

    /// Whether messages to the client may go compressed (at or above the threshold).
    pub(crate) fn compresses(self) -> bool {
        self.bits > 1
    }

    /// The four bytes as one word, for a collection to remember in an atomic.
    pub(crate) fn pack(self) -> u32 {
        u32::from(self.bits) | u32::from(self.level) << 8 | u32::from(self.threshold) << 16
    }

    /// The inverse of [`pack`](Self::pack).
    pub(crate) fn unpack(word: u32) -> Self {
        let [bits, level, low, high] = word.to_le_bytes();
        Deflate {
            bits,
            level,
            threshold: u16::from_le_bytes([low, high]),
        }
    }

    /// The window bits and level to compress a message of `len` bytes with, if it is to
    /// be compressed.
    pub(crate) fn for_len(self, len: usize) -> Option<(u8, u32)> {
        (self.bits > 1 && len >= usize::from(self.threshold))
            .then_some((self.bits, u32::from(self.level)))
    }
}

/// One connection's queue, writer and state, shared by its handle, its task, the flush
/// tasks and the collections it is in.
pub(crate) struct Core {
    pub(crate) id: ConnectionId,
    pub(crate) queue: OutboundQueue,
    /// The socket's write half, once the upgrade has completed.
    write_side: HandoverMutex<Option<WriteSide>>,
    state: AtomicU8,
    /// What its end brings, made by the first thing that needs it: see [`Ending`].
    ending: OnceBox<Ending>,
    /// When the close was asked for (by us or by the peer), as a [`clock`] stamp; 0 until
    /// then. The close timeout runs from here.
    closing_since: AtomicU32,
    /// Our close frame, or our answer to the peer's, is on the wire.
    close_written: AtomicBool,
    /// When the keep-alive is next due, as a [`clock`] stamp (0: never), for the server's
    /// one timer ([`sweep_keepalive`](Self::sweep_keepalive)): a connection keeps no timer
    /// of its own for it, which an idle connection would pay some 130 bytes for.
    keepalive_due: AtomicU32,
    /// The server's timer found `keepalive_due` passed and woke the connection's task.
    keepalive_fired: AtomicBool,
    /// A protocol above may resume it on another socket: its queue keeps what it sent
    /// (`OutboundQueue::keep`), and it stays in its collections when its socket ends.
    resumable: AtomicBool,
    /// What permessage-deflate was agreed with the client, if anything.
    pub(crate) deflate: Deflate,
    /// The server's settings, counters and budget.
    pub(crate) shared: Arc<Shared>,
}

/// What a connection has only once it is ending, or someone waits for that: one
/// allocation, made by the first of them, so that an idle connection pays one pointer.
#[derive(Default)]
struct Ending {
    /// Wakes those awaiting [`Core::closed`].
    closed: Notify,
    /// The first close frame on the wire, in either direction.
    first_close: OnceLock<CloseFrame>,
    /// Set when the slow-consumer policy closed the connection: queued messages and bytes.
    overflow: OnceLock<(usize, usize)>,
}

impl Core {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        Core {
            id: ConnectionId::next(),
            queue: OutboundQueue::new(),
            write_side: HandoverMutex::new(None),
            state: AtomicU8::new(OPEN),
            ending: OnceBox::new(),
            closing_since: AtomicU32::new(0),
            close_written: AtomicBool::new(false),
            keepalive_due: AtomicU32::new(0),
            keepalive_fired: AtomicBool::new(false),
            resumable: AtomicBool::new(false),
            deflate: Deflate::default(),
            shared: shared.clone(),
        }
    }

    /// The server's settings.
    pub(crate) fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// The server's counters.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// How much the queue may hold: the server's bounds.
    pub(crate) fn bounds(&self) -> Bounds {
        Bounds::of(self.settings())
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// Whether the connection is open: not closed and no close requested.
    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    /// Open becomes closing, and the close timeout starts; closing or closed stay as they
    /// are. Returns whether it was open.
    fn start_closing(&self) -> bool {
        let was_open = self
            .state
            .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if was_open {
            // Never 0, which means "not closing": at worst a millisecond early.
            let since = clock::stamp(Instant::now()).max(1);
            self.closing_since.store(since, Ordering::Release);
            // The connection's task arms the close timeout when it next runs.
            self.queue.wake_owner();
        }
        was_open
    }

    /// The frame that carries `message` to this client: compressed if permessage-deflate
    /// was agreed and the message is long enough, else plain.
    pub(crate) fn frame_for(&self, message: Message) -> Frame {
        let Some((bits, level)) = self.deflate.for_len(message.len()) else {
            return Frame::from_message(message);
        };
        match Frame::deflated(&message, level, bits) {
            Some(frame) => {
                self.metrics()
                    .compressed(message.len(), frame.payload().len());
                frame
            }
            None => Frame::from_message(message),
        }
    }

    /// Sets when the keep-alive is next due (a [`clock`] stamp), or that it never is.
    pub(crate) fn set_keepalive_due(&self, due: Option<u32>) {
        // 0 means never: a deadline that falls on it is a millisecond late.
        let due = due.map_or(0, |due| due.max(1));
        self.keepalive_due.store(due, Ordering::Release);
    }

    /// Called by the server's timer, on every tick, with the time as a [`clock`] stamp:
    /// if the keep-alive is due, the connection's task is woken to see to it.
    pub(crate) fn sweep_keepalive(&self, now: u32) {
        let due = self.keepalive_due.load(Ordering::Acquire);
        // Past if at most 24 days past (the other half of the circle is the future).
        let passed = due != 0 && now.wrapping_sub(due) < 1 << 31;
        if passed && !self.keepalive_fired.swap(true, Ordering::AcqRel) {
            self.queue.wake_owner();
        }
    }

    /// Whether the server's timer found the keep-alive due since the last call.
    pub(crate) fn take_keepalive_fired(&self) -> bool {
        // A load first: this runs on every poll of the connection, and is rarely true.
        self.keepalive_fired.load(Ordering::Acquire)
            && self.keepalive_fired.swap(false, Ordering::AcqRel)
    }

    /// When the close was asked for, if it was.
    pub(crate) fn closing_since(&self) -> Option<Instant> {
        match self.closing_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(clock::instant_of(since, Instant::now())),
        }
    }

    /// Whether our close frame, or our answer to the peer's, is on the wire.
    pub(crate) fn close_written(&self) -> bool {
        self.close_written.load(Ordering::Acquire)
    }

    /// Queues an encoded frame. The caller must act on [`Pushed::MustFlush`].
    pub(crate) fn send_frame(&self, frame: Frame) -> Result<Pushed, SendError> {
        // A resumable connection's queue decides: it keeps what comes after the socket.
        if !self.is_open() && !self.is_resumable() {
            return Err(SendError::Closed);
        }
        self.queue
            .push_data(frame, self.bounds())
            .map_err(|rejected| match rejected {
                Rejected::Full { messages, bytes } => {
                    self.metrics().dropped(self.id, 1);
                    if self.settings().slow_consumer == SlowConsumer::Disconnect {
                        self.disconnect_slow_consumer(messages, bytes);
                    }
                    SendError::QueueFull {
                        capacity: self.bounds().max_messages(),
                    }
                }
                Rejected::Stopped => SendError::Closed,
            })
    }

    /// Whether a protocol above may resume the connection on another socket.
    pub(crate) fn is_resumable(&self) -> bool {
        self.resumable.load(Ordering::Acquire)
    }

    /// Marks the connection resumable, or no longer.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn set_resumable(&self, resumable: bool) {
        self.resumable.store(resumable, Ordering::Release);
    }

    /// Queues a text message of a protocol above that is never kept for a resume (SignalR's
    /// pings, acks and closes): encoded here, plain, and queued as a frame of our own,
    /// outside the bounds of messages.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn send_unkept_text(&self, text: &str) {
        self.push_protocol(Outbound::Raw(text_frame(text)));
    }

    /// Queues a ping (an empty one: only the answer matters).
    pub(crate) fn send_ping(&self) {
        self.push_protocol(Outbound::Raw(Bytes::from_static(&[0x89, 0])));
    }

    /// Queues the answer to the peer's ping with `payload` (at most 125 bytes).
    pub(crate) fn send_pong(&self, payload: &[u8]) {
        self.push_protocol(Outbound::Pong(control_frame(opcode::PONG, payload)));
    }

    /// The peer sent its close frame (`None`: without a code): sending is over. Answers it
    /// with its code, unless our own close frame is already queued (it is the answer then).
    pub(crate) fn peer_closed(&self, frame: Option<CloseFrame>) {
        self.start_closing();
        let code = frame
            .as_ref()
            .map(|frame| frame.code.as_u16().to_be_bytes());
        self.record_close(frame.unwrap_or(CloseFrame {
            code: CloseCode::NO_STATUS,
            reason: String::new(),
        }));
        let answer = control_frame(opcode::CLOSE, code.as_ref().map_or(&[][..], |c| &c[..]));
        self.push_protocol(Outbound::Reply(answer));
    }

    fn push_protocol(&self, item: Outbound) {
        // Refused only once a close frame is queued: then nothing more is sent anyway.
        if let Ok(pushed) = self.queue.push_protocol(item) {
            self.after_push(pushed);
        }
    }

    /// The peer is too far behind: drop what is queued for it, send 1008 next, and end the
    /// connection within the close timeout even if the peer never reads again.
    fn disconnect_slow_consumer(&self, messages: usize, bytes: usize) {
        if self.ending().overflow.set((messages, bytes)).is_ok() {
            self.metrics().slow_consumer_disconnected(self.id);
        }
        let frame = CloseFrame {
            code: CloseCode::POLICY_VIOLATION,
            reason: "slow consumer: outbound queue full".to_owned(),
        };
        self.start_closing();
        // Counted as 1008 even if the frame never gets through to a client that stopped
        // reading (which the close timeout or, over HTTP/2, a stream reset then ends).
        self.record_close(frame.clone());
        if let Ok((pushed, dropped)) = self.queue.push_close(frame, true, self.bounds()) {
            // What was still queued goes unsent: the close frame replaces it.
            self.metrics().dropped(self.id, dropped as u64);
            // A broadcast lands here under its shard's lock, so nothing is written here: a
            // full queue has a flush arranged already (`Queued`), and should it not, the
            // connection's own task writes the close frame.
            if pushed == Pushed::MustFlush {
                self.queue.hand_over();
            }
        }
    }

    /// Set once the slow-consumer policy closed this connection: the queue's size then.
    pub(crate) fn overflow(&self) -> Option<(usize, usize)> {
        self.ending.get()?.overflow.get().copied()
    }

    /// What the end brings, made now if nothing made it yet.
    fn ending(&self) -> &Ending {
        self.ending.get_or_init(Box::default)
    }

    /// Starts the close handshake with `code` and `reason`, behind what is queued (see
    /// [`Connection::close`](crate::Connection::close)).
    pub(crate) fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code.as_u16()));
        }
        if reason.len() > 123 {
            return Err(SendError::CloseReasonTooLong(reason.len()));
        }
        if !self.start_closing() {
            return Err(SendError::Closed);
        }
        self.queue_close(CloseFrame {
            code,
            reason: reason.to_owned(),
        });
        Ok(())
    }

    /// Queues a close frame behind everything already queued (so nothing queued is lost),
    /// or sends it ahead of the queue when the queue is full: the client is that far
    /// behind, and the messages dropped count as dropped for a slow client.
    pub(crate) fn queue_close(&self, frame: CloseFrame) {
        self.start_closing();
        if let Ok((pushed, dropped)) = self.queue.push_close(frame, false, self.bounds()) {
            if dropped > 0 {
                self.metrics().dropped(self.id, dropped as u64);
            }
            self.after_push(pushed);
        }
    }

    /// Resolves once the connection has ended (immediately if it already has).
    pub(crate) async fn closed(&self) {
        let notify = &self.ending().closed;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Pairs with the fence in `notify_closed`: either it sees the `Notify` made
            // above, or this sees the connection closed.
            fence(Ordering::SeqCst);
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Records a close frame seen on the wire; only the first one counts.
    pub(crate) fn record_close(&self, frame: CloseFrame) {
        let _ = self.ending().first_close.set(frame);
    }

    pub(crate) fn first_close(&self) -> Option<CloseFrame> {
        self.ending.get()?.first_close.get().cloned()
    }

    /// The connection has ended: nothing more is queued or written. Call
    /// [`notify_closed`](Self::notify_closed) once whatever else the end entails is done.
    pub(crate) fn set_closed(&self) {
        self.state.store(CLOSED, Ordering::Release);
    }

    /// Wakes those awaiting [`closed`](Self::closed).
    pub(crate) fn notify_closed(&self) {
        fence(Ordering::SeqCst);
        if let Some(ending) = self.ending.get() {
            ending.closed.notify_waiters();
        }
    }

    /// Puts the socket's write half in place; what was queued before goes out now.
    pub(crate) fn attach(&self, write_side: WriteSide) {
        *lock_handover(&self.write_side) = Some(write_side);
        self.flush_now();
    }

    /// Flushes and shuts the socket's write half down once the last frame is written (see
    /// [`WriteSide::poll_shutdown`]): TLS's `close_notify`, TCP's FIN, the end of an HTTP/2
    /// stream. Ready once done, or at once if there is no socket or it failed.
    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<()> {
        match lock_handover(&self.write_side).as_mut() {
            Some(side) => side.poll_shutdown(cx),
            None => Poll::Ready(()),
        }
    }

    /// Ends writing: drops what is queued and the socket's write half.
    pub(crate) fn detach(&self) {
        self.queue.stop();
        let write_side = lock_handover(&self.write_side).take();
        if write_side.is_some() {
            // Once per connection: the rest of its state goes soon after.
            memory::freed(memory::CONNECTION);
        }
        drop(write_side);
    }

    /// Acts on what queueing returned.
    pub(crate) fn after_push(&self, pushed: Pushed) {
        if pushed == Pushed::MustFlush {
            self.flush_now();
        }
    }

    /// Writes what is queued without waiting; a full socket is handed to the connection's
    /// own task.
    pub(crate) fn flush_now(&self) {
        let mut side = lock_handover(&self.write_side);
        let Some(side) = side.as_mut() else {
            // Not connected yet: the driver flushes once the socket is in place.
            return;
        };
        if self.queue.is_handed_over() {
            // The connection's task is writing and waiting for the socket; polling it here
            // would replace the waker it waits with.
            return;
        }
        let mut written = Written::default();
        let polled = side.poll_write_queue(
            &self.queue,
            &mut Context::from_waker(Waker::noop()),
            &mut written,
        );
        self.record_written(written);
        if polled.is_pending() {
            self.queue.hand_over();
        }
    }

    /// The connection task's share of writing: finishes flushes handed over to it, waiting
    /// for the socket. Ready when writing has ended for good. Registers the task's waker
    /// with the queue, which also wakes it when the connection starts closing or its close
    /// frame has been written by someone else.
    pub(crate) fn poll_write_handed_over(&self, cx: &mut Context<'_>) -> Poll<WriteEnd> {
        loop {
            if self.queue.poll_handed_over(cx).is_pending() {
                return Poll::Pending;
            }
            match self.poll_write_queue(cx) {
                Poll::Ready(Some(end)) => return Poll::Ready(end),
                // All written and the queue idle again: wait for the next hand-over.
                Poll::Ready(None) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_write_queue(&self, cx: &mut Context<'_>) -> Poll<Option<WriteEnd>> {
        let mut written = Written::default();
        let polled = match lock_handover(&self.write_side).as_mut() {
            Some(side) => side.poll_write_queue(&self.queue, cx, &mut written),
            None => Poll::Ready(Some(WriteEnd::Failed)),
        };
        self.record_written(written);
        polled
    }

    /// Counts what a write put on the wire (once per write, not per message: the counters
    /// are shared), and starts the close timeout once our close frame is out.
    fn record_written(&self, written: Written) {
        if written.messages > 0 {
            self.metrics()
                .sent(self.id, written.messages, written.bytes);
        }
        if let Some(frame) = written.close {
            self.record_close(frame);
        }
        if written.final_frame {
            self.close_written.store(true, Ordering::Release);
            // The connection's task may be waiting only for this (the peer has closed).
            self.queue.wake_owner();
        }
    }
}

/// An unmasked control frame with `payload` (at most 125 bytes).
/// A whole text frame of `text`, header and payload in one buffer.
#[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
pub(crate) fn text_frame(text: &str) -> Bytes {
    let frame = Frame::new(opcode::TEXT, Bytes::copy_from_slice(text.as_bytes()));
    let mut bytes = Vec::with_capacity(frame.len());
    bytes.extend_from_slice(frame.header());
    bytes.extend_from_slice(frame.payload());
    bytes.into()
}

fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.push(0x80 | opcode);
    frame.push(payload.len() as u8);
    frame.extend_from_slice(payload);
    frame.into()
}

/// A model check of the queue hand-over (run with `RUSTFLAGS="--cfg wsh_loom" cargo test
/// --release --lib loom`): producers on two threads queue a frame each, flushing what they
/// find idle without waiting; the socket takes one frame at a time; the connection's task
/// finishes what was handed over to it. In every interleaving loom can find, every frame
/// reaches the peer: a lost wake-up would leave a thread parked with frames unwritten,
/// which loom reports as a deadlock.
#[cfg(all(test, wsh_loom))]
mod loom_tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use loom::sync::{Arc, Mutex, Notify};
    use tokio::io::AsyncWrite;

    use super::Core;
    use crate::engine::shared::Shared;
    use crate::engine::writer::{WriteIo, WriteSide};
    use crate::protocol::frame::Frame;

    /// A socket whose send buffer holds `capacity` bytes until the peer reads them.
    struct Pipe {
        buffered: usize,
        capacity: usize,
        delivered: usize,
        writer: Option<Waker>,
        /// Woken once everything has been delivered.
        owner: Option<Waker>,
    }

    /// The pipe, and the signal that bytes arrived in it for the peer.
    struct Socket(Arc<Mutex<Pipe>>, Arc<Notify>);

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut pipe = self.0.lock().unwrap();
            let room = pipe.capacity - pipe.buffered;
            if room == 0 {
                pipe.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = room.min(buf.len());
            pipe.buffered += n;
            self.1.notify();
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn loom_every_queued_frame_is_written_whoever_flushes() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let frame_len = 3; // a text frame of one byte
            let expected = 2 * frame_len;
            let pipe = Arc::new(Mutex::new(Pipe {
                buffered: 0,
                capacity: frame_len,
                delivered: 0,
                writer: None,
                owner: None,
            }));
            let arrived = Arc::new(Notify::new());
            let core = Arc::new(Core::new(&Shared::for_tests()));
            let socket = Socket(pipe.clone(), arrived.clone());
            core.attach(WriteSide::new(WriteIo::boxed(socket), 1024));

            let producers: Vec<_> = (0..2)
                .map(|_| {
                    let core = core.clone();
                    loom::thread::spawn(move || {
                        let frame = Frame::new(0x1, bytes::Bytes::from_static(b"a"));
                        let pushed = core.send_frame(frame).expect("queued");
                        core.after_push(pushed);
                    })
                })
                .collect();
            // The peer reads whatever arrives, waking a writer that waits for room; it
            // blocks (never spins) until something does.
            let peer = {
                let pipe = pipe.clone();
                loom::thread::spawn(move || loop {
                    let mut p = pipe.lock().unwrap();
                    if p.buffered > 0 {
                        p.delivered += p.buffered;
                        p.buffered = 0;
                        if let Some(writer) = p.writer.take() {
                            writer.wake();
                        }
                    }
                    if p.delivered == expected {
                        if let Some(owner) = p.owner.take() {
                            owner.wake();
                        }
                        return;
                    }
                    drop(p);
                    arrived.wait();
                })
            };
            // The connection's own task.
            loom::future::block_on(std::future::poll_fn(|cx| {
                let _ = core.poll_write_handed_over(cx);
                let mut p = pipe.lock().unwrap();
                if p.delivered == expected {
                    return Poll::Ready(());
                }
                p.owner = Some(cx.waker().clone());
                Poll::Pending
            }));
            for producer in producers {
                producer.join().unwrap();
            }
            peer.join().unwrap();
        });
    }
}

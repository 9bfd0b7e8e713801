//! The per-connection outbound queue: many producers (`send`, `broadcast`, the protocol's own
//! replies), one writer at a time.
//!
//! A mutex-guarded `Vec` rather than a channel, for three reasons:
//! - an idle connection's queue owns no heap memory (a channel preallocates a block of slots);
//! - the writer takes everything queued in one swap, so a burst costs one lock, not one per
//!   message;
//! - the queue also records who is responsible for writing (see [`Pushed`]), which lets a
//!   broadcast hand whole batches of connections to a few flush tasks instead of waking one
//!   task per connection.
//!
//! Every idle connection holds one, so it keeps only what each needs: its bounds are the
//! server's ([`Bounds`], given on each push), and what a protocol above asks of some
//! connections (counting pushes, keeping what was sent for a resume) is boxed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::engine::batch_pool::{self, Spares, Stock};
use crate::engine::kept::{Kept, Successor};
use crate::engine::memory;
use crate::engine::settings::Settings;
use crate::engine::sync::{lock_handover as lock, HandoverMutex as Mutex};
use crate::protocol::close::CloseFrame;
use crate::protocol::frame::Frame;

/// One item of a connection's queue.
pub(crate) enum Outbound {
    /// A text or binary message.
    Data(Frame),
    /// A control frame of ours other than those below (a ping).
    Raw(Bytes),
    /// Our answer to a ping; only the latest unsent one is kept.
    Pong(Bytes),
    /// Our answer to the peer's close frame; nothing is written after it.
    Reply(Bytes),
    /// Our close frame, and its encoding; nothing is written after it. Boxed: it is rare,
    /// and every queue slot is as large as the largest variant.
    Close(Box<(CloseFrame, Frame)>),
}

impl Outbound {
    /// Length on the wire.
    pub(crate) fn len(&self) -> usize {
        match self {
            Outbound::Data(frame) => frame.len(),
            Outbound::Close(close) => close.1.len(),
            Outbound::Raw(bytes) | Outbound::Pong(bytes) | Outbound::Reply(bytes) => bytes.len(),
        }
    }

    /// Its bytes on the wire, in two parts (header and payload; a control frame is one
    /// part and an empty one).
    pub(crate) fn parts(&self) -> [&[u8]; 2] {
        match self {
            Outbound::Data(frame) => [frame.header(), frame.payload()],
            Outbound::Close(close) => [close.1.header(), close.1.payload()],
            Outbound::Raw(bytes) | Outbound::Pong(bytes) | Outbound::Reply(bytes) => [bytes, &[]],
        }
    }
}

/// Why an item was not queued.
#[derive(Debug)]
pub(crate) enum Rejected {
    /// The queue holds its bound of messages or bytes.
    Full {
        /// Messages queued.
        messages: usize,
        /// Their payload bytes.
        bytes: usize,
    },
    /// The connection is closed or closing; nothing more will be written.
    Stopped,
}

/// What the producer must do after queueing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The queue was idle: the producer must arrange a flush.
    MustFlush,
    /// A flush is already arranged and will write this too.
    Queued,
}

/// How much a queue may hold: the server's setting, given on every push rather than kept by
/// every queue. Counts are `u32` (a queue is bounded far below four billion messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) max_messages: u32,
    /// At most 4 GiB (larger bounds count as that).
    pub(crate) max_bytes: u32,
}

impl Bounds {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Bounds {
            max_messages: u32::try_from(max_messages).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
        }
    }

    /// The server's bounds.
    pub(crate) fn of(settings: &Settings) -> Self {
        Bounds::new(
            settings.outbound_queue_capacity,
            settings.outbound_queue_bytes,
        )
    }

    pub(crate) fn max_messages(self) -> usize {
        self.max_messages as usize
    }

    pub(crate) fn max_bytes(self) -> usize {
        self.max_bytes as usize
    }
}

/// One connection's queue: a lock and what it guards.
pub(crate) struct OutboundQueue {
    state: Mutex<State>,
}

/// What the queue holds, and who writes it.
struct State {
    items: Vec<Outbound>,
    /// The connection's task, waiting for a hand-over.
    owner: Option<Waker>,
    /// Payload bytes of the queued messages (only data frames count against the bounds).
    bytes: usize,
    /// Queued messages.
    messages: u32,
    /// Where the unsent pong is in `items`, so that a newer one replaces it; `NO_PONG` if
    /// none is.
    pong_at: u32,
    /// A close frame (ours or the answer to the peer's) is queued; later ones are ignored.
    close_queued: bool,
    /// Someone will write what is queued: set by the producer that finds the queue idle,
    /// cleared by the writer that finds it empty.
    scheduled: bool,
    /// A non-blocking flush met a full socket: the connection's own task takes over.
    handed_over: bool,
    /// Our close frame was taken, or the connection ended: accept nothing more.
    stopped: bool,
    /// What a protocol above asked of this queue, if anything; boxed, as most connections
    /// are asked nothing.
    extras: Option<Box<Extras>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            items: Vec::new(),
            owner: None,
            bytes: 0,
            messages: 0,
            pong_at: NO_PONG,
            close_queued: false,
            scheduled: false,
            handed_over: false,
            stopped: false,
            extras: None,
        }
    }
}

/// `State::pong_at` when no pong is queued.
const NO_PONG: u32 = u32::MAX;

/// What a protocol above (SignalR) asks of a connection's queue.
#[derive(Default)]
struct Extras {
    /// Data messages queued since [`count_pushes`](OutboundQueue::count_pushes), wrapping:
    /// how the protocol tells a connection it has not written to lately (SignalR's pings).
    pushed: u32,
    /// What a resumable connection keeps until its peer acknowledges it (see
    /// [`keep`](OutboundQueue::keep)).
    kept: Option<Kept>,
}

impl State {
    /// What a resumable connection keeps, if it does.
    fn kept(&mut self) -> Option<&mut Kept> {
        self.extras.as_deref_mut()?.kept.as_mut()
    }

    /// What a protocol above asked of this queue, made now if nothing was.
    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// One more data message queued (or kept), for whoever counts.
    fn count_push(&mut self) {
        if let Some(extras) = self.extras.as_deref_mut() {
            extras.pushed = extras.pushed.wrapping_add(1);
        }
    }
}

/// Above this, a drained buffer gives its memory back, so a burst does not pin memory on an
/// idle connection.
pub(crate) const KEEP_CAPACITY: usize = batch_pool::CAPACITY;

impl OutboundQueue {
    pub(crate) fn new() -> Self {
        OutboundQueue {
            state: Mutex::new(State::default()),
        }
    }

    /// Queues a message behind everything already queued. Refused once a close frame is
    /// queued: nothing behind it would ever be written, so a send that races a close either
    /// goes out before the close frame or fails.
    ///
    /// On a resumable connection the message is kept too; once its socket is gone it is
    /// only kept, and once another connection has taken over it goes there.
    pub(crate) fn push_data(&self, frame: Frame, bounds: Bounds) -> Result<Pushed, Rejected> {
        let mut state = lock(&self.state);
        if let Some(kept) = state.kept() {
            if let Some(successor) = kept.successor.clone() {
                drop(state);
                successor.forward(frame);
                return Ok(Pushed::Queued);
            }
            if kept.parked {
                kept.keep(&frame);
                state.count_push();
                return Ok(Pushed::Queued);
            }
        }
        if state.stopped || state.close_queued {
            return Err(Rejected::Stopped);
        }
        let len = frame.payload().len();
        let over_bytes = state.messages > 0 && state.bytes + len > bounds.max_bytes();
        if state.messages >= bounds.max_messages || over_bytes {
            return Err(Rejected::Full {
                messages: state.messages as usize,
                bytes: state.bytes,
            });
        }
        state.messages += 1;
        state.bytes += len;
        state.count_push();
        if let Some(kept) = state.kept() {
            kept.keep(&frame);
        }
        if state.items.capacity() == 0 {
            state.items = spare_buffer();
        }
        state.items.push(Outbound::Data(frame));
        Ok(schedule(&mut state))
    }

    /// From now on, counts the data messages queued ([`pushed`](Self::pushed)).
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn count_pushes(&self) {
        lock(&self.state).extras();
    }

    /// From now on, keeps the data messages queued (numbered from 1) until
    /// [`ack`](Self::ack)ed, at most `max_messages` and `max_bytes`: past them nothing is
    /// kept and the connection cannot be resumed.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn keep(&self, max_messages: usize, max_bytes: usize) {
        lock(&self.state).extras().kept = Some(Kept::new(1, max_messages, max_bytes));
    }

    /// Lets go of the kept messages up to number `through`.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn ack(&self, through: u64) {
        if let Some(kept) = lock(&self.state).kept() {
            kept.ack(through);
        }
    }

    /// Whether the messages kept are whole: false once they overflowed, or if none are.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn resumable(&self) -> bool {
        lock(&self.state)
            .kept()
            .is_some_and(|kept| !kept.overflowed && kept.successor.is_none())
    }

    /// The socket is going: data messages are kept only, until a successor takes over.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn park(&self) {
        if let Some(kept) = lock(&self.state).kept() {
            kept.parked = true;
        }
    }

    /// Keeps nothing any more (the connection will not be resumed).
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn forget_kept(&self) {
        let kept = lock(&self.state)
            .extras
            .as_deref_mut()
            .and_then(|extras| extras.kept.take());
        drop(kept);
    }

    /// Hands this connection's messages on to `successor`: under this queue's lock, `resume`
    /// gets the number of the oldest kept message and the kept frames (to queue to the
    /// successor first), and from then on every message queued here goes to the
    /// successor, after them. Returns false, handing nothing on, if the messages kept are
    /// not whole (they overflowed, or were handed on already) or `resume` refused.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn hand_on(
        &self,
        successor: std::sync::Arc<dyn Successor>,
        resume: impl FnOnce(Kept, VecDeque<Frame>) -> bool,
    ) -> bool {
        let mut state = lock(&self.state);
        let Some(kept) = state.kept() else {
            return false;
        };
        if kept.overflowed || kept.successor.is_some() {
            return false;
        }
        let (first, frames) = kept.take();
        let next = kept.successor_of(first, &frames);
        if !resume(next, frames) {
            return false;
        }
        kept.successor = Some(successor);
        true
    }

    /// Starts a successor's queue: `first_item` (a frame of the protocol's, queued as is),
    /// then the predecessor's kept `frames`, before anything else, and keeps them as
    /// `kept` says. The replay counts against the kept bounds, not the queue's. Refused
    /// if anything was queued here already.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn resume(
        &self,
        first_item: Bytes,
        kept: Kept,
        frames: VecDeque<Frame>,
    ) -> Result<Pushed, Rejected> {
        let mut state = lock(&self.state);
        if state.stopped || state.close_queued || !state.items.is_empty() {
            return Err(Rejected::Stopped);
        }
        state.extras().kept = Some(kept);
        state.items.push(Outbound::Raw(first_item));
        state.items.extend(frames.into_iter().map(Outbound::Data));
        Ok(schedule(&mut state))
    }

    /// Queues a control frame of the protocol's own; never refused for space, but
    /// a pong replaces an unsent one (RFC 6455 allows answering only the latest ping), so a
    /// client that floods pings and never reads cannot grow the queue.
    pub(crate) fn push_protocol(&self, item: Outbound) -> Result<Pushed, Rejected> {
        let mut state = lock(&self.state);
        if state.stopped || state.close_queued {
            return Err(Rejected::Stopped);
        }
        match item {
            Outbound::Pong(_) => {
                let at = state.pong_at as usize;
                if let Some(slot) = state.items.get_mut(at) {
                    *slot = item;
                    return Ok(Pushed::Queued);
                }
                // Below the bound of messages plus a few control frames: fits.
                state.pong_at = state.items.len() as u32;
            }
            Outbound::Reply(_) => state.close_queued = true,
            _ => {}
        }
        state.items.push(item);
        Ok(schedule(&mut state))
    }

    /// Queues our close frame behind everything already queued; only the first one counts.
    /// With `drop_queued`, or if the queue is full, the peer is so far behind that the
    /// queued messages are dropped, so that the close frame goes out next: returns how many.
    pub(crate) fn push_close(
        &self,
        frame: CloseFrame,
        drop_queued: bool,
        bounds: Bounds,
    ) -> Result<(Pushed, usize), Rejected> {
        let mut state = lock(&self.state);
        if state.stopped || state.close_queued {
            return Err(Rejected::Stopped);
        }
        state.close_queued = true;
        let mut dropped = 0;
        if drop_queued || state.messages >= bounds.max_messages || state.bytes >= bounds.max_bytes()
        {
            dropped = state.messages as usize;
            state.items.clear();
            state.messages = 0;
            state.bytes = 0;
            // The pong, if any, went with them.
            state.pong_at = NO_PONG;
        }
        let wire = Frame::close(&frame);
        state.items.push(Outbound::Close(Box::new((frame, wire))));
        Ok((schedule(&mut state), dropped))
    }

    /// Moves everything queued into `into` (which must be empty), up to and including a
    /// close frame. Returns `false`, and marks the queue idle, if nothing was queued.
    pub(crate) fn take(&self, into: &mut Vec<Outbound>) -> bool {
        let mut state = lock(&self.state);
        if state.items.is_empty() {
            state.scheduled = false;
            state.handed_over = false;
            return false;
        }
        debug_assert!(
            into.is_empty(),
            "the writer takes only when it has written all"
        );
        // Swap buffers: the producers get the writer's empty one, keeping its capacity.
        if into.capacity() > KEEP_CAPACITY {
            memory::freed((into.capacity() - KEEP_CAPACITY) * std::mem::size_of::<Outbound>());
            into.shrink_to(KEEP_CAPACITY);
        }
        std::mem::swap(&mut state.items, into);
        state.messages = 0;
        state.bytes = 0;
        state.pong_at = NO_PONG;
        if state.close_queued {
            if let Some(close) = into
                .iter()
                .position(|item| matches!(item, Outbound::Close(..) | Outbound::Reply(_)))
            {
                into.truncate(close + 1);
                state.stopped = true;
            }
        }
        true
    }

    /// Wakes the connection's task, if it is waiting on [`poll_handed_over`](Self::poll_handed_over).
    pub(crate) fn wake_owner(&self) {
        let owner = lock(&self.state).owner.take();
        if let Some(owner) = owner {
            owner.wake();
        }
    }

    /// A non-blocking flush could not finish: wake the connection's task to finish it.
    pub(crate) fn hand_over(&self) {
        let mut state = lock(&self.state);
        state.handed_over = true;
        let owner = state.owner.take();
        drop(state);
        if let Some(owner) = owner {
            owner.wake();
        }
    }

    pub(crate) fn is_handed_over(&self) -> bool {
        lock(&self.state).handed_over
    }

    /// Resolves when a flush was handed over to the connection's task. Either way the
    /// task's waker is kept, for [`wake_owner`](Self::wake_owner).
    pub(crate) fn poll_handed_over(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.state);
        if !state
            .owner
            .as_ref()
            .is_some_and(|owner| owner.will_wake(cx.waker()))
        {
            state.owner = Some(cx.waker().clone());
        }
        if state.handed_over {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The connection has ended: drop what is queued and refuse anything new.
    pub(crate) fn stop(&self) {
        let mut state = lock(&self.state);
        state.stopped = true;
        if let Some(kept) = state.kept() {
            // A resumable connection's messages are kept on (they are in `kept` already).
            kept.parked = true;
        }
        state.messages = 0;
        state.bytes = 0;
        state.pong_at = NO_PONG;
        state.owner = None;
        let items = std::mem::take(&mut state.items);
        drop(state);
        // Payloads are dropped outside the lock.
        drop(items);
    }

    /// How many data messages were queued since [`count_pushes`](Self::count_pushes),
    /// wrapping at 2^32 (0 if they are not counted).
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn pushed(&self) -> u32 {
        lock(&self.state)
            .extras
            .as_ref()
            .map_or(0, |extras| extras.pushed)
    }

    /// Messages queued and their payload bytes.
    pub(crate) fn queued(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.messages as usize, state.bytes)
    }

    /// Number of queued items, for tests that inspect the queue without a writer.
    #[cfg(test)]
    pub(crate) fn depth(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// Takes the oldest queued item, for tests that inspect the queue without a writer.
    #[cfg(test)]
    pub(crate) fn try_take(&self) -> Option<Outbound> {
        let mut state = lock(&self.state);
        if state.items.is_empty() {
            return None;
        }
        let item = state.items.remove(0);
        state.pong_at = NO_PONG;
        if let Outbound::Data(frame) = &item {
            state.messages -= 1;
            state.bytes -= frame.payload().len();
        }
        Some(item)
    }
}

/// A queue and its bounds, for the engine's tests.
#[cfg(test)]
pub(crate) struct Bounded(OutboundQueue, Bounds);

#[cfg(test)]
impl Bounded {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Bounded(OutboundQueue::new(), Bounds::new(max_messages, max_bytes))
    }

    pub(crate) fn push_data(&self, frame: Frame) -> Result<Pushed, Rejected> {
        self.0.push_data(frame, self.1)
    }

    pub(crate) fn push_close(
        &self,
        frame: CloseFrame,
        drop_queued: bool,
    ) -> Result<(Pushed, usize), Rejected> {
        self.0.push_close(frame, drop_queued, self.1)
    }
}

#[cfg(test)]
impl std::ops::Deref for Bounded {
    type Target = OutboundQueue;

    fn deref(&self) -> &OutboundQueue {
        &self.0
    }
}

/// The queues' spare buffers (see `batch_pool.rs`).
static STOCK: Stock<Outbound> = Stock::new(Vec::new());

thread_local! {
    static SPARES: RefCell<Spares<Outbound>> = const { RefCell::new(Spares::new()) };
}

/// An empty buffer for a queue, from the spares.
fn spare_buffer() -> Vec<Outbound> {
    batch_pool::take(&SPARES, &STOCK)
}

/// Gives a drained queue buffer back to the spares; returns whether it was freed instead.
pub(crate) fn give_back(buffer: Vec<Outbound>) -> bool {
    batch_pool::give(&SPARES, &STOCK, buffer)
}

fn schedule(state: &mut State) -> Pushed {
    if state.scheduled {
        Pushed::Queued
    } else {
        state.scheduled = true;
        Pushed::MustFlush
    }
}

#[cfg(test)]
mod tests {
    use super::{Bounded as Queue, Outbound, Pushed, Rejected, KEEP_CAPACITY};
    use crate::protocol::close::{CloseCode, CloseFrame};
    use crate::protocol::frame::Frame;
    use bytes::Bytes;

    fn text(payload: &'static str) -> Frame {
        Frame::new(0x1, Bytes::from_static(payload.as_bytes()))
    }

    fn close() -> CloseFrame {
        CloseFrame {
            code: CloseCode::NORMAL,
            reason: "bye".to_owned(),
        }
    }

    fn wire(items: &[super::Outbound]) -> Vec<u8> {
        items
            .iter()
            .flat_map(|item| item.parts().concat())
            .collect()
    }

    #[test]
    fn only_the_first_producer_of_a_batch_must_flush_and_the_bound_holds() {
        let queue = Queue::new(2, usize::MAX);
        assert_eq!(queue.push_data(text("a")).ok(), Some(Pushed::MustFlush));
        assert_eq!(queue.push_data(text("b")).ok(), Some(Pushed::Queued));
        assert!(matches!(
            queue.push_data(text("c")),
            Err(Rejected::Full {
                messages: 2,
                bytes: 2
            })
        ));
        // Protocol replies are never refused for space.
        assert_eq!(
            queue
                .push_protocol(Outbound::Pong(Bytes::from_static(b"\x8a\x00")))
                .ok(),
            Some(Pushed::Queued)
        );
        let mut batch = Vec::new();
        assert!(queue.take(&mut batch));
        assert_eq!(wire(&batch), b"\x81\x01a\x81\x01b\x8a\x00");
        batch.clear();
        assert!(!queue.take(&mut batch), "empty: the queue goes idle");
        assert_eq!(queue.push_data(text("d")).ok(), Some(Pushed::MustFlush));
    }

    #[test]
    fn a_full_queues_close_has_its_flush_arranged_already() {
        // The slow-consumer close relies on this: it runs under a broadcast's shard lock,
        // where nothing may be written.
        for max_bytes in [usize::MAX, 2] {
            let queue = Queue::new(2, max_bytes);
            assert_eq!(queue.push_data(text("a")).ok(), Some(Pushed::MustFlush));
            let _ = queue.push_data(text("b"));
            assert!(matches!(
                queue.push_data(text("c")),
                Err(Rejected::Full { .. })
            ));
            let close = CloseFrame {
                code: CloseCode::POLICY_VIOLATION,
                reason: String::new(),
            };
            assert!(matches!(
                queue.push_close(close, true),
                Ok((Pushed::Queued, dropped)) if dropped >= 1
            ));
        }
    }

    #[test]
    fn the_byte_bound_holds_but_a_big_message_still_fits_an_empty_queue() {
        let queue = Queue::new(100, 4);
        assert!(
            queue.push_data(text("hello")).is_ok(),
            "alone, it may exceed the bound"
        );
        assert!(matches!(
            queue.push_data(text("a")),
            Err(Rejected::Full {
                messages: 1,
                bytes: 5
            })
        ));
        assert!(queue.take(&mut Vec::new()));
        assert!(queue.push_data(text("abc")).is_ok());
        assert!(queue.push_data(text("d")).is_ok());
        assert!(queue.push_data(text("e")).is_err());
    }

    #[test]
    fn a_ping_flood_keeps_one_pong_and_the_answer_to_a_close_is_last() {
        let queue = Queue::new(10, usize::MAX);
        for i in 0..=255u8 {
            let pong = Bytes::from(vec![0x8a, 1, i]);
            assert!(queue.push_protocol(Outbound::Pong(pong)).is_ok());
        }
        assert_eq!(queue.depth(), 1, "only the latest pong waits");
        let reply = Bytes::from_static(b"\x88\x02\x03\xe8");
        assert!(queue.push_protocol(Outbound::Reply(reply)).is_ok());
        assert!(
            matches!(queue.push_data(text("late")), Err(Rejected::Stopped)),
            "refused: behind the close frame it would never be written"
        );
        assert!(
            queue.push_close(close(), false).is_err(),
            "one close frame only"
        );
        let mut batch = Vec::new();
        assert!(queue.take(&mut batch));
        assert_eq!(wire(&batch), b"\x8a\x01\xff\x88\x02\x03\xe8");
        assert!(matches!(queue.push_data(text("x")), Err(Rejected::Stopped)));
    }

    #[test]
    fn only_one_close_frame_is_ever_queued() {
        let queue = Queue::new(10, usize::MAX);
        assert!(queue.push_close(close(), false).is_ok());
        assert!(queue.push_close(close(), true).is_err());
        let mut batch = Vec::new();
        assert!(queue.take(&mut batch));
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn close_waits_behind_messages_unless_the_queue_is_full() {
        let queue = Queue::new(2, usize::MAX);
        assert!(queue.push_data(text("a")).is_ok());
        assert!(queue.push_close(close(), false).is_ok());
        assert!(
            queue.push_data(text("b")).is_err(),
            "nothing is queued behind a close frame"
        );
        let mut batch = Vec::new();
        assert!(queue.take(&mut batch));
        assert_eq!(
            batch.len(),
            2,
            "the message, then the close frame; nothing after it"
        );
        assert!(matches!(queue.push_data(text("c")), Err(Rejected::Stopped)));

        let queue = Queue::new(1, usize::MAX);
        assert!(queue.push_data(text("a")).is_ok());
        assert!(queue.push_close(close(), false).is_ok());
        let mut batch = Vec::new();
        assert!(queue.take(&mut batch));
        assert_eq!(
            wire(&batch),
            b"\x88\x05\x03\xe8bye",
            "the close frame jumped ahead"
        );
    }

    #[test]
    fn a_message_pushed_after_the_close_frame_is_refused_not_silently_cut() {
        // A send that races a close: if it is queued at all, it must be written.
        let queue = Queue::new(10, usize::MAX);
        assert!(queue.push_data(text("before")).is_ok());
        assert!(queue.push_close(close(), false).is_ok());
        assert!(
            matches!(queue.push_data(text("after")), Err(Rejected::Stopped)),
            "accepted behind the close frame, where it would never be written"
        );
        let reply = Bytes::from_static(b"\x88\x02\x03\xe8");
        let queue = Queue::new(10, usize::MAX);
        assert!(queue.push_protocol(Outbound::Reply(reply)).is_ok());
        assert!(matches!(
            queue.push_data(text("after")),
            Err(Rejected::Stopped)
        ));
    }

    #[test]
    fn a_burst_does_not_pin_memory_and_a_stopped_queue_refuses() {
        let queue = Queue::new(10_000, usize::MAX);
        let mut batch = Vec::new();
        for round in 0..3 {
            let burst = if round == 0 { 5_000 } else { 1 };
            for _ in 0..burst {
                assert!(queue.push_data(text("x")).is_ok());
            }
            assert!(queue.take(&mut batch));
            batch.clear();
        }
        // The big buffer went back to the producers shrunk, and came back to us shrunk.
        assert!(batch.capacity() <= KEEP_CAPACITY.next_power_of_two());
        queue.stop();
        assert!(matches!(queue.push_data(text("w")), Err(Rejected::Stopped)));
        assert_eq!(queue.depth(), 0);
    }
}

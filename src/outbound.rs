//! The per-connection outbound queue: many producers (`send`, `broadcast`), one writer.
//!
//! A mutex-guarded `VecDeque` rather than a channel, for three reasons:
//! - an idle connection's queue owns no heap memory (a channel preallocates a block of slots);
//! - the writer takes everything queued in one swap, so a burst costs one lock, not one per
//!   message;
//! - the queue can count bytes as well as messages, and hold a close frame that jumps ahead.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use tokio_tungstenite::tungstenite;

use crate::close::CloseFrame;
use crate::connection::lock;

/// What the writer takes from a connection's queue.
pub(crate) enum Outbound {
    Message(tungstenite::Message),
    Close(CloseFrame),
}

/// Why an item was not queued.
#[derive(Debug)]
pub(crate) enum Rejected {
    /// The queue holds its bound of messages.
    Full,
    /// The writer has stopped; nothing will be written any more.
    Stopped,
}

/// What [`OutboundQueue::poll_take`] found.
pub(crate) enum Taken {
    /// Items were moved into the caller's buffer, oldest first.
    Items,
    /// A close frame that must be written before anything still queued.
    Urgent(CloseFrame),
}

pub(crate) struct OutboundQueue {
    state: Mutex<State>,
    max_messages: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    /// Payload bytes of the queued messages.
    bytes: usize,
    urgent: Option<CloseFrame>,
    /// The writer, parked until something is queued.
    waker: Option<Waker>,
    stopped: bool,
}

/// Above this, a drained buffer gives its memory back, so a burst does not pin memory on an
/// idle connection.
const KEEP_CAPACITY: usize = 64;

impl OutboundQueue {
    pub(crate) fn new(max_messages: usize) -> Self {
        OutboundQueue {
            state: Mutex::new(State::default()),
            max_messages,
        }
    }

    pub(crate) fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// Queues a message behind everything already queued.
    pub(crate) fn push(&self, message: tungstenite::Message) -> Result<(), Rejected> {
        let mut state = lock(&self.state);
        if state.stopped {
            return Err(Rejected::Stopped);
        }
        if state.items.len() >= self.max_messages {
            return Err(Rejected::Full);
        }
        state.bytes += message.len();
        state.items.push_back(Outbound::Message(message));
        wake(state);
        Ok(())
    }

    /// Queues a close frame behind everything already queued; if the queue is full it jumps
    /// ahead instead, since a peer that far behind would otherwise never see it.
    pub(crate) fn push_close(&self, frame: CloseFrame) {
        let mut state = lock(&self.state);
        if state.stopped {
            return;
        }
        if state.items.len() >= self.max_messages {
            state.urgent.get_or_insert(frame);
        } else {
            state.items.push_back(Outbound::Close(frame));
        }
        wake(state);
    }

    /// Moves everything queued into `into` (which must be empty), or parks the writer until
    /// something is queued.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Outbound>,
    ) -> Poll<Taken> {
        debug_assert!(into.is_empty());
        let mut state = lock(&self.state);
        if let Some(frame) = state.urgent.take() {
            return Poll::Ready(Taken::Urgent(frame));
        }
        if state.items.is_empty() {
            if !state
                .waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        // Swap buffers: the producers get the writer's empty one, keeping its capacity.
        if into.capacity() > KEEP_CAPACITY {
            into.shrink_to(KEEP_CAPACITY);
        }
        std::mem::swap(&mut state.items, into);
        state.bytes = 0;
        Poll::Ready(Taken::Items)
    }

    /// The writer has stopped: drop what is queued and refuse anything new.
    pub(crate) fn stop(&self) {
        let mut state = lock(&self.state);
        state.stopped = true;
        state.bytes = 0;
        state.urgent = None;
        state.waker = None;
        let items = std::mem::take(&mut state.items);
        drop(state);
        // Payloads are dropped outside the lock.
        drop(items);
    }

    /// Number of queued messages and their payload bytes.
    #[cfg(test)]
    pub(crate) fn depth(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.items.len(), state.bytes)
    }

    /// Takes the oldest queued item, for tests that inspect the queue without a writer.
    #[cfg(test)]
    pub(crate) fn try_take(&self) -> Option<Outbound> {
        let mut state = lock(&self.state);
        let item = state.items.pop_front()?;
        if let Outbound::Message(message) = &item {
            state.bytes -= message.len();
        }
        Some(item)
    }
}

/// Wakes the parked writer, after releasing the lock so it does not wake into a held lock.
fn wake(mut state: std::sync::MutexGuard<'_, State>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::{OutboundQueue, Rejected, Taken, KEEP_CAPACITY};
    use crate::close::{CloseCode, CloseFrame};
    use std::collections::VecDeque;
    use std::task::{Context, Poll, Waker};
    use tokio_tungstenite::tungstenite::Message;

    fn take(queue: &OutboundQueue, into: &mut VecDeque<super::Outbound>) -> Poll<Taken> {
        queue.poll_take(&mut Context::from_waker(Waker::noop()), into)
    }

    #[test]
    fn writer_takes_everything_at_once_and_the_bound_holds() {
        let queue = OutboundQueue::new(3);
        for text in ["a", "bb", "ccc"] {
            assert!(queue.push(Message::text(text)).is_ok());
        }
        assert!(matches!(
            queue.push(Message::text("d")),
            Err(Rejected::Full)
        ));
        assert_eq!(queue.depth(), (3, 6));
        let mut batch = VecDeque::new();
        assert!(matches!(
            take(&queue, &mut batch),
            Poll::Ready(Taken::Items)
        ));
        assert_eq!(batch.len(), 3);
        assert_eq!(queue.depth(), (0, 0));
        batch.clear();
        assert!(take(&queue, &mut batch).is_pending());
    }

    #[test]
    fn close_jumps_ahead_only_when_the_queue_is_full() {
        let frame = || CloseFrame {
            code: CloseCode::NORMAL,
            reason: String::new(),
        };
        let queue = OutboundQueue::new(2);
        assert!(queue.push(Message::text("a")).is_ok());
        queue.push_close(frame());
        let mut batch = VecDeque::new();
        assert!(matches!(
            take(&queue, &mut batch),
            Poll::Ready(Taken::Items)
        ));
        assert_eq!(batch.len(), 2, "the close frame waits behind the message");

        let queue = OutboundQueue::new(1);
        assert!(queue.push(Message::text("a")).is_ok());
        queue.push_close(frame());
        assert!(matches!(
            take(&queue, &mut VecDeque::new()),
            Poll::Ready(Taken::Urgent(_))
        ));
    }

    #[test]
    fn a_burst_does_not_pin_memory_and_a_stopped_queue_refuses() {
        let queue = OutboundQueue::new(10_000);
        let mut batch = VecDeque::new();
        for _ in 0..5_000 {
            assert!(queue.push(Message::text("x")).is_ok());
        }
        assert!(take(&queue, &mut batch).is_ready());
        batch.clear();
        // The next take hands the big buffer back to the producers shrunk.
        assert!(queue.push(Message::text("y")).is_ok());
        assert!(take(&queue, &mut batch).is_ready());
        batch.clear();
        assert!(queue.push(Message::text("z")).is_ok());
        assert!(take(&queue, &mut batch).is_ready());
        assert!(batch.capacity() <= KEEP_CAPACITY.next_power_of_two());
        queue.stop();
        assert!(matches!(
            queue.push(Message::text("w")),
            Err(Rejected::Stopped)
        ));
        assert_eq!(queue.depth(), (0, 0));
    }
}

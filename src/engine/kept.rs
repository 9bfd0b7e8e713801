//! What a resumable connection keeps of the data messages queued to it until its peer
//! acknowledges them, for a protocol that resumes on another socket (SignalR's stateful
//! reconnect): the frames themselves, shared with the queue and with every other member of
//! a broadcast (no copy), numbered from 1 in the order they were queued, bounded in
//! messages and bytes.
#![cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer

use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocol::frame::Frame;

/// Where the messages of a connection that another has taken over go: the successor's
/// queue (the connection layer implements it).
pub(crate) trait Successor: Send + Sync + 'static {
    /// Queues `frame` to the successor, flushing it if that falls to the caller.
    fn forward(&self, frame: Frame);
}

pub(crate) struct Kept {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// The number of `frames[0]` (the next message's when empty).
    first: u64,
    max_messages: usize,
    max_bytes: usize,
    /// More was queued than the bounds allow before the peer acknowledged it: nothing is
    /// kept any more, and the connection cannot be resumed.
    pub(crate) overflowed: bool,
    /// The socket is gone: messages are kept, not queued, until a successor takes over.
    pub(crate) parked: bool,
    /// Set once another connection took over: messages go there.
    pub(crate) successor: Option<Arc<dyn Successor>>,
}

impl Kept {
    pub(crate) fn new(first: u64, max_messages: usize, max_bytes: usize) -> Self {
        Kept {
            frames: VecDeque::new(),
            bytes: 0,
            first,
            max_messages,
            max_bytes,
            overflowed: false,
            parked: false,
            successor: None,
        }
    }

    /// The number of the oldest message kept (the next one's when none is).
    pub(crate) fn first(&self) -> u64 {
        self.first
    }

    /// Keeps a frame queued (or, parked, that would have been).
    pub(crate) fn keep(&mut self, frame: &Frame) {
        if self.overflowed {
            return;
        }
        let len = frame.payload().len();
        if self.frames.len() >= self.max_messages || self.bytes + len > self.max_bytes {
            self.overflowed = true;
            self.frames = VecDeque::new();
            self.bytes = 0;
            return;
        }
        self.bytes += len;
        self.frames.push_back(frame.clone());
    }

    /// The peer has every message up to number `through`: they are let go.
    pub(crate) fn ack(&mut self, through: u64) {
        while self.first <= through {
            let Some(frame) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= frame.payload().len();
            self.first += 1;
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            self.frames = VecDeque::new();
        }
    }

    /// The number of the oldest message kept (the next one's when none is), and the
    /// frames kept, oldest first: everything the peer has not acknowledged.
    pub(crate) fn take(&mut self) -> (u64, VecDeque<Frame>) {
        self.bytes = 0;
        (self.first, std::mem::take(&mut self.frames))
    }

    /// A log for the successor: `frames` numbered from `first`, the same bounds.
    pub(crate) fn successor_of(&self, first: u64, frames: &VecDeque<Frame>) -> Kept {
        Kept {
            frames: frames.clone(),
            bytes: frames.iter().map(|frame| frame.payload().len()).sum(),
            first,
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            overflowed: false,
            parked: false,
            successor: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Kept;
    use crate::protocol::frame::Frame;
    use bytes::Bytes;

    fn frame(text: &'static str) -> Frame {
        Frame::new(0x1, Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn acks_let_go_of_what_they_cover_and_the_bounds_hold() {
        let mut kept = Kept::new(1, 3, 100);
        for text in ["a", "b", "c"] {
            kept.keep(&frame(text));
        }
        kept.ack(2);
        assert_eq!(kept.len(), 1);
        kept.ack(1); // an older ack changes nothing
        assert_eq!(kept.len(), 1);
        let (first, frames) = kept.take();
        assert_eq!(first, 3);
        assert_eq!(&frames[0].payload()[..], b"c");

        let mut small = Kept::new(1, 2, 100);
        for text in ["a", "b", "c"] {
            small.keep(&frame(text));
        }
        assert!(small.overflowed);
        assert_eq!(small.len(), 0);
    }
}

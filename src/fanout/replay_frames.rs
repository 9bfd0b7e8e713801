//! The compressed frames of replayed messages, shared by the resumes of one history that
//! are under way at once: after a restart or a network blip, many clients resume the same
//! room from about the same position, and each replayed message is compressed once per
//! window size for all of them, as a broadcast is.
//!
//! The frames live only while a resume is under way (a [`Replaying`] guard is held), so a
//! room pays nothing for them between resumes, and they are bounded in count and bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::engine::core::Core;
use crate::engine::sync::lock;
use crate::fanout::history::Position;
use crate::protocol::frame::Frame;
use crate::protocol::message::Message;

/// At most this many frames are kept: a resume that falls further behind another one
/// compresses again rather than making every room with resumes hold more.
const FRAMES_MAX: usize = 1024;

/// And at most this many bytes of compressed payload.
const BYTES_MAX: usize = 1 << 20;

/// The frames kept for one history's resumes.
#[derive(Default)]
pub(crate) struct ReplayFrames {
    shared: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Resumes under way: the frames are dropped when the last one ends.
    resuming: usize,
    frames: HashMap<Key, Frame>,
    /// Oldest first, to drop from when over a bound.
    order: VecDeque<Key>,
    bytes: usize,
}

/// What makes one replayed frame: the message (by its position), the position it is
/// chained to, and how it is compressed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    position: Position,
    previous: Position,
    bits: u8,
    level: u32,
}

impl ReplayFrames {
    /// Marks a resume as under way until the guard is dropped.
    pub(crate) fn enter(&self) -> Replaying<'_> {
        lock(&self.shared).resuming += 1;
        Replaying { frames: self }
    }
}

/// A resume under way; gives it the frames of its replayed messages.
pub(crate) struct Replaying<'a> {
    frames: &'a ReplayFrames,
}

impl Replaying<'_> {
    /// The frame of `tagged` (the message at `position`, chained to `previous`) for the
    /// connection whose state is `core`: compressed as it agreed, by this resume or by
    /// another one under way.
    pub(crate) fn frame(
        &self,
        core: &Core,
        position: Position,
        previous: Position,
        tagged: Message,
    ) -> Frame {
        let Some((bits, level)) = core.deflate.for_len(tagged.len()) else {
            return Frame::from_message(tagged);
        };
        let key = Key {
            position,
            previous,
            bits,
            level,
        };
        // Compressed under the lock: a resume that needs the same frame waits for it
        // rather than compressing it too. Only resumes of this history take this lock.
        let mut shared = lock(&self.frames.shared);
        if let Some(frame) = shared.frames.get(&key) {
            return frame.clone();
        }
        let Some(frame) = Frame::deflated(&tagged, level, bits) else {
            return Frame::from_message(tagged);
        };
        core.metrics()
            .compressed(tagged.len(), frame.payload().len());
        shared.insert(key, frame.clone());
        frame
    }
}

impl Drop for Replaying<'_> {
    fn drop(&mut self) {
        let mut shared = lock(&self.frames.shared);
        shared.resuming -= 1;
        if shared.resuming == 0 {
            *shared = Shared::default();
        }
    }
}

impl Shared {
    fn insert(&mut self, key: Key, frame: Frame) {
        let len = frame.payload().len();
        if len > BYTES_MAX {
            return;
        }
        while self.order.len() >= FRAMES_MAX || self.bytes + len > BYTES_MAX {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(dropped) = self.frames.remove(&oldest) {
                self.bytes -= dropped.payload().len();
            }
        }
        self.bytes += len;
        self.order.push_back(key);
        self.frames.insert(key, frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(offset: u64) -> Key {
        Key {
            position: Position::new(1, offset),
            previous: Position::new(1, offset - 1),
            bits: 15,
            level: 1,
        }
    }

    fn frame(len: usize) -> Frame {
        Frame::from_message(Message::Binary(vec![0; len].into()))
    }

    #[test]
    fn bounded_in_count_and_in_bytes_oldest_dropped_first() {
        let mut shared = Shared::default();
        for offset in 1..=FRAMES_MAX as u64 + 10 {
            shared.insert(key(offset), frame(10));
        }
        assert_eq!(shared.frames.len(), FRAMES_MAX);
        assert!(!shared.frames.contains_key(&key(10)));
        assert!(shared.frames.contains_key(&key(11)));
        assert_eq!(shared.bytes, FRAMES_MAX * 10);

        let mut shared = Shared::default();
        shared.insert(key(1), frame(BYTES_MAX / 2));
        shared.insert(key(2), frame(BYTES_MAX / 2));
        shared.insert(key(3), frame(1));
        assert!(!shared.frames.contains_key(&key(1)), "over the byte bound");
        assert_eq!(shared.bytes, BYTES_MAX / 2 + 1);
        shared.insert(key(4), frame(BYTES_MAX + 1));
        assert!(!shared.frames.contains_key(&key(4)), "too big to keep");
    }

    #[test]
    fn the_frames_go_with_the_last_resume() {
        let frames = ReplayFrames::default();
        let first = frames.enter();
        let second = frames.enter();
        lock(&frames.shared).insert(key(1), frame(10));
        drop(first);
        assert_eq!(
            lock(&frames.shared).frames.len(),
            1,
            "one resume still under way"
        );
        drop(second);
        let shared = lock(&frames.shared);
        assert_eq!((shared.frames.len(), shared.bytes), (0, 0));
    }
}

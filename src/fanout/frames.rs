//! The frames of one broadcast, decided before any lock is taken: the plain frame, and the
//! message compressed (permessage-deflate) as the collection's members last needed it. A
//! large message is compressed while joins, leaves and other broadcasts go on; under the
//! collection's locks a broadcast only pushes frames.
//!
//! A member that needs another window size or level (one that joined since, or a client
//! that asked for a small window) gets its frame made under the shard's lock, once per
//! broadcast; the collection then remembers that need for the next broadcast
//! ([`Needs`]), so this happens once after a change of its members.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::core::{Core, Deflate};
use crate::protocol::frame::Frame;
use crate::protocol::message::Message;

/// Small payloads get one copy per shard. Every queued message holds a reference count on
/// its payload, and writers on different cores dropping one shared count make its cache
/// line bounce between cores: profiled, that was a tenth of the server's CPU time at 1,000
/// clients. A copy per shard costs a few small allocations per broadcast instead.
pub(crate) const COPY_PER_SHARD_MAX: usize = 4096;

/// What the members of a collection need compressed, untagged and tagged: one agreed
/// [`Deflate`] each, remembered across broadcasts in eight bytes of the collection (0:
/// nothing compressed).
#[derive(Default)]
pub(crate) struct CompressAs(AtomicU64);

impl CompressAs {
    /// A member with `deflate` joined (`tagged` or not): the next broadcast compresses for
    /// it before any lock, if the collection compressed for no such member yet.
    pub(crate) fn joined(&self, deflate: Deflate, tagged: bool) {
        if !deflate.compresses() {
            return;
        }
        let word = self.0.load(Ordering::Relaxed);
        if half(word, tagged) == 0 {
            let _ = self.0.compare_exchange(
                word,
                with_half(word, tagged, deflate.pack()),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// What the `tagged` (or untagged) members need.
    pub(crate) fn get(&self, tagged: bool) -> Deflate {
        Deflate::unpack(half(self.0.load(Ordering::Relaxed), tagged))
    }
}

fn half(word: u64, tagged: bool) -> u32 {
    if tagged {
        (word >> 32) as u32
    } else {
        word as u32
    }
}

fn with_half(word: u64, tagged: bool, value: u32) -> u64 {
    if tagged {
        (word & u64::from(u32::MAX)) | u64::from(value) << 32
    } else {
        (word & !u64::from(u32::MAX)) | u64::from(value)
    }
}

/// The frames of one message of a broadcast.
pub(crate) struct Frames {
    message: Message,
    plain: Frame,
    /// Compressed before any lock, for the members that need what the collection
    /// remembered; and whether the server's metrics counted it yet.
    ready: Option<(Deflate, Frame, bool)>,
    /// Compressed under a shard's lock, by window size, for members that needed another.
    late: [Option<Frame>; 16],
}

impl Frames {
    /// The frames of `message`, compressed before any lock as `deflate` says.
    pub(crate) fn new(message: Message, deflate: Deflate) -> Self {
        let ready = deflate
            .for_len(message.len())
            .and_then(|(bits, level)| Frame::deflated(&message, level, bits))
            .map(|frame| (deflate, frame, false));
        Frames {
            plain: Frame::from_message(message.clone()),
            message,
            ready,
            late: Default::default(),
        }
    }

    /// One shard's copies of the frames, made as its members need them.
    pub(crate) fn for_shard(&self) -> ShardFrames {
        ShardFrames {
            plain: copy(&self.plain),
            ready: None,
        }
    }

    /// The frame for the member whose state is `core`, from `shard`'s copies.
    pub(crate) fn frame(&mut self, shard: &mut ShardFrames, core: &Core) -> Frame {
        let Some((bits, level)) = core.deflate.for_len(self.message.len()) else {
            return shard.plain.clone();
        };
        if let Some((deflate, frame, counted)) = self.ready.as_mut() {
            if deflate.for_len(self.message.len()) == Some((bits, level)) {
                if !*counted {
                    // Counted by the first member's server, as a compression made under
                    // the lock would be.
                    core.metrics()
                        .compressed(self.message.len(), frame.payload().len());
                    *counted = true;
                }
                return shard.ready.get_or_insert_with(|| copy(frame)).clone();
            }
        }
        let Some(slot) = self.late.get_mut(usize::from(bits)) else {
            return shard.plain.clone();
        };
        let (message, plain) = (&self.message, &self.plain);
        slot.get_or_insert_with(|| match Frame::deflated(message, level, bits) {
            Some(frame) => {
                core.metrics()
                    .compressed(message.len(), frame.payload().len());
                frame
            }
            None => plain.clone(),
        })
        .clone()
    }
}

/// One shard's copies of a broadcast's frames (see [`COPY_PER_SHARD_MAX`]).
pub(crate) struct ShardFrames {
    plain: Frame,
    ready: Option<Frame>,
}

fn copy(frame: &Frame) -> Frame {
    if frame.payload().len() <= COPY_PER_SHARD_MAX {
        frame.fresh_copy()
    } else {
        frame.clone()
    }
}

/// What one broadcast's members turned out to need compressed, to remember for the next.
pub(crate) struct Needs {
    untagged: Need,
    tagged: Need,
}

#[derive(Default)]
struct Need {
    remembered: Deflate,
    /// Some member needs what was remembered.
    kept: bool,
    /// The first member that needs another compression.
    other: Option<Deflate>,
}

impl Needs {
    pub(crate) fn new(compress_as: &CompressAs) -> Self {
        let need = |tagged| Need {
            remembered: compress_as.get(tagged),
            ..Need::default()
        };
        Needs {
            untagged: need(false),
            tagged: need(true),
        }
    }

    /// Notes what the member whose state is `core` needs, `tagged` or not.
    pub(crate) fn note(&mut self, core: &Core, tagged: bool) {
        let deflate = core.deflate;
        if !deflate.compresses() {
            return;
        }
        let need = if tagged {
            &mut self.tagged
        } else {
            &mut self.untagged
        };
        if deflate == need.remembered {
            need.kept = true;
        } else if need.other.is_none() {
            need.other = Some(deflate);
        }
    }

    /// Remembers in `compress_as` what the members needed, if it changed: what nobody
    /// needs any more is no longer compressed before the lock.
    pub(crate) fn remember(self, compress_as: &CompressAs) {
        for (need, tagged) in [(self.untagged, false), (self.tagged, true)] {
            if need.kept {
                continue;
            }
            let value = need.other.map_or(0, Deflate::pack);
            if value != need.remembered.pack() {
                // Not a compare-and-swap: a join meanwhile is noted by the next broadcast.
                let word = compress_as.0.load(Ordering::Relaxed);
                compress_as
                    .0
                    .store(with_half(word, tagged, value), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_and_tagged_needs_are_remembered_apart() {
        let word = with_half(with_half(0, false, 7), true, 9);
        assert_eq!((half(word, false), half(word, true)), (7, 9));
        assert_eq!(half(with_half(word, false, 0), true), 9);
        assert_eq!(half(with_half(word, true, 0), false), 7);
    }
}

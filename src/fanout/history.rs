//! History: a collection (or a room) remembers its last broadcasts, each with its position,
//! so that a client that lost its connection can resume where it was: it gets exactly what
//! it missed, then the live messages.
//!
//! A position is an epoch and an offset. Offsets grow with each broadcast; the epoch names
//! the history they belong to (a collection's, chosen at random when it is made, or the
//! backplane's, for a room shared by many processes), so that a position from a history
//! that is gone (a restarted process, a Redis that lost its data) is never taken for one
//! of the current history.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::message::Message;

/// Where a broadcast stands in its collection's (or room's) history: its epoch and its
/// offset. Positions of one epoch are ordered by offset; offsets need not be contiguous
/// (a room on a shared backplane topic skips the offsets of the other rooms).
///
/// Its text form, for a client to keep and send back, is `EPOCH.OFFSET` in hexadecimal
/// and decimal:
///
/// ```
/// use websocket_handler::Position;
///
/// let position: Position = "1f3a.42".parse().unwrap();
/// assert_eq!(position.offset(), 42);
/// assert_eq!(position.to_string(), "1f3a.42");
/// assert!("42".parse::<Position>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    epoch: u64,
    offset: u64,
}

impl Position {
    pub(crate) fn new(epoch: u64, offset: u64) -> Self {
        Position { epoch, offset }
    }

    /// The history this position belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Its place in that history.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{}", self.epoch, self.offset)
    }
}

/// Why a text is not a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a position (EPOCH.OFFSET)")]
pub struct PositionError(String);

impl FromStr for Position {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || PositionError(text.chars().take(64).collect());
        let (epoch, offset) = text.split_once('.').ok_or_else(invalid)?;
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| invalid())?;
        let offset = offset.parse().map_err(|_| invalid())?;
        Ok(Position { epoch, offset })
    }
}

/// How much history a collection (or each room) keeps: the last broadcasts, bounded by
/// count, by bytes and by age, whichever is reached first. With a tag function, the clients
/// that ask for it ([`WebSocketCollection::add_tagged`](crate::WebSocketCollection::add_tagged),
/// [`resume`](crate::WebSocketCollection::resume)) get every message with its position.
///
/// ```
/// use std::time::Duration;
/// use websocket_handler::{History, Message, WebSocketCollection};
///
/// let room = WebSocketCollection::new().with_history(
///     History::new()
///         .max_messages(500)
///         .max_age(Duration::from_secs(600))
///         // What tagged clients receive: here `POSITION PREVIOUS text`.
///         .tag(|tag, message| {
///             let previous = tag.previous.map(|p| p.to_string()).unwrap_or_default();
///             Message::from(format!("{} {previous} {}", tag.position, message.as_text().unwrap_or("")))
///         }),
/// );
/// room.broadcast("hello");
/// assert_eq!(room.last_position().map(|p| p.offset()), Some(1));
/// ```
#[derive(Clone)]
pub struct History {
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_age: Option<Duration>,
    pub(crate) tag: TagFn,
}

/// What a tagged client receives for a message: see [`History::tag`].
pub type TagFn = fn(&Tag, &Message) -> Message;

/// The position of a message, and of the one before it in the same collection or room, for
/// a tag function: with both, a client can tell a gap (its last position is not
/// `previous`) from the offsets other rooms took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tag {
    /// This message's position.
    pub position: Position,
    /// The position of the message before it here, if there was one in this epoch.
    pub previous: Option<Position>,
}

impl Tag {
    pub(crate) fn new(position: Position, previous: Option<Position>) -> Self {
        Tag { position, previous }
    }
}

impl Default for History {
    fn default() -> Self {
        History {
            max_messages: 1000,
            max_bytes: 1 << 20,
            max_age: None,
            tag: default_tag,
        }
    }
}

/// The default tag: `POSITION PREVIOUS ` before a text message (`-` for no previous), and
/// binary messages as they are.
fn default_tag(tag: &Tag, message: &Message) -> Message {
    match message {
        Message::Text(text) => {
            let previous = tag
                .previous
                .map_or_else(|| "-".to_owned(), |p| p.to_string());
            Message::from(format!("{} {previous} {text}", tag.position))
        }
        Message::Binary(_) => message.clone(),
    }
}

impl History {
    /// 1,000 messages, 1 MiB, no age limit, and the default tag (`POSITION PREVIOUS text`).
    /// Without a `History`, a collection keeps none: history costs the memory of what it
    /// keeps, and only applications that resume need it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep at most this many messages (at least 1).
    pub fn max_messages(mut self, messages: usize) -> Self {
        self.max_messages = messages.max(1);
        self
    }

    /// Keep at most this many payload bytes (the newest message is always kept).
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Keep messages at most this long.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// What a tagged client receives for each message instead of the message itself.
    pub fn tag(mut self, tag: TagFn) -> Self {
        self.tag = tag;
        self
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("max_messages", &self.max_messages)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// Why a resume could not give a client everything it missed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The position is older than the oldest message still kept: some of what the client
    /// missed is gone. It is added anyway, from the live messages on.
    #[error("position {asked} is older than the history, which begins after {oldest:?}")]
    TooOld {
        /// The position asked for.
        asked: Position,
        /// The oldest position kept, if any.
        oldest: Option<Position>,
    },
    /// The position is of another history (another epoch: a restarted process, a backplane
    /// that lost its data, or a position that was never given out). It is added anyway,
    /// from the live messages on.
    #[error("position {asked} is of another history (epoch now {current:x})")]
    OtherEpoch {
        /// The position asked for.
        asked: Position,
        /// The current epoch.
        current: u64,
    },
    /// The collection keeps no history (see [`History`]).
    #[error("this collection keeps no history")]
    NoHistory,
    /// The connection has closed.
    #[error("the connection has closed")]
    Closed,
}

/// What a successful resume did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resumed {
    /// Messages the client missed, queued to it before the live ones.
    pub replayed: usize,
}

/// One remembered broadcast.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) position: Position,
    pub(crate) message: Message,
    at: Instant,
}

/// The remembered broadcasts of one collection, oldest first.
pub(crate) struct Ring {
    config: History,
    epoch: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The last position given out (kept when its entry is evicted).
    last: Option<Position>,
    /// The newest position evicted: a resume from before it has lost messages.
    evicted: Option<Position>,
}

impl Ring {
    /// A history of its own: a random epoch, offsets from 1.
    pub(crate) fn new(config: History) -> Self {
        Ring::with_epoch(config, random_epoch())
    }

    pub(crate) fn with_epoch(config: History, epoch: u64) -> Self {
        Ring {
            config,
            epoch,
            entries: VecDeque::new(),
            bytes: 0,
            last: None,
            evicted: None,
        }
    }

    pub(crate) fn last(&self) -> Option<Position> {
        self.last
    }

    /// Remembers `message` with the next offset of this history; returns its tag.
    pub(crate) fn append(&mut self, message: &Message) -> Tag {
        let offset = self.last.map_or(1, |last| last.offset + 1);
        self.append_at(Position::new(self.epoch, offset), message)
    }

    /// Remembers `message` at `position` (a backplane's): a new epoch starts the history
    /// over.
    pub(crate) fn append_at(&mut self, position: Position, message: &Message) -> Tag {
        if position.epoch != self.epoch {
            self.epoch = position.epoch;
            self.entries.clear();
            self.bytes = 0;
            self.last = None;
            self.evicted = None;
        }
        let previous = self.last;
        self.last = Some(position);
        self.bytes += message.len();
        self.entries.push_back(Entry {
            position,
            message: message.clone(),
            at: Instant::now(),
        });
        self.evict();
        Tag { position, previous }
    }

    fn evict(&mut self) {
        let now = Instant::now();
        while self.entries.len() > 1 {
            let Some(oldest) = self.entries.front() else {
                break;
            };
            let too_old = self
                .config
                .max_age
                .is_some_and(|age| now.saturating_duration_since(oldest.at) > age);
            let over =
                self.entries.len() > self.config.max_messages || self.bytes > self.config.max_bytes;
            if !(too_old || over) {
                break;
            }
            if let Some(gone) = self.entries.pop_front() {
                self.bytes -= gone.message.len();
                self.evicted = Some(gone.position);
            }
        }
    }

    /// The entries after `position`, oldest first, with the tag each had; or why not all
    /// the client missed is here.
    pub(crate) fn after(&mut self, position: Position) -> Result<Vec<(Tag, Message)>, ResumeError> {
        self.evict();
        if position.epoch != self.epoch
            || self.last.is_some_and(|last| position.offset > last.offset)
        {
            return Err(ResumeError::OtherEpoch {
                asked: position,
                current: self.epoch,
            });
        }
        if self
            .evicted
            .is_some_and(|evicted| position.offset < evicted.offset)
        {
            return Err(ResumeError::TooOld {
                asked: position,
                oldest: self.entries.front().map(|e| e.position),
            });
        }
        let mut previous = Some(position);
        let mut missed = Vec::new();
        for entry in self
            .entries
            .iter()
            .filter(|e| e.position.offset > position.offset)
        {
            missed.push((
                Tag {
                    position: entry.position,
                    previous,
                },
                entry.message.clone(),
            ));
            previous = Some(entry.position);
        }
        Ok(missed)
    }

    /// The tag function.
    pub(crate) fn tag(&self) -> TagFn {
        self.config.tag
    }
}

/// A random epoch: std's `RandomState` is seeded from the operating system once per thread
/// and changes with every call; mixed with the time.
fn random_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    // Never 0, so that a position of epoch 0 is always of another history.
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Message {
        Message::from(t.to_owned())
    }

    #[test]
    fn positions_order_the_history_and_resume_gives_what_was_missed() {
        let mut ring = Ring::with_epoch(History::new().max_messages(3), 7);
        let tags: Vec<Tag> = ["a", "b", "c", "d"]
            .iter()
            .map(|t| ring.append(&text(t)))
            .collect();
        assert_eq!(tags[0].position, Position::new(7, 1));
        assert_eq!(tags[0].previous, None);
        assert_eq!(tags[3].previous, Some(Position::new(7, 3)));
        // "a" fell out of the three kept.
        let missed = ring.after(Position::new(7, 2)).expect("within the history");
        let texts: Vec<_> = missed
            .iter()
            .map(|(_, m)| m.as_text().unwrap().to_owned())
            .collect();
        assert_eq!(texts, ["c", "d"]);
        assert_eq!(missed[0].0.previous, Some(Position::new(7, 2)));
        assert!(ring
            .after(Position::new(7, 4))
            .expect("up to date")
            .is_empty());
        assert!(matches!(
            ring.after(Position::new(7, 0)),
            Err(ResumeError::TooOld { .. })
        ));
        assert!(matches!(
            ring.after(Position::new(8, 2)),
            Err(ResumeError::OtherEpoch { .. })
        ));
        assert!(matches!(
            ring.after(Position::new(7, 9)),
            Err(ResumeError::OtherEpoch { .. })
        ));
    }

    #[test]
    fn the_history_is_bounded_in_bytes_and_by_age() {
        let mut ring = Ring::with_epoch(History::new().max_bytes(10), 1);
        for _ in 0..5 {
            ring.append(&text("abcd"));
        }
        assert_eq!(ring.entries.len(), 2, "8 bytes fit in 10, 12 do not");
        let mut ring = Ring::with_epoch(History::new().max_age(Duration::ZERO), 1);
        ring.append(&text("old"));
        ring.append(&text("new"));
        assert!(matches!(
            ring.after(Position::new(1, 0)),
            Err(ResumeError::TooOld { .. })
        ));
        assert_eq!(ring.entries.len(), 1, "the newest is always kept");
    }

    #[test]
    fn a_new_epoch_starts_the_history_over() {
        let mut ring = Ring::with_epoch(History::new(), 1);
        ring.append_at(Position::new(1, 10), &text("x"));
        let tag = ring.append_at(Position::new(2, 1), &text("y"));
        assert_eq!(tag.previous, None);
        assert!(matches!(
            ring.after(Position::new(1, 10)),
            Err(ResumeError::OtherEpoch { .. })
        ));
    }

    #[test]
    fn positions_read_back_their_text() {
        let position = Position::new(0xdead_beef, 12345);
        assert_eq!(position.to_string().parse::<Position>(), Ok(position));
        for bad in ["", ".", "x.1", "1.x", "1.-1", "1"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}

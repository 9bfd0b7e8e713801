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
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::id::ConnectionId;
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
    pub(crate) lost_notice: Option<LostNoticeFn>,
    /// Whether offsets follow one another (a collection's own topic), so that a skipped
    /// offset is a lost message; a room's skip the other rooms' offsets.
    pub(crate) contiguous: bool,
    /// The byte budget shared by the histories of one [`Rooms`](crate::Rooms).
    pub(crate) budget: Option<Arc<HistoryBudget>>,
}

/// What a tagged client receives for a message: see [`History::tag`].
pub(crate) type TagFn = Arc<dyn Fn(&Tag, &Message) -> Message + Send + Sync>;

/// What every member is sent when messages were lost: see [`History::lost_notice`].
pub(crate) type LostNoticeFn = Arc<dyn Fn(&Lost) -> Option<Message> + Send + Sync>;

/// Messages a collection (or room) with a history will never deliver: told to its members
/// by [`History::lost_notice`], before the first message after the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lost {
    /// The last position delivered before the loss.
    pub last: Position,
    /// The position of the message that follows the loss (delivered right after the
    /// notice).
    pub next: Position,
    /// What was lost.
    pub kind: LostKind,
}

/// What a [`Lost`] lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostKind {
    /// The history began again in a new epoch (an ordered backplane's store was reset or
    /// rewound): whatever the old one had after [`Lost::last`] is gone.
    HistoryReset,
    /// This many offsets were skipped in a collection's own topic (a room's positions skip
    /// other rooms' offsets, so rooms never report this).
    Skipped(u64),
}

/// The position of a message, and of the one before it in the same collection or room, for
/// a tag function: with both, a client can tell a gap (its last position is not
/// `previous`) from the offsets other rooms took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tag {
    /// This message's position.
    pub position: Position,
    /// The position of the message before it here, if there was one in this epoch and it
    /// is known (a process that joins a backplane's topic midway does not know what came
    /// before the first message it hears, until a resume tells it).
    pub previous: Option<Position>,
}

impl Default for History {
    fn default() -> Self {
        History {
            max_messages: 1000,
            max_bytes: 1 << 20,
            max_age: None,
            tag: Arc::new(default_tag),
            lost_notice: None,
            contiguous: true,
            budget: None,
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
    ///
    /// It runs while the message is delivered, possibly on a backplane's task: one that
    /// panics is caught and logged (`tracing::error!`), and its message goes untagged.
    ///
    /// A closure may capture what it needs (a room's name, a format chosen at start-up).
    pub fn tag(mut self, tag: impl Fn(&Tag, &Message) -> Message + Send + Sync + 'static) -> Self {
        self.tag = Arc::new(tag);
        self
    }

    /// What every member, tagged or not, is sent (as it is, untagged) when messages were
    /// lost: the history was reset in a new epoch by an ordered backplane, or offsets were
    /// skipped in a collection's own topic (see [`LostKind`]). The notice is queued right
    /// before the first message after the loss; `None` sends nothing.
    ///
    /// By default nothing is sent: a tagged client can see the loss in the positions (a
    /// new epoch, or a `previous` that is not its last), and a message the application
    /// never sent itself could confuse its clients.
    ///
    /// ```
    /// use websocket_handler::{History, LostKind, Message};
    ///
    /// let history = History::new().lost_notice(|lost| match lost.kind {
    ///     LostKind::HistoryReset => Some(Message::from("some messages were lost")),
    ///     _ => None,
    /// });
    /// # drop(history);
    /// ```
    pub fn lost_notice(
        mut self,
        notice: impl Fn(&Lost) -> Option<Message> + Send + Sync + 'static,
    ) -> Self {
        self.lost_notice = Some(Arc::new(notice));
        self
    }
}

/// `tag` applied to `message`; a tag function that panics (it is the user's, and runs on
/// a backplane's task too) is logged, and the message goes untagged.
pub(crate) fn tag_safely(tag: &TagFn, position: &Tag, message: &Message) -> Message {
    match std::panic::catch_unwind(AssertUnwindSafe(|| tag(position, message))) {
        Ok(tagged) => tagged,
        Err(_) => {
            tracing::error!(
                position = %position.position,
                "history: the tag function panicked; the message goes untagged"
            );
            message.clone()
        }
    }
}

/// The notice `notice` makes of `lost`, if any; one that panics is logged and sends nothing.
pub(crate) fn notice_safely(notice: &LostNoticeFn, lost: &Lost) -> Option<Message> {
    std::panic::catch_unwind(AssertUnwindSafe(|| notice(lost))).unwrap_or_else(|_| {
        tracing::error!("history: the lost-notice function panicked; no notice is sent");
        None
    })
}

/// The payload bytes kept by the histories of one [`Rooms`](crate::Rooms), against their
/// bound ([`Rooms::max_history_bytes`](crate::Rooms::max_history_bytes)).
#[derive(Debug)]
pub(crate) struct HistoryBudget {
    used: AtomicUsize,
    max: AtomicUsize,
}

impl HistoryBudget {
    pub(crate) fn new(max: usize) -> Self {
        HistoryBudget {
            used: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether the histories keep more than the bound.
    pub(crate) fn over(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.max.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("max_messages", &self.max_messages)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("contiguous", &self.contiguous)
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
    /// The history older than this process's is kept by the backplane, which cannot be
    /// reached now. The connection is added anyway, from the live messages on.
    #[error("the backplane that keeps the history cannot be reached now")]
    Unavailable,
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
    /// The last position given out or heard (kept when its entry is evicted).
    last: Option<Position>,
    /// Every message of this epoch with a greater offset is here: a resume from below it
    /// cannot be served from here (evicted, or from before this process first heard of
    /// the collection).
    floor: u64,
    /// Resumed connections that already have the messages up to an offset this process
    /// has not delivered yet (it lags behind the relay it replayed from): live deliveries
    /// up to there skip them.
    holds: Vec<(ConnectionId, u64)>,
    /// A resume moved the history to a new epoch before any message of it came: the last
    /// position of the old one, for the loss to be told with the next message.
    reset_from: Option<Position>,
    /// The last message of this history that a resume replayed from a relay, when this
    /// process has not heard it: the message after it names it as the one before.
    replayed_last: Option<Position>,
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
            floor: 0,
            holds: Vec::new(),
            reset_from: None,
            replayed_last: None,
        }
    }

    pub(crate) fn last(&self) -> Option<Position> {
        self.last
    }

    /// The tag the next message will get from [`append`](Self::append) (`position`
    /// `None`) or [`append_at`](Self::append_at), in the usual case: so that its frames
    /// can be made before the lock is taken again. `None` when that is not simple to say
    /// (a new epoch, a loss, a resume's replay in between).
    pub(crate) fn likely_tag(&self, position: Option<Position>) -> Option<Tag> {
        if self.reset_from.is_some() || self.replayed_last.is_some() {
            return None;
        }
        Some(match (position, self.last) {
            (None, last) => Tag {
                position: Position::new(self.epoch, last.map_or(1, |last| last.offset + 1)),
                previous: last,
            },
            // Offsets other rooms of the topic took are skipped.
            (Some(position), Some(last))
                if position.epoch == self.epoch && position.offset > last.offset =>
            {
                Tag {
                    position,
                    previous: Some(last),
                }
            }
            // The first message, or the first of a new epoch: nothing before it is known.
            (Some(position), last) if last.is_none() || position.epoch != self.epoch => Tag {
                position,
                previous: None,
            },
            _ => return None,
        })
    }

    /// Remembers `message` with the next offset of this history; returns its tag.
    pub(crate) fn append(&mut self, message: &Message) -> Tag {
        let offset = self.last.map_or(1, |last| last.offset + 1);
        self.append_at(Position::new(self.epoch, offset), message).0
    }

    /// Starts the history over at `epoch`, knowing nothing of it below `floor`.
    fn restart(&mut self, epoch: u64, floor: u64) {
        self.epoch = epoch;
        self.entries.clear();
        self.set_bytes(0);
        self.last = None;
        self.floor = floor;
        self.holds.clear();
        self.replayed_last = None;
    }

    /// Keeps `bytes` (and the shared budget) true.
    fn set_bytes(&mut self, bytes: usize) {
        if let Some(budget) = &self.config.budget {
            budget.add(bytes);
            budget.sub(self.bytes);
        }
        self.bytes = bytes;
    }

    /// Remembers `message` at `position` (a backplane's): a new epoch starts the history
    /// over. A position already here is not kept twice. Returns the message's tag, and
    /// what was lost before it, if anything was.
    pub(crate) fn append_at(
        &mut self,
        position: Position,
        message: &Message,
    ) -> (Tag, Option<Lost>) {
        let mut lost = None;
        if let Some(last) = self.reset_from.take() {
            if position.epoch == self.epoch {
                lost = Some(Lost {
                    last,
                    next: position,
                    kind: LostKind::HistoryReset,
                });
            }
        }
        if position.epoch != self.epoch || self.last.is_none() {
            // The first message heard of: what came before it in this collection is
            // unknown, but nothing came between its offset and the one before.
            let floor = position.offset.saturating_sub(1);
            if position.epoch != self.epoch {
                if let Some(last) = self.last {
                    lost = Some(Lost {
                        last,
                        next: position,
                        kind: LostKind::HistoryReset,
                    });
                }
                self.restart(position.epoch, floor);
            } else {
                self.floor = self.floor.max(floor);
            }
        }
        if let Some(last) = self.last {
            if position.offset <= last.offset {
                let previous = self
                    .entries
                    .iter()
                    .rev()
                    .map(|entry| entry.position)
                    .find(|known| known.offset < position.offset);
                return (Tag { position, previous }, lost);
            }
            let skipped = position.offset - last.offset - 1;
            if self.config.contiguous && skipped > 0 {
                lost = Some(Lost {
                    last,
                    next: position,
                    kind: LostKind::Skipped(skipped),
                });
            }
        }
        // What a resume replayed may be newer than what this process heard.
        let previous = match self.replayed_last {
            // Not there yet (this process lags): kept for the message after it.
            Some(replayed) if replayed.offset >= position.offset => self.last,
            Some(replayed) => {
                self.replayed_last = None;
                match self.last {
                    Some(last) if last.offset > replayed.offset => Some(last),
                    _ => Some(replayed),
                }
            }
            None => self.last,
        };
        self.last = Some(position);
        self.push(position, message);
        self.evict();
        (Tag { position, previous }, lost)
    }

    fn push(&mut self, position: Position, message: &Message) {
        self.set_bytes(self.bytes + message.len());
        self.entries.push_back(Entry {
            position,
            message: message.clone(),
            at: Instant::now(),
        });
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
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(gone) = self.entries.pop_front() {
            self.set_bytes(self.bytes - gone.message.len());
            self.floor = self.floor.max(gone.position.offset);
        }
    }

    /// Drops the oldest messages while the shared budget is over (the newest is kept).
    pub(crate) fn trim_to_budget(&mut self) {
        let Some(budget) = self.config.budget.clone() else {
            return;
        };
        while self.entries.len() > 1 && budget.over() {
            self.pop_oldest();
        }
    }

    /// The entries after `position`, oldest first, with the tag each had; or why not all
    /// the client missed is here.
    #[cfg(test)]
    pub(crate) fn after(&mut self, position: Position) -> Result<Vec<(Tag, Message)>, ResumeError> {
        let (missed, _) = self.after_at_most(position, usize::MAX)?;
        let mut previous = Some(position);
        Ok(missed
            .into_iter()
            .map(|(at, message)| {
                let tag = Tag {
                    position: at,
                    previous,
                };
                previous = Some(at);
                (tag, message)
            })
            .collect())
    }

    /// At most `max` of the entries after `position`, oldest first, and how many there are
    /// in all; or why not all the client missed is here.
    pub(crate) fn after_at_most(
        &mut self,
        position: Position,
        max: usize,
    ) -> Result<(Vec<(Position, Message)>, usize), ResumeError> {
        self.evict();
        if position.epoch != self.epoch
            || self.last.is_some_and(|last| position.offset > last.offset)
        {
            return Err(ResumeError::OtherEpoch {
                asked: position,
                current: self.epoch,
            });
        }
        if position.offset < self.floor {
            return Err(ResumeError::TooOld {
                asked: position,
                oldest: self.entries.front().map(|e| e.position),
            });
        }
        let first = self
            .entries
            .partition_point(|entry| entry.position.offset <= position.offset);
        let missed = self
            .entries
            .range(first..)
            .take(max)
            .map(|entry| (entry.position, entry.message.clone()))
            .collect();
        Ok((missed, self.entries.len() - first))
    }

    /// Whether this process has not yet heard what an ordered relay had up to `position`
    /// (it lags behind the relay, or has heard nothing of this epoch).
    pub(crate) fn lags_behind(&self, position: Position) -> bool {
        position.epoch != self.epoch || self.last.is_none_or(|last| last.offset < position.offset)
    }

    /// A resumed connection has from the relay everything up to `position`, which this
    /// process has not heard yet, the last message of it at `replayed`: live deliveries up
    /// to there skip it, and the next one names `replayed` as the one before. A relay in
    /// another epoch starts the history over there (the loss is told with the next
    /// message).
    pub(crate) fn hold_through(
        &mut self,
        connection: ConnectionId,
        position: Position,
        replayed: Position,
    ) {
        if position.epoch != self.epoch {
            let last = self.last;
            self.restart(position.epoch, position.offset);
            self.reset_from = last;
        }
        self.holds.push((connection, position.offset));
        if replayed.epoch == self.epoch
            && self
                .replayed_last
                .is_none_or(|known| known.offset < replayed.offset)
        {
            self.replayed_last = Some(replayed);
        }
    }

    /// The connections a live delivery at `offset` skips; those caught up are let go.
    pub(crate) fn held_at(&mut self, offset: u64) -> Vec<ConnectionId> {
        if self.holds.is_empty() {
            return Vec::new();
        }
        let held = self
            .holds
            .iter()
            .filter(|(_, through)| *through >= offset)
            .map(|(id, _)| *id)
            .collect();
        self.holds.retain(|(_, through)| *through > offset);
        held
    }

    /// The tag function.
    pub(crate) fn tag(&self) -> TagFn {
        self.config.tag.clone()
    }

    /// What to tell the members about `lost`, if anything.
    pub(crate) fn notice(&self, lost: &Lost) -> Option<Message> {
        self.config
            .lost_notice
            .as_ref()
            .and_then(|notice| notice_safely(notice, lost))
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.set_bytes(0);
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
    fn a_tag_function_may_capture() {
        let room = String::from("lobby");
        let mut ring = Ring::with_epoch(
            History::new().tag(move |tag, message| {
                Message::from(format!(
                    "{room} {} {}",
                    tag.position.offset(),
                    message.as_text().unwrap_or_default()
                ))
            }),
            7,
        );
        let tag = ring.append(&text("hi"));
        let tagged = tag_safely(&ring.tag(), &tag, &text("hi"));
        assert_eq!(tagged.as_text(), Some("lobby 1 hi"));
    }

    #[test]
    fn the_likely_tag_is_the_tag_the_message_gets_when_it_is_given() {
        let mut ring = Ring::with_epoch(History::new(), 7);
        let m = text("m");
        for _ in 0..3 {
            let likely = ring.likely_tag(None).expect("a local append is simple");
            assert_eq!(ring.append(&m), likely);
        }
        // A backplane's positions: the first one, gaps other rooms took, a duplicate, a
        // new epoch.
        let mut ring = Ring::with_epoch(History::new(), 7);
        let positions = [(9, 5), (9, 6), (9, 10), (9, 10), (9, 8), (12, 3), (12, 4)];
        let mut predicted = 0;
        for (epoch, offset) in positions {
            let position = Position::new(epoch, offset);
            let likely = ring.likely_tag(Some(position));
            let (tag, _) = ring.append_at(position, &m);
            if let Some(likely) = likely {
                assert_eq!(tag, likely, "at {position}");
                predicted += 1;
            }
        }
        assert_eq!(predicted, 5, "all but the duplicate and the older one");
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
        let (tag, _) = ring.append_at(Position::new(2, 1), &text("y"));
        assert_eq!(tag.previous, None);
        assert!(matches!(
            ring.after(Position::new(1, 10)),
            Err(ResumeError::OtherEpoch { .. })
        ));
    }

    #[test]
    fn a_history_heard_midway_knows_nothing_below_its_first_message() {
        let mut ring = Ring::with_epoch(History::new(), 1);
        let (tag, _) = ring.append_at(Position::new(9, 40), &text("x"));
        assert_eq!(tag.previous, None, "what came before is unknown");
        assert!(
            ring.after(Position::new(9, 39)).is_ok(),
            "nothing between 39 and 40"
        );
        assert!(matches!(
            ring.after(Position::new(9, 30)),
            Err(ResumeError::TooOld { .. })
        ));
    }

    #[test]
    fn the_message_after_a_replay_from_the_relay_names_the_last_replayed_one() {
        let room = History {
            contiguous: false,
            ..History::new()
        };
        // A process that never heard the room: the relay replayed up to 50, read to 60.
        let mut ring = Ring::with_epoch(room.clone(), 1);
        ring.hold_through(
            ConnectionId::next(),
            Position::new(9, 60),
            Position::new(9, 50),
        );
        let (tag, _) = ring.append_at(Position::new(9, 70), &text("70"));
        assert_eq!(tag.previous, Some(Position::new(9, 50)));
        let (tag, _) = ring.append_at(Position::new(9, 80), &text("80"));
        assert_eq!(tag.previous, Some(Position::new(9, 70)), "used once");
        // One that lags: it hears 50 live later, and then names it as usual.
        let mut ring = Ring::with_epoch(room, 9);
        ring.append_at(Position::new(9, 40), &text("40"));
        ring.hold_through(
            ConnectionId::next(),
            Position::new(9, 60),
            Position::new(9, 50),
        );
        let (tag, _) = ring.append_at(Position::new(9, 50), &text("50"));
        assert_eq!(tag.previous, Some(Position::new(9, 40)));
        let (tag, _) = ring.append_at(Position::new(9, 70), &text("70"));
        assert_eq!(tag.previous, Some(Position::new(9, 50)));
    }

    #[test]
    fn a_connection_resumed_from_the_relay_skips_what_it_has_until_this_process_catches_up() {
        // A room's: the offsets between are other rooms'.
        let room = History {
            contiguous: false,
            ..History::new()
        };
        let mut ring = Ring::with_epoch(room, 1);
        ring.append_at(Position::new(9, 40), &text("40"));
        // The relay had up to 50; this process has heard only 40 so far.
        assert!(ring.lags_behind(Position::new(9, 50)));
        assert!(!ring.lags_behind(Position::new(9, 40)));
        let id = ConnectionId::next();
        ring.hold_through(id, Position::new(9, 50), Position::new(9, 50));
        let (tag, lost) = ring.append_at(Position::new(9, 50), &text("50"));
        assert_eq!((tag.previous, lost), (Some(Position::new(9, 40)), None));
        assert_eq!(ring.held_at(50), [id]);
        ring.append_at(Position::new(9, 60), &text("60"));
        assert!(ring.held_at(60).is_empty(), "caught up: let go");
    }

    #[test]
    fn a_new_epoch_after_messages_and_a_skip_in_a_collection_are_losses() {
        let mut ring = Ring::with_epoch(History::new(), 1);
        assert_eq!(ring.append_at(Position::new(1, 1), &text("a")).1, None);
        let (_, lost) = ring.append_at(Position::new(1, 4), &text("b"));
        assert_eq!(
            lost.map(|lost| lost.kind),
            Some(LostKind::Skipped(2)),
            "2 and 3"
        );
        let (_, lost) = ring.append_at(Position::new(2, 1), &text("c"));
        assert_eq!(
            lost,
            Some(Lost {
                last: Position::new(1, 4),
                next: Position::new(2, 1),
                kind: LostKind::HistoryReset
            })
        );
        // A room's offsets skip other rooms': no loss.
        let mut room = Ring::with_epoch(
            History {
                contiguous: false,
                ..History::new()
            },
            1,
        );
        room.append_at(Position::new(1, 1), &text("a"));
        assert_eq!(room.append_at(Position::new(1, 9), &text("b")).1, None);
        // The first message heard is no loss: nothing was heard before.
        let mut fresh = Ring::with_epoch(History::new(), 5);
        assert_eq!(fresh.append_at(Position::new(6, 30), &text("a")).1, None);
    }

    #[test]
    fn a_client_that_missed_exactly_max_messages_resumes_with_all_of_them() {
        let mut ring = Ring::with_epoch(History::new().max_messages(5), 3);
        let seen = ring.append(&text("seen")).position;
        for n in 0..5 {
            ring.append(&text(&n.to_string()));
        }
        let missed = ring.after(seen).expect("all five are kept");
        let texts: Vec<_> = missed.iter().map(|(_, m)| m.as_text().unwrap()).collect();
        assert_eq!(texts, ["0", "1", "2", "3", "4"]);
    }

    #[test]
    fn a_history_filled_with_exactly_max_bytes_keeps_all_of_it() {
        let mut ring = Ring::with_epoch(History::new().max_bytes(8), 3);
        for _ in 0..4 {
            ring.append(&text("ab"));
        }
        assert_eq!(ring.entries.len(), 4, "8 bytes in 8");
        assert_eq!(ring.after(Position::new(3, 0)).expect("all kept").len(), 4);
    }

    #[test]
    fn two_histories_have_different_epochs_and_do_not_take_each_others_positions() {
        let (mut one, mut two) = (Ring::new(History::new()), Ring::new(History::new()));
        assert_ne!(one.epoch, two.epoch);
        for _ in 0..3 {
            one.append(&text("x"));
            two.append(&text("x"));
        }
        let from_one = Position::new(one.epoch, 2);
        assert!(one.after(from_one).is_ok());
        assert!(matches!(
            two.after(from_one),
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

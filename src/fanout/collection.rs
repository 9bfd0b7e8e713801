//! A shared set of live connections with broadcast.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use once_cell::race::OnceBox;
use smallvec::SmallVec;

use crate::connection::{Connection, Membership};
use crate::engine::core::Core;
use crate::engine::flush::{flush_all, HasCore, FLUSH_CHUNK};
use crate::engine::id::ConnectionId;
use crate::engine::queue::{Pushed, Rejected};
use crate::engine::sync::lock;
use crate::fanout::frames::{CompressAs, Frames, Needs};
use crate::fanout::history::{tag_safely, History, Position, ResumeError, Resumed, Ring, Tag};
use crate::fanout::relay::Relay;
use crate::fanout::replay_frames::{ReplayFrames, Replaying};
use crate::protocol::message::Message;

/// A cheap, cloneable, thread-safe set of connections, for broadcasting to all of them.
///
/// Clones share one set. A connection leaves every collection it was added to when it closes,
/// so a collection never holds dead connections for long.
///
/// [`broadcast`](WebSocketCollection::broadcast) converts the message once; every connection
/// gets a ref-counted handle to the same payload, queued without waiting for any client.
///
/// ```
/// use websocket_handler::WebSocketCollection;
///
/// let room = WebSocketCollection::new();
/// assert!(room.is_empty());
/// // No connections yet, so the message is queued to nobody.
/// assert_eq!(room.broadcast("hello"), 0);
/// ```
#[derive(Clone, Default)]
pub struct WebSocketCollection {
    members: Arc<Members>,
    /// Set by [`with_backplane`](WebSocketCollection::with_backplane).
    relay: Option<Arc<dyn Relay>>,
}

/// The set itself. A small one (a user's few tabs) is one list under one lock; past
/// [`SMALL_MAX`] members it moves, once, into [`SHARDS`] shards, so that a broadcast to
/// thousands of connections holds any one lock only briefly: connects and disconnects wait
/// for one shard's sends at most, never for the whole broadcast. Connections hold weak
/// references to it to leave on close.
///
/// The move happens under `small`'s lock, and the shards are published complete
/// (`sharded` is set with every member already in its shard, and `small` emptied before
/// the lock goes). So whoever sees `sharded` set uses only the shards, and whoever sees it
/// unset takes `small`'s lock and looks again.
pub(crate) struct Members {
    /// A mutex, not a read-write lock: eight bytes smaller, and a small collection is
    /// broadcast to in well under a microsecond.
    small: Mutex<Shard>,
    /// The shards and the history, which most collections (a user's tabs) never have:
    /// one pointer for both.
    rare: OnceBox<Rare>,
    /// Called when a removal leaves the set empty: how [`Rooms`](crate::Rooms) drops
    /// empty rooms. One callback shared by all the rooms of a `Rooms`, which finds the room
    /// by [`key_hash`](Self::key_hash) and the collection's address: no allocation per
    /// room. Set when the collection is made, so a plain field: one word.
    on_empty: Option<OnEmpty>,
    /// The hash of the room's key, for a collection that is a room of a `Rooms`: so the
    /// rooms need no second map, from collection to key (see [`Bare::key_hash`]).
    key_hash: u64,
    /// What members need compressed, so that a broadcast compresses before any lock.
    compress_as: CompressAs,
}

/// What few collections have, behind one pointer in [`Members`].
#[derive(Default)]
struct Rare {
    /// Past [`SMALL_MAX`] members: see [`Members`].
    sharded: OnceBox<[RwLock<Shard>; SHARDS]>,
    /// Set by [`WebSocketCollection::with_history`]. Held while a broadcast is given its
    /// position and delivered, so that a resume sees every broadcast either in the
    /// history or live, never both and never neither.
    history: OnceBox<Kept>,
}

/// A collection's history, and the frames its resumes share.
struct Kept {
    ring: Mutex<Ring>,
    replays: ReplayFrames,
}

/// What [`Members::on_empty`] calls: shared, so that many collections cost one; and a
/// thin pointer, one word in each of them.
pub(crate) type OnEmpty = Arc<EmptyCallback>;

/// The function behind an [`OnEmpty`].
pub(crate) struct EmptyCallback(pub(crate) Box<dyn Fn(Emptied<'_>) + Send + Sync>);

/// Ids are sequential, so `id % SHARDS` spreads connections evenly.
const SHARDS: usize = 16;

/// Up to this many members, a collection is one list: sixteen shards would cost a small
/// collection (a user's tabs) some 200 bytes more than it holds.
const SMALL_MAX: usize = 32;

/// From this many members on, a shard's list grows by half instead of doubling.
const GROW_BY_HALF_FROM: usize = 64;

/// A dense list for fast iteration, each member's id beside it, to find one by a scan
/// without following a pointer: a sixteenth of a 10,000-member room is some 600 of them,
/// under a microsecond, and a hash index would cost every small room (a user's few tabs)
/// about 100 bytes more. One vector, not one per field: most collections (a user's tabs)
/// have one or two members, and each vector is an allocation of its own; and the first
/// member in place, so that a collection of one (a user with one tab) is one allocation.
#[derive(Default)]
struct Shard {
    list: SmallVec<[Member; 1]>,
}

struct Member {
    connection: Connection,
    /// `connection.id()`.
    id: ConnectionId,
    /// Gets messages with their positions (see [`History::tag`]).
    tagged: bool,
}

impl Shard {
    fn position(&self, id: ConnectionId) -> Option<usize> {
        self.list.iter().position(|member| member.id == id)
    }

    /// Adds the member unless it is there; returns whether it was added.
    fn insert(&mut self, connection: Connection, tagged: bool) -> bool {
        if let Some(at) = self.position(connection.id()) {
            // Already there: asking for tags again still takes.
            self.list[at].tagged |= tagged;
            return false;
        }
        let len = self.list.len();
        if len == self.list.capacity() && len >= GROW_BY_HALF_FROM {
            // A big room's shard grows by half, not by double: a quarter spare on average,
            // not half as much as it holds (24 bytes a member).
            self.list.reserve_exact(len / 2);
        }
        self.list.push(Member {
            id: connection.id(),
            connection,
            tagged,
        });
        true
    }

    /// Removes the member; returns it, and whether the shard is empty now.
    fn remove(&mut self, id: ConnectionId) -> Option<(Connection, bool)> {
        let at = self.position(id)?;
        let removed = self.list.swap_remove(at).connection;
        Some((removed, self.list.is_empty()))
    }
}

impl Default for Members {
    fn default() -> Self {
        Members {
            small: Mutex::default(),
            rare: OnceBox::new(),
            on_empty: None,
            key_hash: 0,
            compress_as: CompressAs::default(),
        }
    }
}

/// Where a collection's members are, for one operation: see [`Members`].
enum Layout<'a, G> {
    /// Still small: its one list, locked.
    Small(G),
    Sharded(&'a [RwLock<Shard>; SHARDS]),
}

fn shard_of(shards: &[RwLock<Shard>; SHARDS], id: ConnectionId) -> &RwLock<Shard> {
    &shards[(id.as_u64() % SHARDS as u64) as usize]
}

impl Members {
    fn sharded(&self) -> Option<&[RwLock<Shard>; SHARDS]> {
        self.rare.get()?.sharded.get()
    }

    fn history(&self) -> Option<&Kept> {
        self.rare.get()?.history.get()
    }

    fn rare(&self) -> &Rare {
        self.rare.get_or_init(Box::default)
    }

    /// The layout, with `small` locked if that is where the members are.
    fn layout(&self) -> Layout<'_, MutexGuard<'_, Shard>> {
        if let Some(shards) = self.sharded() {
            return Layout::Sharded(shards);
        }
        let small = lock(&self.small);
        match self.sharded() {
            Some(shards) => Layout::Sharded(shards),
            None => Layout::Small(small),
        }
    }

    fn insert(&self, connection: Connection, tagged: bool) -> bool {
        self.compress_as.joined(connection.core().deflate, tagged);
        match self.layout() {
            Layout::Sharded(shards) => {
                write(shard_of(shards, connection.id())).insert(connection, tagged)
            }
            Layout::Small(mut small) => {
                let added = small.insert(connection, tagged);
                if small.list.len() > SMALL_MAX {
                    self.spread(&mut small);
                }
                added
            }
        }
    }

    /// Moves the members of `small` (locked) into shards, and publishes them.
    fn spread(&self, small: &mut Shard) {
        let shards: Box<[RwLock<Shard>; SHARDS]> =
            Box::new(std::array::from_fn(|_| RwLock::default()));
        for member in small.list.drain(..) {
            write(shard_of(&shards, member.id)).list.push(member);
        }
        small.list = SmallVec::new();
        // Only this thread sets it: it holds `small`'s lock and found it unset.
        let _ = self.rare().sharded.set(shards);
    }

    pub(crate) fn remove(&self, id: ConnectionId) -> Option<Connection> {
        let (removed, part_empty) = match self.layout() {
            Layout::Sharded(shards) => write(shard_of(shards, id)).remove(id)?,
            Layout::Small(mut small) => small.remove(id)?,
        };
        // No lock held: the callback takes its own.
        if part_empty && self.len() == 0 {
            if let Some(on_empty) = &self.on_empty {
                (on_empty.0)(Emptied(self));
            }
        }
        Some(removed)
    }

    pub(crate) fn contains(&self, id: ConnectionId) -> bool {
        match self.layout() {
            Layout::Sharded(shards) => read(shard_of(shards, id)).position(id).is_some(),
            Layout::Small(small) => small.position(id).is_some(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self.layout() {
            Layout::Sharded(shards) => shards.iter().map(|shard| read(shard).list.len()).sum(),
            Layout::Small(small) => small.list.len(),
        }
    }

    /// Calls `each` on every part of the set, one lock at a time.
    fn each_part(&self, mut each: impl FnMut(&Shard)) {
        match self.layout() {
            Layout::Sharded(shards) => shards.iter().for_each(|shard| each(&read(shard))),
            Layout::Small(small) => each(&small),
        }
    }

    /// Queues `message` to the members `include` accepts, with the next position of the
    /// history if there is one; returns to how many.
    pub(crate) fn broadcast(
        &self,
        message: Message,
        include: impl Fn(ConnectionId) -> bool,
    ) -> usize {
        self.broadcast_at(None, message, include)
    }

    /// Like [`broadcast`](Self::broadcast), at `position` (a backplane's) if given.
    ///
    /// The frames are made before any lock: with a history, for the tag the message will
    /// most likely get; made again under the history's lock only if another broadcast
    /// took that position meanwhile.
    pub(crate) fn broadcast_at(
        &self,
        position: Option<Position>,
        message: Message,
        include: impl Fn(ConnectionId) -> bool,
    ) -> usize {
        let mut plain = Frames::new(message.clone(), self.compress_as.get(false));
        let Some(history) = self.history() else {
            return self.deliver(&mut plain, None, include);
        };
        let (tag_fn, likely) = {
            let ring = lock(&history.ring);
            (ring.tag(), ring.likely_tag(position))
        };
        let likely = likely.map(|tag| {
            let tagged = tag_safely(&tag_fn, &tag, &message);
            (tag, Frames::new(tagged, self.compress_as.get(true)))
        });
        let mut ring = lock(&history.ring);
        let (tag, lost, held) = match position {
            Some(position) => {
                let (tag, lost) = ring.append_at(position, &message);
                (tag, lost, ring.held_at(position.offset()))
            }
            None => (ring.append(&message), None, Vec::new()),
        };
        if let Some(notice) = lost.as_ref().and_then(|lost| ring.notice(lost)) {
            // Before the message, to tagged and untagged members alike, as it is.
            let mut notice = Frames::new(notice, self.compress_as.get(false));
            self.deliver(&mut notice, None, &include);
        }
        let mut tagged = match likely {
            Some((likely, frames)) if likely == tag => frames,
            _ => Frames::new(
                tag_safely(&tag_fn, &tag, &message),
                self.compress_as.get(true),
            ),
        };
        if held.is_empty() {
            self.deliver(&mut plain, Some(&mut tagged), include)
        } else {
            // A resumed connection already has it: replayed from the relay before this
            // process got it.
            self.deliver(&mut plain, Some(&mut tagged), |id| {
                include(id) && !held.contains(&id)
            })
        }
    }

    /// Queues `plain` (and `tagged` to the tagged members) to the members `include`
    /// accepts; returns to how many.
    fn deliver(
        &self,
        plain: &mut Frames,
        mut tagged: Option<&mut Frames>,
        include: impl Fn(ConnectionId) -> bool,
    ) -> usize {
        let mut queued = 0;
        let mut to_flush = Vec::new();
        let mut needs = Needs::new(&self.compress_as);
        self.each_part(|shard| {
            if shard.list.is_empty() {
                return;
            }
            let mut local = plain.for_shard();
            let mut local_tagged = match tagged.as_deref() {
                Some(tagged) if shard.list.iter().any(|member| member.tagged) => {
                    Some(tagged.for_shard())
                }
                _ => None,
            };
            for member in shard.list.iter().filter(|member| include(member.id)) {
                let connection = &member.connection;
                let core = connection.core();
                let frame = match (tagged.as_deref_mut(), local_tagged.as_mut()) {
                    (Some(tagged), Some(local_tagged)) if member.tagged => {
                        needs.note(core, true);
                        tagged.frame(local_tagged, core)
                    }
                    _ => {
                        needs.note(core, false);
                        plain.frame(&mut local, core)
                    }
                };
                match core.send_frame(frame) {
                    Ok(Pushed::MustFlush) => {
                        queued += 1;
                        if to_flush.capacity() == 0 {
                            // One flush task's worth at once, not 4, 8, 16... by growing.
                            to_flush.reserve_exact(FLUSH_CHUNK);
                        }
                        to_flush.push(connection.clone());
                    }
                    Ok(Pushed::Queued) => queued += 1,
                    Err(_) => {}
                }
            }
        });
        needs.remember(&self.compress_as);
        flush_all(to_flush);
        queued
    }

    /// Calls `each` for every connection, one lock at a time.
    fn for_each(&self, mut each: impl FnMut(&Connection)) {
        self.each_part(|shard| {
            shard
                .list
                .iter()
                .for_each(|member| each(&member.connection))
        });
    }
}

impl Membership for Members {
    fn remove_member(&self, id: ConnectionId) {
        self.remove(id);
    }

    fn has_member(&self, id: ConnectionId) -> bool {
        self.contains(id)
    }

    fn replace_member(&self, successor: &Connection) -> bool {
        let id = successor.id();
        let replace = |shard: &mut Shard| match shard.position(id) {
            Some(at) => {
                shard.list[at].connection = successor.clone();
                true
            }
            None => false,
        };
        // Under the lock broadcasts queue under: each goes to one of the two.
        match self.layout() {
            Layout::Sharded(shards) => replace(&mut write(shard_of(shards, id))),
            Layout::Small(mut small) => replace(&mut small),
        }
    }
}

fn read(lock: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(lock: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WebSocketCollection {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection. Returns `false` if it was already in the collection or has
    /// already closed (a closed connection is never added).
    pub fn add(&self, connection: Connection) -> bool {
        let members = &self.members;
        connection
            .clone()
            .join(members, || members.insert(connection, false))
    }

    /// Adds a connection that gets every message with its position: what the
    /// [`History`]'s tag function makes of it. Like [`add`](Self::add) without a history.
    pub fn add_tagged(&self, connection: Connection) -> bool {
        let members = &self.members;
        connection
            .clone()
            .join(members, || members.insert(connection, true))
    }

    /// Adds a connection that was in the collection before and saw messages up to `after`
    /// (a position it was given with a tagged message): it is queued exactly what it
    /// missed, in order, and then gets the live messages, all tagged, with no gap and no
    /// duplicate between the two (a broadcast during the resume is either replayed or
    /// live). The replay may be of any length the history (or an ordered backplane's)
    /// keeps: it is queued as the client reads, keeping its queue at most half full, so
    /// it never meets the slow-consumer policy; the future resolves once it is all queued
    /// ([`Resumed::replayed`] counts it), or with [`ResumeError::Closed`] if the connection
    /// closes meanwhile.
    ///
    /// When not everything it missed is known, the connection is still added (tagged, from
    /// the live messages on), and the error says why, so the application can tell its
    /// user or reload: [`ResumeError::TooOld`] (the history no longer goes back that far)
    /// or [`ResumeError::OtherEpoch`] (the position is of another history: the process
    /// restarted, say).
    ///
    /// ```
    /// use websocket_handler::{History, ResumeError, WebSocketCollection};
    ///
    /// # async fn run(conn: websocket_handler::Connection) {
    /// let room = WebSocketCollection::new().with_history(History::new());
    /// let last_seen = "5f.17".parse().unwrap(); // sent back by the client
    /// match room.resume(&conn, &last_seen).await {
    ///     Ok(resumed) => println!("replayed {}", resumed.replayed),
    ///     Err(ResumeError::TooOld { .. } | ResumeError::OtherEpoch { .. }) => {
    ///         let _ = conn.send("Some messages could not be recovered.");
    ///     }
    ///     Err(other) => println!("{other}"),
    /// }
    /// # }
    /// ```
    pub async fn resume(
        &self,
        connection: &Connection,
        after: &Position,
    ) -> Result<Resumed, ResumeError> {
        let relay = self.relay.as_ref().filter(|relay| relay.ordered());
        let still_here = || Some(Box::new(()) as Box<dyn Held>);
        match self
            .resume_from(
                connection,
                ResumeProgress::new(*after),
                relay.map(|relay| (relay, None)),
                &still_here,
            )
            .await
        {
            ResumeStep::Done(result) => result,
            // Only a room's collection can be replaced.
            ResumeStep::Moved(_) => Err(ResumeError::Closed),
        }
    }

    /// [`resume`](Self::resume) from `progress`, with the ordered relay (and the room on
    /// it) that keeps what is older than the history here: a process that started after
    /// the client's last message still replays it, from the relay.
    ///
    /// The replay goes out outside the history's lock, in chunks, as the connection's queue
    /// has room (it never meets the slow-consumer policy), first from the relay while the
    /// history here does not reach back, then from the history, again and again while
    /// broadcasts go on; the last few are queued under the history's lock, where the
    /// connection joins, so that every broadcast reaches it once, from the replay or live.
    ///
    /// `still_here` is called before the connection joins and held while it does: `None`
    /// means the collection is no longer where the connection should be (a room evicted
    /// meanwhile), and [`ResumeStep::Moved`] says how far the replay came.
    pub(crate) async fn resume_from(
        &self,
        connection: &Connection,
        mut progress: ResumeProgress,
        relay: Option<(&Arc<dyn Relay>, Option<&str>)>,
        still_here: &StillHere<'_>,
    ) -> ResumeStep {
        let members = &self.members;
        let Some(history) = members.history() else {
            return ResumeStep::Done(Err(ResumeError::NoHistory));
        };
        let core = connection.core();
        let replaying = history.replays.enter();
        let mut rounds = 0;
        // The relay had nothing newer than `progress.after` when last asked, and whether
        // that last page brought anything.
        let mut relay_done = false;
        let mut relay_moved = false;
        loop {
            if !core.is_open() {
                return ResumeStep::Done(Err(ResumeError::Closed));
            }
            let local = lock(&history.ring).after_at_most(progress.after, REPLAY_CHUNK);
            let error = match local {
                Ok((_, remaining))
                    if remaining <= FINISH_UNDER_LOCK_MAX || rounds >= ROUNDS_MAX =>
                {
                    match self.finish_resume(connection, &replaying, &mut progress, still_here) {
                        Finish::Done(result) => return ResumeStep::Done(result),
                        Finish::Moved => return ResumeStep::Moved(progress),
                        Finish::NoRoom => {
                            if let Err(error) = wait_for_room(core).await {
                                return ResumeStep::Done(Err(error));
                            }
                        }
                    }
                    rounds += 1;
                    continue;
                }
                Ok((chunk, _)) => {
                    let tag = lock(&history.ring).tag();
                    if let Err(error) = replay(core, &tag, &replaying, &mut progress, chunk).await {
                        return ResumeStep::Done(Err(error));
                    }
                    rounds += 1;
                    continue;
                }
                Err(error) => error,
            };
            // The history here does not reach back to `progress.after`.
            let Some((relay, room)) = relay else {
                return self.join_anyway(connection, progress, still_here, error);
            };
            if relay_done {
                if let Some(step) = self.finish_lagging(connection, &progress, still_here) {
                    return step;
                }
                if !relay_moved {
                    // Neither here nor in the relay.
                    return self.join_anyway(connection, progress, still_here, error);
                }
                // Evicted here while the relay was read: ask it again.
            }
            let page = match relay.missed(room, progress.after, RELAY_PAGE_BYTES).await {
                Ok(page) => page,
                Err(error) => return self.join_anyway(connection, progress, still_here, error),
            };
            let before = progress.after;
            let messages: Vec<_> = page
                .messages
                .into_iter()
                .filter(|(position, _)| position.offset() > before.offset())
                .collect();
            let tag = lock(&history.ring).tag();
            if let Err(error) = replay(core, &tag, &replaying, &mut progress, messages).await {
                return ResumeStep::Done(Err(error));
            }
            if page.through.epoch() == progress.after.epoch()
                && page.through.offset() > progress.after.offset()
            {
                progress.after = page.through;
            }
            relay_moved = progress.after != before;
            relay_done = page.complete || !relay_moved;
        }
    }

    /// The last step of a resume, under the history's lock: queues what is left if the
    /// queue has room for it, and adds the connection.
    fn finish_resume(
        &self,
        connection: &Connection,
        replaying: &Replaying<'_>,
        progress: &mut ResumeProgress,
        still_here: &StillHere<'_>,
    ) -> Finish {
        let members = &self.members;
        let Some(history) = members.history() else {
            return Finish::Done(Err(ResumeError::NoHistory));
        };
        let core = connection.core();
        let Some(held) = still_here() else {
            return Finish::Moved;
        };
        let mut ring = lock(&history.ring);
        let rest = match ring.after_at_most(progress.after, usize::MAX) {
            Ok((rest, _)) => rest,
            // Evicted since it was looked at: the caller looks again.
            Err(_) => return Finish::NoRoom,
        };
        let tag = ring.tag();
        let mut must_flush = false;
        let mut result = Ok(());
        for (position, message) in rest {
            if !has_room(core, message.len()) {
                result = Err(Finish::NoRoom);
                break;
            }
            match queue_tagged(core, &tag, replaying, progress, position, &message) {
                Ok(Some(pushed)) => must_flush |= pushed == Pushed::MustFlush,
                Ok(None) => {
                    result = Err(Finish::NoRoom);
                    break;
                }
                Err(error) => {
                    result = Err(Finish::Done(Err(error)));
                    break;
                }
            }
        }
        if result.is_ok() {
            connection.join(members, || members.insert(connection.clone(), true));
            if !members.contains(connection.id()) {
                result = Err(Finish::Done(Err(ResumeError::Closed)));
            }
        }
        drop(ring);
        drop(held);
        if must_flush {
            core.flush_now();
        }
        match result {
            Ok(()) => Finish::Done(Ok(Resumed {
                replayed: progress.replayed,
            })),
            Err(finish) => finish,
        }
    }

    /// When the relay has given everything up to `progress.after` and this process has
    /// not heard it all yet: adds the connection, skipping the live deliveries up to
    /// there. `None` if this process is not behind (the history here has a gap instead).
    fn finish_lagging(
        &self,
        connection: &Connection,
        progress: &ResumeProgress,
        still_here: &StillHere<'_>,
    ) -> Option<ResumeStep> {
        let members = &self.members;
        let history = members.history()?;
        let Some(held) = still_here() else {
            return Some(ResumeStep::Moved(*progress));
        };
        let mut ring = lock(&history.ring);
        if !ring.lags_behind(progress.after) {
            return None;
        }
        connection.join(members, || members.insert(connection.clone(), true));
        if !members.contains(connection.id()) {
            return Some(ResumeStep::Done(Err(ResumeError::Closed)));
        }
        ring.hold_through(connection.id(), progress.after, progress.previous);
        drop(ring);
        drop(held);
        Some(ResumeStep::Done(Ok(Resumed {
            replayed: progress.replayed,
        })))
    }

    /// Adds the connection tagged, from the live messages on, when not all it missed is
    /// known; answers `error`.
    fn join_anyway(
        &self,
        connection: &Connection,
        progress: ResumeProgress,
        still_here: &StillHere<'_>,
        error: ResumeError,
    ) -> ResumeStep {
        let Some(held) = still_here() else {
            return ResumeStep::Moved(progress);
        };
        let added = self.add_tagged(connection.clone()) || self.contains(connection.id());
        drop(held);
        ResumeStep::Done(Err(if added { error } else { ResumeError::Closed }))
    }

    /// This collection, keeping `history` of its broadcasts (see [`History`]).
    ///
    /// A collection has one history, shared by all its clones (made before or after):
    /// the first call sets it; a later one is ignored, with a warning logged. Set it
    /// before the first broadcast: earlier ones are not in it.
    pub fn with_history(self, history: History) -> Self {
        let kept = Box::new(Kept {
            ring: Mutex::new(Ring::new(history)),
            replays: ReplayFrames::default(),
        });
        if self.members.rare().history.set(kept).is_err() {
            tracing::warn!(
                "with_history: the collection already keeps a history; this one is ignored"
            );
        }
        self
    }

    /// Drops the history's oldest messages while the budget it shares is over.
    pub(crate) fn trim_history_to_budget(&self) {
        if let Some(history) = self.members.history() {
            lock(&history.ring).trim_to_budget();
        }
    }

    /// The position of the last broadcast, if the collection keeps a history and has
    /// broadcast anything.
    pub fn last_position(&self) -> Option<Position> {
        self.members
            .history()
            .and_then(|history| lock(&history.ring).last())
    }

    /// Removes a connection; returns it if it was in the collection.
    pub fn remove(&self, id: ConnectionId) -> Option<Connection> {
        let removed = self.members.remove(id)?;
        removed.forget(&self.members);
        Some(removed)
    }

    /// Whether the connection is in the collection.
    pub fn contains(&self, id: ConnectionId) -> bool {
        self.members.contains(id)
    }

    /// Number of connections in the collection.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the collection is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the connections, in no particular order.
    pub fn connections(&self) -> Vec<Connection> {
        let mut all = Vec::new();
        self.members
            .for_each(|connection| all.push(connection.clone()));
        all
    }

    /// Queues `message` to every open connection and returns to how many it was queued.
    ///
    /// Never waits: a connection whose queue is full, or that is closing, is skipped.
    /// Messages broadcast one after another from one task reach each connection in order.
    ///
    /// With a [backplane](WebSocketCollection::with_backplane), the message also reaches
    /// the collections on the same topic in other processes, and the count is of this
    /// process's connections only. What it counts depends on the kind of backplane (see
    /// [`Backplane::ordered`](crate::backplane::Backplane::ordered)):
    /// - **unordered** ([`MemoryBackplane`](crate::backplane::MemoryBackplane), the Redis
    ///   backplane in pub/sub mode): the message is queued here at once, as without a
    ///   backplane, and then published; the count is as above, the connections it was
    ///   queued to.
    /// - **ordered** (the Redis backplane in its default, lossless mode): the message is
    ///   only published, and queued here when it comes back from the backplane, in the
    ///   topic's one order, a round trip later. The count is of the members when it was
    ///   published: those it will be queued to, unless by then they have left, closed or
    ///   filled their queue (a connection added meanwhile gets it too, uncounted).
    pub fn broadcast(&self, message: impl Into<Message>) -> usize {
        self.broadcast_filtered(message.into(), None)
    }

    /// Like [`broadcast`](WebSocketCollection::broadcast), but skips the connection `except`
    /// (typically the sender), which is not counted.
    pub fn broadcast_except(&self, except: ConnectionId, message: impl Into<Message>) -> usize {
        self.broadcast_filtered(message.into(), Some(except))
    }

    /// Like [`broadcast`](WebSocketCollection::broadcast), but only to this process's
    /// connections, never through the backplane.
    pub fn broadcast_local(&self, message: impl Into<Message>) -> usize {
        self.members.broadcast(message.into(), |_| true)
    }

    fn broadcast_filtered(&self, message: Message, except: Option<ConnectionId>) -> usize {
        let include = |id| Some(id) != except;
        let Some(relay) = &self.relay else {
            return self.members.broadcast(message, include);
        };
        if relay.ordered() {
            // Delivered here too when the relay hands it back, in the one order: to the
            // members then, counted now.
            let members = self.len_except(except);
            return if relay.publish(None, &message, except) {
                members
            } else {
                0
            };
        }
        // Local connections first, so the backplane adds nothing to their latency.
        let queued = self.members.broadcast(message.clone(), include);
        relay.publish(None, &message, None);
        queued
    }

    /// How many members there are, `except` not counted.
    pub(crate) fn len_except(&self, except: Option<ConnectionId>) -> usize {
        let excepted = except.is_some_and(|id| self.members.contains(id));
        // Counted one after the other: a member that joins in between is not subtracted
        // from a count without it.
        self.members.len().saturating_sub(usize::from(excepted))
    }

    /// Delivers a message that came through a relay to this process's members but
    /// `except`, at `position` if the relay gave one.
    pub(crate) fn deliver_local(
        &self,
        position: Option<Position>,
        message: Message,
        except: Option<ConnectionId>,
    ) -> usize {
        self.members
            .broadcast_at(position, message, |id| Some(id) != except)
    }

    /// An empty collection whose broadcasts also go to `relay`.
    pub(crate) fn with_relay(relay: Arc<dyn Relay>) -> (Self, Arc<Members>) {
        let members = Arc::new(Members::default());
        let collection = WebSocketCollection {
            members: members.clone(),
            relay: Some(relay),
        };
        (collection, members)
    }

    /// An empty collection that is a room of a [`Rooms`](crate::Rooms): `on_empty` is
    /// called whenever a removal leaves it empty, with the collection that emptied, and
    /// `key_hash` is its key's hash there (see [`Bare::key_hash`]).
    pub(crate) fn room(on_empty: OnEmpty, key_hash: u64) -> Self {
        let members = Members {
            on_empty: Some(on_empty),
            key_hash,
            ..Members::default()
        };
        WebSocketCollection {
            members: Arc::new(members),
            relay: None,
        }
    }

    /// The backplane topic, if the collection has a backplane.
    pub fn topic(&self) -> Option<&str> {
        self.relay.as_deref().map(Relay::topic)
    }
}

/// How far a resume has come.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResumeProgress {
    /// The client has everything up to here.
    after: Position,
    /// The last message it has: the next one replayed names it as the one before.
    previous: Position,
    /// Messages queued by the replay so far.
    replayed: usize,
}

impl ResumeProgress {
    /// A resume of a client that has everything up to `after`.
    pub(crate) fn new(after: Position) -> Self {
        ResumeProgress {
            after,
            previous: after,
            replayed: 0,
        }
    }
}

/// Where a resume stopped.
pub(crate) enum ResumeStep {
    /// Done, the connection added (unless it closed).
    Done(Result<Resumed, ResumeError>),
    /// The collection is no longer the connection's (see [`WebSocketCollection::resume_from`]):
    /// what it has so far.
    Moved(ResumeProgress),
}

/// Whatever [`WebSocketCollection::resume_from`]'s `still_here` holds while the connection
/// joins (a lock of the rooms' map).
pub(crate) trait Held {}

/// What [`WebSocketCollection::resume_from`] asks whether the collection is still the
/// connection's, holding the answer while the connection joins.
pub(crate) type StillHere<'a> = dyn Fn() -> Option<Box<dyn Held + 'a>> + Sync + 'a;

impl<T> Held for T {}

/// How the last step of a resume went.
enum Finish {
    Done(Result<Resumed, ResumeError>),
    Moved,
    /// The queue had no room for all that is left: wait, and try again.
    NoRoom,
}

/// Messages a resume replays from the history at a time, outside its lock.
const REPLAY_CHUNK: usize = 256;

/// A resume queues the rest under the history's lock (which holds up the collection's
/// broadcasts) when at most this many are left...
const FINISH_UNDER_LOCK_MAX: usize = 64;

/// ... or after this many rounds, lest a collection that broadcasts faster than the
/// client reads keep it replaying for ever; the queue's room still bounds what is queued
/// under the lock.
const ROUNDS_MAX: usize = 64;

/// How often a resume looks whether the queue has room again. A poll, not an event: the
/// writer waking a waiter would cost every idle connection a few bytes, for a rare path.
const REPLAY_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// Whether `core`'s queue has room for a replayed message of `len` bytes: a replay keeps
/// the queue at most half full, in messages and in bytes, so that it never meets the
/// slow-consumer policy and leaves room for the application's own sends.
fn has_room(core: &Core, len: usize) -> bool {
    let (messages, bytes) = core.queue.queued();
    let bounds = core.bounds();
    messages * 2 < bounds.max_messages().max(1)
        && (messages == 0 || (bytes + len) * 2 <= bounds.max_bytes())
}

/// Queues one replayed message, tagged, to `core`, and counts it; `None` if the queue
/// had no room after all (the application's own sends filled it).
fn queue_tagged(
    core: &Core,
    tag: &crate::fanout::history::TagFn,
    replaying: &Replaying<'_>,
    progress: &mut ResumeProgress,
    position: Position,
    message: &Message,
) -> Result<Option<Pushed>, ResumeError> {
    let tagged = tag_safely(
        tag,
        &Tag {
            position,
            previous: Some(progress.previous),
        },
        message,
    );
    // Not `send_frame`: a replay never meets the slow-consumer policy.
    let frame = replaying.frame(core, position, progress.previous, tagged);
    let pushed = match core.queue.push_data(frame, core.bounds()) {
        Ok(pushed) => pushed,
        Err(Rejected::Full { .. }) => return Ok(None),
        Err(Rejected::Stopped) => return Err(ResumeError::Closed),
    };
    progress.after = position;
    progress.previous = position;
    progress.replayed += 1;
    Ok(Some(pushed))
}

/// Waits until `core`'s queue is no more than half full (or the connection closes).
async fn wait_for_room(core: &Core) -> Result<(), ResumeError> {
    while !has_room(core, 0) {
        if !core.is_open() {
            return Err(ResumeError::Closed);
        }
        tokio::time::sleep(REPLAY_POLL).await;
    }
    Ok(())
}

/// Queues `messages` (after `progress`) to `core`, each when its queue has room.
async fn replay(
    core: &Core,
    tag: &crate::fanout::history::TagFn,
    replaying: &Replaying<'_>,
    progress: &mut ResumeProgress,
    messages: Vec<(Position, Message)>,
) -> Result<(), ResumeError> {
    let mut must_flush = false;
    for (position, message) in messages {
        loop {
            if has_room(core, message.len()) {
                if let Some(pushed) =
                    queue_tagged(core, tag, replaying, progress, position, &message)?
                {
                    must_flush |= pushed == Pushed::MustFlush;
                    break;
                }
            }
            if must_flush {
                core.flush_now();
                must_flush = false;
            }
            if !core.is_open() {
                return Err(ResumeError::Closed);
            }
            tokio::time::sleep(REPLAY_POLL).await;
        }
    }
    if must_flush {
        core.flush_now();
    }
    Ok(())
}

/// The bytes of one page read from a relay for a resume.
const RELAY_PAGE_BYTES: usize = 1 << 20;

/// The collection that has just emptied, as its on-empty callback sees it: the callback
/// need not keep a reference to it of its own.
pub(crate) struct Emptied<'a>(&'a Members);

impl Emptied<'_> {
    /// Whether `collection` is (a clone of) this one.
    pub(crate) fn is(&self, collection: &Bare) -> bool {
        std::ptr::eq(self.0, Arc::as_ptr(&collection.0))
    }

    /// Where the collection is in memory, as [`Bare::address`] gives it.
    pub(crate) fn address(&self) -> usize {
        std::ptr::from_ref(self.0).cast::<()>() as usize
    }

    /// As [`Bare::key_hash`].
    pub(crate) fn key_hash(&self) -> u64 {
        self.0.key_hash
    }
}

/// A collection without a backplane of its own, as a map of many keeps it: one pointer,
/// where a [`WebSocketCollection`] is three words (its backplane's handle the other two).
/// [`Rooms`](crate::Rooms) keep their backplane apart, once for all rooms.
#[derive(Clone)]
pub(crate) struct Bare(Arc<Members>);

impl Bare {
    /// A handle to the collection.
    pub(crate) fn collection(&self) -> WebSocketCollection {
        WebSocketCollection {
            members: self.0.clone(),
            relay: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn contains(&self, id: ConnectionId) -> bool {
        self.0.contains(id)
    }

    /// Whether `other` is (a clone of) this collection.
    pub(crate) fn same(&self, other: &Bare) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Where the collection is in memory: what names it while it is alive.
    pub(crate) fn address(&self) -> usize {
        Arc::as_ptr(&self.0).cast::<()>() as usize
    }

    /// The hash of its key, for a room of a [`Rooms`](crate::Rooms) (made by
    /// [`WebSocketCollection::room`]); 0 otherwise.
    pub(crate) fn key_hash(&self) -> u64 {
        self.0.key_hash
    }

    /// The collection behind one of a connection's memberships, if it is one.
    pub(crate) fn of_membership(membership: Arc<dyn Membership>) -> Option<Bare> {
        let any: Arc<dyn std::any::Any + Send + Sync> = membership;
        any.downcast::<Members>().ok().map(Bare)
    }
}

impl WebSocketCollection {
    /// The set alone, without this handle's backplane.
    pub(crate) fn bare(&self) -> Bare {
        Bare(self.members.clone())
    }
}

impl std::fmt::Debug for WebSocketCollection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketCollection")
            .field("len", &self.len())
            .field("topic", &self.topic())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{Members, WebSocketCollection, SHARDS, SMALL_MAX};
    use crate::connection::{Connection, RequestParts};
    use crate::engine::flush::HasCore;
    use crate::engine::queue::Outbound;
    use crate::engine::settings::{Settings, SlowConsumer};
    use crate::fanout::frames::COPY_PER_SHARD_MAX;
    use crate::fanout::history::{History, Lost, LostKind, Position, Tag};
    use crate::protocol::message::Message;
    use bytes::Bytes;

    fn connection() -> Connection {
        let parts = RequestParts::detached(
            &http::Uri::from_static("/"),
            &http::HeaderMap::new(),
            None,
            None,
            0,
        );
        let settings = Settings {
            outbound_queue_capacity: 4,
            slow_consumer: SlowConsumer::DropMessages,
            ..Settings::default()
        };
        Connection::new(
            parts,
            None,
            &crate::engine::shared::Shared::new(
                settings,
                crate::engine::metrics::Metrics::new(),
                usize::MAX,
            ),
            None,
        )
    }

    #[test]
    fn a_history_is_shared_by_clones_and_set_once() {
        let room = WebSocketCollection::new();
        let earlier_clone = room.clone();
        let room = room.with_history(History::new().max_messages(2));
        let _ = room.clone().with_history(History::new().max_messages(100));
        for n in 0..5 {
            earlier_clone.broadcast(format!("{n}"));
        }
        assert_eq!(room.last_position().map(|p| p.offset()), Some(5));
        let first = Position::new(room.last_position().expect("a position").epoch(), 1);
        assert!(
            super::lock(&room.members.history().expect("a history").ring)
                .after(first)
                .is_err(),
            "the first history (2 messages) holds, not the second"
        );
    }

    #[test]
    fn broadcast_queues_the_same_payload_allocation_to_everyone() {
        let room = WebSocketCollection::new();
        let (a, b) = (connection(), connection());
        room.add(a.clone());
        room.add(b.clone());
        let payload = Bytes::from(vec![1u8; COPY_PER_SHARD_MAX + 1]);
        assert_eq!(room.broadcast(payload.clone()), 2);
        for conn in [&a, &b] {
            assert_eq!(conn.core().queue.depth(), 1);
            match conn.core().queue.try_take() {
                Some(Outbound::Data(frame)) => {
                    let bytes = frame.payload();
                    assert_eq!(bytes.as_ptr(), payload.as_ptr(), "payload was copied");
                }
                _ => panic!("expected the queued broadcast"),
            }
        }
    }

    #[test]
    fn small_payloads_are_copied_once_per_shard_at_most() {
        let room = WebSocketCollection::new();
        let members: Vec<_> = (0..SHARDS * 4).map(|_| connection()).collect();
        for conn in &members {
            room.add(conn.clone());
        }
        assert_eq!(room.broadcast(Bytes::from_static(b"small")), members.len());
        let mut pointers: Vec<_> = members
            .iter()
            .map(|conn| match conn.core().queue.try_take() {
                Some(Outbound::Data(frame)) => {
                    assert_eq!(&frame.payload()[..], b"small");
                    frame.payload().as_ptr()
                }
                _ => panic!("expected the queued broadcast"),
            })
            .collect();
        pointers.sort();
        pointers.dedup();
        assert_eq!(pointers.len(), SHARDS, "one shared copy per shard");
    }

    #[test]
    fn a_collection_that_outgrows_one_list_keeps_every_member_once() {
        let room = WebSocketCollection::new();
        let members: Vec<_> = (0..SMALL_MAX + 8).map(|_| connection()).collect();
        for (n, conn) in members.iter().enumerate() {
            assert!(room.add(conn.clone()));
            assert!(!room.add(conn.clone()), "added twice");
            assert_eq!(room.len(), n + 1);
        }
        assert!(room.members.sharded().is_some(), "moved into shards");
        assert_eq!(room.broadcast("one"), members.len());
        for conn in &members {
            assert_eq!(conn.core().queue.depth(), 1, "each member gets it once");
            assert!(room.contains(conn.id()));
        }
        for (n, conn) in members.iter().enumerate() {
            assert!(room.remove(conn.id()).is_some());
            assert!(!room.contains(conn.id()));
            assert_eq!(room.len(), members.len() - n - 1);
        }
        assert!(room.is_empty());
    }

    /// The texts queued to `conn`, taken.
    fn taken(conn: &Connection) -> Vec<String> {
        std::iter::from_fn(|| conn.core().queue.try_take())
            .map(|item| match item {
                Outbound::Data(frame) => String::from_utf8(frame.payload().to_vec()).expect("text"),
                _ => panic!("expected a message"),
            })
            .collect()
    }

    #[test]
    fn a_tag_function_that_panics_costs_its_message_the_tag_only() {
        fn tag(_: &Tag, message: &Message) -> Message {
            assert_ne!(message.as_text(), Some("boom"), "the user's bug");
            Message::from(format!("tagged {}", message.as_text().unwrap_or("")))
        }
        let room = WebSocketCollection::new().with_history(History::new().tag(tag));
        let conn = connection();
        room.add_tagged(conn.clone());
        assert_eq!(room.broadcast("boom"), 1, "delivered untagged");
        // Nothing stays poisoned: the next broadcast is tagged as usual.
        assert_eq!(room.broadcast("fine"), 1);
        assert_eq!(taken(&conn), ["boom", "tagged fine"]);
    }

    #[test]
    fn members_are_told_of_a_loss_before_the_message_after_it() {
        fn notice(lost: &Lost) -> Option<Message> {
            Some(Message::from(match lost.kind {
                LostKind::HistoryReset => "reset".to_owned(),
                LostKind::Skipped(n) => format!("skipped {n}"),
            }))
        }
        fn tag(tag: &Tag, message: &Message) -> Message {
            Message::from(format!(
                "{} {}",
                tag.position.offset(),
                message.as_text().unwrap_or("")
            ))
        }
        let room =
            WebSocketCollection::new().with_history(History::new().tag(tag).lost_notice(notice));
        let (plain, tagged) = (connection(), connection());
        room.add(plain.clone());
        room.add_tagged(tagged.clone());
        let at = |epoch, offset| Some(Position::new(epoch, offset));
        room.members
            .broadcast_at(at(1, 1), Message::from("a"), |_| true);
        room.members
            .broadcast_at(at(1, 2), Message::from("b"), |_| true);
        assert_eq!(taken(&plain), ["a", "b"]);
        assert_eq!(taken(&tagged), ["1 a", "2 b"]);
        room.members
            .broadcast_at(at(1, 4), Message::from("c"), |_| true);
        room.members
            .broadcast_at(at(2, 1), Message::from("d"), |_| true);
        assert_eq!(taken(&plain), ["skipped 1", "c", "reset", "d"]);
        assert_eq!(taken(&tagged), ["skipped 1", "4 c", "reset", "1 d"]);
        // Without a notice function, nothing is sent.
        let quiet = WebSocketCollection::new().with_history(History::new());
        quiet.add(plain.clone());
        quiet
            .members
            .broadcast_at(at(1, 1), Message::from("a"), |_| true);
        quiet
            .members
            .broadcast_at(at(2, 1), Message::from("b"), |_| true);
        assert_eq!(taken(&plain), ["a", "b"]);
    }

    #[test]
    fn full_queue_is_skipped_and_not_counted() {
        let room = WebSocketCollection::new();
        let (a, b) = (connection(), connection());
        room.add(a.clone());
        room.add(b.clone());
        for _ in 0..4 {
            assert_eq!(room.broadcast("fill"), 2);
        }
        let _ = b.core().queue.try_take();
        assert_eq!(room.broadcast("one more"), 1, "a's queue of 4 is full");
        assert_eq!(
            a.send("x"),
            Err(crate::error::SendError::QueueFull { capacity: 4 })
        );
    }

    /// A collection of one member (a user's one tab, a room of one) is one allocation: its
    /// member in place, the rare parts behind one pointer. With the `Arc`'s two counts it
    /// must stay within 88 bytes, which malloc serves from a 96-byte chunk; 8 more would
    /// take a 112-byte one, as it did before the member was in place (and a second
    /// allocation for the member, a 32-byte one).
    #[test]
    fn a_collection_of_one_is_one_allocation_of_at_most_88_bytes() {
        let allocation = std::mem::size_of::<Members>() + 2 * 8;
        assert!(
            allocation <= 88,
            "a collection's shared part is {allocation} bytes with its counts, above 88"
        );
        let room = WebSocketCollection::new();
        let member = connection();
        assert!(room.add(member.clone()));
        let inline = !room.members.small.lock().expect("the lock").list.spilled();
        assert!(
            inline,
            "the one member is in place, not in an allocation of its own"
        );
    }
}

//! Rooms: many collections under keys, created on first join and dropped when empty.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use hashbrown::HashTable;

use crate::connection::Connection;
use crate::engine::id::ConnectionId;
use crate::engine::sync::lock;
use crate::fanout::collection::{
    Bare, Emptied, EmptyCallback, Held, OnEmpty, ResumeProgress, ResumeStep, WebSocketCollection,
};
use crate::fanout::history::{History, HistoryBudget, Position, ResumeError, Resumed};
use crate::fanout::relay::{Relay, RoomDelivery};
use crate::protocol::message::Message;

/// A keyed set of [`WebSocketCollection`]s: chat rooms, game tables, document sessions, or
/// all the tabs of one user.
///
/// Cheap to clone and thread-safe; clones share the rooms. A connection may be in any
/// number of rooms and leaves all of them when it closes. A room exists while it has
/// members: it is created by the first [`join`](Rooms::join) and dropped when its last
/// member leaves or closes.
///
/// ```
/// use websocket_handler::Rooms;
///
/// let rooms: Rooms<String> = Rooms::new();
/// assert_eq!(rooms.broadcast_to(&"lobby".to_string(), "hello"), 0); // no such room yet
/// assert!(rooms.is_empty());
/// ```
///
/// In a handler, join on open and send by key:
///
/// ```
/// use websocket_handler::{Connection, Message, Rooms, WebSocketHandler};
///
/// struct Player { table: u32, tables: Rooms<u32> }
///
/// impl WebSocketHandler for Player {
///     async fn on_open(&mut self, conn: &Connection) {
///         self.tables.join(self.table, conn); // left again on close
///     }
///     async fn on_message(&mut self, conn: &Connection, message: Message) {
///         // To everyone at the table but the player who sent it.
///         self.tables.broadcast_to_except(&self.table, conn.id(), message);
///     }
/// }
/// ```
///
/// To reach every connection of one user (several tabs), key a `Rooms` by user id and
/// `broadcast_to(&user_id, ...)`.
pub struct Rooms<K> {
    shared: Arc<Shared<K>>,
}

struct Shared<K> {
    rooms: Mutex<RoomMap<K>>,
    /// Set by [`Rooms::with_backplane`].
    remote: OnceLock<Remote<K>>,
    /// Set by [`Rooms::with_history`]: every room keeps this much history.
    history: OnceLock<History>,
    /// How many emptied rooms keep their history: [`Rooms::keep_empty_rooms`].
    keep_empty: AtomicUsize,
    /// What the rooms' histories keep, together: [`Rooms::max_history_bytes`].
    budget: Arc<HistoryBudget>,
    /// The callback every room's collection calls once empty ([`Rooms::drop_when_empty`]).
    on_empty: OnceLock<OnEmpty>,
}

struct RoomMap<K> {
    by_key: ByKey<K>,
    /// With a backplane: the same rooms by their name there, for delivering what arrives.
    by_name: HashMap<String, Bare>,
    /// With a history: the rooms that emptied, oldest first, each once. Their history is
    /// kept for the members that come back (see [`Rooms::keep_empty_rooms`]). A room
    /// joined again stays listed until it is next emptied or reaches the front.
    emptied: VecDeque<K>,
}

/// The rooms by key; and by collection, for [`Rooms::rooms_of`] and for the callback that
/// drops a room once empty: a room's collection keeps its key's hash
/// ([`Bare::key_hash`]), under which the room is found by the collection's address (a
/// collection is not freed while it is here, so its address names it). One table, not a
/// second map from address to key: a room of one member (a user's one tab) is some 40
/// bytes smaller.
struct ByKey<K> {
    rooms: HashTable<Room<K>>,
    hasher: RandomState,
}

struct Room<K> {
    key: K,
    collection: Bare,
}

impl<K: Eq + Hash> ByKey<K> {
    fn new() -> Self {
        ByKey {
            rooms: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    /// The hash a room of this key is made with and found under.
    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    fn get(&self, key: &K) -> Option<&Bare> {
        self.get_hashed(self.hash(key), key)
    }

    /// [`get`](Self::get) with the key's hash already made.
    fn get_hashed(&self, hash: u64, key: &K) -> Option<&Bare> {
        let room = self.rooms.find(hash, |room| room.key == *key)?;
        Some(&room.collection)
    }

    /// Adds a room whose key is not here yet, its collection made with the key's hash.
    fn insert(&mut self, key: K, collection: Bare) {
        self.rooms
            .insert_unique(collection.key_hash(), Room { key, collection }, |room| {
                // The stored hash: growing the table calls no `Hash` of the user's.
                room.collection.key_hash()
            });
    }

    fn remove(&mut self, key: &K) -> Option<Bare> {
        let hash = self.hash(key);
        let found = self.rooms.find_entry(hash, |room| room.key == *key).ok()?;
        Some(found.remove().0.collection)
    }

    /// The key of the room whose collection this is, if it is one here.
    fn key_of(&self, collection_hash: u64, address: usize) -> Option<&K> {
        let room = self
            .rooms
            .find(collection_hash, |room| room.collection.address() == address)?;
        Some(&room.key)
    }
}

impl<K> ByKey<K> {
    fn iter(&self) -> impl Iterator<Item = (&K, &Bare)> {
        self.rooms.iter().map(|room| (&room.key, &room.collection))
    }
}

/// Empty rooms whose history is kept by default (with a history), so that a client whose
/// room emptied when it lost its connection can still resume there.
const EMPTY_ROOMS_KEPT: usize = 1024;

/// What all the rooms' histories keep together by default.
const HISTORY_BYTES: usize = 64 << 20;

/// The rooms' link to other processes: one topic for all rooms, each envelope naming its
/// room. One subscription, made once, so a room is reachable from the moment it exists
/// here: no subscription per room that could lag behind its first join.
struct Remote<K> {
    relay: Arc<dyn Relay>,
    name: fn(&K) -> String,
}

impl<K> Clone for Rooms<K> {
    fn clone(&self) -> Self {
        Rooms {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Default for Rooms<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Rooms<K> {
    /// No rooms yet.
    pub fn new() -> Self {
        Rooms {
            shared: Arc::new(Shared {
                rooms: Mutex::new(RoomMap {
                    by_key: ByKey::new(),
                    by_name: HashMap::new(),
                    emptied: VecDeque::new(),
                }),
                remote: OnceLock::new(),
                history: OnceLock::new(),
                keep_empty: AtomicUsize::new(EMPTY_ROOMS_KEPT),
                budget: Arc::new(HistoryBudget::new(HISTORY_BYTES)),
                on_empty: OnceLock::new(),
            }),
        }
    }

    /// Rooms whose broadcasts also go to `relay`, each room named by `name` there; and
    /// where what arrives for a room by that name is to be delivered.
    pub(crate) fn with_relay(
        relay: Arc<dyn Relay>,
        name: fn(&K) -> String,
    ) -> (Self, Weak<dyn RoomDelivery>) {
        let rooms = Self::new();
        let _ = rooms.shared.remote.set(Remote { relay, name });
        let delivery: Arc<dyn RoomDelivery> = rooms.shared.clone();
        let delivery = Arc::downgrade(&delivery);
        (rooms, delivery)
    }

    /// Rooms that each keep `history` of their broadcasts (see [`History`]), for clients
    /// that resume ([`resume`](Rooms::resume)). A room that empties keeps its history for
    /// its members to come back (see [`keep_empty_rooms`](Rooms::keep_empty_rooms)), and
    /// all the histories together are bounded by
    /// [`max_history_bytes`](Rooms::max_history_bytes). Call it before sharing the rooms.
    ///
    /// A room's positions skip the offsets of the other rooms on its backplane topic, so a
    /// room never reports [`LostKind::Skipped`](crate::LostKind::Skipped).
    pub fn with_history(self, history: History) -> Self {
        let _ = self.shared.history.set(History {
            contiguous: false,
            budget: Some(self.shared.budget.clone()),
            ..history
        });
        self
    }

    /// With a history: how many rooms that emptied keep their history, for members that
    /// come back, the oldest emptied going first (default 1,024). Each costs what its
    /// history holds (up to [`History::max_bytes`] of payload, plus some 50 bytes a
    /// message) and the room itself (a few hundred bytes), for as long as it is kept;
    /// `0` drops a room as soon as it empties, its history with it.
    pub fn keep_empty_rooms(self, rooms: usize) -> Self {
        self.shared.keep_empty.store(rooms, Ordering::Relaxed);
        self
    }

    /// With a history: the payload bytes all the rooms' histories keep together (default
    /// 64 MiB), whatever each room's own bound. Past it, the histories of the emptied rooms
    /// go first, the oldest emptied first (the rooms with them); then the room that was
    /// just broadcast to drops its oldest messages (it keeps its newest).
    pub fn max_history_bytes(self, bytes: usize) -> Self {
        self.shared.budget.set_max(bytes);
        self
    }

    /// Adds the connection to `room`, creating the room if needed. Returns `false` if it
    /// was already there or has closed.
    pub fn join(&self, room: K, connection: &Connection) -> bool {
        let mut rooms = self.lock();
        let (collection, made) = self.room_to_join(&mut rooms, &room);
        // Under the lock, so that the room cannot be dropped as empty meanwhile.
        let joined = collection.add(connection.clone());
        self.drop_if_refused(&mut rooms, &room, &collection.bare(), made);
        joined
    }

    /// Like [`join`](Rooms::join), for a connection that gets every message of the room
    /// with its position (see [`WebSocketCollection::add_tagged`]).
    pub fn join_tagged(&self, room: K, connection: &Connection) -> bool {
        let mut rooms = self.lock();
        let (collection, made) = self.room_to_join(&mut rooms, &room);
        let joined = collection.add_tagged(connection.clone());
        self.drop_if_refused(&mut rooms, &room, &collection.bare(), made);
        joined
    }

    /// Adds a connection that was in `room` before and saw its messages up to `after`: it
    /// gets exactly what it missed, then the live messages, tagged. See
    /// [`WebSocketCollection::resume`]; a room unknown here (never joined, or emptied long
    /// ago) answers [`ResumeError::OtherEpoch`].
    pub async fn resume(
        &self,
        room: K,
        connection: &Connection,
        after: &Position,
    ) -> Result<Resumed, ResumeError> {
        let remote = self
            .shared
            .remote
            .get()
            .filter(|remote| remote.relay.ordered());
        let name = remote.map(|remote| (remote.name)(&room));
        let relay = remote.map(|remote| (&remote.relay, name.as_deref()));
        let mut progress = ResumeProgress::new(*after);
        loop {
            let (collection, made) = {
                let mut rooms = self.lock();
                self.room_to_join(&mut rooms, &room)
            };
            let bare = collection.bare();
            // The room may be evicted while the resume awaits the relay or the client: the
            // connection joins only while the map still has this collection, map locked.
            let still_here = || {
                let rooms = self.lock();
                let current = rooms
                    .by_key
                    .get(&room)
                    .is_some_and(|current| current.same(&bare));
                current.then(|| Box::new(rooms) as Box<dyn Held + '_>)
            };
            match collection
                .resume_from(connection, progress, relay, &still_here)
                .await
            {
                ResumeStep::Done(resumed) => {
                    let mut rooms = self.lock();
                    self.drop_if_refused(&mut rooms, &room, &bare, made);
                    return resumed;
                }
                // Replaced meanwhile: go on in the room that is there now.
                ResumeStep::Moved(so_far) => progress = so_far,
            }
        }
    }

    /// The position of the room's last broadcast, if the rooms keep a history.
    pub fn last_position(&self, room: &K) -> Option<Position> {
        self.lock()
            .by_key
            .get(room)
            .and_then(|room| room.collection().last_position())
    }

    /// The room's collection, made if there is none; and whether it was made.
    fn room_to_join(&self, rooms: &mut RoomMap<K>, room: &K) -> (WebSocketCollection, bool) {
        // Hashed once: the key's `Hash` is the user's, and runs under the rooms' lock.
        let hash = rooms.by_key.hash(room);
        if let Some(collection) = rooms.by_key.get_hashed(hash, room) {
            return (collection.collection(), false);
        }
        let mut collection = WebSocketCollection::room(self.drop_when_empty(), hash);
        if let Some(history) = self.shared.history.get() {
            collection = collection.with_history(history.clone());
        }
        if let Some(remote) = self.shared.remote.get() {
            let name = (remote.name)(room);
            rooms.by_name.insert(name, collection.bare());
        }
        rooms.by_key.insert(room.clone(), collection.bare());
        (collection, true)
    }

    /// After a join that was refused (the connection had closed), the room goes again if
    /// the join made it (with a history too: nobody came back to it) or keeps no history.
    fn drop_if_refused(&self, rooms: &mut RoomMap<K>, room: &K, collection: &Bare, made: bool) {
        let this_one = rooms
            .by_key
            .get(room)
            .is_some_and(|current| current.same(collection));
        if this_one && collection.is_empty() && (made || self.shared.history.get().is_none()) {
            rooms.remove(room, self.shared.remote.get());
            rooms.emptied.retain(|kept| kept != room);
        }
    }

    /// Removes the connection from `room`; returns whether it was there. The room is
    /// dropped if that was its last member.
    pub fn leave(&self, room: &K, id: ConnectionId) -> bool {
        // Not under the lock: the removal may drop the room, which takes the lock.
        self.room(room)
            .is_some_and(|collection| collection.remove(id).is_some())
    }

    /// Queues `message` to every member of `room`; returns to how many, in this process: 0
    /// if the room has no members here (with a backplane, its members elsewhere get it
    /// anyway).
    ///
    /// With a backplane, the count is as [`WebSocketCollection::broadcast`] says for each
    /// kind: with an unordered one, the members it was queued to; with an ordered one (the
    /// Redis backplane's default, lossless mode), the room's members here when it was
    /// published, to whom it is queued when it comes back from the backplane, unless by
    /// then they have left, closed or filled their queue. A message the backplane cannot
    /// carry (a room name longer than 65,535 bytes, logged as a warning) reaches nobody
    /// on an ordered backplane: 0.
    pub fn broadcast_to(&self, room: &K, message: impl Into<Message>) -> usize {
        self.send(room, message.into(), None)
    }

    /// Like [`broadcast_to`](Rooms::broadcast_to), but skips the connection `except`
    /// (typically the sender), which is not counted.
    pub fn broadcast_to_except(
        &self,
        room: &K,
        except: ConnectionId,
        message: impl Into<Message>,
    ) -> usize {
        self.send(room, message.into(), Some(except))
    }

    fn send(&self, room: &K, message: Message, except: Option<ConnectionId>) -> usize {
        let remote = self.shared.remote.get();
        if let Some(remote) = remote.filter(|remote| remote.relay.ordered()) {
            // Delivered here too when the relay hands it back, in the one order: to the
            // members then, counted now.
            let members = self.room(room).map_or(0, |local| local.len_except(except));
            let published = remote
                .relay
                .publish(Some(&(remote.name)(room)), &message, except);
            return if published { members } else { 0 };
        }
        // Local members first, so that the backplane adds nothing to their latency.
        let local = self.room(room);
        let queued = match (&local, except) {
            (None, _) => 0,
            (Some(local), None) => local.broadcast_local(message.clone()),
            (Some(local), Some(except)) => local.broadcast_except(except, message.clone()),
        };
        if let Some(local) = local {
            self.shared.keep_within_budget(&local);
        }
        if let Some(remote) = remote {
            remote
                .relay
                .publish(Some(&(remote.name)(room)), &message, None);
        }
        queued
    }

    /// The room's collection, if it has members in this process: to read, or to send to
    /// its members here only.
    ///
    /// Join and leave through [`join`](Rooms::join) and [`leave`](Rooms::leave), not through
    /// the collection: a connection added to it directly may land in a room already
    /// dropped as empty. Its `broadcast` stays in this process, even with a backplane; use
    /// [`broadcast_to`](Rooms::broadcast_to) to reach the room everywhere.
    pub fn room(&self, room: &K) -> Option<WebSocketCollection> {
        self.lock().by_key.get(room).map(Bare::collection)
    }

    /// The room's members in this process, in no particular order.
    pub fn members(&self, room: &K) -> Vec<Connection> {
        self.room(room)
            .map(|collection| collection.connections())
            .unwrap_or_default()
    }

    /// How many members the room has in this process (0 if there is no such room).
    pub fn count(&self, room: &K) -> usize {
        self.room(room).map_or(0, |collection| collection.len())
    }

    /// The rooms with members in this process, in no particular order.
    pub fn rooms(&self) -> Vec<K> {
        self.lock()
            .by_key
            .iter()
            .filter(|(_, collection)| !collection.is_empty())
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The rooms the connection is in: found from the connection's own memberships, at a
    /// cost proportional to them, whatever the number of rooms.
    pub fn rooms_of(&self, connection: &Connection) -> Vec<K> {
        let memberships = connection.memberships();
        let rooms = self.lock();
        // The rooms of this `Rooms` first: only their collections are locked to check.
        memberships
            .into_iter()
            .filter_map(Bare::of_membership)
            .filter_map(|collection| {
                let key = rooms
                    .by_key
                    .key_of(collection.key_hash(), collection.address())?;
                collection.contains(connection.id()).then(|| key.clone())
            })
            .collect()
    }

    /// Number of rooms with members in this process.
    pub fn len(&self) -> usize {
        let rooms = self.lock();
        rooms
            .by_key
            .iter()
            .filter(|(_, room)| !room.is_empty())
            .count()
    }

    /// Whether there are no rooms.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The callback that drops a room once its collection is empty, unless the room has
    /// been made anew meanwhile. With a history, the room is kept among the last emptied
    /// (see [`Rooms::keep_empty_rooms`]), and the oldest of those goes instead. One for all
    /// the rooms, made by the first: it finds the room by its collection's address.
    fn drop_when_empty(&self) -> OnEmpty {
        let callback = self.shared.on_empty.get_or_init(|| {
            let shared: Weak<Shared<K>> = Arc::downgrade(&self.shared);
            Arc::new(EmptyCallback(Box::new(move |members: Emptied<'_>| {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut rooms = lock(&shared.rooms);
                let room = rooms.by_key.key_of(members.key_hash(), members.address());
                let Some(room) = room.cloned() else {
                    return;
                };
                let is_this_one_and_empty = rooms
                    .by_key
                    .get(&room)
                    .is_some_and(|current| current.is_empty() && members.is(current));
                if !is_this_one_and_empty {
                    return;
                }
                if shared.history.get().is_none() {
                    rooms.remove(&room, shared.remote.get());
                    return;
                }
                rooms.emptied.retain(|kept| kept != &room);
                rooms.emptied.push_back(room);
                while rooms.emptied.len() > shared.keep_empty.load(Ordering::Relaxed) {
                    let Some(oldest) = rooms.emptied.pop_front() else {
                        break;
                    };
                    // Only if still empty: it may have been joined again since.
                    if rooms.by_key.get(&oldest).is_some_and(Bare::is_empty) {
                        rooms.remove(&oldest, shared.remote.get());
                    }
                }
            })))
        });
        callback.clone()
    }

    fn lock(&self) -> MutexGuard<'_, RoomMap<K>> {
        lock(&self.shared.rooms)
    }
}

impl<K: Eq + Hash> RoomMap<K> {
    fn remove(&mut self, room: &K, remote: Option<&Remote<K>>) {
        self.by_key.remove(room);
        if let Some(remote) = remote {
            self.by_name.remove(&(remote.name)(room));
        }
    }
}

impl<K: Eq + Hash> Shared<K> {
    /// Keeps the histories within their budget after a broadcast to `touched`: the
    /// histories of emptied rooms go first, oldest first; then `touched` drops its oldest.
    fn keep_within_budget(&self, touched: &WebSocketCollection) {
        if !self.budget.over() {
            return;
        }
        {
            let mut rooms = lock(&self.rooms);
            while self.budget.over() {
                let Some(oldest) = rooms.emptied.pop_front() else {
                    break;
                };
                // Only if still empty: it may have been joined again since. Its history
                // goes with its last handle: here, unless a broadcast holds one now.
                if rooms.by_key.get(&oldest).is_some_and(Bare::is_empty) {
                    rooms.remove(&oldest, self.remote.get());
                }
            }
        }
        if self.budget.over() {
            touched.trim_history_to_budget();
        }
    }
}

impl<K: Eq + Hash + Send + Sync> RoomDelivery for Shared<K> {
    fn deliver(
        &self,
        room: &str,
        position: Option<Position>,
        message: Message,
        except: Option<ConnectionId>,
    ) -> usize {
        let local = lock(&self.rooms).by_name.get(room).map(Bare::collection);
        let Some(local) = local else {
            return 0;
        };
        let queued = local.deliver_local(position, message, except);
        self.keep_within_budget(&local);
        queued
    }
}

impl<K: fmt::Debug> fmt::Debug for Rooms<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rooms = lock(&self.shared.rooms);
        f.debug_map()
            .entries(rooms.by_key.iter().map(|(key, room)| (key, room.len())))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Rooms;
    use crate::connection::{Connection, RequestParts};
    use crate::engine::flush::HasCore;
    use crate::engine::settings::{Settings, SlowConsumer};
    use crate::fanout::history::{History, ResumeError};

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

    fn keys(rooms: &Rooms<&'static str>) -> Vec<&'static str> {
        let mut keys: Vec<_> = rooms.lock().by_key.iter().map(|(key, _)| *key).collect();
        keys.sort_unstable();
        keys
    }

    #[tokio::test]
    async fn a_room_made_for_a_refused_join_or_resume_goes_even_with_a_history() {
        let rooms = Rooms::new().with_history(History::new());
        let closed = connection();
        closed.mark_closed();
        assert!(!rooms.join("a", &closed));
        assert!(!rooms.join_tagged("b", &closed));
        let after = "1.1".parse().expect("a position");
        assert_eq!(
            rooms.resume("c", &closed, &after).await,
            Err(ResumeError::Closed)
        );
        assert!(keys(&rooms).is_empty(), "left: {:?}", keys(&rooms));
    }

    #[test]
    fn emptied_rooms_are_listed_once_and_as_many_kept_as_asked() {
        let rooms = Rooms::new()
            .with_history(History::new())
            .keep_empty_rooms(2);
        let conn = connection();
        for _ in 0..3 {
            rooms.join("a", &conn);
            rooms.leave(&"a", conn.id());
        }
        assert_eq!(rooms.lock().emptied, ["a"]);
        for room in ["b", "c"] {
            rooms.join(room, &conn);
            rooms.leave(&room, conn.id());
        }
        assert_eq!(keys(&rooms), ["b", "c"], "the oldest emptied went");
    }

    #[test]
    fn the_histories_of_all_rooms_stay_within_their_budget_emptied_ones_going_first() {
        let rooms = Rooms::new()
            .with_history(History::new().max_bytes(100))
            .max_history_bytes(250);
        let (one, two, three) = (connection(), connection(), connection());
        rooms.join("a", &one);
        rooms.join("b", &two);
        rooms.join("c", &three);
        let ten = "0123456789";
        for room in ["a", "b", "c"] {
            for _ in 0..10 {
                rooms.broadcast_to(&room, ten);
                let _ = rooms.members(&room)[0].core().queue.try_take();
            }
        }
        let budget = rooms.shared.budget.clone();
        assert!(budget.used() <= 250, "{} kept", budget.used());
        // "a" empties: past the budget, its history is the first to go.
        rooms.leave(&"a", one.id());
        assert_eq!(keys(&rooms), ["a", "b", "c"], "kept while within");
        for _ in 0..2 {
            rooms.broadcast_to(&"c", ten);
        }
        assert_eq!(keys(&rooms), ["b", "c"]);
        assert!(budget.used() <= 250, "{} kept", budget.used());
        drop(rooms);
        assert_eq!(budget.used(), 0, "every history gave its bytes back");
    }

    #[tokio::test]
    async fn a_resume_whose_room_was_evicted_meanwhile_ends_in_the_room_there_now() {
        let rooms = Rooms::new()
            .with_history(History::new())
            .keep_empty_rooms(1);
        let (old, other) = (connection(), connection());
        rooms.join("a", &old);
        rooms.broadcast_to(&"a", "1");
        let seen = rooms.last_position(&"a").expect("a position");
        rooms.broadcast_to(&"a", "2");
        rooms.leave(&"a", old.id());
        // The client comes back with a queue half full: the replay waits for room.
        let back = connection();
        back.send("x").expect("queued");
        back.send("y").expect("queued");
        let resume = {
            let (rooms, back) = (rooms.clone(), back.clone());
            tokio::spawn(async move { rooms.resume("a", &back, &seen).await })
        };
        // The current-thread runtime runs the resume until it waits for room.
        tokio::task::yield_now().await;
        assert!(!back.core().is_closed());
        // Meanwhile "a" is evicted: another room empties, and one is kept.
        rooms.join("b", &other);
        rooms.leave(&"b", other.id());
        assert_eq!(keys(&rooms), ["b"]);
        while back.core().queue.try_take().is_some() {}
        let resumed = tokio::time::timeout(std::time::Duration::from_secs(10), resume)
            .await
            .expect("the resume ends once the queue has room")
            .expect("the resume's task");
        // A room made anew has another history: the client is told, and is in it.
        assert!(
            matches!(resumed, Err(ResumeError::OtherEpoch { .. })),
            "{resumed:?}"
        );
        assert!(rooms
            .room(&"a")
            .is_some_and(|room| room.contains(back.id())));
    }
}

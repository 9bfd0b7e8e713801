//! Rooms: many collections under keys, created on first join and dropped when empty.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use crate::connection::Connection;
use crate::engine::id::ConnectionId;
use crate::engine::sync::lock;
use crate::fanout::collection::WebSocketCollection;
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
/// use websocket_handler::{async_trait, Connection, Message, Rooms, WebSocketHandler};
///
/// struct Player { table: u32, tables: Rooms<u32> }
///
/// #[async_trait]
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
}

struct RoomMap<K> {
    by_key: HashMap<K, WebSocketCollection>,
    /// With a backplane: the same rooms by their name there, for delivering what arrives.
    by_name: HashMap<String, WebSocketCollection>,
}

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
                    by_key: HashMap::new(),
                    by_name: HashMap::new(),
                }),
                remote: OnceLock::new(),
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

    /// Adds the connection to `room`, creating the room if needed. Returns `false` if it
    /// was already there or has closed.
    pub fn join(&self, room: K, connection: &Connection) -> bool {
        let mut rooms = self.lock();
        let collection = match rooms.by_key.get(&room) {
            Some(collection) => collection.clone(),
            None => {
                let collection = WebSocketCollection::new();
                collection.set_on_empty(self.drop_when_empty(room.clone(), &collection));
                if let Some(remote) = self.shared.remote.get() {
                    let name = (remote.name)(&room);
                    rooms.by_name.insert(name, collection.clone());
                }
                rooms.by_key.insert(room.clone(), collection.clone());
                collection
            }
        };
        // Under the lock, so that the room cannot be dropped as empty meanwhile.
        let joined = collection.add(connection.clone());
        if !joined && collection.is_empty() {
            rooms.remove(&room, self.shared.remote.get());
        }
        joined
    }

    /// Removes the connection from `room`; returns whether it was there. The room is
    /// dropped if that was its last member.
    pub fn leave(&self, room: &K, id: ConnectionId) -> bool {
        // Not under the lock: the removal may drop the room, which takes the lock.
        self.room(room)
            .is_some_and(|collection| collection.remove(id).is_some())
    }

    /// Queues `message` to every member of `room`; returns to how many (in this process).
    /// See [`WebSocketCollection::broadcast`].
    pub fn broadcast_to(&self, room: &K, message: impl Into<Message>) -> usize {
        self.send(room, message.into(), None)
    }

    /// Like [`broadcast_to`](Rooms::broadcast_to), but skips the connection `except`
    /// (typically the sender).
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
        // Local members first, so that the backplane adds nothing to their latency.
        let queued = match (self.room(room), except) {
            (None, _) => 0,
            (Some(local), None) => local.broadcast_local(message.clone()),
            (Some(local), Some(except)) => local.broadcast_except(except, message.clone()),
        };
        if let Some(remote) = remote {
            remote.relay.publish(Some(&(remote.name)(room)), &message);
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
        self.lock().by_key.get(room).cloned()
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
        self.lock().by_key.keys().cloned().collect()
    }

    /// The rooms the connection is in.
    pub fn rooms_of(&self, id: ConnectionId) -> Vec<K> {
        self.lock()
            .by_key
            .iter()
            .filter(|(_, collection)| collection.contains(id))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Number of rooms.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether there are no rooms.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The callback that drops `room` once `collection` is empty, unless the room has been
    /// made anew meanwhile.
    fn drop_when_empty(
        &self,
        room: K,
        collection: &WebSocketCollection,
    ) -> impl Fn() + Send + Sync + 'static {
        let shared: Weak<Shared<K>> = Arc::downgrade(&self.shared);
        let members = collection.downgrade();
        move || {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut rooms = lock(&shared.rooms);
            let is_this_one_and_empty = rooms
                .by_key
                .get(&room)
                .is_some_and(|current| current.is_empty() && members.is(current));
            if is_this_one_and_empty {
                rooms.remove(&room, shared.remote.get());
            }
        }
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

impl<K: Send + Sync> RoomDelivery for Shared<K> {
    fn deliver(&self, room: &str, message: Message) -> usize {
        let local = lock(&self.rooms).by_name.get(room).cloned();
        local.map_or(0, |room| room.broadcast_local(message))
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

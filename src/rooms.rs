//! Rooms: many collections under keys, created on first join and dropped when empty.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::backplane::Backplane;
use crate::collection::WebSocketCollection;
use crate::connection::{Connection, ConnectionId};
use crate::message::Message;

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
    rooms: Mutex<HashMap<K, WebSocketCollection>>,
    /// Makes a room's collection: plain, or on a backplane topic.
    make_room: Box<dyn Fn(&K) -> WebSocketCollection + Send + Sync>,
    /// Whether rooms have a backplane, so a room with no members here may have some
    /// elsewhere.
    remote: bool,
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
        Self::with_maker(false, |_| WebSocketCollection::new())
    }

    /// Rooms whose broadcasts reach the same rooms in other processes: room `key` is a
    /// collection on the backplane topic `"{topic_prefix}{key}"` (see
    /// [`WebSocketCollection::with_backplane`]).
    ///
    /// [`broadcast_to`](Rooms::broadcast_to) a room with no members in this process still
    /// publishes, for the members elsewhere; membership queries answer for this process.
    ///
    /// ```
    /// use websocket_handler::backplane::MemoryBackplane;
    /// use websocket_handler::Rooms;
    ///
    /// let rooms: Rooms<String> = Rooms::with_backplane("chat:", MemoryBackplane::new());
    /// ```
    pub fn with_backplane<B>(topic_prefix: impl Into<String>, backplane: B) -> Self
    where
        K: fmt::Display,
        B: Backplane + Clone,
    {
        let prefix = topic_prefix.into();
        Self::with_maker(true, move |key| {
            WebSocketCollection::with_backplane(format!("{prefix}{key}"), backplane.clone())
        })
    }

    fn with_maker(
        remote: bool,
        make_room: impl Fn(&K) -> WebSocketCollection + Send + Sync + 'static,
    ) -> Self {
        Rooms {
            shared: Arc::new(Shared {
                rooms: Mutex::new(HashMap::new()),
                make_room: Box::new(make_room),
                remote,
            }),
        }
    }

    /// Adds the connection to `room`, creating the room if needed. Returns `false` if it
    /// was already there or has closed.
    pub fn join(&self, room: K, connection: &Connection) -> bool {
        let mut rooms = self.lock();
        let collection = match rooms.get(&room) {
            Some(collection) => collection.clone(),
            None => {
                let collection = (self.shared.make_room)(&room);
                collection.set_on_empty(self.drop_when_empty(room.clone(), &collection));
                rooms.insert(room.clone(), collection.clone());
                collection
            }
        };
        // Under the lock, so that the room cannot be dropped as empty meanwhile.
        let joined = collection.add(connection.clone());
        if !joined && collection.is_empty() {
            rooms.remove(&room);
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
        match self.room_or_publisher(room) {
            Some(collection) => collection.broadcast(message),
            None => 0,
        }
    }

    /// Like [`broadcast_to`](Rooms::broadcast_to), but skips the connection `except`
    /// (typically the sender).
    pub fn broadcast_to_except(
        &self,
        room: &K,
        except: ConnectionId,
        message: impl Into<Message>,
    ) -> usize {
        match self.room_or_publisher(room) {
            Some(collection) => collection.broadcast_except(except, message),
            None => 0,
        }
    }

    /// The room's collection, if it has members in this process.
    pub fn room(&self, room: &K) -> Option<WebSocketCollection> {
        self.lock().get(room).cloned()
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
        self.lock().keys().cloned().collect()
    }

    /// The rooms the connection is in.
    pub fn rooms_of(&self, id: ConnectionId) -> Vec<K> {
        self.lock()
            .iter()
            .filter(|(_, collection)| collection.contains(id))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Number of rooms.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are no rooms.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The room; or, with a backplane, a short-lived collection on the room's topic, to
    /// reach its members in other processes.
    fn room_or_publisher(&self, room: &K) -> Option<WebSocketCollection> {
        self.room(room)
            .or_else(|| self.shared.remote.then(|| (self.shared.make_room)(room)))
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
                .get(&room)
                .is_some_and(|current| current.is_empty() && members.is(current));
            if is_this_one_and_empty {
                rooms.remove(&room);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, WebSocketCollection>> {
        lock(&self.shared.rooms)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: fmt::Debug> fmt::Debug for Rooms<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rooms = lock(&self.shared.rooms);
        f.debug_map()
            .entries(rooms.iter().map(|(key, room)| (key, room.len())))
            .finish()
    }
}

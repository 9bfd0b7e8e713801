//! A shared set of live connections with broadcast.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::connection::{Connection, ConnectionId};
use crate::message::Message;

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
}

/// The set itself; connections hold weak references to it to leave on close.
#[derive(Default)]
pub(crate) struct Members {
    map: RwLock<HashMap<ConnectionId, Connection>>,
}

impl Members {
    pub(crate) fn remove(&self, id: ConnectionId) -> Option<Connection> {
        self.map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&id)
    }

    pub(crate) fn contains(&self, id: ConnectionId) -> bool {
        self.read().contains_key(&id)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ConnectionId, Connection>> {
        self.map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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
        connection.clone().join(members, || {
            let mut map = members.map.write().unwrap_or_else(|p| p.into_inner());
            map.insert(connection.id(), connection).is_none()
        })
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
        self.members.read().len()
    }

    /// Whether the collection is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the connections, in no particular order.
    pub fn connections(&self) -> Vec<Connection> {
        self.members.read().values().cloned().collect()
    }

    /// Queues `message` to every open connection and returns to how many it was queued.
    ///
    /// Never waits: a connection whose queue is full, or that is closing, is skipped.
    /// Messages broadcast one after another from one task reach each connection in order.
    pub fn broadcast(&self, message: impl Into<Message>) -> usize {
        self.broadcast_filtered(message.into(), |_| true)
    }

    /// Like [`broadcast`](WebSocketCollection::broadcast), but skips the connection `except`
    /// (typically the sender).
    pub fn broadcast_except(&self, except: ConnectionId, message: impl Into<Message>) -> usize {
        self.broadcast_filtered(message.into(), |id| id != except)
    }

    fn broadcast_filtered(
        &self,
        message: Message,
        include: impl Fn(ConnectionId) -> bool,
    ) -> usize {
        let wire = message.into_wire();
        let map = self.members.read();
        map.values()
            .filter(|connection| include(connection.id()))
            .filter(|connection| connection.send_wire(wire.clone()).is_ok())
            .count()
    }
}

impl std::fmt::Debug for WebSocketCollection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketCollection")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::WebSocketCollection;
    use crate::connection::{Connection, Outbound, RequestParts};
    use bytes::Bytes;
    use tokio_tungstenite::tungstenite;

    fn connection() -> (Connection, tokio::sync::mpsc::Receiver<Outbound>) {
        let parts = RequestParts {
            uri: http::Uri::from_static("/"),
            headers: http::HeaderMap::new(),
            remote_addr: None,
        };
        Connection::new(parts, 4)
    }

    #[test]
    fn broadcast_queues_the_same_payload_allocation_to_everyone() {
        let room = WebSocketCollection::new();
        let (a, mut a_queue) = connection();
        let (b, mut b_queue) = connection();
        room.add(a);
        room.add(b);
        let payload = Bytes::from(vec![1u8; 1000]);
        assert_eq!(room.broadcast(payload.clone()), 2);
        for queue in [&mut a_queue, &mut b_queue] {
            match queue.try_recv() {
                Ok(Outbound::Message(tungstenite::Message::Binary(bytes))) => {
                    assert_eq!(bytes.as_ptr(), payload.as_ptr(), "payload was copied");
                }
                _ => panic!("expected the queued broadcast"),
            }
        }
    }

    #[test]
    fn full_queue_is_skipped_and_not_counted() {
        let room = WebSocketCollection::new();
        let (a, _a_queue) = connection();
        let (b, mut b_queue) = connection();
        room.add(a.clone());
        room.add(b);
        for _ in 0..4 {
            assert_eq!(room.broadcast("fill"), 2);
        }
        let _ = b_queue.try_recv();
        assert_eq!(room.broadcast("one more"), 1, "a's queue of 4 is full");
        assert_eq!(
            a.send("x"),
            Err(crate::SendError::QueueFull { capacity: 4 })
        );
    }
}

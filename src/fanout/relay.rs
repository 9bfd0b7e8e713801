//! The hooks between fan-out and a backplane: a collection (or rooms) hands each broadcast
//! to a [`Relay`] to carry to other processes, and what arrives from them is delivered to a
//! room by its name through a [`RoomDelivery`]. The backplane layer implements the first
//! and calls the second, so fan-out never depends on it.

use crate::protocol::message::Message;

/// Carries a collection's (or a room's) broadcasts to other processes.
pub(crate) trait Relay: Send + Sync + 'static {
    /// The topic other processes receive these broadcasts on.
    fn topic(&self) -> &str;
    /// Publishes `message`, for the whole collection or for one `room` of a `Rooms`.
    fn publish(&self, room: Option<&str>, message: &Message);
}

/// Delivers a message from another process to one room, by its name on the backplane.
pub(crate) trait RoomDelivery: Send + Sync {
    /// Queues `message` to the local members of `room`; returns to how many.
    fn deliver(&self, room: &str, message: Message) -> usize;
}

//! The hooks between fan-out and a backplane: a collection (or rooms) hands each broadcast
//! to a [`Relay`] to carry to other processes, and what arrives from them is delivered to a
//! room by its name through a [`RoomDelivery`]. The backplane layer implements the first
//! and calls the second, so fan-out never depends on it.

use crate::engine::id::ConnectionId;
use crate::fanout::history::{Position, ResumeError};
use crate::protocol::message::Message;

/// One page of a relay's history of a collection or room.
pub(crate) struct MissedMessages {
    /// The messages, oldest first, with their positions.
    pub(crate) messages: Vec<(Position, Message)>,
    /// How far the page reaches (past its last message when other rooms' were passed over).
    pub(crate) through: Position,
    /// Whether it reaches the newest message the relay had when asked.
    pub(crate) complete: bool,
}

/// Carries a collection's (or a room's) broadcasts to other processes. Held as an
/// `Arc<dyn Relay>`, so its async method is declared with `async_trait`.
#[async_trait::async_trait]
pub(crate) trait Relay: Send + Sync + 'static {
    /// The topic other processes receive these broadcasts on.
    fn topic(&self) -> &str;

    /// Publishes `message`, for the whole collection or for one `room` of a `Rooms`; on an
    /// ordered relay, `except` is skipped when it comes back here. Returns whether it was
    /// handed on (a room whose name cannot be carried is not).
    fn publish(&self, room: Option<&str>, message: &Message, except: Option<ConnectionId>) -> bool;

    /// Whether the relay orders the topic's messages for every process, this one included:
    /// then a broadcast is delivered here too only when the relay hands it back, with its
    /// position, so that every process sees one order and one set of positions.
    fn ordered(&self) -> bool;

    /// What an ordered relay keeps of the topic: one page, about `max_bytes`, of the
    /// messages of `room` (or of the whole topic) after `after`.
    async fn missed(
        &self,
        room: Option<&str>,
        after: Position,
        max_bytes: usize,
    ) -> Result<MissedMessages, ResumeError>;
}

/// Delivers a message from another process (or, ordered, from this one) to one room, by
/// its name on the backplane.
pub(crate) trait RoomDelivery: Send + Sync {
    /// Queues `message` to the local members of `room` but `except`, at `position` if the
    /// relay gave one; returns to how many.
    fn deliver(
        &self,
        room: &str,
        position: Option<Position>,
        message: Message,
        except: Option<ConnectionId>,
    ) -> usize;
}

//! The connection layer: the public handle to one connection, the trait an application
//! implements to handle it, and the task that runs it ([`driver`]).

pub(crate) mod driver;
pub(crate) mod handler;
mod request;

pub(crate) use request::RequestParts;
use request::{KeptAddr, KeptRequest};

use std::fmt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};

use http::{HeaderMap, Uri};

use crate::engine::core::{Core, Deflate};
use crate::engine::flush::HasCore;
use crate::engine::id::ConnectionId;
use crate::engine::kept::Successor;
use crate::engine::queue::Rejected;
use crate::engine::shared::Shared;
use crate::engine::sync::lock;
use crate::error::SendError;
use crate::protocol::close::CloseCode;
use crate::protocol::deflate::Agreed;
use crate::protocol::message::Message;

/// A cheap, cloneable handle to one WebSocket connection, usable from any task.
///
/// [`send`](Connection::send) never blocks on the peer: it puts the message in the
/// connection's bounded queue and writes what the socket takes at once; the rest is written
/// by the connection's own task as the socket drains. Clones share one connection.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    request: KeptRequest,
    remote_addr: KeptAddr,
    /// Collections this connection is in, so that closing leaves all of them.
    memberships: Mutex<Vec<Weak<dyn Membership>>>,
}

/// A set of connections (a collection) that a connection leaves when it closes. The
/// connection layer knows sets only through this, so that it does not depend on the
/// fan-out layer above it (which finds its own sets among them as `Any`).
pub(crate) trait Membership: std::any::Any + Send + Sync + 'static {
    /// Removes the connection, if it is there.
    fn remove_member(&self, id: ConnectionId);
    /// Whether the connection is there.
    fn has_member(&self, id: ConnectionId) -> bool;
    /// Puts `successor` where the connection of the same id is (a resumed connection
    /// taking its predecessor's place), at once for every broadcast; false if it is not
    /// there.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    fn replace_member(&self, successor: &Connection) -> bool;
}

impl Connection {
    pub(crate) fn new(
        request: RequestParts,
        deflate: Option<Agreed>,
        shared: &Arc<Shared>,
        id: Option<ConnectionId>,
    ) -> Self {
        let mut core = Core::new(shared);
        core.deflate = Deflate::new(deflate, &shared.settings.deflate);
        if let Some(id) = id {
            // A resumed connection goes on under its predecessor's id.
            core.id = id;
        }
        let inner = Inner {
            core,
            request: request.request,
            remote_addr: request.remote_addr,
            memberships: Mutex::new(Vec::new()),
        };
        Connection {
            inner: Arc::new(inner),
        }
    }

    /// The bytes of the allocation every connection's handles share.
    #[cfg(test)]
    pub(crate) fn shared_size() -> usize {
        std::mem::size_of::<Inner>() + 2 * 8
    }

    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.inner.core.id
    }

    /// The upgrade request's URI (path and query). Kept as text and made into a [`Uri`]
    /// on the first call; [`path`](Self::path) and [`query`](Self::query) need no `Uri`.
    pub fn uri(&self) -> &Uri {
        self.inner.request.uri()
    }

    /// The upgrade request's path, for example `/api/Chat`.
    pub fn path(&self) -> &str {
        self.inner.request.path()
    }

    /// The upgrade request's raw query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.inner.request.query()
    }

    /// One query parameter of the upgrade request, percent-decoded; `None` if it is absent or
    /// not valid UTF-8. See [`query_param`](crate::query_param) to tell those apart.
    pub fn query_param(&self, name: &str) -> Option<String> {
        crate::protocol::query::query_param(self.query()?, name)
            .ok()
            .flatten()
    }

    /// Every value of a repeated query parameter (`?tag=a&tag=b`), in order, percent-decoded;
    /// values that are not valid UTF-8 are left out. See [`query_params`](crate::query_params).
    pub fn query_params(&self, name: &str) -> Vec<String> {
        let query = self.query().unwrap_or("");
        crate::protocol::query::query_params(query, name)
            .filter_map(Result::ok)
            .collect()
    }

    /// The upgrade request's headers, as far as the server keeps them (see
    /// [`ServerBuilder::kept_header_bytes`](crate::ServerBuilder::kept_header_bytes), 4 KiB
    /// by default). The handler's constructor sees the whole request, if it needs more.
    /// They are kept as one compact buffer and made into a `HeaderMap` on the first call,
    /// so a connection that never asks does not pay for one.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.request.headers()
    }

    /// The peer's address, if the server put it in the request's extensions as a
    /// [`SocketAddr`] (see [`WebSocketServer::upgrade`](crate::WebSocketServer::upgrade)).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr.get()
    }

    /// How many messages wait in this connection's outbound queue, and their payload bytes.
    /// A batch the writer has taken but not yet fully written is not counted.
    pub fn queued(&self) -> Queued {
        let (messages, bytes) = self.inner.core.queue.queued();
        Queued { messages, bytes }
    }

    /// The subprotocol chosen in the handshake (see
    /// [`ServerBuilder::protocols`](crate::ServerBuilder::protocols)), if any.
    pub fn protocol(&self) -> Option<&str> {
        self.inner.request.protocol()
    }

    /// Whether the connection is open: not closed and no close requested.
    pub fn is_open(&self) -> bool {
        self.inner.core.is_open()
    }

    /// Queues a text or binary message without waiting.
    ///
    /// Returns [`SendError::Closed`] once the connection is closed or closing, and
    /// [`SendError::QueueFull`] when the peer is too far behind.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let core = &self.inner.core;
        if !core.is_open() {
            // Before compressing it for nothing.
            return Err(SendError::Closed);
        }
        let pushed = core.send_frame(core.frame_for(message.into()))?;
        core.after_push(pushed);
        Ok(())
    }

    /// Queues a text or binary message, waiting while the connection's queue is full
    /// instead of failing: for a server that produces faster than one client reads (tokens
    /// from a model, a log tail, a file), which the slow-consumer policy would otherwise
    /// disconnect. Memory stays within the queue's bounds
    /// ([`ServerBuilder::outbound_queue_bytes`](crate::ServerBuilder::outbound_queue_bytes)).
    ///
    /// Use [`send`](Self::send) for messages that must not wait for one client (a
    /// broadcast's, a chat line): a client that stops reading is then let go by the
    /// slow-consumer policy, while `send_wait` would wait for it until the connection
    /// closes (the idle timeout and keep-alive still end a dead one).
    ///
    /// Cancellation-safe: a future dropped before it resolves has queued nothing. Returns
    /// [`SendError::Closed`] once the connection is closed or closing.
    ///
    /// ```
    /// use websocket_handler::{Connection, Message, WebSocketHandler};
    ///
    /// /// Streams a large log to the client as fast as it reads.
    /// struct Tail;
    ///
    /// impl WebSocketHandler for Tail {
    ///     async fn on_open(&mut self, conn: &Connection) {
    ///         for line in 0..1_000_000 {
    ///             if conn.send_wait(format!("line {line}")).await.is_err() {
    ///                 return; // the client went away
    ///             }
    ///         }
    ///     }
    /// }
    /// ```
    pub async fn send_wait(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let core = &self.inner.core;
        if !core.is_open() && !core.is_resumable() {
            return Err(SendError::Closed);
        }
        let frame = core.frame_for(message.into());
        loop {
            // Not `send_frame`: a full queue here is a reason to wait, not a slow consumer.
            match core.queue.push_data(frame.clone(), core.bounds()) {
                Ok(pushed) => {
                    core.after_push(pushed);
                    return Ok(());
                }
                Err(Rejected::Full { .. }) if core.is_open() || core.is_resumable() => {
                    // Polled, as a resume's replay is: a writer waking a waiter would cost
                    // every idle connection a few bytes, for what few connections do.
                    tokio::time::sleep(SEND_WAIT_POLL).await;
                }
                Err(_) => return Err(SendError::Closed),
            }
        }
    }

    /// Starts the close handshake with `code` and `reason`, behind any messages already
    /// queued. Later sends fail with [`SendError::Closed`]. If the queue is full, the close
    /// frame goes out ahead of what is queued. Whatever the peer does, the connection is gone
    /// within the close timeout from now
    /// ([`ServerBuilder::close_timeout`](crate::ServerBuilder::close_timeout)).
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.inner.core.close(code, reason)
    }

    /// Resolves once the connection has ended (immediately if it already has): its socket
    /// is closed and it has left every collection. Its handler's `on_close` may still be to
    /// come; [`WebSocketServer::close_all`](crate::WebSocketServer::close_all) waits for that.
    pub async fn closed(&self) {
        self.inner.core.closed().await
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.core.is_closed()
    }

    /// Marks the connection closed: it leaves every collection (unless it is resumable:
    /// see [`make_resumable`](Self::make_resumable)) and `closed()` resolves.
    pub(crate) fn mark_closed(&self) {
        let memberships = {
            let mut memberships = lock(&self.inner.memberships);
            self.inner.core.set_closed();
            if self.inner.core.is_resumable() {
                Vec::new()
            } else {
                std::mem::take(&mut *memberships)
            }
        };
        // Waiters are woken whatever happens below.
        let _notify = NotifyClosed(&self.inner.core);
        self.leave(memberships);
    }

    /// Makes the connection resumable on another socket by a protocol above (SignalR's
    /// stateful reconnect): its queue keeps what it sends until [`ack`](Self::ack)ed, at
    /// most `max_messages` and `max_bytes`, and when its socket ends it stays in its
    /// collections, keeping what they send it, until a successor
    /// [takes over](Self::take_over) or it [leaves them all](Self::leave_all).
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn make_resumable(&self, max_messages: usize, max_bytes: usize) {
        self.inner.core.queue.keep(max_messages, max_bytes);
        self.inner.core.set_resumable(true);
    }

    /// From now on, counts the data messages queued to it, for a protocol above that pings
    /// the connections it has not written to lately (SignalR's keep-alive).
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn count_pushes(&self) {
        self.inner.core.queue.count_pushes();
    }

    /// The peer has the messages kept up to number `through`.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn ack(&self, through: u64) {
        self.inner.core.queue.ack(through);
    }

    /// Whether a successor could take over: resumable, and what it kept is whole.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn can_resume(&self) -> bool {
        self.inner.core.is_resumable() && self.inner.core.queue.resumable()
    }

    /// The socket is being replaced: from now on the messages queued are kept only.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn park(&self) {
        self.inner.core.queue.park();
    }

    /// Not to be resumed: it keeps nothing more, and leaves every collection.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn leave_all(&self) {
        self.inner.core.set_resumable(false);
        self.inner.core.queue.forget_kept();
        let memberships = std::mem::take(&mut *lock(&self.inner.memberships));
        self.leave(memberships);
    }

    /// Takes over from `old`, a resumable connection of the same id whose socket is gone
    /// or going: queues `first` (the protocol's text, given the number of the oldest
    /// message kept) and then what `old` kept, before anything else; from then on what is
    /// queued to `old` comes here, after them; and this connection takes `old`'s place in
    /// every collection. False, changing nothing, if `old` cannot be resumed.
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn take_over(&self, old: &Connection, first: impl FnOnce(u64) -> String) -> bool {
        let core = &self.inner.core;
        let successor: Arc<dyn Successor> = Arc::new(self.clone());
        let handed = old.inner.core.queue.hand_on(successor, |kept, frames| {
            let text = first(kept.first());
            match core
                .queue
                .resume(crate::engine::core::text_frame(&text), kept, frames)
            {
                Ok(pushed) => {
                    core.after_push(pushed);
                    true
                }
                Err(_) => false,
            }
        });
        if !handed {
            return false;
        }
        core.set_resumable(true);
        let memberships = std::mem::take(&mut *lock(&old.inner.memberships));
        let mut taken = Vec::with_capacity(memberships.len());
        for members in memberships.iter().filter_map(Weak::upgrade) {
            if members.replace_member(self) {
                taken.push(Arc::downgrade(&members));
            }
        }
        lock(&self.inner.memberships).extend(taken);
        true
    }

    /// Leaves `memberships`, each in turn.
    fn leave(&self, memberships: Vec<Weak<dyn Membership>>) {
        for members in memberships.iter().filter_map(Weak::upgrade) {
            // Leaving may run the user's code (a room key's `Hash` and `Eq`): a panic
            // there must not keep the connection in its other collections.
            let left =
                std::panic::catch_unwind(AssertUnwindSafe(|| members.remove_member(self.id())));
            if left.is_err() {
                tracing::error!(
                    connection = %self.id(),
                    "a panic while the closed connection left a collection (in a room key's \
                     Hash or Eq?); it left the others"
                );
            }
        }
    }

    /// The collections the connection is in.
    pub(crate) fn memberships(&self) -> Vec<Arc<dyn Membership>> {
        lock(&self.inner.memberships)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Runs `insert` under the membership lock if the connection is not closed, and remembers
    /// the collection so that closing leaves it. Returns what `insert` returned.
    pub(crate) fn join<M: Membership>(
        &self,
        members: &Arc<M>,
        insert: impl FnOnce() -> bool,
    ) -> bool {
        let mut memberships = lock(&self.inner.memberships);
        if self.is_closed() {
            return false;
        }
        let inserted = insert();
        memberships.retain(|weak| weak.strong_count() > 0);
        if !memberships
            .iter()
            .any(|weak| std::ptr::addr_eq(weak.as_ptr(), Arc::as_ptr(members)))
        {
            let weak: Weak<dyn Membership> = Arc::downgrade(members) as Weak<dyn Membership>;
            if memberships.len() == memberships.capacity() {
                // Doubling from one, not from four: most connections are in one or two
                // collections (a room, the user's tabs), and 16 bytes each.
                let more = memberships.len().max(1);
                memberships.reserve_exact(more);
            }
            memberships.push(weak);
        }
        inserted
    }

    /// Forgets a collection after this connection was removed from it, unless a concurrent
    /// `join` put it back.
    pub(crate) fn forget<M: Membership>(&self, members: &Arc<M>) {
        let mut memberships = lock(&self.inner.memberships);
        if !members.has_member(self.id()) {
            memberships.retain(|weak| !std::ptr::addr_eq(weak.as_ptr(), Arc::as_ptr(members)));
        }
    }
}

impl Successor for Connection {
    fn forward(&self, frame: crate::protocol::frame::Frame) {
        // Flushed here: the caller flushes the connection it queued to, the predecessor.
        if let Ok(pushed) = self.inner.core.send_frame(frame) {
            self.inner.core.after_push(pushed);
        }
    }
}

impl HasCore for Connection {
    fn core(&self) -> &Core {
        &self.inner.core
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id())
            .field("path", &self.path())
            .field("remote_addr", &self.inner.remote_addr)
            .field("open", &self.is_open())
            .finish()
    }
}

/// Wakes those awaiting [`Core::closed`] when dropped, even by a panic.
struct NotifyClosed<'a>(&'a Core);

impl Drop for NotifyClosed<'_> {
    fn drop(&mut self) {
        self.0.notify_closed();
    }
}

/// What waits in a connection's outbound queue: see [`Connection::queued`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Queued {
    /// Messages.
    pub messages: usize,
    /// Their payload bytes.
    pub bytes: usize,
}

/// How often [`Connection::send_wait`] looks for room in a full queue: the default 1 MiB
/// queue refilled this often carries 500 MB/s, and a waiting sender costs nothing else.
const SEND_WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(2);

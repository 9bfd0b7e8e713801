//! Carrying a collection's broadcasts between server processes.
//!
//! A chat room that outgrows one process needs every server behind the load balancer to
//! deliver every message. A [`WebSocketCollection`] built with
//! [`with_backplane`](crate::WebSocketCollection::with_backplane) does this: each
//! [`broadcast`](crate::WebSocketCollection::broadcast) is published on the collection's
//! *topic*, and every process with a collection on the topic delivers it to its own
//! connections, each client getting it once. A backplane is of one of two kinds
//! ([`Backplane::ordered`]):
//!
//! - **Unordered** ([`MemoryBackplane`], Redis pub/sub): a broadcast is delivered to the
//!   process's own connections first, exactly as without a backplane, and then published.
//!   Every message carries its sender's sequence number: a receiver ignores its own,
//!   delivers each sender's messages in that order, drops any it has already delivered (a
//!   retry after a reconnect), and counts any it never got. A backplane that is down costs
//!   local delivery nothing.
//! - **Ordered** (Redis streams, the Redis backplane's default, lossless mode; NATS
//!   JetStream): a
//!   broadcast is only published, and every process, the sender's included, delivers it
//!   when the backplane hands it back: all of them deliver the same messages in one order,
//!   with the same [`Position`]s, so a client can resume on any of them. The sender's own
//!   clients get it a round trip later, and none while the backplane is down.
//!
//! Either way, publishing only queues, so a broadcast never waits on the network, and what
//! it returns counts this process's connections
//! ([`broadcast`](crate::WebSocketCollection::broadcast) says what, in each kind).
//!
//! Three backplanes come with the crate: [`MemoryBackplane`] joins collections within one
//! process (for tests and examples), `RedisBackplane` (cargo feature `redis`) uses Redis
//! streams, or pub/sub, and `NatsBackplane` (cargo feature `nats`) NATS JetStream streams.
//! Any other transport implements [`Backplane`].
//!
//! ```
//! use websocket_handler::backplane::MemoryBackplane;
//! use websocket_handler::WebSocketCollection;
//!
//! // Two "servers" sharing one topic: in production, two processes sharing one Redis.
//! let bus = MemoryBackplane::new();
//! let room_a = WebSocketCollection::with_backplane("chat", bus.clone());
//! let room_b = WebSocketCollection::with_backplane("chat", bus.clone());
//! // Queued to room_a's own connections (none here) and published to room_b.
//! assert_eq!(room_a.broadcast("hello"), 0);
//! # drop(room_b);
//! ```

mod envelope;
mod memory;
#[cfg(feature = "nats")]
mod nats;
#[cfg(all(fuzzing, feature = "nats"))]
pub(crate) use self::nats::check_batch as check_nats_batch;
#[cfg(feature = "redis")]
mod redis;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::engine::id::ConnectionId;
pub(crate) use crate::engine::sync::lock;
use crate::fanout::collection::{Members, WebSocketCollection};
use crate::fanout::history::{Position, ResumeError};
use crate::fanout::relay::{MissedMessages, Relay, RoomDelivery};
use crate::fanout::rooms::Rooms;
use crate::protocol::message::Message;

pub use self::envelope::EnvelopeError;
#[cfg(feature = "nats")]
pub use self::nats::{NatsBackplane, NatsBackplaneError, NatsBuilder, NatsConfig, NatsStats};
#[cfg(feature = "redis")]
pub use self::redis::{RedisBackplane, RedisBackplaneError, RedisBuilder, RedisConfig, RedisStats};
pub use memory::MemoryBackplane;

/// A transport that carries envelopes between the processes subscribed to a topic.
///
/// The collection does the rest: it encodes each broadcast into an envelope (the sender's
/// id, its sequence number and the message), and its [`Inbox`] decodes what arrives, skips
/// the process's own messages and duplicates, and delivers the rest locally. A transport
/// only has to move bytes.
///
/// Rules for an implementation:
/// - [`publish`](Backplane::publish) never waits: queue and return. It may drop envelopes
///   when it must (a bounded queue while the network is down), and should say so.
/// - Envelopes published on a topic arrive at each subscriber in the order they were
///   published. Delivering one again is harmless (the inbox drops duplicates).
/// - Each subscribing process also receives its own envelopes, or not: either is fine.
///
/// A minimal transport, within one process: it hands each envelope to every inbox on its
/// topic. A network transport does the same from the task that receives:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use websocket_handler::backplane::{Backplane, Inbox};
/// use websocket_handler::{Bytes, WebSocketCollection};
///
/// #[derive(Clone, Default)]
/// struct Loopback {
///     inboxes: Arc<Mutex<HashMap<String, Vec<Inbox>>>>,
/// }
///
/// impl Backplane for Loopback {
///     fn publish(&self, topic: &str, envelope: Bytes) {
///         let inboxes = self.inboxes.lock().expect("unpoisoned").get(topic).cloned();
///         for inbox in inboxes.unwrap_or_default() {
///             // What came from the network may be anything: deliver reports, never panics.
///             if let Err(error) = inbox.deliver(envelope.clone()) {
///                 eprintln!("dropped: {error}");
///             }
///         }
///     }
///     fn subscribe(&self, topic: &str, inbox: Inbox) {
///         let mut inboxes = self.inboxes.lock().expect("unpoisoned");
///         inboxes.entry(topic.to_owned()).or_default().push(inbox);
///     }
/// }
///
/// let transport = Loopback::default();
/// let here = WebSocketCollection::with_backplane("news", transport.clone());
/// let there = WebSocketCollection::with_backplane("news", transport.clone());
/// here.broadcast("reaches `there` (no connections in it yet), and skips `here`");
/// # drop(there);
/// ```
///
/// The trait is used as an object (`Box<dyn Backplane>`), so its one async method,
/// [`missed`](Backplane::missed), is declared with [`async_trait`](macro@crate::async_trait),
/// which the crate re-exports. A backplane that keeps a history and implements `missed`
/// puts the attribute on its `impl` block, as `#[websocket_handler::async_trait]`
/// (without it, rustc reports error E0195, lifetimes that do not match the trait); one
/// that does not, like the one above, needs nothing.
#[async_trait::async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Sends `envelope` to every process subscribed to `topic`.
    fn publish(&self, topic: &str, envelope: Bytes);

    /// Delivers every envelope published on `topic` from now on to `inbox`, until
    /// [`Inbox::is_closed`] says its collection is gone.
    fn subscribe(&self, topic: &str, inbox: Inbox);

    /// A collection on `topic` was dropped: its inbox is closed now, and once no inbox on
    /// `topic` is open, the subscription can end. Called once per dropped collection. The
    /// default does nothing, leaving closed inboxes to be dropped when next seen.
    fn unsubscribe(&self, topic: &str) {
        let _ = topic;
    }

    /// Whether this backplane is *ordered*: it gives each topic's messages one order and a
    /// [`Position`] each, the same in every process, and hands every message back to every
    /// subscriber, the publisher included, through [`Inbox::deliver_at`]. Collections on an
    /// ordered backplane then deliver even their own broadcasts only when it hands them
    /// back, so that every process delivers the same messages in the same order with the
    /// same positions (and a client can resume on any of them). The default is `false`:
    /// each process delivers its own broadcasts at once and the backplane carries them to
    /// the others ([`Inbox::deliver`]).
    fn ordered(&self) -> bool {
        false
    }

    /// For an ordered backplane: one page of the envelopes of `topic` (of its `room`, for
    /// a [`Rooms`]) after `after`, with their positions, oldest first, from what it keeps;
    /// for clients that resume from further back than a process's own history. A page
    /// holds about `max_bytes` of envelopes (at least one, if there is one); the caller
    /// asks again from [`MissedPage::through`] until [`MissedPage::complete`]. The default
    /// keeps nothing ([`ResumeError::NoHistory`]).
    ///
    /// An implementation writes it as an `async fn`, with the
    /// [`async_trait`](macro@crate::async_trait) attribute on its `impl` block:
    ///
    /// ```
    /// use websocket_handler::backplane::{Backplane, Inbox, MissedPage};
    /// use websocket_handler::{async_trait, Bytes, Position, ResumeError};
    ///
    /// struct Keeping;
    ///
    /// #[async_trait]
    /// impl Backplane for Keeping {
    ///     fn publish(&self, _topic: &str, _envelope: Bytes) {}
    ///     fn subscribe(&self, _topic: &str, _inbox: Inbox) {}
    ///     fn ordered(&self) -> bool {
    ///         true
    ///     }
    ///     async fn missed(
    ///         &self,
    ///         _topic: &str,
    ///         _room: Option<&str>,
    ///         after: Position,
    ///         _max_bytes: usize,
    ///     ) -> Result<MissedPage, ResumeError> {
    ///         // A real one reads what it keeps of the topic after `after`.
    ///         Ok(MissedPage::new(Vec::new(), after, true))
    ///     }
    /// }
    /// ```
    async fn missed(
        &self,
        topic: &str,
        room: Option<&str>,
        after: Position,
        max_bytes: usize,
    ) -> Result<MissedPage, ResumeError> {
        let _ = (topic, room, after, max_bytes);
        Err(ResumeError::NoHistory)
    }
}

/// One page of what an ordered backplane keeps: see [`Backplane::missed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissedPage {
    /// The envelopes after the position asked for, with their positions, oldest first.
    pub envelopes: Vec<(Position, Bytes)>,
    /// How far this page reaches: the next page starts after it. It can be past the last
    /// envelope (envelopes of other rooms were passed over).
    pub through: Position,
    /// Whether this page reaches the newest envelope the backplane had when asked.
    pub complete: bool,
}

impl MissedPage {
    /// A page of `envelopes`, reaching `through`, the last one if `complete`.
    pub fn new(envelopes: Vec<(Position, Bytes)>, through: Position, complete: bool) -> Self {
        MissedPage {
            envelopes,
            through,
            complete,
        }
    }
}

/// Whether a network backplane can reach its server, as reported by
/// `RedisBackplane::state` and `NatsBackplane::state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackplaneState {
    /// Connecting for the first time.
    Connecting,
    /// Connected and subscribed, with what queued up meanwhile published: broadcasts flow
    /// between processes.
    Connected,
    /// The connection was lost; retrying with backoff. Local broadcasts keep working, and
    /// publications wait in a bounded queue.
    Reconnecting,
    /// Connected, but the server refuses publications for now (busy, loading, out of
    /// memory, its replicas gone, no leader for a NATS stream...), or a NATS topic cannot be
    /// read for now: publications wait in the bounded queue and are retried in order with
    /// backoff. Nothing is lost, and nothing moves between processes either.
    Retrying,
    /// The backplane's task has ended: its last handle (and collection) was dropped, after
    /// publishing what was queued (for a second at most). Nothing is carried any more.
    Stopped,
}

/// What [`Inbox::deliver`] did with an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered to the local connections.
    Delivered {
        /// Connections the message was queued to.
        queued: usize,
        /// Earlier messages from the same sender that never arrived (a gap in its sequence
        /// numbers), for example dropped while the backplane was down.
        missed: u64,
    },
    /// This collection's own message, already delivered locally.
    Own,
    /// A message from this sender that was delivered already, or older than one that was.
    Duplicate,
    /// The collection is gone; the backplane may drop this inbox.
    Closed,
}

/// Where a backplane hands in envelopes for one collection: see [`Backplane::subscribe`].
///
/// Cheap to clone; holds only a weak reference to the collection.
#[derive(Clone)]
pub struct Inbox {
    shared: Arc<InboxShared>,
}

struct InboxShared {
    target: Target,
    /// The collection's own sender id, to skip its own messages.
    own: SenderId,
    /// Per sender: the last sequence number delivered, and when.
    last_seen: Mutex<HashMap<SenderId, (u64, Instant)>>,
    /// Ordered: the position of the last message delivered.
    last_position: Mutex<Option<Position>>,
    /// Ordered: whom to skip when our own broadcasts come back (see [`Link`]).
    excepts: Arc<Mutex<Excepts>>,
}

/// The connection to skip for each of our own broadcasts on an ordered backplane, by
/// sequence number, until it comes back. Bounded: a broadcast the backplane dropped never
/// comes back.
type Excepts = BTreeMap<u64, ConnectionId>;

/// Broadcasts remembered in [`Excepts`] at most.
const MAX_EXCEPTS: usize = 10_000;

/// Where an inbox delivers.
enum Target {
    /// One collection: envelopes without a room.
    Collection(Weak<Members>),
    /// The rooms of a [`Rooms`](crate::Rooms): envelopes with a room.
    Rooms(Weak<dyn RoomDelivery>),
}

/// Senders remembered at most: every process restart brings new ones.
const MAX_SENDERS: usize = 1024;

/// A sender not heard from for this long is forgotten once the map is full. If it speaks
/// again it counts as new: nothing is missed, and a duplicate from before could slip in.
const QUIET_SENDER: Duration = Duration::from_secs(600);

/// Keeps the per-sender map bounded: past [`MAX_SENDERS`], drops the senders quiet for
/// [`QUIET_SENDER`], or else the quietest one.
fn forget_quiet_senders(last_seen: &mut HashMap<SenderId, (u64, Instant)>, now: Instant) {
    if last_seen.len() < MAX_SENDERS {
        return;
    }
    last_seen.retain(|_, (_, at)| now.duration_since(*at) < QUIET_SENDER);
    if last_seen.len() >= MAX_SENDERS {
        let quietest = last_seen
            .iter()
            .min_by_key(|(_, (_, at))| *at)
            .map(|(sender, _)| *sender);
        if let Some(sender) = quietest {
            last_seen.remove(&sender);
        }
    }
}

/// Identifies one publishing collection, in one process. Random, so that two processes (or
/// one restarted) never share it.
pub(crate) type SenderId = u128;

impl Inbox {
    /// Decodes `envelope` and, unless it is the collection's own or a duplicate, delivers
    /// its message to the collection's local connections: what an unordered backplane
    /// calls with what arrives.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] if `envelope` is not one (truncated, another version, or text that
    /// is not UTF-8). Nothing is delivered then.
    pub fn deliver(&self, envelope: Bytes) -> Result<Delivery, EnvelopeError> {
        self.deliver_inner(envelope, None)
    }

    /// What an ordered backplane (see [`Backplane::ordered`]) calls with each message of the
    /// topic, in the topic's order, with its position: the collection's own messages
    /// included, which are delivered too. Positions of one epoch must increase; a gap in
    /// them is counted in [`Delivery::Delivered`]'s `missed`, and a new epoch (the
    /// backplane lost its history) starts the count over.
    ///
    /// # Errors
    ///
    /// As [`deliver`](Self::deliver).
    pub fn deliver_at(
        &self,
        envelope: Bytes,
        position: Position,
    ) -> Result<Delivery, EnvelopeError> {
        self.deliver_inner(envelope, Some(position))
    }

    fn deliver_inner(
        &self,
        envelope: Bytes,
        position: Option<Position>,
    ) -> Result<Delivery, EnvelopeError> {
        if self.is_closed() {
            return Ok(Delivery::Closed);
        }
        let envelope = envelope::decode(envelope)?;
        let rooms = matches!(self.shared.target, Target::Rooms(_));
        if envelope.room.is_some() != rooms {
            let [got, expected] = if rooms {
                ["collection", "rooms"]
            } else {
                ["room", "collection"]
            };
            return Err(EnvelopeError::WrongTarget { got, expected });
        }
        let own = envelope.sender == self.shared.own;
        if own && position.is_none() {
            return Ok(Delivery::Own);
        }
        // A duplicate still takes its place in the topic's order (a publication retried
        // after a lost reply is there twice): the gap is measured before it is dropped.
        let position_missed = position.map(|position| {
            let mut last = lock(&self.shared.last_position);
            let missed = match *last {
                Some(last) if last.epoch() == position.epoch() => {
                    position.offset().saturating_sub(last.offset() + 1)
                }
                _ => 0,
            };
            *last = Some(position);
            missed
        });
        let seq_missed = {
            let now = Instant::now();
            let mut last_seen = lock(&self.shared.last_seen);
            match last_seen.get_mut(&envelope.sender) {
                Some((last, _)) if envelope.seq <= *last => return Ok(Delivery::Duplicate),
                Some((last, at)) => {
                    let missed = envelope.seq - *last - 1;
                    *last = envelope.seq;
                    *at = now;
                    missed
                }
                None => {
                    forget_quiet_senders(&mut last_seen, now);
                    // Whatever came before we subscribed is not missed.
                    last_seen.insert(envelope.sender, (envelope.seq, now));
                    0
                }
            }
        };
        let missed = match position_missed {
            None => seq_missed,
            Some(missed) => missed,
        };
        let except = if own {
            lock(&self.shared.excepts).remove(&envelope.seq)
        } else {
            None
        };
        let queued = match (&self.shared.target, envelope.room) {
            (Target::Collection(members), _) => members.upgrade().map_or(0, |members| {
                members.broadcast_at(position, envelope.message, |id| Some(id) != except)
            }),
            (Target::Rooms(router), Some(room)) => router.upgrade().map_or(0, |router| {
                router.deliver(&room, position, envelope.message, except)
            }),
            (Target::Rooms(_), None) => 0, // refused above
        };
        Ok(Delivery::Delivered { queued, missed })
    }

    /// Whether the collection (or rooms) behind this inbox has been dropped.
    pub fn is_closed(&self) -> bool {
        match &self.shared.target {
            Target::Collection(members) => members.strong_count() == 0,
            Target::Rooms(router) => router.strong_count() == 0,
        }
    }
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// A collection's attachment to a backplane: its topic and its place in the sequence.
pub(crate) struct Link {
    topic: String,
    sender: SenderId,
    /// The last sequence number used. Numbering and publishing happen under this lock, so
    /// that concurrent broadcasts are published in the order they were numbered.
    seq: Mutex<u64>,
    backplane: Box<dyn Backplane>,
    ordered: bool,
    /// Shared with the inbox: whom to skip when our own broadcasts come back (ordered).
    excepts: Arc<Mutex<Excepts>>,
}

impl Drop for Link {
    /// The last clone of the collection is gone (its members with it, so its inbox is
    /// closed): let the backplane end the subscription.
    fn drop(&mut self) {
        self.backplane.unsubscribe(&self.topic);
    }
}

impl Link {
    /// A link of a new collection (or rooms) on `topic`, not yet subscribed.
    fn new(topic: String, backplane: Box<dyn Backplane>) -> Link {
        Link {
            topic,
            sender: new_sender_id(),
            seq: Mutex::new(0),
            ordered: backplane.ordered(),
            backplane,
            excepts: Arc::default(),
        }
    }

    /// Has what other processes publish on the topic delivered to `target`.
    fn subscribe(&self, target: Target) {
        let inbox = Inbox {
            shared: Arc::new(InboxShared {
                target,
                own: self.sender,
                last_seen: Mutex::new(HashMap::new()),
                last_position: Mutex::new(None),
                excepts: self.excepts.clone(),
            }),
        };
        self.backplane.subscribe(&self.topic, inbox);
    }
}

#[async_trait::async_trait]
impl Relay for Link {
    fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `message` to the other processes (and, ordered, to this one): to their
    /// collection on the topic, or to one of their rooms.
    fn publish(&self, room: Option<&str>, message: &Message, except: Option<ConnectionId>) -> bool {
        if room.is_some_and(|room| room.len() > envelope::MAX_ROOM_LEN) {
            tracing::warn!(topic = %self.topic, "backplane: room name too long to publish");
            return false;
        }
        let mut seq = lock(&self.seq);
        *seq += 1;
        if let (true, Some(except)) = (self.ordered, except) {
            let mut excepts = lock(&self.excepts);
            excepts.insert(*seq, except);
            if excepts.len() > MAX_EXCEPTS {
                excepts.pop_first();
            }
        }
        let envelope = envelope::encode(self.sender, *seq, room, message);
        self.backplane.publish(&self.topic, envelope);
        true
    }

    fn ordered(&self) -> bool {
        self.ordered
    }

    async fn missed(
        &self,
        room: Option<&str>,
        after: Position,
        max_bytes: usize,
    ) -> Result<MissedMessages, ResumeError> {
        let page = self
            .backplane
            .missed(&self.topic, room, after, max_bytes)
            .await?;
        let mut messages = Vec::new();
        for (position, envelope) in page.envelopes {
            // What is not an envelope, or is for another room, is not this room's.
            let Ok(envelope) = envelope::decode(envelope) else {
                continue;
            };
            if envelope.room.as_deref() == room {
                messages.push((position, envelope.message));
            }
        }
        Ok(MissedMessages {
            messages,
            through: page.through,
            complete: page.complete,
        })
    }
}

impl WebSocketCollection {
    /// An empty collection whose broadcasts reach every collection on `topic` in other
    /// processes, through `backplane`, and that delivers theirs to its own connections.
    ///
    /// Membership stays local: [`len`](WebSocketCollection::len) and
    /// [`connections`](WebSocketCollection::connections) count this process's connections.
    /// See [`backplane`](crate::backplane) for the guarantees.
    ///
    /// ```
    /// use websocket_handler::backplane::MemoryBackplane;
    /// use websocket_handler::WebSocketCollection;
    ///
    /// let room = WebSocketCollection::with_backplane("chat", MemoryBackplane::new());
    /// assert_eq!(room.topic(), Some("chat"));
    /// ```
    pub fn with_backplane(topic: impl Into<String>, backplane: impl Backplane) -> Self {
        let link = Arc::new(Link::new(topic.into(), Box::new(backplane)));
        let (collection, members) = WebSocketCollection::with_relay(link.clone());
        link.subscribe(Target::Collection(Arc::downgrade(&members)));
        collection
    }
}

impl<K: Eq + std::hash::Hash + Clone + Send + Sync + 'static> Rooms<K> {
    /// Rooms whose broadcasts reach the rooms of the same name in other processes with a
    /// `Rooms` on `topic`. Room `key` is named `key.to_string()` there, so keys must have
    /// distinct `Display` strings (true of strings and numbers).
    ///
    /// One subscription carries every room, so a room's members here receive what is sent
    /// to it elsewhere from the moment they join. A send to a room with no members here
    /// still reaches its members elsewhere; membership queries answer for this process.
    /// The guarantees are those of [`backplane`](crate::backplane): once per client, each
    /// sender's messages in order.
    ///
    /// ```
    /// use websocket_handler::backplane::MemoryBackplane;
    /// use websocket_handler::Rooms;
    ///
    /// let bus = MemoryBackplane::new(); // in production: a RedisBackplane
    /// let rooms: Rooms<String> = Rooms::with_backplane("chat-rooms", bus);
    /// assert_eq!(rooms.broadcast_to(&"lobby".to_string(), "hello"), 0); // none here
    /// ```
    pub fn with_backplane<B>(topic: impl Into<String>, backplane: B) -> Self
    where
        K: std::fmt::Display,
        B: Backplane,
    {
        let link = Arc::new(Link::new(topic.into(), Box::new(backplane)));
        let (rooms, delivery) = Rooms::with_relay(link.clone(), |key: &K| key.to_string());
        link.subscribe(Target::Rooms(delivery));
        rooms
    }
}

/// A random id: std's `RandomState` is seeded from the operating system's randomness once
/// per thread and changes with every call, mixed here with the time and process id.
fn new_sender_id() -> SenderId {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(now.as_nanos());
        }
        hasher.finish()
    };
    (u128::from(half()) << 64) | u128::from(half())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_map_stays_bounded() {
        let members = Arc::new(Members::default());
        let inbox = inbox(&members);
        for sender in 0..(MAX_SENDERS as u128 * 3) {
            let envelope = envelope::encode(sender + 100, 1, None, &Message::from("m"));
            assert!(matches!(
                inbox.deliver(envelope),
                Ok(Delivery::Delivered { .. })
            ));
        }
        assert!(lock(&inbox.shared.last_seen).len() <= MAX_SENDERS);
    }

    #[test]
    fn sender_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_sender_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    fn inbox(members: &Arc<Members>) -> Inbox {
        Inbox {
            shared: Arc::new(InboxShared {
                target: Target::Collection(Arc::downgrade(members)),
                own: 7,
                last_seen: Mutex::new(HashMap::new()),
                last_position: Mutex::new(None),
                excepts: Arc::default(),
            }),
        }
    }

    #[test]
    fn inbox_skips_own_and_duplicate_messages_and_counts_gaps() {
        let members = Arc::new(Members::default());
        let inbox = inbox(&members);
        let from = |sender, seq| envelope::encode(sender, seq, None, &Message::from("m"));
        assert_eq!(inbox.deliver(from(7, 1)), Ok(Delivery::Own));
        let delivered = |missed| Ok(Delivery::Delivered { queued: 0, missed });
        assert_eq!(
            inbox.deliver(from(1, 5)),
            delivered(0),
            "first seen: no gap"
        );
        assert_eq!(inbox.deliver(from(1, 6)), delivered(0));
        assert_eq!(inbox.deliver(from(1, 6)), Ok(Delivery::Duplicate));
        assert_eq!(inbox.deliver(from(1, 4)), Ok(Delivery::Duplicate));
        assert_eq!(inbox.deliver(from(1, 9)), delivered(2), "7 and 8 missed");
        assert_eq!(
            inbox.deliver(from(2, 1)),
            delivered(0),
            "senders are independent"
        );
        assert!(inbox.deliver(Bytes::from_static(b"junk")).is_err());
        let for_a_room = envelope::encode(1, 20, Some("r"), &Message::from("m"));
        assert_eq!(
            inbox.deliver(for_a_room),
            Err(EnvelopeError::WrongTarget {
                got: "room",
                expected: "collection"
            })
        );
        assert_eq!(
            inbox.deliver(from(1, 10)),
            delivered(0),
            "the refused one left no trace"
        );
        drop(members);
        assert!(inbox.is_closed());
        assert_eq!(inbox.deliver(from(1, 10)), Ok(Delivery::Closed));
    }
}

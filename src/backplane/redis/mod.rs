//! The Redis backplane: one background task per backplane; one Redis stream per topic in
//! lossless mode (`streams`), one pub/sub channel per topic otherwise (here).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::{PushInfo, PushKind};
use tokio::sync::{watch, Notify};

mod cluster;
mod conn;
mod servers;
mod streams;

use conn::Conn;

use super::{lock, Backplane, BackplaneState, Delivery, Inbox, MissedPage};
use crate::fanout::history::{Position, ResumeError};

/// Builds a [`RedisBackplane`]: every setting, with builder-style setters, and
/// [`build`](RedisBuilder::build) at the end ([`RedisBackplane::new`] takes the defaults).
/// The settings are read back with [`RedisBackplane::config`].
///
/// | setting | default |
/// | --- | --- |
/// | [`channel_prefix`](RedisBuilder::channel_prefix) | `websocket-handler:` |
/// | [`max_pending`](RedisBuilder::max_pending) | 10,000 messages |
/// | [`max_pending_bytes`](RedisBuilder::max_pending_bytes) | 64 MiB |
/// | [`lossless`](RedisBuilder::lossless) | on |
/// | [`retention`](RedisBuilder::retention) | 10,000 messages |
/// | [`retention_bytes`](RedisBuilder::retention_bytes) | 16 MiB |
/// | [`room_retention`](RedisBuilder::room_retention) | 1,000 messages, 1 MiB, 24 h |
/// | [`republish_window`](RedisBuilder::republish_window) | 10,000 messages, 8 MiB |
/// | [`reconnect_backoff`](RedisBuilder::reconnect_backoff) | 100 ms to 3 s |
/// | [`connect_timeout`](RedisBuilder::connect_timeout) | 2 s |
/// | [`response_timeout`](RedisBuilder::response_timeout) | 3 s |
/// | [`ping_interval`](RedisBuilder::ping_interval) | 5 s |
///
/// ```
/// use std::time::Duration;
/// use websocket_handler::backplane::RedisBackplane;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackplane::builder("redis://127.0.0.1:6379")
///     .channel_prefix("myapp:")
///     .max_pending(50_000)
///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2))
///     .build()?; // connects in the background
/// assert_eq!(redis.config().channel_prefix(), "myapp:");
/// assert_eq!(redis.config().max_pending_bytes(), 64 << 20);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` makes the backplane"]
pub struct RedisBuilder {
    config: RedisConfig,
}

impl RedisBuilder {
    /// Settings for the Redis server at `url` (`redis://host:port/db`, with an optional
    /// `user:password@`), with the defaults in the table above.
    pub fn new(url: impl Into<String>) -> Self {
        RedisBuilder {
            config: RedisConfig::defaults(url.into()),
        }
    }

    /// Settings for the primary that Redis Sentinel names for `master`: the sentinels at
    /// `sentinels` (`redis://host:port` each, with an optional `user:password@` for the
    /// sentinels themselves) are asked, in turn, on every connect, and the server they
    /// name is used only once it says it is a primary (`ROLE`), so a failover is followed
    /// and a demoted primary (which answers writes with `READONLY`) is left at once. The
    /// primary is reached with the database number and credentials of the first sentinel
    /// URL, so give credentials there only if the sentinels accept the same ones. At least
    /// one URL is needed.
    ///
    /// What a failover does to the lossless mode's promises: Redis replicates
    /// asynchronously, so a new primary may lack the last writes its predecessor
    /// acknowledged. Positions are bound to one Redis run, so a failover always starts a
    /// new epoch (every process counts a history reset, clients are told through
    /// [`History::lost_notice`](crate::History::lost_notice), and positions from before
    /// resume as `OtherEpoch`); what was published lately is published again in the new
    /// epoch and delivered once (each process skips what it already delivered), so live
    /// clients lose nothing and get nothing twice.
    pub fn sentinel<I, S>(sentinels: I, master: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let sentinels: Vec<SecretUrl> = sentinels
            .into_iter()
            .map(|url| SecretUrl(url.into()))
            .collect();
        let first = sentinels
            .first()
            .map(|url| url.0.clone())
            .unwrap_or_default();
        let mut config = RedisConfig::defaults(first);
        config.sentinel = Some((sentinels, master.into()));
        RedisBuilder { config }
    }

    /// Settings for a Redis Cluster (Redis 7 or newer), reached through any of `nodes`
    /// (`redis://host:port` each, with an optional `user:password@`, the same on each):
    /// the backplane asks them for the cluster's layout and then talks to every primary.
    ///
    /// Each topic lives on the primary of its hash slot (all of a topic's keys, its rooms'
    /// included, share one hash tag, `{PREFIX+TOPIC}`), so topics spread over the primaries
    /// and every command stays within one slot. In lossless mode a process reads each
    /// primary's topics on one connection to it, woken by a sharded pub/sub message that the
    /// publish script sends (`SPUBLISH`); in pub/sub mode each topic is a sharded channel
    /// (`SSUBSCRIBE`, `SPUBLISH`), carried by its slot's primary only.
    ///
    /// What the cluster's changes do to the lossless mode:
    /// - **A slot migrated** (`redis-cli --cluster reshard`, `MIGRATE`): redirects are
    ///   followed, and a topic whose keys arrive on another primary keeps its epoch once
    ///   the primary they came from is proven to have handed them over (it runs on, a
    ///   primary, and redirects the topic's keys): nothing is lost or reset.
    /// - **A primary failing over** (killed, or `CLUSTER FAILOVER`): as through
    ///   [`sentinel`](Self::sentinel), a new epoch for each of its topics, counted and told
    ///   ([`History::lost_notice`](crate::History::lost_notice)), and what was published
    ///   lately published again and delivered once. Redis replicates asynchronously, so
    ///   exactly once through a failover is not on offer; a rewind is always reported.
    ///
    /// While any primary is unreachable (a failover under way: by default a cluster refuses
    /// every command then), the backplane reconnects as it would to one server, and
    /// publishing waits, for every topic.
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes: Vec<SecretUrl> = nodes.into_iter().map(|url| SecretUrl(url.into())).collect();
        let first = nodes.first().map(|url| url.0.clone()).unwrap_or_default();
        let mut config = RedisConfig::defaults(first);
        config.cluster = Some(nodes);
        RedisBuilder { config }
    }

    /// The backplane, with these settings: see [`RedisBackplane::new`].
    ///
    /// # Errors
    ///
    /// If the URL is invalid, or there is no tokio runtime to run the background task on.
    pub fn build(self) -> Result<RedisBackplane, RedisBackplaneError> {
        RedisBackplane::with_config(self.config)
    }

    /// Prepended to each topic to make its Redis channel name, so that several applications
    /// can share one Redis. Default `websocket-handler:`.
    pub fn channel_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.channel_prefix = prefix.into();
        self
    }

    /// Messages held for publishing while Redis is unreachable or slow; beyond this, the
    /// oldest are dropped (and counted in [`RedisStats::dropped`]). Default 10,000.
    pub fn max_pending(mut self, messages: usize) -> Self {
        self.config.max_pending = messages.max(1);
        self
    }

    /// Bytes of messages held for publishing, the other bound of the same queue: beyond
    /// it, the oldest are dropped (and counted). Default 64 MiB.
    pub fn max_pending_bytes(mut self, bytes: usize) -> Self {
        self.config.max_pending_bytes = bytes.max(1);
        self
    }

    /// The lossless mode (the default): each topic is a Redis stream that every process
    /// reads from where it left off. Every process delivers every message of a topic
    /// exactly once, in one order, with its position, through dropped and killed
    /// connections and a Redis restart, within the [`retention`](Self::retention); and
    /// clients can resume on any process (see [`History`](crate::History)). The backplane
    /// is *ordered* ([`Backplane::ordered`]): a process delivers its own broadcasts when
    /// they come back from Redis, a round trip later, and none while Redis is down.
    ///
    /// `false`: a pub/sub channel per topic. Cheaper for Redis, and a broadcast reaches
    /// the process's own clients at once, Redis or not; but what is published while a
    /// process is not subscribed (its connection dropped, Redis restarting) never reaches
    /// it, and positions are per process.
    pub fn lossless(mut self, on: bool) -> Self {
        self.config.lossless = on;
        self
    }

    /// In lossless mode, how many messages each topic's stream keeps (about, as `MAXLEN ~`
    /// would: it is trimmed back to this in batches, once it holds 1/16 more, 100 at most):
    /// how far back a process that was away, or a client that resumes, can catch up.
    /// Default 10,000; at least 1.
    pub fn retention(mut self, messages: usize) -> Self {
        self.config.retention = messages.max(1);
        self
    }

    /// In lossless mode, the payload bytes each topic's stream keeps at most (the newest
    /// message is always kept), the other bound of the [`retention`](Self::retention). A
    /// stream that reaches it is trimmed 1/64 below it, so that it is not trimmed again at
    /// every message.
    /// Redis holds more than the payload: about 2x for messages of 64 B, 1.26x at 4 KiB,
    /// 1.07x at 60 KiB (`bench/redis_scale.py`). Default 16 MiB; at least 1.
    pub fn retention_bytes(mut self, bytes: usize) -> Self {
        self.config.retention_bytes = bytes.max(1);
        self
    }

    /// In lossless mode, what each room of a [`Rooms`](crate::Rooms) keeps in Redis of its
    /// own, for clients that resume from further back than a process's history: its last
    /// `messages` (trimmed in batches, like the topic's [`retention`](Self::retention)),
    /// within `bytes` (the newest always kept; trimmed like
    /// [`retention_bytes`](Self::retention_bytes)), for `ttl` after its last message. A room's history is its own: a busy room does not push a quiet one's out,
    /// and a resume reads only its room's messages. It costs Redis a second copy of every
    /// room's recent messages, and about 4.4 KB per room that spoke within `ttl`, however
    /// little it holds (a stream's first node). Default 1,000 messages, 1 MiB, 24 hours; 0 messages keeps
    /// none (resumes then read the topic's stream, shared by all its rooms).
    pub fn room_retention(mut self, messages: usize, bytes: usize, ttl: Duration) -> Self {
        self.config.room_retention = messages;
        self.config.room_retention_bytes = bytes.max(1);
        self.config.room_history_ttl = ttl.max(MIN_WAIT);
        self
    }

    /// In lossless mode, what each process keeps of what it published lately, over all
    /// topics, to publish again if Redis loses it (a restart without its data, a
    /// failover, a flush): the newest `messages`, within `bytes`. It needs to cover what
    /// the other processes may not have read yet when Redis loses it: a few seconds of
    /// this process's publications. Default 10,000 messages, 8 MiB.
    pub fn republish_window(mut self, messages: usize, bytes: usize) -> Self {
        self.config.republish_messages = messages;
        self.config.republish_bytes = bytes;
        self
    }

    /// The wait before reconnecting: `min` after the first failure, doubling up to `max`,
    /// with jitter. Default 100 ms to 3 s; at least 1 ms.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        // Never zero: a zero wait would retry a dead server in a busy loop.
        self.config.reconnect_min = min.max(MIN_WAIT);
        self.config.reconnect_max = max.max(self.config.reconnect_min);
        self
    }

    /// How long connecting may take. Default 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How long Redis may take to answer a publish, subscribe or ping before the connection
    /// is considered lost. Default 3 s.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout;
        self
    }

    /// How often an idle subscription is pinged, to notice a dead connection. Default 5 s;
    /// at least 1 ms.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = interval.max(MIN_WAIT);
        self
    }
}

/// A [`RedisBackplane`]'s settings, read back with [`RedisBackplane::config`]. They are
/// chosen with [`RedisBuilder`], which documents each one and its default.
///
/// ```
/// use websocket_handler::backplane::RedisBackplane;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackplane::new("redis://127.0.0.1:6379")?;
/// assert_eq!(redis.config().url(), "redis://127.0.0.1:6379");
/// assert!(redis.config().lossless());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    url: SecretUrl,
    channel_prefix: String,
    max_pending: usize,
    max_pending_bytes: usize,
    lossless: bool,
    retention: usize,
    retention_bytes: usize,
    republish_messages: usize,
    republish_bytes: usize,
    room_retention: usize,
    room_retention_bytes: usize,
    room_history_ttl: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
    ping_interval: Duration,
    /// Through Sentinel: the sentinels and the master name.
    sentinel: Option<(Vec<SecretUrl>, String)>,
    /// A Redis Cluster: the nodes first asked.
    cluster: Option<Vec<SecretUrl>>,
}

impl RedisConfig {
    /// The defaults (see [`RedisBuilder`]) for the Redis server at `url`.
    fn defaults(url: String) -> Self {
        RedisConfig {
            url: SecretUrl(url),
            channel_prefix: "websocket-handler:".into(),
            max_pending: 10_000,
            max_pending_bytes: 64 << 20,
            lossless: true,
            retention: 10_000,
            retention_bytes: 16 << 20,
            republish_messages: 10_000,
            republish_bytes: 8 << 20,
            room_retention: 1_000,
            room_retention_bytes: 1 << 20,
            room_history_ttl: Duration::from_secs(24 * 3600),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(3),
            ping_interval: Duration::from_secs(5),
            sentinel: None,
            cluster: None,
        }
    }

    /// With [`RedisBuilder::sentinel`]: the sentinels' URLs and the master name.
    pub fn sentinel(&self) -> Option<(Vec<&str>, &str)> {
        let (sentinels, master) = self.sentinel.as_ref()?;
        Some((sentinels.iter().map(|url| url.0.as_str()).collect(), master))
    }

    /// With [`RedisBuilder::cluster`]: the URLs of the nodes first asked.
    pub fn cluster(&self) -> Option<Vec<&str>> {
        let nodes = self.cluster.as_ref()?;
        Some(nodes.iter().map(|url| url.0.as_str()).collect())
    }

    /// What logs name: the URL, the master and its sentinels, or the cluster's nodes
    /// (passwords hidden).
    fn target(&self) -> String {
        let list = |urls: &[SecretUrl]| {
            let urls: Vec<String> = urls.iter().map(ToString::to_string).collect();
            urls.join(",")
        };
        match (&self.sentinel, &self.cluster) {
            (Some((sentinels, master)), _) => {
                format!("{master} through sentinels {}", list(sentinels))
            }
            (None, Some(nodes)) => format!("the cluster of {}", list(nodes)),
            (None, None) => self.url.to_string(),
        }
    }

    /// The Redis URL, as given to [`RedisBuilder::new`] (through Sentinel, the first
    /// sentinel's; in a cluster, the first node's). (`Debug` shows it without its
    /// password, as the backplane's logs and errors do.)
    pub fn url(&self) -> &str {
        &self.url.0
    }

    /// [`RedisBuilder::channel_prefix`].
    pub fn channel_prefix(&self) -> &str {
        &self.channel_prefix
    }

    /// [`RedisBuilder::max_pending`].
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// [`RedisBuilder::max_pending_bytes`].
    pub fn max_pending_bytes(&self) -> usize {
        self.max_pending_bytes
    }

    /// [`RedisBuilder::lossless`].
    pub fn lossless(&self) -> bool {
        self.lossless
    }

    /// [`RedisBuilder::retention`].
    pub fn retention(&self) -> usize {
        self.retention
    }

    /// [`RedisBuilder::retention_bytes`].
    pub fn retention_bytes(&self) -> usize {
        self.retention_bytes
    }

    /// [`RedisBuilder::room_retention`]: messages, bytes and time to live.
    pub fn room_retention(&self) -> (usize, usize, Duration) {
        (
            self.room_retention,
            self.room_retention_bytes,
            self.room_history_ttl,
        )
    }

    /// [`RedisBuilder::republish_window`]: messages and bytes.
    pub fn republish_window(&self) -> (usize, usize) {
        (self.republish_messages, self.republish_bytes)
    }

    /// [`RedisBuilder::reconnect_backoff`]: the shortest and the longest wait.
    pub fn reconnect_backoff(&self) -> (Duration, Duration) {
        (self.reconnect_min, self.reconnect_max)
    }

    /// [`RedisBuilder::connect_timeout`].
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// [`RedisBuilder::response_timeout`].
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// [`RedisBuilder::ping_interval`].
    pub fn ping_interval(&self) -> Duration {
        self.ping_interval
    }
}

/// A Redis URL, which may hold a password: shown without it (`Debug`, `Display`), so that
/// logs and errors do not carry it.
#[derive(Clone)]
struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its password, if any, replaced by `***`: in the user information
    /// (`redis://user:password@host`) or a `pass` query parameter (`redis+unix://`).
    fn redacted(&self) -> String {
        let mut url = self.0.clone();
        if let Some((scheme, rest)) = self.0.split_once("://") {
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            let password = authority.rfind('@').and_then(|at| {
                let colon = authority[..at].find(':')?;
                Some((&authority[..colon], &rest[at..]))
            });
            if let Some((user, after)) = password {
                url = format!("{scheme}://{user}:***{after}");
            }
        }
        if let Some((head, query)) = url.split_once('?') {
            let params: Vec<&str> = query
                .split('&')
                .map(|param| {
                    if param.starts_with("pass=") {
                        "pass=***"
                    } else {
                        param
                    }
                })
                .collect();
            url = format!("{head}?{}", params.join("&"));
        }
        url
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.redacted(), f)
    }
}

/// The shortest wait the settings allow.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Counters of a [`RedisBackplane`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Messages published to Redis.
    pub published: u64,
    /// Messages handed to a local collection or `Rooms` (once per collection): from
    /// other processes, and in lossless mode this process's own too, as they come back.
    /// A message for a room with no member here counts; nothing reaches a connection then.
    pub delivered: u64,
    /// Messages dropped before publishing because more than `max_pending` were waiting.
    pub dropped: u64,
    /// Messages that never arrived: gaps in other processes' sequence numbers (pub/sub), or
    /// in a stream's offsets (lossless: trimmed before this process read them, being away
    /// longer than the retention).
    pub missed: u64,
    /// Messages received from Redis that were not envelopes of this crate.
    pub invalid: u64,
    /// Messages Redis refused to publish (an error reply, such as `NOPERM` from an ACL that
    /// does not allow the channel). Each refusal is logged as an error with Redis's reply,
    /// once per channel and batch; the connection and every other channel carry on.
    pub refused: u64,
    /// Subscriptions Redis refused: messages from other servers on those topics do not
    /// arrive. Logged as an error; not asked again until the subscriptions change.
    pub refused_subscriptions: u64,
    /// Lossless mode: times a topic's history was found lost or rewound (Redis restarted,
    /// from an older snapshot or none, failed over, flushed or evicted it): the topic got
    /// a new epoch, recent messages were published again, and reading started over.
    pub history_resets: u64,
    /// Batches of publications that Redis could not take for a while (`BUSY`, `LOADING`,
    /// `OOM`, `TRYAGAIN`, `MASTERDOWN`, ...) and that were retried after a backoff.
    pub retried: u64,
    /// Times the connection to Redis was lost.
    pub disconnects: u64,
    /// Messages waiting to be published now.
    pub pending: usize,
    /// Their bytes.
    pub pending_bytes: usize,
}

/// A [`Backplane`] over Redis: a stream per topic (lossless, the default) or a pub/sub
/// channel.
///
/// Cheap to clone; clones share one background task and its Redis connections (RESP3, so
/// Redis 6 or newer), which end when the last clone, and the last collection using it, is
/// dropped. One Redis server, the primary that Redis Sentinel names
/// ([`sentinel`](Self::sentinel)), or a Redis Cluster ([`cluster`](Self::cluster)).
///
/// - **Never blocks a broadcast.** Publishing queues the message; the task publishes in
///   order, pipelining whatever has queued up.
/// - **Loses nothing** (lossless mode, the default: see [`RedisBuilder::lossless`]). Each
///   topic is a Redis stream; every process reads it from where it left off, so every
///   process delivers every message once and in one order, through dropped connections
///   and Redis restarts, within the [`retention`](RedisBuilder::retention). Beyond it, what
///   was trimmed unread is counted ([`RedisStats::missed`]) and logged.
/// - **Survives Redis going away.** The task reconnects by itself with backoff, reads (or
///   resubscribes) again, and then publishes what queued up meanwhile (up to
///   [`max_pending`](RedisBuilder::max_pending)). In pub/sub mode local broadcasts work
///   throughout, and messages published while a process's subscription was down do not
///   reach it: Redis pub/sub does not store them. Losses are counted in
///   [`stats`](Self::stats) and logged with `tracing` (a full queue once per outage).
/// - **Ends cleanly.** When the last clone and collection are dropped, the task publishes
///   what is still queued (for a second at most), closes its connections, and the state
///   becomes [`Stopped`](BackplaneState::Stopped).
/// - **Bounded.** What waits to be published is bounded in messages and bytes
///   ([`max_pending`](RedisBuilder::max_pending), [`max_pending_bytes`](RedisBuilder::max_pending_bytes));
///   what other servers publish is delivered to the local connections as the connection
///   reads it, so nothing queues up in between, however slow a publish is.
/// - **Refusals are not outages.** An error reply from Redis that can never succeed (an
///   ACL's `NOPERM` for one channel, say) drops that message or subscription, counts it
///   ([`RedisStats::refused`], [`RedisStats::refused_subscriptions`]) and logs an error
///   with the reply; the connection and every other topic carry on, and nothing is retried
///   in a loop. What Redis cannot do *now* (`BUSY`, `LOADING`, `OOM`, `TRYAGAIN`,
///   `MASTERDOWN`) is retried with backoff, in order ([`RedisStats::retried`]); `READONLY`
///   (a demoted primary) and a lost connection reconnect.
/// - **Told when Redis forgets** (lossless mode): a restart, a failover, a flush or an
///   eviction gives the topic a new epoch, counted in [`RedisStats::history_resets`];
///   see [`RedisBuilder::lossless`].
/// - **Observable.** [`state`](Self::state) and [`state_changes`](Self::state_changes).
///
/// ```no_run
/// use websocket_handler::backplane::RedisBackplane;
/// use websocket_handler::WebSocketCollection;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackplane::new("redis://127.0.0.1:6379")?;
/// let room = WebSocketCollection::with_backplane("chat", redis.clone());
/// // Every process running this reaches every client in "chat".
/// room.broadcast("hello from one of many servers");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
    /// Stops the task when the last clone is dropped.
    _owner: Arc<Owner>,
}

struct Shared {
    config: RedisConfig,
    /// What waits to be published, in order.
    pending: Mutex<Pending>,
    /// Something to publish, subscriptions to change, or stop.
    work: Notify,
    /// Subscriptions changed since the task last looked.
    subscriptions_changed: AtomicBool,
    /// The channels whose subscriptions changed since the task last looked: a change costs
    /// work for its channel only.
    changed: Mutex<HashSet<String>>,
    /// Pub/sub mode: sharded subscriptions that ended (ours, or a cluster's whose slot
    /// moved), to be made again if still wanted.
    ended_subscriptions: Mutex<HashSet<String>>,
    /// A full queue has been reported in the current outage (one warning per outage).
    drop_reported: AtomicBool,
    /// Inboxes by Redis channel name.
    inboxes: Mutex<HashMap<String, Vec<Inbox>>>,
    state: watch::Sender<BackplaneState>,
    stopped: AtomicBool,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    missed: AtomicU64,
    invalid: AtomicU64,
    refused: AtomicU64,
    refused_subscriptions: AtomicU64,
    history_resets: AtomicU64,
    retried: AtomicU64,
    disconnects: AtomicU64,
    /// Lossless mode: the publishing connection while connected, for history lookups.
    connection: Mutex<Option<Conn>>,
    /// Lossless mode: what was published lately, in case Redis loses it.
    recent: Mutex<Recent>,
    /// Lossless mode: history reads for resumes at once, each holding up to the retention
    /// in memory: a crowd resuming together waits its turn instead.
    history_reads: tokio::sync::Semaphore,
}

/// History reads ([`Backplane::missed`]) in flight at once, per backplane.
const HISTORY_READS: usize = 4;

/// Lossless mode: the envelopes this process published lately, over all topics, newest
/// last, within [`RedisBuilder::republish_window`]; and the epoch each topic's went into.
/// Published again if Redis loses them.
#[derive(Default)]
struct Recent {
    list: VecDeque<(Arc<str>, Bytes)>,
    bytes: usize,
    /// By channel: the epoch its publications went into.
    epochs: HashMap<Arc<str>, u64>,
}

impl Recent {
    /// Remembers `envelope`, published on `channel` in `epoch`.
    fn remember(&mut self, channel: &str, envelope: Bytes, epoch: u64, config: &RedisConfig) {
        let channel = match self.epochs.get_key_value(channel) {
            Some((known, _)) => known.clone(),
            None => Arc::from(channel),
        };
        self.epochs.insert(channel.clone(), epoch);
        self.bytes += envelope.len();
        self.list.push_back((channel, envelope));
        while self.list.len() > config.republish_messages || self.bytes > config.republish_bytes {
            let Some((_, gone)) = self.list.pop_front() else {
                break;
            };
            self.bytes -= gone.len();
        }
    }

    /// The epoch `channel`'s publications went into, if it had any.
    fn epoch(&self, channel: &str) -> Option<u64> {
        self.epochs.get(channel).copied()
    }

    /// `channel` is at `epoch` now: if its publications went into another, they are taken
    /// out, oldest first, to be published again; from now on it expects `epoch`.
    fn moved(&mut self, channel: &str, epoch: u64) -> Vec<Bytes> {
        match self.epochs.get_mut(channel) {
            Some(known) if *known != epoch => *known = epoch,
            _ => return Vec::new(),
        }
        self.take(channel)
    }

    /// No collection here listens to `channel` any more: its publications are forgotten.
    fn forget(&mut self, channel: &str) {
        self.epochs.remove(channel);
        self.take(channel);
    }

    fn take(&mut self, channel: &str) -> Vec<Bytes> {
        let mut taken = Vec::new();
        let bytes = &mut self.bytes;
        self.list.retain(|(of, envelope)| {
            if &**of != channel {
                return true;
            }
            *bytes -= envelope.len();
            taken.push(envelope.clone());
            false
        });
        taken
    }
}

/// Channel names and envelopes waiting to be published, bounded in count and bytes.
#[derive(Default)]
struct Pending {
    items: VecDeque<(String, Bytes)>,
    bytes: usize,
}

impl Pending {
    fn push_back(&mut self, item: (String, Bytes)) {
        self.bytes += item.1.len();
        self.items.push_back(item);
    }

    fn push_front(&mut self, item: (String, Bytes)) {
        self.bytes += item.1.len();
        self.items.push_front(item);
    }

    /// Takes up to `n` from the front.
    fn take(&mut self, n: usize) -> Vec<(String, Bytes)> {
        let n = n.min(self.items.len());
        let taken: Vec<_> = self.items.drain(..n).collect();
        self.bytes -= taken
            .iter()
            .map(|(_, envelope)| envelope.len())
            .sum::<usize>();
        taken
    }

    /// Drops the oldest while over either bound; returns how many.
    fn trim(&mut self, config: &RedisConfig) -> usize {
        let mut dropped = 0;
        while self.items.len() > config.max_pending
            || (self.bytes > config.max_pending_bytes && self.items.len() > 1)
        {
            if let Some((_, envelope)) = self.items.pop_front() {
                self.bytes -= envelope.len();
                dropped += 1;
            }
        }
        dropped
    }
}

struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.work.notify_one();
    }
}

/// Why a Redis backplane could not be created.
///
/// Plain data, so that the Redis client the backplane uses can change without changing
/// this type: what the client said is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBackplaneError {
    /// The URL is not one the Redis client can connect to: not `redis://` (or another
    /// scheme it knows), or a host, port or database number that does not parse.
    #[error("invalid Redis URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given, its password (if any) replaced by `***`.
        url: String,
        /// What is wrong with it, as the Redis client said.
        reason: String,
    },
    /// [`RedisBuilder::sentinel`] was given no sentinel URL.
    #[error("a Redis backplane through Sentinel needs at least one sentinel URL")]
    NoSentinels,
    /// [`RedisBuilder::cluster`] was given no node URL.
    #[error("a Redis backplane on a Redis Cluster needs at least one node URL")]
    NoClusterNodes,
    /// Built outside a tokio runtime, where the background task cannot run.
    #[error("a RedisBackplane must be built within a tokio runtime")]
    NoRuntime,
}

impl RedisBackplane {
    /// A backplane on the Redis server at `url` (`redis://host:port/db`, with an optional
    /// `user:password@`), with the default settings (see [`RedisBuilder`]). It starts
    /// connecting in the background and returns at once: broadcasts work before (and
    /// whether or not) Redis is reachable.
    ///
    /// # Errors
    ///
    /// If the URL is invalid, or there is no tokio runtime to run the background task on.
    pub fn new(url: impl Into<String>) -> Result<Self, RedisBackplaneError> {
        RedisBuilder::new(url).build()
    }

    /// A builder, to choose the settings.
    pub fn builder(url: impl Into<String>) -> RedisBuilder {
        RedisBuilder::new(url)
    }

    /// A builder for the primary that Redis Sentinel names for `master`, following
    /// failovers: see [`RedisBuilder::sentinel`].
    ///
    /// ```no_run
    /// use websocket_handler::backplane::RedisBackplane;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sentinels = ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"];
    /// let redis = RedisBackplane::sentinel(sentinels, "mymaster").build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn sentinel<I, S>(sentinels: I, master: impl Into<String>) -> RedisBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisBuilder::sentinel(sentinels, master)
    }

    /// A builder for a Redis Cluster, reached through any of `nodes`: see
    /// [`RedisBuilder::cluster`].
    ///
    /// ```no_run
    /// use websocket_handler::backplane::RedisBackplane;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let nodes = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"];
    /// let redis = RedisBackplane::cluster(nodes).build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster<I, S>(nodes: I) -> RedisBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisBuilder::cluster(nodes)
    }

    /// What [`RedisBuilder::build`] does.
    fn with_config(config: RedisConfig) -> Result<Self, RedisBackplaneError> {
        // The client's error as text: its type stays out of the public API.
        let invalid = |error: redis::RedisError| RedisBackplaneError::InvalidUrl {
            url: config.url.to_string(),
            reason: error.to_string(),
        };
        let client = redis::Client::open(config.url.0.as_str()).map_err(invalid)?;
        // RESP3, whatever the URL says: subscriptions and commands share one connection, and
        // what Redis pushes is handed to us as it is read (see `serve`).
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let node = info.set_redis_settings(resp3);
        let servers = match (&config.sentinel, &config.cluster) {
            (None, None) => servers::Servers::One(redis::Client::open(node).map_err(invalid)?),
            (None, Some(nodes)) => {
                if nodes.is_empty() {
                    return Err(RedisBackplaneError::NoClusterNodes);
                }
                let nodes = nodes
                    .iter()
                    .map(|url| {
                        let invalid = |reason: String| RedisBackplaneError::InvalidUrl {
                            url: url.to_string(),
                            reason,
                        };
                        let info = redis::IntoConnectionInfo::into_connection_info(url.0.as_str())
                            .map_err(|error| invalid(error.to_string()))?;
                        if matches!(info.addr(), redis::ConnectionAddr::Unix(_)) {
                            return Err(invalid(
                                "a cluster's nodes are reached over TCP (they name each other \
                                 by address)"
                                    .to_owned(),
                            ));
                        }
                        let resp3 = info
                            .redis_settings()
                            .clone()
                            .set_protocol(redis::ProtocolVersion::RESP3);
                        Ok(info.set_redis_settings(resp3))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // What the cluster client would refuse (different credentials), refused now.
                redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .build()
                    .map_err(|error| RedisBackplaneError::InvalidUrl {
                        url: config.url.to_string(),
                        reason: error.to_string(),
                    })?;
                servers::Servers::Cluster(nodes)
            }
            (Some((sentinels, _)), _) if sentinels.is_empty() => {
                return Err(RedisBackplaneError::NoSentinels)
            }
            (Some((sentinels, master)), _) => {
                let sentinels = sentinels
                    .iter()
                    .map(|url| {
                        redis::Client::open(url.0.as_str()).map_err(|error| {
                            RedisBackplaneError::InvalidUrl {
                                url: url.to_string(),
                                reason: error.to_string(),
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                servers::Servers::Sentinel {
                    sentinels,
                    master: master.clone(),
                    node,
                    first: std::sync::atomic::AtomicUsize::new(0),
                }
            }
        };
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisBackplaneError::NoRuntime)?;
        let shared = Arc::new(Shared {
            config,
            pending: Mutex::new(Pending::default()),
            work: Notify::new(),
            subscriptions_changed: AtomicBool::new(false),
            drop_reported: AtomicBool::new(false),
            inboxes: Mutex::new(HashMap::new()),
            state: watch::Sender::new(BackplaneState::Connecting),
            stopped: AtomicBool::new(false),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refused_subscriptions: AtomicU64::new(0),
            history_resets: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            changed: Mutex::new(HashSet::new()),
            ended_subscriptions: Mutex::new(HashSet::new()),
            connection: Mutex::new(None),
            recent: Mutex::new(Recent::default()),
            history_reads: tokio::sync::Semaphore::new(HISTORY_READS),
            disconnects: AtomicU64::new(0),
        });
        runtime.spawn(run(shared.clone(), servers));
        Ok(RedisBackplane {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    /// Whether Redis is connected now.
    pub fn state(&self) -> BackplaneState {
        *self.shared.state.borrow()
    }

    /// A receiver that sees every change of [`state`](Self::state), for health checks or
    /// to wait until connected:
    ///
    /// ```no_run
    /// # async fn run(redis: websocket_handler::backplane::RedisBackplane) {
    /// use websocket_handler::backplane::BackplaneState;
    /// let mut state = redis.state_changes();
    /// state.wait_for(|s| *s == BackplaneState::Connected).await.ok();
    /// # }
    /// ```
    pub fn state_changes(&self) -> watch::Receiver<BackplaneState> {
        self.shared.state.subscribe()
    }

    /// The counters so far.
    pub fn stats(&self) -> RedisStats {
        let shared = &self.shared;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let pending = lock(&shared.pending);
        RedisStats {
            published: count(&shared.published),
            delivered: count(&shared.delivered),
            dropped: count(&shared.dropped),
            missed: count(&shared.missed),
            invalid: count(&shared.invalid),
            refused: count(&shared.refused),
            refused_subscriptions: count(&shared.refused_subscriptions),
            history_resets: count(&shared.history_resets),
            retried: count(&shared.retried),
            disconnects: count(&shared.disconnects),
            pending: pending.items.len(),
            pending_bytes: pending.bytes,
        }
    }

    /// The settings the backplane was built with.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }
}

#[async_trait::async_trait]
impl Backplane for RedisBackplane {
    fn publish(&self, topic: &str, envelope: Bytes) {
        let shared = &self.shared;
        let channel = format!("{}{topic}", shared.config.channel_prefix);
        let (was_empty, dropped) = {
            let mut pending = lock(&shared.pending);
            let was_empty = pending.items.is_empty();
            pending.push_back((channel, envelope));
            (was_empty, pending.trim(&shared.config))
        };
        shared.dropped(dropped);
        // The task empties the queue before it waits, so only the first push wakes it.
        if was_empty {
            shared.work.notify_one();
        }
    }

    fn subscribe(&self, topic: &str, inbox: Inbox) {
        let channel = format!("{}{topic}", self.shared.config.channel_prefix);
        lock(&self.shared.inboxes)
            .entry(channel.clone())
            .or_default()
            .push(inbox);
        self.shared.subscriptions_changed(channel);
    }

    fn unsubscribe(&self, topic: &str) {
        // The task drops closed inboxes, and the channels left without any.
        let channel = format!("{}{topic}", self.shared.config.channel_prefix);
        self.shared.subscriptions_changed(channel);
    }

    fn ordered(&self) -> bool {
        self.shared.config.lossless
    }

    async fn missed(
        &self,
        topic: &str,
        room: Option<&str>,
        after: Position,
        max_bytes: usize,
    ) -> Result<MissedPage, ResumeError> {
        if !self.shared.config.lossless {
            return Err(ResumeError::NoHistory);
        }
        let channel = format!("{}{topic}", self.shared.config.channel_prefix);
        let room = room.filter(|_| self.shared.config.room_retention > 0);
        streams::missed(&self.shared, channel, room, after, max_bytes).await
    }
}

impl Shared {
    fn subscriptions_changed(&self, channel: String) {
        lock(&self.changed).insert(channel);
        self.subscriptions_changed.store(true, Ordering::Release);
        self.work.notify_one();
    }

    /// Counts messages dropped from the queue; warns once per outage.
    fn dropped(&self, count: usize) {
        if count == 0 {
            return;
        }
        self.dropped.fetch_add(count as u64, Ordering::Relaxed);
        if !self.drop_reported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_pending = self.config.max_pending,
                max_pending_bytes = self.config.max_pending_bytes,
                "redis backplane: publish queue full, dropping the oldest messages \
                 (counted in RedisStats::dropped)"
            );
        }
    }
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("url", &self.shared.config.url)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Messages per pipelined round trip to Redis.
const PUBLISH_BATCH: usize = 256;

/// How long a backplane whose last handle is gone may take to publish what is still queued.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// The background task: connect, serve until the connection is lost, wait, repeat; until
/// the last handle is dropped.
async fn run(shared: Arc<Shared>, servers: servers::Servers) {
    // Whatever ends the task, even a panic, the state says so.
    struct Ended<'a>(&'a Shared);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            self.0.state.send_replace(BackplaneState::Stopped);
        }
    }
    let _ended = Ended(&shared);

    let mut delay = shared.config.reconnect_min;
    // Lossless mode: where reading stands in each stream, kept across connections.
    let mut read = streams::Streams::default();
    loop {
        let mut connected = false;
        // Through Sentinel, the primary is looked up again on every connect.
        let served = match servers.target(shared.config.connect_timeout).await {
            Ok(target) if shared.config.lossless => {
                streams::serve(&shared, &target, &mut connected, &mut read).await
            }
            Ok(target) => serve(&shared, &target, &mut connected).await,
            Err(no_primary) => Err(no_primary.into()),
        };
        let lost = match served {
            Ok(()) => return, // stopped
            Err(lost) => lost,
        };
        if connected {
            shared.disconnects.fetch_add(1, Ordering::Relaxed);
            delay = shared.config.reconnect_min;
        }
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        shared.state.send_replace(BackplaneState::Reconnecting);
        let wait = jitter(delay);
        tracing::warn!(
            redis = %shared.config.target(),
            error = %lost,
            retry_in = ?wait,
            "redis backplane: {}",
            if connected { "connection lost" } else { "cannot connect" }
        );
        let deadline = tokio::time::Instant::now() + wait;
        // Publishes wake the task too: sleep on until the deadline unless it is stopping.
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = shared.work.notified() => {}
            }
            if shared.stopped.load(Ordering::Acquire) {
                return;
            }
        }
        delay = (delay * 2).min(shared.config.reconnect_max);
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed")]
    Closed,
    #[error(transparent)]
    NoPrimary(#[from] servers::NoPrimary),
}

/// One connection's life: `Ok` once stopped, or why the connection was lost.
///
/// One RESP3 connection carries both directions. What Redis pushes for the subscriptions is
/// delivered from inside the connection's reader, as it is read ([`on_push`]): nothing
/// queues up between the socket and the local connections (their own queues are bounded),
/// however long a publish takes, so memory stays bounded whatever the other servers send.
async fn serve(
    shared: &Arc<Shared>,
    target: &servers::Target,
    connected: &mut bool,
) -> Result<(), SessionError> {
    let config = &shared.config;
    let timed = |timeout: Duration| move |_| SessionError::Timeout(timeout);
    let lost = Arc::new(Notify::new());
    let pushes: conn::Pushes = {
        let (shared, lost) = (shared.clone(), lost.clone());
        Arc::new(move |push: PushInfo| on_push(&shared, &lost, push))
    };
    let mut conn = Conn::open(target, config, config.response_timeout, Some(pushes)).await?;
    lock(&shared.ended_subscriptions).clear();
    let mut subscriptions = Subscriptions::default();
    shared.subscriptions_changed.store(false, Ordering::Release);
    subscriptions.sync(shared, &mut conn).await?;
    // What queued up while disconnected goes out before the state says `Connected`.
    while publish_batch(shared, &mut conn).await? {}
    *connected = true;
    shared.drop_reported.store(false, Ordering::Relaxed);
    shared.state.send_replace(BackplaneState::Connected);
    tracing::info!(redis = %config.target(), "redis backplane: connected");

    loop {
        let more = publish_batch(shared, &mut conn).await?;
        if shared.subscriptions_changed.swap(false, Ordering::AcqRel) {
            subscriptions.sync(shared, &mut conn).await?;
        }
        if shared.stopped.load(Ordering::Acquire) {
            // The last handle is gone: publish what is left, briefly, then end.
            let flush = async {
                while publish_batch(shared, &mut conn).await? {}
                Ok(())
            };
            return match tokio::time::timeout(FINAL_FLUSH, flush).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            };
        }
        if more {
            continue;
        }
        tokio::select! {
            () = shared.work.notified() => {}
            () = lost.notified() => return Err(SessionError::Closed),
            () = tokio::time::sleep(config.ping_interval) => {
                // Quiet for a while: make sure the connection is still alive.
                tokio::time::timeout(config.response_timeout, redis::cmd("PING").query_async::<()>(&mut conn))
                    .await
                    .map_err(timed(config.response_timeout))??;
            }
        }
    }
}

/// The channels this connection is subscribed to, and those Redis refused.
#[derive(Default)]
struct Subscriptions {
    subscribed: HashSet<String>,
    /// Not asked again until the subscriptions change: a refusal (an ACL) would only be
    /// refused again.
    refused: HashSet<String>,
}

impl Subscriptions {
    /// Makes this connection's subscriptions match the channels that have live inboxes:
    /// subscribes to new ones and unsubscribes from those whose collections are all gone.
    /// A channel Redis refuses is reported and left out; only a lost connection is an error.
    async fn sync(&mut self, shared: &Shared, conn: &mut Conn) -> Result<(), SessionError> {
        // Every channel is looked at: what changed is known to be among them.
        lock(&shared.changed).clear();
        // Subscriptions the cluster ended (their slot moved to another primary) are made
        // again, on the slot's primary now.
        for channel in lock(&shared.ended_subscriptions).drain() {
            self.subscribed.remove(&channel);
        }
        let (wanted, unwanted): (Vec<String>, Vec<String>) = {
            let mut inboxes = lock(&shared.inboxes);
            inboxes.retain(|_, list| {
                list.retain(|inbox| !inbox.is_closed());
                !list.is_empty()
            });
            self.refused.retain(|channel| inboxes.contains_key(channel));
            let wanted = inboxes
                .keys()
                .filter(|channel| {
                    !self.subscribed.contains(*channel) && !self.refused.contains(*channel)
                })
                .cloned()
                .collect();
            let unwanted = self
                .subscribed
                .iter()
                .filter(|channel| !inboxes.contains_key(*channel))
                .cloned()
                .collect();
            (wanted, unwanted)
        };
        let timeout = shared.config.response_timeout;
        // One channel per command, so that a refused one does not take the others with it.
        for channel in wanted {
            match tokio::time::timeout(timeout, conn.subscribe(&channel)).await {
                Err(_) => return Err(SessionError::Timeout(timeout)),
                Ok(Ok(())) => {
                    self.subscribed.insert(channel);
                }
                Ok(Err(error)) if is_refusal(&error) => {
                    shared.refused_subscriptions.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        channel,
                        %error,
                        "redis backplane: Redis refused the subscription; messages for this \
                         topic from other servers will not arrive"
                    );
                    self.refused.insert(channel);
                }
                Ok(Err(error)) => return Err(error.into()),
            }
        }
        if !unwanted.is_empty() {
            tokio::time::timeout(timeout, conn.unsubscribe(&unwanted))
                .await
                .map_err(|_| SessionError::Timeout(timeout))??;
            for channel in &unwanted {
                self.subscribed.remove(channel);
            }
        }
        Ok(())
    }
}

/// What an error reply of Redis calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The command can never succeed (`NOPERM` from an ACL, `WRONGTYPE`, a script
    /// error): drop it, count it, report it.
    Permanent,
    /// Redis cannot do it now (`BUSY` running a script, `LOADING` its data, `OOM` over
    /// `maxmemory`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `NOREPLICAS`): retry later.
    Transient,
    /// The connection is gone or points at the wrong server (`READONLY`: a replica, a
    /// demoted primary; `NOSCRIPT`: scripts were flushed, or a node is new; `MOVED` or
    /// `ASK` left over: the cluster's layout changed under us): connect again.
    Reconnect,
}

/// Sorts a failed command: see [`Failure`].
fn classify(error: &redis::RedisError) -> Failure {
    if error.is_unrecoverable_error() || error.is_io_error() || error.is_timeout() {
        return Failure::Reconnect;
    }
    // An error inside a script may name the command's own code after "ERR ...".
    classify_code(
        error.code().unwrap_or_default(),
        error.detail().unwrap_or_default(),
    )
}

/// [`classify`] by an error's code and detail (`CODE detail` as Redis says it).
fn classify_code(code: &str, detail: &str) -> Failure {
    const TRANSIENT: [&str; 7] = [
        "BUSY",
        "LOADING",
        "OOM",
        "TRYAGAIN",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "NOREPLICAS",
    ];
    // `MOVED` and `ASK` that the cluster client gave up following: its view of the slots is
    // stale, so it starts over.
    const RECONNECT: [&str; 4] = ["READONLY", "NOSCRIPT", "MOVED", "ASK"];
    let names = |word: &str| code == word || detail.starts_with(&format!("{word} "));
    if RECONNECT.iter().any(|word| names(word)) {
        Failure::Reconnect
    } else if TRANSIENT.iter().any(|word| names(word)) {
        Failure::Transient
    } else {
        Failure::Permanent
    }
}

/// Whether Redis refused a command for good (see [`Failure::Permanent`]).
fn is_refusal(error: &redis::RedisError) -> bool {
    classify(error) == Failure::Permanent
}

/// Publishes the oldest queued messages, up to a batch, in one pipelined round trip.
/// Returns whether more are queued.
///
/// A batch whose connection fails goes back to the front of the queue, to be sent again
/// after reconnecting (receivers drop whatever part of it had arrived). A message Redis
/// refuses (an error reply) is dropped, counted in [`RedisStats::refused`] and logged with
/// the reply, once per channel; the rest of the batch, and of the queue, goes on.
async fn publish_batch(shared: &Shared, conn: &mut Conn) -> Result<bool, SessionError> {
    let batch = lock(&shared.pending).take(PUBLISH_BATCH);
    if batch.is_empty() {
        return Ok(false);
    }
    let publish = conn.publish_command();
    // By channel, in the order they first appear: its messages, in order. In a cluster
    // each channel's are one pipeline, so that they reach Redis in their order.
    let mut groups: Vec<Vec<redis::Cmd>> = Vec::new();
    // Of each message of the batch: its group, and its place in it.
    let mut places: Vec<(usize, usize)> = Vec::with_capacity(batch.len());
    {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (channel, envelope) in &batch {
            let group = *index.entry(channel).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            let mut command = redis::cmd(publish);
            command.arg(channel).arg(envelope.as_ref());
            places.push((group, groups[group].len()));
            groups[group].push(command);
        }
    }
    let mut starts = Vec::with_capacity(groups.len());
    let mut next = 0;
    for group in &groups {
        starts.push(next);
        next += group.len();
    }
    // The answers come group by group: back in the batch's order.
    let answers = conn.run_groups(groups).await.map(|answers| {
        let mut answers: Vec<Option<redis::RedisResult<redis::Value>>> =
            answers.into_iter().map(Some).collect();
        places
            .iter()
            .map(|&(group, at)| {
                answers
                    .get_mut(starts[group] + at)
                    .and_then(Option::take)
                    .unwrap_or(Ok(redis::Value::Nil))
            })
            .collect::<Vec<_>>()
    });
    let results = match answers {
        Ok(results) => results,
        Err(error) => {
            let dropped = {
                let mut pending = lock(&shared.pending);
                for item in batch.into_iter().rev() {
                    pending.push_front(item);
                }
                pending.trim(&shared.config)
            };
            shared.dropped(dropped);
            return Err(error.into());
        }
    };
    let mut published = 0;
    let mut refused_channels = HashSet::new();
    for ((channel, _), result) in batch.iter().zip(results) {
        match result {
            Ok(_) => published += 1,
            Err(error) if is_refusal(&error) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                if refused_channels.insert(channel.as_str()) {
                    tracing::error!(
                        channel,
                        %error,
                        "redis backplane: Redis refused to publish; the message is dropped"
                    );
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    shared.published.fetch_add(published, Ordering::Relaxed);
    Ok(!lock(&shared.pending).items.is_empty())
}

/// What Redis pushes: a message on a subscribed channel is delivered at once; a lost
/// connection wakes the task.
fn on_push(shared: &Shared, lost: &Notify, push: PushInfo) {
    match push.kind {
        // `smessage`: a sharded channel's, in a cluster.
        PushKind::Message | PushKind::SMessage => {
            let mut data = push.data.into_iter();
            let (Some(redis::Value::BulkString(channel)), Some(redis::Value::BulkString(payload))) =
                (data.next(), data.next())
            else {
                shared.invalid.fetch_add(1, Ordering::Relaxed);
                return;
            };
            dispatch(
                shared,
                &String::from_utf8_lossy(&channel),
                Bytes::from(payload),
            );
        }
        PushKind::SUnsubscribe => {
            // Ours, or the cluster's when the channel's slot moved: the task subscribes again
            // to what is still wanted.
            if let Some(redis::Value::BulkString(channel)) = push.data.first() {
                lock(&shared.ended_subscriptions).insert(String::from_utf8_lossy(channel).into());
                shared.subscriptions_changed.store(true, Ordering::Release);
                shared.work.notify_one();
            }
        }
        PushKind::Disconnection => lost.notify_one(),
        _ => {}
    }
}

/// Hands a message from Redis to the inboxes of its channel.
fn dispatch(shared: &Shared, channel: &str, envelope: Bytes) {
    let inboxes = {
        let mut all = lock(&shared.inboxes);
        let Some(inboxes) = all.get_mut(channel) else {
            return;
        };
        inboxes.retain(|inbox| !inbox.is_closed());
        inboxes.clone()
    };
    for inbox in inboxes {
        match inbox.deliver(envelope.clone()) {
            Ok(Delivery::Delivered { missed, .. }) => {
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if missed > 0 {
                    shared.missed.fetch_add(missed, Ordering::Relaxed);
                    tracing::warn!(
                        channel,
                        missed,
                        "redis backplane: messages from another server never arrived"
                    );
                }
            }
            Ok(Delivery::Own | Delivery::Duplicate | Delivery::Closed) => {}
            Err(error) => {
                shared.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel, %error, "redis backplane: ignored a message");
            }
        }
    }
}

/// `delay` give or take a quarter, so that servers that lost Redis together do not all
/// come back in the same instant.
fn jitter(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let quarter = delay / 4;
    let spread = quarter.as_nanos() as u64 * 2;
    if spread == 0 {
        return delay;
    }
    delay - quarter + Duration::from_nanos(random % spread)
}

#[cfg(test)]
mod tests {
    use super::{jitter, Pending, Recent, RedisBuilder};
    use bytes::Bytes;
    use std::time::Duration;

    #[test]
    fn the_pending_queue_is_bounded_in_messages_and_in_bytes() {
        let config = RedisBuilder::new("redis://127.0.0.1")
            .max_pending(3)
            .max_pending_bytes(100)
            .config;
        let mut pending = Pending::default();
        let item = |len: usize| ("c".to_owned(), Bytes::from(vec![0u8; len]));
        for _ in 0..5 {
            pending.push_back(item(10));
        }
        assert_eq!(pending.trim(&config), 2, "beyond 3 messages");
        assert_eq!((pending.items.len(), pending.bytes), (3, 30));
        pending.push_back(item(90));
        assert_eq!(pending.trim(&config), 2, "beyond 100 bytes, oldest first");
        assert_eq!((pending.items.len(), pending.bytes), (2, 100));
        pending.push_back(item(500));
        assert_eq!(
            pending.trim(&config),
            2,
            "a message larger than the bound stays alone"
        );
        assert_eq!((pending.items.len(), pending.bytes), (1, 500));
        assert_eq!(pending.take(10).len(), 1);
        assert_eq!(pending.bytes, 0);
    }

    #[test]
    fn what_is_kept_to_publish_again_is_bounded_over_all_topics() {
        let config = RedisBuilder::new("redis://127.0.0.1")
            .republish_window(3, 100)
            .config;
        let mut recent = Recent::default();
        let envelope = |len: usize| Bytes::from(vec![0u8; len]);
        for channel in ["a", "b", "a", "b", "a"] {
            recent.remember(channel, envelope(10), 7, &config);
        }
        assert_eq!((recent.list.len(), recent.bytes), (3, 30), "the newest 3");
        recent.remember("c", envelope(90), 7, &config);
        assert_eq!(
            (recent.list.len(), recent.bytes),
            (2, 100),
            "within 100 bytes"
        );
        assert!(recent.moved("a", 7).is_empty(), "same epoch: nothing lost");
        assert_eq!(
            recent.moved("a", 8).len(),
            1,
            "a's one left, to publish again"
        );
        assert_eq!(recent.epoch("a"), Some(8));
        recent.forget("c");
        assert_eq!(
            (recent.list.len(), recent.bytes, recent.epoch("c")),
            (0, 0, None)
        );
    }

    #[test]
    fn waits_are_never_zero() {
        let config = RedisBuilder::new("redis://127.0.0.1")
            .ping_interval(Duration::ZERO)
            .reconnect_backoff(Duration::ZERO, Duration::ZERO)
            .config;
        assert!(config.ping_interval > Duration::ZERO);
        assert!(config.reconnect_min > Duration::ZERO);
        assert!(config.reconnect_max >= config.reconnect_min);
    }

    #[test]
    fn a_url_is_shown_without_its_password() {
        let shown = |url: &str| super::SecretUrl(url.to_owned()).to_string();
        assert_eq!(
            shown("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(shown("redis://ann@host"), "redis://ann@host", "no password");
        assert_eq!(shown("redis://:s3cret@host:6379"), "redis://:***@host:6379");
        assert_eq!(
            shown("rediss://ann:s3cret@host/2"),
            "rediss://ann:***@host/2"
        );
        assert_eq!(
            shown("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(shown("not a url"), "not a url");
        let config = RedisBuilder::new("redis://ann:s3cret@host").config;
        assert!(!format!("{config:?}").contains("s3cret"), "{config:?}");
        assert_eq!(config.url(), "redis://ann:s3cret@host");
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let wait = jitter(Duration::from_millis(400));
            assert!(wait >= Duration::from_millis(300) && wait < Duration::from_millis(500));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}

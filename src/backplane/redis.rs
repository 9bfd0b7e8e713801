//! The Redis backplane: one pub/sub channel per topic, one background task per backplane.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionLike, PubSubSink};
use redis::AsyncConnectionConfig;
use tokio::sync::{watch, Notify};

use super::{lock, Backplane, BackplaneState, Delivery, Inbox};

/// Settings for a [`RedisBackplane`], with builder-style setters.
///
/// ```
/// use std::time::Duration;
/// use websocket_handler::backplane::RedisConfig;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379")
///     .channel_prefix("myapp:")
///     .max_pending(50_000)
///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2));
/// assert_eq!(config.get_channel_prefix(), "myapp:");
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    url: String,
    channel_prefix: String,
    max_pending: usize,
    reconnect_min: Duration,
    reconnect_max: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
    ping_interval: Duration,
}

impl RedisConfig {
    /// Settings for the Redis server at `url` (`redis://host:port/db`, with an optional
    /// `user:password@`), with the defaults below.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            channel_prefix: "websocket-handler:".into(),
            max_pending: 10_000,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(3),
            ping_interval: Duration::from_secs(5),
        }
    }

    /// Prepended to each topic to make its Redis channel name, so that several applications
    /// can share one Redis. Default `websocket-handler:`.
    pub fn channel_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.channel_prefix = prefix.into();
        self
    }

    /// Messages held for publishing while Redis is unreachable or slow; beyond this, the
    /// oldest are dropped (and counted in [`RedisStats::dropped`]). Default 10,000.
    pub fn max_pending(mut self, messages: usize) -> Self {
        self.max_pending = messages.max(1);
        self
    }

    /// The wait before reconnecting: `min` after the first failure, doubling up to `max`,
    /// with jitter. Default 100 ms to 3 s; at least 1 ms.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        // Never zero: a zero wait would retry a dead server in a busy loop.
        self.reconnect_min = min.max(MIN_WAIT);
        self.reconnect_max = max.max(self.reconnect_min);
        self
    }

    /// How long connecting may take. Default 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long Redis may take to answer a publish, subscribe or ping before the connection
    /// is considered lost. Default 3 s.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How often an idle subscription is pinged, to notice a dead connection. Default 5 s;
    /// at least 1 ms.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(MIN_WAIT);
        self
    }

    /// The Redis URL.
    pub fn get_url(&self) -> &str {
        &self.url
    }

    /// The channel prefix.
    pub fn get_channel_prefix(&self) -> &str {
        &self.channel_prefix
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
    /// Messages from other processes delivered to local collections.
    pub delivered: u64,
    /// Messages dropped before publishing because more than `max_pending` were waiting.
    pub dropped: u64,
    /// Messages from other processes that never arrived (gaps in their sequence numbers).
    pub missed: u64,
    /// Messages received from Redis that were not envelopes of this crate.
    pub invalid: u64,
    /// Times the connection to Redis was lost.
    pub disconnects: u64,
    /// Messages waiting to be published now.
    pub pending: usize,
}

/// A [`Backplane`] over Redis pub/sub.
///
/// Cheap to clone; clones share one pair of Redis connections (one subscribed, one for
/// publishing) and one background task, which ends when the last clone, and the last
/// collection using it, is dropped.
///
/// - **Never blocks a broadcast.** Publishing queues the message; the task publishes in
///   order, pipelining whatever has queued up.
/// - **Survives Redis going away.** The task reconnects by itself with backoff, resubscribes,
///   and then publishes what queued up meanwhile (up to
///   [`max_pending`](RedisConfig::max_pending)). Local broadcasts work throughout. Messages
///   published while a process's subscription was down do not reach it: Redis pub/sub does
///   not store them. Losses are counted in [`stats`](Self::stats) and logged with `tracing`
///   (a full queue once per outage).
/// - **Ends cleanly.** When the last clone and collection are dropped, the task publishes
///   what is still queued (for a second at most), closes its connections, and the state
///   becomes [`Stopped`](BackplaneState::Stopped).
/// - **Observable.** [`state`](Self::state) and [`state_changes`](Self::state_changes).
///
/// ```no_run
/// use websocket_handler::backplane::{RedisBackplane, RedisConfig};
/// use websocket_handler::WebSocketCollection;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackplane::new(RedisConfig::new("redis://127.0.0.1:6379"))?;
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
    /// Channel name and envelope, in publishing order.
    pending: Mutex<VecDeque<(String, Bytes)>>,
    /// Something to publish, subscriptions to change, or stop.
    work: Notify,
    /// Subscriptions changed since the task last looked.
    subscriptions_changed: AtomicBool,
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
    disconnects: AtomicU64,
}

struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.work.notify_one();
    }
}

/// Why a Redis backplane could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBackplaneError {
    /// The URL is not a valid Redis URL.
    #[error("invalid Redis URL `{url}`: {source}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What the Redis client said.
        source: redis::RedisError,
    },
    /// Called outside a tokio runtime, where the background task cannot run.
    #[error("RedisBackplane::new must be called within a tokio runtime")]
    NoRuntime,
}

impl RedisBackplane {
    /// Starts connecting to Redis in the background and returns at once: broadcasts work
    /// before (and whether or not) Redis is reachable.
    ///
    /// # Errors
    ///
    /// If the URL is invalid, or there is no tokio runtime to run the background task on.
    pub fn new(config: RedisConfig) -> Result<Self, RedisBackplaneError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|source| {
            RedisBackplaneError::InvalidUrl {
                url: config.url.clone(),
                source,
            }
        })?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisBackplaneError::NoRuntime)?;
        let shared = Arc::new(Shared {
            config,
            pending: Mutex::new(VecDeque::new()),
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
            disconnects: AtomicU64::new(0),
        });
        runtime.spawn(run(shared.clone(), client));
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
        RedisStats {
            published: count(&shared.published),
            delivered: count(&shared.delivered),
            dropped: count(&shared.dropped),
            missed: count(&shared.missed),
            invalid: count(&shared.invalid),
            disconnects: count(&shared.disconnects),
            pending: lock(&shared.pending).len(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }
}

impl Backplane for RedisBackplane {
    fn publish(&self, topic: &str, envelope: Bytes) {
        let shared = &self.shared;
        let channel = format!("{}{topic}", shared.config.channel_prefix);
        let was_empty = {
            let mut pending = lock(&shared.pending);
            let was_empty = pending.is_empty();
            pending.push_back((channel, envelope));
            if pending.len() > shared.config.max_pending {
                pending.pop_front();
                shared.dropped_one();
            }
            was_empty
        };
        // The task empties the queue before it waits, so only the first push wakes it.
        if was_empty {
            shared.work.notify_one();
        }
    }

    fn subscribe(&self, topic: &str, inbox: Inbox) {
        let channel = format!("{}{topic}", self.shared.config.channel_prefix);
        lock(&self.shared.inboxes)
            .entry(channel)
            .or_default()
            .push(inbox);
        self.shared.subscriptions_changed();
    }

    fn unsubscribe(&self, _topic: &str) {
        // The task drops closed inboxes, and the channels left without any.
        self.shared.subscriptions_changed();
    }
}

impl Shared {
    fn subscriptions_changed(&self) {
        self.subscriptions_changed.store(true, Ordering::Release);
        self.work.notify_one();
    }

    /// Counts a message dropped from the queue; warns once per outage.
    fn dropped_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.drop_reported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_pending = self.config.max_pending,
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
async fn run(shared: Arc<Shared>, client: redis::Client) {
    // Whatever ends the task, even a panic, the state says so.
    struct Ended<'a>(&'a Shared);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            self.0.state.send_replace(BackplaneState::Stopped);
        }
    }
    let _ended = Ended(&shared);

    let mut delay = shared.config.reconnect_min;
    loop {
        let mut connected = false;
        let lost = match serve(&shared, &client, &mut connected).await {
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
            url = %shared.config.url,
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
    #[error("the subscription connection closed")]
    SubscriptionClosed,
}

/// One connection's life: `Ok` once stopped, or why the connection was lost.
async fn serve(
    shared: &Shared,
    client: &redis::Client,
    connected: &mut bool,
) -> Result<(), SessionError> {
    let config = &shared.config;
    let timed = |timeout: Duration| move |_| SessionError::Timeout(timeout);
    let pubsub = tokio::time::timeout(config.connect_timeout, client.get_async_pubsub())
        .await
        .map_err(timed(config.connect_timeout))??;
    let (mut sink, mut stream) = pubsub.split();
    let publisher_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout));
    let mut publisher = client
        .get_multiplexed_async_connection_with_config(&publisher_config)
        .await?;
    let mut subscribed = HashSet::new();
    shared.subscriptions_changed.store(false, Ordering::Release);
    sync_subscriptions(shared, &mut sink, &mut subscribed).await?;
    // What queued up while disconnected goes out before the state says `Connected`.
    while publish_batch(shared, &mut publisher).await? {}
    *connected = true;
    shared.drop_reported.store(false, Ordering::Relaxed);
    shared.state.send_replace(BackplaneState::Connected);
    tracing::info!(url = %config.url, "redis backplane: connected");

    let mut last_heard = tokio::time::Instant::now();
    loop {
        // One batch at most per turn (one round trip), then whatever arrived meanwhile: a
        // busy publisher never holds up delivery of the other servers' messages, nor lets
        // them pile up unread.
        let more = publish_batch(shared, &mut publisher).await?;
        while let Some(message) = stream.next().now_or_never() {
            let message = message.ok_or(SessionError::SubscriptionClosed)?;
            dispatch(shared, &message);
            last_heard = tokio::time::Instant::now();
        }
        if shared.subscriptions_changed.swap(false, Ordering::AcqRel) {
            sync_subscriptions(shared, &mut sink, &mut subscribed).await?;
        }
        if shared.stopped.load(Ordering::Acquire) {
            // The last handle is gone: publish what is left, briefly, then end.
            let flush = async {
                while publish_batch(shared, &mut publisher).await? {}
                Ok(())
            };
            return match tokio::time::timeout(FINAL_FLUSH, flush).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            };
        }
        let ping_due = last_heard + config.ping_interval;
        if more && tokio::time::Instant::now() < ping_due {
            continue;
        }
        tokio::select! {
            message = stream.next() => {
                let message = message.ok_or(SessionError::SubscriptionClosed)?;
                dispatch(shared, &message);
                last_heard = tokio::time::Instant::now();
            }
            () = shared.work.notified(), if !more => {}
            () = tokio::time::sleep_until(ping_due) => {
                // Quiet for a while: make sure the subscription is still alive.
                tokio::time::timeout(config.response_timeout, sink.ping::<redis::Value>())
                    .await
                    .map_err(timed(config.response_timeout))??;
                last_heard = tokio::time::Instant::now();
            }
        }
    }
}

/// Makes this connection's subscriptions match the channels that have live inboxes:
/// subscribes to new ones and unsubscribes from those whose collections are all gone.
async fn sync_subscriptions(
    shared: &Shared,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<String>,
) -> Result<(), SessionError> {
    let (wanted, unwanted): (Vec<String>, Vec<String>) = {
        let mut inboxes = lock(&shared.inboxes);
        inboxes.retain(|_, list| {
            list.retain(|inbox| !inbox.is_closed());
            !list.is_empty()
        });
        let wanted = inboxes
            .keys()
            .filter(|channel| !subscribed.contains(*channel))
            .cloned()
            .collect();
        let unwanted = subscribed
            .iter()
            .filter(|channel| !inboxes.contains_key(*channel))
            .cloned()
            .collect();
        (wanted, unwanted)
    };
    let timeout = shared.config.response_timeout;
    let timed_out = |_| SessionError::Timeout(timeout);
    if !wanted.is_empty() {
        tokio::time::timeout(timeout, sink.subscribe(&wanted))
            .await
            .map_err(timed_out)??;
        subscribed.extend(wanted);
    }
    if !unwanted.is_empty() {
        tokio::time::timeout(timeout, sink.unsubscribe(&unwanted))
            .await
            .map_err(timed_out)??;
        for channel in &unwanted {
            subscribed.remove(channel);
        }
    }
    Ok(())
}

/// Publishes the oldest queued messages, up to a batch, in one pipelined round trip.
/// Returns whether more are queued. A batch that fails goes back to the front of the queue,
/// to be sent again after reconnecting: receivers drop whatever part of it had arrived.
async fn publish_batch(
    shared: &Shared,
    publisher: &mut impl ConnectionLike,
) -> Result<bool, SessionError> {
    let batch: Vec<(String, Bytes)> = {
        let mut pending = lock(&shared.pending);
        let n = pending.len().min(PUBLISH_BATCH);
        pending.drain(..n).collect()
    };
    if batch.is_empty() {
        return Ok(false);
    }
    let mut pipe = redis::pipe();
    for (channel, envelope) in &batch {
        pipe.cmd("PUBLISH")
            .arg(channel)
            .arg(envelope.as_ref())
            .ignore();
    }
    if let Err(error) = pipe.query_async::<()>(publisher).await {
        let mut pending = lock(&shared.pending);
        for item in batch.into_iter().rev() {
            pending.push_front(item);
        }
        while pending.len() > shared.config.max_pending {
            pending.pop_front();
            shared.dropped_one();
        }
        return Err(error.into());
    }
    shared
        .published
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(!lock(&shared.pending).is_empty())
}

/// Hands a message from Redis to the inboxes of its channel.
fn dispatch(shared: &Shared, message: &redis::Msg) {
    let channel = message.get_channel_name();
    let inboxes = {
        let mut all = lock(&shared.inboxes);
        let Some(inboxes) = all.get_mut(channel) else {
            return;
        };
        inboxes.retain(|inbox| !inbox.is_closed());
        inboxes.clone()
    };
    let envelope = Bytes::copy_from_slice(message.get_payload_bytes());
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
    use super::jitter;
    use std::time::Duration;

    #[test]
    fn waits_are_never_zero() {
        let config = super::RedisConfig::new("redis://127.0.0.1")
            .ping_interval(Duration::ZERO)
            .reconnect_backoff(Duration::ZERO, Duration::ZERO);
        assert!(config.ping_interval > Duration::ZERO);
        assert!(config.reconnect_min > Duration::ZERO);
        assert!(config.reconnect_max >= config.reconnect_min);
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

//! The NATS JetStream backplane: a stream per topic (`streams`, named in `names`); one task
//! per backplane that connects, sets up the topics' streams and publishes (`publish`); one
//! reader task per topic (`read`); history for resumes (`missed`); the settings (`config`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self as js};
use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

mod batch;
mod config;

#[cfg(fuzzing)]
pub(crate) use self::batch::check as check_batch;
mod missed;
mod names;
mod publish;
mod read;
mod streams;

pub use self::config::{NatsBuilder, NatsConfig};

use self::config::Credentials;
use self::names::TopicNames;
use self::publish::{Outcome, Pending};
use self::read::ReadState;
use self::streams::{jitter, Failure};
use super::{lock, Backplane, BackplaneState, Inbox, MissedPage};
use crate::fanout::history::{Position, ResumeError};

/// Counters of a [`NatsBackplane`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsStats {
    /// Messages JetStream acknowledged (stored in the topic's stream).
    pub published: u64,
    /// Of those, publications sent again that JetStream had already stored (the first
    /// attempt's acknowledgement was lost): stored once, by their `Nats-Msg-Id`.
    pub duplicates: u64,
    /// The NATS messages those went in: what queued while a batch was on its way to
    /// JetStream goes together in the next (`published / batches` a round trip).
    pub batches: u64,
    /// Messages handed to a local collection or `Rooms` (once per collection), this
    /// process's own included, as they come back from the stream.
    pub delivered: u64,
    /// Messages dropped before publishing because more than `max_pending` were waiting.
    pub dropped: u64,
    /// Batches removed from a stream (its retention) before this process read them.
    pub missed: u64,
    /// Messages read from a stream that were not envelopes of this crate.
    pub invalid: u64,
    /// Messages JetStream refused for good (larger than the server's `max_payload`, say):
    /// dropped, and logged with the reason.
    pub refused: u64,
    /// Times a topic's stream was found deleted and made again (a new epoch, read from its
    /// start), or gone back below what was delivered.
    pub history_resets: u64,
    /// Publications that were not acknowledged (no leader, a timeout, no connection) and
    /// were sent again after a backoff.
    pub retried: u64,
    /// Times the connection to NATS was lost.
    pub disconnects: u64,
    /// Messages waiting to be published now.
    pub pending: usize,
    /// Their bytes.
    pub pending_bytes: usize,
}

/// Why a NATS backplane could not be created.
///
/// Plain data, so that the NATS client the backplane uses can change without changing this
/// type: what the client said is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatsBackplaneError {
    /// No server URL was given.
    #[error("a NATS backplane needs at least one server URL")]
    NoServers,
    /// A server URL the NATS client cannot connect to.
    #[error("invalid NATS server URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given, its password (if any) replaced by `***`.
        url: String,
        /// What is wrong with it, as the NATS client said.
        reason: String,
    },
    /// The prefix cannot start NATS names.
    #[error("invalid NATS backplane prefix `{0}`: letters, digits, `-` and `_` only")]
    InvalidPrefix(String),
    /// The credentials file could not be read, or is not one.
    #[error("cannot use the NATS credentials file {path}: {reason}")]
    Credentials {
        /// The file's path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Built outside a tokio runtime, where the background task cannot run.
    #[error("a NatsBackplane must be built within a tokio runtime")]
    NoRuntime,
}

/// A [`Backplane`] over NATS JetStream: a stream per topic, every process reading it from
/// where it left off.
///
/// The backplane is *ordered* ([`Backplane::ordered`]), as the Redis backplane's lossless
/// mode: every process, the sender's included, delivers each message of a topic when it
/// reads it back from the stream, so all deliver the same messages in the same order, each
/// at the same [`Position`]: the stream's sequence number (and the message's place in the
/// batch stored there), with a random epoch written in the stream's description. Clients
/// can resume on any process (see [`History`](crate::History)).
///
/// - **Never blocks a broadcast.** Publishing queues the message (bounded in messages and
///   bytes: [`max_pending`](NatsBuilder::max_pending)); the backplane's task publishes in
///   order, in batches (what queued of one topic and room while the last batch was on its
///   way, stored whole or not at all), each acknowledged by JetStream before the next goes.
/// - **Loses nothing, repeats nothing.** A publication counts once JetStream acknowledged
///   it; until then it is sent again, the same, with a `Nats-Msg-Id`, so that JetStream
///   stores it once ([`duplicate_window`](NatsBuilder::duplicate_window)), through
///   reconnects and leader changes, for as long as it takes. Each process reads each
///   stream from the sequence after the last it delivered, through any consumer it must
///   make again, so it delivers every message once, within the
///   [`retention`](NatsBuilder::retention).
/// - **Survives the loss of a server.** With three replicas on a cluster of three
///   ([`replicas`](NatsBuilder::replicas)), a stream whose leader dies goes on after an
///   election, with the same sequence numbers: positions stay valid. The client reconnects
///   by itself to any server of the cluster.
/// - **Told when NATS forgets.** A stream deleted and made again is a new epoch, counted in
///   [`NatsStats::history_resets`] and logged: collections with a history tell their
///   clients, and positions from before resume as `OtherEpoch`.
/// - **Many rooms cost nothing per read**: one consumer per topic and process carries every
///   room of a [`Rooms`](crate::Rooms); a resume reads its room's subject alone.
/// - **Observable.** [`state`](Self::state), [`state_changes`](Self::state_changes),
///   [`stats`](Self::stats).
///
/// ```no_run
/// use websocket_handler::backplane::NatsBackplane;
/// use websocket_handler::WebSocketCollection;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = NatsBackplane::new("nats://127.0.0.1:4222")?;
/// let room = WebSocketCollection::with_backplane("chat", nats.clone());
/// // Every process running this reaches every client in "chat".
/// room.broadcast("hello from one of many servers");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsBackplane {
    shared: Arc<Shared>,
    /// Stops the task when the last clone is dropped.
    _owner: Arc<Owner>,
}

pub(super) struct Shared {
    config: NatsConfig,
    pending: Mutex<Pending>,
    /// Something to publish, subscriptions to change, a reconnect, or stop.
    work: Notify,
    /// Inboxes by topic.
    inboxes: Mutex<HashMap<String, Vec<Inbox>>>,
    /// When each topic without a reader yet was first subscribed to: its reader starts
    /// there, however long setting the topic up takes.
    subscribed_at: Mutex<HashMap<String, SystemTime>>,
    subscriptions_changed: AtomicBool,
    state: watch::Sender<BackplaneState>,
    stopped: AtomicBool,
    /// The client is connected now (its events say).
    connected: AtomicBool,
    /// The client has connected once.
    ever_connected: AtomicBool,
    /// Every topic subscribed to has been set up once (the state says `Connecting` until
    /// then, so that what waits for `Connected` waits for the readers too).
    set_up_once: AtomicBool,
    /// Publishing fails for now (retried).
    publish_failing: AtomicBool,
    /// Setting up a topic's stream fails for now (retried).
    setup_failing: AtomicBool,
    /// Readers that cannot read now.
    readers_failing: AtomicUsize,
    /// A full queue has been reported in the current outage.
    drop_reported: AtomicBool,
    /// The JetStream context, once the client exists (for resumes).
    context: Mutex<Option<js::Context>>,
    /// Resumes reading NATS at once: a crowd resuming together waits its turn.
    history_reads: tokio::sync::Semaphore,
    /// For ids of bytes that are not envelopes: this process, and a counter.
    process_id: u128,
    own_ids: AtomicU64,
    published: AtomicU64,
    batches: AtomicU64,
    duplicates: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    missed: AtomicU64,
    invalid: AtomicU64,
    refused: AtomicU64,
    history_resets: AtomicU64,
    retried: AtomicU64,
    disconnects: AtomicU64,
}

/// Resumes reading from NATS at once, per backplane.
const HISTORY_READS: usize = 4;

/// How long a backplane whose last handle is gone may take to publish what is still queued.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.work.notify_one();
    }
}

impl NatsBackplane {
    /// A backplane on the NATS server (or cluster) at `servers` (`nats://host:port`, or
    /// several, separated by commas, as NATS clients take them), with the default settings
    /// (see [`NatsBuilder`]). It starts connecting in the background and returns at once.
    ///
    /// # Errors
    ///
    /// See [`NatsBuilder::build`].
    pub fn new(servers: impl AsRef<str>) -> Result<Self, NatsBackplaneError> {
        NatsBuilder::new(servers).build()
    }

    /// A builder for the servers at `servers` (see [`new`](Self::new)), to choose the
    /// settings.
    pub fn builder(servers: impl AsRef<str>) -> NatsBuilder {
        NatsBuilder::new(servers)
    }

    /// What [`NatsBuilder::build`] does.
    fn with_config(config: NatsConfig) -> Result<Self, NatsBackplaneError> {
        if config.servers.0.is_empty() {
            return Err(NatsBackplaneError::NoServers);
        }
        if !names::valid_prefix(&config.prefix) {
            return Err(NatsBackplaneError::InvalidPrefix(config.prefix.clone()));
        }
        let servers = config
            .servers
            .0
            .iter()
            .map(|url| {
                url.parse::<async_nats::ServerAddr>().map_err(|error| {
                    NatsBackplaneError::InvalidUrl {
                        url: config::redact(url),
                        reason: error.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = match &config.credentials {
            Credentials::None => async_nats::ConnectOptions::new(),
            Credentials::UserPassword(user, password) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.0.clone())
            }
            Credentials::Token(token) => async_nats::ConnectOptions::with_token(token.0.clone()),
            Credentials::File(path) => {
                let problem = |reason: String| NatsBackplaneError::Credentials {
                    path: path.display().to_string(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
                async_nats::ConnectOptions::with_credentials(&text)
                    .map_err(|e| problem(e.to_string()))?
            }
        };
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| NatsBackplaneError::NoRuntime)?;
        let shared = Arc::new(Shared {
            config,
            pending: Mutex::new(Pending::default()),
            work: Notify::new(),
            inboxes: Mutex::new(HashMap::new()),
            subscribed_at: Mutex::new(HashMap::new()),
            // The task's first round sets up what is subscribed by then (if anything).
            subscriptions_changed: AtomicBool::new(true),
            state: watch::Sender::new(BackplaneState::Connecting),
            stopped: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            set_up_once: AtomicBool::new(false),
            publish_failing: AtomicBool::new(false),
            setup_failing: AtomicBool::new(false),
            readers_failing: AtomicUsize::new(0),
            drop_reported: AtomicBool::new(false),
            context: Mutex::new(None),
            history_reads: tokio::sync::Semaphore::new(HISTORY_READS),
            process_id: super::new_sender_id(),
            own_ids: AtomicU64::new(0),
            published: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            history_resets: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
        });
        let options = connect_options(options, &shared);
        runtime.spawn(run(shared.clone(), options, servers));
        Ok(NatsBackplane {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    /// Whether NATS is reachable and every topic is published and read now.
    pub fn state(&self) -> BackplaneState {
        *self.shared.state.borrow()
    }

    /// A receiver that sees every change of [`state`](Self::state), for health checks or
    /// to wait until connected.
    pub fn state_changes(&self) -> watch::Receiver<BackplaneState> {
        self.shared.state.subscribe()
    }

    /// The counters so far.
    pub fn stats(&self) -> NatsStats {
        let shared = &self.shared;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let pending = lock(&shared.pending);
        NatsStats {
            published: count(&shared.published),
            batches: count(&shared.batches),
            duplicates: count(&shared.duplicates),
            delivered: count(&shared.delivered),
            dropped: count(&shared.dropped),
            missed: count(&shared.missed),
            invalid: count(&shared.invalid),
            refused: count(&shared.refused),
            history_resets: count(&shared.history_resets),
            retried: count(&shared.retried),
            disconnects: count(&shared.disconnects),
            pending: pending.items.len(),
            pending_bytes: pending.bytes,
        }
    }

    /// The settings the backplane was built with.
    pub fn config(&self) -> &NatsConfig {
        &self.shared.config
    }
}

impl std::fmt::Debug for NatsBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackplane")
            .field("servers", &self.shared.config.servers)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Backplane for NatsBackplane {
    fn publish(&self, topic: &str, envelope: Bytes) {
        let shared = &self.shared;
        let (was_empty, dropped) = {
            let mut pending = lock(&shared.pending);
            let was_empty = pending.items.is_empty();
            pending.push_back((topic.to_owned(), envelope));
            (was_empty, pending.trim(&shared.config))
        };
        shared.dropped(dropped);
        // The task empties the queue before it waits, so only the first push wakes it.
        if was_empty {
            shared.work.notify_one();
        }
    }

    fn subscribe(&self, topic: &str, inbox: Inbox) {
        lock(&self.shared.subscribed_at)
            .entry(topic.to_owned())
            .or_insert_with(SystemTime::now);
        lock(&self.shared.inboxes)
            .entry(topic.to_owned())
            .or_default()
            .push(inbox);
        self.shared
            .subscriptions_changed
            .store(true, Ordering::Release);
        self.shared.work.notify_one();
    }

    fn unsubscribe(&self, topic: &str) {
        let _ = topic; // the task drops closed inboxes, and the topics left without any
        self.shared
            .subscriptions_changed
            .store(true, Ordering::Release);
        self.shared.work.notify_one();
    }

    fn ordered(&self) -> bool {
        true
    }

    async fn missed(
        &self,
        topic: &str,
        room: Option<&str>,
        after: Position,
        max_bytes: usize,
    ) -> Result<MissedPage, ResumeError> {
        missed::missed(&self.shared, topic, room, after, max_bytes).await
    }
}

impl Shared {
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
                "nats backplane: publish queue full, dropping the oldest messages \
                 (counted in NatsStats::dropped)"
            );
        }
    }

    /// The live inboxes of `topic` (closed ones are dropped on the way).
    fn inboxes_of(&self, topic: &str) -> Vec<Inbox> {
        let mut all = lock(&self.inboxes);
        match all.get_mut(topic) {
            Some(inboxes) => {
                inboxes.retain(|inbox| !inbox.is_closed());
                inboxes.clone()
            }
            None => Vec::new(),
        }
    }

    /// Sets the state from what is known: never connected, disconnected, connected but
    /// failing to publish or read, or all well.
    fn update_state(&self) {
        let state = if self.stopped.load(Ordering::Acquire) {
            return;
        } else if !self.ever_connected.load(Ordering::Acquire)
            || !self.set_up_once.load(Ordering::Acquire)
        {
            BackplaneState::Connecting
        } else if !self.connected.load(Ordering::Acquire) {
            BackplaneState::Reconnecting
        } else if self.publish_failing.load(Ordering::Acquire)
            || self.setup_failing.load(Ordering::Acquire)
            || self.readers_failing.load(Ordering::Acquire) > 0
        {
            BackplaneState::Retrying
        } else {
            BackplaneState::Connected
        };
        self.state.send_if_modified(|now| {
            let changed = *now != state && *now != BackplaneState::Stopped;
            if changed {
                *now = state;
            }
            changed
        });
    }

    /// What the client says happened to its connection.
    fn on_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                self.connected.store(true, Ordering::Release);
                self.ever_connected.store(true, Ordering::Release);
                self.drop_reported.store(false, Ordering::Relaxed);
                tracing::info!(nats = %self.config.shown_servers(), "nats backplane: connected");
                // What waited for the connection is tried again now.
                self.work.notify_one();
            }
            async_nats::Event::Disconnected => {
                if self.connected.swap(false, Ordering::AcqRel) {
                    self.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(nats = %self.config.shown_servers(), "nats backplane: connection lost; reconnecting");
            }
            async_nats::Event::ServerError(error) => {
                tracing::warn!(%error, "nats backplane: the server reported an error");
            }
            async_nats::Event::ClientError(error) => {
                tracing::warn!(%error, "nats backplane: client error");
            }
            _ => {}
        }
        self.update_state();
    }
}

/// The client's options: reconnect for ever with the backplane's backoff, report events.
fn connect_options(
    options: async_nats::ConnectOptions,
    shared: &Arc<Shared>,
) -> async_nats::ConnectOptions {
    let config = &shared.config;
    let (min, max) = (config.reconnect_min, config.reconnect_max);
    let events: Weak<Shared> = Arc::downgrade(shared);
    options
        .name("websocket-handler backplane")
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.response_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| {
            let doublings = u32::try_from(attempts.saturating_sub(1))
                .unwrap_or(u32::MAX)
                .min(16);
            jitter(min.saturating_mul(1 << doublings).min(max))
        })
        .event_callback(move |event| {
            let shared = events.upgrade();
            async move {
                if let Some(shared) = shared {
                    shared.on_event(event);
                }
            }
        })
}

/// The backplane's task: connects, keeps the readers matching the subscriptions, and
/// publishes; until the last handle is dropped.
async fn run(
    shared: Arc<Shared>,
    options: async_nats::ConnectOptions,
    servers: Vec<async_nats::ServerAddr>,
) {
    // Whatever ends the task, even a panic, the state says so, and no reader is left.
    struct Ended<'a> {
        shared: &'a Shared,
        readers: HashMap<String, JoinHandle<()>>,
    }
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            for (_, reader) in self.readers.drain() {
                reader.abort();
            }
            *lock(&self.shared.context) = None;
            self.shared.state.send_replace(BackplaneState::Stopped);
        }
    }
    let mut task = Ended {
        shared: &shared,
        readers: HashMap::new(),
    };
    let config = &shared.config;
    // With `retry_on_initial_connect`, this returns at once and connects in the background.
    let client = match options.connect(servers).await {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(nats = %config.shown_servers(), %error, "nats backplane: cannot start the NATS client");
            return;
        }
    };
    if client.connection_state() == async_nats::connection::State::Connected {
        shared.connected.store(true, Ordering::Release);
        shared.ever_connected.store(true, Ordering::Release);
    }
    let context = js::ContextBuilder::new()
        .timeout(config.response_timeout)
        .build(client);
    *lock(&shared.context) = Some(context.clone());
    let mut publisher = Publisher {
        shared: shared.clone(),
        context: context.clone(),
        ready: HashMap::new(),
        failed_batch: None,
        retry_at: None,
        backoff: config.reconnect_min,
    };
    loop {
        if shared.stopped.load(Ordering::Acquire) {
            // The last handle is gone: publish what is left, briefly, then end.
            let _ = tokio::time::timeout(FINAL_FLUSH, async {
                while publisher.publish_next().await {
                    if let Some(at) = publisher.retry_at {
                        tokio::time::sleep_until(at).await;
                    }
                }
            })
            .await;
            return;
        }
        if shared.subscriptions_changed.swap(false, Ordering::AcqRel) {
            sync_readers(&shared, &mut publisher, &mut task.readers).await;
        }
        let waiting = publisher
            .retry_at
            .is_some_and(|at| at > tokio::time::Instant::now());
        if !waiting && publisher.publish_next().await {
            continue;
        }
        shared.update_state();
        let retry = publisher.retry_at;
        tokio::select! {
            () = shared.work.notified() => {}
            () = sleep_until(retry) => {}
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts a reader for each topic with live inboxes and none yet, and ends the readers of
/// topics left without any. A topic whose stream cannot be set up now is tried again
/// after a backoff.
async fn sync_readers(
    shared: &Arc<Shared>,
    publisher: &mut Publisher,
    readers: &mut HashMap<String, JoinHandle<()>>,
) {
    let (wanted, unwanted): (Vec<String>, Vec<String>) = {
        let mut inboxes = lock(&shared.inboxes);
        inboxes.retain(|_, list| {
            list.retain(|inbox| !inbox.is_closed());
            !list.is_empty()
        });
        let wanted = inboxes
            .keys()
            .filter(|topic| !readers.contains_key(*topic))
            .cloned()
            .collect();
        let unwanted = readers
            .keys()
            .filter(|topic| !inboxes.contains_key(*topic))
            .cloned()
            .collect();
        (wanted, unwanted)
    };
    for topic in unwanted {
        if let Some(reader) = readers.remove(&topic) {
            reader.abort();
        }
        publisher.ready.remove(&topic);
    }
    let mut failed = false;
    for topic in wanted {
        // Where the stream stands is read before this process publishes anything more to
        // it (the publisher is this task), so none of its messages is skipped.
        let Some(names) = publisher.ensure(&topic).await else {
            failed = true;
            continue;
        };
        let (names, state) = names;
        let at = ReadState {
            epoch: state.epoch,
            offset: state.last,
        };
        // From the subscription on: what other processes published while this one could
        // not set the topic up is the subscribers' too.
        let since = lock(&shared.subscribed_at).remove(&topic);
        let reader = tokio::spawn(read::run(
            shared.clone(),
            publisher.context.clone(),
            topic.clone(),
            names,
            at,
            since,
        ));
        readers.insert(topic, reader);
    }
    // Kept for topics still to be read: a subscription to a topic read already, or left
    // already, starts nothing.
    let subscribed = lock(&shared.inboxes);
    lock(&shared.subscribed_at)
        .retain(|topic, _| !readers.contains_key(topic) && subscribed.contains_key(topic));
    if failed {
        // Asked again once the backoff is over.
        shared.subscriptions_changed.store(true, Ordering::Release);
        publisher.failed();
    }
    shared.setup_failing.store(failed, Ordering::Release);
    if !failed {
        shared.set_up_once.store(true, Ordering::Release);
    }
    shared.update_state();
}

/// The publishing side of the task.
struct Publisher {
    shared: Arc<Shared>,
    context: js::Context,
    /// Topics whose stream is known to exist, and their names.
    ready: HashMap<String, TopicNames>,
    /// The batch that was not acknowledged: sent again, the same, before anything else.
    failed_batch: Option<publish::Batch>,
    /// After a failure: nothing before this.
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
}

impl Publisher {
    /// Makes sure `topic`'s stream exists; its names and state, or `None` (logged) if it
    /// cannot be set up now.
    async fn ensure(&mut self, topic: &str) -> Option<(TopicNames, streams::StreamState)> {
        let names = TopicNames::new(&self.shared.config.prefix, topic);
        match streams::ensure(&self.context, &self.shared.config, &names).await {
            Ok((state, _)) => {
                self.ready.insert(topic.to_owned(), names.clone());
                Some((names, state))
            }
            Err(failure) => {
                let level_error = matches!(failure, Failure::Refused(_));
                if level_error {
                    tracing::error!(stream = names.stream, %failure, "nats backplane: cannot set up the topic's stream");
                } else {
                    // Between leaders, every retry would say it: the state says it once.
                    tracing::debug!(stream = names.stream, %failure, "nats backplane: cannot set up the topic's stream now; retrying");
                }
                None
            }
        }
    }

    /// Publishes the batch that failed last, or else the oldest queued messages of one
    /// topic and room as a batch, and waits for its acknowledgement. Returns whether to go
    /// on at once (it was published or dropped); after a failure, keeps the batch to send
    /// again and sets when.
    async fn publish_next(&mut self) -> bool {
        let batch = self.failed_batch.take();
        let Some(mut batch) = batch.or_else(|| lock(&self.shared.pending).take_batch()) else {
            return false;
        };
        let names = match self.ready.get(&batch.topic) {
            Some(names) => names.clone(),
            None => match self.ensure(&batch.topic).await {
                Some((names, _)) => names,
                None => {
                    self.failed_batch = Some(batch);
                    self.failed();
                    self.set_failing(true);
                    return false;
                }
            },
        };
        let shared = &self.shared;
        let count = batch.envelopes.len() as u64;
        match publish::publish_batch(shared, &self.context, &names, &mut batch).await {
            Outcome::Stored { duplicate } => {
                shared.published.fetch_add(count, Ordering::Relaxed);
                shared.batches.fetch_add(1, Ordering::Relaxed);
                if duplicate {
                    shared.duplicates.fetch_add(count, Ordering::Relaxed);
                }
                self.retry_at = None;
                self.backoff = shared.config.reconnect_min;
                if self.set_failing(false) {
                    tracing::info!(stream = names.stream, "nats backplane: publishing again");
                }
                true
            }
            Outcome::Failed(Failure::Refused(reason)) => {
                shared.refused.fetch_add(count, Ordering::Relaxed);
                tracing::error!(
                    stream = names.stream,
                    reason,
                    messages = count,
                    "nats backplane: JetStream refused to publish; the messages are dropped"
                );
                true
            }
            Outcome::Failed(failure) => {
                if failure == Failure::Missing {
                    // No stream, or no leader for it now: looked at before the retry.
                    self.ready.remove(&batch.topic);
                }
                self.failed_batch = Some(batch);
                shared.retried.fetch_add(count, Ordering::Relaxed);
                let wait = self.failed();
                tracing::debug!(stream = names.stream, %failure, retry_in = ?wait, "nats backplane: publication not acknowledged; retrying in order");
                self.set_failing(true);
                false
            }
        }
    }

    /// Something could not be done now: nothing more before a backoff, which is returned.
    fn failed(&mut self) -> Duration {
        let wait = jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(self.shared.config.reconnect_max);
        self.retry_at = Some(tokio::time::Instant::now() + wait);
        wait
    }

    /// Publishing fails (or works again): the state says so. Returns whether it changed.
    fn set_failing(&self, failing: bool) -> bool {
        let changed = self.shared.publish_failing.swap(failing, Ordering::AcqRel) != failing;
        if changed {
            self.shared.update_state();
        }
        changed
    }
}

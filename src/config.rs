//! Per-connection settings, with defaults chosen for a server holding many connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::HandshakeError;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimit;
use crate::shutdown::Shutdown;

/// Settings for every connection accepted with them.
///
/// The defaults suit a server holding thousands of mostly idle connections: small buffers
/// that cost little memory per connection, and limits that stop one client from making the
/// server allocate much. tungstenite's own defaults (128 KiB read buffer allocated up front,
/// 64 MiB messages) cost about 134 KiB of memory per idle connection.
///
/// | setting | default |
/// | --- | --- |
/// | [`max_message_size`](Config::max_message_size) | 64 KiB |
/// | [`max_frame_size`](Config::max_frame_size) | 64 KiB |
/// | [`read_buffer_size`](Config::read_buffer_size) | 2 KiB |
/// | [`write_buffer_size`](Config::write_buffer_size) | 64 KiB |
/// | [`outbound_queue_capacity`](Config::outbound_queue_capacity) | 1024 messages |
/// | [`outbound_queue_bytes`](Config::outbound_queue_bytes) | 1 MiB |
/// | [`slow_consumer`](Config::slow_consumer) | [`SlowConsumer::Disconnect`] |
/// | [`close_timeout`](Config::close_timeout) | 5 s |
/// | [`ping_interval`](Config::ping_interval) | 15 s |
/// | [`idle_timeout`](Config::idle_timeout) | 30 s |
/// | [`allowed_origins`](Config::allowed_origins) | any |
/// | [`max_connections`](Config::max_connections) | unlimited |
/// | [`protocols`](Config::protocols) | none |
/// | [`rate_limit`](Config::rate_limit) | none |
///
/// ```
/// use std::time::Duration;
/// use websocket_handler::Config;
///
/// let config = Config::default()
///     .max_message_size(1 << 20)
///     .outbound_queue_capacity(256)
///     .close_timeout(Duration::from_secs(2));
/// assert_eq!(config.get_max_message_size(), 1 << 20);
/// assert_eq!(config.get_max_frame_size(), 64 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    max_message_size: usize,
    max_frame_size: usize,
    read_buffer_size: usize,
    write_buffer_size: usize,
    outbound_queue_capacity: usize,
    outbound_queue_bytes: usize,
    slow_consumer: SlowConsumer,
    close_timeout: Duration,
    ping_interval: Option<Duration>,
    idle_timeout: Option<Duration>,
    allowed_origins: Option<Arc<[String]>>,
    same_origin: bool,
    protocols: Arc<[HeaderValue]>,
    limit: Option<Arc<ConnectionLimit>>,
    shutdown: Option<Shutdown>,
    rate_limit: Option<RateLimit>,
    metrics: Metrics,
}

/// Counts the connections upgraded with one [`Config`] and its clones.
#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    max: usize,
    open: AtomicUsize,
}

/// One connection counted against [`Config::max_connections`]; released when dropped.
#[derive(Debug)]
pub(crate) struct Permit(Option<Arc<ConnectionLimit>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(limit) = &self.0 {
            limit.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What happens to a client whose outbound queue is full: it is not reading as fast as
/// messages are sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Close the connection with 1008 (policy violation) and report
    /// [`Error::SlowConsumer`](crate::Error::SlowConsumer) to its handler. What was queued
    /// for it is dropped, the close frame goes out next, and the connection ends within the
    /// close timeout even if the client never reads again. The default: a client that
    /// cannot keep up would otherwise silently miss messages.
    #[default]
    Disconnect,
    /// Keep the connection and drop the messages that do not fit:
    /// [`Connection::send`](crate::Connection::send) returns
    /// [`SendError::QueueFull`](crate::SendError::QueueFull) and broadcasts skip the client.
    DropMessages,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: 64 * 1024,
            max_frame_size: 64 * 1024,
            read_buffer_size: 2 * 1024,
            write_buffer_size: 64 * 1024,
            outbound_queue_capacity: 1024,
            outbound_queue_bytes: 1024 * 1024,
            slow_consumer: SlowConsumer::Disconnect,
            close_timeout: Duration::from_secs(5),
            ping_interval: Some(Duration::from_secs(15)),
            idle_timeout: Some(Duration::from_secs(30)),
            allowed_origins: None,
            same_origin: false,
            protocols: Arc::from([]),
            limit: None,
            shutdown: None,
            rate_limit: None,
            metrics: Metrics::new(),
        }
    }
}

impl Config {
    /// The default settings (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest message a peer may send, in bytes, after reassembling fragments. A larger one
    /// closes the connection with 1009 and is reported to
    /// [`on_error`](crate::WebSocketHandler::on_error). Values below 1 are raised to 1.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// Largest single frame a peer may send, in bytes (payload only). A larger one closes the
    /// connection with 1009. Values below 1 are raised to 1.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.max(1);
        self
    }

    /// Size of each connection's read buffer, in bytes, which is also the most read from the
    /// socket at once. It is allocated when the connection opens and is the largest part of
    /// an idle connection's memory, so the default is small: chat-like traffic (small
    /// messages from each client) does not need more. Raise it for clients that upload large
    /// messages, which then take fewer reads. Values below 256 are raised to 256.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes.max(256);
        self
    }

    /// The most bytes of queued frames handed to the socket in one (vectored) write. Frames
    /// are written straight from the queue, so this allocates nothing; larger values mean
    /// fewer system calls when a client has much queued. Values below 1 are raised to 1.
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.write_buffer_size = bytes.max(1);
        self
    }

    /// How many messages may wait in one connection's outbound queue. When it is full,
    /// [`Connection::send`](crate::Connection::send) returns
    /// [`SendError::QueueFull`](crate::SendError::QueueFull), broadcasts skip that
    /// connection, and the [`slow_consumer`](Config::slow_consumer) policy applies. Values
    /// below 1 are raised to 1.
    pub fn outbound_queue_capacity(mut self, messages: usize) -> Self {
        self.outbound_queue_capacity = messages.max(1);
        self
    }

    /// How many payload bytes may wait in one connection's outbound queue; the queue is full
    /// when either bound is reached. A message larger than this still goes to an empty
    /// queue. Besides the queue, the writer holds at most one batch it has taken but not
    /// yet written, so a connection pins at most about twice this. Values below 1 are
    /// raised to 1.
    pub fn outbound_queue_bytes(mut self, bytes: usize) -> Self {
        self.outbound_queue_bytes = bytes.max(1);
        self
    }

    /// What to do with a client whose outbound queue is full (see [`SlowConsumer`]).
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.slow_consumer = policy;
        self
    }

    /// How long to wait for the peer's answer to our close frame before dropping the
    /// connection.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Ping a connection that has sent nothing for this long (browsers answer pings
    /// automatically); `None` never pings.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Drop a connection that has sent no frame at all, not even a pong, for this long:
    /// [`Error::IdleTimeout`](crate::Error::IdleTimeout) goes to its handler. This is what
    /// removes half-open connections (a client that vanished without closing). Keep it
    /// above the ping interval. `None` never drops an idle connection.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Accept upgrades only from pages of these origins (`scheme://host[:port]`, compared
    /// without regard to ASCII case); others are refused with 403 before the handshake
    /// completes. This stops another site's page from opening a WebSocket with your users'
    /// cookies (cross-site WebSocket hijacking). Requests without an `Origin` header come
    /// from non-browser clients and are accepted. By default every origin is accepted.
    ///
    /// ```
    /// use websocket_handler::Config;
    ///
    /// let config = Config::default().allowed_origins(["https://chat.example"]);
    /// ```
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Accept upgrades only from pages served by this same server: the `Origin`'s host and
    /// port must equal the request's `Host` (what a browser sends for a page of this
    /// server, whatever name or address it was opened with). Other origins get 403, like
    /// with [`allowed_origins`](Config::allowed_origins), which it adds to; requests without
    /// an `Origin` header are accepted.
    pub fn same_origin(mut self) -> Self {
        self.same_origin = true;
        self.allowed_origins.get_or_insert_with(|| Arc::from([]));
        self
    }

    /// Subprotocols the server speaks, most preferred first. The first of them that the
    /// client offers in `Sec-WebSocket-Protocol` is chosen and answered
    /// (see [`Connection::protocol`](crate::Connection::protocol)); if the client offers
    /// none of them, none is chosen. Names that are not valid header values are skipped.
    pub fn protocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.protocols = protocols
            .into_iter()
            .filter_map(|name| HeaderValue::from_str(name.as_ref()).ok())
            .collect();
        self
    }

    /// Refuse upgrades with 503 while this many connections upgraded with this `Config` (or
    /// its clones) are open; the connections already open are not affected. Unlimited by
    /// default.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limit = Some(Arc::new(ConnectionLimit {
            max,
            open: AtomicUsize::new(0),
        }));
        self
    }

    /// See [`Config::max_message_size`].
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// See [`Config::max_frame_size`].
    pub fn get_max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// See [`Config::read_buffer_size`].
    pub fn get_read_buffer_size(&self) -> usize {
        self.read_buffer_size
    }

    /// See [`Config::write_buffer_size`].
    pub fn get_write_buffer_size(&self) -> usize {
        self.write_buffer_size
    }

    /// See [`Config::outbound_queue_capacity`].
    pub fn get_outbound_queue_capacity(&self) -> usize {
        self.outbound_queue_capacity
    }

    /// See [`Config::outbound_queue_bytes`].
    pub fn get_outbound_queue_bytes(&self) -> usize {
        self.outbound_queue_bytes
    }

    /// See [`Config::slow_consumer`].
    pub fn get_slow_consumer(&self) -> SlowConsumer {
        self.slow_consumer
    }

    /// Limit what each client may send: `per_second` messages on average, up to `burst` at
    /// once. A client over its limit is closed with 1008 and its handler gets
    /// [`Error::RateLimited`](crate::Error::RateLimited). Values below 1 are raised to 1.
    /// No limit by default.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate_limit = Some(RateLimit {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
        });
        self
    }

    pub(crate) fn get_rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// Counts what connections upgraded with this `Config` do into `metrics` (see
    /// [`Metrics`]). Several configs may share one. By default each `Config` has counters of
    /// its own, readable with [`get_metrics`](Config::get_metrics).
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    /// The counters of connections upgraded with this `Config`.
    pub fn get_metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Connections upgraded with this `Config` can be closed together, gracefully, with
    /// [`Shutdown::close_all`].
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.shutdown = Some(shutdown.clone());
        self
    }

    pub(crate) fn get_shutdown(&self) -> Option<&Shutdown> {
        self.shutdown.as_ref()
    }

    /// See [`Config::max_connections`].
    pub fn get_max_connections(&self) -> Option<usize> {
        self.limit.as_ref().map(|limit| limit.max)
    }

    /// Counts one more connection, unless the limit is reached.
    pub(crate) fn admit(&self) -> Result<Permit, HandshakeError> {
        let Some(limit) = &self.limit else {
            return Ok(Permit(None));
        };
        limit
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit.max).then_some(open + 1)
            })
            .map(|_| Permit(Some(limit.clone())))
            .map_err(|_| HandshakeError::TooManyConnections(limit.max))
    }

    /// Whether a request from `origin` (its `Origin` header, if any) to `host` (its `Host`
    /// header) may upgrade.
    pub(crate) fn origin_allowed(
        &self,
        origin: Option<&HeaderValue>,
        host: Option<&HeaderValue>,
    ) -> bool {
        let (Some(allowed), Some(origin)) = (&self.allowed_origins, origin) else {
            return true;
        };
        let origin = origin.as_bytes();
        let listed = allowed
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin));
        // `scheme://host[:port]`: compare what follows the scheme with `Host`.
        let same = self.same_origin
            && host.is_some_and(|host| {
                origin
                    .windows(3)
                    .position(|window| window == b"://")
                    .is_some_and(|at| origin[at + 3..].eq_ignore_ascii_case(host.as_bytes()))
            });
        listed || same
    }

    /// The subprotocol to answer with: ours, in our order of preference, that the client
    /// offered.
    pub(crate) fn choose_protocol(&self, offered: &http::HeaderMap) -> Option<HeaderValue> {
        let offered: Vec<&str> = offered
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        self.protocols
            .iter()
            .find(|ours| {
                offered
                    .iter()
                    .any(|name| name.as_bytes() == ours.as_bytes())
            })
            .cloned()
    }

    /// See [`Config::ping_interval`].
    pub fn get_ping_interval(&self) -> Option<Duration> {
        self.ping_interval
    }

    /// See [`Config::idle_timeout`].
    pub fn get_idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// See [`Config::close_timeout`].
    pub fn get_close_timeout(&self) -> Duration {
        self.close_timeout
    }

    pub(crate) fn to_tungstenite(&self) -> WebSocketConfig {
        // tungstenite writes only its own replies (pongs, the answer to a close frame), into
        // the outbound queue; with no write buffer they join the queue at once.
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(0)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size.min(self.max_message_size)))
    }
}

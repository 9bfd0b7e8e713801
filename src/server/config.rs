//! A server's settings, as they were built: read-only, with a getter for each.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::engine::settings::{Settings, SlowConsumer};
use crate::server::address::IpNetwork;

/// A server's settings, read back with [`WebSocketServer::config`](crate::WebSocketServer::config).
/// They are chosen with [`ServerBuilder`](crate::ServerBuilder), which documents each one
/// and its default.
///
/// ```
/// use websocket_handler::WebSocketServer;
///
/// let server = WebSocketServer::new();
/// assert_eq!(server.config().max_message_size(), 64 * 1024);
/// assert_eq!(server.config().max_connections(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) engine: Settings,
    pub(crate) allowed_origins: Option<Arc<[String]>>,
    pub(crate) same_origin: bool,
    pub(crate) protocols: Arc<[HeaderValue]>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) trim_memory: bool,
    pub(crate) max_partial_bytes: usize,
    pub(crate) max_connections_per_address: Option<u32>,
    /// Per second, and burst.
    pub(crate) handshake_rate_per_address: Option<(u32, u32)>,
    pub(crate) trusted_proxies: Arc<[IpNetwork]>,
    /// What the listener ([`ConnectionSlot::serve`](crate::ConnectionSlot::serve)) sets up.
    pub(crate) listener: ListenerSettings,
}

/// The HTTP side of a connection before it becomes WebSockets: what
/// [`ConnectionSlot::serve`](crate::ConnectionSlot::serve) and
/// [`WebSocketServer::serve`](crate::WebSocketServer::serve) give hyper.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerSettings {
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_pending_connections: usize,
    pub(crate) http2_max_concurrent_streams: u32,
    pub(crate) http2_stream_window: u32,
    pub(crate) http2_connection_window: u32,
    pub(crate) http2_keep_alive_interval: Option<Duration>,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            handshake_timeout: Duration::from_secs(10),
            max_pending_connections: 1024,
            http2_max_concurrent_streams: 100,
            http2_stream_window: 64 * 1024,
            http2_connection_window: 1024 * 1024,
            http2_keep_alive_interval: Some(Duration::from_secs(20)),
        }
    }
}

impl Config {
    /// The defaults (see [`ServerBuilder`](crate::ServerBuilder)).
    pub(crate) fn defaults() -> Self {
        Config {
            engine: Settings::default(),
            allowed_origins: None,
            same_origin: false,
            protocols: Arc::from([]),
            max_connections: None,
            trim_memory: true,
            max_partial_bytes: 64 << 20,
            max_connections_per_address: None,
            handshake_rate_per_address: None,
            trusted_proxies: Arc::from([]),
            listener: ListenerSettings::default(),
        }
    }

    /// See [`ServerBuilder::max_message_size`](crate::ServerBuilder::max_message_size).
    pub fn max_message_size(&self) -> usize {
        self.engine.max_message_size
    }

    /// See [`ServerBuilder::max_frame_size`](crate::ServerBuilder::max_frame_size).
    pub fn max_frame_size(&self) -> usize {
        self.engine.max_frame_size
    }

    /// See [`ServerBuilder::read_buffer_size`](crate::ServerBuilder::read_buffer_size).
    pub fn read_buffer_size(&self) -> usize {
        self.engine.read_buffer_size
    }

    /// See [`ServerBuilder::write_buffer_size`](crate::ServerBuilder::write_buffer_size).
    pub fn write_buffer_size(&self) -> usize {
        self.engine.write_buffer_size
    }

    /// See [`ServerBuilder::outbound_queue_capacity`](crate::ServerBuilder::outbound_queue_capacity).
    pub fn outbound_queue_capacity(&self) -> usize {
        self.engine.outbound_queue_capacity
    }

    /// See [`ServerBuilder::outbound_queue_bytes`](crate::ServerBuilder::outbound_queue_bytes).
    pub fn outbound_queue_bytes(&self) -> usize {
        self.engine.outbound_queue_bytes
    }

    /// See [`ServerBuilder::slow_consumer`](crate::ServerBuilder::slow_consumer).
    pub fn slow_consumer(&self) -> SlowConsumer {
        self.engine.slow_consumer
    }

    /// See [`ServerBuilder::close_timeout`](crate::ServerBuilder::close_timeout).
    pub fn close_timeout(&self) -> Duration {
        self.engine.close_timeout
    }

    /// See [`ServerBuilder::ping_interval`](crate::ServerBuilder::ping_interval).
    pub fn ping_interval(&self) -> Option<Duration> {
        self.engine.ping_interval
    }

    /// See [`ServerBuilder::idle_timeout`](crate::ServerBuilder::idle_timeout).
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.engine.idle_timeout
    }

    /// See [`ServerBuilder::rate_limit`](crate::ServerBuilder::rate_limit): messages per
    /// second and burst.
    pub fn rate_limit(&self) -> Option<(u32, u32)> {
        self.engine
            .rate_limit
            .map(|limit| (limit.per_second as u32, limit.burst as u32))
    }

    /// See [`ServerBuilder::kept_header_bytes`](crate::ServerBuilder::kept_header_bytes).
    pub fn kept_header_bytes(&self) -> usize {
        self.engine.kept_header_bytes
    }

    /// See [`ServerBuilder::message_timeout`](crate::ServerBuilder::message_timeout).
    pub fn message_timeout(&self) -> Duration {
        self.engine.message_timeout
    }

    /// See [`ServerBuilder::min_message_rate`](crate::ServerBuilder::min_message_rate), in
    /// bytes per second.
    pub fn min_message_rate(&self) -> u32 {
        self.engine.min_message_rate
    }

    /// See [`ServerBuilder::permessage_deflate`](crate::ServerBuilder::permessage_deflate).
    pub fn permessage_deflate(&self) -> bool {
        self.engine.deflate_on
    }

    /// See [`ServerBuilder::compression_threshold`](crate::ServerBuilder::compression_threshold).
    pub fn compression_threshold(&self) -> usize {
        self.engine.deflate.threshold
    }

    /// See [`ServerBuilder::compression_level`](crate::ServerBuilder::compression_level).
    pub fn compression_level(&self) -> u32 {
        self.engine.deflate.level
    }

    /// See [`ServerBuilder::compression_window_bits`](crate::ServerBuilder::compression_window_bits).
    pub fn compression_window_bits(&self) -> u8 {
        self.engine.deflate.window_bits
    }

    /// See [`ServerBuilder::max_partial_bytes`](crate::ServerBuilder::max_partial_bytes).
    pub fn max_partial_bytes(&self) -> usize {
        self.max_partial_bytes
    }

    /// See [`ServerBuilder::max_connections_per_address`](crate::ServerBuilder::max_connections_per_address).
    pub fn max_connections_per_address(&self) -> Option<u32> {
        self.max_connections_per_address
    }

    /// See [`ServerBuilder::handshake_rate_per_address`](crate::ServerBuilder::handshake_rate_per_address):
    /// per second, and burst.
    pub fn handshake_rate_per_address(&self) -> Option<(u32, u32)> {
        self.handshake_rate_per_address
    }

    /// See [`ServerBuilder::trusted_proxies`](crate::ServerBuilder::trusted_proxies).
    pub fn trusted_proxies(&self) -> &[IpNetwork] {
        &self.trusted_proxies
    }

    /// See [`ServerBuilder::handshake_timeout`](crate::ServerBuilder::handshake_timeout).
    pub fn handshake_timeout(&self) -> Duration {
        self.listener.handshake_timeout
    }

    /// See [`ServerBuilder::max_pending_connections`](crate::ServerBuilder::max_pending_connections).
    pub fn max_pending_connections(&self) -> usize {
        self.listener.max_pending_connections
    }

    /// See [`ServerBuilder::http2_max_concurrent_streams`](crate::ServerBuilder::http2_max_concurrent_streams).
    pub fn http2_max_concurrent_streams(&self) -> u32 {
        self.listener.http2_max_concurrent_streams
    }

    /// See [`ServerBuilder::http2_stream_window`](crate::ServerBuilder::http2_stream_window).
    pub fn http2_stream_window(&self) -> u32 {
        self.listener.http2_stream_window
    }

    /// See [`ServerBuilder::http2_connection_window`](crate::ServerBuilder::http2_connection_window).
    pub fn http2_connection_window(&self) -> u32 {
        self.listener.http2_connection_window
    }

    /// See [`ServerBuilder::http2_keep_alive_interval`](crate::ServerBuilder::http2_keep_alive_interval).
    pub fn http2_keep_alive_interval(&self) -> Option<Duration> {
        self.listener.http2_keep_alive_interval
    }

    /// See [`ServerBuilder::trim_memory`](crate::ServerBuilder::trim_memory).
    pub fn trim_memory(&self) -> bool {
        self.trim_memory
    }

    /// See [`ServerBuilder::max_connections`](crate::ServerBuilder::max_connections).
    pub fn max_connections(&self) -> Option<usize> {
        self.max_connections
    }

    /// See [`ServerBuilder::allowed_origins`](crate::ServerBuilder::allowed_origins): `None`
    /// when every origin is accepted.
    pub fn allowed_origins(&self) -> Option<&[String]> {
        self.allowed_origins.as_deref()
    }

    /// See [`ServerBuilder::same_origin`](crate::ServerBuilder::same_origin).
    pub fn same_origin(&self) -> bool {
        self.same_origin
    }

    /// See [`ServerBuilder::protocols`](crate::ServerBuilder::protocols).
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        self.protocols.iter().filter_map(|name| name.to_str().ok())
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
}

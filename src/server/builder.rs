//! Building a server: its settings, chosen once, before the first connection.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::engine::rate_limit::RateLimit;
use crate::engine::settings::SlowConsumer;
use crate::server::address::IpNetwork;
use crate::server::config::Config;
use crate::server::WebSocketServer;

/// Builds a [`WebSocketServer`]: every setting, with builder-style setters, and
/// [`build`](ServerBuilder::build) at the end.
///
/// The defaults suit a server holding thousands of mostly idle connections exposed to the
/// internet: small buffers that cost little memory per connection, and limits that stop one
/// client from making the server allocate much. (tungstenite's own defaults, a 128 KiB read
/// buffer allocated up front and 64 MiB messages, cost about 134 KiB per idle connection.)
///
/// | setting | default |
/// | --- | --- |
/// | [`max_message_size`](ServerBuilder::max_message_size) | 64 KiB |
/// | [`max_frame_size`](ServerBuilder::max_frame_size) | 64 KiB |
/// | [`read_buffer_size`](ServerBuilder::read_buffer_size) | 16 KiB |
/// | [`write_buffer_size`](ServerBuilder::write_buffer_size) | 64 KiB |
/// | [`outbound_queue_capacity`](ServerBuilder::outbound_queue_capacity) | 1024 messages |
/// | [`outbound_queue_bytes`](ServerBuilder::outbound_queue_bytes) | 1 MiB |
/// | [`slow_consumer`](ServerBuilder::slow_consumer) | [`SlowConsumer::Disconnect`] |
/// | [`close_timeout`](ServerBuilder::close_timeout) | 5 s |
/// | [`ping_interval`](ServerBuilder::ping_interval) | 15 s |
/// | [`idle_timeout`](ServerBuilder::idle_timeout) | 30 s |
/// | [`allowed_origins`](ServerBuilder::allowed_origins) | any |
/// | [`max_connections`](ServerBuilder::max_connections) | unlimited |
/// | [`protocols`](ServerBuilder::protocols) | none |
/// | [`rate_limit`](ServerBuilder::rate_limit) | none |
/// | [`kept_header_bytes`](ServerBuilder::kept_header_bytes) | 4 KiB |
/// | [`trim_memory`](ServerBuilder::trim_memory) | on |
/// | [`message_timeout`](ServerBuilder::message_timeout) | 30 s |
/// | [`min_message_rate`](ServerBuilder::min_message_rate) | 1 KiB/s |
/// | [`max_partial_bytes`](ServerBuilder::max_partial_bytes) | 64 MiB |
/// | [`max_connections_per_address`](ServerBuilder::max_connections_per_address) | unlimited |
/// | [`handshake_rate_per_address`](ServerBuilder::handshake_rate_per_address) | unlimited |
/// | [`trusted_proxies`](ServerBuilder::trusted_proxies) | none |
/// | [`permessage_deflate`](ServerBuilder::permessage_deflate) | off |
/// | [`compression_threshold`](ServerBuilder::compression_threshold) | 256 bytes |
/// | [`compression_level`](ServerBuilder::compression_level) | 3 |
/// | [`compression_window_bits`](ServerBuilder::compression_window_bits) | 15 |
/// | [`handshake_timeout`](ServerBuilder::handshake_timeout) | 10 s |
/// | [`max_pending_connections`](ServerBuilder::max_pending_connections) | 1024 |
/// | [`http2_max_concurrent_streams`](ServerBuilder::http2_max_concurrent_streams) | 100 |
/// | [`http2_stream_window`](ServerBuilder::http2_stream_window) | 64 KiB |
/// | [`http2_connection_window`](ServerBuilder::http2_connection_window) | 1 MiB |
/// | [`http2_keep_alive_interval`](ServerBuilder::http2_keep_alive_interval) | 20 s |
///
/// The last six are the listener's: they apply to the connections served by
/// [`WebSocketServer::serve`] and [`ConnectionSlot::serve`](crate::ConnectionSlot::serve),
/// not to a hyper server set up by hand.
///
/// ```
/// use std::time::Duration;
/// use websocket_handler::WebSocketServer;
///
/// let server = WebSocketServer::builder()
///     .max_message_size(1 << 20)
///     .outbound_queue_capacity(256)
///     .close_timeout(Duration::from_secs(2))
///     .build();
/// assert_eq!(server.config().max_message_size(), 1 << 20);
/// assert_eq!(server.config().max_frame_size(), 64 * 1024);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` makes the server"]
pub struct ServerBuilder {
    config: Config,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    /// The default settings (see the table above).
    pub fn new() -> Self {
        ServerBuilder {
            config: Config::defaults(),
        }
    }

    /// The server, with these settings and its own shared state (connection count,
    /// metrics, shutdown). Make it once and clone it into every request's service: clones
    /// share one server.
    pub fn build(self) -> WebSocketServer {
        WebSocketServer::with_config(self.config)
    }

    /// Largest message a peer may send, in bytes, after reassembling fragments. A larger one
    /// closes the connection with 1009 and is reported to
    /// [`on_error`](crate::WebSocketHandler::on_error). Values below 1 are raised to 1.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.engine.max_message_size = bytes.max(1);
        self
    }

    /// Largest single frame a peer may send, in bytes (payload only). A larger one closes the
    /// connection with 1009. Values below 1 are raised to 1.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.engine.max_frame_size = bytes.max(1);
        self
    }

    /// The most bytes read from a socket at once. Reads go into a buffer that each worker
    /// thread shares, and what they bring is decoded at once, so this costs no memory per
    /// connection: a connection only holds the part of a message that has arrived. Larger
    /// values mean fewer system calls for clients that send large messages. Between 256 and
    /// 64 KiB (values outside are raised or lowered to those).
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.config.engine.read_buffer_size = bytes.clamp(256, 64 * 1024);
        self
    }

    /// The most bytes of queued frames handed to the socket in one (vectored) write. Frames
    /// are written straight from the queue, so this allocates nothing; larger values mean
    /// fewer system calls when a client has much queued. Values below 1 are raised to 1.
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.config.engine.write_buffer_size = bytes.max(1);
        self
    }

    /// How many messages may wait in one connection's outbound queue. When it is full,
    /// [`Connection::send`](crate::Connection::send) returns
    /// [`SendError::QueueFull`](crate::SendError::QueueFull), broadcasts skip that
    /// connection, and the [`slow_consumer`](ServerBuilder::slow_consumer) policy applies. Values
    /// below 1 are raised to 1.
    pub fn outbound_queue_capacity(mut self, messages: usize) -> Self {
        self.config.engine.outbound_queue_capacity = messages.max(1);
        self
    }

    /// How many payload bytes may wait in one connection's outbound queue; the queue is full
    /// when either bound is reached. A message larger than this still goes to an empty
    /// queue. Besides the queue, the writer holds at most one batch it has taken but not
    /// yet written, so a connection pins at most about twice this. Values below 1 are
    /// raised to 1, and above 4 GiB count as 4 GiB.
    pub fn outbound_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.engine.outbound_queue_bytes = bytes.max(1);
        self
    }

    /// What to do with a client whose outbound queue is full (see [`SlowConsumer`]).
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.config.engine.slow_consumer = policy;
        self
    }

    /// How long a connection may take to close once the close is asked for (by
    /// [`Connection::close`](crate::Connection::close),
    /// [`WebSocketServer::close_all`](crate::WebSocketServer::close_all), the slow-consumer
    /// policy, or the peer's close frame): our close frame and the peer's answer must both
    /// be on the wire within it, or the connection is dropped with
    /// [`Error::CloseTimeout`](crate::Error::CloseTimeout). It runs from the request, so a
    /// client that stops reading (our close frame stuck behind what it never read) is gone
    /// within it too. An upgrade whose `101` response is not sent within it is abandoned.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.engine.close_timeout = timeout;
        self
    }

    /// Ping a connection that has sent nothing for this long (browsers answer pings
    /// automatically); `None` never pings. One timer serves all of a server's connections,
    /// ticking every eighth of the shorter of this and the
    /// [`idle_timeout`](ServerBuilder::idle_timeout) (at least 5 ms, at most a second): a
    /// ping, and the idle timeout, may be that much late.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.engine.ping_interval = interval;
        self
    }

    /// Drop a connection that has sent no frame at all, not even a pong, for this long:
    /// [`Error::IdleTimeout`](crate::Error::IdleTimeout) goes to its handler. This is what
    /// removes half-open connections (a client that vanished without closing). Keep it
    /// above the ping interval. `None` never drops an idle connection.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.engine.idle_timeout = timeout;
        self
    }

    /// Accept upgrades only from pages of these origins (`scheme://host[:port]`, compared
    /// without regard to ASCII case); others are refused with 403 before the handshake
    /// completes. This stops another site's page from opening a WebSocket with your users'
    /// cookies (cross-site WebSocket hijacking). Requests without an `Origin` header come
    /// from non-browser clients and are accepted. By default every origin is accepted.
    ///
    /// ```
    /// use websocket_handler::WebSocketServer;
    ///
    /// let server = WebSocketServer::builder()
    ///     .allowed_origins(["https://chat.example"])
    ///     .build();
    /// ```
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Accept upgrades only from pages served by this same server: the `Origin`'s host and
    /// port must equal the request's `Host` (what a browser sends for a page of this
    /// server, whatever name or address it was opened with). Other origins get 403, like
    /// with [`allowed_origins`](ServerBuilder::allowed_origins), which it adds to; requests without
    /// an `Origin` header are accepted.
    pub fn same_origin(mut self) -> Self {
        self.config.same_origin = true;
        self.config
            .allowed_origins
            .get_or_insert_with(|| Arc::from([]));
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
        self.config.protocols = protocols
            .into_iter()
            .filter_map(|name| HeaderValue::from_str(name.as_ref()).ok())
            .collect();
        self
    }

    /// Refuse upgrades with 503 while this many of this server's connections are open; the
    /// connections already open are not affected. Unlimited by default.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = Some(max);
        self
    }

    /// Limit what each client may send: `per_second` messages on average, up to `burst` at
    /// once. A client over its limit is closed with 1008 and its handler gets
    /// [`Error::RateLimited`](crate::Error::RateLimited). Values below 1 are raised to 1.
    /// No limit by default.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.config.engine.rate_limit = Some(RateLimit {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
        });
        self
    }

    /// How many bytes of the upgrade request's headers (names and values) each connection
    /// keeps for [`Connection::headers`](crate::Connection::headers). Headers past this are
    /// dropped whole, in the order they came (smaller ones after them still fit); the URI
    /// is always kept. hyper accepts hundreds of KiB of headers, which would otherwise stay
    /// with the connection for its whole life. Default 4 KiB: a browser's upgrade request,
    /// cookies included, is usually one or two. The function that makes the handler sees
    /// the whole request, so a handler can take what it needs from there instead.
    pub fn kept_header_bytes(mut self, bytes: usize) -> Self {
        self.config.engine.kept_header_bytes = bytes;
        self
    }

    /// Whether to give memory back to the operating system after a storm (on Linux with
    /// glibc; elsewhere this does nothing). When connections or their queues have freed a
    /// MiB or more and freeing has calmed down for a second, the heap is trimmed once
    /// (`malloc_trim`, on a blocking thread, at most every five seconds). glibc's malloc
    /// otherwise keeps what a burst freed: on the chat example, 10,000 clients connecting
    /// with join notices left 22 KiB of RSS per idle connection, and 158 MiB after all had
    /// left (3.4 MiB before); with trimming, 6.3 KiB and 8.5 MiB.
    ///
    /// On by default, although the heap is the whole process's, not this server's: a
    /// server that keeps the memory of its last reconnect storm for ever looks like a leak,
    /// and few applications know to trim. What it costs the rest of the process is a walk
    /// of the heap after a storm, off the async threads; what it can do to it is only give
    /// back free pages, which glibc maps again on demand. One server with this on trims for
    /// the process. Turn it off if the application manages its memory itself, for example
    /// with another global allocator (then trimming glibc's heap finds next to nothing).
    pub fn trim_memory(mut self, on: bool) -> Self {
        self.config.trim_memory = on;
        self
    }

    /// How long a message may take to arrive, from its first byte to its last (whatever
    /// control frames come in between). A message still arriving after this may go on only
    /// while every 5 s (or every `timeout`, if shorter) bring at least
    /// [`min_message_rate`](ServerBuilder::min_message_rate) of it; otherwise the
    /// connection is closed with 1008 and its handler gets
    /// [`Error::MessageTimeout`](crate::Error::MessageTimeout). Without it, a client that
    /// starts a message and trickles the rest forever (which RFC 6455 allows, pings
    /// answered in between) holds the server's memory for as long as it likes. Default 30 s:
    /// a phone on a 2G link (4 KB/s) sends a whole 64 KiB message in 16.
    ///
    /// `Duration::ZERO` turns the deadline off: a message may take as long as it likes
    /// (the [`max_partial_bytes`](ServerBuilder::max_partial_bytes) budget still bounds
    /// what slow messages hold together). Other durations are counted in whole
    /// milliseconds, at least one.
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.config.engine.message_timeout = timeout;
        self
    }

    /// The rate, in bytes per second, that a message taking longer than
    /// [`message_timeout`](ServerBuilder::message_timeout) must keep up to go on, measured
    /// over windows of 5 s. Default 1 KiB/s, a quarter of a 2G link, so that large uploads
    /// from slow clients finish, while a client trickling a byte a second is dropped at the
    /// timeout. Values below 1 are raised to 1.
    pub fn min_message_rate(mut self, bytes_per_second: u32) -> Self {
        self.config.engine.min_message_rate = bytes_per_second.max(1);
        self
    }

    /// The most bytes of partially received messages the server holds, all connections
    /// together. A message that has begun to arrive and not finished holds what has
    /// arrived (never more: the buffer grows with the bytes, not with what a frame
    /// header announces); past this budget, the connection holding the most is refused
    /// further bytes and closed with 1013 (try again later), with
    /// [`Error::PartialBudget`](crate::Error::PartialBudget), and the server goes on.
    /// Messages that arrive in one read never count. Default 64 MiB: a thousand clients
    /// each midway through a 64 KiB message.
    pub fn max_partial_bytes(mut self, bytes: usize) -> Self {
        self.config.max_partial_bytes = bytes;
        self
    }

    /// Whether to compress messages (permessage-deflate, RFC 7692) for the clients that
    /// offer it, as every browser does. A broadcast is compressed once for all the clients
    /// that negotiated it (the server asks for no context takeover on both sides, so no
    /// compressor or inflater is kept per connection: an idle connection costs the same),
    /// and clients' compressed messages are inflated within
    /// [`max_message_size`](ServerBuilder::max_message_size), counted on the inflated
    /// bytes. An offer the server cannot honour is declined, never failing the handshake.
    /// Default off: see BENCHMARKS.md for what it costs and saves.
    pub fn permessage_deflate(mut self, on: bool) -> Self {
        self.config.engine.deflate_on = on;
        self
    }

    /// With [`permessage_deflate`](ServerBuilder::permessage_deflate): messages shorter
    /// than this go uncompressed (deflate gains little on them). Default 256 bytes; at most
    /// 65,535.
    pub fn compression_threshold(mut self, bytes: usize) -> Self {
        self.config.engine.deflate.threshold = bytes.min(usize::from(u16::MAX));
        self
    }

    /// With [`permessage_deflate`](ServerBuilder::permessage_deflate): zlib's level, 1
    /// (fastest) to 9 (smallest); 0 sends deflate's stored blocks, larger values count as 9.
    /// Default 3.
    pub fn compression_level(mut self, level: u32) -> Self {
        self.config.engine.deflate.level = level.min(9);
        self
    }

    /// With [`permessage_deflate`](ServerBuilder::permessage_deflate): the largest window
    /// the server compresses with, 9 to 15 bits (512 bytes to 32 KiB; others count as the
    /// nearest). A client that asks for less gets what it asks for. Default 15.
    pub fn compression_window_bits(mut self, bits: u8) -> Self {
        self.config.engine.deflate.window_bits = bits.clamp(9, 15);
        self
    }

    /// Refuse upgrades with 429 (and `Retry-After`) from a client address that already
    /// holds this many connections. IPv4 addresses count one by one, IPv6 ones by their
    /// /64. Behind a proxy, see [`trusted_proxies`](ServerBuilder::trusted_proxies).
    ///
    /// The peer's address comes from the upgrade request's extensions: a
    /// [`SocketAddr`](std::net::SocketAddr), which [`WebSocketServer::serve`] and
    /// [`ConnectionSlot::serve`](crate::ConnectionSlot::serve) put there, or, with the cargo
    /// feature `axum`, axum's `ConnectInfo<SocketAddr>` (serve the router with
    /// `into_make_service_with_connect_info::<SocketAddr>()`). A request without either
    /// cannot be counted: the limits do not apply to it, and a `warn` says so, once.
    ///
    /// Off by default: many users can share one address (a company's NAT, a mobile
    /// carrier's CGNAT, a proxy), so only the deployment knows what is too many. A chat
    /// facing the internet directly might use 100.
    pub fn max_connections_per_address(mut self, max: u32) -> Self {
        self.config.max_connections_per_address = Some(max.max(1));
        self
    }

    /// Refuse upgrades with 429 (and `Retry-After`) from a client address that opens
    /// connections faster than `per_second` on average, `burst` at once. Counted like
    /// [`max_connections_per_address`](ServerBuilder::max_connections_per_address). Off by
    /// default, for the same reason; a reconnect storm after a deploy is every client at
    /// once, so keep the burst generous (say 20 per second, bursts of 50). Values below 1
    /// are raised to 1.
    pub fn handshake_rate_per_address(mut self, per_second: u32, burst: u32) -> Self {
        self.config.handshake_rate_per_address = Some((per_second.max(1), burst.max(1)));
        self
    }

    /// The proxies (or networks of them) in front of the server. When the peer is one of
    /// them, the limits per address count the client that `Forwarded` (RFC 7239) or, without
    /// it, `X-Forwarded-For` names: the last address in them that is not a trusted proxy.
    /// From any other peer those headers are ignored, so a client cannot make itself count
    /// as someone else. None by default.
    ///
    /// ```
    /// use websocket_handler::{IpNetwork, WebSocketServer};
    ///
    /// let proxies: Vec<IpNetwork> = ["10.0.0.0/8", "::1"].iter().map(|n| n.parse().unwrap()).collect();
    /// let server = WebSocketServer::builder()
    ///     .trusted_proxies(proxies)
    ///     .max_connections_per_address(100)
    ///     .build();
    /// assert_eq!(server.config().trusted_proxies().len(), 2);
    /// ```
    pub fn trusted_proxies(mut self, networks: impl IntoIterator<Item = IpNetwork>) -> Self {
        self.config.trusted_proxies = networks.into_iter().collect();
        self
    }

    /// How long an HTTP connection may take to send a request: from when it is accepted
    /// (its TLS handshake included, for a server that does it within the
    /// [`ConnectionSlot`](crate::ConnectionSlot)), and again whenever it is idle (HTTP/1.1
    /// between requests; HTTP/2 with no request in progress and no WebSocket open). An
    /// HTTP/1.1 connection that takes longer is closed; an HTTP/2 one gets GOAWAY and is
    /// closed at most [`close_timeout`](ServerBuilder::close_timeout) later. This is what
    /// rids the server of clients that connect and send nothing, or the HTTP/2 preface and
    /// then nothing. Default 10 s; values below 1 ms are raised to 1 ms.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.listener.handshake_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many accepted connections may be pending at once: accepted (and in their TLS or
    /// HTTP handshake, or serving plain requests) but carrying no WebSocket yet. At the
    /// limit, [`WebSocketServer::serve`] stops accepting (new connections wait in the
    /// kernel's backlog) until one of them upgrades or ends, and
    /// [`WebSocketServer::connection_slot`] waits likewise. Connections that have upgraded
    /// count against [`max_connections`](ServerBuilder::max_connections) instead. This
    /// keeps the clients that open connections and never upgrade (within the
    /// [`handshake_timeout`](ServerBuilder::handshake_timeout)) from taking every file
    /// descriptor and the memory meant for WebSockets. Default 1024; values below 1 are
    /// raised to 1.
    pub fn max_pending_connections(mut self, max: usize) -> Self {
        self.config.listener.max_pending_connections = max.max(1);
        self
    }

    /// Over HTTP/2, how many streams (WebSockets, and requests in progress) one connection
    /// may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`): a client that opens more
    /// has them refused (`RST_STREAM` with `REFUSED_STREAM`). hyper's default is 200. Each
    /// WebSocket stream also counts against
    /// [`max_connections`](ServerBuilder::max_connections). Default 100 (RFC 9113 asks for
    /// no less, so that browsers, which open one stream per WebSocket of a site, work
    /// well); values below 1 are raised to 1.
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> Self {
        self.config.listener.http2_max_concurrent_streams = max.max(1);
        self
    }

    /// Over HTTP/2, how many bytes a client may send on one stream before the server has
    /// read them (the stream's initial flow-control window). What the server has not read
    /// yet waits in hyper's buffers: while a handler is busy, a WebSocket stream holds up
    /// to this much. hyper's default is 1 MiB. Default 64 KiB (one message of the default
    /// [`max_message_size`](ServerBuilder::max_message_size)); values below 16 KiB are
    /// raised to 16 KiB, above 2³¹-1 lowered to it.
    pub fn http2_stream_window(mut self, bytes: u32) -> Self {
        self.config.listener.http2_stream_window = bytes.clamp(16 * 1024, i32::MAX as u32);
        self
    }

    /// Over HTTP/2, how many bytes a client may send on all the streams of one connection
    /// before the server has read them (the connection's flow-control window): the most a
    /// connection's unread input holds. Default 1 MiB, as hyper's; values below 64 KiB are
    /// raised to 64 KiB, above 2³¹-1 lowered to it.
    pub fn http2_connection_window(mut self, bytes: u32) -> Self {
        self.config.listener.http2_connection_window = bytes.clamp(65_535, i32::MAX as u32);
        self
    }

    /// Over HTTP/2, send a PING on a connection that has been quiet this long, and close
    /// the connection if its answer does not come within 20 s: a client that vanished, or
    /// stopped reading, goes with all its streams. `None` sends none (hyper's default).
    /// Default 20 s.
    pub fn http2_keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.listener.http2_keep_alive_interval = interval;
        self
    }
}

//! The server layer: what a WebSocket server built on hyper needs around the connections.
//!
//! A [`WebSocketServer`] is made once ([`builder`]) and holds what all its connections share:
//! the settings ([`config`]), the connection limits ([`limit`], and per client
//! [`address`]), the budget for partial messages, the counters and the graceful
//! [`shutdown`]. It answers upgrade requests ([`upgrade`], with the response
//! [`body`]) and can run a whole plain-HTTP server by itself ([`serve`]), or serve the
//! connections an application accepts ([`listener`], with [`h2_streams`] for HTTP/2); with
//! the cargo feature `tls`, over TLS too (`tls`). This is the top layer: it may use every
//! other, and none uses it.

pub(crate) mod address;
#[cfg(feature = "axum")]
pub(crate) mod axum;
pub(crate) mod body;
pub(crate) mod builder;
pub(crate) mod config;
pub(crate) mod h2_streams;
pub(crate) mod lease;
pub(crate) mod limit;
pub(crate) mod listener;
pub(crate) mod serve;
pub(crate) mod shutdown;
pub(crate) mod sweep;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod upgrade;

use std::fmt;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::engine::memory;
use crate::engine::metrics::Metrics;
use crate::engine::shared::Shared;
use crate::server::address::AddressLimits;
use crate::server::builder::ServerBuilder;
use crate::server::config::Config;
use crate::server::limit::ConnectionLimit;
use crate::server::shutdown::ShutdownState;
use crate::server::sweep::Sweep;

/// One WebSocket server: its settings and what its connections share (the connection
/// limit, the [`Metrics`], the graceful shutdown). Make it once, when the program starts,
/// and clone it into every request's service: clones are cheap and share one server, so a
/// limit counts every connection, whichever clone upgraded it.
///
/// ```
/// use websocket_handler::WebSocketServer;
///
/// let server = WebSocketServer::builder()
///     .max_connections(10_000)
///     .same_origin()
///     .build();
/// let for_a_request = server.clone(); // the same server: one limit, one set of counters
/// assert_eq!(for_a_request.config().max_connections(), Some(10_000));
/// assert_eq!(server.metrics().snapshot().connections_open(), 0);
/// ```
///
/// [`upgrade`](WebSocketServer::upgrade) answers an upgrade request from any hyper 1.x
/// service or axum handler; [`serve`](WebSocketServer::serve) runs a plain-HTTP server
/// that upgrades every request; [`close_all`](WebSocketServer::close_all) shuts down
/// gracefully.
#[derive(Clone)]
pub struct WebSocketServer {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// What the connections share: the engine's settings, the counters, the budget of
    /// partial messages.
    engine: Arc<Shared>,
    limit: Option<Arc<ConnectionLimit>>,
    addresses: Option<Arc<AddressLimits>>,
    /// Room for the connections accepted and not yet carrying a WebSocket.
    pending: Arc<Semaphore>,
    shutdown: ShutdownState,
    /// The one timer for every connection's keep-alive.
    sweep: Sweep,
}

impl WebSocketServer {
    /// A server with the default settings (see [`ServerBuilder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, to choose the settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    pub(crate) fn with_config(config: Config) -> Self {
        let limit = config.max_connections.map(ConnectionLimit::new);
        if config.trim_memory {
            memory::enable();
        }
        let addresses = (config.max_connections_per_address.is_some()
            || config.handshake_rate_per_address.is_some())
        .then(|| {
            AddressLimits::new(
                config.max_connections_per_address,
                config.handshake_rate_per_address,
            )
        });
        let engine = Shared::new(config.engine, Metrics::new(), config.max_partial_bytes);
        let pending = Arc::new(Semaphore::new(
            config
                .listener
                .max_pending_connections
                .min(Semaphore::MAX_PERMITS),
        ));
        WebSocketServer {
            inner: Arc::new(Inner {
                config,
                engine,
                limit,
                addresses,
                pending,
                shutdown: ShutdownState::default(),
                sweep: Sweep::default(),
            }),
        }
    }

    /// The settings the server was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The counters of this server's connections.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.engine.metrics
    }

    /// Bytes held now for partially received messages, all connections together (see
    /// [`ServerBuilder::max_partial_bytes`]).
    pub fn partial_bytes(&self) -> usize {
        self.inner.engine.budget.total()
    }

    pub(crate) fn limit(&self) -> Option<&Arc<ConnectionLimit>> {
        self.inner.limit.as_ref()
    }

    pub(crate) fn addresses(&self) -> Option<&Arc<AddressLimits>> {
        self.inner.addresses.as_ref()
    }

    /// What the server's connections share.
    pub(crate) fn engine(&self) -> &Arc<Shared> {
        &self.inner.engine
    }

    pub(crate) fn pending(&self) -> &Arc<Semaphore> {
        &self.inner.pending
    }

    pub(crate) fn shutdown_state(&self) -> &ShutdownState {
        &self.inner.shutdown
    }

    /// Starts the keep-alive timer for the server's connections, unless it runs or none
    /// is needed.
    pub(crate) fn start_sweep(&self) {
        let engine = &self.inner.config.engine;
        if let Some(every) = sweep::period(engine.ping_interval, engine.idle_timeout) {
            self.inner.sweep.start(Arc::downgrade(&self.inner), every);
        }
    }
}

impl Default for WebSocketServer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for WebSocketServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketServer")
            .field("config", &self.inner.config)
            .field(
                "connections_open",
                &self.inner.engine.metrics.snapshot().connections_open(),
            )
            .field("shutting_down", &self.inner.shutdown.is_started())
            .finish()
    }
}

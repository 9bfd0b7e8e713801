//! Graceful shutdown: close every connection with 1001 after what is queued for it, and
//! refuse new ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::close::CloseCode;
use crate::collection::WebSocketCollection;
use crate::connection::Connection;
use crate::error::HandshakeError;

/// A handle to close, gracefully, every connection upgraded with a [`Config`](crate::Config)
/// that carries it (see [`Config::shutdown`](crate::Config::shutdown)). Clones share one
/// shutdown.
///
/// Stop accepting TCP connections yourself (your accept loop is yours), then call
/// [`close_all`](Shutdown::close_all).
///
/// ```
/// use std::time::Duration;
/// use websocket_handler::{Config, Shutdown};
///
/// # async fn run() {
/// let shutdown = Shutdown::new();
/// let config = Config::default().shutdown(&shutdown);
/// // ... serve connections with `config` until it is time to stop, then:
/// let unfinished = shutdown.close_all(Duration::from_secs(5)).await;
/// assert_eq!(unfinished, 0);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connections: WebSocketCollection,
    started: AtomicBool,
}

impl Shutdown {
    /// A shutdown handle that has not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether [`close_all`](Shutdown::close_all) has been called.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::SeqCst)
    }

    /// Refuses new upgrades (503), closes every open connection with 1001 (going away)
    /// behind the messages already queued for it, and waits until all have ended or
    /// `timeout` has passed. Returns how many had not ended by then; they end by themselves
    /// within the close timeout.
    pub async fn close_all(&self, timeout: Duration) -> usize {
        self.inner.started.store(true, Ordering::SeqCst);
        let open = self.inner.connections.connections();
        for conn in &open {
            let _ = conn.close(CloseCode::GOING_AWAY, "server shutting down");
        }
        let all_closed = futures_util::future::join_all(open.iter().map(Connection::closed));
        let _ = tokio::time::timeout(timeout, all_closed).await;
        open.iter().filter(|conn| !conn.is_closed()).count()
    }

    /// Tracks a new connection, unless shutting down. Adding first and checking after means
    /// a connection is either refused or seen by `close_all`.
    pub(crate) fn track(&self, conn: &Connection) -> Result<(), HandshakeError> {
        self.inner.connections.add(conn.clone());
        if self.is_started() {
            self.inner.connections.remove(conn.id());
            return Err(HandshakeError::ShuttingDown);
        }
        Ok(())
    }
}

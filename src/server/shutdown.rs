//! Graceful shutdown: close every connection with 1001 after what is queued for it, and
//! refuse new ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::connection::Connection;
use crate::fanout::collection::WebSocketCollection;
use crate::protocol::close::CloseCode;
use crate::protocol::handshake::HandshakeError;
use crate::server::WebSocketServer;

/// The connections a server may have to close, and whether it is closing them.
#[derive(Debug, Default)]
pub(crate) struct ShutdownState {
    connections: WebSocketCollection,
    started: AtomicBool,
    /// Wakes [`serve`](WebSocketServer::serve) loops when the shutdown starts.
    starting: Notify,
}

impl ShutdownState {
    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Resolves once the shutdown has started.
    pub(crate) async fn started(&self) {
        loop {
            let notified = self.starting.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_started() {
                return;
            }
            notified.await;
        }
    }

    /// Tracks a new connection, unless shutting down. Adding first and checking after means
    /// a connection is either refused or seen by `close_all`.
    pub(crate) fn track(&self, conn: &Connection) -> Result<(), HandshakeError> {
        self.connections.add(conn.clone());
        if self.is_started() {
            self.connections.remove(conn.id());
            return Err(HandshakeError::ShuttingDown);
        }
        Ok(())
    }
}

impl WebSocketServer {
    /// Whether [`close_all`](WebSocketServer::close_all) has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_state().is_started()
    }

    /// Shuts down gracefully: refuses new upgrades (503), closes every open connection with
    /// 1001 (going away) behind the messages already queued for it, and waits until all
    /// have ended or `timeout` has passed. Returns how many had not ended by then; they end
    /// by themselves within the close timeout.
    ///
    /// Stop accepting TCP connections yourself first (the accept loop is yours).
    ///
    /// ```
    /// use std::time::Duration;
    /// use websocket_handler::WebSocketServer;
    ///
    /// # async fn run() {
    /// let server = WebSocketServer::new();
    /// // ... serve connections with `server` until it is time to stop, then:
    /// let unfinished = server.close_all(Duration::from_secs(5)).await;
    /// assert_eq!(unfinished, 0);
    /// # }
    /// ```
    pub async fn close_all(&self, timeout: Duration) -> usize {
        let state = self.shutdown_state();
        state.started.store(true, Ordering::SeqCst);
        state.starting.notify_waiters();
        let open = state.connections.connections();
        for conn in &open {
            let _ = conn.close(CloseCode::GOING_AWAY, "server shutting down");
        }
        let all_closed = futures_util::future::join_all(open.iter().map(Connection::closed));
        let _ = tokio::time::timeout(timeout, all_closed).await;
        open.iter().filter(|conn| !conn.is_closed()).count()
    }
}

//! Graceful shutdown: close every connection with 1001 after what is queued for it, and
//! refuse new ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::connection::Connection;
use crate::engine::sync::lock;
use crate::protocol::close::CloseCode;
use crate::protocol::handshake::HandshakeError;
use crate::server::WebSocketServer;

/// The connections of a server whose handlers have not finished, and whether the server is
/// shutting down.
#[derive(Debug, Default)]
pub(crate) struct ShutdownState {
    /// From the upgrade until `on_close` has returned (see [`Tracked`]).
    connections: Mutex<Open>,
    /// Wakes `close_all` when one of them has finished.
    finished: Notify,
    started: AtomicBool,
    /// Wakes [`serve`](WebSocketServer::serve) loops when the shutdown starts.
    starting: Notify,
    /// Run by `close_all` before it closes the connections (a protocol's goodbye).
    before_close: Mutex<BeforeClose>,
}

/// What [`ShutdownState::before_close`] runs.
#[derive(Default)]
struct BeforeClose(Vec<Box<dyn Fn() + Send + Sync>>);

impl std::fmt::Debug for BeforeClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} hooks", self.0.len())
    }
}

impl ShutdownState {
    /// The connections whose handlers have not finished.
    pub(crate) fn connections(&self) -> &Mutex<Open> {
        &self.connections
    }

    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Runs `hook` when [`close_all`](WebSocketServer::close_all) starts, before it closes
    /// the connections: what a protocol above says to its clients first (SignalR's Close).
    #[cfg_attr(not(feature = "signalr"), allow(dead_code))] // used by the signalr layer
    pub(crate) fn before_close(&self, hook: impl Fn() + Send + Sync + 'static) {
        lock(&self.before_close).0.push(Box::new(hook));
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
}

/// A connection `close_all` waits for, until its handler has finished (dropped after
/// `on_close` returned, or when the upgrade never happened).
/// The open connections, each in a slot of a list: a pointer per connection, where a hash
/// map by id costs some 35 bytes each. Freed slots are taken again first.
#[derive(Debug, Default)]
pub(crate) struct Open {
    slots: Vec<Option<Connection>>,
    free: Vec<u32>,
    len: usize,
}

impl Open {
    fn insert(&mut self, conn: Connection) -> u32 {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            self.slots[slot as usize] = Some(conn);
            return slot;
        }
        self.slots.push(Some(conn));
        // A slot per connection, and a process has far fewer than four billion sockets.
        (self.slots.len() - 1) as u32
    }

    fn remove(&mut self, slot: u32) {
        if let Some(taken) = self.slots.get_mut(slot as usize).and_then(Option::take) {
            drop(taken);
            self.len -= 1;
            self.free.push(slot);
        }
        if self.len == 0 {
            // After a storm, the lists give their memory back.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }

    /// Every slot, taken or free, in order: for the keep-alive timer, which walks the
    /// list a part at a time.
    pub(crate) fn slots(&self) -> &[Option<Connection>] {
        &self.slots
    }

    /// The open connections.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.slots.iter().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub(crate) struct Tracked {
    server: WebSocketServer,
    /// Where in [`Open`] the connection is.
    slot: u32,
}

impl Tracked {
    /// The server whose list it is in.
    pub(crate) fn server(&self) -> &WebSocketServer {
        &self.server
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let state = self.server.shutdown_state();
        lock(&state.connections).remove(self.slot);
        state.finished.notify_waiters();
    }
}

impl WebSocketServer {
    /// Tracks a new connection until its handler has finished, unless shutting down.
    /// Adding first and checking after means a connection is either refused or seen by
    /// `close_all`.
    pub(crate) fn track(&self, conn: &Connection) -> Result<Tracked, HandshakeError> {
        let state = self.shutdown_state();
        let slot = lock(&state.connections).insert(conn.clone());
        // After the insert: the timer's first tick sees the connection.
        self.start_sweep();
        let tracked = Tracked {
            server: self.clone(),
            slot,
        };
        if state.is_started() {
            return Err(HandshakeError::ShuttingDown);
        }
        Ok(tracked)
    }
}

impl WebSocketServer {
    /// Whether [`close_all`](WebSocketServer::close_all) has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_state().is_started()
    }

    /// Shuts down gracefully: refuses new upgrades (503), closes every open connection with
    /// 1001 (going away) behind the messages already queued for it, and waits until every
    /// handler has seen its `on_close`, or `timeout` has passed. Returns how many had not by
    /// then.
    ///
    /// Each connection ends within the close timeout of this call, whatever its client
    /// does (one that stops reading included); a handler still busy in a callback then
    /// gets its `on_error` and `on_close` once that callback returns. So returning from
    /// `main` after `close_all` has returned 0 skips no `on_close`.
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
        for hook in &lock(&state.before_close).0 {
            hook();
        }
        let open: Vec<Connection> = lock(&state.connections).iter().cloned().collect();
        for conn in &open {
            let _ = conn.close(CloseCode::GOING_AWAY, "server shutting down");
        }
        drop(open);
        let all_finished = async {
            loop {
                let finished = state.finished.notified();
                tokio::pin!(finished);
                finished.as_mut().enable();
                if lock(&state.connections).is_empty() {
                    return;
                }
                finished.await;
            }
        };
        let _ = tokio::time::timeout(timeout, all_finished).await;
        lock(&state.connections).len()
    }
}

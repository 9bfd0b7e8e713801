//! What every connection of a hub shares: the server, the settings, who is connected (by
//! id and by token), and the rooms that carry sends to all, to a group and to a user.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Uri};

use crate::engine::sync::lock;
use crate::fanout::collection::WebSocketCollection;
use crate::fanout::rooms::Rooms;
use crate::server::WebSocketServer;
use crate::signalr::session::Session;

/// Names the user of a socket from its request (the URI and headers of the upgrade).
pub(crate) type Identify = Box<dyn Fn(&Uri, &HeaderMap) -> Option<String> + Send + Sync>;

/// The hub's settings (see `HubBuilder`).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) path: String,
    pub(crate) keep_alive: Duration,
    pub(crate) client_timeout: Duration,
    pub(crate) negotiate_timeout: Duration,
    pub(crate) stateful: Option<StatefulSettings>,
}

/// Stateful reconnect's bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatefulSettings {
    /// How long a connection whose socket dropped waits for its client to come back.
    pub(crate) window: Duration,
    /// What a connection keeps until its client acknowledges it.
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
}

pub(crate) struct HubShared {
    pub(crate) server: WebSocketServer,
    pub(crate) settings: Settings,
    /// Every connection past its handshake.
    pub(crate) all: WebSocketCollection,
    pub(crate) groups: Rooms<String>,
    /// Each user's connections.
    pub(crate) users: Rooms<String>,
    pub(crate) identify: Option<Identify>,
    sessions: Mutex<Registry>,
    /// The timer of pings and expiries runs (started with the first connection).
    pub(crate) timer_started: AtomicBool,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<Box<str>, Arc<Session>>,
    /// Token to id.
    by_token: HashMap<Box<str>, Box<str>>,
}

impl HubShared {
    pub(crate) fn new(
        server: WebSocketServer,
        settings: Settings,
        rooms: (WebSocketCollection, Rooms<String>, Rooms<String>),
        identify: Option<Identify>,
    ) -> Self {
        let (all, groups, users) = rooms;
        HubShared {
            server,
            settings,
            all,
            groups,
            users,
            identify,
            sessions: Mutex::new(Registry::default()),
            timer_started: AtomicBool::new(false),
        }
    }

    /// Keeps a new connection, findable by id and token.
    pub(crate) fn register(&self, session: Arc<Session>) {
        let mut registry = lock(&self.sessions);
        registry
            .by_token
            .insert(session.token.clone(), session.id.clone());
        registry.by_id.insert(session.id.clone(), session);
    }

    /// Forgets a connection that has ended.
    pub(crate) fn unregister(&self, session: &Session) {
        let mut registry = lock(&self.sessions);
        registry.by_token.remove(&session.token);
        registry.by_id.remove(&session.id);
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).by_id.get(id).cloned()
    }

    pub(crate) fn by_token(&self, token: &str) -> Option<Arc<Session>> {
        let registry = lock(&self.sessions);
        let id = registry.by_token.get(token)?;
        registry.by_id.get(id).cloned()
    }

    /// Every connection, for the timer and the shutdown.
    pub(crate) fn sessions(&self) -> Vec<Arc<Session>> {
        lock(&self.sessions).by_id.values().cloned().collect()
    }

    /// How many connections are known (negotiated, open, or waiting for a reconnect).
    pub(crate) fn len(&self) -> usize {
        lock(&self.sessions).by_id.len()
    }
}

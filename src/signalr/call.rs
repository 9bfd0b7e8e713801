//! What a hub method knows of its call: who called, and the hub's clients and groups.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::signalr::clients::{Client, Clients, Target};
use crate::signalr::session::Session;
use crate::signalr::shared::HubShared;

/// One call of a hub method (or of a connection hook): the caller, and the hub's
/// [`Clients`]. Cheap to clone, and `'static`: a method may hand it to a task of its own.
#[derive(Clone)]
pub struct Call {
    session: Arc<Session>,
    shared: Arc<HubShared>,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("connection_id", &self.connection_id())
            .field("user", &self.session.user())
            .finish()
    }
}

impl Call {
    pub(crate) fn new(session: Arc<Session>, shared: Arc<HubShared>) -> Self {
        Call { session, shared }
    }

    /// The caller's connection.
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The caller's connection id (the `connectionId` of negotiate, which other clients may
    /// be told, unlike its token).
    pub fn connection_id(&self) -> &str {
        &self.session.id
    }

    /// The caller's user, as the hub's [`identify`](crate::signalr::HubBuilder::identify)
    /// named it.
    pub fn user(&self) -> Option<String> {
        self.session.user().map(|user| user.to_string())
    }

    /// The hub's clients, to send to any of them.
    pub fn clients(&self) -> Clients {
        Clients::new(self.shared.clone())
    }

    /// The caller, to send to or to ask for a result
    /// ([`Client::invoke`]).
    pub fn caller(&self) -> Client {
        self.clients().client(&self.session.id)
    }

    /// Every client but the caller.
    pub fn others(&self) -> Target {
        self.clients().all_except(&self.session.id)
    }

    /// The members of `group` but the caller.
    pub fn others_in_group(&self, group: &str) -> Target {
        self.clients().group_except(group, &self.session.id)
    }

    /// Adds the caller to `group` (a room of the hub's groups); false if it is there
    /// already or its socket is gone. It leaves every group when it disconnects.
    pub fn join(&self, group: &str) -> bool {
        match self.session.socket() {
            Some(socket) => self.shared.groups.join(group.to_owned(), &socket),
            None => false,
        }
    }

    /// Removes the caller from `group`; false if it was not there.
    pub fn leave(&self, group: &str) -> bool {
        match self.session.socket() {
            Some(socket) => self.shared.groups.leave(&group.to_owned(), socket.id()),
            None => false,
        }
    }

    /// The groups the caller is in.
    pub fn groups(&self) -> Vec<String> {
        match self.session.socket() {
            Some(socket) => self.shared.groups.rooms_of(&socket),
            None => Vec::new(),
        }
    }

    /// A query parameter of the caller's WebSocket request, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.session.socket()?.query_param(name)
    }

    /// The caller's address, as its socket's [`remote_addr`](crate::Connection::remote_addr).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.session.socket()?.remote_addr()
    }
}

//! Sending to clients: all of them, all but one, a group, a user's connections, one
//! connection; and asking one for a result. Usable from anywhere, a background task
//! included: [`Clients`] is a cheap handle.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::id::ConnectionId;
use crate::json::JsonError;
use crate::protocol::message::Message;
use crate::signalr::error::HubError;
use crate::signalr::records;
use crate::signalr::session::{Answer, Session};
use crate::signalr::shared::HubShared;

/// The clients of a hub, to send to: from [`Hub::clients`](crate::signalr::Hub::clients)
/// anywhere, or [`Call::clients`](crate::signalr::Call::clients) in a method. Cheap to
/// clone; every send queues without waiting for any client.
///
/// A send to many ([`all`](Self::all), [`group`](Self::group), [`user`](Self::user)) is
/// encoded once, as one record, and queued to every member as the same bytes (compressed
/// once per window, with permessage-deflate); with a backplane
/// ([`HubBuilder::backplane`](crate::signalr::HubBuilder::backplane)) it reaches the
/// members in the other processes too.
///
/// ```
/// use websocket_handler::signalr::Clients;
///
/// fn announce(clients: &Clients, text: &str) {
///     // Every connected client's handler for "ReceiveMessage" gets ("server", text).
///     let _ = clients.all().send("ReceiveMessage", ("server", text));
/// }
/// ```
#[derive(Clone)]
pub struct Clients {
    shared: Arc<HubShared>,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("connections", &self.shared.len())
            .finish()
    }
}

impl Clients {
    pub(crate) fn new(shared: Arc<HubShared>) -> Self {
        Clients { shared }
    }

    /// Every connected client.
    pub fn all(&self) -> Target {
        self.target(To::All(None))
    }

    /// Every connected client but the connection `connection_id` (typically the caller).
    pub fn all_except(&self, connection_id: &str) -> Target {
        let except = self.socket_id(connection_id);
        self.target(To::All(except))
    }

    /// The members of `group` (see [`Call::join`](crate::signalr::Call::join)).
    pub fn group(&self, group: &str) -> Target {
        self.target(To::Group(group.to_owned(), None))
    }

    /// The members of `group` but the connection `connection_id`.
    pub fn group_except(&self, group: &str, connection_id: &str) -> Target {
        let except = self.socket_id(connection_id);
        self.target(To::Group(group.to_owned(), except))
    }

    /// Every connection of `user`, as the hub's
    /// [`identify`](crate::signalr::HubBuilder::identify) named them.
    pub fn user(&self, user: &str) -> Target {
        self.target(To::User(user.to_owned()))
    }

    /// The one connection `connection_id`, in this process.
    pub fn client(&self, connection_id: &str) -> Client {
        Client {
            shared: self.shared.clone(),
            id: connection_id.to_owned(),
        }
    }

    fn target(&self, to: To) -> Target {
        Target {
            shared: self.shared.clone(),
            to,
        }
    }

    fn socket_id(&self, connection_id: &str) -> Option<ConnectionId> {
        let session = self.shared.by_id(connection_id)?;
        Some(session.socket()?.id())
    }
}

/// Some clients of a hub, to send one record to: see [`Clients`].
pub struct Target {
    shared: Arc<HubShared>,
    to: To,
}

enum To {
    All(Option<ConnectionId>),
    Group(String, Option<ConnectionId>),
    User(String),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match &self.to {
            To::All(_) => "all".to_owned(),
            To::Group(group, _) => format!("group {group:?}"),
            To::User(user) => format!("user {user:?}"),
        };
        f.debug_struct("Target").field("to", &to).finish()
    }
}

impl Target {
    /// Invokes the client method `method` with `arguments` (a tuple: `(a, b)`, `(a,)`, or
    /// `()` for none) on every client here, encoded once. Returns how many connections in
    /// this process it was queued to (as [`Rooms::broadcast_to`](crate::Rooms::broadcast_to)
    /// counts them).
    pub fn send<A: Serialize>(&self, method: &str, arguments: A) -> Result<usize, HubError> {
        let arguments = encode_arguments(&arguments)?;
        let record = Message::from(records::invocation(None, method, &arguments));
        let shared = &self.shared;
        Ok(match &self.to {
            To::All(None) => shared.all.broadcast(record),
            To::All(Some(except)) => shared.all.broadcast_except(*except, record),
            To::Group(group, None) => shared.groups.broadcast_to(group, record),
            To::Group(group, Some(except)) => {
                shared.groups.broadcast_to_except(group, *except, record)
            }
            To::User(user) => shared.users.broadcast_to(user, record),
        })
    }
}

/// One connection of a hub: to send to, or to ask for a result.
pub struct Client {
    shared: Arc<HubShared>,
    id: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("id", &self.id).finish()
    }
}

impl Client {
    /// The connection's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn session(&self) -> Result<Arc<Session>, HubError> {
        self.shared
            .by_id(&self.id)
            .ok_or_else(|| HubError::NotFound(self.id.clone()))
    }

    /// Invokes the client method `method` with `arguments` (a tuple) on this connection.
    pub fn send<A: Serialize>(&self, method: &str, arguments: A) -> Result<(), HubError> {
        let arguments = encode_arguments(&arguments)?;
        self.session()?
            .send(records::invocation(None, method, &arguments))
    }

    /// Invokes the client method `method` and waits for what it returns (a client result),
    /// within the hub's [`client_timeout`](crate::signalr::HubBuilder::client_timeout).
    ///
    /// The connection goes on reading meanwhile, so a hub method may await this for its
    /// own caller. Fails with [`HubError::Client`] if the client has no such method or its
    /// handler threw, [`HubError::Timeout`], or [`HubError::Closed`] if the connection ends
    /// first.
    pub async fn invoke<R, A>(&self, method: &str, arguments: A) -> Result<R, HubError>
    where
        R: DeserializeOwned,
        A: Serialize,
    {
        let arguments = encode_arguments(&arguments)?;
        let session = self.session()?;
        invoke(
            &session,
            self.shared.settings.client_timeout,
            method,
            &arguments,
        )
        .await
    }
}

/// Sends an invocation that wants an answer to `session` and awaits it.
async fn invoke<R: DeserializeOwned>(
    session: &Session,
    timeout: std::time::Duration,
    method: &str,
    arguments: &str,
) -> Result<R, HubError> {
    let (id, answer) = session.expect_answer();
    if let Err(error) = session.send(records::invocation(Some(&id), method, arguments)) {
        session.forget_answer(&id);
        return Err(error);
    }
    let answer = match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => return Err(HubError::Closed),
        Err(_) => {
            session.forget_answer(&id);
            return Err(HubError::Timeout(timeout));
        }
    };
    match answer {
        Answer::Result(result) => {
            let json = result.as_deref().unwrap_or("null");
            serde_json::from_str(json).map_err(|error| HubError::Json(JsonError::decoding(error)))
        }
        Answer::Error(error) => Err(HubError::Client(error)),
    }
}

/// `arguments` as the JSON array of an invocation: a tuple or a sequence; `()` (JSON
/// `null`) is no arguments.
pub(crate) fn encode_arguments<A: Serialize + ?Sized>(arguments: &A) -> Result<String, HubError> {
    let json = serde_json::to_string(arguments)
        .map_err(|error| HubError::Json(JsonError::Encode(error.to_string())))?;
    match json.as_bytes().first() {
        Some(b'[') => Ok(json),
        _ if json == "null" => Ok("[]".to_owned()),
        _ => Err(HubError::ArgumentsNotArray),
    }
}

//! A hub connection's WebSocket: the handshake, then each record the client sends, handed
//! to the hub's methods, streams and awaited client results.
//!
//! Reading never waits for a method: invocations are queued and run one at a time, in
//! order, on a task of their own (so a method awaiting its caller's client result hears
//! the answer), streams each run on a task of their own, and answers, cancels and pings
//! are handled at once.

use std::sync::Arc;

use futures_util::FutureExt;

use crate::connection::handler::WebSocketHandler;
use crate::connection::Connection;
use crate::engine::flush::HasCore;
use crate::protocol::close::{CloseCode, CloseFrame};
use crate::protocol::message::Message;
use crate::signalr::call::Call;
use crate::signalr::methods::Handlers;
use crate::signalr::records::{self, Inbound, RecordError};
use crate::signalr::session::{run_invocations, Answer, Session};
use crate::signalr::shared::HubShared;

/// The handler of one WebSocket of a hub connection.
pub(crate) struct HubSocket {
    session: Arc<Session>,
    shared: Arc<HubShared>,
    handlers: Arc<Handlers>,
    /// The user `identify` named from the request.
    user: Option<Arc<str>>,
    /// Stateful reconnect: the socket this one replaces.
    previous: Option<Connection>,
    /// Which socket of the connection this is (see `Session::attach`); 0 until open.
    generation: u64,
    opened: bool,
}

impl HubSocket {
    pub(crate) fn new(
        session: Arc<Session>,
        shared: Arc<HubShared>,
        handlers: Arc<Handlers>,
        user: Option<String>,
    ) -> Self {
        HubSocket {
            session,
            shared,
            handlers,
            user: user.map(Arc::from),
            previous: None,
            generation: 0,
            opened: false,
        }
    }

    /// This socket replaces `previous` (stateful reconnect), if any.
    pub(crate) fn resuming(mut self, previous: Option<Connection>) -> Self {
        self.previous = previous;
        self
    }

    /// Stateful reconnect: takes over from the previous socket, with no new handshake. The
    /// client gets a Sequence with the number of the oldest record it has not
    /// acknowledged, then those records again, then what comes next.
    fn resume(&mut self, conn: &Connection, old: &Connection) -> bool {
        // If the old socket still lives (the server has not seen it go), it keeps what is
        // sent from now on instead of writing it, and goes.
        old.park();
        let deflate_same = conn.core().deflate == old.core().deflate;
        if !deflate_same || !conn.take_over(old, records::sequence) {
            return false;
        }
        // As after a handshake: the hub's timer sees what is queued to it.
        conn.count_pushes();
        let _ = old.close(CloseCode::GOING_AWAY, "replaced by a new socket");
        tracing::debug!(id = %self.session.id, "SignalR connection resumed on a new socket");
        true
    }

    fn call(&self) -> Call {
        Call::new(self.session.clone(), self.shared.clone())
    }

    /// The first message: the handshake, answered; returns what followed it, or `None`
    /// if the connection is refused.
    async fn handshake<'a>(&mut self, conn: &Connection, text: &'a [u8]) -> Option<&'a [u8]> {
        let refusal = match records::parse_handshake(text) {
            Ok((handshake, _)) if handshake.protocol != "json" => Some(format!(
                "Requested protocol '{}' is not available.",
                handshake.protocol
            )),
            Ok((handshake, _)) if !(1..=2).contains(&handshake.version) => Some(format!(
                "The server does not support version {} of the 'json' protocol.",
                handshake.version
            )),
            Ok(_) => None,
            Err(error) => Some(error.to_string()),
        };
        if let Some(refusal) = refusal {
            tracing::debug!(%refusal, "SignalR handshake refused");
            let _ = conn.send(records::handshake_response(Some(&refusal)));
            let _ = conn.close(CloseCode::NORMAL, "");
            return None;
        }
        let rest = records::parse_handshake(text).map_or(&[][..], |(_, rest)| rest);
        // The answer goes before anything else: only now does the socket join the rooms
        // that sends to many go through.
        let _ = conn.send(records::handshake_response(None));
        if let (true, Some(stateful)) = (self.session.stateful, self.shared.settings.stateful) {
            // From here on, what it is sent is kept until the client acknowledges it.
            conn.make_resumable(stateful.max_messages, stateful.max_bytes);
        }
        // The hub's timer pings a client it has not written to lately: from here on.
        conn.count_pushes();
        self.session.set_handshaken();
        self.shared.all.add(conn.clone());
        if let Some(user) = &self.user {
            self.shared.users.join(user.to_string(), conn);
        }
        if let Some(connected) = &self.handlers.connected {
            connected(self.call()).await;
        }
        Some(rest)
    }

    /// A record the client broke the protocol with: the client is told why, and closed.
    fn refuse(&self, conn: &Connection, error: &RecordError) {
        tracing::debug!(%error, "SignalR protocol error");
        let _ = conn.send(records::close(Some(&error.to_string()), false));
        let _ = conn.close(CloseCode::NORMAL, "");
    }

    async fn dispatch(&self, conn: &Connection, record: Inbound<'_>) {
        let session = &self.session;
        if session.stateful && record.is_tracked() && !session.inbound_record() {
            // Replayed by the client after a reconnect, and processed before it.
            return;
        }
        match record {
            Inbound::Invocation {
                id,
                target,
                arguments,
                streaming,
                uploads,
            } => {
                let id = id.map(|id| id.into_owned());
                let error = |message: String| {
                    if let Some(id) = &id {
                        let _ = session.send(records::completion(id, Err(&message)));
                    }
                };
                let Some(method) = self.handlers.methods.get(&*target) else {
                    return error(format!("Unknown hub method '{target}'"));
                };
                if uploads {
                    return error(format!(
                        "Failed to invoke '{target}': streams from the client are not supported"
                    ));
                }
                if method.streams != streaming {
                    return error(if streaming {
                        format!("The client attempted to invoke the non-streaming method '{target}' in a streaming fashion.")
                    } else {
                        format!("The client attempted to invoke the streaming method '{target}' in a non-streaming fashion.")
                    });
                }
                if streaming {
                    // A StreamInvocation always has an id (the parser checks it).
                    let id = id.clone().unwrap_or_default();
                    let Some(cancelled) = session.start_stream(&id) else {
                        let message = format!("Invocation ID '{id}' is already in use.");
                        let _ = session.send(records::completion(&id, Err(&message)));
                        return;
                    };
                    let running = match method.start(self.call(), arguments, &id) {
                        Ok(running) => running,
                        Err(failed) => {
                            session.stream_done(&id);
                            let message = format!("Failed to invoke '{target}': {failed}");
                            let _ = session.send(records::completion(&id, Err(&message)));
                            return;
                        }
                    };
                    let session = session.clone();
                    tokio::spawn(async move {
                        // Cancelled (or the connection ended): the method is dropped here,
                        // and the stream still ends with a Completion.
                        let outcome = tokio::select! {
                            outcome = running => Some(outcome),
                            _ = cancelled => None,
                        };
                        session.stream_done(&id);
                        let record = match outcome {
                            Some(Err(failed)) => records::completion(&id, Err(&failed.to_string())),
                            Some(Ok(_)) | None => records::completion(&id, Ok(None)),
                        };
                        let _ = session.send_wait(record).await;
                    });
                    return;
                }
                let running = match method.start(self.call(), arguments, "") {
                    Ok(running) => running,
                    Err(failed) => return error(format!("Failed to invoke '{target}': {failed}")),
                };
                // Waits while this client has too many invocations queued: reading stops,
                // and TCP slows the client down.
                let Some(permit) = session.invocation_permit().await else {
                    return;
                };
                let answering = session.clone();
                let method_name = target.to_string();
                let job = async move {
                    // A panic in the application's method must not leave this client's
                    // queue of invocations stuck (`run_invocations` would never run again):
                    // it is answered as ASP.NET Core answers an exception.
                    let outcome = std::panic::AssertUnwindSafe(running).catch_unwind().await;
                    if outcome.is_err() {
                        tracing::error!(method = %method_name, "a SignalR hub method panicked");
                    }
                    let Some(id) = id else { return };
                    let record = match &outcome {
                        Ok(Ok(result)) => records::completion(&id, Ok(result.as_deref())),
                        Ok(Err(failed)) => records::completion(&id, Err(&failed.to_string())),
                        Err(_) => records::completion(
                            &id,
                            Err(&format!(
                                "An unexpected error occurred invoking '{method_name}' on the server."
                            )),
                        ),
                    };
                    let _ = answering.send(record);
                };
                if session.queue_invocation(Box::pin(job), permit) {
                    tokio::spawn(run_invocations(session.clone()));
                }
            }
            Inbound::Completion { id, result, error } => {
                let answer = match error {
                    Some(error) => Answer::Error(error.into_owned()),
                    None => Answer::Result(result.map(|result| result.get().to_owned())),
                };
                if !session.answer(&id, answer) {
                    tracing::debug!(%id, "a client result nobody awaits (any more)");
                }
            }
            Inbound::Cancel { id } => session.cancel_stream(&id),
            Inbound::StreamItem { id } => {
                tracing::debug!(%id, "an item of a stream from the client: not supported");
            }
            Inbound::Close { error } => {
                tracing::debug!(error = error.as_deref(), "the SignalR client is closing");
                let _ = conn.close(CloseCode::NORMAL, "");
            }
            Inbound::Ack { sequence_id } => conn.ack(sequence_id),
            Inbound::Sequence { sequence_id } => {
                if !session.inbound_sequence(sequence_id) {
                    let error = RecordError::Json(format!(
                        "Sequence {sequence_id} is past the records received"
                    ));
                    self.refuse(conn, &error);
                }
            }
            Inbound::Ping => {}
        }
    }

    /// The connection is over: forgotten, its waits failed, its hook run.
    async fn end(&mut self) {
        finish(&self.session, &self.shared, &self.handlers).await;
    }
}

/// Ends a connection: it leaves its groups, is forgotten, its waits fail, its hook runs.
async fn finish(session: &Arc<Session>, shared: &Arc<HubShared>, handlers: &Handlers) {
    if let Some(socket) = session.socket() {
        socket.leave_all();
    }
    session.end();
    shared.unregister(session);
    if let Some(disconnected) = &handlers.disconnected {
        disconnected(Call::new(session.clone(), shared.clone())).await;
    }
}

impl WebSocketHandler for HubSocket {
    async fn on_open(&mut self, conn: &Connection) {
        self.opened = true;
        if let Some(old) = self.previous.take() {
            if !self.resume(conn, &old) {
                let error = "the connection cannot be resumed";
                conn.core()
                    .send_unkept_text(&records::close(Some(error), false));
                let _ = conn.close(CloseCode::NORMAL, "");
                return;
            }
        }
        match self.session.attach(conn, self.user.clone()) {
            Some(generation) => self.generation = generation,
            None => {
                let _ = conn.close(CloseCode::NORMAL, "");
            }
        }
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else {
            // The JSON protocol is text; MessagePack (binary) is not served.
            self.refuse(conn, &RecordError::Json("a binary message".to_owned()));
            return;
        };
        let mut bytes = text.as_bytes();
        if !self.session.is_handshaken() {
            match self.handshake(conn, bytes).await {
                Some([]) => return,
                Some(rest) => bytes = rest,
                None => return,
            }
        }
        let records = match records::split(bytes) {
            Ok(records) => records,
            Err(error) => return self.refuse(conn, &error),
        };
        for record in records {
            match records::parse(record) {
                Ok(record) => self.dispatch(conn, record).await,
                Err(error) => return self.refuse(conn, &error),
            }
        }
    }

    async fn on_close(&mut self, conn: &Connection, frame: &CloseFrame) {
        if self.generation == 0 || !self.session.is_current(self.generation) {
            // Another socket has taken over (or this one never attached): it goes on.
            return;
        }
        // Stateful reconnect: a socket lost without a close (the network, not the client
        // or the server) waits for its client to come back, keeping what is sent to it.
        let lost = frame.code == CloseCode::ABNORMAL;
        let window = self
            .shared
            .settings
            .stateful
            .map(|stateful| stateful.window);
        if let (true, true, Some(window)) = (self.session.stateful, lost, window) {
            if conn.can_resume()
                && !self.shared.server.is_shutting_down()
                && self.session.park(self.generation)
            {
                tracing::debug!(id = %self.session.id, "SignalR socket lost: waiting {window:?} for the client");
                let (session, shared, handlers) = (
                    self.session.clone(),
                    self.shared.clone(),
                    self.handlers.clone(),
                );
                let generation = self.generation;
                tokio::spawn(async move {
                    tokio::time::sleep(window).await;
                    if session.is_parked_at(generation) {
                        tracing::debug!(id = %session.id, "SignalR client did not come back");
                        finish(&session, &shared, &handlers).await;
                    }
                });
                return;
            }
        }
        self.end().await;
    }
}

impl Drop for HubSocket {
    fn drop(&mut self) {
        if !self.opened && self.previous.is_none() {
            // The upgrade never completed: the connection is over (unless this socket
            // was to resume one, which waits on for its client).
            self.session.end();
            self.shared.unregister(&self.session);
        }
    }
}

//! A hub connection's WebSocket: the handshake, then each record the client sends, handed
//! to the hub's methods, streams and awaited client results.
//!
//! Reading never waits for a method: invocations are queued and run one at a time, in
//! order, on a task of their own (so a method awaiting its caller's client result hears
//! the answer), streams each run on a task of their own, and answers, cancels and pings
//! are handled at once.

use std::sync::Arc;

use crate::connection::handler::WebSocketHandler;
use crate::connection::Connection;
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
            opened: false,
        }
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
                let job = async move {
                    let outcome = running.await;
                    let Some(id) = id else { return };
                    let record = match &outcome {
                        Ok(result) => records::completion(&id, Ok(result.as_deref())),
                        Err(failed) => records::completion(&id, Err(&failed.to_string())),
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
            Inbound::StreamItem { .. } => {
                tracing::debug!("a stream item from the client: client streams are not supported");
            }
            Inbound::Close { .. } => {
                let _ = conn.close(CloseCode::NORMAL, "");
            }
            Inbound::Ping | Inbound::Ack { .. } | Inbound::Sequence { .. } => {}
        }
    }

    /// The connection is over: forgotten, its waits failed, its hook run.
    async fn end(&mut self) {
        self.session.end();
        self.shared.unregister(&self.session);
        if let Some(disconnected) = &self.handlers.disconnected {
            disconnected(self.call()).await;
        }
    }
}

impl WebSocketHandler for HubSocket {
    async fn on_open(&mut self, conn: &Connection) {
        self.opened = true;
        if !self.session.attach(conn, self.user.clone()) {
            let _ = conn.close(CloseCode::NORMAL, "");
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
                Some(rest) if rest.is_empty() => return,
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

    async fn on_close(&mut self, _conn: &Connection, _frame: &CloseFrame) {
        self.end().await;
    }
}

impl Drop for HubSocket {
    fn drop(&mut self) {
        if !self.opened {
            // The upgrade never completed: the connection is over.
            self.session.end();
            self.shared.unregister(&self.session);
        }
    }
}

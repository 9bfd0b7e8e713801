//! The hub: its methods and settings ([`HubBuilder`]), and its HTTP endpoint, which answers
//! `POST {path}/negotiate` and the WebSocket `GET {path}?id=<token>` ([`Hub::handle`], or
//! [`Hub::serve`] for a server of nothing else).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method as HttpMethod, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::backplane::Backplane;
use crate::fanout::collection::WebSocketCollection;
use crate::fanout::rooms::Rooms;
use crate::server::body::Body;
use crate::server::WebSocketServer;
use crate::signalr::call::Call;
use crate::signalr::clients::Clients;
use crate::signalr::error::HubError;
use crate::signalr::keepalive;
use crate::signalr::methods::{Handlers, Method};
use crate::signalr::negotiate::{self, Asked};
use crate::signalr::records;
use crate::signalr::session::{Refused, Session};
use crate::signalr::shared::{HubShared, Identify, Settings, StatefulSettings};
use crate::signalr::socket::HubSocket;
use crate::signalr::streaming::StreamItems;

/// A SignalR hub: named methods the clients call, and [`Clients`] to call the clients'
/// methods. Made once with [`Hub::builder`]; cheap to clone.
///
/// It answers its two HTTP endpoints: `POST {path}/negotiate`, and the WebSocket at
/// `{path}` (with `?id=<token>` after negotiate, or without for clients that skip it).
/// Mount [`handle`](Hub::handle) in a hyper service or an axum router, or let
/// [`serve`](Hub::serve) run a server of nothing else.
///
/// ```no_run
/// use websocket_handler::signalr::{Hub, HubError};
/// use websocket_handler::WebSocketServer;
///
/// # async fn run() -> std::io::Result<()> {
/// let server = WebSocketServer::new();
/// let hub = Hub::builder("/hubs/chat")
///     .method("SendMessage", |call, (user, message): (String, String)| async move {
///         call.clients().all().send("ReceiveMessage", (user, message))?;
///         Ok(())
///     })
///     .method("Echo", |_call, (value,): (serde_json::Value,)| async move { Ok(value) })
///     .method("Fail", |_call, (): ()| async move {
///         Err::<(), _>(HubError::new("it failed, as asked"))
///     })
///     .build(&server);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
/// hub.serve(listener).await
/// # }
/// ```
#[derive(Clone)]
pub struct Hub {
    shared: Arc<HubShared>,
    handlers: Arc<Handlers>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("path", &self.shared.settings.path)
            .field("methods", &self.handlers.methods.len())
            .field("connections", &self.shared.len())
            .finish()
    }
}

/// Builds a [`Hub`]: its path, methods, hooks and settings.
pub struct HubBuilder {
    settings: Settings,
    handlers: Handlers,
    identify: Option<Identify>,
    rooms: Option<(WebSocketCollection, Rooms<String>, Rooms<String>)>,
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("settings", &self.settings)
            .field("methods", &self.handlers.methods.len())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub at `path` (`/hubs/chat`: negotiate at `/hubs/chat/negotiate`).
    pub fn builder(path: &str) -> HubBuilder {
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        HubBuilder {
            settings: Settings {
                path,
                keep_alive: Duration::from_secs(15),
                client_timeout: Duration::from_secs(30),
                negotiate_timeout: Duration::from_secs(15),
                stateful: Some(StatefulSettings {
                    window: Duration::from_secs(30),
                    max_messages: 4096,
                    max_bytes: 1 << 20,
                }),
            },
            handlers: Handlers::default(),
            identify: None,
            rooms: None,
        }
    }

    /// The hub's clients, to send to from anywhere (a background task included).
    pub fn clients(&self) -> Clients {
        Clients::new(self.shared.clone())
    }

    /// The hub's path.
    pub fn path(&self) -> &str {
        &self.shared.settings.path
    }

    /// Whether `path` is one of the hub's endpoints (`{path}` or `{path}/negotiate`), for
    /// routers that send only those to [`handle`](Hub::handle).
    pub fn serves(&self, path: &str) -> bool {
        path == self.path() || self.is_negotiate(path)
    }

    fn is_negotiate(&self, path: &str) -> bool {
        path.strip_prefix(self.path().trim_end_matches('/')) == Some("/negotiate")
    }

    /// How many connections the hub knows: negotiated, open, or waiting for their client
    /// to reconnect.
    pub fn connections(&self) -> usize {
        self.shared.len()
    }

    /// Answers a request to the hub: `POST {path}/negotiate` (and its CORS preflight), the
    /// WebSocket upgrade at `{path}`, and 404 for other paths.
    ///
    /// Negotiate answers a connection id and a secret token; the WebSocket then comes with
    /// `?id=<token>` (404 for an unknown or ended one, 409 if it has a socket already),
    /// or without an id from a client that skipped negotiate. Origins are the server's
    /// ([`ServerBuilder::allowed_origins`](crate::ServerBuilder::allowed_origins)): a
    /// browser on another origin that is allowed gets the CORS headers it needs to send
    /// negotiate with credentials, as the JavaScript client does.
    pub fn handle<B>(&self, request: Request<B>) -> Response<Body> {
        let path = request.uri().path();
        if self.is_negotiate(path) {
            return match *request.method() {
                HttpMethod::POST => self.negotiate(&request),
                HttpMethod::OPTIONS => self.preflight(request.headers()),
                _ => plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            };
        }
        if path != self.path() {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        if request.method() == HttpMethod::OPTIONS {
            return self.preflight(request.headers());
        }
        self.connect(request)
    }

    /// `POST {path}/negotiate`.
    fn negotiate<B>(&self, request: &Request<B>) -> Response<Body> {
        let server = &self.shared.server;
        let headers = request.headers();
        let Some(cors) = self.cors(headers) else {
            return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
        };
        if server.is_shutting_down() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        }
        let asked = Asked::from_query(request.uri().query().unwrap_or(""));
        let stateful = asked.stateful && self.shared.settings.stateful.is_some();
        let (Some(id), Some(token)) = (negotiate::random_id(), negotiate::random_id()) else {
            tracing::error!("no randomness for a SignalR connection token");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n");
        };
        // Version 0 has no token: the id attaches the socket.
        let token = if asked.version == 0 {
            id.clone()
        } else {
            token
        };
        let answer = negotiate::response(asked, &id, &token, stateful);
        self.shared
            .register(Arc::new(Session::new(id, token, stateful)));
        keepalive::start(&self.shared);
        let mut response = Response::new(Body::from(answer));
        let out = response.headers_mut();
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        out.extend(cors);
        response
    }

    /// The CORS headers for a request from its `Origin`: none for a request without one,
    /// `None` for an origin the server does not allow.
    fn cors(&self, headers: &HeaderMap) -> Option<HeaderMap> {
        let mut out = HeaderMap::new();
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Some(out);
        };
        let config = self.shared.server.config();
        if !config.origin_allowed(Some(origin), headers.get(header::HOST)) {
            return None;
        }
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        Some(out)
    }

    /// The answer to a CORS preflight (`OPTIONS`) before negotiate.
    fn preflight(&self, headers: &HeaderMap) -> Response<Body> {
        let Some(cors) = self.cors(headers) else {
            return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
        };
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.extend(cors);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    }

    /// The WebSocket at `{path}`.
    fn connect<B>(&self, request: Request<B>) -> Response<Body> {
        let upgrade = match self.shared.server.check_upgrade(request) {
            Ok(upgrade) => upgrade,
            Err(refused) => return refused.to_response(),
        };
        let user = self
            .shared
            .identify
            .as_ref()
            .and_then(|identify| identify(upgrade.uri(), upgrade.headers()));
        let mut previous = None;
        let session = match upgrade.query_param("id") {
            Some(token) => {
                let Some(session) = self.shared.by_token(&token) else {
                    return upgrade.refuse(StatusCode::NOT_FOUND, "No Connection with that ID\n");
                };
                match session.claim() {
                    Ok(old) => {
                        previous = old;
                        session
                    }
                    Err(Refused::Gone) => {
                        return upgrade
                            .refuse(StatusCode::NOT_FOUND, "No Connection with that ID\n")
                    }
                    Err(Refused::Taken) => {
                        return upgrade.refuse(
                            StatusCode::CONFLICT,
                            "This connection has a socket already\n",
                        )
                    }
                }
            }
            None => {
                // A client that skipped negotiate: a connection of its own, with no token
                // to come back with.
                let (Some(id), Some(token)) = (negotiate::random_id(), negotiate::random_id())
                else {
                    return upgrade.refuse(StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n");
                };
                let session = Arc::new(Session::new(id, token, false));
                let _ = session.claim();
                self.shared.register(session.clone());
                session
            }
        };
        keepalive::start(&self.shared);
        // A stateful connection's new socket goes on under the old one's id, to take its
        // place in the groups at once for every send.
        let id = previous.as_ref().map(|old| old.id());
        let socket = HubSocket::new(session, self.shared.clone(), self.handlers.clone(), user)
            .resuming(previous);
        // Refused by the server's limits: the socket handler is dropped, which ends the
        // connection (unless it was resuming one: that one waits on for its client).
        match upgrade.try_accept_as(socket, id) {
            Ok(response) => response,
            Err(refused) => refused.to_response(),
        }
    }

    /// Serves the hub on `listener` until the server's
    /// [`close_all`](WebSocketServer::close_all) (then it returns `Ok`) or the listener
    /// fails: HTTP/1.1, with the server's limits on pending connections and handshakes (see
    /// [`ConnectionSlot`](crate::ConnectionSlot)). Every path but the hub's gets 404; a
    /// server that serves pages too mounts [`handle`](Hub::handle) in its own service.
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        let server = self.shared.server.clone();
        loop {
            let slot = tokio::select! {
                slot = server.connection_slot() => slot,
                () = server.shutdown_state().started() => return Ok(()),
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = server.shutdown_state().started() => return Ok(()),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let _ = stream.set_nodelay(true);
            let hub = self.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let response = hub.handle(request);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                if let Err(error) = slot
                    .serve(stream, peer, http::Version::HTTP_11, service)
                    .await
                {
                    tracing::debug!(%error, %peer, "HTTP connection failed");
                }
            });
        }
    }
}

/// Accept errors that concern one connection or a passing shortage, not the listener.
fn is_transient(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(error.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl HubBuilder {
    /// A method clients call by `name` (case-sensitive) with arguments that decode as `A`:
    /// a tuple of as many values (`(String, u32)`, `(String,)`), a struct of as many fields,
    /// or `()` for none. What it returns is the caller's result (`()`: none); its error is
    /// the caller's error, and the connection stays open. Arguments that do not decode
    /// are answered with an error without calling it.
    ///
    /// A client's calls run one at a time, in the order it sent them (the connection goes
    /// on reading meanwhile); a method that takes long should hand its work to a task.
    pub fn method<A, R, F, Fut>(mut self, name: &str, function: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Call, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HubError>> + Send + 'static,
    {
        self.handlers
            .methods
            .insert(name.to_owned(), Method::unary(function));
        self
    }

    /// A streaming method (the client's `connection.stream(name, ...)`): it sends items
    /// with its [`StreamItems`] and returns when the stream is complete (`Err`: the stream
    /// ends with that error). When the client cancels it, its future is dropped and the
    /// stream ends with a Completion. Streams run concurrently with the client's other
    /// calls.
    pub fn stream<A, T, F, Fut>(mut self, name: &str, function: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        T: Serialize + 'static,
        F: Fn(Call, A, StreamItems<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HubError>> + Send + 'static,
    {
        self.handlers
            .methods
            .insert(name.to_owned(), Method::stream(function));
        self
    }

    /// Runs `hook` when a client has connected (after its handshake), before its first call.
    pub fn on_connected<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.handlers.connected = Some(Box::new(move |call| Box::pin(hook(call))));
        self
    }

    /// Runs `hook` when a client's connection has ended (it has left its groups already).
    pub fn on_disconnected<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.handlers.disconnected = Some(Box::new(move |call| Box::pin(hook(call))));
        self
    }

    /// Names the user of each socket from its upgrade request (a verified token, a
    /// session cookie): [`Clients::user`] reaches all of a user's connections.
    pub fn identify(
        mut self,
        identify: impl Fn(&http::Uri, &HeaderMap) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.identify = Some(Box::new(identify));
        self
    }

    /// How long the server may go without writing to a client before it sends a Ping
    /// (15 s by default, what the clients expect: they give up after 30 s of silence).
    pub fn keep_alive_interval(mut self, interval: Duration) -> Self {
        self.settings.keep_alive = interval;
        self
    }

    /// How long [`Client::invoke`](crate::signalr::Client::invoke) waits for a client
    /// result (30 s by default).
    pub fn client_timeout(mut self, timeout: Duration) -> Self {
        self.settings.client_timeout = timeout;
        self
    }

    /// How long a negotiated connection waits for its WebSocket (15 s by default).
    pub fn negotiate_timeout(mut self, timeout: Duration) -> Self {
        self.settings.negotiate_timeout = timeout;
        self
    }

    /// Stateful reconnect, for clients that ask for it (`withStatefulReconnect()`): a
    /// connection whose socket drops waits `window` for its client to come back, and
    /// keeps what it sent until the client acknowledges it, at most `max_messages` and
    /// `max_bytes` (on by default: 30 s, 4,096 messages, 1 MiB).
    pub fn stateful_reconnect(
        mut self,
        window: Duration,
        max_messages: usize,
        max_bytes: usize,
    ) -> Self {
        self.settings.stateful = Some(StatefulSettings {
            window,
            max_messages,
            max_bytes,
        });
        self
    }

    /// No stateful reconnect: negotiate never offers it.
    pub fn no_stateful_reconnect(mut self) -> Self {
        self.settings.stateful = None;
        self
    }

    /// Carries sends to all, to groups and to users to the hub's connections in every
    /// process on `backplane` (topics `{topic}.all`, `{topic}.groups`, `{topic}.users`).
    /// A send to one connection ([`Clients::client`]) reaches it only in its own process.
    pub fn backplane<B: Backplane + Clone>(mut self, topic: &str, backplane: B) -> Self {
        self.rooms = Some((
            WebSocketCollection::with_backplane(format!("{topic}.all"), backplane.clone()),
            Rooms::with_backplane(format!("{topic}.groups"), backplane.clone()),
            Rooms::with_backplane(format!("{topic}.users"), backplane),
        ));
        self
    }

    /// The hub, its connections served by `server` (its limits, origins and shutdown).
    /// Its [`close_all`](WebSocketServer::close_all) first tells every client to reconnect
    /// (a Close with `allowReconnect`), then closes them.
    pub fn build(self, server: &WebSocketServer) -> Hub {
        let rooms = self
            .rooms
            .unwrap_or_else(|| (WebSocketCollection::new(), Rooms::new(), Rooms::new()));
        let shared = Arc::new(HubShared::new(
            server.clone(),
            self.settings,
            rooms,
            self.identify,
        ));
        let weak = Arc::downgrade(&shared);
        server.shutdown_state().before_close(move || {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            for session in shared.sessions() {
                if session.is_handshaken() {
                    let _ = session.send_untracked(&records::close(None, true));
                }
            }
        });
        Hub {
            shared,
            handlers: Arc::new(self.handlers),
        }
    }
}

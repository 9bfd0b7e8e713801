//! Answering an upgrade request: the handshake checks, the `101` answer, and handing the
//! upgraded socket to the connection's task.

use std::fmt;
use std::net::SocketAddr;

use http::{
    header, Extensions, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::connection::driver::{self, Socket};
use crate::connection::handler::WebSocketHandler;
use crate::connection::{Connection, RequestParts};
use crate::engine::tcp;
use crate::engine::writer::WriteIo;
use crate::protocol::deflate;
use crate::protocol::handshake::{check_head, Accept, HandshakeError};
use crate::server::address::{client_address, peer_address};
use crate::server::body::Body;
use crate::server::h2_streams::StreamLink;
use crate::server::lease::Lease;
use crate::server::limit::ConnectionLimit;
use crate::server::listener::ListenerLink;
#[cfg(feature = "tls")]
use crate::server::tls::stream::TlsStream;
use crate::server::WebSocketServer;

impl WebSocketServer {
    /// Answers a WebSocket upgrade request and, once hyper hands over the connection, runs it
    /// with `handler`.
    ///
    /// Returns `101 Switching Protocols` for a valid handshake, or the plain-text 4xx of the
    /// [`HandshakeError`] that refused it (405 for a method other than GET, 400 for missing or
    /// invalid `Connection`, `Upgrade` or `Sec-WebSocket-Key` headers, 426 with
    /// `Sec-WebSocket-Version: 13` for another protocol version). A refused request never calls
    /// the handler. Call it from inside a tokio runtime: the connection runs on a spawned task.
    ///
    /// Works for any body type, so it fits a plain hyper `service_fn` and an axum handler alike
    /// (axum's request is an `http::Request`; answer with `.map(axum::body::Body::new)`). The
    /// hyper connection must be served with `with_upgrades()`: without it, hyper answers the
    /// 101 and then drops the connection, which is logged as a `warn` that says so. If the
    /// request's extensions hold a [`SocketAddr`](std::net::SocketAddr) (or, with the
    /// cargo feature `axum`, axum's `ConnectInfo<SocketAddr>`), it becomes the connection's
    /// [`remote_addr`](Connection::remote_addr), and the limits per address count it;
    /// without one those limits cannot apply (a `warn` says so, once per server).
    ///
    /// Over HTTP/2 the same call takes an extended `CONNECT` with `:protocol` websocket
    /// (RFC 8441): the same checks but the key (there is none), `200` instead of `101`, and
    /// the stream, one of many on the connection, runs as its own connection with its own
    /// handler (counted one by one against the connection limit). hyper's HTTP/2 server
    /// must advertise it: `hyper::server::conn::http2::Builder::enable_connect_protocol`
    /// (`tests/http2.rs` serves it so). A GET over HTTP/2 gets 405.
    ///
    /// ```no_run
    /// use std::convert::Infallible;
    /// use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
    /// use hyper_util::rt::TokioIo;
    /// use websocket_handler::{Connection, Message, WebSocketHandler, WebSocketServer};
    ///
    /// struct Echo;
    ///
    /// impl WebSocketHandler for Echo {
    ///     async fn on_message(&mut self, conn: &Connection, message: Message) {
    ///         let _ = conn.send(message);
    ///     }
    /// }
    ///
    /// # async fn serve() -> std::io::Result<()> {
    /// let server = WebSocketServer::new(); // once: its clones share one limit and one shutdown
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
    /// loop {
    ///     let (stream, peer) = listener.accept().await?;
    ///     stream.set_nodelay(true)?;
    ///     let server = server.clone();
    ///     let service = service_fn(move |mut req: Request<Incoming>| {
    ///         req.extensions_mut().insert(peer);
    ///         let response = server.upgrade(req, Echo);
    ///         async move { Ok::<_, Infallible>(response) }
    ///     });
    ///     tokio::spawn(
    ///         http1::Builder::new()
    ///             .serve_connection(TokioIo::new(stream), service)
    ///             .with_upgrades(),
    ///     );
    /// }
    /// # }
    /// ```
    #[must_use = "the response must be sent for the connection to open"]
    pub fn upgrade<B, H>(&self, request: Request<B>, handler: H) -> Response<Body>
    where
        H: WebSocketHandler,
    {
        match self.try_upgrade(request, handler) {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, "refused WebSocket upgrade");
                error.to_response()
            }
        }
    }

    /// Like [`upgrade`](WebSocketServer::upgrade), but hands back the [`HandshakeError`] of
    /// a refused request instead of its response, for servers that answer refusals their own
    /// way.
    pub fn try_upgrade<B, H>(
        &self,
        request: Request<B>,
        handler: H,
    ) -> Result<Response<Body>, HandshakeError>
    where
        H: WebSocketHandler,
    {
        self.check_upgrade(request)?.try_accept(handler)
    }

    /// The first half of [`upgrade`](WebSocketServer::upgrade): checks the handshake
    /// (method, headers, version, origin, that hyper can hand the connection over) and
    /// commits nothing, so that the application can decide, taking its time, whether to
    /// [`accept`](WebSocketUpgrade::accept) the connection or answer something else (401,
    /// 403, 404...). Nothing is counted or held until it accepts: the connection limits are
    /// checked then.
    ///
    /// ```
    /// use http::{Request, Response, StatusCode};
    /// use websocket_handler::{Body, Connection, Message, WebSocketHandler, WebSocketServer};
    ///
    /// struct Echo;
    ///
    /// impl WebSocketHandler for Echo {
    ///     async fn on_message(&mut self, conn: &Connection, message: Message) {
    ///         let _ = conn.send(message);
    ///     }
    /// }
    ///
    /// async fn token_is_valid(token: &str) -> bool {
    ///     token == "let-me-in" // a database or a key set in a real server
    /// }
    ///
    /// async fn handle<B>(server: &WebSocketServer, request: Request<B>) -> Response<Body> {
    ///     let upgrade = match server.check_upgrade(request) {
    ///         Ok(upgrade) => upgrade,
    ///         Err(refused) => return refused.to_response(),
    ///     };
    ///     let token = upgrade.query_param("token").unwrap_or_default();
    ///     if !token_is_valid(&token).await {
    ///         return upgrade.refuse(StatusCode::UNAUTHORIZED, "a valid token is needed\n");
    ///     }
    ///     upgrade.accept(Echo)
    /// }
    /// ```
    pub fn check_upgrade<B>(
        &self,
        request: Request<B>,
    ) -> Result<WebSocketUpgrade, HandshakeError> {
        let (mut parts, _body) = request.into_parts();
        let on_upgrade = parts.extensions.remove::<OnUpgrade>();
        let listener = parts.extensions.remove::<ListenerLink>();
        self.check_parts(
            parts.method,
            parts.version,
            parts.uri,
            parts.headers,
            &parts.extensions,
            on_upgrade,
            listener,
        )
    }

    /// [`check_upgrade`](Self::check_upgrade) on a request's parts, taken apart.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_parts(
        &self,
        method: Method,
        version: Version,
        uri: Uri,
        headers: HeaderMap,
        extensions: &Extensions,
        on_upgrade: Option<OnUpgrade>,
        listener: Option<ListenerLink>,
    ) -> Result<WebSocketUpgrade, HandshakeError> {
        let config = self.config();
        // HTTP/2 keeps the extended CONNECT's `:protocol` apart from the headers.
        let protocol_pseudo = extensions
            .get::<hyper::ext::Protocol>()
            .map(hyper::ext::Protocol::as_str);
        let accept = check_head(&method, version, &headers, protocol_pseudo)?;
        let origin = headers.get(header::ORIGIN);
        // HTTP/2 names the host in `:authority` (the URI's), not in a `Host` header.
        let authority = uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
        let host = headers.get(header::HOST).or(authority.as_ref());
        if !config.origin_allowed(origin, host) {
            let origin = origin.map_or_else(String::new, |origin| {
                String::from_utf8_lossy(origin.as_bytes()).into_owned()
            });
            return Err(HandshakeError::OriginNotAllowed(origin));
        }
        let on_upgrade = on_upgrade.ok_or(HandshakeError::NotUpgradable)?;
        Ok(WebSocketUpgrade {
            server: self.clone(),
            remote_addr: peer_address(extensions),
            uri,
            headers,
            accept,
            on_upgrade,
            listener,
        })
    }
}

/// A WebSocket upgrade request whose handshake was checked and not yet answered: made by
/// [`WebSocketServer::check_upgrade`] (or, with the cargo feature `axum`, extracted by an
/// axum handler), answered by [`accept`](WebSocketUpgrade::accept) with a handler, or by
/// any other response ([`refuse`](WebSocketUpgrade::refuse) makes a plain one). Dropping
/// it refuses too: nothing was counted or started.
///
/// What it shows of the request ([`uri`](Self::uri), [`headers`](Self::headers),
/// [`query_param`](Self::query_param), [`remote_addr`](Self::remote_addr)) is what an
/// application checks before admitting a client: a token, a cookie, a path.
pub struct WebSocketUpgrade {
    server: WebSocketServer,
    uri: Uri,
    headers: HeaderMap,
    remote_addr: Option<SocketAddr>,
    accept: Accept,
    on_upgrade: OnUpgrade,
    /// Set on a connection served by a [`ConnectionSlot`](crate::ConnectionSlot).
    listener: Option<ListenerLink>,
}

impl fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("uri", &self.uri)
            .field("remote_addr", &self.remote_addr)
            .field("http2", &(self.accept == Accept::Connect))
            .finish_non_exhaustive()
    }
}

impl WebSocketUpgrade {
    /// The request's URI (over HTTP/2, with the scheme and authority of its pseudo-headers).
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The request's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The value of query parameter `name`, percent-decoded (the first, if it is repeated);
    /// `None` if it is absent or not valid UTF-8, as
    /// [`Connection::query_param`](crate::Connection::query_param). See
    /// [`query_param`](crate::query_param) to tell those apart.
    pub fn query_param(&self, name: &str) -> Option<String> {
        crate::protocol::query::query_param(self.uri.query().unwrap_or(""), name)
            .ok()
            .flatten()
    }

    /// Every value of a repeated query parameter, as
    /// [`Connection::query_params`](crate::Connection::query_params).
    pub fn query_params(&self, name: &str) -> Vec<String> {
        crate::protocol::query::query_params(self.uri.query().unwrap_or(""), name)
            .filter_map(Result::ok)
            .collect()
    }

    /// The peer's address, if the request carried one (see
    /// [`WebSocketServer::upgrade`]); what [`Connection::remote_addr`] will say.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// Answers the request with a plain-text `status` and `body`, not upgrading: for the
    /// application's own refusals (`401` for a missing token, `404` for an unknown room).
    pub fn refuse(self, status: StatusCode, body: impl Into<Body>) -> Response<Body> {
        let mut response = Response::new(body.into());
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    /// Accepts the connection with `handler`: the `101` (over HTTP/2, `200`) to send back,
    /// and, once hyper hands the connection over, the connection's task. If the server's
    /// connection limits refuse it now (it is full, shutting down, or the client's address
    /// has too many), the response is that refusal's (503 or 429), and the handler is
    /// dropped.
    #[must_use = "the response must be sent for the connection to open"]
    pub fn accept<H: WebSocketHandler>(self, handler: H) -> Response<Body> {
        match self.try_accept(handler) {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, "refused WebSocket upgrade");
                error.to_response()
            }
        }
    }

    /// Like [`accept`](Self::accept), but hands back the [`HandshakeError`] of a refusal
    /// instead of its response.
    pub fn try_accept<H: WebSocketHandler>(
        self,
        handler: H,
    ) -> Result<Response<Body>, HandshakeError> {
        self.try_accept_as(handler, None)
    }

    /// [`try_accept`](Self::try_accept), the connection taking the id `id` if given: a
    /// connection resumed by a protocol above goes on under its predecessor's id.
    pub(crate) fn try_accept_as<H: WebSocketHandler>(
        self,
        handler: H,
        id: Option<crate::engine::id::ConnectionId>,
    ) -> Result<Response<Body>, HandshakeError> {
        let WebSocketUpgrade {
            server,
            uri,
            headers,
            remote_addr,
            accept,
            on_upgrade,
            listener,
        } = self;
        let config = server.config();
        // Counted from here until the connection ends.
        let per_address = match (server.addresses(), remote_addr) {
            (Some(limits), Some(peer)) => {
                let client = client_address(peer, &headers, &config.trusted_proxies);
                Some(limits.admit(client)?)
            }
            (Some(limits), None) => {
                limits.warn_no_address();
                None
            }
            (None, _) => None,
        };
        let permit = ConnectionLimit::admit(server.limit())?;
        let protocol = config.choose_protocol(&headers);
        // permessage-deflate, if offered and on: an offer we cannot take is declined, the
        // handshake going on without it.
        let deflate = if config.engine.deflate_on {
            let offers = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS);
            deflate::negotiate(
                offers.iter().map(HeaderValue::as_bytes),
                &config.engine.deflate,
            )
            .and_then(|(agreed, answer)| Some((agreed, HeaderValue::try_from(answer).ok()?)))
        } else {
            None
        };

        let parts = RequestParts::detached(
            &uri,
            &headers,
            protocol.as_ref(),
            remote_addr,
            config.engine.kept_header_bytes,
        );
        let conn = Connection::new(
            parts,
            deflate.as_ref().map(|(agreed, _)| *agreed),
            server.engine(),
            id,
        );
        // On a connection served by a `ConnectionSlot`: no longer pending, busy while the
        // WebSocket lives, and, over HTTP/2, its stream linked to hyper's send task so that
        // the stream can be reset once the WebSocket has ended (`h2_streams`).
        let stream_link = match (&listener, &accept) {
            (Some(_), Accept::Connect) => Some(StreamLink::new(config.engine.close_timeout)),
            _ => None,
        };
        drop((uri, headers));
        let tracked = server.track(&conn)?;
        let listener = listener.and_then(|link| link.upgraded(stream_link.as_ref()));
        // All are held until the handler has finished.
        let lease = Lease::new(permit, per_address, tracked, listener);
        let close_timeout = config.engine.close_timeout;
        // Everything the connection logs, the handler's own events included, carries its id
        // and the peer's address.
        let span = match conn.remote_addr() {
            Some(remote) => tracing::info_span!("websocket", id = %conn.id(), %remote),
            None => tracing::info_span!("websocket", id = %conn.id()),
        };
        let connection = async move {
            // hyper hands the connection over once the 101 is written. If the application
            // sends another response instead (or none), hyper may keep the pending upgrade as
            // long as the HTTP connection lives: give up after the close timeout, so that
            // the permit and the handler are not held that long.
            let upgraded = tokio::time::timeout(close_timeout, on_upgrade).await;
            match upgraded {
                // The connection runs in a task of its own, sized for what it holds: this
                // one, holding what waiting for hyper took besides, ends here.
                Ok(Ok(upgraded)) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                    // A plain TCP socket: its halves need no lock between reading and writing.
                    Ok(parts) => match tcp::split(parts.io.into_inner()) {
                        Ok((read, write)) => {
                            let socket = Socket {
                                read,
                                leftover: &parts.read_buf,
                                write: WriteIo::Tcp(write),
                            };
                            let run = driver::run(socket, conn, handler, lease);
                            driver::spawn_in_current_span(run);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "the upgraded socket could not be watched");
                            conn.mark_closed();
                        }
                    },
                    Err(upgraded) => {
                        // Over TLS (`serve_tls`): the session as it is, without hyper's box
                        // around it.
                        #[cfg(feature = "tls")]
                        let upgraded = match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
                            Ok(parts) => {
                                let (read, write) = tokio::io::split(parts.io.into_inner());
                                let socket = Socket {
                                    read,
                                    leftover: &parts.read_buf,
                                    write: WriteIo::boxed(write),
                                };
                                let run = driver::run(socket, conn, handler, lease);
                                driver::spawn_in_current_span(run);
                                return;
                            }
                            Err(upgraded) => upgraded,
                        };
                        // hyper's `Upgraded` reads what it had buffered first by itself.
                        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                        let socket = Socket {
                            read,
                            leftover: &[],
                            write: WriteIo::boxed(write),
                        };
                        let run = driver::run(socket, conn, handler, lease);
                        driver::spawn_in_current_span(run);
                    }
                },
                Err(_) => {
                    tracing::debug!("the 101 response was not sent; the upgrade is abandoned");
                    conn.mark_closed();
                }
                Ok(Err(error)) if error.is_user() => {
                    // hyper's only user error here: the connection is not served with
                    // `with_upgrades()`, so every WebSocket is dropped right after its 101.
                    tracing::warn!(
                        %error,
                        "WebSocket upgrade answered but the connection was dropped: serve \
                         the hyper connection with `.with_upgrades()`"
                    );
                    conn.mark_closed();
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "HTTP upgrade did not complete");
                    conn.mark_closed();
                }
            }
        };
        tokio::spawn(connection.instrument(span));

        let mut response = Response::new(Body::empty());
        match accept {
            Accept::Upgrade(accept_key) => {
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
            }
            // RFC 8441: a 200 opens the stream for the WebSocket; nothing to accept.
            Accept::Connect => *response.status_mut() = StatusCode::OK,
        }
        if let Some(link) = stream_link {
            // Taken by the listener's service when the response is ready.
            response.extensions_mut().insert(link);
        }
        let headers = response.headers_mut();
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        if let Some((_, answer)) = deflate {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use tokio::net::{TcpListener, TcpStream};

    use crate::connection::driver::{self, Socket};
    use crate::connection::handler::WebSocketHandler;
    use crate::connection::{Connection, RequestParts};
    use crate::engine::tcp::{self, TcpRead};
    use crate::engine::writer::WriteIo;
    use crate::server::lease::Lease;
    use crate::server::limit::ConnectionLimit;
    use crate::server::WebSocketServer;

    /// A handler with no state: what is left is the crate's own share of a connection.
    struct Bare;

    impl WebSocketHandler for Bare {}

    fn size_of_val_of<T>(_: &T) -> usize {
        size_of::<T>()
    }

    /// What every idle plain connection holds besides tokio's registration of its socket:
    /// the future of its task (tokio adds 104 bytes and rounds the task up to a multiple of
    /// 128: at most 152 bytes of future make a 256-byte task, which leaves a handler 40
    /// bytes beside this one's 112: the chat example's is 48, and fits in the padding), and
    /// the allocation its handles share. The bounds are the density work's figures: a
    /// change that grows them costs every idle connection, and should say so where it
    /// raises them.
    #[tokio::test]
    async fn an_idle_connection_holds_what_it_needs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let server = WebSocketServer::new();
        let parts = RequestParts::detached(
            &http::Uri::from_static("/"),
            &http::HeaderMap::new(),
            None,
            None,
            0,
        );
        let conn = Connection::new(parts, None, server.engine(), None);
        let permit = ConnectionLimit::admit(server.limit()).expect("no limit");
        let lease = Lease::new(permit, None, server.track(&conn).expect("open"), None);
        let (read, write) = tcp::split(accepted).expect("watched");
        let socket = Socket {
            read,
            leftover: &[],
            write: WriteIo::Tcp(write),
        };
        let task = driver::run(socket, conn, Bare, lease);
        let (future, shared) = (size_of_val_of(&task), Connection::shared_size());
        let parts = driver::sizes::<TcpRead, Bare, Lease>();
        println!("task future {future} bytes {parts:?}, shared state {shared} bytes");
        assert!(
            future <= 112,
            "a connection's task future is {future} bytes with a handler of none, above 112: \
             a task with the chat's handler no longer fits 256 bytes ({parts:?})"
        );
        // 296 is the most glibc's malloc serves from a 304-byte chunk (its 8-byte header on
        // top); 304 took a 320-byte one, as it did while the write half of a plain socket
        // was a word bigger. Elsewhere the write half is tokio's, two words.
        let most = if cfg!(any(target_os = "linux", target_os = "android")) {
            296
        } else {
            304
        };
        assert!(
            shared <= most,
            "the state a connection's handles share is {shared} bytes, above {most}"
        );
        drop((task, client));
    }
}

//! The HTTP side of a connection until it carries WebSockets: the limit of pending
//! connections, the handshake and idle timeouts, and hyper's HTTP/1.1 and HTTP/2 set up
//! with the server's limits.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::engine::sync::lock;
use crate::server::h2_streams::{self, StreamExecutor, StreamLink};
use crate::server::WebSocketServer;

/// Over HTTP/2, the most hyper buffers for sending on one stream (hyper's default is
/// 400 KiB): what a stream whose client stopped reading holds besides the WebSocket's
/// own queue.
const STREAM_SEND_BUFFER: usize = 64 * 1024;

/// How long an HTTP/2 keep-alive PING may go unanswered.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Room for one more HTTP connection, under
/// [`max_pending_connections`](crate::ServerBuilder::max_pending_connections): take one
/// before accepting a connection, then [`serve`](ConnectionSlot::serve) the connection
/// with it. The connection counts as pending until its first WebSocket opens (or it ends).
///
/// [`WebSocketServer::serve`] does all this itself (and, with the cargo feature `tls`,
/// `serve_tls`). A server that accepts its own connections, for routes of its own, does
/// it so:
///
/// ```no_run
/// use std::convert::Infallible;
/// use http::{Request, Version};
/// use hyper::body::Incoming;
/// use hyper::service::service_fn;
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
/// # async fn run() -> std::io::Result<()> {
/// let server = WebSocketServer::new();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// loop {
///     // Waits while too many connections are pending.
///     let slot = server.connection_slot().await;
///     let (stream, peer) = listener.accept().await?;
///     let _ = stream.set_nodelay(true);
///     let server = server.clone();
///     let service = service_fn(move |request: Request<Incoming>| {
///         // The peer's address is in the request's extensions already.
///         let response = server.upgrade(request, Echo);
///         async move { Ok::<_, Infallible>(response) }
///     });
///     // Over TLS (cargo feature `tls`): `slot.serve_tls(stream, peer, &tls, service)`, the
///     // handshake within the handshake timeout, then HTTP/2 if ALPN chose "h2".
///     tokio::spawn(slot.serve(stream, peer, Version::HTTP_11, service));
/// }
/// # }
/// ```
#[must_use = "a slot holds its place until it is dropped"]
pub struct ConnectionSlot {
    server: WebSocketServer,
    permit: OwnedSemaphorePermit,
}

impl fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSlot").finish_non_exhaustive()
    }
}

impl WebSocketServer {
    /// Waits until fewer than
    /// [`max_pending_connections`](crate::ServerBuilder::max_pending_connections)
    /// connections are pending, and returns the slot for one more (see
    /// [`ConnectionSlot`]).
    pub async fn connection_slot(&self) -> ConnectionSlot {
        let permit = self
            .pending()
            .clone()
            .acquire_owned()
            .await
            // The semaphore is never closed.
            .unwrap_or_else(|_| unreachable!("the pending-connection semaphore is never closed"));
        ConnectionSlot {
            server: self.clone(),
            permit,
        }
    }

    /// The slot for one more connection, or `None` when
    /// [`max_pending_connections`](crate::ServerBuilder::max_pending_connections) are
    /// pending: for a server that would rather close a connection than wait.
    pub fn try_connection_slot(&self) -> Option<ConnectionSlot> {
        let permit = self.pending().clone().try_acquire_owned().ok()?;
        Some(ConnectionSlot {
            server: self.clone(),
            permit,
        })
    }
}

impl ConnectionSlot {
    /// The server whose slot this is.
    #[cfg(feature = "tls")]
    pub(crate) fn server(&self) -> &WebSocketServer {
        &self.server
    }

    /// Serves HTTP on `io`, a connection accepted from `peer` (a TCP stream, or a TLS
    /// stream once its handshake is done: with the cargo feature `tls`, `serve_tls` does
    /// the handshake), with `service` answering its requests, until the connection ends or
    /// its last request has been upgraded.
    ///
    /// `version` says what the connection speaks: [`Version::HTTP_2`] (over TLS, when ALPN
    /// chose `h2`; in cleartext, for clients with prior knowledge) or anything else for
    /// HTTP/1.1. Every request's extensions hold `peer`, for
    /// [`Connection::remote_addr`](crate::Connection::remote_addr) and the limits per
    /// address. What the server's builder set applies:
    ///
    /// - a connection must send a request within the
    ///   [`handshake_timeout`](crate::ServerBuilder::handshake_timeout), and again each
    ///   time it is idle (no request in progress, no WebSocket open), or it is closed
    ///   (HTTP/2: GOAWAY, then closed within the
    ///   [`close_timeout`](crate::ServerBuilder::close_timeout));
    /// - HTTP/1.1 with upgrades; HTTP/2 with WebSockets (RFC 8441's extended CONNECT),
    ///   [`http2_max_concurrent_streams`](crate::ServerBuilder::http2_max_concurrent_streams),
    ///   the [`http2_stream_window`](crate::ServerBuilder::http2_stream_window) and
    ///   [`http2_connection_window`](crate::ServerBuilder::http2_connection_window), 64 KiB
    ///   of send buffer per stream, and
    ///   [keep-alive pings](crate::ServerBuilder::http2_keep_alive_interval);
    /// - over HTTP/2, the stream of a WebSocket that has ended but whose client stopped
    ///   reading is reset (`RST_STREAM`) a close timeout later, freeing what it held;
    /// - once [`close_all`](WebSocketServer::close_all) is called, the connection is shut
    ///   down gracefully (HTTP/2: GOAWAY).
    ///
    /// Errors are hyper's, for a connection that failed (the client broke the protocol or
    /// went away mid-request); a timeout is no error.
    pub async fn serve<I, S, B>(
        self,
        io: I,
        peer: SocketAddr,
        version: Version,
        service: S,
    ) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let ConnectionSlot { server, permit } = self;
        let http = Arc::new(HttpConnection {
            peer,
            slot: Mutex::new(Some(permit)),
            busy: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let service = ListenerService {
            inner: service,
            http: http.clone(),
        };
        if version == Version::HTTP_2 {
            serve_http2(&server, &http, TokioIo::new(io), service).await
        } else {
            serve_http1(&server, TokioIo::new(io), service).await
        }
    }
}

async fn serve_http1<I, S, B>(
    server: &WebSocketServer,
    io: TokioIo<I>,
    service: ListenerService<S>,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let settings = &server.config().listener;
    // hyper's header timeout runs from when it waits for a request's head, so it covers
    // the first request and every idle wait between requests.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.handshake_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        () = server.shutdown_state().started() => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

async fn serve_http2<I, S, B>(
    server: &WebSocketServer,
    http: &HttpConnection,
    io: TokioIo<I>,
    service: ListenerService<S>,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let config = server.config();
    let settings = &config.listener;
    let mut builder = http2::Builder::new(StreamExecutor);
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .initial_stream_window_size(settings.http2_stream_window)
        .initial_connection_window_size(settings.http2_connection_window)
        .max_send_buf_size(STREAM_SEND_BUFFER)
        .keep_alive_interval(settings.http2_keep_alive_interval)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = http.idle_for(settings.handshake_timeout) => break,
            () = server.shutdown_state().started(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    tracing::debug!(peer = %http.peer, "HTTP/2 connection idle: GOAWAY");
    // GOAWAY; hyper ends the connection once it is sent and no stream is left, which a
    // client that never sent its preface, or stopped reading, holds up: the close timeout
    // bounds the wait.
    connection.as_mut().graceful_shutdown();
    match tokio::time::timeout(config.engine.close_timeout, connection).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// One HTTP connection served by a [`ConnectionSlot`], as the requests on it see it (in
/// their extensions, as [`ListenerLink`]).
pub(crate) struct HttpConnection {
    peer: SocketAddr,
    /// Its place among the pending connections, until its first WebSocket.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    /// Requests in progress and WebSockets open.
    busy: AtomicUsize,
    /// `busy` went to zero or from it.
    changed: Notify,
}

impl HttpConnection {
    /// Counts something in progress until the guard is dropped.
    fn busy(self: &Arc<Self>) -> Busy {
        if self.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_waiters();
        }
        Busy(self.clone())
    }

    /// Resolves once the connection has been idle for `timeout` in one stretch.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.busy.load(Ordering::Acquire) > 0 {
                changed.await;
            } else if tokio::time::timeout(timeout, changed).await.is_err()
                && self.busy.load(Ordering::Acquire) == 0
            {
                return;
            }
        }
    }
}

/// Something in progress on a connection: a request, or a WebSocket.
pub(crate) struct Busy(Arc<HttpConnection>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// In the extensions of every request a [`ConnectionSlot`] serves: what
/// [`try_upgrade`](WebSocketServer::try_upgrade) needs of the connection.
#[derive(Clone)]
pub(crate) struct ListenerLink(Arc<HttpConnection>);

impl ListenerLink {
    /// A WebSocket opens on this connection: the connection is no longer pending. Over
    /// HTTP/2 (`stream` set) the connection is busy while the returned lease is held, and
    /// the stream is reset if it is still sending a grace period after the WebSocket ended.
    /// Over HTTP/1.1 the WebSocket has the socket to itself and hyper's connection is over:
    /// nothing is held, so that the connection's state is not kept for the WebSocket's life.
    pub(crate) fn upgraded(&self, stream: Option<&StreamLink>) -> Option<ListenerLease> {
        drop(lock(&self.0.slot).take());
        let stream = stream?;
        Some(ListenerLease {
            _busy: self.0.busy(),
            _stream: stream.guard(),
        })
    }
}

/// Held by a WebSocket of a listener's HTTP/2 connection until it has ended.
pub(crate) struct ListenerLease {
    _busy: Busy,
    _stream: h2_streams::StreamGuard,
}

/// The application's service, with the connection's link and peer added to every request,
/// and the request counted while it is in progress.
struct ListenerService<S> {
    inner: S,
    http: Arc<HttpConnection>,
}

impl<S, B> Service<Request<Incoming>> for ListenerService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = InProgress<S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let extensions = request.extensions_mut();
        if extensions.get::<SocketAddr>().is_none() {
            extensions.insert(self.http.peer);
        }
        extensions.insert(ListenerLink(self.http.clone()));
        let busy = self.http.busy();
        InProgress {
            future: self.inner.call(request),
            busy: Some(busy),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer in progress.
    struct InProgress<F> {
        #[pin]
        future: F,
        busy: Option<Busy>,
    }
}

impl<F, B, E> Future for InProgress<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.project();
        let mut output = std::task::ready!(me.future.poll(cx));
        if let Ok(response) = &mut output {
            if let Some(link) = response.extensions_mut().remove::<StreamLink>() {
                h2_streams::response_ready(link);
            }
        }
        // Released after the WebSocket's own lease is taken (in `try_upgrade`), so the
        // connection is not idle in between.
        me.busy.take();
        Poll::Ready(output)
    }
}

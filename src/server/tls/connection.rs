//! [`ConnectionSlot::serve_tls`]: one accepted connection over TLS, its handshake within the
//! handshake timeout and its HTTP version chosen by ALPN; [`TlsConnectionError`], how such a
//! connection can fail.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::server::listener::ConnectionSlot;
use crate::server::tls::config::{TlsConfig, H2, HTTP_1_1};
use crate::server::tls::stream::TlsStream;

/// How a connection served by [`ConnectionSlot::serve_tls`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConnectionError {
    /// The TLS handshake failed: the client broke TLS, trusts no certificate of ours, offers
    /// no protocol version or ALPN protocol we accept, or went away.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// The client did not finish its TLS handshake within the
    /// [`handshake_timeout`](crate::ServerBuilder::handshake_timeout) (the duration): it was
    /// dropped.
    #[error("TLS handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// ALPN agreed on a protocol other than `h2` and `http/1.1` (one of those a
    /// `ServerConfig` given to [`TlsConfig::from_rustls`] names): the connection was closed
    /// after its handshake.
    #[error("ALPN agreed on {0:?}, which is neither h2 nor http/1.1")]
    Protocol(String),
    /// The HTTP connection failed after the handshake, as
    /// [`ConnectionSlot::serve`] reports it.
    #[error("HTTP connection failed: {0}")]
    Http(#[source] hyper::Error),
}

impl ConnectionSlot {
    /// Serves HTTPS on `io`, a connection accepted from `peer` (a TCP stream, usually), with
    /// the TLS settings `tls` and `service` answering its requests: the TLS handshake, then
    /// what [`serve`](Self::serve) does, HTTP/2 if the client chose `h2` by ALPN and
    /// HTTP/1.1 otherwise.
    ///
    /// The handshake must be done within the
    /// [`handshake_timeout`](crate::ServerBuilder::handshake_timeout) (10 s), else the
    /// connection is dropped ([`TlsConnectionError::HandshakeTimeout`]); until then it counts
    /// as pending (see [`ConnectionSlot`]), so clients that stall their handshakes hold at
    /// most [`max_pending_connections`](crate::ServerBuilder::max_pending_connections) slots,
    /// each for a bounded time. A handshake under way when
    /// [`close_all`](crate::WebSocketServer::close_all) is called is dropped. Then the
    /// request's own `handshake_timeout` starts, and every limit of `serve` applies.
    ///
    /// The future does not borrow `tls`: spawn it.
    ///
    /// ```no_run
    /// use std::convert::Infallible;
    /// use http::Request;
    /// use hyper::body::Incoming;
    /// use hyper::service::service_fn;
    /// use websocket_handler::{Connection, Message, TlsConfig, WebSocketHandler, WebSocketServer};
    ///
    /// struct Echo;
    ///
    /// impl WebSocketHandler for Echo {
    ///     async fn on_message(&mut self, conn: &Connection, message: Message) {
    ///         let _ = conn.send(message);
    ///     }
    /// }
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
    /// let server = WebSocketServer::new();
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
    /// loop {
    ///     let slot = server.connection_slot().await;
    ///     let (stream, peer) = listener.accept().await?;
    ///     let _ = stream.set_nodelay(true);
    ///     let server = server.clone();
    ///     // Pages and other routes would go here too: a service sees HTTPS requests.
    ///     let service = service_fn(move |request: Request<Incoming>| {
    ///         let response = server.upgrade(request, Echo);
    ///         async move { Ok::<_, Infallible>(response) }
    ///     });
    ///     tokio::spawn(slot.serve_tls(stream, peer, &tls, service));
    /// }
    /// # }
    /// ```
    pub fn serve_tls<I, S, B>(
        self,
        io: I,
        peer: SocketAddr,
        tls: &TlsConfig,
        service: S,
    ) -> impl Future<Output = Result<(), TlsConnectionError>> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let config = tls.server_config().clone();
        async move {
            let server = self.server().clone();
            let timeout = server.config().handshake_timeout();
            let handshake = tokio::time::timeout(timeout, TlsStream::accept(io, config));
            let mut stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return Err(TlsConnectionError::Handshake(error)),
                    Err(_) => return Err(TlsConnectionError::HandshakeTimeout(timeout)),
                },
                () = server.shutdown_state().started() => return Ok(()),
            };
            let version = match stream.alpn_protocol() {
                Some(H2) => Version::HTTP_2,
                Some(HTTP_1_1) | None => Version::HTTP_11,
                Some(other) => {
                    let other = String::from_utf8_lossy(other).into_owned();
                    // close_notify, unless the client does not read it in time.
                    let close_timeout = server.config().close_timeout();
                    let _ = tokio::time::timeout(close_timeout, stream.shutdown()).await;
                    return Err(TlsConnectionError::Protocol(other));
                }
            };
            self.serve(stream, peer, version, service)
                .await
                .map_err(TlsConnectionError::Http)
        }
    }
}

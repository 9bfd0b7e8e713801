//! A whole WebSocket server on a TCP listener, for the common case that needs nothing but
//! WebSockets: the accept loop, on top of the listener (`listener.rs`), each connection
//! served by a [`Transport`]: in cleartext here, over TLS in `tls/serve.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use tokio::net::{TcpListener, TcpStream};

use crate::server::body::Body;
use crate::server::listener::ConnectionSlot;
use crate::server::upgrade::WebSocketUpgrade;
use crate::server::WebSocketServer;

impl WebSocketServer {
    /// Serves WebSockets on `listener` until [`close_all`](WebSocketServer::close_all) is
    /// called (then it returns `Ok`) or the listener fails.
    ///
    /// Every request is an upgrade. One whose handshake is invalid is answered with its
    /// [`HandshakeError`](crate::HandshakeError)'s response; each valid one goes to `admit`
    /// as a [`WebSocketUpgrade`], and what `admit` resolves to is the answer:
    /// [`upgrade.accept(handler)`](WebSocketUpgrade::accept) opens the connection, any other
    /// response refuses it ([`refuse`](WebSocketUpgrade::refuse) makes a plain one: 401 for a
    /// bad token, 404 for an unknown path). `admit` may take its time (a database, a key
    /// set), within the [`handshake_timeout`](crate::ServerBuilder::handshake_timeout):
    /// past it the client gets 503.
    ///
    /// Behind it is what a server usually sets up by hand around
    /// [`upgrade`](WebSocketServer::upgrade): HTTP/1.1 with upgrades, `TCP_NODELAY`, the
    /// peer's address for [`Connection::remote_addr`](crate::Connection::remote_addr), and
    /// the listener's limits: the `handshake_timeout` for a client to send its request, and
    /// at most [`max_pending_connections`](crate::ServerBuilder::max_pending_connections)
    /// connections accepted and not yet upgraded (see [`ConnectionSlot`](crate::ConnectionSlot)).
    /// With the cargo feature `tls`, `serve_tls` is the same over TLS. Servers that also
    /// serve pages or other routes serve their own service with a
    /// [`ConnectionSlot`](crate::ConnectionSlot), or call `upgrade` from their own hyper
    /// service or axum router.
    ///
    /// ```
    /// use http::StatusCode;
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
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server = WebSocketServer::new();
    /// # let stop = server.clone();
    /// # tokio::spawn(async move { stop.close_all(std::time::Duration::from_secs(1)).await });
    /// server
    ///     .serve(listener, |upgrade| async move {
    ///         match upgrade.uri().path() {
    ///             "/echo" => upgrade.accept(Echo),
    ///             _ => upgrade.refuse(StatusCode::NOT_FOUND, "not found\n"),
    ///         }
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve<F, Fut>(&self, listener: TcpListener, admit: F) -> io::Result<()>
    where
        F: Fn(WebSocketUpgrade) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        self.accept_loop(listener, Cleartext, admit).await
    }

    /// `serve`'s accept loop, each connection served over `transport`.
    pub(crate) async fn accept_loop<T, F, Fut>(
        &self,
        listener: TcpListener,
        transport: T,
        admit: F,
    ) -> io::Result<()>
    where
        T: Transport,
        F: Fn(WebSocketUpgrade) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        loop {
            // At the limit of pending connections, new ones wait in the kernel's backlog.
            let slot = tokio::select! {
                slot = self.connection_slot() => slot,
                () = self.shutdown_state().started() => return Ok(()),
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = self.shutdown_state().started() => return Ok(()),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                // This one connection went away, or the process is out of descriptors for
                // now: carry on with the next (after a pause, so as not to spin).
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let admit = admit.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let checked = server.check_upgrade(request);
                let admit = admit.clone();
                let timeout = server.config().handshake_timeout();
                async move {
                    let upgrade = match checked {
                        Ok(upgrade) => upgrade,
                        Err(error) => {
                            tracing::debug!(%error, "refused WebSocket upgrade");
                            return Ok::<_, Infallible>(error.to_response());
                        }
                    };
                    Ok(match tokio::time::timeout(timeout, admit(upgrade)).await {
                        Ok(response) => response,
                        Err(_) => admission_timed_out(),
                    })
                }
            });
            tokio::spawn(transport.clone().serve(slot, stream, peer, service));
        }
    }
}

/// How [`WebSocketServer::accept_loop`] serves an accepted connection: in cleartext, or
/// over TLS (`tls/serve.rs`).
pub(crate) trait Transport: Clone + Send + Sync + 'static {
    /// Serves `stream`, accepted from `peer`, with `service`, logging how it failed.
    fn serve<S>(
        self,
        slot: ConnectionSlot,
        stream: TcpStream,
        peer: SocketAddr,
        service: S,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send + 'static;
}

/// Plain HTTP/1.1.
#[derive(Clone, Copy)]
struct Cleartext;

impl Transport for Cleartext {
    async fn serve<S>(self, slot: ConnectionSlot, stream: TcpStream, peer: SocketAddr, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let served = slot.serve(stream, peer, Version::HTTP_11, service).await;
        if let Err(error) = served {
            tracing::debug!(%error, %peer, "HTTP connection failed");
        }
    }
}

fn admission_timed_out() -> Response<Body> {
    tracing::warn!("admitting a WebSocket took longer than the handshake timeout: answered 503");
    let mut response = Response::new(Body::from("the server took too long to admit you\n"));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// Accept errors that concern one connection or a passing shortage, not the listener.
fn is_transient(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(error.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

//! A whole WebSocket server on a TCP listener, for the common case that needs nothing but
//! WebSockets: the accept loop, on top of the listener (`listener.rs`).

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::connection::handler::WebSocketHandler;
use crate::server::body::Body;
use crate::server::WebSocketServer;

impl WebSocketServer {
    /// Serves WebSockets on `listener` until [`close_all`](WebSocketServer::close_all) is
    /// called (then it returns `Ok`) or the listener fails.
    ///
    /// Every request is an upgrade: `make_handler` sees its head (path, query, headers) and
    /// returns the handler for the new connection, or `None` to answer 404. Behind it is
    /// what a server usually sets up by hand around [`upgrade`](WebSocketServer::upgrade):
    /// HTTP/1.1 with upgrades, `TCP_NODELAY`, the peer's address for
    /// [`Connection::remote_addr`](crate::Connection::remote_addr), and the listener's
    /// limits: the [`handshake_timeout`](crate::ServerBuilder::handshake_timeout) for a
    /// client to send its request, and at most
    /// [`max_pending_connections`](crate::ServerBuilder::max_pending_connections)
    /// connections accepted and not yet upgraded (see [`ConnectionSlot`](crate::ConnectionSlot)).
    /// Servers that also serve pages or other routes, or TLS, serve their own service
    /// with a [`ConnectionSlot`](crate::ConnectionSlot), or call `upgrade` from their own
    /// hyper service or axum router.
    ///
    /// ```
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
    /// server.serve(listener, |_request| Some(Echo)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve<H, F>(&self, listener: TcpListener, make_handler: F) -> io::Result<()>
    where
        H: WebSocketHandler,
        F: Fn(&http::request::Parts) -> Option<H> + Clone + Send + Sync + 'static,
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
            let make_handler = make_handler.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let (head, body) = request.into_parts();
                let response = match make_handler(&head) {
                    Some(handler) => server.upgrade(Request::from_parts(head, body), handler),
                    None => not_found(),
                };
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let served = slot.serve(stream, peer, Version::HTTP_11, service).await;
                if let Err(error) = served {
                    tracing::debug!(%error, %peer, "HTTP connection failed");
                }
            });
        }
    }
}

fn not_found() -> Response<Body> {
    let mut response = Response::new(Body::from("not found\n"));
    *response.status_mut() = StatusCode::NOT_FOUND;
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

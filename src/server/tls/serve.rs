//! [`WebSocketServer::serve_tls`]: `serve`'s accept loop (`server/serve.rs`) with each
//! connection served over TLS.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio::net::{TcpListener, TcpStream};

use crate::server::body::Body;
use crate::server::listener::ConnectionSlot;
use crate::server::serve::Transport;
use crate::server::tls::config::TlsConfig;
use crate::server::tls::connection::TlsConnectionError;
use crate::server::upgrade::WebSocketUpgrade;
use crate::server::WebSocketServer;

impl WebSocketServer {
    /// Serves WebSockets over TLS (`wss://`) on `listener`, as [`serve`](Self::serve) does
    /// in cleartext, until [`close_all`](Self::close_all) is called (then it returns `Ok`)
    /// or the listener fails.
    ///
    /// Each connection is served by [`ConnectionSlot::serve_tls`]: its TLS handshake within
    /// the [`handshake_timeout`](crate::ServerBuilder::handshake_timeout), then HTTP/2 if
    /// the client chose `h2` by ALPN (a WebSocket is then an extended CONNECT, RFC 8441,
    /// and many share one connection), HTTP/1.1 otherwise, with every limit of `serve`.
    /// Each valid handshake goes to `admit` as in `serve`. Connections that fail (a client
    /// that does not trust the certificate, say) are logged at `debug` level.
    ///
    /// ```
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
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("wsh-doc-serve-tls-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    /// # std::fs::write(dir.join("cert.pem"), made.cert.pem())?;
    /// # std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem())?;
    /// # std::env::set_current_dir(&dir)?;
    /// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server = WebSocketServer::new();
    /// # let stop = server.clone();
    /// # tokio::spawn(async move { stop.close_all(std::time::Duration::from_secs(1)).await });
    /// server
    ///     .serve_tls(listener, tls, |upgrade| async move { upgrade.accept(Echo) })
    ///     .await?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve_tls<F, Fut>(
        &self,
        listener: TcpListener,
        tls: TlsConfig,
        admit: F,
    ) -> io::Result<()>
    where
        F: Fn(WebSocketUpgrade) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        self.accept_loop(listener, tls, admit).await
    }
}

impl Transport for TlsConfig {
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
        S::Future: Send + 'static,
    {
        let served = slot.serve_tls(stream, peer, &self, service);
        async move {
            match served.await {
                Ok(()) => {}
                Err(TlsConnectionError::Http(error)) => {
                    tracing::debug!(%error, %peer, "HTTPS connection failed");
                }
                Err(error) => tracing::debug!(%error, %peer, "TLS connection refused"),
            }
        }
    }
}

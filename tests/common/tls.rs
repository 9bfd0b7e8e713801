//! Real TLS clients (rustls, ring) that trust a certificate the test made
//! ([`super::self_signed_certificate`]), and WebSockets over them: an HTTP/1.1 Upgrade, or
//! an HTTP/2 extended CONNECT (RFC 8441) as a stream of an HTTP/2 connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::within;

/// A client's TLS stream.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A WebSocket that is a stream of an HTTP/2 connection.
pub type H2WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A TLS connection to `addr` (as `localhost`) that trusts `root` and offers `alpn`, which
/// the server must choose.
pub async fn tls_connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> TlsStream {
    let tcp = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let stream = within(
        "the TLS handshake",
        connector(root, alpn).connect(localhost(), tcp),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn), "ALPN");
    stream
}

/// A rustls client that trusts `root` only and offers `alpn`.
pub fn connector(root: &CertificateDer<'static>, alpn: &[u8]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(root.clone())
        .expect("trust the test's certificate");
    // The build's one crypto provider: ring.
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// The name the test certificates are made for.
pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("server name")
}

/// A WebSocket to `wss://localhost:PORT{path}` over TLS and HTTP/1.1 (ALPN `http/1.1`),
/// opened by tungstenite's client.
pub async fn wss_http1(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    path: &str,
) -> WebSocketStream<TlsStream> {
    let stream = tls_connect(addr, root, b"http/1.1").await;
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (client, response) = within(
        "the WebSocket handshake over HTTP/1.1",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    client
}

/// An HTTP/2 connection over TLS (ALPN `h2`), on which WebSockets open as streams.
pub struct H2Connection {
    send: SendRequest<Empty<Bytes>>,
    authority: String,
}

impl H2Connection {
    /// Connects, and waits until the server's SETTINGS have arrived (they allow the
    /// extended CONNECT, which the client refuses to send before): a GET of `/` is
    /// answered after them, whatever its status.
    pub async fn connect(addr: SocketAddr, root: &CertificateDer<'static>) -> H2Connection {
        let stream = tls_connect(addr, root, b"h2").await;
        let (mut send, connection) = within(
            "the HTTP/2 handshake",
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
        )
        .await
        .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let authority = format!("localhost:{}", addr.port());
        let get = Request::builder()
            .method(Method::GET)
            .version(Version::HTTP_2)
            .uri(format!("https://{authority}/"))
            .body(Empty::new())
            .expect("request");
        within("an answer to a GET", send.send_request(get))
            .await
            .expect("an answer to a GET");
        H2Connection { send, authority }
    }

    /// A WebSocket to `path`, as a stream of this connection: an extended CONNECT answered
    /// with 200, then tungstenite's client on the stream.
    pub async fn websocket(&mut self, path: &str) -> H2WebSocket {
        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(format!("https://{}{path}", self.authority))
            .header("sec-websocket-version", "13")
            .body(Empty::new())
            .expect("request");
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        within("the connection to be ready", self.send.ready())
            .await
            .expect("ready");
        let response = within("the CONNECT's answer", self.send.send_request(connect))
            .await
            .expect("the extended CONNECT");
        assert_eq!(response.status(), 200, "RFC 8441: 200 opens the stream");
        let upgraded = within("the stream to be handed over", hyper::upgrade::on(response))
            .await
            .expect("upgraded");
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
    }
}

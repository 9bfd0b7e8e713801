//! The chat example over TLS (`--tls-cert`, `--tls-key`): a certificate the test makes,
//! real TLS clients (rustls), HTTP/2 and HTTP/1.1 chosen by ALPN on one port, and WebSockets
//! over both (an extended CONNECT over HTTP/2, an Upgrade over HTTP/1.1) in one room.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use common::{read_frame_text, self_signed_certificate, send_masked_text, within, ChatServer};

/// A TLS connection to `addr` that trusts `root` and offers `alpn`.
async fn tls(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    roots
        .add(root.clone())
        .expect("trust the test's certificate");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    let stream = within(
        "the TLS handshake",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn), "ALPN");
    stream
}

#[tokio::test]
async fn over_tls_http2_and_http1_websockets_chat_in_one_room_on_one_port() {
    let (cert, key, root) = self_signed_certificate("chat-tls");
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let server = ChatServer::start_with(
        "127.0.0.1:0",
        &["--tls-cert", &cert, "--tls-key", &key, "--no-notices"],
    )
    .await;
    let addr = server.addr;

    // HTTP/2: the page, then bob's WebSocket as a stream of the same connection.
    let stream = tls(addr, &root, b"h2").await;
    let (mut h2, connection) = within(
        "the HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let page = Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_2)
        .uri(format!("https://localhost:{}/chat.htm", addr.port()))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = within("the page", h2.send_request(page))
        .await
        .expect("page");
    assert_eq!(response.status(), StatusCode::OK);
    let body = within("the page's body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert!(body.windows(9).any(|w| w == b"WebSocket"), "the chat page");

    let mut bob = None;
    for _ in 0..50 {
        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(format!(
                "https://localhost:{}/api/Chat?username=bob",
                addr.port()
            ))
            .header("sec-websocket-version", "13")
            .header("origin", format!("https://localhost:{}", addr.port()))
            .body(Empty::<Bytes>::new())
            .expect("request");
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        within("the connection to be ready", h2.ready())
            .await
            .expect("ready");
        // Until the server's SETTINGS (which allow the extended CONNECT) arrive, the client
        // may refuse to send one.
        if let Ok(response) = within("bob's CONNECT", h2.send_request(connect)).await {
            bob = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let response = bob.expect("the extended CONNECT was sent");
    assert_eq!(response.status(), StatusCode::OK, "RFC 8441: 200");
    let mut bob = TokioIo::new(
        within("bob's stream", hyper::upgrade::on(response))
            .await
            .expect("upgraded"),
    );

    // HTTP/1.1 on the same port: alice's Upgrade.
    let mut alice = tls(addr, &root, b"http/1.1").await;
    let request = format!(
        "GET /api/Chat?username=alice HTTP/1.1\r\nHost: localhost:{}\r\n\
         Origin: https://localhost:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        addr.port(),
        addr.port()
    );
    alice.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    within("alice's 101", async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(alice.read_u8().await.expect("the response head"));
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // Both are in the lobby: each hears the other.
    send_masked_text(&mut alice, "Hi Bob, over HTTP/1.1 and TLS").await;
    assert_eq!(
        read_frame_text(&mut bob).await,
        "alice: Hi Bob, over HTTP/1.1 and TLS"
    );
    assert_eq!(
        read_frame_text(&mut alice).await,
        "alice: Hi Bob, over HTTP/1.1 and TLS"
    );
    send_masked_text(&mut bob, "Hi Alice, from an HTTP/2 stream").await;
    assert_eq!(
        read_frame_text(&mut alice).await,
        "bob: Hi Alice, from an HTTP/2 stream"
    );
    assert_eq!(
        read_frame_text(&mut bob).await,
        "bob: Hi Alice, from an HTTP/2 stream"
    );
    drop(server);
}

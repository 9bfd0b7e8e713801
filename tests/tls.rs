//! TLS in the crate (cargo feature `tls`): `serve_tls` and `ConnectionSlot::serve_tls` with
//! real rustls clients on 127.0.0.1, WebSockets over HTTP/1.1 and HTTP/2 chosen by ALPN on
//! one port; a client that never starts its TLS handshake dropped within the handshake
//! timeout while it counts as pending; the typed errors of bad PEM files; and `close_all`
//! ending TLS clients with 1001 and `close_notify`.
#![cfg(feature = "tls")]

mod common;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use websocket_handler::{
    TlsConfig, TlsConfigError, TlsConnectionError, WebSocketCollection, WebSocketServer,
};

use common::tls::{connector, localhost, tls_connect, wss_http1, H2Connection};
use common::{
    next_message, next_text, raw_handshake, read_frame, self_signed_certificate, send_text, within,
    EchoRoom,
};

/// `server` serving WebSockets over TLS on a free port with `serve_tls`, every connection
/// an [`EchoRoom`] in `room`; its address and the certificate to trust.
async fn serve_tls(
    server: &WebSocketServer,
    room: &WebSocketCollection,
    test: &str,
) -> (SocketAddr, CertificateDer<'static>) {
    let (cert, key, root) = self_signed_certificate(test);
    let tls = TlsConfig::from_pem_files(&cert, &key).expect("the test's certificate and key");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (server, room) = (server.clone(), room.clone());
    tokio::spawn(async move {
        server
            .serve_tls(listener, tls, move |upgrade| {
                let room = room.clone();
                async move { upgrade.accept(EchoRoom { room }) }
            })
            .await
            .expect("serve_tls");
    });
    (addr, root)
}

#[tokio::test]
async fn serve_tls_echoes_over_http1_and_over_http2_on_one_port() {
    let server = WebSocketServer::new();
    let room = WebSocketCollection::new();
    let (addr, root) = serve_tls(&server, &room, "tls-echo").await;

    let mut http1 = wss_http1(addr, &root, "/").await;
    assert!(next_text(&mut http1).await.starts_with("joined"));
    send_text(&mut http1, "over TLS and HTTP/1.1").await;
    assert_eq!(next_text(&mut http1).await, "over TLS and HTTP/1.1");

    // Two WebSockets as streams of one HTTP/2 connection.
    let mut h2 = H2Connection::connect(addr, &root).await;
    let mut first = h2.websocket("/").await;
    let mut second = h2.websocket("/").await;
    for (n, client) in [&mut first, &mut second].into_iter().enumerate() {
        assert!(next_text(client).await.starts_with("joined"));
        let text = format!("over TLS and HTTP/2, stream {n}");
        send_text(client, &text).await;
        assert_eq!(next_text(client).await, text);
    }

    // All three are connections of one server, in one room.
    assert_eq!(server.metrics().snapshot().connections_open(), 3);
    send_text(&mut second, "broadcast to all three").await;
    for client in [&mut first, &mut second] {
        assert_eq!(next_text(client).await, "to all three");
    }
    assert_eq!(next_text(&mut http1).await, "to all three");
}

/// Resolves once the server has closed `stream` (end of stream or an error); the time since
/// `since`.
async fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 64];
    within("the server to close the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);

/// Scheduling on a loaded machine: how much later than its timeout a close may come.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_client_that_never_starts_tls_holds_its_pending_slot_until_the_handshake_timeout() {
    let server = WebSocketServer::builder()
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .max_pending_connections(1)
        .build();
    let (cert, key, _) = self_signed_certificate("tls-stall-slot");
    let tls = TlsConfig::from_pem_files(&cert, &key).expect("the test's certificate and key");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");

    // TCP, and then nothing: no ClientHello.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let slot = within("a slot", server.connection_slot()).await;
    let (stream, peer) = within("the accept", listener.accept())
        .await
        .expect("accept");
    let started = Instant::now();
    let never_used = {
        let server = server.clone();
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let response = server.upgrade(
                request,
                EchoRoom {
                    room: WebSocketCollection::new(),
                },
            );
            async move { Ok::<_, std::convert::Infallible>(response) }
        })
    };
    let served = tokio::spawn(slot.serve_tls(stream, peer, &tls, never_used));

    // Meanwhile it is pending: the only slot is taken.
    assert!(
        server.try_connection_slot().is_none(),
        "a connection in its TLS handshake counts as pending"
    );
    let freed = within("the slot to be freed", server.connection_slot()).await;
    let waited = started.elapsed();
    let result = within("serve_tls to return", served)
        .await
        .expect("serve_tls did not panic");
    assert!(
        matches!(result, Err(TlsConnectionError::HandshakeTimeout(t)) if t == HANDSHAKE_TIMEOUT),
        "{result:?}"
    );
    assert!(
        waited >= HANDSHAKE_TIMEOUT && waited < HANDSHAKE_TIMEOUT + SLACK,
        "the slot was held for {waited:?}, the handshake timeout is {HANDSHAKE_TIMEOUT:?}"
    );
    drop(freed);
    let closed = closed_after(&mut silent, started).await;
    assert!(
        closed < HANDSHAKE_TIMEOUT + SLACK,
        "closed after {closed:?}"
    );
}

#[tokio::test]
async fn serve_tls_drops_a_client_that_never_starts_tls_and_then_serves_the_next() {
    let server = WebSocketServer::builder()
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .max_pending_connections(1)
        .build();
    let room = WebSocketCollection::new();
    let (addr, root) = serve_tls(&server, &room, "tls-stall-serve").await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // The one pending slot is the silent client's (the accept loop took it before
    // accepting): this client's handshake waits in the kernel's backlog until it is freed.
    let (closed, client) = tokio::join!(closed_after(&mut silent, started), async {
        let client = wss_http1(addr, &root, "/").await;
        (client, started.elapsed())
    });
    let (mut client, opened) = client;
    assert!(
        closed >= HANDSHAKE_TIMEOUT && closed < HANDSHAKE_TIMEOUT + SLACK,
        "the silent client was closed after {closed:?}; the handshake timeout is {HANDSHAKE_TIMEOUT:?}"
    );
    assert!(
        opened >= closed,
        "the next client was served ({opened:?}) before the silent one's slot was freed ({closed:?})"
    );
    assert!(next_text(&mut client).await.starts_with("joined"));
}

#[test]
fn bad_pem_files_give_typed_errors_that_name_the_file() {
    let dir = common::temp_dir("tls-bad-pem");
    let (cert, key, _) = self_signed_certificate("tls-bad-pem-pair");
    let (_, other_key, _) = self_signed_certificate("tls-bad-pem-other");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    };
    let missing = dir.join("missing.pem");
    let not_pem = write("notes.txt", "not a certificate\n");
    let broken = write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n(no end line)\n",
    );
    let says = |error: &TlsConfigError, path: &Path, what: &str| {
        let text = error.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains(what),
            "{text:?} should name {} and say {what:?}",
            path.display()
        );
    };

    let error = TlsConfig::from_pem_files(&missing, &key).expect_err("a missing file");
    assert!(
        matches!(&error, TlsConfigError::Read { path, source } if *path == missing && source.kind() == io::ErrorKind::NotFound),
        "{error:?}"
    );
    says(&error, &missing, "cannot read");

    let error = TlsConfig::from_pem_files(&not_pem, &key).expect_err("no certificate");
    assert!(
        matches!(&error, TlsConfigError::NoCertificate { path } if *path == not_pem),
        "{error:?}"
    );
    says(&error, &not_pem, "no certificate");

    // The files swapped: the key file has no certificate.
    let error = TlsConfig::from_pem_files(&key, &cert).expect_err("swapped");
    assert!(
        matches!(&error, TlsConfigError::NoCertificate { path } if *path == key),
        "{error:?}"
    );

    let error = TlsConfig::from_pem_files(&cert, &not_pem).expect_err("no key");
    assert!(
        matches!(&error, TlsConfigError::NoKey { path } if *path == not_pem),
        "{error:?}"
    );
    says(&error, &not_pem, "no private key");

    let error = TlsConfig::from_pem_files(&broken, &key).expect_err("broken PEM");
    assert!(
        matches!(&error, TlsConfigError::Pem { path, .. } if *path == broken),
        "{error:?}"
    );
    says(&error, &broken, "not valid PEM");

    let error = TlsConfig::from_pem_files(&cert, &other_key).expect_err("another's key");
    assert!(
        matches!(&error, TlsConfigError::KeyMismatch { cert: c, key: k } if *c == cert && *k == other_key),
        "{error:?}"
    );
    says(&error, &other_key, "does not match");
    says(&error, &cert, "does not match");

    let tls = TlsConfig::from_pem_files(&cert, &key).expect("the pair goes together");
    assert_eq!(
        tls.server_config().alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

#[test]
fn from_rustls_adds_alpn_only_when_the_config_has_none() {
    use websocket_handler::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use websocket_handler::rustls::ServerConfig;

    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .expect("the certificate");
    let mut http1_only = config.clone();
    http1_only.alpn_protocols = vec![b"http/1.1".to_vec()];

    let tls = TlsConfig::from_rustls(Arc::new(config));
    assert_eq!(
        tls.server_config().alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let http1_only = Arc::new(http1_only);
    let tls = TlsConfig::from_rustls(http1_only.clone());
    assert!(
        Arc::ptr_eq(tls.server_config(), &http1_only),
        "kept as it is"
    );
}

/// A transport that tells, once, how the server ended it: `Ok` for a clean end (over TLS,
/// after `close_notify`), or the error (`UnexpectedEof` without it).
struct Watched<S> {
    inner: S,
    ended: Arc<Mutex<Option<oneshot::Sender<io::Result<()>>>>>,
}

impl<S> Watched<S> {
    fn new(inner: S) -> (Self, oneshot::Receiver<io::Result<()>>) {
        let (tx, rx) = oneshot::channel();
        let watched = Watched {
            inner,
            ended: Arc::new(Mutex::new(Some(tx))),
        };
        (watched, rx)
    }

    fn report(&self, outcome: io::Result<()>) {
        if let Some(tx) = self.ended.lock().expect("not poisoned").take() {
            let _ = tx.send(outcome);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before => self.report(Ok(())),
            Poll::Ready(Err(error)) => {
                self.report(Err(io::Error::new(error.kind(), error.to_string())))
            }
            _ => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn close_all_ends_tls_clients_with_1001_and_close_notify_over_http1_and_http2() {
    let server = WebSocketServer::new();
    let room = WebSocketCollection::new();
    let (addr, root) = serve_tls(&server, &room, "tls-close-all").await;

    // HTTP/1.1, read frame by frame on the TLS stream itself.
    let mut http1 = tls_connect(addr, &root, b"http/1.1").await;
    within(
        "the handshake to be written",
        http1.write_all(&raw_handshake("/")),
    )
    .await
    .expect("write the handshake");
    let mut head = Vec::new();
    within("the 101", async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(http1.read_u8().await.expect("the response head"));
        }
    })
    .await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let (_, opcode, joined) = read_frame(&mut http1).await;
    assert_eq!((opcode, joined.starts_with(b"joined")), (1, true));

    // HTTP/2, with the TLS stream under hyper's client watched for close_notify.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = within(
        "the TLS handshake",
        connector(&root, b"h2").connect(localhost(), tcp),
    )
    .await
    .expect("TLS handshake");
    let (watched, h2_ended) = Watched::new(tls);
    let (mut send, connection) = within(
        "the HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(watched)),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let authority = format!("localhost:{}", addr.port());
    // Answered after the server's SETTINGS, which allow the extended CONNECT.
    let get = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("https://{authority}/"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    within("an answer to a GET", send.send_request(get))
        .await
        .expect("an answer");
    let mut connect = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(format!("https://{authority}/"))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .expect("request");
    connect
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = within("the CONNECT's answer", send.send_request(connect))
        .await
        .expect("the extended CONNECT");
    assert_eq!(response.status(), 200);
    let upgraded = within("the stream", hyper::upgrade::on(response))
        .await
        .expect("upgraded");
    let mut h2 = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    assert!(next_text(&mut h2).await.starts_with("joined"));

    let closing = {
        let server = server.clone();
        tokio::spawn(async move { server.close_all(Duration::from_secs(5)).await })
    };

    let (_, opcode, payload) = read_frame(&mut http1).await;
    assert_eq!(
        (opcode, payload.get(..2)),
        (8, Some(&1001u16.to_be_bytes()[..])),
        "HTTP/1.1: 1001"
    );
    let answer = common::masked_frame(true, 8, &1001u16.to_be_bytes());
    within("the close answer to be written", http1.write_all(&answer))
        .await
        .expect("answer the close");
    let mut rest = [0u8; 64];
    let end = within("the end of the TLS stream", http1.read(&mut rest)).await;
    assert!(
        matches!(end, Ok(0)),
        "HTTP/1.1: close_notify after the close frame, got {end:?}"
    );

    match next_message(&mut h2).await {
        Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("HTTP/2: expected close 1001, got {other:?}"),
    }
    // Reading on sends tungstenite's answer, and sees the stream end.
    assert_eq!(next_message(&mut h2).await, None);
    let end = within("the end of the HTTP/2 connection's TLS stream", h2_ended)
        .await
        .expect("the connection ended");
    assert!(
        end.is_ok(),
        "HTTP/2: close_notify at the end of the connection, got {end:?}"
    );
    let unfinished = within("close_all", closing).await.expect("close_all");
    assert_eq!(unfinished, 0, "every handler finished");
}

/// With a `ServerConfig` of one's own that names another ALPN protocol besides `h2` and
/// `http/1.1`: a client that agrees on it is closed after its handshake, with the error
/// naming the protocol; clients that choose `http/1.1` are served on the same listener.
#[tokio::test]
async fn a_connection_that_agrees_on_another_alpn_protocol_is_closed_with_its_name() {
    use websocket_handler::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use websocket_handler::rustls::ServerConfig;

    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let root = made.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![root.clone()], key)
        .expect("the certificate");
    config.alpn_protocols = vec![b"acme-tls/1".to_vec(), b"http/1.1".to_vec()];
    let tls = TlsConfig::from_rustls(Arc::new(config));

    let server = WebSocketServer::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (results, mut served) = tokio::sync::mpsc::unbounded_channel();
    {
        let server = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let slot = server.connection_slot().await;
                let server = server.clone();
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let room = WebSocketCollection::new();
                    let response = server.upgrade(request, EchoRoom { room });
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let result = slot.serve_tls(stream, peer, &tls, service).await;
                let _ = results.send(result);
            }
        });
    }

    let mut acme = tls_connect(addr, &root, b"acme-tls/1").await;
    let mut rest = [0u8; 16];
    let end = within("the server to close", acme.read(&mut rest)).await;
    assert!(matches!(end, Ok(0)), "closed with close_notify: {end:?}");
    let result = within("serve_tls's result", served.recv()).await;
    assert!(
        matches!(&result, Some(Err(TlsConnectionError::Protocol(name))) if name == "acme-tls/1"),
        "{result:?}"
    );

    let mut client = wss_http1(addr, &root, "/").await;
    assert!(next_text(&mut client).await.starts_with("joined"));
}

//! The end of a connection keeps its promises under load: a close frame queued behind
//! hundreds of unread messages reaches the client after them, over plain TCP and over TLS
//! (where `close_notify` ends the stream cleanly); and what a close drops from a full queue
//! is counted.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use websocket_handler::{
    CloseCode, Connection, Message, SlowConsumer, WebSocketCollection, WebSocketHandler,
    WebSocketServer,
};

use common::{masked_frame, raw_client, raw_handshake, read_frame, within, EchoRoom};

/// Messages broadcast to the client before it sends its oversized message, and their size.
const BACKLOG: usize = 400;
const MESSAGE_SIZE: usize = 1024;
/// The server's limit on a client's message; the client sends more.
const MAX_MESSAGE: usize = 16 * 1024;
/// The client's receive buffer: small, so that most of the backlog waits on the server.
const CLIENT_RECV_BUFFER: u32 = 8 * 1024;
/// The server's send buffer: small too, so that the backlog waits in the connection's queue
/// and the close frame is written long after the oversized message was refused.
const SERVER_SEND_BUFFER: usize = 8 * 1024;
/// Each scenario runs this many times: before the fix it failed every time.
const ROUNDS: usize = 10;

fn server() -> WebSocketServer {
    WebSocketServer::builder()
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .close_timeout(Duration::from_secs(5))
        .build()
}

/// The backlog's message number `i`: its number, padded to `MESSAGE_SIZE`.
fn backlog_message(i: usize) -> String {
    let mut text = format!("{i:05} ");
    text.extend(std::iter::repeat_n('x', MESSAGE_SIZE - text.len()));
    text
}

/// One round: the client, in `room`, has read its `joined` line; `BACKLOG` messages are
/// broadcast to it unread, then it sends a message over the limit (its header and 64 KiB,
/// which the server leaves unread). It must then read every queued message, in order, the
/// close frame with 1009, and then a clean end of the stream (TLS: `close_notify`).
async fn backlog_then_oversized<S>(mut stream: S, room: &WebSocketCollection, label: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (_, opcode, joined) = read_frame(&mut stream).await;
    assert_eq!(opcode, 1, "{label}: the joined line");
    assert!(joined.starts_with(b"joined"), "{label}: the joined line");
    for i in 0..BACKLOG {
        room.broadcast(backlog_message(i));
    }
    let (mut read, mut write) = tokio::io::split(stream);
    // Written aside: the server stops reading at the header, so the write may wait.
    let writer = tokio::spawn(async move {
        let mut frame = masked_frame(true, 2, &vec![7u8; 1024 * 1024]);
        frame.truncate(14 + 64 * 1024);
        let _ = write.write_all(&frame).await;
        write
    });
    for i in 0..BACKLOG {
        let (_, opcode, payload) = read_frame(&mut read).await;
        assert_eq!(
            (opcode, payload.len()),
            (1, MESSAGE_SIZE),
            "{label}: queued message {i} of {BACKLOG}"
        );
        assert!(
            payload.starts_with(format!("{i:05} ").as_bytes()),
            "{label}: message {i} in order"
        );
    }
    let (_, opcode, payload) = read_frame(&mut read).await;
    assert_eq!(opcode, 8, "{label}: a close frame after the backlog");
    assert_eq!(
        payload.get(..2),
        Some(&1009u16.to_be_bytes()[..]),
        "{label}: 1009, message too big"
    );
    // The stream then ends cleanly: a TLS client sees close_notify (`Ok(0)`), not an
    // unexpected EOF; a TCP one sees FIN, not a reset.
    let mut rest = [0u8; 64];
    let end = within("the end of the stream", read.read(&mut rest)).await;
    assert!(
        matches!(end, Ok(0)),
        "{label}: the stream ends cleanly after the close frame, got {end:?}"
    );
    let _ = within("the client's writer", writer).await;
}

#[tokio::test]
async fn a_close_behind_hundreds_of_unread_messages_reaches_the_client_over_tcp() {
    let room = WebSocketCollection::new();
    let in_room = room.clone();
    let options = common::Options {
        send_buffer: Some(SERVER_SEND_BUFFER),
        ..Default::default()
    };
    let addr = common::serve_with(server(), options, move |_| EchoRoom {
        room: in_room.clone(),
    })
    .await;
    for round in 0..ROUNDS {
        let stream = plain_client(addr).await;
        backlog_then_oversized(stream, &room, &format!("TCP round {round}")).await;
    }
}

#[tokio::test]
async fn a_close_behind_hundreds_of_unread_messages_reaches_the_client_over_tls() {
    let room = WebSocketCollection::new();
    let (addr, root) = serve_tls(server(), room.clone()).await;
    for round in 0..ROUNDS {
        let stream = tls_client(addr, &root).await;
        backlog_then_oversized(stream, &room, &format!("TLS round {round}")).await;
    }
}

#[tokio::test]
async fn after_a_clean_close_handshake_over_tls_the_client_gets_close_notify() {
    let room = WebSocketCollection::new();
    let (addr, root) = serve_tls(server(), room).await;
    for round in 0..3 {
        let mut stream = tls_client(addr, &root).await;
        let (_, opcode, _) = read_frame(&mut stream).await;
        assert_eq!(opcode, 1, "the joined line");
        let close = masked_frame(true, 8, &1000u16.to_be_bytes());
        within("the close frame to be written", stream.write_all(&close))
            .await
            .expect("write the close frame");
        let (_, opcode, payload) = read_frame(&mut stream).await;
        assert_eq!(
            (opcode, payload),
            (8, 1000u16.to_be_bytes().to_vec()),
            "round {round}: the answer"
        );
        let mut rest = [0u8; 64];
        let end = within("the end of the stream", stream.read(&mut rest)).await;
        assert!(
            matches!(end, Ok(0)),
            "round {round}: close_notify after the answer, got {end:?}"
        );
    }
}

/// A TLS server (rustls, a certificate made here) serving HTTP/1.1 whose every request
/// goes to `server.upgrade` with an [`EchoRoom`] handler in `room`. Returns its address and
/// the certificate to trust.
async fn serve_tls(
    server: WebSocketServer,
    room: WebSocketCollection,
) -> (SocketAddr, CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let cert = made.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("the certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let (acceptor, server, room) = (acceptor.clone(), server.clone(), room.clone());
            socket2::SockRef::from(&tcp)
                .set_send_buffer_size(SERVER_SEND_BUFFER)
                .expect("set the send buffer size");
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |mut request: hyper::Request<_>| {
                    request.extensions_mut().insert(peer);
                    let handler = EchoRoom { room: room.clone() };
                    let response = server.upgrade(request, handler);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, cert)
}

/// A WebSocket over plain TCP to `addr`, after its handshake, with a small receive buffer.
async fn plain_client(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(CLIENT_RECV_BUFFER)
        .expect("receive buffer");
    let stream = within("a TCP connection", socket.connect(addr))
        .await
        .expect("connect");
    handshake(stream).await
}

/// Sends the opening handshake and reads the `101`, byte by byte: what follows it is the
/// first frame.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> S {
    within("the handshake to be written", async {
        stream.write_all(&raw_handshake("/")).await?;
        stream.flush().await
    })
    .await
    .expect("write the handshake");
    let mut head = Vec::new();
    within("the 101", async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("the response head"));
        }
    })
    .await;
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream
}

/// A WebSocket over TLS to `addr`, after its handshake, with a small receive buffer.
async fn tls_client(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).expect("trust the certificate");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(CLIENT_RECV_BUFFER)
        .expect("receive buffer");
    let tcp = within("a TCP connection", socket.connect(addr))
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = within(
        "the TLS handshake",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    handshake(stream).await
}

/// Fills its own queue while the client reads nothing, then closes, and reports the
/// messages queued and dropped before the close and those dropped after it.
struct FillThenClose {
    report: tokio::sync::mpsc::UnboundedSender<(usize, u64, u64)>,
    metrics: websocket_handler::Metrics,
}

impl WebSocketHandler for FillThenClose {
    async fn on_open(&mut self, conn: &Connection) {
        let message = Message::from("y".repeat(MESSAGE_SIZE));
        // The socket fills, then the queue: then `send` refuses.
        let mut sent = 0;
        while conn.send(message.clone()).is_ok() {
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        let queued = conn.queued().messages;
        let before = self.metrics.snapshot().messages_dropped;
        conn.close(CloseCode::NORMAL, "bye").expect("close");
        let after = self.metrics.snapshot().messages_dropped;
        let _ = self.report.send((queued, before, after));
    }
}

#[tokio::test]
async fn a_close_on_a_full_queue_counts_the_messages_it_drops() {
    let server = WebSocketServer::builder()
        .outbound_queue_capacity(8)
        .slow_consumer(SlowConsumer::DropMessages)
        .build();
    let metrics = server.metrics().clone();
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let options = common::Options {
        send_buffer: Some(4096),
        ..Default::default()
    };
    let addr = common::serve_with(server, options, move |_| FillThenClose {
        report: report.clone(),
        metrics: metrics.clone(),
    })
    .await;
    // Never reads.
    let _client = raw_client(addr, "/", Some(4096)).await;
    let (queued, before, after) = within("the handler's report", reports.recv())
        .await
        .expect("a report");
    assert_eq!(queued, 8, "the queue was full");
    assert_eq!(before, 1, "the send the full queue refused");
    assert_eq!(
        after - before,
        queued as u64,
        "the close frame went ahead of the full queue: its messages count as dropped"
    );
}

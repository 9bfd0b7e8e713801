//! WebSockets over HTTP/2 (RFC 8441) with real sockets: a hyper HTTP/2 server with the
//! extended CONNECT enabled, and hyper's HTTP/2 client opening several WebSockets as streams
//! of one TCP connection (cleartext HTTP/2, "prior knowledge").

mod common;
mod h2_raw;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use websocket_handler::{WebSocketCollection, WebSocketServer};

use common::{read_frame_text, send_masked_text, within, EchoRoom};

/// An HTTP/2-only server (cleartext) whose every request goes to `server.upgrade`.
async fn h2_server(server: WebSocketServer, room: WebSocketCollection) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let server = server.clone();
            let room = room.clone();
            let service = service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer);
                let response = server.upgrade(request, EchoRoom { room: room.clone() });
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(
                http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// One HTTP/2 connection to `addr`.
async fn h2_client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (send, connection) = within(
        "the HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

/// An extended CONNECT for a WebSocket, with `version` as `Sec-WebSocket-Version`.
fn connect_request(addr: SocketAddr, version: &str) -> Request<Empty<Bytes>> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(format!("http://{addr}/ws"))
        .header("sec-websocket-version", version)
        .body(Empty::new())
        .expect("request");
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    request
}

type Stream = TokioIo<hyper::upgrade::Upgraded>;

/// Opens a WebSocket as a stream of `send`'s connection.
async fn open(send: &mut SendRequest<Empty<Bytes>>, addr: SocketAddr) -> Stream {
    // The server's SETTINGS (which allow the extended CONNECT) come first; until they have
    // arrived the client may refuse to send one.
    let mut tries = 0;
    let response = loop {
        within("the connection to be ready", send.ready())
            .await
            .expect("ready");
        match within(
            "the CONNECT's answer",
            send.send_request(connect_request(addr, "13")),
        )
        .await
        {
            Ok(response) => break response,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(error) => panic!("the CONNECT failed: {error}"),
        }
    };
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "RFC 8441: 200 opens the stream"
    );
    assert!(response.headers().get("sec-websocket-accept").is_none());
    let upgraded = within("the stream to be handed over", hyper::upgrade::on(response))
        .await
        .expect("upgraded");
    TokioIo::new(upgraded)
}

#[tokio::test]
async fn many_websockets_on_one_http2_connection_each_get_a_handler_and_the_broadcast() {
    let room = WebSocketCollection::new();
    let server = WebSocketServer::builder().max_connections(10).build();
    let metrics = server.metrics().clone();
    let addr = h2_server(server, room.clone()).await;
    let mut send = h2_client(addr).await;

    let mut streams = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let mut stream = open(&mut send, addr).await;
        let joined = read_frame_text(&mut stream).await;
        ids.push(joined.clone());
        streams.push(stream);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        4,
        "a handler, and a connection, per stream: {ids:?}"
    );
    assert_eq!(room.len(), 4);
    assert_eq!(metrics.snapshot().connections_open(), 4);

    // Each stream is its own WebSocket: an echo comes back on its own stream only.
    send_masked_text(&mut streams[2], "just to me").await;
    assert_eq!(read_frame_text(&mut streams[2]).await, "just to me");
    send_masked_text(&mut streams[0], "broadcast hello, streams").await;
    for stream in &mut streams {
        assert_eq!(read_frame_text(stream).await, "hello, streams");
    }
}

#[tokio::test]
async fn a_bad_connect_gets_its_4xx_and_the_other_streams_carry_on() {
    let room = WebSocketCollection::new();
    let addr = h2_server(WebSocketServer::new(), room.clone()).await;
    let mut send = h2_client(addr).await;
    let mut good = open(&mut send, addr).await;
    read_frame_text(&mut good).await;

    // Wrong Sec-WebSocket-Version: 426 on that stream.
    let response = within(
        "the bad CONNECT's answer",
        send.send_request(connect_request(addr, "8")),
    )
    .await
    .expect("an answer");
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);

    // Not the websocket protocol: 400.
    let mut other = connect_request(addr, "13");
    other
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("webtransport"));
    let response = within("the CONNECT's answer", send.send_request(other))
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // A plain GET over HTTP/2: 405.
    let get = Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_2)
        .uri(format!("http://{addr}/ws"))
        .body(Empty::new())
        .expect("request");
    let response = within("the GET's answer", send.send_request(get))
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"CONNECT"[..]),
        "over HTTP/2 the WebSocket's method is CONNECT"
    );

    // The first WebSocket on the connection is untouched, and a new one still opens.
    send_masked_text(&mut good, "still here").await;
    assert_eq!(read_frame_text(&mut good).await, "still here");
    let mut again = open(&mut send, addr).await;
    read_frame_text(&mut again).await;
    send_masked_text(&mut again, "broadcast both").await;
    assert_eq!(read_frame_text(&mut good).await, "both");
    assert_eq!(read_frame_text(&mut again).await, "both");
}

#[tokio::test]
async fn the_connection_limit_counts_streams_not_tcp_connections() {
    let room = WebSocketCollection::new();
    let server = WebSocketServer::builder().max_connections(2).build();
    let addr = h2_server(server, room).await;
    let mut send = h2_client(addr).await;
    let mut first = open(&mut send, addr).await;
    read_frame_text(&mut first).await;
    let mut second = open(&mut send, addr).await;
    read_frame_text(&mut second).await;
    let response = within(
        "the third CONNECT's answer",
        send.send_request(connect_request(addr, "13")),
    )
    .await
    .expect("an answer");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

// ---- h2-listener: slow readers, the listener's limits (issue 25) ----

/// Like [`h2_server`], but served by the crate's listener (`ConnectionSlot::serve`) with
/// the server's HTTP/2 settings, as the chat example does.
async fn h2_listener(server: WebSocketServer, room: WebSocketCollection) -> SocketAddr {
    h2_listener_reporting(server, room).await.0
}

/// [`h2_listener`], telling the peer of each connection it has finished serving.
async fn h2_listener_reporting(
    server: WebSocketServer,
    room: WebSocketCollection,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (served, finished) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let slot = server.connection_slot().await;
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let server = server.clone();
            let room = room.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = server.upgrade(request, EchoRoom { room: room.clone() });
                async move { Ok::<_, Infallible>(response) }
            });
            let served = served.clone();
            tokio::spawn(async move {
                let _ = slot.serve(stream, peer, Version::HTTP_2, service).await;
                let _ = served.send(peer);
            });
        }
    });
    (addr, finished)
}

/// An HTTP/2 connection of h2's own client (hyper's HTTP/2 engine, used directly): it can
/// watch a stream for the server's RST_STREAM without reading the stream, which would give
/// the server flow-control window. Its windows are a browser's: 1 MiB per stream, 4 MiB
/// for the connection.
async fn raw_h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (send, connection) = within(
        "the HTTP/2 handshake",
        h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

/// Opens a WebSocket stream (an extended CONNECT) on `send` and waits for its 200; the
/// stream is then never read.
async fn open_unread(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
) -> (h2::SendStream<Bytes>, h2::RecvStream) {
    // The extended CONNECT may be sent once the server's SETTINGS allowed it.
    within("the server's SETTINGS", async {
        while !send.is_extended_connect_protocol_enabled() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{addr}/ws"))
        .header("sec-websocket-version", "13")
        .body(())
        .expect("request");
    request
        .extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let ready = within("the connection to be ready", send.clone().ready())
        .await
        .expect("ready");
    *send = ready;
    let (response, stream) = send.send_request(request, false).expect("CONNECT sent");
    let response = within("the CONNECT's answer", response)
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    (stream, response.into_body())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_that_stop_reading_are_reset_counted_1008_and_bounded() {
    use std::time::Duration;
    let room = WebSocketCollection::new();
    let server = WebSocketServer::builder()
        .close_timeout(Duration::from_millis(500))
        .outbound_queue_capacity(64)
        .build();
    let metrics = server.metrics().clone();
    let addr = h2_listener(server, room.clone()).await;

    // 20 streams on one connection that never read.
    let mut stuck_conn = raw_h2_client(addr).await;
    let mut stuck = Vec::new();
    for _ in 0..20 {
        stuck.push(open_unread(&mut stuck_conn, addr).await);
    }
    // One that reads, on a connection of its own, and broadcasts.
    let mut pump_conn = h2_client(addr).await;
    let mut pump = open(&mut pump_conn, addr).await;
    let mut pump_bytes = read_frame_text(&mut pump).await.len() as u64;
    let payload = "x".repeat(8 * 1024);
    let started = tokio::time::Instant::now();
    for _ in 0..300 {
        send_masked_text(&mut pump, &format!("broadcast {payload}")).await;
        // Read our own copy: the pump is not a slow reader.
        loop {
            let text = read_frame_text(&mut pump).await;
            pump_bytes += text.len() as u64;
            if text.len() == payload.len() {
                break;
            }
        }
    }
    // Every stuck stream is disconnected as a slow consumer...
    within("the slow consumers to be let go", async {
        while metrics.snapshot().slow_consumer_disconnects < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // ...having taken from the server no more than the client read (up to its windows)
    // and what hyper buffers per stream.
    let written = metrics.snapshot().bytes_sent - pump_bytes;
    let received: u64 = stuck
        .iter_mut()
        .map(|(_, recv)| recv.flow_control().used_capacity() as u64)
        .sum();
    let held = written.saturating_sub(received);
    // Per stream: hyper's send buffer (64 KiB with the listener, 400 KiB by hyper's
    // default) and the three writes its send task and channel take, each at most a write
    // batch (64 KiB).
    let bound = 20 * (64 + 3 * 64) * 1024;
    assert!(
        held <= bound,
        "the server holds {held} bytes for its slow readers, more than {bound} \
         (written {written}, read by the client {received})"
    );
    within("the slow consumers' connections to end", async {
        while metrics.snapshot().connections_open() > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // ...and their streams end on the wire, reset, within a bounded time: the close timeout
    // (the 1008 cannot get through), then as much again for hyper's send task.
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(
            stuck
                .iter_mut()
                .map(|(send, _)| futures_util::future::poll_fn(move |cx| send.poll_reset(cx))),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "streams still open on the wire {:?} after the test began; metrics {:?}",
            started.elapsed(),
            metrics.snapshot()
        )
    });
    for reason in ended {
        assert_eq!(reason.expect("a RST_STREAM"), h2::Reason::CANCEL);
    }
    let closes = metrics.snapshot().closes;
    assert_eq!(
        closes.get(&1008),
        Some(&20),
        "slow consumers count as 1008: {closes:?}"
    );
    // The pump, on the same server, carries on.
    send_masked_text(&mut pump, "still here").await;
    assert_eq!(read_frame_text(&mut pump).await, "still here");
}

/// Reads frames until the connection ends: whether a GOAWAY came, and how long it took.
async fn until_closed(stream: &mut TcpStream) -> (bool, std::time::Duration) {
    let started = tokio::time::Instant::now();
    let mut goaway = false;
    within("the server to close the connection", async {
        while let Some(frame) = h2_raw::read_frame(stream).await {
            goaway |= frame.kind == h2_raw::GOAWAY;
        }
    })
    .await;
    (goaway, started.elapsed())
}

#[tokio::test]
async fn the_listener_drops_http2_connections_without_preface_request_or_streams() {
    use std::time::Duration;
    let server = WebSocketServer::builder()
        .handshake_timeout(Duration::from_millis(300))
        .close_timeout(Duration::from_millis(300))
        .build();
    let metrics = server.metrics().clone();
    let addr = h2_listener(server, WebSocketCollection::new()).await;

    // Connected, and nothing more: dropped (no GOAWAY: there is no HTTP/2 yet).
    let mut silent = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    // The preface and SETTINGS, and no request: GOAWAY, then closed.
    let mut idle = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    within("the preface", idle.write_all(&h2_raw::opening()))
        .await
        .expect("write");
    let ((_, silent_after), (idle_goaway, idle_after)) =
        tokio::join!(until_closed(&mut silent), until_closed(&mut idle));
    assert!(idle_goaway, "an HTTP/2 connection is told: GOAWAY");
    for after in [silent_after, idle_after] {
        assert!(after < Duration::from_secs(5), "closed after {after:?}");
    }

    // A connection whose WebSocket has closed is idle too.
    let stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut send, connection) = within(
        "the HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let mut ws = open(&mut send, addr).await;
    read_frame_text(&mut ws).await;
    // While the WebSocket is open, the connection is not idle, however long it is quiet.
    tokio::time::sleep(Duration::from_millis(900)).await;
    send_masked_text(&mut ws, "still open").await;
    assert_eq!(read_frame_text(&mut ws).await, "still open");
    within(
        "the close frame",
        ws.write_all(&common::masked_frame(true, 0x8, &1000u16.to_be_bytes())),
    )
    .await
    .expect("write the close");
    let (_, opcode, _) = common::read_frame(&mut ws).await;
    assert_eq!(opcode, 0x8, "the server's close");
    drop(ws);
    within("the idle connection to be closed", connection)
        .await
        .expect("the client's connection task")
        .expect("a clean GOAWAY, not a failure");
    assert_eq!(metrics.snapshot().connections_open(), 0);
}

#[tokio::test]
async fn the_listener_refuses_http2_streams_past_its_limit() {
    let server = WebSocketServer::builder()
        .http2_max_concurrent_streams(2)
        .build();
    let addr = h2_listener(server, WebSocketCollection::new()).await;
    let mut stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut opening = h2_raw::opening();
    for id in [1, 3, 5] {
        opening.extend(h2_raw::connect(id, &addr.to_string(), "/ws"));
    }
    within("the requests", stream.write_all(&opening))
        .await
        .expect("write");
    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    within("the answers", async {
        while answered.len() + refused.len() < 3 {
            let frame = h2_raw::read_frame(&mut stream)
                .await
                .expect("the connection stays open");
            match frame.kind {
                h2_raw::HEADERS => answered.push(frame.stream),
                h2_raw::RST_STREAM => refused.push((frame.stream, frame.error_code())),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(answered, [1, 3]);
    assert_eq!(refused, [(5, Some(h2_raw::REFUSED_STREAM))]);
}

/// A TCP stream whose reading stops for good once `stop` is set: a client that no longer
/// reads its socket at all.
struct StopReading {
    inner: TcpStream,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for StopReading {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StopReading {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client that stops reading its socket altogether (not only its streams): its
/// WebSockets go as slow consumers, and then its whole HTTP/2 connection, which would
/// otherwise hold what hyper buffered for it for as long as the client keeps it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_reading_its_socket_loses_the_connection() {
    use std::time::Duration;
    let room = WebSocketCollection::new();
    let server = WebSocketServer::builder()
        .close_timeout(Duration::from_millis(500))
        .handshake_timeout(Duration::from_millis(300))
        .outbound_queue_capacity(64)
        .build();
    let metrics = server.metrics().clone();
    let (addr, mut finished) = h2_listener_reporting(server, room).await;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let tcp = within("a TCP connection", socket.connect(addr))
        .await
        .expect("connect");
    let local = tcp.local_addr().expect("address");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = StopReading {
        inner: tcp,
        stop: stop.clone(),
    };
    let (mut send, connection) = within(
        "the HTTP/2 handshake",
        h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(io),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut stuck = Vec::new();
    for _ in 0..5 {
        stuck.push(open_unread(&mut send, addr).await);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut pump_conn = h2_client(addr).await;
    let mut pump = open(&mut pump_conn, addr).await;
    read_frame_text(&mut pump).await;
    let payload = "x".repeat(8 * 1024);
    for _ in 0..300 {
        send_masked_text(&mut pump, &format!("broadcast {payload}")).await;
        while read_frame_text(&mut pump).await.len() != payload.len() {}
    }
    within("the slow consumers to be let go", async {
        while metrics.snapshot().slow_consumer_disconnects < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The server ends the connection, though the client never reads again: its streams
    // have no WebSocket left, so it is idle (GOAWAY, which it cannot read) and dropped a
    // close timeout later.
    let ended = within("the stalled connection to be dropped", async {
        loop {
            match finished.recv().await {
                Some(peer) if peer == local => return,
                Some(_) => {}
                None => panic!("the listener stopped"),
            }
        }
    });
    ended.await;
    assert_eq!(metrics.snapshot().connections_open(), 1, "the pump's only");
    drop(stuck);
}

// ---- Large messages over HTTP/2: split into bounded writes (issue 25, point 3) ----

/// One HTTP/2 connection to `addr` whose streams let the server send at most 64 KiB ahead
/// of what the client has read (HTTP/2's default window; hyper's client allows 2 MiB).
async fn h2_client_small_window(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (send, connection) = within(
        "the HTTP/2 handshake",
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .handshake(TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

#[tokio::test]
async fn a_1_mib_message_over_http2_arrives_intact_and_the_stream_takes_it_in_bounded_writes() {
    use common::read_frame;

    let room = WebSocketCollection::new();
    // Room for both messages at once: the slow-consumer policy is not what this tests.
    let server = WebSocketServer::builder()
        .outbound_queue_bytes(4 << 20)
        .build();
    let metrics = server.metrics().clone();
    let addr = h2_server(server, room.clone()).await;
    let mut send = h2_client_small_window(addr).await;
    let mut stream = open(&mut send, addr).await;
    read_frame_text(&mut stream).await;

    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let sent_before = metrics.snapshot().messages_sent;
    room.broadcast(websocket_handler::Message::Binary(Bytes::from(big.clone())));
    room.broadcast("after the big one");
    // While the client reads nothing, hyper's stream may take only a few writes beyond
    // the flow-control window: the 1 MiB message is not all taken (nor counted sent). Taken
    // whole in one write, as it was, it counted as sent at once.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        metrics.snapshot().messages_sent,
        sent_before,
        "the stream took the whole 1 MiB message while the client read nothing"
    );

    let (compressed, opcode, payload) = read_frame(&mut stream).await;
    assert_eq!((compressed, opcode), (false, 2), "a binary frame");
    assert_eq!(payload.len(), big.len(), "1 MiB");
    assert!(payload == big, "every byte intact and in order");
    assert_eq!(read_frame_text(&mut stream).await, "after the big one");
    within("both messages to be counted as sent", async {
        while metrics.snapshot().messages_sent < sent_before + 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

//! The chat example over TLS (`--tls-cert`, `--tls-key`): a certificate the test makes,
//! real TLS clients (rustls), HTTP/2 and HTTP/1.1 chosen by ALPN on one port, and WebSockets
//! over both (an extended CONNECT over HTTP/2, an Upgrade over HTTP/1.1) in one room. The
//! chat serves TLS with the `tls` feature (`TlsConfig`, `ConnectionSlot::serve_tls`).
#![cfg(feature = "tls")]

mod common;
mod h2_raw;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;

use common::tls::tls_connect as tls;
use common::{read_frame_text, self_signed_certificate, send_masked_text, within, ChatServer};

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

// ---- h2-listener: the listener's limits over TLS (issue 25) ----

/// Reads and drops what the server sends until it closes the connection; the time that
/// took, or `None` if it is still open after `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// The whole answer to a GET of `target` over TLS and HTTP/1.1.
async fn get_over_tls(addr: SocketAddr, root: &CertificateDer<'static>, target: &str) -> String {
    let mut stream = tls(addr, root, b"http/1.1").await;
    let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    within("the request", stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    let mut response = Vec::new();
    // rustls may report the peer's close without close_notify as an error: keep what came.
    let _ = within("the response", stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// The chat over TLS on a free port, without join notices, and the certificate to trust.
async fn tls_chat(test: &str) -> (ChatServer, CertificateDer<'static>) {
    let (cert, key, root) = self_signed_certificate(test);
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let server = ChatServer::start_with(
        "127.0.0.1:0",
        &["--tls-cert", &cert, "--tls-key", &key, "--no-notices"],
    )
    .await;
    (server, root)
}

/// Clients that connect and then say nothing are dropped, whatever they stopped at: TLS
/// done and `h2` chosen, then no preface; the preface and SETTINGS, then no request;
/// HTTP/1.1 and no request; no TLS at all.
#[tokio::test]
async fn over_tls_silent_clients_are_dropped_http2_ones_too() {
    use std::time::Duration;
    let (server, root) = tls_chat("silent").await;
    let addr = server.addr;
    let limit = Duration::from_secs(25);

    let mut no_preface = tls(addr, &root, b"h2").await;
    let mut no_request = tls(addr, &root, b"h2").await;
    within("the preface", no_request.write_all(&h2_raw::opening()))
        .await
        .expect("write the preface");
    let mut http1 = tls(addr, &root, b"http/1.1").await;
    let mut no_tls = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");

    let (no_preface, no_request, http1, no_tls) = tokio::join!(
        closed_within(&mut no_preface, limit),
        closed_within(&mut no_request, limit),
        closed_within(&mut http1, limit),
        closed_within(&mut no_tls, limit),
    );
    assert!(
        no_preface.is_some() && no_request.is_some() && http1.is_some() && no_tls.is_some(),
        "still open after {limit:?} (None): h2 without preface {no_preface:?}, h2 without \
         request {no_request:?}, HTTP/1.1 {http1:?}, no TLS {no_tls:?}"
    );
    drop(server);
}

/// Over HTTP/2 a client may have the listener's 100 streams open at once; those it opens
/// beyond are refused (RST_STREAM with REFUSED_STREAM), not served. Written by hand: a
/// real client keeps to the limit the server announces.
#[tokio::test]
async fn over_tls_streams_past_the_http2_limit_are_refused() {
    let (server, root) = tls_chat("streams").await;
    let addr = server.addr;
    let stream = tls(addr, &root, b"h2").await;
    let (mut read, mut write) = tokio::io::split(stream);
    let authority = format!("localhost:{}", addr.port());
    let mut opening = h2_raw::opening();
    // Streams 1, 3, ... 201: 101 WebSockets.
    for n in 0..101u32 {
        opening.extend(h2_raw::connect(
            2 * n + 1,
            &authority,
            &format!("/api/Chat?username=u{n}"),
        ));
    }
    within("the requests", write.write_all(&opening))
        .await
        .expect("write the requests");

    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    within("every stream's answer", async {
        while answered.len() + refused.len() < 101 {
            let frame = h2_raw::read_frame(&mut read)
                .await
                .unwrap_or_else(|| panic!("connection closed; answered {answered:?}"));
            match frame.kind {
                h2_raw::SETTINGS if frame.flags & h2_raw::ACK == 0 => {
                    let ack = h2_raw::frame(h2_raw::SETTINGS, h2_raw::ACK, 0, &[]);
                    write.write_all(&ack).await.expect("SETTINGS ACK");
                }
                h2_raw::HEADERS => answered.push(frame.stream),
                h2_raw::RST_STREAM => {
                    assert_eq!(
                        frame.error_code(),
                        Some(h2_raw::REFUSED_STREAM),
                        "{frame:?}"
                    );
                    refused.push(frame.stream);
                }
                h2_raw::GOAWAY => panic!("GOAWAY {frame:?}; answered {answered:?}"),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(
        (answered.len(), refused.as_slice()),
        (100, &[201][..]),
        "100 streams served, the 101st refused"
    );
    drop(server);
}

/// A rapid-reset flood (CVE-2023-44487: streams opened and reset at once, over and over)
/// gets GOAWAY with ENHANCE_YOUR_CALM. h2 does this; this keeps it so.
#[tokio::test]
async fn over_tls_a_rapid_reset_flood_gets_goaway() {
    let (server, root) = tls_chat("rapid-reset").await;
    let addr = server.addr;
    let stream = tls(addr, &root, b"h2").await;
    let (mut read, mut write) = tokio::io::split(stream);
    let authority = format!("localhost:{}", addr.port());
    let mut flood = h2_raw::opening();
    for n in 0..2000u32 {
        let id = 2 * n + 1;
        flood.extend(h2_raw::connect(id, &authority, "/api/Chat?username=flood"));
        flood.extend(h2_raw::reset(id, h2_raw::CANCEL));
    }
    // The server may close before it has read it all.
    let _ = within("the flood", write.write_all(&flood)).await;
    let goaway = within("the GOAWAY", async {
        loop {
            match h2_raw::read_frame(&mut read).await {
                Some(frame) if frame.kind == h2_raw::GOAWAY => return Some(frame),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("a GOAWAY before the connection closed");
    assert_eq!(
        goaway.error_code(),
        Some(h2_raw::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    // The server goes on: a new connection is served.
    let again = tls(addr, &root, b"h2").await;
    drop(again);
    drop(server);
}

/// 20 chat WebSockets over HTTP/2 that never read, while the room talks: each is let go as
/// a slow consumer, counted under 1008 in `/metrics`, and its stream is reset on the wire
/// (its 1008 close frame cannot get through).
#[tokio::test]
async fn over_tls_http2_streams_that_stop_reading_are_reset_and_counted_1008() {
    use std::time::Duration;
    let (server, root) = tls_chat("stuck").await;
    let addr = server.addr;
    let authority = format!("localhost:{}", addr.port());

    // h2's own client, which can watch for a reset without reading (a browser's windows).
    let stream = tls(addr, &root, b"h2").await;
    let (mut send, connection) = within(
        "the HTTP/2 handshake",
        h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    within("the server's SETTINGS", async {
        while !send.is_extended_connect_protocol_enabled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut stuck = Vec::new();
    for n in 0..20 {
        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://{authority}/api/Chat?username=stuck{n}"))
            .header("sec-websocket-version", "13")
            .body(())
            .expect("request");
        connect
            .extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        send = within("the connection to be ready", send.ready())
            .await
            .expect("ready");
        let (response, stream) = send.send_request(connect, false).expect("CONNECT");
        let response = within("the CONNECT's answer", response)
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        stuck.push((stream, response.into_body()));
    }

    // Alice, over HTTP/1.1, talks and reads what the room says.
    let mut alice = tls(addr, &root, b"http/1.1").await;
    let request = format!(
        "GET /api/Chat?username=alice HTTP/1.1\r\nHost: {authority}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    alice.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    within("alice's 101", async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(alice.read_u8().await.expect("the response head"));
        }
    })
    .await;
    let line = "x".repeat(8 * 1024);
    for _ in 0..400 {
        send_masked_text(&mut alice, &line).await;
        assert_eq!(
            read_frame_text(&mut alice).await.len(),
            "alice: ".len() + line.len()
        );
    }

    // The stuck streams end on the wire: the close timeout (5 s), then as much again for
    // hyper's send task.
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(
            stuck
                .iter_mut()
                .map(|(send, _)| futures_util::future::poll_fn(move |cx| send.poll_reset(cx))),
        ),
    )
    .await
    .expect("the stuck streams still open on the wire after 20 s");
    for reason in ended {
        assert_eq!(reason.expect("a RST_STREAM"), h2::Reason::CANCEL);
    }
    let metrics = get_over_tls(addr, &root, "/metrics").await;
    for line in [
        "websocket_slow_consumer_disconnects_total 20",
        "websocket_closes_total{code=\"1008\"} 20",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    drop(server);
}

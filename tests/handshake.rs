//! The upgrade handshake over a real socket: what is accepted, what is refused with which
//! status, headers and body, and that a refused request never reaches its handler.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use websocket_handler::{Connection, HandshakeError, Message, WebSocketHandler, WebSocketServer};

use common::{within, WAIT};

/// The sample key of RFC 6455 section 1.3 and the accept value derived from it.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ---------------------------------------------------------------------------------------------
// A handler that counts what happens to it.
// ---------------------------------------------------------------------------------------------

/// Counts handler values created, opened and dropped.
struct Counters {
    created: AtomicUsize,
    opened: AtomicUsize,
    dropped: watch::Sender<usize>,
}

impl Counters {
    fn new() -> Arc<Self> {
        Arc::new(Counters {
            created: AtomicUsize::new(0),
            opened: AtomicUsize::new(0),
            dropped: watch::Sender::new(0),
        })
    }

    fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> usize {
        *self.dropped.borrow()
    }

    /// Waits (bounded by `WAIT`) until exactly `count` handlers have been dropped.
    async fn wait_dropped(&self, count: usize) {
        let mut receiver = self.dropped.subscribe();
        timeout(WAIT, receiver.wait_for(|&dropped| dropped >= count))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {count} handler drops, saw {}",
                    self.dropped()
                )
            })
            .expect("sender alive");
        assert_eq!(self.dropped(), count, "more handlers dropped than expected");
    }
}

/// Echoes every message; counts `on_open` and its own drop.
struct Tracked {
    counters: Arc<Counters>,
}

impl Tracked {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.created.fetch_add(1, Ordering::SeqCst);
        Tracked {
            counters: counters.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.counters.dropped.send_modify(|dropped| *dropped += 1);
    }
}

impl WebSocketHandler for Tracked {
    async fn on_open(&mut self, _conn: &Connection) {
        self.counters.opened.fetch_add(1, Ordering::SeqCst);
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = conn.send(message);
    }
}

/// A test server with its counters.
struct Server {
    addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(WebSocketServer::new()).await
    }

    async fn start_with(server: WebSocketServer) -> Self {
        let counters = Counters::new();
        let for_server = counters.clone();
        let addr = common::serve(server, move |_req| Tracked::new(&for_server)).await;
        Server { addr, counters }
    }

    /// Sends `request` on a fresh TCP connection and reads the response.
    async fn send(&self, request: &Req) -> RawResponse {
        let mut stream = self.open().await;
        send_on(&mut stream, request).await
    }

    async fn open(&self) -> TcpStream {
        timeout(WAIT, TcpStream::connect(self.addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect")
    }

    /// After `rejected` refused requests (and nothing else): none was opened, each handler
    /// value was dropped; then a real client still connects and is opened, which shows that
    /// the `on_open` counter does count.
    async fn assert_rejections_left_no_trace(&self, rejected: usize) {
        assert_eq!(self.counters.created(), rejected, "handlers created");
        assert_eq!(
            self.counters.opened(),
            0,
            "on_open called for a refused request"
        );
        self.counters.wait_dropped(rejected).await;

        let mut client = common::connect(self.addr, "/ws").await;
        common::send_text(&mut client, "still alive").await;
        assert_eq!(common::next_text(&mut client).await, "still alive");
        assert_eq!(self.counters.opened(), 1, "the valid connection was opened");
        assert_eq!(self.counters.created(), rejected + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.x client.
// ---------------------------------------------------------------------------------------------

/// A handshake request, written by hand so that it can be broken in any way.
#[derive(Clone)]
struct Req {
    method: &'static str,
    version: &'static str,
    headers: Vec<(String, String)>,
}

impl Req {
    /// A valid RFC 6455 opening handshake for `/ws`.
    fn valid() -> Self {
        Req {
            method: "GET",
            version: "HTTP/1.1",
            headers: vec![
                ("Host".into(), "localhost".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Upgrade".into(), "websocket".into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
                ("Sec-WebSocket-Key".into(), SAMPLE_KEY.into()),
            ],
        }
    }

    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn version(mut self, version: &'static str) -> Self {
        self.version = version;
        self
    }

    /// Removes every header called `name`.
    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces every header called `name` with one `name: value`.
    fn set(self, name: &str, value: &str) -> Self {
        self.without(name).add(name, value)
    }

    /// Adds one more `name: value` line.
    fn add(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn render(&self) -> String {
        let mut text = format!("{} /ws {}\r\n", self.method, self.version);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.method == "POST" {
            text.push_str("Content-Length: 0\r\n");
        }
        text.push_str("\r\n");
        text
    }
}

/// A response as read off the socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    /// The value of the single header `name`; panics if it is missing or repeated.
    fn header(&self, name: &str) -> &str {
        let values = self.header_all(name);
        assert_eq!(values.len(), 1, "expected one `{name}` header in {self:#?}");
        values[0]
    }

    fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A refusal: `status`, plain text, and a body that mentions `mentions`.
    fn assert_refused(&self, status: u16, mentions: &str) {
        assert_eq!(self.status, status, "unexpected status in {self:#?}");
        let content_type = self.header("content-type");
        assert!(
            content_type.starts_with("text/plain"),
            "refusal is not plain text: {content_type}"
        );
        assert!(
            self.body.contains(mentions),
            "refusal body {:?} does not mention {mentions:?}",
            self.body
        );
        assert!(
            self.header_all("sec-websocket-accept").is_empty(),
            "a refusal carries Sec-WebSocket-Accept"
        );
    }

    /// A refusal because of `Sec-WebSocket-Version`: 426 advertising version 13.
    fn assert_version_refused(&self) {
        self.assert_refused(426, "Sec-WebSocket-Version");
        assert_eq!(self.header("sec-websocket-version"), "13");
    }

    /// An accepted handshake for the RFC sample key.
    fn assert_switching(&self) {
        assert_eq!(self.status, 101, "unexpected status in {self:#?}");
        assert_eq!(self.header("sec-websocket-accept"), SAMPLE_ACCEPT);
        assert!(self.header("upgrade").eq_ignore_ascii_case("websocket"));
        assert!(self.header("connection").eq_ignore_ascii_case("upgrade"));
    }
}

/// Writes `request` on `stream` and reads one response. After a `101` nothing past the head
/// is read, so the stream is positioned at the first WebSocket frame.
async fn send_on(stream: &mut TcpStream, request: &Req) -> RawResponse {
    timeout(WAIT, async {
        stream
            .write_all(request.render().as_bytes())
            .await
            .expect("write request");
        read_response(stream).await
    })
    .await
    .expect("timed out waiting for the response")
}

async fn read_response(stream: &mut TcpStream) -> RawResponse {
    // Byte by byte up to the blank line, so nothing after the head is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.expect("read response head");
        head.push(byte);
    }
    let head = String::from_utf8(head).expect("response head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().expect("HTTP version");
    assert!(
        version.starts_with("HTTP/1."),
        "status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();

    let mut body = Vec::new();
    if status != 101 {
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>().expect("numeric Content-Length"));
        match length {
            Some(length) => {
                body.resize(length, 0);
                stream.read_exact(&mut body).await.expect("read body");
            }
            None => {
                stream.read_to_end(&mut body).await.expect("read body");
            }
        }
    }
    RawResponse {
        status,
        headers,
        body: String::from_utf8(body).expect("body is UTF-8"),
    }
}

/// Speaks WebSocket on a stream whose `101` has just been read, and checks an echo.
async fn assert_echoes(stream: TcpStream) {
    let mut client = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    timeout(WAIT, client.send(WsMessage::text("ping over raw TCP")))
        .await
        .expect("send timed out")
        .expect("send");
    let reply = loop {
        match timeout(WAIT, client.next()).await.expect("echo timed out") {
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => break other,
        }
    };
    match reply {
        Some(Ok(WsMessage::Text(text))) => assert_eq!(text.as_str(), "ping over raw TCP"),
        other => panic!("expected the echo, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted handshakes.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn valid_handshake_switches_protocols_with_rfc_accept_key() {
    let server = Server::start().await;
    let mut stream = server.open().await;
    let response = send_on(&mut stream, &Req::valid()).await;
    response.assert_switching();
    assert_echoes(stream).await;
    assert_eq!(server.counters.opened(), 1);
    assert_eq!(server.counters.created(), 1);
}

#[tokio::test]
async fn connection_token_list_in_mixed_case_is_accepted() {
    let server = Server::start().await;
    let mut stream = server.open().await;
    let request = Req::valid()
        .set("Connection", "keep-alive, Upgrade")
        .set("Upgrade", "WebSocket");
    let response = send_on(&mut stream, &request).await;
    response.assert_switching();
    assert_echoes(stream).await;
    assert_eq!(server.counters.opened(), 1);
}

#[tokio::test]
async fn refused_request_then_valid_upgrade_on_the_same_keep_alive_connection() {
    let server = Server::start().await;
    let mut stream = server.open().await;
    let refused = send_on(&mut stream, &Req::valid().without("Sec-WebSocket-Key")).await;
    refused.assert_refused(400, "Sec-WebSocket-Key");
    let accepted = send_on(&mut stream, &Req::valid()).await;
    accepted.assert_switching();
    assert_echoes(stream).await;
    assert_eq!(server.counters.created(), 2);
    assert_eq!(server.counters.opened(), 1);
    assert_eq!(
        server.counters.dropped(),
        1,
        "the refused handler was dropped"
    );
}

// ---------------------------------------------------------------------------------------------
// Refused handshakes: one test per reason.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn post_is_405_with_allow_get() {
    let server = Server::start().await;
    let response = server.send(&Req::valid().method("POST")).await;
    response.assert_refused(405, "GET");
    assert_eq!(response.header("allow"), "GET");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn missing_connection_header_is_400() {
    let server = Server::start().await;
    let response = server.send(&Req::valid().without("Connection")).await;
    response.assert_refused(400, "Connection");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn connection_without_upgrade_token_is_400() {
    let server = Server::start().await;
    let response = server
        .send(&Req::valid().set("Connection", "keep-alive"))
        .await;
    response.assert_refused(400, "Connection");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn missing_upgrade_header_is_400() {
    let server = Server::start().await;
    let response = server.send(&Req::valid().without("Upgrade")).await;
    response.assert_refused(400, "Upgrade: websocket");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn upgrade_to_h2c_is_400() {
    let server = Server::start().await;
    let response = server.send(&Req::valid().set("Upgrade", "h2c")).await;
    response.assert_refused(400, "Upgrade: websocket");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn missing_key_is_400() {
    let server = Server::start().await;
    let response = server
        .send(&Req::valid().without("Sec-WebSocket-Key"))
        .await;
    response.assert_refused(400, "Sec-WebSocket-Key");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn key_of_wrong_length_is_400() {
    let server = Server::start().await;
    // base64 of 15 bytes: valid base64, wrong length.
    let response = server
        .send(&Req::valid().set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j"))
        .await;
    response.assert_refused(400, "Sec-WebSocket-Key");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn key_that_is_not_base64_is_400() {
    let server = Server::start().await;
    // 24 characters with the right padding, but `!` and `*` are not base64.
    let response = server
        .send(&Req::valid().set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSB!b25*ZQ=="))
        .await;
    response.assert_refused(400, "Sec-WebSocket-Key");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn two_keys_are_400() {
    let server = Server::start().await;
    let response = server
        .send(&Req::valid().add("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="))
        .await;
    response.assert_refused(400, "Sec-WebSocket-Key");
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn version_8_is_426_advertising_13() {
    let server = Server::start().await;
    let response = server
        .send(&Req::valid().set("Sec-WebSocket-Version", "8"))
        .await;
    response.assert_version_refused();
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn missing_version_is_426_advertising_13() {
    let server = Server::start().await;
    let response = server
        .send(&Req::valid().without("Sec-WebSocket-Version"))
        .await;
    response.assert_version_refused();
    server.assert_rejections_left_no_trace(1).await;
}

#[tokio::test]
async fn http_1_0_is_400() {
    let server = Server::start().await;
    let response = server.send(&Req::valid().version("HTTP/1.0")).await;
    response.assert_refused(400, "HTTP/1.1");
    server.assert_rejections_left_no_trace(1).await;
}

// ---------------------------------------------------------------------------------------------
// Many refusals leave the server healthy.
// ---------------------------------------------------------------------------------------------

/// Every kind of bad request, with the status it must get.
fn bad_requests() -> Vec<(Req, u16)> {
    vec![
        (Req::valid().method("POST"), 405),
        (Req::valid().method("PUT"), 405),
        (Req::valid().without("Connection"), 400),
        (Req::valid().set("Connection", "keep-alive"), 400),
        (Req::valid().without("Upgrade"), 400),
        (Req::valid().set("Upgrade", "h2c"), 400),
        (Req::valid().without("Sec-WebSocket-Key"), 400),
        (Req::valid().set("Sec-WebSocket-Key", "short=="), 400),
        (
            Req::valid().add("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="),
            400,
        ),
        (Req::valid().set("Sec-WebSocket-Version", "8"), 426),
        (Req::valid().without("Sec-WebSocket-Version"), 426),
        (Req::valid().version("HTTP/1.0"), 400),
    ]
}

#[tokio::test]
async fn fifty_bad_requests_leave_the_server_healthy_and_leak_no_handler() {
    const BAD: usize = 50;
    let server = Arc::new(Server::start().await);
    let kinds = bad_requests();

    let mut tasks = JoinSet::new();
    for i in 0..BAD {
        let (request, status) = kinds[i % kinds.len()].clone();
        let server = server.clone();
        tasks.spawn(async move {
            let response = server.send(&request).await;
            assert_eq!(response.status, status, "request #{i}: {response:#?}");
            assert!(!response.body.is_empty(), "request #{i} has an empty body");
        });
    }
    while let Some(result) = timeout(WAIT, tasks.join_next())
        .await
        .expect("bad requests timed out")
    {
        result.expect("a bad request task failed");
    }

    assert_eq!(server.counters.created(), BAD);
    assert_eq!(server.counters.opened(), 0, "a refused request was opened");
    server.counters.wait_dropped(BAD).await;

    // A real client still gets through and is echoed, text and binary.
    let mut client = common::connect(server.addr, "/ws").await;
    common::send_text(&mut client, "hello after the storm").await;
    assert_eq!(
        common::next_text(&mut client).await,
        "hello after the storm"
    );
    within(
        "the binary message to be sent",
        client.send(WsMessage::binary(vec![0u8, 1, 2, 255])),
    )
    .await
    .expect("send binary");
    match common::next_message(&mut client).await {
        Some(WsMessage::Binary(bytes)) => assert_eq!(bytes.as_ref(), [0u8, 1, 2, 255]),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    assert_eq!(server.counters.opened(), 1);
    assert_eq!(server.counters.created(), BAD + 1);

    // Closing it drops its handler too: every handler ever made is gone.
    timeout(WAIT, client.close(None))
        .await
        .expect("close timed out")
        .expect("close");
    match common::next_message(&mut client).await {
        Some(WsMessage::Close(_)) | None => {}
        Some(other) => panic!("unexpected message while closing: {other:?}"),
    }
    server.counters.wait_dropped(BAD + 1).await;
}

// ---------------------------------------------------------------------------------------------
// `try_upgrade` without a hyper server.
// ---------------------------------------------------------------------------------------------

fn valid_request() -> http::request::Builder {
    Request::builder()
        .method(Method::GET)
        .uri("/ws")
        .version(Version::HTTP_11)
        .header(header::HOST, "localhost")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, SAMPLE_KEY)
}

#[tokio::test]
async fn try_upgrade_without_hyper_upgrade_extension_is_not_upgradable() {
    let counters = Counters::new();
    let request = valid_request().body(()).expect("request");
    let error = WebSocketServer::new()
        .try_upgrade(request, Tracked::new(&counters))
        .expect_err("a request without OnUpgrade cannot be upgraded");
    assert_eq!(error, HandshakeError::NotUpgradable);
    assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let response = error.to_response();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(counters.opened(), 0);
    assert_eq!(counters.dropped(), 1, "the handler was not dropped");
}

/// Runs `try_upgrade` on `request` and checks the refusal and its response.
async fn assert_try_upgrade_refuses(
    request: Request<()>,
    expected: HandshakeError,
    status: StatusCode,
    mentions: &str,
) {
    let counters = Counters::new();
    let error = WebSocketServer::new()
        .try_upgrade(request, Tracked::new(&counters))
        .expect_err("request must be refused");
    assert_eq!(error, expected);
    assert_eq!(error.status(), status, "status of {error:?}");
    assert_eq!(counters.opened(), 0);
    assert_eq!(counters.dropped(), 1, "the handler was not dropped");

    let response = error.to_response();
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .expect("content type")
        .to_str()
        .expect("ASCII");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    match &error {
        HandshakeError::MethodNotAllowed(_) => {
            assert_eq!(response.headers()[header::ALLOW], "GET");
        }
        HandshakeError::ConnectRequired(_) => {
            assert_eq!(response.headers()[header::ALLOW], "CONNECT");
        }
        HandshakeError::UnsupportedVersion => {
            assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        }
        _ => {}
    }
    let body: Bytes = within("the refusal's body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    let body = std::str::from_utf8(&body).expect("UTF-8 body");
    assert!(
        body.contains(mentions),
        "{body:?} does not mention {mentions:?}"
    );
}

#[tokio::test]
async fn try_upgrade_reports_each_refusal() {
    let bad = |builder: http::request::Builder| builder.body(()).expect("request");

    assert_try_upgrade_refuses(
        bad(valid_request().method(Method::POST)),
        HandshakeError::MethodNotAllowed(Method::POST),
        StatusCode::METHOD_NOT_ALLOWED,
        "POST",
    )
    .await;
    assert_try_upgrade_refuses(
        bad(valid_request().version(Version::HTTP_10)),
        HandshakeError::HttpVersion(Version::HTTP_10),
        StatusCode::BAD_REQUEST,
        "HTTP/1.1",
    )
    .await;
    // Over HTTP/2 a WebSocket is an extended CONNECT (RFC 8441, tests/http2.rs), not a GET.
    assert_try_upgrade_refuses(
        bad(valid_request().version(Version::HTTP_2)),
        HandshakeError::ConnectRequired(Method::GET),
        StatusCode::METHOD_NOT_ALLOWED,
        "CONNECT",
    )
    .await;

    let mut request = bad(valid_request());
    request.headers_mut().remove(header::CONNECTION);
    assert_try_upgrade_refuses(
        request,
        HandshakeError::MissingConnectionUpgrade,
        StatusCode::BAD_REQUEST,
        "Connection",
    )
    .await;

    let mut request = bad(valid_request());
    request
        .headers_mut()
        .insert(header::UPGRADE, "h2c".parse().expect("value"));
    assert_try_upgrade_refuses(
        request,
        HandshakeError::MissingUpgradeWebSocket,
        StatusCode::BAD_REQUEST,
        "Upgrade",
    )
    .await;

    let mut request = bad(valid_request());
    request
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_VERSION, "8".parse().expect("value"));
    assert_try_upgrade_refuses(
        request,
        HandshakeError::UnsupportedVersion,
        StatusCode::UPGRADE_REQUIRED,
        "Sec-WebSocket-Version",
    )
    .await;

    let mut request = bad(valid_request());
    request.headers_mut().remove(header::SEC_WEBSOCKET_KEY);
    assert_try_upgrade_refuses(
        request,
        HandshakeError::MissingKey,
        StatusCode::BAD_REQUEST,
        "Sec-WebSocket-Key",
    )
    .await;

    let mut request = bad(valid_request());
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_KEY,
        "too short".parse().expect("value"),
    );
    assert_try_upgrade_refuses(
        request,
        HandshakeError::InvalidKey,
        StatusCode::BAD_REQUEST,
        "Sec-WebSocket-Key",
    )
    .await;

    let mut request = bad(valid_request());
    request.headers_mut().append(
        header::SEC_WEBSOCKET_KEY,
        "AAAAAAAAAAAAAAAAAAAAAA==".parse().expect("value"),
    );
    assert_try_upgrade_refuses(
        request,
        HandshakeError::InvalidKey,
        StatusCode::BAD_REQUEST,
        "Sec-WebSocket-Key",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Origins, connection limit, subprotocols.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cross_origin_upgrades_are_refused_with_403() {
    let config = WebSocketServer::builder()
        .allowed_origins(["http://chat.example:8080"])
        .build();
    let server = Server::start_with(config).await;
    let evil = Req::valid().add("Origin", "http://evil.example");
    server.send(&evil).await.assert_refused(403, "not allowed");
    // Same origin, any ASCII case; and non-browser clients, which send no Origin.
    let good = Req::valid().add("Origin", "http://Chat.Example:8080");
    assert_eq!(server.send(&good).await.status, 101);
    assert_eq!(server.send(&Req::valid()).await.status, 101);
}

#[tokio::test]
async fn same_origin_accepts_pages_of_this_server_only() {
    let server = Server::start_with(WebSocketServer::builder().same_origin().build()).await;
    let page = Req::valid()
        .set("Host", "127.0.0.1:8080")
        .add("Origin", "http://127.0.0.1:8080");
    assert_eq!(server.send(&page).await.status, 101);
    let other_port = page.clone().set("Origin", "http://127.0.0.1:9999");
    server
        .send(&other_port)
        .await
        .assert_refused(403, "not allowed");
    let evil = page.set("Origin", "https://evil.example");
    server.send(&evil).await.assert_refused(403, "not allowed");
}

#[tokio::test]
async fn beyond_max_connections_upgrades_get_503_and_the_open_ones_are_untouched() {
    let server = Server::start_with(WebSocketServer::builder().max_connections(2).build()).await;
    let mut first = common::connect(server.addr, "/ws").await;
    let mut second = common::connect(server.addr, "/ws").await;
    server
        .send(&Req::valid())
        .await
        .assert_refused(503, "limit of 2");
    for client in [&mut first, &mut second] {
        common::send_text(client, "still here").await;
        assert_eq!(common::next_text(client).await, "still here");
    }
    // Once one has gone (its handler dropped, after its end), there is room again.
    drop(first);
    server.counters.wait_dropped(2).await; // the refused request's handler, then first's
    let mut third = common::connect(server.addr, "/ws").await;
    common::send_text(&mut third, "in").await;
    assert_eq!(common::next_text(&mut third).await, "in");
}

#[tokio::test]
async fn the_servers_preferred_subprotocol_among_those_offered_is_chosen() {
    let server = Server::start_with(
        WebSocketServer::builder()
            .protocols(["chat.v2", "chat"])
            .build(),
    )
    .await;
    let offered = Req::valid().add("Sec-WebSocket-Protocol", "chat, chat.v2");
    let response = server.send(&offered).await;
    assert_eq!(response.status, 101);
    assert_eq!(response.header("sec-websocket-protocol"), "chat.v2");

    let other = Req::valid().add("Sec-WebSocket-Protocol", "mqtt");
    let response = server.send(&other).await;
    assert_eq!(response.status, 101);
    assert!(response.header_all("sec-websocket-protocol").is_empty());
}

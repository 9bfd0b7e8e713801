//! The lifecycle promises under hostile and unlucky timing, over real sockets: the close
//! timeout runs from the moment the close is asked for, `close_all` waits for every
//! `on_close`, the timers run while a handler is busy, and an upgrade whose response is
//! never sent leaks nothing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{masked_frame, raw_client, Options, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use websocket_handler::{
    CloseCode, CloseFrame, Connection, Error, Message, WebSocketHandler, WebSocketServer,
};

#[derive(Debug)]
enum Event {
    Open,
    /// `on_message` started, with the message's text.
    Message(#[allow(dead_code)] String),
    Error(String),
    Close(CloseCode),
}

/// What the probe does in its callbacks.
#[derive(Clone, Default)]
struct Behaviour {
    /// Sent to the client in `on_open`: this many messages of 4 KiB.
    flood: usize,
    /// `on_open` then asks for the close.
    close_on_open: bool,
    /// `on_message` asks for the close first.
    close_on_message: bool,
    /// `on_message` waits for a permit of this gate before returning.
    gate: Option<Arc<Semaphore>>,
    /// `on_close` waits this long before recording itself.
    slow_close: Duration,
    /// `on_close` of the connections whose path is `/stuck` never returns.
    stuck_close: bool,
}

struct Probe {
    events: mpsc::UnboundedSender<Event>,
    behaviour: Behaviour,
    path: String,
}

impl WebSocketHandler for Probe {
    async fn on_open(&mut self, conn: &Connection) {
        let _ = self.events.send(Event::Open);
        for _ in 0..self.behaviour.flood {
            conn.send(vec![7u8; 4096])
                .expect("queued: the queue is big enough");
        }
        if self.behaviour.close_on_open {
            conn.close(CloseCode::NORMAL, "bye").expect("close");
        }
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let text = message.as_text().unwrap_or("binary").to_owned();
        let _ = self.events.send(Event::Message(text));
        if self.behaviour.close_on_message {
            let _ = conn.close(CloseCode::NORMAL, "bye");
        }
        if let Some(gate) = &self.behaviour.gate {
            let _ = gate.acquire().await.map(|permit| permit.forget());
        }
    }

    async fn on_error(&mut self, _conn: &Connection, error: &Error) {
        let _ = self.events.send(Event::Error(error.to_string()));
    }

    async fn on_close(&mut self, _conn: &Connection, frame: &CloseFrame) {
        if self.behaviour.stuck_close && self.path == "/stuck" {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.behaviour.slow_close).await;
        let _ = self.events.send(Event::Close(frame.code));
    }
}

async fn start(
    server: WebSocketServer,
    options: Options,
    behaviour: Behaviour,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (events, receiver) = mpsc::unbounded_channel();
    let addr = common::serve_with(server, options, move |req| Probe {
        events: events.clone(),
        behaviour: behaviour.clone(),
        path: req.uri().path().to_owned(),
    })
    .await;
    (addr, receiver)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>, within: Duration) -> Event {
    tokio::time::timeout(within, events.recv())
        .await
        .expect("timed out waiting for a handler event")
        .expect("event channel closed")
}

/// Waits for `on_close`, skipping other events; panics after `within`.
async fn expect_close(events: &mut mpsc::UnboundedReceiver<Event>, within: Duration) -> Vec<Event> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(Event::Close(code))) => {
                seen.push(Event::Close(code));
                return seen;
            }
            Ok(Some(other)) => seen.push(other),
            Ok(None) => panic!("event channel closed; seen {}", last(&seen)),
            Err(_) => panic!("no on_close within {within:?}; seen {}", last(&seen)),
        }
    }
}

/// The last few events, for a failure message.
fn last(seen: &[Event]) -> String {
    let from = seen.len().saturating_sub(5);
    format!("{} events, the last: {:?}", seen.len(), &seen[from..])
}

/// Sends a small text frame every 50 ms until dropped: a client that is never idle.
fn keep_sending(mut write: tokio::net::tcp::OwnedWriteHalf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let frame = masked_frame(true, 0x1, b"still here");
        while write.write_all(&frame).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Reads until the server closes the TCP connection; panics after `within`. Returns the
/// bytes read.
async fn read_until_eof(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let reading = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .expect("the server did not close the connection in time");
    received
}

const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// A server on which only the close timeout can end a connection that stops reading.
fn only_the_close_timeout() -> WebSocketServer {
    WebSocketServer::builder()
        .close_timeout(CLOSE_TIMEOUT)
        .ping_interval(None)
        .idle_timeout(None)
        .build()
}

/// A full socket both ways: the server's send buffer and the client's receive buffer are
/// small, and the server has queued 800 KiB the client never reads.
const FULL_SOCKET: Options = Options {
    send_buffer: Some(4096),
    buffered: false,
};

#[tokio::test]
async fn close_ends_a_client_that_stops_reading_but_keeps_sending_within_the_close_timeout() {
    let behaviour = Behaviour {
        flood: 200,
        close_on_open: true,
        ..Behaviour::default()
    };
    let (addr, mut events) = start(only_the_close_timeout(), FULL_SOCKET, behaviour).await;
    let client = raw_client(addr, "/", Some(4096)).await;
    let (_read, write) = client.into_split();
    let _sender = keep_sending(write);
    assert!(matches!(next_event(&mut events, WAIT).await, Event::Open));
    // Our close frame is stuck behind 800 KiB the client will never read: only a close
    // timeout running from the close() call can end it.
    let seen = expect_close(&mut events, CLOSE_TIMEOUT + WAIT).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Error(text) if text.contains("close handshake"))),
        "on_error should say the close timed out: {seen:?}"
    );
}

#[tokio::test]
async fn close_all_ends_a_client_that_stops_reading_but_keeps_sending() {
    let behaviour = Behaviour {
        flood: 200,
        ..Behaviour::default()
    };
    let server = only_the_close_timeout();
    let (addr, mut events) = start(server.clone(), FULL_SOCKET, behaviour).await;
    let client = raw_client(addr, "/", Some(4096)).await;
    let (_read, write) = client.into_split();
    let _sender = keep_sending(write);
    assert!(matches!(next_event(&mut events, WAIT).await, Event::Open));

    let started = Instant::now();
    let unfinished = tokio::time::timeout(WAIT, server.close_all(WAIT))
        .await
        .expect("close_all returns");
    assert_eq!(unfinished, 0, "the connection ended");
    assert!(
        started.elapsed() < CLOSE_TIMEOUT + Duration::from_secs(3),
        "ended within the close timeout, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn close_all_returns_once_every_on_close_has_run() {
    let behaviour = Behaviour {
        slow_close: Duration::from_millis(300),
        ..Behaviour::default()
    };
    let server = WebSocketServer::new();
    let (addr, mut events) = start(server.clone(), Options::default(), behaviour).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(common::connect(addr, "/").await);
        assert!(matches!(next_event(&mut events, WAIT).await, Event::Open));
    }
    // The clients read, so they answer the close frames.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move { while common::next_message(&mut client).await.is_some() {} })
        })
        .collect();
    let unfinished = tokio::time::timeout(WAIT, server.close_all(WAIT))
        .await
        .expect("close_all returns");
    assert_eq!(unfinished, 0);
    // Every on_close has already run: its event is there without waiting.
    for _ in 0..3 {
        match events.try_recv() {
            Ok(Event::Close(code)) => assert_eq!(code, CloseCode::GOING_AWAY),
            other => panic!("close_all returned before on_close ran: {other:?}"),
        }
    }
    for reader in readers {
        let _ = tokio::time::timeout(WAIT, reader).await;
    }
}

#[tokio::test]
async fn close_all_counts_the_handlers_whose_on_close_does_not_return() {
    let behaviour = Behaviour {
        stuck_close: true,
        ..Behaviour::default()
    };
    let server = WebSocketServer::new();
    let (addr, mut events) = start(server.clone(), Options::default(), behaviour).await;
    let mut fine = common::connect(addr, "/").await;
    let mut stuck = common::connect(addr, "/stuck").await;
    for _ in 0..2 {
        assert!(matches!(next_event(&mut events, WAIT).await, Event::Open));
    }
    let readers = [
        tokio::spawn(async move { while common::next_message(&mut fine).await.is_some() {} }),
        tokio::spawn(async move { while common::next_message(&mut stuck).await.is_some() {} }),
    ];
    let unfinished = tokio::time::timeout(WAIT, server.close_all(Duration::from_millis(500)))
        .await
        .expect("close_all returns after its timeout");
    assert_eq!(unfinished, 1, "one on_close never returns");
    for reader in readers {
        let _ = tokio::time::timeout(WAIT, reader).await;
    }
}

/// Sends one text frame, then neither reads nor writes (no pong either).
async fn silent_after(addr: std::net::SocketAddr, text: &str) -> TcpStream {
    let mut client = raw_client(addr, "/", None).await;
    client
        .write_all(&masked_frame(true, 0x1, text.as_bytes()))
        .await
        .expect("send");
    client
}

#[tokio::test]
async fn the_idle_timeout_drops_a_silent_peer_while_its_handler_is_busy() {
    let gate = Arc::new(Semaphore::new(0));
    let behaviour = Behaviour {
        gate: Some(gate.clone()),
        ..Behaviour::default()
    };
    let server = WebSocketServer::builder()
        .ping_interval(Some(Duration::from_millis(100)))
        .idle_timeout(Some(Duration::from_millis(400)))
        .build();
    let (addr, mut events) = start(server, Options::default(), behaviour).await;
    let mut client = silent_after(addr, "slow work").await;
    assert!(matches!(next_event(&mut events, WAIT).await, Event::Open));
    assert!(matches!(
        next_event(&mut events, WAIT).await,
        Event::Message(_)
    ));
    // The handler is still in on_message, yet the silent peer is dropped.
    let received = read_until_eof(&mut client, WAIT).await;
    assert!(
        received.windows(2).any(|w| w == [0x89, 0]),
        "pings went out while the handler was busy: {received:?}"
    );
    assert!(
        events.try_recv().is_err(),
        "nothing before the handler returns"
    );
    gate.add_permits(1);
    let seen = expect_close(&mut events, WAIT).await;
    assert!(
        matches!(&seen[..], [Event::Error(text), Event::Close(CloseCode::ABNORMAL)] if text.contains("sent nothing")),
        "on_error (idle) then on_close, after on_message returned: {seen:?}"
    );
}

#[tokio::test]
async fn pings_go_out_while_a_handler_is_busy_and_a_live_peer_stays() {
    let gate = Arc::new(Semaphore::new(0));
    let behaviour = Behaviour {
        gate: Some(gate.clone()),
        ..Behaviour::default()
    };
    let server = WebSocketServer::builder()
        .ping_interval(Some(Duration::from_millis(100)))
        .idle_timeout(Some(Duration::from_millis(400)))
        .build();
    let (addr, mut events) = start(server, Options::default(), behaviour).await;
    // A client that reads and answers every ping, as browsers do.
    let mut client = common::connect(addr, "/").await;
    common::send_text(&mut client, "slow work").await;
    assert!(matches!(next_event(&mut events, WAIT).await, Event::Open));
    assert!(matches!(
        next_event(&mut events, WAIT).await,
        Event::Message(_)
    ));
    let pings = Arc::new(AtomicUsize::new(0));
    let counted = pings.clone();
    let answering = tokio::spawn(async move {
        use futures_util::StreamExt;
        // tungstenite answers pings as it reads them.
        while let Some(Ok(message)) = client.next().await {
            if message.is_ping() {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Three idle timeouts long, with the handler busy all along.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        pings.load(Ordering::SeqCst) >= 5,
        "pings went out meanwhile"
    );
    assert!(events.try_recv().is_err(), "the live peer was not dropped");
    gate.add_permits(1);
    answering.abort();
}

#[tokio::test]
async fn the_close_timeout_runs_while_the_handler_is_busy() {
    let gate = Arc::new(Semaphore::new(0));
    let behaviour = Behaviour {
        gate: Some(gate.clone()),
        close_on_message: true,
        ..Behaviour::default()
    };
    let (addr, mut events) = start(only_the_close_timeout(), Options::default(), behaviour).await;
    // The client gets our close frame but never answers it.
    let mut client = silent_after(addr, "close, then slow work").await;
    assert!(matches!(next_event(&mut events, WAIT).await, Event::Open));
    assert!(matches!(
        next_event(&mut events, WAIT).await,
        Event::Message(_)
    ));
    let started = Instant::now();
    let received = read_until_eof(&mut client, WAIT).await;
    assert!(
        received.starts_with(&[0x88]),
        "our close frame came: {received:?}"
    );
    assert!(
        started.elapsed() < CLOSE_TIMEOUT + Duration::from_secs(3),
        "dropped within the close timeout: {:?}",
        started.elapsed()
    );
    gate.add_permits(1);
    let seen = expect_close(&mut events, WAIT).await;
    assert!(
        matches!(&seen[..], [Event::Error(text), Event::Close(CloseCode::NORMAL)] if text.contains("close handshake")),
        "on_error (close timeout) then on_close: {seen:?}"
    );
}

/// Counts its drops: a handler that is never called must still be let go.
struct Dropped(Arc<AtomicUsize>);

impl WebSocketHandler for Dropped {}

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn an_upgrade_whose_101_is_never_sent_leaks_neither_its_permit_nor_its_handler() {
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let server = WebSocketServer::builder()
        .max_connections(1)
        .close_timeout(Duration::from_millis(300))
        .build();
    let dropped = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (for_server, counter) = (server.clone(), dropped.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (server, counter) = (for_server.clone(), counter.clone());
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                // `/refuse`: the application takes the upgrade, then answers 200 instead.
                let refuse = req.uri().path() == "/refuse";
                let response = server
                    .try_upgrade(req, Dropped(counter.clone()))
                    .map(|response| response.map(|_| Full::new(bytes::Bytes::new())));
                let response = match response {
                    Ok(_) if refuse => hyper::Response::new(Full::new("no".into())),
                    Ok(upgrade) => upgrade,
                    Err(error) => error.to_response().map(|_| Full::new(bytes::Bytes::new())),
                };
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });

    // A keep-alive HTTP connection whose upgrade request got a 200: it stays open.
    let mut refused = TcpStream::connect(addr).await.expect("connect");
    refused
        .write_all(&common::raw_handshake("/refuse"))
        .await
        .expect("send");
    common::read_until_contains(&mut refused, b"\r\n\r\nno").await;

    // The permit comes back (within the close timeout), so a real client gets in.
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await;
        match attempt {
            Ok(_) => break,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the abandoned upgrade still holds the only permit: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dropped.load(Ordering::SeqCst) >= 1,
        "the handler of the abandoned upgrade was dropped"
    );
    drop(refused);
}

/// Reports the size of the headers its connection kept.
struct HeaderSize(mpsc::UnboundedSender<usize>);

impl WebSocketHandler for HeaderSize {
    async fn on_open(&mut self, conn: &Connection) {
        let kept = conn
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let _ = self.0.send(kept);
    }
}

#[tokio::test]
async fn a_connection_keeps_a_bounded_part_of_huge_request_headers() {
    let (sizes, mut kept) = mpsc::unbounded_channel();
    let addr = common::serve(WebSocketServer::new(), move |_| HeaderSize(sizes.clone())).await;
    // 60 headers of 4 KiB: within what hyper accepts, 240 KiB for the connection's life.
    let mut request = String::from_utf8(common::raw_handshake("/")).expect("ascii");
    request.truncate(request.len() - 2);
    for i in 0..60 {
        request += &format!("X-Padding-{i}: {}\r\n", "p".repeat(4000));
    }
    request += "\r\n";
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(request.as_bytes()).await.expect("send");
    common::read_until_contains(&mut client, b"101 Switching Protocols").await;
    let size = tokio::time::timeout(WAIT, kept.recv())
        .await
        .expect("on_open ran")
        .expect("server running");
    assert!(size <= 4096, "the connection kept {size} bytes of headers");
    assert!(size > 0, "the small headers are still there");
}

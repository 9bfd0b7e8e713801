//! A handler that takes long (a slow database, a streaming model call) while its client
//! keeps talking: the connection lives as long as the client answers pings, every message
//! is handled in order, and a close asked for meanwhile (by `close_all` or by the client)
//! ends in a clean close handshake, all over real sockets.

mod common;

use std::time::Duration;

use common::{connect, within, Client, WAIT};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::{
    CloseCode, CloseFrame, Connection, Error, Message, WebSocketHandler, WebSocketServer,
};

const PING: Duration = Duration::from_millis(100);
const IDLE: Duration = Duration::from_millis(300);
/// What the slow handler spends on a message: three idle timeouts.
const BUSY: Duration = Duration::from_millis(900);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq)]
enum Event {
    Open,
    /// `on_message` started on this text.
    Started(String),
    /// `on_message` returned from this text.
    Done(String),
    Error(String),
    Close(CloseCode),
}

/// Sleeps [`BUSY`] in `on_message` for every message whose text starts with `slow`, and
/// longer than the close timeout for those starting with `slowest`.
struct Slow {
    events: mpsc::UnboundedSender<Event>,
}

impl WebSocketHandler for Slow {
    async fn on_open(&mut self, _conn: &Connection) {
        let _ = self.events.send(Event::Open);
    }

    async fn on_message(&mut self, _conn: &Connection, message: Message) {
        let text = message.as_text().unwrap_or("binary").to_owned();
        let _ = self.events.send(Event::Started(text.clone()));
        if text.starts_with("slowest") {
            tokio::time::sleep(CLOSE_TIMEOUT + BUSY).await;
        } else if text.starts_with("slow") {
            tokio::time::sleep(BUSY).await;
        }
        let _ = self.events.send(Event::Done(text));
    }

    async fn on_error(&mut self, _conn: &Connection, error: &Error) {
        let _ = self.events.send(Event::Error(error.to_string()));
    }

    async fn on_close(&mut self, _conn: &Connection, frame: &CloseFrame) {
        let _ = self.events.send(Event::Close(frame.code));
    }
}

fn server() -> WebSocketServer {
    WebSocketServer::builder()
        .ping_interval(Some(PING))
        .idle_timeout(Some(IDLE))
        .close_timeout(CLOSE_TIMEOUT)
        .build()
}

async fn start(server: WebSocketServer) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (events, receiver) = mpsc::unbounded_channel();
    let addr = common::serve(server, move |_| Slow {
        events: events.clone(),
    })
    .await;
    (addr, receiver)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    within("a handler event", events.recv())
        .await
        .expect("the server runs")
}

/// Collects handler events until `on_close`; panics after [`WAIT`] with what it saw.
async fn until_close(events: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut seen = Vec::new();
    let collecting = async {
        while let Some(event) = events.recv().await {
            let last = matches!(event, Event::Close(_));
            seen.push(event);
            if last {
                return;
            }
        }
    };
    if tokio::time::timeout(WAIT, collecting).await.is_err() {
        panic!("no on_close within {WAIT:?}; seen {seen:?}");
    }
    seen
}

/// What the client saw, for the test to check.
#[derive(Debug)]
enum Seen {
    Ping,
    Close(Option<WsCloseFrame>),
    /// The stream ended cleanly (after the close handshake).
    End,
    /// The stream failed: a reset without a close handshake shows here.
    Failed(#[allow(dead_code)] String),
}

/// Keeps reading `read` (so tungstenite answers every ping, and the server's close) and
/// reports what arrives until the stream ends.
fn keep_reading(
    mut read: futures_util::stream::SplitStream<Client>,
) -> mpsc::UnboundedReceiver<Seen> {
    let (seen, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let report = match read.next().await {
                Some(Ok(WsMessage::Ping(_))) => Seen::Ping,
                Some(Ok(WsMessage::Close(frame))) => Seen::Close(frame),
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    let _ = seen.send(Seen::Failed(error.to_string()));
                    return;
                }
                None => {
                    let _ = seen.send(Seen::End);
                    return;
                }
            };
            let _ = seen.send(report);
        }
    });
    receiver
}

/// The close frame the client receives, skipping pings; then the stream must end cleanly.
async fn clean_close(seen: &mut mpsc::UnboundedReceiver<Seen>) -> u16 {
    let code = within("the server's close frame", async {
        loop {
            match seen.recv().await {
                Some(Seen::Ping) => continue,
                Some(Seen::Close(Some(frame))) => return u16::from(frame.code),
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await;
    match within("the end of the stream", seen.recv()).await {
        Some(Seen::End) => {}
        other => panic!("expected a clean end after the close handshake, got {other:?}"),
    }
    code
}

async fn send(write: &mut futures_util::stream::SplitSink<Client, WsMessage>, text: &str) {
    within("a client's send", write.send(WsMessage::text(text)))
        .await
        .expect("send");
}

/// Waits until the server has read `count` data messages in all.
async fn server_read(server: &WebSocketServer, count: u64) {
    within("the server to read the messages", async {
        while server.metrics().snapshot().messages_received < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn texts(seen: &[Event]) -> Vec<String> {
    seen.iter()
        .filter_map(|event| match event {
            Event::Started(text) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_live_client_outlives_a_handler_busy_for_three_idle_timeouts() {
    let server = server();
    let (addr, mut events) = start(server.clone()).await;
    let client = connect(addr, "/").await;
    let (mut write, read) = client.split();
    let mut seen = keep_reading(read);
    assert_eq!(next_event(&mut events).await, Event::Open);

    send(&mut write, "slow one").await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("slow one".into())
    );
    // One more message while the handler is busy: held for it, and then the client only
    // answers pings.
    send(&mut write, "slow two").await;
    for expected in [
        Event::Done("slow one".into()),
        Event::Started("slow two".into()),
        Event::Done("slow two".into()),
    ] {
        let event = next_event(&mut events).await;
        assert_eq!(event, expected, "the connection lives, messages in order");
    }
    assert!(events.try_recv().is_err(), "no error, no close");

    let started = Instant::now();
    let unfinished = within("close_all", server.close_all(WAIT)).await;
    assert_eq!(unfinished, 0);
    assert!(
        started.elapsed() < CLOSE_TIMEOUT,
        "a clean close, not the close timeout: took {:?}",
        started.elapsed()
    );
    assert_eq!(clean_close(&mut seen).await, 1001);
    let rest = until_close(&mut events).await;
    assert_eq!(rest, [Event::Close(CloseCode::GOING_AWAY)]);
}

#[tokio::test]
async fn a_chatty_client_of_a_busy_handler_is_kept_and_every_message_handled_in_order() {
    let server = server();
    let (addr, mut events) = start(server.clone()).await;
    let client = connect(addr, "/").await;
    let (mut write, read) = client.split();
    let _seen = keep_reading(read);
    assert_eq!(next_event(&mut events).await, Event::Open);

    send(&mut write, "slow 0").await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("slow 0".into())
    );
    // More than the server reads ahead: the rest waits in the socket.
    for i in 1..8 {
        send(&mut write, &format!("fast {i}")).await;
    }
    let mut handled = Vec::new();
    while handled.len() < 8 {
        match next_event(&mut events).await {
            Event::Done(text) => handled.push(text),
            Event::Started(_) => {}
            other => panic!("the connection should live; got {other:?} after {handled:?}"),
        }
    }
    let expected: Vec<String> = std::iter::once("slow 0".to_owned())
        .chain((1..8).map(|i| format!("fast {i}")))
        .collect();
    assert_eq!(handled, expected);
    assert_eq!(within("close_all", server.close_all(WAIT)).await, 0);
}

#[tokio::test]
async fn close_all_while_the_handler_is_busy_and_a_message_is_held_closes_cleanly() {
    let server = server();
    let (addr, mut events) = start(server.clone()).await;
    let client = connect(addr, "/").await;
    let (mut write, read) = client.split();
    let mut seen = keep_reading(read);
    assert_eq!(next_event(&mut events).await, Event::Open);

    send(&mut write, "slow one").await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("slow one".into())
    );
    send(&mut write, "fast two").await;
    server_read(&server, 2).await;

    let closing = tokio::spawn({
        let server = server.clone();
        async move { server.close_all(WAIT).await }
    });
    // The handshake completes while the handler is still busy with "slow one".
    let asked = Instant::now();
    assert_eq!(clean_close(&mut seen).await, 1001);
    assert!(
        asked.elapsed() < BUSY,
        "the close went out while the handler was busy: {:?}",
        asked.elapsed()
    );
    assert_eq!(within("close_all", closing).await.expect("close_all"), 0);
    let rest = until_close(&mut events).await;
    assert_eq!(
        rest,
        [
            Event::Done("slow one".into()),
            Event::Started("fast two".into()),
            Event::Done("fast two".into()),
            Event::Close(CloseCode::GOING_AWAY),
        ],
        "the held message is still handled, and no error"
    );
}

#[tokio::test]
async fn a_client_close_behind_a_held_message_is_answered_at_once() {
    let server = server();
    let (addr, mut events) = start(server.clone()).await;
    let client = connect(addr, "/").await;
    let (mut write, read) = client.split();
    let mut seen = keep_reading(read);
    assert_eq!(next_event(&mut events).await, Event::Open);

    send(&mut write, "slow one").await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("slow one".into())
    );
    send(&mut write, "fast two").await;
    let asked = Instant::now();
    within(
        "the client's close",
        write.send(WsMessage::Close(Some(WsCloseFrame {
            code: WsCloseCode::Normal,
            reason: "bye".into(),
        }))),
    )
    .await
    .expect("send the close");
    assert_eq!(clean_close(&mut seen).await, 1000);
    assert!(
        asked.elapsed() < BUSY,
        "answered while the handler was busy: {:?}",
        asked.elapsed()
    );
    let rest = until_close(&mut events).await;
    assert_eq!(
        rest,
        [
            Event::Done("slow one".into()),
            Event::Started("fast two".into()),
            Event::Done("fast two".into()),
            Event::Close(CloseCode::NORMAL),
        ],
        "what came before the close is handled, and no error"
    );
}

#[tokio::test]
async fn close_all_reaches_the_clients_answer_behind_more_than_the_server_reads_ahead() {
    let server = server();
    let (addr, mut events) = start(server.clone()).await;
    let client = connect(addr, "/").await;
    let (mut write, read) = client.split();
    let mut seen = keep_reading(read);
    assert_eq!(next_event(&mut events).await, Event::Open);

    send(&mut write, "slowest 0").await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Started("slowest 0".into())
    );
    for i in 1..8 {
        send(&mut write, &format!("fast {i}")).await;
    }
    // The server reads ahead what it may hold, then waits for the handler.
    server_read(&server, 3).await;

    let closing = tokio::spawn({
        let server = server.clone();
        async move { server.close_all(WAIT).await }
    });
    let asked = Instant::now();
    assert_eq!(clean_close(&mut seen).await, 1001);
    assert!(
        asked.elapsed() < BUSY,
        "the handshake completed while the handler was busy: {:?}",
        asked.elapsed()
    );
    assert_eq!(within("close_all", closing).await.expect("close_all"), 0);
    let rest = until_close(&mut events).await;
    assert!(
        !rest.iter().any(|event| matches!(event, Event::Error(_))),
        "a clean close: {rest:?}"
    );
    assert_eq!(rest.last(), Some(&Event::Close(CloseCode::GOING_AWAY)));
    // What was held is handled in order; what came behind it, once the close was under
    // way, is dropped.
    assert_eq!(texts(&rest), ["fast 1", "fast 2"], "{rest:?}");
}

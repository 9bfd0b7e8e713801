//! Dead peers: the server pings quiet connections and drops those that answer nothing for
//! the idle timeout, so half-open connections leave their collections by themselves.

mod common;

use std::time::Duration;

use common::{connect, within, WAIT};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::{
    CloseFrame, Connection, Error, WebSocketCollection, WebSocketHandler, WebSocketServer,
};

const PING: Duration = Duration::from_millis(100);
const IDLE: Duration = Duration::from_millis(300);

enum Event {
    Open(Connection),
    Error(Connection, String, bool),
    Close(Connection),
}

struct Member {
    room: WebSocketCollection,
    events: mpsc::UnboundedSender<Event>,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        let _ = self.events.send(Event::Open(conn.clone()));
    }
    async fn on_error(&mut self, conn: &Connection, error: &Error) {
        let idle = matches!(error, Error::IdleTimeout(timeout) if *timeout == IDLE);
        let _ = self
            .events
            .send(Event::Error(conn.clone(), error.to_string(), idle));
    }
    async fn on_close(&mut self, conn: &Connection, _frame: &CloseFrame) {
        let _ = self.events.send(Event::Close(conn.clone()));
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("a handler event in time")
        .expect("server running")
}

#[tokio::test]
async fn a_silent_peer_is_dropped_and_an_answering_one_is_kept() {
    let config = WebSocketServer::builder()
        .ping_interval(Some(PING))
        .idle_timeout(Some(IDLE))
        .build();
    let room = WebSocketCollection::new();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let server_room = room.clone();
    let addr = common::serve(config, move |_| Member {
        room: server_room.clone(),
        events: events_tx.clone(),
    })
    .await;

    // A live client: tungstenite answers every ping while we read.
    let mut live = connect(addr, "/").await;
    let Event::Open(live_conn) = next_event(&mut events).await else {
        panic!("expected on_open")
    };

    // A half-open client: it completes the handshake, then never reads nor answers.
    let mut silent = within("a TCP connection", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    within(
        "the handshake to be written",
        silent.write_all(&common::raw_handshake("/")),
    )
    .await
    .expect("handshake");
    let mut response = [0u8; 12];
    within("the handshake's response", silent.read_exact(&mut response))
        .await
        .expect("response");
    assert_eq!(&response, b"HTTP/1.1 101");
    let Event::Open(silent_conn) = next_event(&mut events).await else {
        panic!("expected on_open")
    };
    assert_eq!(room.len(), 2);

    // The live client is pinged again and again, well past the idle timeout...
    let mut pings = 0;
    let reading = async {
        while pings < 2 * (IDLE.as_millis() / PING.as_millis()) {
            // Read directly: `next_message` skips pings.
            match tokio::time::timeout(WAIT, live.next()).await {
                Ok(Some(Ok(WsMessage::Ping(_)))) => pings += 1,
                other => panic!("expected pings, got {other:?}"),
            }
        }
    };
    // ...while the silent one is reported and dropped.
    let dropped = async {
        match next_event(&mut events).await {
            Event::Error(conn, error, idle) => {
                assert_eq!(conn.id(), silent_conn.id(), "{error}");
                assert!(idle, "expected an idle timeout, got {error}");
            }
            _ => panic!("expected on_error for the silent client"),
        }
        match next_event(&mut events).await {
            Event::Close(conn) => assert_eq!(conn.id(), silent_conn.id()),
            _ => panic!("expected on_close for the silent client"),
        }
    };
    tokio::join!(reading, dropped);

    assert!(
        !room.contains(silent_conn.id()),
        "the half-open connection left the room"
    );
    assert!(room.contains(live_conn.id()), "the answering one stays");
    assert!(live_conn.is_open());
}

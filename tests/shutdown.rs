//! Graceful shutdown: what was broadcast just before still reaches everyone, then each
//! client gets 1001, and new upgrades are refused with 503.

mod common;

use std::time::Duration;

use common::{connect, next_message, within, WAIT};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::{Connection, WebSocketCollection, WebSocketHandler, WebSocketServer};

struct Member {
    room: WebSocketCollection,
    opened: mpsc::UnboundedSender<()>,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        let _ = self.opened.send(());
    }
}

#[tokio::test]
async fn a_broadcast_just_before_shutdown_reaches_everyone_then_1001() {
    let room = WebSocketCollection::new();
    let (opened, mut opened_rx) = mpsc::unbounded_channel();
    let server_room = room.clone();
    let server = WebSocketServer::new();
    let addr = common::serve(server.clone(), move |_| Member {
        room: server_room.clone(),
        opened: opened.clone(),
    })
    .await;

    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(addr, "/").await);
        tokio::time::timeout(WAIT, opened_rx.recv())
            .await
            .expect("opened in time")
            .expect("server running");
    }
    for i in 0..50 {
        assert_eq!(room.broadcast(format!("last words {i}")), clients.len());
    }
    let closing = {
        let server = server.clone();
        tokio::spawn(async move { server.close_all(Duration::from_secs(5)).await })
    };

    for client in &mut clients {
        for i in 0..50 {
            match next_message(client).await {
                Some(WsMessage::Text(text)) => assert_eq!(text.as_str(), format!("last words {i}")),
                other => panic!("expected message {i}, got {other:?}"),
            }
        }
        match next_message(client).await {
            Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    // Reading on sends the clients' answers to the close frames; then the streams end.
    for client in &mut clients {
        assert_eq!(next_message(client).await, None);
    }
    let unfinished = tokio::time::timeout(WAIT, closing)
        .await
        .expect("close_all returns")
        .expect("close_all task");
    assert_eq!(unfinished, 0, "every connection ended within the timeout");
    assert!(room.is_empty());
    assert!(server.is_shutting_down());

    // New upgrades are refused.
    let refused = within(
        "the answer to an upgrade during shutdown",
        tokio_tungstenite::connect_async(format!("ws://{addr}/")),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
}

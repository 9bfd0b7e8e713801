//! `examples/axum_chat`: the chat's handler mounted in an axum router, with the page served
//! by tower-http, end to end over real sockets.

#![cfg(feature = "axum")] // the example uses the WebSocketUpgrade extractor

mod common;

use common::{next_text, send_text, ChatServer};

#[tokio::test]
async fn the_chat_works_the_same_inside_axum() {
    let server = ChatServer::start_example("axum_chat", "127.0.0.1:0", &[]).await;

    let page = common::http_get(server.addr, "/chat.htm", "").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("text/html"),
        "tower-http sets the type: {page}"
    );
    assert!(page.contains("/api/Chat?username="));
    let root = common::http_get(server.addr, "/", "").await;
    assert!(root.starts_with("HTTP/1.1 303"), "{root}");
    let sources = common::http_get(server.addr, "/handler.rs", "").await;
    assert!(
        sources.starts_with("HTTP/1.1 404"),
        "only the page is served: {sources}"
    );
    // Not an upgrade: the extractor's 400, before the chat looks at the query.
    let plain = common::http_get(server.addr, "/api/Chat?username=ann", "").await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    assert!(plain.contains("Connection: upgrade"), "{plain}");
    // An upgrade without a name: the chat's own 400, saying why.
    let url = format!("ws://{}/api/Chat?username=", server.addr);
    match common::within("a refused handshake", tokio_tungstenite::connect_async(url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = response.body().clone().unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("missing username"), "{body}");
        }
        other => panic!("an upgrade without a username was not refused: {other:?}"),
    }

    let mut ann = common::connect(server.addr, "/api/Chat?username=ann").await;
    assert_eq!(next_text(&mut ann).await, "ann joined (1 online)");
    let mut bob = common::connect(server.addr, "/api/Chat?username=bob").await;
    assert_eq!(next_text(&mut bob).await, "bob joined (2 online)");
    assert_eq!(next_text(&mut ann).await, "bob joined (2 online)");
    send_text(&mut bob, "hello from axum").await;
    assert_eq!(next_text(&mut ann).await, "bob: hello from axum");
    assert_eq!(next_text(&mut bob).await, "bob: hello from axum");
    // Rooms work the same.
    send_text(&mut ann, "/join side").await;
    assert_eq!(next_text(&mut bob).await, "ann left (1 online)");
    assert_eq!(next_text(&mut ann).await, "ann joined (1 online)");
    assert_eq!(next_text(&mut ann).await, "You are in room side");

    // Ctrl-C: axum stops, and every WebSocket gets a goodbye.
    drop(bob);
    server.ctrl_c_expecting_goodbye(&mut ann).await;
}

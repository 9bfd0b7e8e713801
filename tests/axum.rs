//! The upgrade adapter inside an axum 0.8 router served by `axum::serve`.

mod common;

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures_util::SinkExt;
use http::{header, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::{Body, Connection, Message, WebSocketHandler, WebSocketServer};

use common::{within, WAIT};

/// Echoes every message back to its sender.
struct Echo;

impl WebSocketHandler for Echo {
    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = conn.send(message);
    }
}

async fn ws(State(server): State<WebSocketServer>, req: Request) -> http::Response<Body> {
    server.upgrade(req, Echo)
}

/// Serves a router with `/ws` on a free loopback port.
async fn serve_axum() -> SocketAddr {
    let router = Router::new()
        .route("/ws", any(ws))
        .with_state(WebSocketServer::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("axum serve");
    });
    addr
}

#[tokio::test]
async fn axum_route_upgrades_and_echoes_text_and_binary() {
    let addr = serve_axum().await;
    let mut client = common::connect(addr, "/ws").await;

    common::send_text(&mut client, "hello through axum").await;
    assert_eq!(common::next_text(&mut client).await, "hello through axum");

    let payload = vec![0u8, 1, 2, 3, 254, 255];
    timeout(WAIT, client.send(WsMessage::binary(payload.clone())))
        .await
        .expect("send timed out")
        .expect("send binary");
    match common::next_message(&mut client).await {
        Some(WsMessage::Binary(bytes)) => assert_eq!(bytes.as_ref(), payload.as_slice()),
        other => panic!("expected the binary echo, got {other:?}"),
    }

    // And a second text after the binary, to show the connection stays usable.
    common::send_text(&mut client, "still here").await;
    assert_eq!(common::next_text(&mut client).await, "still here");

    timeout(WAIT, client.close(None))
        .await
        .expect("close timed out")
        .expect("close");
}

#[tokio::test]
async fn plain_get_through_axum_is_400() {
    let addr = serve_axum().await;
    let stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .expect("client handshake");
    tokio::spawn(connection);

    let request = http::Request::get("/ws")
        .header(header::HOST, "localhost")
        .body(Empty::new())
        .expect("request");
    let response = timeout(WAIT, sender.send_request(request))
        .await
        .expect("response timed out")
        .expect("response");

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .expect("content type")
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = timeout(WAIT, response.into_body().collect())
        .await
        .expect("body timed out")
        .expect("body")
        .to_bytes();
    let body = std::str::from_utf8(&body).expect("UTF-8 body");
    assert!(body.contains("Connection"), "body {body:?}");

    // The same axum server still upgrades a real client afterwards.
    let mut client = common::connect(addr, "/ws").await;
    common::send_text(&mut client, "after the 400").await;
    assert_eq!(common::next_text(&mut client).await, "after the 400");
}

// ---- h2-listener: limits per address behind axum (issue 25) ----

/// With axum's `into_make_service_with_connect_info`, the peer's address is axum's
/// `ConnectInfo`: the limits per address read it (cargo feature `axum`).
#[cfg(feature = "axum")]
#[tokio::test]
async fn limits_per_address_read_axums_connect_info() {
    let server = WebSocketServer::builder()
        .max_connections_per_address(1)
        .build();
    let router = Router::new().route("/ws", any(ws)).with_state(server);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("axum serve");
    });
    let mut first = common::connect(addr, "/ws").await;
    let refused = within(
        "the second handshake",
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        Err(other) => panic!("the second handshake failed otherwise: {other}"),
        Ok((_, response)) => panic!(
            "the second connection from 127.0.0.1 was not refused: {}",
            response.status()
        ),
    }
    // The first is untouched.
    common::send_text(&mut first, "still here").await;
    assert_eq!(common::next_text(&mut first).await, "still here");
}

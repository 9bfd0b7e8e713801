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

/// An axum `Router` served by the crate's listener (a `ConnectionSlot`, as over TLS),
/// over HTTP/2: the WebSocket route answers an extended CONNECT, and the listener gives
/// the peer's address without `ConnectInfo`.
#[tokio::test]
async fn an_axum_router_is_served_by_a_connection_slot_over_http2() {
    use http::{Method, Version};
    use hyper_util::rt::TokioExecutor;
    use hyper_util::service::TowerToHyperService;

    let server = WebSocketServer::builder()
        .max_connections_per_address(1)
        .build();
    let router = Router::new()
        .route("/ws", any(ws))
        .with_state(server.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let slot = server.connection_slot().await;
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(slot.serve(stream, peer, Version::HTTP_2, service));
        }
    });

    let stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut send, connection) = within(
        "the HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let connect = || {
        let mut request = http::Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(format!("http://{addr}/ws"))
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .expect("request");
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        request
    };
    // The server's SETTINGS (which allow the extended CONNECT) may not have arrived yet.
    let mut response = None;
    for _ in 0..50 {
        within("ready", send.ready()).await.expect("ready");
        if let Ok(answer) = within("the CONNECT's answer", send.send_request(connect())).await {
            response = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let response = response.expect("the extended CONNECT was sent");
    assert_eq!(response.status(), StatusCode::OK);
    let mut ws = TokioIo::new(
        within("the stream", hyper::upgrade::on(response))
            .await
            .expect("upgraded"),
    );
    common::send_masked_text(&mut ws, "over h2 through axum").await;
    assert_eq!(
        common::read_frame_text(&mut ws).await,
        "over h2 through axum"
    );
    // The peer's address reached the limits per address: a second stream is refused.
    let refused = within("the second CONNECT's answer", send.send_request(connect()))
        .await
        .expect("an answer");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
}

// ---- the WebSocketUpgrade extractor (cargo feature axum) ----

/// Greets with the peer's address as the connection sees it, then echoes.
#[cfg(feature = "axum")]
struct Greeter;

#[cfg(feature = "axum")]
impl WebSocketHandler for Greeter {
    async fn on_open(&mut self, conn: &Connection) {
        let peer = conn.remote_addr().map(|addr| addr.to_string());
        let _ = conn.send(format!("peer {}", peer.unwrap_or_default()));
    }
    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = conn.send(message);
    }
}

/// A route that admits `?token=open-sesame` after an await, refuses others with 401.
#[cfg(feature = "axum")]
async fn guarded(upgrade: websocket_handler::WebSocketUpgrade) -> http::Response<Body> {
    tokio::task::yield_now().await; // a lookup would be here
    match upgrade.query_param("token") {
        Some(token) if token == "open-sesame" => upgrade.accept(Greeter),
        _ => upgrade.refuse(StatusCode::UNAUTHORIZED, "who are you?\n"),
    }
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn the_extractor_checks_the_handshake_and_the_route_admits_or_refuses() {
    let router = Router::new()
        .route("/ws", any(guarded))
        .with_state(WebSocketServer::builder().max_connections(1).build());
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

    // Not an upgrade: the extractor's rejection, the handshake error's 400.
    let plain = common::http_get(addr, "/ws?token=open-sesame", "").await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    assert!(plain.contains("Connection: upgrade"), "{plain}");

    // The route's own refusal, and it holds no connection (the limit is 1).
    for _ in 0..3 {
        match within(
            "a refused handshake",
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=guess")),
        )
        .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
                let body = response.body().clone().unwrap_or_default();
                assert_eq!(body, b"who are you?\n");
            }
            other => panic!("a wrong token was not refused with 401: {other:?}"),
        }
    }

    // Admitted: the peer's address came from ConnectInfo, with nothing inserted by hand.
    let mut client = common::connect(addr, "/ws?token=open-sesame").await;
    let greeting = common::next_text(&mut client).await;
    assert!(greeting.starts_with("peer 127.0.0.1:"), "{greeting:?}");
    common::send_text(&mut client, "through the extractor").await;
    assert_eq!(
        common::next_text(&mut client).await,
        "through the extractor"
    );
}

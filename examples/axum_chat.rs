//! The chat of `examples/chat`, mounted in an axum router: the same handler
//! (`examples/chat/handler.rs`), axum's routing and state, and tower-http's `ServeFile` for
//! the page.
//!
//! ```text
//! cargo run --example axum_chat                   # http://127.0.0.1:8080/chat.htm
//! cargo run --example axum_chat -- --addr 127.0.0.1:3000
//! ```
//!
//! With the crate's `axum` feature, [`WebSocketUpgrade`] is an extractor: it checks the
//! handshake and takes the peer's address from axum's `ConnectInfo`; the route then
//! accepts with a handler or answers something else.

#[path = "chat/handler.rs"]
mod handler;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use axum::Router;
use handler::ChatRooms;
use tower_http::services::ServeFile;
use websocket_handler::{WebSocketServer, WebSocketUpgrade};

/// What every request handler gets: the rooms and the WebSocket server.
#[derive(Clone)]
struct App {
    chat: ChatRooms,
    server: WebSocketServer,
}

/// The extractor finds the server in the state.
impl FromRef<App> for WebSocketServer {
    fn from_ref(app: &App) -> Self {
        app.server.clone()
    }
}

/// `/api/Chat?username=NAME&room=ROOM`: the WebSocket, or a 400 that says what is wrong.
async fn chat_socket(State(app): State<App>, upgrade: WebSocketUpgrade) -> Response {
    match app.chat.handler_for(upgrade.uri().query().unwrap_or("")) {
        Ok(handler) => upgrade.accept(handler).into_response(),
        Err(problem) => (StatusCode::BAD_REQUEST, problem).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = parse_addr()?;
    // Made once: every request's clone shares its connection limit and shutdown. Only
    // pages served by this server may connect.
    let server = WebSocketServer::builder().same_origin().build();
    let app = App {
        chat: ChatRooms::new(true),
        server: server.clone(),
    };
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat/chat.htm");
    let router = Router::new()
        .route("/", get(|| async { Redirect::to("/chat.htm") }))
        .route_service("/chat.htm", ServeFile::new(page))
        .route("/api/Chat", any(chat_socket))
        .with_state(app);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("Chat server (axum) running. Open http://{local}/chat.htm in a browser.");
    // With the peer's address, for `Connection::remote_addr` and the limits per address.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;

    // Ctrl-C: axum has stopped accepting; say goodbye (1001) to every WebSocket.
    let unfinished = server.close_all(Duration::from_secs(5)).await;
    eprintln!("Stopped ({unfinished} connections did not close in time).");
    Ok(())
}

fn parse_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:8080".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "-h" | "--help" => {
                println!("usage: axum_chat [--addr HOST:PORT]   (default 127.0.0.1:8080)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    addr.parse()
        .map_err(|error| format!("invalid --addr {addr:?}: {error}"))
}

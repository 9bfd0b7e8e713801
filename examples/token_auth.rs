//! Token authentication before the upgrade: `serve` hands every valid handshake to an async
//! admission step, which looks the token up (here in a key store that stands in for a
//! database or an identity service) and either accepts the connection with a handler that
//! knows who the user is, or answers 401 with `WWW-Authenticate`. A refused client never
//! becomes a connection: no handler, no slot of `max_connections`.
//!
//! ```text
//! cargo run --example token_auth
//! ```
//!
//! Then, in a browser's console (F12); browsers cannot set headers on a WebSocket, so the
//! token travels in the query (keep such URLs out of logs; a short-lived ticket is better):
//!
//! ```text
//! ws = new WebSocket("ws://127.0.0.1:3007/?token=ana-secret"); ws.onmessage = e => console.log(e.data)
//! // welcome, ana
//! new WebSocket("ws://127.0.0.1:3007/?token=guess")  // refused: 401
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use websocket_handler::http::{header, HeaderValue, Response, StatusCode};
use websocket_handler::{Body, Connection, Message, WebSocketCollection, WebSocketUpgrade};
use websocket_handler::{WebSocketHandler, WebSocketServer};

/// Who holds which token. A real server asks a database or checks a signed token; the
/// lookup is async either way, and the admission simply awaits it.
#[derive(Clone)]
struct KeyStore {
    users_by_token: Arc<tokio::sync::RwLock<HashMap<String, String>>>,
}

impl KeyStore {
    fn with_demo_users() -> Self {
        let users = [("ana-secret", "ana"), ("bob-secret", "bob")]
            .map(|(token, user)| (token.to_owned(), user.to_owned()));
        KeyStore {
            users_by_token: Arc::new(tokio::sync::RwLock::new(HashMap::from(users))),
        }
    }

    async fn user_of(&self, token: &str) -> Option<String> {
        self.users_by_token.read().await.get(token).cloned()
    }
}

/// A signed-in user's connection: the name comes from the key store, not from the client.
struct Member {
    user: String,
    room: WebSocketCollection,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        let _ = conn.send(format!("welcome, {}", self.user));
        self.room.add(conn.clone());
    }

    async fn on_message(&mut self, _conn: &Connection, message: Message) {
        if let Some(text) = message.as_text() {
            self.room.broadcast(format!("{}: {text}", self.user));
        }
    }
}

/// The admission: a token from `?token=` (or an `Authorization: Bearer` header, for
/// clients that can send one), looked up before anything is accepted.
async fn admit(
    upgrade: WebSocketUpgrade,
    keys: KeyStore,
    room: WebSocketCollection,
) -> Response<Body> {
    let bearer = upgrade
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = match bearer {
        Some(token) => Some(token),
        None => upgrade.query_param("token"),
    };
    let user = match token {
        Some(token) => keys.user_of(&token).await,
        None => None,
    };
    match user {
        Some(user) => upgrade.accept(Member { user, room }),
        None => {
            let mut refused = upgrade.refuse(StatusCode::UNAUTHORIZED, "a valid token is needed\n");
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            refused
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = addr_argument("token_auth", "127.0.0.1:3007")?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "Token-checked chat listening on ws://{}/?token=ana-secret",
        listener.local_addr()?
    );

    let keys = KeyStore::with_demo_users();
    let room = WebSocketCollection::new();
    WebSocketServer::new()
        .serve(listener, move |upgrade| {
            admit(upgrade, keys.clone(), room.clone())
        })
        .await?;
    Ok(())
}

/// `--addr HOST:PORT`, or `default`.
fn addr_argument(example: &str, default: &str) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = default.parse()?;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?.parse()?,
            _ => return Err(format!("usage: {example} [--addr HOST:PORT]").into()),
        }
    }
    Ok(addr)
}

//! The classic chat room: every message is broadcast to everyone as `NAME: message`, and
//! everyone sees who comes and goes as `NAME joined (N online)` and `NAME left (N online)`.
//!
//! ```text
//! cargo run --example chat                        # http://127.0.0.1:8080/chat.htm
//! cargo run --example chat -- --addr 0.0.0.0:3000
//! # one room across processes, through Redis (see README, "Scaling out"):
//! cargo run --example chat --features redis -- --addr 127.0.0.1:8081 --redis redis://127.0.0.1:6379
//! ```
//!
//! Routes: `/` leads to `/chat.htm` (the page), `/health` answers 200 when the server can
//! serve the whole room (503 while its Redis backplane is reconnecting), and
//! `/api/Chat?username=NAME` is the WebSocket. NAME is trimmed and must then be 1 to 32 characters of UTF-8 without control
//! characters; any other NAME is refused with a 400 that says what is wrong.
//!
//! With `--redis`, the join and leave notices count the users on this server only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use websocket_handler::{
    query_param, upgrade, CloseFrame, Config, Connection, Message, Shutdown, WebSocketCollection,
    WebSocketHandler,
};

/// How long a client may take to send its HTTP request (the WebSocket handshake).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const PAGE: &str = include_str!("chat.htm");

/// One chat user's connection.
struct Chat {
    username: String,
    room: WebSocketCollection,
    /// Whether `room.add` took this connection (it refuses one that already closed): only
    /// then is there a join, and so a leave, to announce.
    joined: bool,
    /// Whether to announce joins and leaves (`--no-notices` turns them off, for benchmarks
    /// against servers that have none).
    announce: bool,
}

#[async_trait]
impl WebSocketHandler for Chat {
    async fn on_open(&mut self, conn: &Connection) {
        self.joined = self.room.add(conn.clone());
        if self.joined && self.announce {
            // The count is the room itself, so it cannot drift from who is really there.
            let online = online(&self.room);
            self.room
                .broadcast(format!("{} joined ({online})", self.username));
        }
    }

    async fn on_close(&mut self, _conn: &Connection, _frame: &CloseFrame) {
        if self.joined && self.announce {
            // The connection has already left the room, so it is not counted.
            let online = online(&self.room);
            self.room
                .broadcast(format!("{} left ({online})", self.username));
        }
    }

    async fn on_message(&mut self, _conn: &Connection, message: Message) {
        if let Message::Text(text) = message {
            self.room.broadcast(format!("{}: {}", self.username, text));
        }
    }
}

/// `N online`, or with a backplane `N on this server`: membership is per process.
fn online(room: &WebSocketCollection) -> String {
    match room.topic() {
        None => format!("{} online", room.len()),
        Some(_) => format!("{} on this server", room.len()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        addr,
        announce,
        redis,
    } = parse_args()?;
    let (room, backplane) = open_room(redis.as_deref())?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("Chat server running. Open http://{local}/chat.htm in a browser.");

    let shutdown = Shutdown::new();
    // Only pages served by this server may connect: no other site can open the chat with
    // a visitor's browser.
    let config = Config::default().same_origin().shutdown(&shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tokio::signal::ctrl_c() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let room = room.clone();
        let config = config.clone();
        let backplane = backplane.clone();
        let service = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(peer);
            let response = route(req, &room, &config, announce, &backplane);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            // A client that opens a connection and never finishes its request is dropped.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                eprintln!("connection from {peer} failed: {error}");
            }
        });
    }

    // Ctrl-C: stop accepting, then say goodbye (1001) to everyone, after what is queued.
    eprintln!("Shutting down: closing {} connections.", room.len());
    let unfinished = shutdown.close_all(Duration::from_secs(5)).await;
    eprintln!("Stopped ({unfinished} connections did not close in time).");
    Ok(())
}

fn route(
    req: Request<Incoming>,
    room: &WebSocketCollection,
    config: &Config,
    announce: bool,
    backplane: &Backplane,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => match backplane.problem() {
            None => text(StatusCode::OK, "ok\n"),
            Some(problem) => text(StatusCode::SERVICE_UNAVAILABLE, problem),
        },
        (&Method::GET, "/") => {
            let mut response = text(StatusCode::FOUND, "See /chat.htm\n");
            response.headers_mut().insert(
                header::LOCATION,
                "/chat.htm".parse().expect("static header"),
            );
            response
        }
        (&Method::GET, "/chat.htm") => {
            let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/html; charset=utf-8".parse().expect("static header"),
            );
            response
        }
        (_, "/api/Chat") => match username(&req) {
            Ok(username) => {
                let chat = Chat {
                    username,
                    room: room.clone(),
                    joined: false,
                    announce,
                };
                upgrade(req, config, chat)
            }
            Err(problem) => text(StatusCode::BAD_REQUEST, problem),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "Not found. The chat is at /chat.htm\n",
        ),
    }
}

/// The room's link to other servers, if any.
#[derive(Clone, Default)]
struct Backplane {
    #[cfg(feature = "redis")]
    redis: Option<websocket_handler::backplane::RedisBackplane>,
}

impl Backplane {
    /// Why this server cannot reach the whole room now, if it cannot.
    fn problem(&self) -> Option<String> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            let state = redis.state();
            if state != websocket_handler::backplane::BackplaneState::Connected {
                return Some(format!("redis backplane: {state:?}\n"));
            }
        }
        None
    }
}

/// The chat room: local, or joined to the same room in other processes through Redis.
fn open_room(redis: Option<&str>) -> Result<(WebSocketCollection, Backplane), String> {
    let Some(url) = redis else {
        return Ok((WebSocketCollection::new(), Backplane::default()));
    };
    #[cfg(feature = "redis")]
    {
        use websocket_handler::backplane::{RedisBackplane, RedisConfig};
        let redis = RedisBackplane::new(RedisConfig::new(url)).map_err(|e| e.to_string())?;
        // Say when the room spans the servers and when it does not.
        let mut state = redis.state_changes();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let now = *state.borrow_and_update();
                eprintln!("Redis backplane: {now:?}");
            }
        });
        let room = WebSocketCollection::with_backplane("chat", redis.clone());
        Ok((room, Backplane { redis: Some(redis) }))
    }
    #[cfg(not(feature = "redis"))]
    Err(format!(
        "--redis {url}: this build has no Redis support; \
         run with `cargo run --example chat --features redis -- --redis {url}`"
    ))
}

/// Longest accepted username, in characters (not bytes).
const MAX_USERNAME_CHARS: usize = 32;

/// The `username` query parameter without surrounding whitespace, or what is wrong with it.
fn username(req: &Request<Incoming>) -> Result<String, String> {
    let name = match query_param(req.uri().query().unwrap_or(""), "username") {
        Ok(Some(name)) => name,
        Ok(None) => String::new(),
        Err(_) => return Err("invalid username: it must be valid UTF-8\n".into()),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err("missing username: connect to /api/Chat?username=NAME\n".into());
    }
    if name.chars().count() > MAX_USERNAME_CHARS {
        return Err(format!(
            "username too long: at most {MAX_USERNAME_CHARS} characters\n"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("invalid username: control characters are not allowed\n".into());
    }
    Ok(name.to_owned())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    response
}

/// The command line.
struct Args {
    addr: SocketAddr,
    announce: bool,
    redis: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut announce = true;
    let mut redis = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "--no-notices" => announce = false,
            "--redis" => redis = Some(args.next().ok_or("--redis needs a URL")?),
            "-h" | "--help" => {
                println!(
                    "usage: chat [--addr HOST:PORT] [--no-notices] [--redis URL]\n  \
                     --addr        where to listen (default 127.0.0.1:8080)\n  \
                     --no-notices  do not announce joins and leaves\n  \
                     --redis URL   share the room with other servers through Redis\n                \
                     (redis://127.0.0.1:6379; needs --features redis)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    let addr = addr
        .parse()
        .map_err(|error| format!("invalid --addr {addr:?}: {error}"))?;
    Ok(Args {
        addr,
        announce,
        redis,
    })
}

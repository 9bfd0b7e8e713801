//! The classic chat, with rooms: every message goes to everyone in the sender's room as
//! `NAME: message`, and the room sees who comes and goes as `NAME joined (N online)` and
//! `NAME left (N online)`. The handler is in `handler.rs`, shared with the axum version
//! (`examples/axum_chat.rs`).
//!
//! ```text
//! cargo run --example chat                        # http://127.0.0.1:8080/chat.htm
//! cargo run --example chat -- --addr 0.0.0.0:3000
//! # HTTPS, HTTP/2 and HTTP/1.1 on one port (see README, "TLS and HTTP/2"):
//! cargo run --example chat --features tls -- --tls-cert cert.pem --tls-key key.pem
//! # rooms across processes, through Redis (see README, "Scaling out"):
//! cargo run --example chat --features redis -- --addr 127.0.0.1:8081 --redis redis://127.0.0.1:6379
//! # the same through Redis Sentinel, following failovers (scripts/redis-sentinel.sh starts one):
//! cargo run --example chat --features redis -- --redis-sentinel redis://127.0.0.1:26010,redis://127.0.0.1:26011 --redis-master mymaster
//! # on a Redis Cluster (scripts/redis-cluster.sh starts one):
//! cargo run --example chat --features redis -- --redis-cluster redis://127.0.0.1:27000,redis://127.0.0.1:27001
//! # through NATS JetStream (scripts/nats-cluster.sh starts one server, or a cluster of 3):
//! cargo run --example chat --features nats -- --nats nats://127.0.0.1:4222
//! cargo run --example chat --features nats -- --nats nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 --nats-replicas 3
//! ```
//!
//! `--redis` shares the rooms losslessly (a Redis stream per room): every server delivers
//! every message once, in one order, through Redis outages, and a page can resume on any
//! server. `--redis-pubsub` uses plain pub/sub instead: cheaper, but what is published
//! while a server is not subscribed is lost to it. `--nats` shares them through a NATS
//! JetStream stream per topic, as losslessly, and with `--nats-replicas 3` on a cluster of
//! three through the loss of any one NATS server, positions unchanged.
//!
//! Routes:
//! - `/` leads to `/chat.htm`, the page;
//! - `/api/Chat?username=NAME&room=ROOM` is the WebSocket. NAME is trimmed and must then be
//!   1 to 32 characters of UTF-8 without control characters; ROOM (default `lobby`) 1 to 32
//!   letters, digits, `-`, `_` or `.`. Anything else is refused with a 400 that says why.
//!   In the chat, `/join ROOM` changes rooms and `/msg NAME text` writes to one user;
//! - `/metrics`: the server's counters in the Prometheus text format;
//! - `/health` answers 200 when the server can serve the whole chat (503 while its Redis
//!   or NATS backplane cannot publish: reconnecting, or refused writes for now).
//!
//! With a backplane, the join and leave notices count the users on this server only.

mod handler;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use handler::ChatRooms;
use http::{header, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use websocket_handler::{Body, ConnectionSlot, Metrics, WebSocketServer};

/// The TLS settings of `--tls-cert` and `--tls-key`: HTTPS, with HTTP/2 and HTTP/1.1 chosen
/// by ALPN on one port (`ConnectionSlot::serve_tls`).
#[cfg(feature = "tls")]
type Tls = websocket_handler::TlsConfig;
/// Without the `tls` feature there is no TLS: `load_tls` refuses the flags.
#[cfg(not(feature = "tls"))]
enum Tls {}

#[cfg(feature = "tls")]
fn load_tls(cert: &Path, key: &Path) -> Result<Tls, Box<dyn std::error::Error>> {
    // The error names the file and what was wrong with it.
    websocket_handler::TlsConfig::from_pem_files(cert, key)
        .map_err(|error| error.to_string().into())
}

#[cfg(not(feature = "tls"))]
fn load_tls(cert: &Path, key: &Path) -> Result<Tls, Box<dyn std::error::Error>> {
    Err(format!(
        "--tls-cert {}: this build has no TLS support; run with `cargo run --example chat \
         --features tls -- --tls-cert {} --tls-key {}`",
        cert.display(),
        cert.display(),
        key.display()
    )
    .into())
}

const PAGE: &str = include_str!("chat.htm");

/// WebSockets opened over HTTP/1.1 and over HTTP/2, for `/metrics`.
static UPGRADES_HTTP1: AtomicU64 = AtomicU64::new(0);
static UPGRADES_HTTP2: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        addr,
        announce,
        redis,
        lossless,
        nats,
        trim,
        tls,
    } = parse_args()?;
    // The crate's warnings (a panicking handler, a lost Redis connection) go to stderr.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let (chat, backplane) = match nats {
        Some(nats) => open_nats_rooms(&nats, announce)?,
        None => open_rooms(redis.as_ref(), lossless, announce)?,
    };
    let tls = match tls {
        Some((cert, key)) => Some(load_tls(&cert, &key)?),
        None => None,
    };
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("Chat server running. Open {scheme}://{local}/chat.htm in a browser.");

    // Made once, shared by every connection (its clones share its limits and shutdown).
    // Only pages served by this server may connect: no other site can open the chat with
    // a visitor's browser.
    // The handler takes what it needs (the query) when it is made: no connection keeps its
    // request's headers, which would cost each some 130 bytes for nothing.
    let server = WebSocketServer::builder()
        .same_origin()
        .kept_header_bytes(0)
        // Browsers offer permessage-deflate: a broadcast is compressed once for all of them.
        .permessage_deflate(true)
        .trim_memory(trim)
        .build();
    loop {
        // At most `max_pending_connections` (1,024) connections between accept and their
        // first WebSocket: past that, new ones wait in the kernel's backlog.
        let accepted = tokio::select! {
            accepted = accept(&server, &listener) => accepted,
            _ = tokio::signal::ctrl_c() => break,
        };
        let (slot, stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                // Out of descriptors, say: not to spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let chat = chat.clone();
        let router = server.clone();
        let backplane = backplane.clone();
        // The listener puts the peer's address in each request's extensions.
        let service = service_fn(move |req: Request<Incoming>| {
            let response = route(req, &chat, &router, &backplane);
            async move { Ok::<_, Infallible>(response) }
        });
        match &tls {
            // The TLS handshake within the server's handshake timeout, then HTTP/2 if the
            // client chose it by ALPN (WebSockets as extended CONNECTs), else HTTP/1.1.
            #[cfg(feature = "tls")]
            Some(tls) => {
                let served = slot.serve_tls(stream, peer, tls, service);
                tokio::spawn(async move {
                    if let Err(error) = served.await {
                        eprintln!("connection from {peer} failed: {error}");
                    }
                });
            }
            #[cfg(not(feature = "tls"))]
            Some(no_tls) => match *no_tls {},
            // Plain HTTP: HTTP/1.1, the connection's future right in the task, as small as
            // it can be (a task per connection being handshaken, and what it leaves behind
            // in the heap, counts in memory per connection).
            None => {
                tokio::spawn(async move {
                    let served = slot.serve(stream, peer, Version::HTTP_11, service).await;
                    if let Err(error) = served {
                        eprintln!("connection from {peer} failed: {error}");
                    }
                });
            }
        }
    }

    // Ctrl-C: stop accepting, then say goodbye (1001) to everyone, after what is queued.
    let open = server.metrics().snapshot().connections_open();
    eprintln!("Shutting down: closing {open} connections.");
    let unfinished = server.close_all(Duration::from_secs(5)).await;
    eprintln!("Stopped ({unfinished} connections did not close in time).");
    Ok(())
}

/// The next connection, once there is room for it.
async fn accept(
    server: &WebSocketServer,
    listener: &TcpListener,
) -> std::io::Result<(ConnectionSlot, tokio::net::TcpStream, SocketAddr)> {
    let slot = server.connection_slot().await;
    let (stream, peer) = listener.accept().await?;
    Ok((slot, stream, peer))
}

fn route(
    req: Request<Incoming>,
    chat: &ChatRooms,
    server: &WebSocketServer,
    backplane: &Backplane,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => match backplane.problem() {
            None => text(StatusCode::OK, "ok\n"),
            Some(problem) => text(StatusCode::SERVICE_UNAVAILABLE, problem),
        },
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, prometheus_text(server.metrics(), chat));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8"
                    .parse()
                    .expect("static header"),
            );
            response
        }
        (&Method::GET, "/") => {
            let mut response = text(StatusCode::FOUND, "See /chat.htm\n");
            response.headers_mut().insert(
                header::LOCATION,
                "/chat.htm".parse().expect("static header"),
            );
            response
        }
        (&Method::GET, "/chat.htm") => {
            let mut response = Response::new(Body::from(PAGE));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/html; charset=utf-8".parse().expect("static header"),
            );
            response
        }
        (_, "/api/Chat") => match chat.handler_for(req.uri().query().unwrap_or("")) {
            Ok(handler) => {
                let http2 = req.version() == Version::HTTP_2;
                let response = server.upgrade(req, handler);
                // 101 over HTTP/1.1, 200 over HTTP/2 (RFC 8441).
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    UPGRADES_HTTP1.fetch_add(1, Ordering::Relaxed);
                } else if http2 && response.status() == StatusCode::OK {
                    UPGRADES_HTTP2.fetch_add(1, Ordering::Relaxed);
                }
                response
            }
            Err(problem) => text(StatusCode::BAD_REQUEST, problem),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "Not found. The chat is at /chat.htm\n",
        ),
    }
}

/// The crate's counters, and the chat's own, in the Prometheus text format.
fn prometheus_text(metrics: &Metrics, chat: &ChatRooms) -> String {
    let now = metrics.snapshot();
    let mut registry = Registry::with_prefix("websocket");
    let counters = [
        (
            "connections_opened",
            "WebSocket connections upgraded",
            now.connections_opened,
        ),
        (
            "messages_received",
            "Data messages received",
            now.messages_received,
        ),
        (
            "received_bytes",
            "Payload bytes received",
            now.bytes_received,
        ),
        (
            "messages_sent",
            "Data messages written to sockets",
            now.messages_sent,
        ),
        (
            "sent_bytes",
            "Payload bytes written to sockets",
            now.bytes_sent,
        ),
        (
            "messages_dropped",
            "Messages not sent because the client was too slow",
            now.messages_dropped,
        ),
        (
            "slow_consumer_disconnects",
            "Connections closed for being too slow",
            now.slow_consumer_disconnects,
        ),
    ];
    for (name, help, value) in counters {
        registry.register(name, help, ConstCounter::new(value));
    }
    registry.register(
        "connections_open",
        "WebSocket connections open now",
        ConstGauge::new(now.connections_open() as i64),
    );
    let closes = Family::<Vec<(String, String)>, Counter>::default();
    for (code, count) in &now.closes {
        closes
            .get_or_create(&vec![("code".to_owned(), code.to_string())])
            .inc_by(*count);
    }
    registry.register("closes", "Connections ended, by close code", closes);
    let upgrades = Family::<Vec<(String, String)>, Counter>::default();
    for (http, count) in [("1.1", &UPGRADES_HTTP1), ("2", &UPGRADES_HTTP2)] {
        upgrades
            .get_or_create(&vec![("http".to_owned(), http.to_owned())])
            .inc_by(count.load(Ordering::Relaxed));
    }
    registry.register(
        "chat_upgrades",
        "WebSockets opened, by HTTP version (an HTTP/2 one is an extended CONNECT)",
        upgrades,
    );
    registry.register(
        "chat_rooms",
        "Chat rooms with members on this server",
        ConstGauge::new(chat.rooms.len() as i64),
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// The room's link to other servers, if any.
#[derive(Clone, Default)]
struct Backplane {
    #[cfg(feature = "redis")]
    redis: Option<websocket_handler::backplane::RedisBackplane>,
    #[cfg(feature = "nats")]
    nats: Option<websocket_handler::backplane::NatsBackplane>,
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
        #[cfg(feature = "nats")]
        if let Some(nats) = &self.nats {
            let state = nats.state();
            if state != websocket_handler::backplane::BackplaneState::Connected {
                return Some(format!("nats backplane: {state:?}\n"));
            }
        }
        None
    }
}

/// The chat's rooms: local, or shared with other processes through Redis.
fn open_rooms(
    redis: Option<&RedisAt>,
    lossless: bool,
    announce: bool,
) -> Result<(ChatRooms, Backplane), String> {
    let Some(at) = redis else {
        return Ok((ChatRooms::new(announce), Backplane::default()));
    };
    #[cfg(feature = "redis")]
    {
        use websocket_handler::backplane::{RedisBackplane, RedisBuilder};
        let builder = match at {
            RedisAt::Url(url) => RedisBackplane::builder(url),
            RedisAt::Sentinel { sentinels, master } => RedisBuilder::sentinel(sentinels, master),
            RedisAt::Cluster(nodes) => RedisBuilder::cluster(nodes),
        };
        let redis = builder
            .lossless(lossless)
            .build()
            .map_err(|e| e.to_string())?;
        // Say when the rooms span the servers and when they do not.
        let mut state = redis.state_changes();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let now = *state.borrow_and_update();
                eprintln!("Redis backplane: {now:?}");
            }
        });
        let chat = ChatRooms::with_backplane(redis.clone(), announce);
        // The other backplane's field is there only with its feature.
        #[allow(clippy::needless_update)]
        let backplane = Backplane {
            redis: Some(redis),
            ..Backplane::default()
        };
        Ok((chat, backplane))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (announce, lossless);
        let flag = match at {
            RedisAt::Url(url) => format!("--redis {url}"),
            RedisAt::Sentinel { sentinels, master } => {
                format!(
                    "--redis-sentinel {} --redis-master {master}",
                    sentinels.join(",")
                )
            }
            RedisAt::Cluster(nodes) => format!("--redis-cluster {}", nodes.join(",")),
        };
        Err(format!(
            "{flag}: this build has no Redis support; \
             run with `cargo run --example chat --features redis -- {flag}`"
        ))
    }
}

/// The chat's rooms shared with other processes through NATS JetStream.
fn open_nats_rooms(nats: &NatsAt, announce: bool) -> Result<(ChatRooms, Backplane), String> {
    #[cfg(feature = "nats")]
    {
        use websocket_handler::backplane::NatsBackplane;
        let nats = NatsBackplane::builder(&nats.servers)
            .replicas(nats.replicas)
            .build()
            .map_err(|e| e.to_string())?;
        let mut state = nats.state_changes();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let now = *state.borrow_and_update();
                eprintln!("NATS backplane: {now:?}");
            }
        });
        let chat = ChatRooms::with_backplane(nats.clone(), announce);
        // The other backplane's field is there only with its feature.
        #[allow(clippy::needless_update)]
        let backplane = Backplane {
            nats: Some(nats),
            ..Backplane::default()
        };
        Ok((chat, backplane))
    }
    #[cfg(not(feature = "nats"))]
    {
        let _ = announce;
        let flag = format!("--nats {} --nats-replicas {}", nats.servers, nats.replicas);
        Err(format!(
            "{flag}: this build has no NATS support; \
             run with `cargo run --example chat --features nats -- {flag}`"
        ))
    }
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
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
    /// `--tls-cert` and `--tls-key`.
    tls: Option<(PathBuf, PathBuf)>,
    announce: bool,
    redis: Option<RedisAt>,
    /// `--redis` (streams) rather than `--redis-pubsub`.
    lossless: bool,
    nats: Option<NatsAt>,
    trim: bool,
}

/// Where the NATS backplane is: `--nats URL[,URL...]` and `--nats-replicas N`.
struct NatsAt {
    servers: String,
    replicas: usize,
}

/// Where the Redis backplane is.
enum RedisAt {
    /// `--redis URL` or `--redis-pubsub URL`.
    Url(String),
    /// `--redis-sentinel URL[,URL...] --redis-master NAME`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
    /// `--redis-cluster URL[,URL...]`: some nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut announce = true;
    let mut redis = None;
    let (mut sentinels, mut master) = (None, None);
    let mut cluster = None;
    let mut lossless = true;
    let (mut nats, mut nats_replicas) = (None, None);
    let mut trim = true;
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "--no-notices" => announce = false,
            "--redis" => redis = Some(args.next().ok_or("--redis needs a URL")?),
            "--redis-pubsub" => {
                redis = Some(args.next().ok_or("--redis-pubsub needs a URL")?);
                lossless = false;
            }
            "--redis-sentinel" => {
                let list = args.next().ok_or("--redis-sentinel needs URL[,URL...]")?;
                sentinels = Some(list.split(',').map(str::to_owned).collect::<Vec<_>>());
            }
            "--redis-master" => master = Some(args.next().ok_or("--redis-master needs a NAME")?),
            "--redis-cluster" => {
                let list = args.next().ok_or("--redis-cluster needs URL[,URL...]")?;
                cluster = Some(list.split(',').map(str::to_owned).collect::<Vec<_>>());
            }
            "--nats" => nats = Some(args.next().ok_or("--nats needs URL[,URL...]")?),
            "--nats-replicas" => {
                let n = args.next().ok_or("--nats-replicas needs a number")?;
                let n: usize = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=5).contains(n))
                    .ok_or(format!("--nats-replicas {n:?}: a number from 1 to 5"))?;
                nats_replicas = Some(n);
            }
            "--no-trim" => trim = false,
            "--tls-cert" => {
                cert = Some(PathBuf::from(args.next().ok_or("--tls-cert needs a FILE")?))
            }
            "--tls-key" => key = Some(PathBuf::from(args.next().ok_or("--tls-key needs a FILE")?)),
            "-h" | "--help" => {
                println!(
                    "usage: chat [--addr HOST:PORT] [--no-notices] [--no-trim]\n            \
                     [--redis URL | --redis-pubsub URL |\n             \
                     --redis-sentinel URL[,URL...] --redis-master NAME |\n             \
                     --redis-cluster URL[,URL...] |\n             \
                     --nats URL[,URL...] [--nats-replicas N]]\n            \
                     [--tls-cert FILE --tls-key FILE]\n  \
                     --addr        where to listen (default 127.0.0.1:8080)\n  \
                     --tls-cert FILE, --tls-key FILE  serve HTTPS (PEM files), HTTP/2 and\n                \
                     HTTP/1.1 on one port, WebSockets over either (needs --features tls)\n  \
                     --no-notices  do not announce joins and leaves\n  \
                     --no-trim     keep memory freed after a storm in the allocator\n                \
                     (to measure what trimming gives back)\n  \
                     --redis URL   share the rooms with other servers through Redis, losslessly\n                \
                     (redis://127.0.0.1:6379; needs --features redis)\n  \
                     --redis-pubsub URL  the same through plain pub/sub: cheaper, but a server\n                \
                     that is not subscribed (Redis restarting) misses messages\n  \
                     --redis-sentinel URL[,URL...]  losslessly, through the primary that these\n                \
                     Redis Sentinels name (redis://127.0.0.1:26379,redis://...), following\n                \
                     failovers; with --redis-master NAME, the master name they watch\n  \
                     --redis-cluster URL[,URL...]  losslessly, on the Redis Cluster these nodes\n                \
                     belong to (redis://127.0.0.1:7000,redis://...), each topic on the\n                \
                     primary of its hash slot\n  \
                     --nats URL[,URL...]  share the rooms through NATS JetStream, losslessly\n                \
                     (nats://127.0.0.1:4222, or a cluster's servers; needs --features nats)\n  \
                     --nats-replicas N  servers holding each room stream, 1 to 5 (default 1;\n                \
                     3 on a cluster of 3 keeps the rooms through the loss of any one)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    let addr = addr
        .parse()
        .map_err(|error| format!("invalid --addr {addr:?}: {error}"))?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let redis = match (redis, sentinels, master, cluster) {
        (Some(url), None, None, None) => Some(RedisAt::Url(url)),
        (None, Some(sentinels), Some(master), None) => {
            Some(RedisAt::Sentinel { sentinels, master })
        }
        (None, None, None, Some(nodes)) => Some(RedisAt::Cluster(nodes)),
        (None, None, None, None) => None,
        (None, Some(_), None, None) | (None, None, Some(_), None) => {
            return Err("--redis-sentinel and --redis-master go together".into())
        }
        _ => {
            return Err(
                "--redis (or --redis-pubsub), --redis-sentinel and --redis-cluster exclude \
                 each other"
                    .into(),
            )
        }
    };
    let nats = match (nats, nats_replicas) {
        (Some(_), _) if redis.is_some() => {
            return Err("--nats and the --redis options exclude each other".into())
        }
        (Some(servers), replicas) => Some(NatsAt {
            servers,
            replicas: replicas.unwrap_or(1),
        }),
        (None, Some(_)) => return Err("--nats-replicas goes with --nats".into()),
        (None, None) => None,
    };
    Ok(Args {
        addr,
        tls,
        announce,
        redis,
        lossless,
        nats,
        trim,
    })
}

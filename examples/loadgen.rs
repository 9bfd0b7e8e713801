//! Load generator for servers speaking the "chat protocol": a WebSocket at
//! `/api/Chat?username=NAME` where every text message a client sends is broadcast to
//! every connected client (sender included) as `NAME: <message>`; with `--rooms`, to every
//! client of the sender's room (the chat example's `/join ROOM`).
//!
//! It is built to cost much less per delivery than the server it measures (hand-written
//! handshake and frame parser, one small read buffer per client, two runtime workers), so
//! that on a shared machine the numbers describe the server.
//!
//! ```text
//! cargo run --release --example chat -- --addr 127.0.0.1:8080 &
//! # closed loop: the most deliveries/s the server sustains, 1000 clients, 10 of them sending
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:8080/api/Chat \
//!     --clients 1000 --senders 10 --duration 10 --server-pid $!
//! # open loop: latency under 1000 broadcasts/s (1M deliveries/s offered)
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:8080/api/Chat --rate 1000
//! # server memory per idle connection
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:8080/api/Chat \
//!     --idle --clients 10000 --server-pid $!
//! # over TLS, each client a stream of an HTTP/2 connection (100 per connection)
//! cargo run --release --example loadgen -- --url wss://localhost:8443/api/Chat \
//!     --ca cert.pem --http2 --streams 100 --server-pid $!
//! # several servers sharing one room (e.g. through Redis): client i connects to URL i % n
//! cargo run --release --example loadgen -- \
//!     --url ws://127.0.0.1:8081/api/Chat,ws://127.0.0.1:8082/api/Chat --server-pid $A,$B
//! # 100 rooms of 10 clients, one sender in each
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:8080/api/Chat \
//!     --clients 1000 --rooms 100 --senders 100
//! # idle clients from 127.0.0.2-5 driven from stdin (bench/scale.py): `send 1` makes
//! # client 0 send a probe, `wait 1 5000` answers once every client here has it
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:8080/api/Chat \
//!     --idle --control --clients 10000 --first-id 10000 --source-addrs 4
//! ```
//!
//! Sender `s` sends `<s> <seq> <send_time_ns> ` padded with `x` to `--size` bytes. Every
//! client parses what follows `: ` in each broadcast, records the latency and checks the
//! sequence per sender. A progress line and a summary go to stderr, exactly one JSON line to
//! stdout. The exit code is non-zero if a client failed to connect or was disconnected.
//!
//! With several URLs, clients (senders included, as they are clients 0..S) are spread
//! round-robin over them, RSS and CPU are summed over all `--server-pid`s, and the JSON line
//! also gives the latency of deliveries through the sender's own server and through another.
//!
//! With `--rooms R` (R > 1), client `i` sends `/join r<i % R>` right after connecting and
//! waits for the chat's `You are in room r<i % R>` before the run starts; sender `s` is
//! client `s`, so in room `s % R`, and there must be a sender in every room (`--senders` at
//! least R). All accounting is per room: a broadcast is expected at the live clients of its
//! room only (deliveries, `lost`, the closed-loop window), a message from another room's
//! sender is counted in `wrong_room`, not delivered. Client `i` then connects to URL
//! `(i % R + i / R) % n` (which is `i % n` with one room) so that every room's clients, and
//! the senders, are spread over the servers: with `i % n` and n dividing R, a room's clients
//! would all be on one server. With one room (the default) no `/join` is sent: every client
//! stays in the server's default room, as servers without rooms need.
//!
//! With `--signalr`, the URL is a SignalR hub's (`examples/signalr_chat`'s
//! `ws://127.0.0.1:5000/hubs/chat`) and the clients speak its JSON hub protocol as the
//! official clients do: each negotiates (`POST {hub}/negotiate?negotiateVersion=1`, on the
//! connection it then upgrades), opens the WebSocket with its token, does the handshake and
//! calls `JoinGroup("bench")`; a sender invokes `SendToGroup("bench", "u<s>", text)` with no
//! invocation id (the client's `send`: no answer), and every member gets
//! `ReceiveMessage("u<s>", text)`, the same text as in the chat protocol.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const USAGE: &str = "usage: loadgen --url ws://127.0.0.1:8080/api/Chat[,ws://...] [options]
  --url URL[,URL...]   server(s) to load; client i connects to URL i % n (see --rooms)
  --clients N          clients to connect (default 1000)
  --senders S          clients 0..S also send (default 10)
  --rate R             broadcasts/s, all senders together; 0 = closed loop (default 0)
  --window W           closed loop: broadcasts in flight per sender (default 8)
  --size BYTES         message length, padded, at least 32 (default 64)
  --rooms R            client i joins room r<i % R> (sends `/join r<i % R>`, waits for
                       `You are in room r<i % R>`) before the run; sender s is in room s % R,
                       so --senders must be at least R (but with --idle); a broadcast is
                       expected at its room's clients only; client i connects to URL
                       (i % R + i / R) % n to spread each room over the servers. Default 1:
                       no /join, everyone in the server's default room (not with --signalr)
  --duration SECS      measured phase (default 10)
  --warmup SECS        unmeasured phase before it (default 2)
  --connect-batch B    clients connected concurrently (default 100)
  --server-pid PID[,PID...]
                       read the servers' RSS and CPU time from /proc (summed)
  --idle               connect, measure server RSS, hold for --duration, send nothing
  --deflate            offer permessage-deflate (as Chrome does) and inflate what comes
                       compressed; the JSON line counts the bytes received on the wire
  --json               pad messages with JSON-like chat text, not `x`s (for compression)
  --ca FILE            for wss:// URLs: trust the PEM certificate(s) in FILE
  --http2              open each WebSocket as a stream of an HTTP/2 connection (RFC 8441
                       extended CONNECT; over TLS by ALPN for wss://, prior knowledge for
                       ws://), --streams per connection
  --streams M          with --http2: WebSockets per HTTP/2 connection (default 100)
  --signalr            the URL is a SignalR hub: negotiate, the JSON hub protocol, every
                       client in the group \"bench\", senders invoke SendToGroup (not with
                       --http2 or --json)
  --source-addrs K     bind client i to 127.0.0.<2 + i % K> before connecting (an IPv4
                       loopback --url only), so that more clients than one address has
                       ephemeral ports (about 28k) can reach one port; 0 (the default):
                       the kernel's choice, 127.0.0.1
  --first-id M         usernames u<M>, u<M+1>... (default 0), for several loadgens on one
                       server
  --control            with --idle: once connected, print {\"ready\":...} and take
                       commands on stdin, one a line, each answered by a JSON line:
                       `send ID` (client 0 sends `probe ID <wall-clock ns>`), `wait ID MS`
                       (until every client here has had probe ID, or MS ms: their count
                       and latencies), `stats` (pings had, clients connected), `quit`
                       (or the end of stdin: close and report)
  --quiet              no progress display";

/// Per-client read buffer; 15k clients x 16 KiB is still acceptable, and it grows if needed.
const READ_BUF: usize = 16 * 1024;
const MAX_FRAME: u64 = 16 << 20;
/// Room for `<s> <seq> <send_ns> ` with 5, 10 and 14 digits.
const MIN_SIZE: usize = 32;
const LATENCY_BATCH: usize = 512;
const HIST_SHARDS: usize = 8;
/// Latency paths: through the sender's own server, or through another one.
const SAME: usize = 0;
const CROSS: usize = 1;
/// Not a path: the sender is in another room than the client, so nothing of it is expected.
const OTHER_ROOM: usize = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_PHASE_TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(1);
const DRAIN: Duration = Duration::from_secs(5);
const WINDOW_STALL: Duration = Duration::from_secs(2);
/// `--signalr`: the group every client joins and every sender sends to.
const SIGNALR_GROUP: &str = "bench";

// Phases, for the progress display.
const CONNECT: u8 = 0;
const SETTLING: u8 = 1;
const HOLD: u8 = 2;
const WARMUP: u8 = 3;
const MEASURE: u8 = 4;
const DRAINING: u8 = 5;
const CLOSING: u8 = 6;

/// A client's socket halves: TCP, or TLS for `wss://`.
type ReadIo = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Unpin + Send>>>;

struct Args {
    /// `--url` as given (it goes into the JSON line), and split at commas.
    url: String,
    urls: Vec<String>,
    clients: usize,
    senders: usize,
    rate: f64,
    window: usize,
    size: usize,
    duration: f64,
    warmup: f64,
    connect_batch: usize,
    server_pids: Vec<u32>,
    idle: bool,
    quiet: bool,
    deflate: bool,
    json: bool,
    /// `--ca`: the certificates a `wss://` server's must chain to.
    ca: Option<String>,
    /// `--http2`, and `--streams`: clients per HTTP/2 connection.
    http2: bool,
    streams: usize,
    /// `--signalr`: the URL is a SignalR hub.
    signalr: bool,
    /// `--rooms`: client `i` is in room `i % rooms`.
    rooms: usize,
    /// `--source-addrs`: client `i` binds 127.0.0.<2 + i % source_addrs> (0: no bind).
    source_addrs: usize,
    /// `--first-id`: client `i`'s username is `u<first_id + i>`.
    first_id: usize,
    /// `--control`: idle clients that wait for probes ordered on stdin.
    control: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        urls: Vec::new(),
        clients: 1000,
        senders: 10,
        rate: 0.0,
        window: 8,
        size: 64,
        duration: 10.0,
        warmup: 2.0,
        connect_batch: 100,
        server_pids: Vec::new(),
        idle: false,
        quiet: false,
        deflate: false,
        json: false,
        ca: None,
        http2: false,
        streams: 100,
        signalr: false,
        rooms: 1,
        source_addrs: 0,
        first_id: 0,
        control: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => {
                a.url = value()?;
                a.urls = a.url.split(',').map(|u| u.trim().to_owned()).collect();
            }
            "--clients" => a.clients = number(&flag, value()?)?,
            "--senders" => a.senders = number(&flag, value()?)?,
            "--rate" => a.rate = number(&flag, value()?)?,
            "--window" => a.window = number(&flag, value()?)?,
            "--size" => a.size = number(&flag, value()?)?,
            "--duration" => a.duration = number(&flag, value()?)?,
            "--warmup" => a.warmup = number(&flag, value()?)?,
            "--connect-batch" => a.connect_batch = number(&flag, value()?)?,
            "--server-pid" => {
                a.server_pids = (value()?.split(','))
                    .map(|pid| number(&flag, pid.trim().to_owned()))
                    .collect::<Result<_, _>>()?;
            }
            "--idle" => a.idle = true,
            "--deflate" => a.deflate = true,
            "--json" => a.json = true,
            "--ca" => a.ca = Some(value()?),
            "--http2" => a.http2 = true,
            "--streams" => a.streams = number(&flag, value()?)?,
            "--signalr" => a.signalr = true,
            "--rooms" => a.rooms = number(&flag, value()?)?,
            "--source-addrs" => a.source_addrs = number(&flag, value()?)?,
            "--first-id" => a.first_id = number(&flag, value()?)?,
            "--control" => a.control = true,
            "--quiet" => a.quiet = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    match () {
        _ if a.url.is_empty() => Err("--url is required".into()),
        _ if a.urls.iter().any(String::is_empty) => Err("--url: empty URL in the list".into()),
        _ if a.clients == 0 || a.connect_batch == 0 || a.window == 0 || a.streams == 0 => {
            Err("--clients, --connect-batch, --window and --streams must be at least 1".into())
        }
        _ if a.senders > a.clients => Err("--senders cannot exceed --clients".into()),
        _ if a.rooms == 0 || a.rooms > a.clients => {
            Err("--rooms must be at least 1 and at most --clients".into())
        }
        _ if a.rooms > a.senders && !a.idle => Err(format!(
            "--rooms {} needs a sender in every room: --senders {} at least",
            a.rooms, a.rooms
        )),
        _ if a.rooms > 1 && a.signalr => Err("--signalr speaks one group: no --rooms".into()),
        _ if a.size < MIN_SIZE => Err(format!("--size must be at least {MIN_SIZE}")),
        _ if a.source_addrs > 253 => Err("--source-addrs: at most 253 (127.0.0.2-254)".into()),
        _ if a.control && (!a.idle || a.signalr || a.rooms > 1) => {
            Err("--control goes with --idle, and without --signalr or --rooms".into())
        }
        _ if a.signalr && (a.http2 || a.json) => {
            Err("--signalr goes with neither --http2 nor --json".into())
        }
        _ if !ok(a.rate) || !ok(a.warmup) || !ok(a.duration) || a.duration == 0.0 => {
            Err("--rate, --warmup and --duration must be >= 0 (--duration > 0)".into())
        }
        _ => Ok(a),
    }
}

fn number<T: std::str::FromStr>(flag: &str, text: String) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: not a number: {text:?}"))
}

/// Where to connect, resolved once so that 10k connects are not 10k lookups.
struct Target {
    addr: SocketAddr,
    /// For `wss://`: the TLS client and the name to check the server's certificate for.
    tls: Option<(
        tokio_rustls::TlsConnector,
        tokio_rustls::rustls::pki_types::ServerName<'static>,
    )>,
    host: String,
    /// Path and query up to the username's number: `/api/Chat?username=u`.
    path: String,
    /// `--signalr`: the hub's path, as given (`/hubs/chat`).
    hub: Option<String>,
    /// `--http2`: the connections, made by the first of their clients, whose streams the
    /// others open (client `i` of this target on connection `i / --streams`).
    h2: Option<Vec<tokio::sync::OnceCell<H2Sender>>>,
    /// `--source-addrs`: the local addresses connections are bound to, taken in turn.
    sources: Vec<std::net::IpAddr>,
    /// `--first-id`: added to a client's index in its username.
    first_id: usize,
}

/// Opens streams on one HTTP/2 connection.
type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

async fn resolve_target(url: &str, args: &Args) -> Result<Target, Box<dyn Error>> {
    let (rest, secure) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err("--url must start with ws:// or wss://".into()),
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut addrs = tokio::net::lookup_host(host).await?;
    let tls = if secure {
        let ca = args.ca.as_deref().ok_or("a wss:// URL needs --ca FILE")?;
        let alpn: &[u8] = if args.http2 { b"h2" } else { b"http/1.1" };
        Some(tls_client(ca, host, alpn)?)
    } else {
        None
    };
    let per_target = args.clients.div_ceil(args.urls.len());
    let h2 = args.http2.then(|| {
        let connections = per_target.div_ceil(args.streams);
        (0..connections)
            .map(|_| tokio::sync::OnceCell::new())
            .collect()
    });
    let addr = addrs.next().ok_or("the --url host did not resolve")?;
    if args.source_addrs > 0 && !(addr.is_ipv4() && addr.ip().is_loopback()) {
        return Err("--source-addrs needs an IPv4 loopback --url (127.x.x.x)".into());
    }
    let sources = (0..args.source_addrs)
        .map(|k| std::net::Ipv4Addr::new(127, 0, 0, 2 + k as u8).into())
        .collect();
    Ok(Target {
        addr,
        tls,
        host: host.to_owned(),
        path: format!("{path}{sep}username=u"),
        hub: args.signalr.then(|| path.to_owned()),
        h2,
        sources,
        first_id: args.first_id,
    })
}

/// Keeps a hot atomic on its own cache line, so that writes to it do not slow down reads of
/// its neighbours (false sharing costs a lot at millions of deliveries per second).
#[derive(Default)]
#[repr(align(64))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Counters shared by all tasks. Clients add to them once per read, not per message.
#[derive(Default)]
struct Stats {
    phase: AtomicU8,
    phase_start_ns: AtomicU64,
    measure_start_ns: AtomicU64,
    measure_end_ns: AtomicU64,
    connected: AtomicU32,
    live: AtomicU32,
    stopping: AtomicBool,
    sent_total: AtomicU64,
    sent_measured: AtomicU64,
    received_total: Padded<AtomicU64>,
    deliveries: Padded<AtomicU64>,
    gaps: Padded<AtomicU64>,
    reordered: Padded<AtomicU64>,
    /// Messages a client got from a sender of another room.
    wrong_room: Padded<AtomicU64>,
    window_stalls: AtomicU64,
    /// Bytes read from sockets during the measured phase, and clients whose server agreed
    /// permessage-deflate.
    wire_bytes: Padded<AtomicU64>,
    deflate_agreed: AtomicU32,
    /// Pings the servers sent (each answered with a pong).
    pings: AtomicU64,
}

/// One room's counts: what its clients expect is what was sent to it, times its clients.
struct Room {
    /// Its clients that are connected; each of them reads this once per read.
    live: Padded<AtomicU32>,
    /// Broadcasts its senders sent: in all (warmup too), and stamped in the measured phase.
    sent_total: Padded<AtomicU64>,
    sent_measured: AtomicU64,
    /// Its clients, connected or not: `--clients` spread over `--rooms`.
    members: u64,
}

struct Shared {
    start: Instant,
    window: usize,
    closed_loop: bool,
    /// `--deflate`.
    deflate: bool,
    /// How many `--url`s; client `i` (and so sender `i`) is on server `i % servers`.
    servers: usize,
    /// `--streams`.
    streams: usize,
    /// `--signalr`: messages are records of the JSON hub protocol.
    signalr: bool,
    stats: Stats,
    /// `--rooms`: client `i` (and so sender `i`) is in `rooms[i % rooms.len()]`.
    rooms: Vec<Room>,
    /// Closed loop: per sender, how many clients have seen each in-flight seq (slot seq % W).
    ring: Vec<Vec<Padded<AtomicU32>>>,
    wake: Vec<Notify>,
    /// Latency histograms, sharded; `[SAME]` for deliveries by the sender's own server,
    /// `[CROSS]` for those through another server (always empty with one URL).
    hist: [Vec<Mutex<Histogram<u64>>>; 2],
    /// Error message (without client ids, so 10k identical failures stay one line) -> count.
    errors: Mutex<BTreeMap<String, u64>>,
    /// `--control`: per probe id, the latency (microseconds, wall clock: the sender may be
    /// another process) of each client that has had it.
    control: bool,
    probes: Mutex<BTreeMap<u32, Vec<u32>>>,
}

impl Shared {
    fn new(args: &Args) -> Self {
        let slots = || (0..args.window).map(|_| Padded::default()).collect();
        Shared {
            start: Instant::now(),
            window: args.window,
            closed_loop: args.rate == 0.0,
            deflate: args.deflate,
            servers: args.urls.len(),
            streams: args.streams,
            signalr: args.signalr,
            stats: Stats::default(),
            rooms: (0..args.rooms)
                .map(|r| Room {
                    live: Padded::default(),
                    sent_total: Padded::default(),
                    sent_measured: AtomicU64::new(0),
                    // Clients r, r + R, r + 2R... below --clients.
                    members: args.clients.saturating_sub(r).div_ceil(args.rooms) as u64,
                })
                .collect(),
            ring: (0..args.senders).map(|_| slots()).collect(),
            wake: (0..args.senders).map(|_| Notify::new()).collect(),
            hist: [(); 2].map(|()| {
                (0..HIST_SHARDS)
                    .map(|_| Mutex::new(new_histogram()))
                    .collect()
            }),
            errors: Mutex::default(),
            control: args.control,
            probes: Mutex::default(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The room client (or sender) `i` is in.
    fn room_of(&self, i: usize) -> usize {
        i % self.rooms.len()
    }

    /// The server (index in `--url`) client `i` connects to: `i % n` with one room; with
    /// more, a room's clients `r, r + R, r + 2R...` take the servers in turn from `r % n`, so
    /// that each room spans the servers even when n divides R.
    fn server_of(&self, i: usize) -> usize {
        let rooms = self.rooms.len();
        (i % rooms + i / rooms) % self.servers.max(1)
    }

    fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start + Duration::from_nanos(ns))
    }

    fn set_phase(&self, phase: u8) {
        self.stats.phase_start_ns.store(self.now_ns(), Relaxed);
        self.stats.phase.store(phase, Relaxed);
    }

    /// Send times whose deliveries are measured.
    fn measured(&self) -> Range<u64> {
        self.stats.measure_start_ns.load(Relaxed)..self.stats.measure_end_ns.load(Relaxed)
    }

    fn error(&self, message: String) {
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(message)
            .or_insert(0) += 1;
    }

    /// A client has now seen `seqs` of sender `s`: wake the sender once all `live` clients
    /// of its room have.
    fn advance_window(&self, s: usize, seqs: RangeInclusive<u32>, live: u32) {
        for seq in seqs {
            if self.ring[s][seq as usize % self.window].fetch_add(1, AcqRel) + 1 >= live {
                self.wake[s].notify_one();
            }
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds are valid")
}

/// Connects one client, reports on `ready`, then reads until the connection ends.
async fn client_task(
    shared: Arc<Shared>,
    target: Arc<Target>,
    idx: usize,
    ready: oneshot::Sender<Result<Writer, String>>,
) {
    let connection = idx / shared.servers.max(1) / shared.streams;
    let room = shared.room_of(idx);
    let joined = async {
        let (mut read, writer, mut buf, agreed) =
            connect(&target, idx, connection, shared.deflate).await?;
        if shared.rooms.len() > 1 {
            join_room(&mut read, &writer, &mut buf, room, idx).await?;
        }
        Ok::<_, String>((read, writer, buf, agreed))
    };
    let connected = match timeout(CONNECT_TIMEOUT, joined).await {
        Ok(result) => result,
        Err(_) => Err("timed out after 10 s".into()),
    };
    let (read, writer, buf, agreed) = match connected {
        Ok(connection) => connection,
        Err(reason) => {
            let _ = ready.send(Err(reason));
            return;
        }
    };
    shared.stats.connected.fetch_add(1, Relaxed);
    if agreed {
        shared.stats.deflate_agreed.fetch_add(1, Relaxed);
    }
    shared.stats.live.fetch_add(1, AcqRel);
    shared.rooms[room].live.fetch_add(1, AcqRel);
    let _ = ready.send(Ok(writer.clone()));

    let mut client = Client::new(shared.clone(), idx);
    let reason = client.run(read, &writer, buf).await;
    client.flush();
    client.flush_latencies();
    if !shared.stats.stopping.load(Acquire) {
        shared.error(format!("client disconnected: {reason}"));
        shared.stats.live.fetch_sub(1, AcqRel);
        shared.rooms[room].live.fetch_sub(1, AcqRel);
        // Closed-loop senders may be waiting for this client.
        shared.wake.iter().for_each(Notify::notify_one);
    }
}

/// TCP connect and the HTTP upgrade, by hand. Bytes read past the response stay in the buffer.
/// Also says whether the server agreed permessage-deflate (offered with `deflate`). With
/// `--http2`, a stream of HTTP/2 connection number `connection` instead.
async fn connect(
    target: &Target,
    idx: usize,
    connection: usize,
    deflate: bool,
) -> Result<(ReadIo, Writer, BytesMut, bool), String> {
    if let Some(connections) = &target.h2 {
        let cell = connections
            .get(connection)
            .ok_or("more clients than --clients")?;
        let send = cell
            .get_or_try_init(|| h2_connection(target, connection))
            .await?;
        let (stream, agreed) = h2_stream(send.clone(), target, idx, deflate).await?;
        let (read, write) = tokio::io::split(stream);
        return Ok((
            Box::new(read),
            Arc::new(tokio::sync::Mutex::new(Box::new(write))),
            BytesMut::with_capacity(READ_BUF),
            agreed,
        ));
    }
    let stream = tcp_connect(target, idx).await?;
    let Some((connector, name)) = &target.tls else {
        let mut stream = stream;
        let (buf, agreed) = upgrade(&mut stream, target, idx, deflate).await?;
        let (read, write) = stream.into_split();
        return Ok((
            Box::new(read),
            Arc::new(tokio::sync::Mutex::new(Box::new(write))),
            buf,
            agreed,
        ));
    };
    let mut stream = connector
        .connect(name.clone(), stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (buf, agreed) = upgrade(&mut stream, target, idx, deflate).await?;
    let (read, write) = tokio::io::split(stream);
    Ok((
        Box::new(read),
        Arc::new(tokio::sync::Mutex::new(Box::new(write))),
        buf,
        agreed,
    ))
}

/// A TCP connection to `target`, from source address number `n` (of `--source-addrs`) if
/// there are any. Bound before connecting: the kernel then picks a port free on that
/// address, so each address adds a port range.
async fn tcp_connect(target: &Target, n: usize) -> Result<TcpStream, String> {
    let stream = match target.sources.get(n % target.sources.len().max(1)) {
        None => TcpStream::connect(target.addr).await,
        Some(&source) => {
            let socket = tokio::net::TcpSocket::new_v4().map_err(connect_error)?;
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|e| format!("bind {source}: {}", connect_error(e)))?;
            socket.connect(target.addr).await
        }
    }
    .map_err(connect_error)?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(stream)
}

/// A new HTTP/2 connection to `target`, TLS (with `h2` agreed by ALPN) for `wss://`.
async fn h2_connection(target: &Target, n: usize) -> Result<H2Sender, String> {
    let stream = tcp_connect(target, n).await?;
    let Some((connector, name)) = &target.tls else {
        return h2_handshake(stream).await;
    };
    let stream = connector
        .connect(name.clone(), stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the server did not choose HTTP/2 by ALPN".into());
    }
    h2_handshake(stream).await
}

async fn h2_handshake<S>(stream: S) -> Result<H2Sender, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(send)
}

/// Opens a WebSocket as a stream of `send`'s connection (RFC 8441); says whether the server
/// agreed permessage-deflate.
async fn h2_stream(
    mut send: H2Sender,
    target: &Target,
    idx: usize,
    deflate: bool,
) -> Result<(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, bool), String> {
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = format!(
        "{scheme}://{}{}{}",
        target.host,
        target.path,
        target.first_id + idx
    );
    // The server's SETTINGS, which allow the extended CONNECT, may not have arrived when the
    // first stream is opened: hyper then refuses it, and it is tried again.
    let mut tries = 0;
    let response = loop {
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri(&uri)
            .header("sec-websocket-version", "13");
        if deflate {
            request = request.header(
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            );
        }
        let mut request = request
            .body(http_body_util::Empty::new())
            .map_err(|e| format!("CONNECT request: {e}"))?;
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        send.ready()
            .await
            .map_err(|e| format!("HTTP/2 connection: {e}"))?;
        match send.send_request(request).await {
            Ok(response) => break response,
            Err(_) if tries < 100 => {
                tries += 1;
                sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(format!("CONNECT: {e}")),
        }
    };
    if response.status() != http::StatusCode::OK {
        return Err(format!("CONNECT refused: {}", response.status()));
    }
    let agreed = response
        .headers()
        .get("sec-websocket-extensions")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().starts_with("permessage-deflate"));
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| format!("CONNECT stream: {e}"))?;
    Ok((hyper_util::rt::TokioIo::new(upgraded), agreed))
}

/// A TLS client for `host` (`name[:port]`) trusting the PEM certificates in `ca`, offering
/// `alpn`.
fn tls_client(
    ca: &str,
    host: &str,
    alpn: &[u8],
) -> Result<
    (
        tokio_rustls::TlsConnector,
        tokio_rustls::rustls::pki_types::ServerName<'static>,
    ),
    Box<dyn Error>,
> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {ca}: {e}"))? {
        roots.add(cert.map_err(|e| format!("--ca {ca}: {e}"))?)?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    Ok((
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        ServerName::try_from(name.to_owned())?,
    ))
}

/// The WebSocket on `stream`, ready for the load: the chat's upgrade, or a SignalR client's
/// negotiate, upgrade, handshake and `JoinGroup`. Returns the bytes read past the last
/// answer, and whether the server agreed permessage-deflate.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &Target,
    idx: usize,
    deflate: bool,
) -> Result<(BytesMut, bool), String> {
    let Some(hub) = &target.hub else {
        let path = format!("{}{}", target.path, target.first_id + idx);
        return handshake(stream, target, &path, idx, deflate).await;
    };
    let token = negotiate(stream, target, hub).await?;
    let sep = if hub.contains('?') { '&' } else { '?' };
    let path = format!("{hub}{sep}id={token}");
    let (mut buf, agreed) = handshake(stream, target, &path, idx, deflate).await?;
    if agreed {
        return Err("SignalR: permessage-deflate is not read in this mode".into());
    }
    // The handshake and the join in one frame, as several records may be.
    let mut frame = Vec::new();
    let records = format!(
        "{{\"protocol\":\"json\",\"version\":1}}\u{1e}\
         {{\"type\":1,\"invocationId\":\"0\",\"target\":\"JoinGroup\",\"arguments\":[\"{SIGNALR_GROUP}\"]}}\u{1e}"
    );
    push_frame(&mut frame, 0x1, records.as_bytes(), seed(idx as u64));
    let io = |e: std::io::Error| format!("SignalR handshake: {e}");
    stream.write_all(&frame).await.map_err(io)?;
    // `{}` (the handshake accepted), then the join's Completion.
    let (mut handshaken, mut joined) = (false, false);
    while !joined {
        let Some(head) = frame_head(&buf)? else {
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err("SignalR handshake: server closed the connection".into());
            }
            continue;
        };
        let total = head.len + head.payload;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err("SignalR handshake: server closed the connection".into());
            }
            continue;
        }
        if head.opcode == 0x1 {
            for record in buf[head.len..total].split(|&b| b == 0x1e) {
                if record.is_empty() {
                    continue;
                }
                let text = String::from_utf8_lossy(record);
                if !handshaken {
                    if record != b"{}" {
                        return Err(format!("SignalR handshake refused: {text}"));
                    }
                    handshaken = true;
                } else if find(record, b"\"invocationId\":\"0\"").is_some() {
                    if find(record, b"\"error\"").is_some() {
                        return Err(format!("SignalR JoinGroup failed: {text}"));
                    }
                    joined = true;
                }
            }
        } else if head.opcode == 0x8 {
            return Err("SignalR handshake: server sent close".into());
        }
        buf.advance(total);
    }
    Ok((buf, false))
}

/// A SignalR client's negotiate, on the connection it will upgrade (HTTP/1.1 keep-alive):
/// the connection token.
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &Target,
    hub: &str,
) -> Result<String, String> {
    let (path, query) = hub.split_once('?').unwrap_or((hub, ""));
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("&{query}")
    };
    let request = format!(
        "POST {}/negotiate?negotiateVersion=1{query} HTTP/1.1\r\nHost: {}\r\n\
         Content-Length: 0\r\nX-Requested-With: XMLHttpRequest\r\n\r\n",
        path.trim_end_matches('/'),
        target.host,
    );
    let io = |e: std::io::Error| format!("negotiate: {e}");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 8192 {
            return Err("negotiate: response headers too long".into());
        }
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err("negotiate: server closed the connection".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("negotiate refused: {status}"));
    }
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or("negotiate: no Content-Length")?;
    while buf.len() < end + 4 + length {
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err("negotiate: server closed the connection".into());
        }
    }
    let body = &buf[end + 4..end + 4 + length];
    let key = b"\"connectionToken\":\"";
    let at = find(body, key).ok_or("negotiate: no connectionToken")? + key.len();
    let len = body[at..]
        .iter()
        .position(|&b| b == b'"')
        .ok_or("negotiate: connectionToken not closed")?;
    // Ids are URL-safe already (the crate's are); others would need escaping in the query.
    Ok(String::from_utf8_lossy(&body[at..at + len]).into_owned())
}

/// The HTTP upgrade to `path` on `stream`: the bytes read past the response, and whether
/// the server agreed permessage-deflate.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &Target,
    path: &str,
    idx: usize,
    deflate: bool,
) -> Result<(BytesMut, bool), String> {
    let mut rng = seed(idx as u64);
    let key: Vec<u8> = (0..2)
        .flat_map(|_| xorshift(&mut rng).to_le_bytes())
        .collect();
    let key = base64(&key);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
        target.host,
        offer = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        }
    );
    let io = |e: std::io::Error| format!("handshake: {e}");
    stream.write_all(request.as_bytes()).await.map_err(io)?;

    let mut buf = BytesMut::with_capacity(READ_BUF);
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 8192 {
            return Err("handshake: response headers too long".into());
        }
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err("handshake: server closed the connection".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(format!("handshake refused: {status}"));
    }
    let accept = derive_accept_key(key.as_bytes());
    let accepted = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
        });
    if !accepted {
        return Err("handshake: missing or wrong Sec-WebSocket-Accept".into());
    }
    let agreed = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                && value.trim().starts_with("permessage-deflate")
        });
    buf.advance(end + 4);
    Ok((buf, agreed))
}

/// `--rooms`: sends `/join r<room>` and reads until the chat answers `You are in room
/// r<room>` (before or after its join notice, whichever the protocol says). Nothing is
/// broadcast before every client has joined, so what else comes is notices, skipped; pings
/// are answered. Bytes read past the answer stay in `buf`.
async fn join_room(
    read: &mut ReadIo,
    writer: &Writer,
    buf: &mut BytesMut,
    room: usize,
    idx: usize,
) -> Result<(), String> {
    let mut rng = seed(idx as u64 ^ 0x0101);
    let mut frame = Vec::new();
    push_frame(
        &mut frame,
        0x1,
        format!("/join r{room}").as_bytes(),
        xorshift(&mut rng),
    );
    let io = |e: std::io::Error| format!("joining room r{room}: {e}");
    writer.lock().await.write_all(&frame).await.map_err(io)?;
    let answer = format!("You are in room r{room}");
    let (mut inflater, mut inflated) = (None, Vec::new());
    loop {
        let Some(head) = frame_head(buf)? else {
            if read.read_buf(buf).await.map_err(io)? == 0 {
                return Err(format!(
                    "joining room r{room}: server closed the connection"
                ));
            }
            continue;
        };
        let total = head.len + head.payload;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            if read.read_buf(buf).await.map_err(io)? == 0 {
                return Err(format!(
                    "joining room r{room}: server closed the connection"
                ));
            }
            continue;
        }
        let payload = &buf[head.len..total];
        match head.opcode {
            0x1 => {
                let text: &[u8] = if head.rsv1 {
                    let inflater = inflater.get_or_insert_with(|| flate2::Decompress::new(false));
                    inflate_into(inflater, payload, &mut inflated)?;
                    &inflated
                } else {
                    payload
                };
                if text == answer.as_bytes() {
                    buf.advance(total);
                    return Ok(());
                }
                if text.starts_with(b"Cannot join") {
                    let text = String::from_utf8_lossy(text);
                    return Err(format!("joining room r{room}: {text}"));
                }
            }
            0x8 => return Err(format!("joining room r{room}: server sent close")),
            0x9 => {
                frame.clear();
                push_frame(&mut frame, 0xA, payload, xorshift(&mut rng));
                writer.lock().await.write_all(&frame).await.map_err(io)?;
            }
            _ => {}
        }
        buf.advance(total);
    }
}

fn connect_error(e: std::io::Error) -> String {
    match e.raw_os_error() {
        Some(24) => "too many open files (EMFILE): raise ulimit -n".into(),
        Some(99) => "no free local port (EADDRNOTAVAIL)".into(),
        Some(98) => "no free local port on the source address (EADDRINUSE)".into(),
        _ => format!("connect: {e}"),
    }
}

/// A fragmented message being reassembled (the in-repo server never fragments; others may).
enum Fragment {
    None,
    Text(Vec<u8>),
    Ignored,
}

/// One client's receive side. Counts locally and publishes once per read.
struct Client {
    shared: Arc<Shared>,
    shard: usize,
    next_seq: Vec<u32>,
    /// Per sender: `CROSS` if it is connected to another server than this client, else
    /// `SAME`; `OTHER_ROOM` if it sends to another room.
    path: Vec<usize>,
    /// This client's room (an index in `shared.rooms`).
    room: usize,
    /// Per path, latencies not yet added to the histograms.
    latencies: [Vec<u32>; 2],
    received: u64,
    deliveries: u64,
    gaps: u64,
    reordered: u64,
    /// Messages from senders of other rooms (none expected: counted, not delivered).
    wrong_room: u64,
    fragment: Fragment,
    /// Snapshots taken once per read rather than per message: arrival time, the measured
    /// window and the count of this room's live clients.
    now_ns: u64,
    measured: Range<u64>,
    live: u32,
    /// Pongs and close replies to write after handling a read's frames.
    out: Vec<u8>,
    rng: u64,
    /// Bytes read during the measured phase, not yet added to the shared count.
    wire: u64,
    /// permessage-deflate: a raw inflater (the server takes over no context, so it is reset
    /// for every message) and its output.
    inflater: Option<flate2::Decompress>,
    inflated: Vec<u8>,
}

impl Client {
    fn new(shared: Arc<Shared>, idx: usize) -> Self {
        let room = shared.room_of(idx);
        let path = (0..shared.ring.len())
            .map(|s| match () {
                _ if shared.room_of(s) != room => OTHER_ROOM,
                _ if shared.server_of(s) == shared.server_of(idx) => SAME,
                _ => CROSS,
            })
            .collect();
        Client {
            next_seq: vec![0; shared.ring.len()],
            path,
            room,
            shared,
            shard: idx % HIST_SHARDS,
            latencies: [Vec::new(), Vec::new()],
            received: 0,
            deliveries: 0,
            gaps: 0,
            reordered: 0,
            wrong_room: 0,
            fragment: Fragment::None,
            now_ns: 0,
            measured: 0..0,
            live: 0,
            out: Vec::new(),
            rng: seed(!(idx as u64)),
            wire: 0,
            inflater: None,
            inflated: Vec::new(),
        }
    }

    /// Reads and handles frames until the connection ends; returns why it ended.
    async fn run(&mut self, mut read: ReadIo, writer: &Writer, mut buf: BytesMut) -> String {
        loop {
            // Everything in one read arrived at the same moment.
            self.now_ns = self.shared.now_ns();
            self.measured = self.shared.measured();
            self.live = self.shared.rooms[self.room].live.load(Relaxed);
            let result = self.handle_frames(&mut buf);
            self.flush();
            if !self.out.is_empty() {
                let written = writer.lock().await.write_all(&self.out).await;
                self.out.clear();
                // A failed close reply matters less than the close itself.
                if let (Err(e), Ok(())) = (written, &result) {
                    return format!("write failed: {e}");
                }
            }
            if let Err(reason) = result {
                return reason;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(READ_BUF / 2); // reclaims the consumed front when it can
            }
            match read.read_buf(&mut buf).await {
                Ok(0) => return "server closed the TCP connection".into(),
                Ok(n) => {
                    if self.measured.contains(&self.shared.now_ns()) {
                        self.wire += n as u64;
                    }
                }
                Err(e) => return format!("read failed: {e}"),
            }
        }
    }

    /// Handles every complete frame in `buf`. `Err` ends the connection (close or error).
    fn handle_frames(&mut self, buf: &mut BytesMut) -> Result<(), String> {
        while let Some(head) = frame_head(buf)? {
            let total = head.len + head.payload;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                break;
            }
            let payload = &mut buf[head.len..total];
            if let Some(mask) = head.mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= mask[i & 3]);
            }
            if head.rsv1 {
                if !head.fin || head.opcode != 0x1 {
                    return Err("a compressed message that is not one text frame".into());
                }
                let text = self.inflate(payload)?;
                self.on_text(&text);
                self.inflated = text;
                buf.advance(total);
                continue;
            }
            match (head.opcode, head.fin) {
                (0x1, true) => self.on_text(payload),
                (0x1, false) => self.fragment = Fragment::Text(payload.to_vec()),
                (0x2, false) => self.fragment = Fragment::Ignored,
                (0x0, fin) => {
                    if let Fragment::Text(text) = &mut self.fragment {
                        text.extend_from_slice(payload);
                    }
                    if fin {
                        let done = std::mem::replace(&mut self.fragment, Fragment::None);
                        if let Fragment::Text(text) = done {
                            self.on_text(&text);
                        }
                    }
                }
                (0x8, _) => {
                    let code = payload.get(..2).unwrap_or_default();
                    if !self.shared.stats.stopping.load(Acquire) {
                        push_frame(&mut self.out, 0x8, code, xorshift(&mut self.rng));
                    }
                    let code = code.first().map(|&hi| u16::from_be_bytes([hi, code[1]]));
                    return Err(format!("server sent close (code {})", opt(code)));
                }
                (0x9, _) => {
                    self.shared.stats.pings.fetch_add(1, Relaxed);
                    push_frame(&mut self.out, 0xA, payload, xorshift(&mut self.rng));
                }
                (0x2 | 0xA, _) => {}
                (op, _) => return Err(format!("protocol error: opcode {op:#x}")),
            }
            buf.advance(total);
        }
        Ok(())
    }

    fn on_text(&mut self, text: &[u8]) {
        if self.shared.signalr {
            // Records end with 0x1E; one frame may hold several.
            let mut rest = text;
            while !rest.is_empty() {
                let end = find_separator(rest).unwrap_or(rest.len());
                if let Some(message) = parse_signalr(&rest[..end]) {
                    self.on_message(message);
                }
                rest = &rest[(end + 1).min(rest.len())..];
            }
        } else if let Some(message) = parse_chat(text) {
            self.on_message(message);
        } else if self.shared.control {
            if let Some((id, sent_ns)) = parse_probe(text) {
                let micros = wall_ns().saturating_sub(sent_ns) / 1000;
                let mut probes = self.shared.probes.lock().expect("probes lock");
                let latencies = probes.entry(id).or_default();
                latencies.push(micros.min(u32::MAX.into()) as u32);
            }
        }
    }

    /// A broadcast `(sender, seq, send_ns)` arrived.
    fn on_message(&mut self, (s, seq, send_ns): (usize, u32, u64)) {
        let Some(&expected) = self.next_seq.get(s) else {
            return;
        };
        let path = self.path[s];
        if path == OTHER_ROOM {
            self.wrong_room += 1;
            return;
        }
        self.received += 1;
        if seq < expected {
            self.reordered += 1;
        } else {
            self.gaps += u64::from(seq - expected);
            if self.shared.closed_loop {
                // Skipped seqs count as seen, or one lost message would stall its sender.
                // More than W back cannot be in flight, so clamp (guards against odd input).
                let oldest = seq.saturating_sub(self.shared.window as u32 - 1);
                self.shared
                    .advance_window(s, expected.max(oldest)..=seq, self.live);
            }
            self.next_seq[s] = seq.saturating_add(1);
        }
        if self.measured.contains(&send_ns) {
            self.deliveries += 1;
            let micros = (self.now_ns.saturating_sub(send_ns) / 1000).min(u32::MAX.into());
            let latencies = &mut self.latencies[path];
            latencies.push(micros as u32);
            if latencies.len() >= LATENCY_BATCH {
                self.flush_latencies();
            }
        }
    }

    /// A compressed message's text (RFC 7692 section 7.2.2: the tail put back, inflated).
    fn inflate(&mut self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let inflater = self
            .inflater
            .get_or_insert_with(|| flate2::Decompress::new(false));
        let mut out = std::mem::take(&mut self.inflated);
        inflate_into(inflater, payload, &mut out)?;
        Ok(out)
    }

    fn flush(&mut self) {
        let stats = &self.shared.stats;
        for (local, global) in [
            (&mut self.wire, &stats.wire_bytes),
            (&mut self.received, &stats.received_total),
            (&mut self.deliveries, &stats.deliveries),
            (&mut self.gaps, &stats.gaps),
            (&mut self.reordered, &stats.reordered),
            (&mut self.wrong_room, &stats.wrong_room),
        ] {
            if *local > 0 {
                global.fetch_add(std::mem::take(local), AcqRel);
            }
        }
    }

    fn flush_latencies(&mut self) {
        for (hists, latencies) in self.shared.hist.iter().zip(&mut self.latencies) {
            if latencies.is_empty() {
                continue;
            }
            let mut hist = hists[self.shard].lock().expect("histogram lock");
            for micros in latencies.drain(..) {
                hist.saturating_record(micros.into());
            }
        }
    }
}

/// Inflates one compressed message into `out` (cleared first), with the tail of RFC 7692
/// section 7.2.2 put back; `inflater` is reset, as the server takes over no context.
fn inflate_into(
    inflater: &mut flate2::Decompress,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    inflater.reset(false);
    out.clear();
    for input in [payload, &[0, 0, 0xff, 0xff][..]] {
        let mut input = input;
        while !input.is_empty() {
            out.reserve(input.len() * 4 + 1024);
            let before = inflater.total_in();
            inflater
                .decompress_vec(input, out, flate2::FlushDecompress::Sync)
                .map_err(|e| format!("inflate: {e}"))?;
            let used = (inflater.total_in() - before) as usize;
            input = &input[used..];
            if used == 0 && out.len() < out.capacity() {
                return Err("inflate: stuck".into());
            }
        }
    }
    Ok(())
}

struct FrameHead {
    fin: bool,
    /// Compressed (permessage-deflate).
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: usize,
    payload: usize,
}

/// Parses a frame header; `None` if `buf` does not hold all of it yet.
fn frame_head(buf: &[u8]) -> Result<Option<FrameHead>, String> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let (payload, mut len) = match (b1 & 0x7f, buf.get(2..4), buf.get(2..10)) {
        (126, Some(b), _) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
        (127, _, Some(b)) => (b.iter().fold(0, |n, &x| n << 8 | u64::from(x)), 10),
        (126 | 127, _, _) => return Ok(None),
        (n, _, _) => (u64::from(n), 2),
    };
    if payload > MAX_FRAME {
        return Err(format!("protocol error: {payload}-byte frame"));
    }
    let mut mask = None;
    if b1 & 0x80 != 0 {
        let Some(m) = buf.get(len..len + 4) else {
            return Ok(None);
        };
        mask = Some([m[0], m[1], m[2], m[3]]);
        len += 4;
    }
    let (fin, opcode, payload) = (b0 & 0x80 != 0, b0 & 0x0f, payload as usize);
    Ok(Some(FrameHead {
        fin,
        rsv1: b0 & 0x40 != 0,
        opcode,
        mask,
        len,
        payload,
    }))
}

/// Appends a masked client frame (clients must mask; the key need not be strong).
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: u64) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = (key as u32).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// `NAME: <s> <seq> <send_ns> xxx…` into `(s, seq, send_ns)`; `None` for anything else.
fn parse_chat(text: &[u8]) -> Option<(usize, u32, u64)> {
    let mut rest = &text[find(text, b": ")? + 2..];
    let s = parse_field(&mut rest)?;
    let seq = parse_field(&mut rest)?;
    let send_ns = parse_field(&mut rest)?;
    Some((usize::try_from(s).ok()?, u32::try_from(seq).ok()?, send_ns))
}

/// `NAME: probe <id> <wall_ns> xxx…` (`--control`) into `(id, wall_ns)`.
fn parse_probe(text: &[u8]) -> Option<(u32, u64)> {
    let mut rest = text[find(text, b": ")? + 2..].strip_prefix(b"probe ")?;
    let id = parse_field(&mut rest)?;
    let sent_ns = parse_field(&mut rest)?;
    Some((u32::try_from(id).ok()?, sent_ns))
}

/// Nanoseconds since the Unix epoch: one clock for every process on the machine.
fn wall_ns() -> u64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    now.map_or(0, |d| d.as_nanos() as u64)
}

/// A SignalR `{"type":1,"target":"ReceiveMessage","arguments":["u<s>","<s> <seq> <send_ns>
/// xxx…"]}` into `(s, seq, send_ns)`; `None` for any other record. The user is `u` and
/// digits, so the text starts right after the first `","` of the arguments.
fn parse_signalr(record: &[u8]) -> Option<(usize, u32, u64)> {
    const HEAD: &[u8] = b"\"target\":\"ReceiveMessage\",\"arguments\":[\"";
    let arguments = &record[find(record, HEAD)? + HEAD.len()..];
    let mut rest = &arguments[find(arguments, b"\",\"")? + 3..];
    let s = parse_field(&mut rest)?;
    let seq = parse_field(&mut rest)?;
    let send_ns = parse_field(&mut rest)?;
    Some((usize::try_from(s).ok()?, u32::try_from(seq).ok()?, send_ns))
}

/// Where the first record separator (0x1E) is, eight bytes at a time: every delivery of a
/// 4 KiB record is scanned, and a byte at a time would cost loadgen more than the server.
fn find_separator(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const SEPARATORS: u64 = u64::from_le_bytes([0x1e; 8]);
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        // Zero where a byte is 0x1E; the test is true if and only if a byte is zero.
        let word = u64::from_le_bytes(word) ^ SEPARATORS;
        if word.wrapping_sub(ONES) & !word & HIGHS != 0 {
            break;
        }
        at += 8;
    }
    bytes[at..].iter().position(|&b| b == 0x1e).map(|i| at + i)
}

/// Takes `<digits> ` off the front of `rest`, without scanning the padding after it.
fn parse_field(rest: &mut &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'0'..=b'9' => n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?,
            b' ' if i > 0 => {
                *rest = &rest[i + 1..];
                return Some(n);
            }
            _ => return None,
        }
    }
    None
}

/// Sends sender `s`'s broadcasts until the measured phase ends.
async fn sender_task(shared: Arc<Shared>, s: usize, writer: Writer, args: Arc<Args>) {
    let end_ns = shared.stats.measure_end_ns.load(Relaxed);
    let start_ns = shared.now_ns();
    // Open loop: each sender sends every senders/rate s, staggered so the senders interleave.
    let interval_ns = args.senders as f64 * 1e9 / args.rate;
    let stagger = s as f64 / args.senders as f64;
    let mut rng = seed(s as u64 ^ 0xface);
    let room = &shared.rooms[shared.room_of(s)];
    let (mut text, mut frame) = (String::new(), Vec::new());
    for seq in 0u32.. {
        let stamp = if shared.closed_loop {
            if !wait_window(&shared, s, seq, end_ns).await {
                break;
            }
            shared.now_ns()
        } else {
            let due = start_ns + ((f64::from(seq) + stagger) * interval_ns) as u64;
            // tokio timers fire on the next whole millisecond, so wake up to 1 ms early and
            // stamp min(now, due): a late send of ours (coordinated omission) counts as latency.
            sleep_until(shared.at(due.saturating_sub(1_000_000))).await;
            shared.now_ns().min(due)
        };
        if stamp >= end_ns {
            break;
        }
        text.clear();
        // SignalR: the text is the last argument of SendToGroup, no invocation id (no
        // answer wanted), the record's end after it.
        let envelope = if args.signalr {
            let _ = write!(
                text,
                "{{\"type\":1,\"target\":\"SendToGroup\",\"arguments\":[\"{SIGNALR_GROUP}\",\"u{s}\",\""
            );
            text.len()
        } else {
            0
        };
        let _ = write!(text, "{s} {seq} {stamp} ");
        let size = envelope + args.size;
        let pad = size.saturating_sub(text.len());
        if args.json {
            pad_json(&mut text, size, &mut rng);
        } else {
            text.extend(std::iter::repeat_n('x', pad));
        }
        if args.signalr {
            text.push_str("\"]}\u{1e}");
        }
        frame.clear();
        push_frame(&mut frame, 0x1, text.as_bytes(), xorshift(&mut rng));
        if let Err(e) = writer.lock().await.write_all(&frame).await {
            shared.error(format!("sender write failed: {e}"));
            break;
        }
        shared.stats.sent_total.fetch_add(1, AcqRel);
        room.sent_total.fetch_add(1, AcqRel);
        if shared.measured().contains(&stamp) {
            shared.stats.sent_measured.fetch_add(1, Relaxed);
            room.sent_measured.fetch_add(1, Relaxed);
        }
    }
}

/// Pads `text` to `size` bytes with chat-like JSON: records of users, rooms and short
/// sentences from a small vocabulary, varied by `rng`, so that it compresses as chat and
/// API traffic do (a few times), not as a run of one letter would.
fn pad_json(text: &mut String, size: usize, rng: &mut u64) {
    const WORDS: [&str; 16] = [
        "hello", "everyone", "meeting", "at", "noon", "the", "build", "passed", "see", "you",
        "tomorrow", "thanks", "for", "review", "deploy", "done",
    ];
    while text.len() < size {
        let r = xorshift(rng);
        let _ = write!(
            text,
            "{{\"id\":{},\"user\":\"user{}\",\"room\":\"room{}\",\"text\":\"",
            r % 100_000,
            (r >> 20) % 1000,
            (r >> 30) % 10
        );
        for i in 0..(3 + (r >> 40) % 5) {
            text.push_str(WORDS[((r >> (i * 4)) % 16) as usize]);
            text.push(' ');
        }
        text.push_str("\"},");
    }
    text.truncate(size);
}

/// Closed loop: waits until seq - W has reached every live client of sender `s`'s room;
/// `false` once time is up.
async fn wait_window(shared: &Shared, s: usize, seq: u32, end_ns: u64) -> bool {
    let slot = &shared.ring[s][seq as usize % shared.window];
    let live = &shared.rooms[shared.room_of(s)].live;
    if seq as usize >= shared.window {
        let give_up = Instant::now() + WINDOW_STALL;
        while slot.load(Acquire) < live.load(Acquire) {
            if shared.now_ns() >= end_ns {
                return false;
            }
            if Instant::now() >= give_up {
                // Should not happen; counted so that a stuck window shows in the report.
                shared.stats.window_stalls.fetch_add(1, Relaxed);
                break;
            }
            let _ = timeout(Duration::from_millis(100), shared.wake[s].notified()).await;
        }
    }
    slot.store(0, Release);
    true
}

/// Connects all clients, `--connect-batch` at a time, client `i` to
/// `targets[shared.server_of(i)]`; stops at the first failing batch.
async fn connect_all(
    shared: &Arc<Shared>,
    targets: &[Arc<Target>],
    args: &Args,
) -> (Vec<Writer>, Vec<JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + CONNECT_PHASE_TIMEOUT;
    let (mut writers, mut tasks) = (Vec::new(), Vec::new());
    for first in (0..args.clients).step_by(args.connect_batch) {
        let mut ready = Vec::new();
        for idx in first..args.clients.min(first + args.connect_batch) {
            let (tx, rx) = oneshot::channel();
            tasks.push(tokio::spawn(client_task(
                shared.clone(),
                targets[shared.server_of(idx)].clone(),
                idx,
                tx,
            )));
            ready.push(rx);
        }
        for rx in ready {
            match timeout_at(deadline, rx).await {
                Ok(Ok(Ok(writer))) => writers.push(writer),
                Ok(Ok(Err(reason))) => shared.error(format!("connect failed: {reason}")),
                Ok(Err(_)) => shared.error("client task ended while connecting".into()),
                Err(_) => {
                    shared.error("connect phase took over 120 s".into());
                    return (writers, tasks);
                }
            }
        }
        if writers.len() < tasks.len() {
            break; // no point connecting more: the run will not start
        }
    }
    (writers, tasks)
}

/// Warmup, then the measured phase, then the drain. Returns the CPU seconds over the
/// measured phase of each server (in `--server-pid` order) and of loadgen, and the write
/// system calls the servers made in it (summed).
async fn run_load(
    shared: &Arc<Shared>,
    args: &Arc<Args>,
    writers: &[Writer],
) -> (Vec<Option<f64>>, Option<f64>, Option<u64>) {
    let measure_start = shared.now_ns() + (args.warmup * 1e9) as u64;
    let measure_end = measure_start + (args.duration * 1e9) as u64;
    shared.stats.measure_start_ns.store(measure_start, Relaxed);
    shared.stats.measure_end_ns.store(measure_end, Relaxed);
    shared.set_phase(WARMUP);
    let senders: Vec<_> = (0..args.senders)
        .map(|s| {
            tokio::spawn(sender_task(
                shared.clone(),
                s,
                writers[s].clone(),
                args.clone(),
            ))
        })
        .collect();
    sleep_until(shared.at(measure_start)).await;
    shared.set_phase(MEASURE);
    let servers: Vec<String> = args.server_pids.iter().map(u32::to_string).collect();
    let ticks = || {
        let each: Vec<_> = servers.iter().map(|pid| cpu_ticks(pid)).collect();
        (each, cpu_ticks("self"))
    };
    let writes = || {
        let sum = || {
            servers
                .iter()
                .map(|pid| write_syscalls(pid))
                .sum::<Option<u64>>()
        };
        (!servers.is_empty()).then(sum).flatten()
    };
    let (before, writes_before) = (ticks(), writes());
    sleep_until(shared.at(measure_end)).await;
    let (after, writes_after) = (ticks(), writes());
    shared.set_phase(DRAINING);
    for sender in senders {
        let abort = sender.abort_handle();
        if timeout(Duration::from_secs(2), sender).await.is_err() {
            abort.abort(); // stuck writing to a server that stopped reading
        }
    }
    drain(shared).await;
    let clk_tck = clock_ticks();
    let secs = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / clk_tck);
    let each = (before.0.iter().zip(&after.0))
        .map(|(&a, &b)| secs(a, b))
        .collect();
    let writes = writes_after
        .zip(writes_before)
        .map(|(a, b)| a.saturating_sub(b));
    (each, secs(before.1, after.1), writes)
}

/// Waits (at most `DRAIN`) until everything sent has reached every live client of its room.
async fn drain(shared: &Shared) {
    let deadline = Instant::now() + DRAIN;
    let stats = &shared.stats;
    while Instant::now() < deadline {
        let expected: u64 = (shared.rooms.iter())
            .map(|room| room.sent_total.load(Acquire) * u64::from(room.live.load(Acquire)))
            .sum();
        if stats.received_total.load(Acquire) >= expected {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Closes every connection with a close frame, then waits (bounded) for the client tasks.
async fn shutdown(shared: &Shared, writers: Vec<Writer>, tasks: Vec<JoinHandle<()>>) {
    shared.stats.stopping.store(true, Release);
    shared.set_phase(CLOSING);
    for (i, writer) in writers.into_iter().enumerate() {
        tokio::spawn(async move {
            let mut frame = Vec::new();
            push_frame(&mut frame, 0x8, &1000u16.to_be_bytes(), seed(i as u64));
            let close = async { writer.lock().await.write_all(&frame).await };
            let _ = timeout(Duration::from_secs(2), close).await;
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for task in tasks {
        let abort = task.abort_handle();
        if timeout_at(deadline, task).await.is_err() {
            abort.abort();
        }
    }
}

async fn progress(shared: Arc<Shared>, clients: usize, duration: f64) {
    let stats = &shared.stats;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let since = shared
            .now_ns()
            .saturating_sub(stats.phase_start_ns.load(Relaxed));
        let t = since as f64 / 1e9;
        let connected = stats.connected.load(Relaxed);
        let line = match stats.phase.load(Relaxed) {
            CONNECT => format!("connected {connected}/{clients} ({t:.1} s)"),
            SETTLING => format!("connected {connected}/{clients}, settling"),
            HOLD => format!(
                "idle {t:.1}/{duration} s, {} connected",
                stats.live.load(Relaxed)
            ),
            WARMUP => format!("warmup {t:.1} s, sent {}", stats.sent_total.load(Relaxed)),
            MEASURE => {
                let rate = stats.deliveries.load(Relaxed) as f64 / t.max(1e-3);
                format!("run {t:.1}/{duration} s, {rate:.0} deliveries/s")
            }
            DRAINING => format!("draining ({t:.1} s)"),
            _ => "closing".into(),
        };
        eprint!("\r{line:<60}");
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => Arc::new(args),
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("failed to build the tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the phases measured, beyond the shared counters.
#[derive(Default)]
struct Measured {
    connect_s: f64,
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
    rss_end: Option<u64>,
    /// After every client has closed and the servers have let them go.
    rss_after_close: Option<u64>,
    /// Summed over the servers; `None` unless every one of them could be read.
    server_cpu_s: Option<f64>,
    server_cpu_s_each: Vec<Option<f64>>,
    loadgen_cpu_s: Option<f64>,
    /// Write system calls of the servers in the measured phase (`syscw` of /proc/PID/io).
    server_writes: Option<u64>,
}

/// Runs all phases and reports; `Ok(false)` if a client failed to connect or was dropped.
async fn run(args: Arc<Args>) -> Result<bool, Box<dyn Error>> {
    let mut targets = Vec::new();
    for url in &args.urls {
        targets.push(Arc::new(resolve_target(url, &args).await?));
    }
    let shared = Arc::new(Shared::new(&args));
    let display =
        (!args.quiet).then(|| tokio::spawn(progress(shared.clone(), args.clients, args.duration)));
    // Summed over the servers; `None` without pids or when one cannot be read.
    let pids = &args.server_pids;
    let rss = || {
        let sum = || pids.iter().map(|&pid| rss_kib(pid)).sum();
        (!pids.is_empty()).then(sum).flatten()
    };
    let fds = || pids.iter().map(|&pid| open_fds(pid)).sum::<Option<usize>>();
    let fds_before = fds();
    let mut m = Measured {
        rss_before: rss(),
        ..Measured::default()
    };

    let (writers, tasks) = connect_all(&shared, &targets, &args).await;
    m.connect_s = shared.now_ns() as f64 / 1e9;
    if writers.len() == args.clients {
        shared.set_phase(SETTLING);
        sleep(SETTLE).await;
        m.rss_connected = rss();
        if args.control {
            shared.set_phase(HOLD);
            control(&shared, &args, &writers).await;
        } else if args.idle {
            shared.set_phase(HOLD);
            sleep(Duration::from_secs_f64(args.duration)).await;
        } else {
            (m.server_cpu_s_each, m.loadgen_cpu_s, m.server_writes) =
                run_load(&shared, &args, &writers).await;
            let each = &m.server_cpu_s_each;
            m.server_cpu_s = (!each.is_empty())
                .then(|| each.iter().copied().sum())
                .flatten();
        }
        m.rss_end = rss();
    }
    shutdown(&shared, writers, tasks).await;
    if !pids.is_empty() {
        m.rss_after_close = rss_after_close(&rss, &fds, fds_before).await;
    }
    if let Some(display) = display {
        display.abort();
        eprintln!();
    }
    Ok(report(&args, &shared, &m))
}

/// `--control`: the connected clients idle while stdin orders probes (a message from client
/// 0, timed to each client's receipt), until `quit` or the end of stdin. Every command is
/// answered by one JSON line on stdout, so a driving script can wait for it.
async fn control(shared: &Shared, args: &Args, writers: &[Writer]) {
    use tokio::io::AsyncBufReadExt;

    println!(
        "{{\"ready\":true,\"clients\":{},\"first_id\":{}}}",
        writers.len(),
        args.first_id
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut rng = seed(0x9b0b);
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |word: &str| word.parse::<u64>().ok();
        match words.as_slice() {
            ["send", id] if number(id).is_some_and(|id| id <= u32::MAX.into()) => {
                let sent_ns = wall_ns();
                let mut text = format!("probe {id} {sent_ns} ");
                let pad = args.size.saturating_sub(text.len());
                text.extend(std::iter::repeat_n('x', pad));
                let mut frame = Vec::new();
                push_frame(&mut frame, 0x1, text.as_bytes(), xorshift(&mut rng));
                let written = writers[0].lock().await.write_all(&frame).await;
                let error = written.err().map(|e| json_str(&e.to_string()));
                println!(
                    "{{\"sent\":{id},\"send_ns\":{sent_ns},\"error\":{}}}",
                    opt(error)
                );
            }
            ["wait", id, ms] if number(id).is_some() && number(ms).is_some() => {
                let id = number(id)
                    .and_then(|id| u32::try_from(id).ok())
                    .unwrap_or(0);
                let deadline = Instant::now() + Duration::from_millis(number(ms).unwrap_or(0));
                let had =
                    || (shared.probes.lock().expect("probes lock").get(&id)).map_or(0, Vec::len);
                let live = || shared.stats.live.load(Acquire) as usize;
                // Arrival times are the clients' own stamps: polling only decides when to answer.
                while had() < live() && Instant::now() < deadline {
                    sleep(Duration::from_millis(1)).await;
                }
                let mut latencies = (shared.probes.lock().expect("probes lock"))
                    .remove(&id)
                    .unwrap_or_default();
                latencies.sort_unstable();
                let at = |q: f64| {
                    let last = latencies.len().checked_sub(1)?;
                    latencies.get((last as f64 * q).round() as usize).copied()
                };
                println!(
                    "{{\"probe\":{id},\"received\":{},\"clients\":{},\"p50_us\":{},\
                     \"p99_us\":{},\"max_us\":{}}}",
                    latencies.len(),
                    live(),
                    opt(at(0.5)),
                    opt(at(0.99)),
                    opt(at(1.0))
                );
            }
            ["stats"] => println!(
                "{{\"pings\":{},\"live\":{}}}",
                shared.stats.pings.load(Acquire),
                shared.stats.live.load(Acquire)
            ),
            ["quit"] => break,
            _ => println!(
                "{{\"error\":{}}}",
                json_str(&format!("unknown command {line:?}"))
            ),
        }
    }
}

/// The servers' RSS once the closes have been processed: once they hold no more sockets
/// than before the run (at most two minutes), then unchanged (within 1%) over six seconds
/// (a server may give memory back some seconds later), or after 30 more.
async fn rss_after_close(
    rss: &impl Fn() -> Option<u64>,
    fds: &impl Fn() -> Option<usize>,
    fds_before: Option<usize>,
) -> Option<u64> {
    for _ in 0..1200 {
        match (fds(), fds_before) {
            (Some(now), Some(before)) if now > before => sleep(Duration::from_millis(100)).await,
            _ => break,
        }
    }
    let mut last = rss()?;
    let mut steady = 0;
    for _ in 0..30 {
        sleep(SETTLE).await;
        let now = rss()?;
        steady = if now.abs_diff(last) * 100 <= last {
            steady + 1
        } else {
            0
        };
        last = now;
        if steady == 6 {
            break;
        }
    }
    Some(last)
}

/// Prints the summary to stderr and the JSON line to stdout; returns whether all went well.
fn report(args: &Args, shared: &Shared, m: &Measured) -> bool {
    let st = &shared.stats;
    let n = args.clients as u64;
    let sent = st.sent_measured.load(Acquire);
    let deliveries = st.deliveries.load(Acquire);
    let received = st.received_total.load(Acquire);
    // Loss is over everything sent (warmup too), against every client of its room (all of
    // them connected, or the run did not start).
    let expected_total: u64 = (shared.rooms.iter())
        .map(|room| room.sent_total.load(Acquire) * room.members)
        .sum();
    let lost = expected_total.saturating_sub(received);
    let expected: u64 = (shared.rooms.iter())
        .map(|room| room.sent_measured.load(Acquire) * room.members)
        .sum();
    let wrong_room = st.wrong_room.load(Acquire);
    let per_s = deliveries as f64 / args.duration;
    let all = percentiles(&merged(shared.hist.iter().flatten()));
    let [same, cross] = [SAME, CROSS].map(|path| percentiles(&merged(&shared.hist[path])));
    let [p50, p90, p99, p999, max, _] = &all;
    let rss_delta = m
        .rss_connected
        .zip(m.rss_before)
        .map(|(c, b)| c as f64 - b as f64);
    let per_conn = num(rss_delta.map(|kib| kib * 1024.0 / n as f64), 0);
    // The same at the end of the run: in idle mode, once the connect storm has settled.
    let per_conn_end = num(
        m.rss_end
            .zip(m.rss_before)
            .map(|(e, b)| (e as f64 - b as f64) * 1024.0 / n as f64),
        0,
    );
    let per_million = m
        .server_cpu_s
        .filter(|_| deliveries > 0)
        .map(|c| c * 1e6 / deliveries as f64);
    let (per_million, cpu) = (num(per_million, 4), num(m.server_cpu_s, 3));
    let [rss0, rss1, rss2, rss3] =
        [m.rss_before, m.rss_connected, m.rss_end, m.rss_after_close].map(opt);
    let errors = shared.errors.lock().expect("errors lock");
    let errors: Vec<String> = (errors.iter())
        .map(|(e, &count)| {
            if count > 1 {
                format!("{count} x {e}")
            } else {
                e.clone()
            }
        })
        .collect();
    let mode = match (args.idle, args.rate == 0.0) {
        (true, _) => "idle",
        (false, true) => "closed-loop",
        (false, false) => "open-loop",
    };

    let connected = st.connected.load(Relaxed);
    eprintln!(
        "{mode}: {connected}/{n} clients connected in {:.2} s",
        m.connect_s
    );
    if !args.idle && u64::from(connected) == n {
        let secs = args.duration;
        eprintln!(
            "  {sent} broadcasts in {secs} s: {deliveries} deliveries, {per_s:.0}/s, lost {lost}"
        );
        if args.rooms > 1 {
            eprintln!(
                "  over {} rooms: {expected} deliveries expected, {wrong_room} from another room",
                args.rooms
            );
        }
        eprintln!("  latency us: p50 {p50} p90 {p90} p99 {p99} p99.9 {p999} max {max}");
    }
    if args.urls.len() > 1 && !args.idle && u64::from(connected) == n {
        let [p50, _, p99, _, max, _] = &same;
        eprintln!("  through the sender's server: p50 {p50} p99 {p99} max {max}");
        let [p50, _, p99, _, max, _] = &cross;
        eprintln!("  through another server:      p50 {p50} p99 {p99} max {max}");
    }
    if !args.server_pids.is_empty() {
        eprintln!(
            "  server RSS KiB: {rss0} before, {rss1} connected, {rss2} at end, {rss3} after all \
             closed ({per_conn} B/conn connected, {per_conn_end} at end)"
        );
    }
    if m.server_cpu_s.is_some() {
        eprintln!("  server CPU: {cpu} s measured, {per_million} s per million deliveries");
    }
    if let Some(writes) = m.server_writes.filter(|&w| w > 0) {
        let per_write = deliveries as f64 / writes as f64;
        eprintln!("  server write system calls: {writes}, {per_write:.2} deliveries per write");
    }
    let cpu_each: Vec<String> = m.server_cpu_s_each.iter().map(|&c| num(c, 3)).collect();
    if cpu_each.len() > 1 {
        eprintln!("  server CPU by server: {} s", cpu_each.join(" + "));
    }
    for e in &errors {
        eprintln!("  error: {e}");
    }

    let errors_json: Vec<String> = errors.iter().map(|e| json_str(e)).collect();
    let fields = [
        ("server_url", json_str(&args.url)),
        ("mode", json_str(mode)),
        ("clients", n.to_string()),
        ("senders", args.senders.to_string()),
        ("rate", args.rate.to_string()),
        ("window", args.window.to_string()),
        ("size", args.size.to_string()),
        ("duration_s", args.duration.to_string()),
        ("warmup_s", args.warmup.to_string()),
        ("connect_s", format!("{:.3}", m.connect_s)),
        ("sent", sent.to_string()),
        ("sent_total", st.sent_total.load(Acquire).to_string()),
        ("expected_deliveries", expected.to_string()),
        ("deliveries", deliveries.to_string()),
        ("received_total", received.to_string()),
        ("lost", lost.to_string()),
        ("gaps", st.gaps.load(Acquire).to_string()),
        ("reordered", st.reordered.load(Acquire).to_string()),
        ("window_stalls", st.window_stalls.load(Acquire).to_string()),
        ("deliveries_per_s", format!("{per_s:.1}")),
        ("latency_us", latency_json(&all)),
        ("server_rss_kib_before", rss0),
        ("server_rss_kib_connected", rss1),
        ("server_rss_kib_end", rss2),
        ("server_rss_kib_after_close", rss3),
        ("rss_per_conn_bytes", per_conn),
        ("rss_per_conn_end_bytes", per_conn_end),
        ("server_cpu_s", cpu),
        ("cpu_s_per_million", per_million),
        ("loadgen_cpu_s", num(m.loadgen_cpu_s, 3)),
        (
            "deflate_agreed",
            st.deflate_agreed.load(Acquire).to_string(),
        ),
        ("wire_bytes", st.wire_bytes.load(Acquire).to_string()),
        (
            "wire_bytes_per_delivery",
            if deliveries > 0 {
                format!(
                    "{:.1}",
                    st.wire_bytes.load(Acquire) as f64 / deliveries as f64
                )
            } else {
                "null".into()
            },
        ),
        ("server_write_syscalls", opt(m.server_writes)),
        (
            "deliveries_per_server_write",
            num(
                m.server_writes
                    .filter(|&w| w > 0)
                    .map(|w| deliveries as f64 / w as f64),
                2,
            ),
        ),
        ("http2", args.http2.to_string()),
        ("signalr", args.signalr.to_string()),
        ("errors", format!("[{}]", errors_json.join(","))),
        ("servers", args.urls.len().to_string()),
        ("server_cpu_s_each", format!("[{}]", cpu_each.join(","))),
        ("latency_same_server_us", latency_json(&same)),
        ("latency_cross_server_us", latency_json(&cross)),
        ("rooms", args.rooms.to_string()),
        ("wrong_room", wrong_room.to_string()),
        ("pings", st.pings.load(Acquire).to_string()),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    println!("{{{}}}", body.join(","));
    errors.is_empty()
}

/// One histogram from the given shards.
fn merged<'a>(shards: impl IntoIterator<Item = &'a Mutex<Histogram<u64>>>) -> Histogram<u64> {
    let mut hist = new_histogram();
    for shard in shards {
        hist.add(&*shard.lock().expect("histogram lock"))
            .expect("same bounds");
    }
    hist
}

/// p50, p90, p99, p99.9, max and mean in microseconds, as JSON numbers (`null` if empty).
fn percentiles(hist: &Histogram<u64>) -> [String; 6] {
    let some = !hist.is_empty();
    let [p50, p90, p99, p999, max] =
        [0.5, 0.9, 0.99, 0.999, 1.0].map(|q| opt(some.then(|| hist.value_at_quantile(q))));
    [p50, p90, p99, p999, max, num(some.then(|| hist.mean()), 1)]
}

fn latency_json([p50, p90, p99, p999, max, mean]: &[String; 6]) -> String {
    format!(
        "{{\"p50\":{p50},\"p90\":{p90},\"p99\":{p99},\"p999\":{p999},\"max\":{max},\"mean\":{mean}}}"
    )
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or("null".into(), |v| format!("{v:.decimals$}"))
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => out.extend(['\\', c]),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out + "\""
}

/// The server's resident memory, from /proc/PID/status.
/// Open file descriptors of a process (sockets included).
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Write system calls so far (`write`, `writev`, `sendmsg`...): `syscw` in /proc/PID/io.
fn write_syscalls(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = io.lines().find(|l| l.starts_with("syscw:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime in clock ticks: fields 14 and 15 of /proc/PID/stat (after `(comm)`).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output();
    let text = out.ok().and_then(|o| String::from_utf8(o.stdout).ok());
    text.and_then(|t| t.trim().parse().ok()).unwrap_or(100.0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn seed(salt: u64) -> u64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    let nanos = now.map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (chunk.iter().enumerate()).fold(0, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            let digit = ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char;
            out.push(if i <= chunk.len() { digit } else { '=' });
        }
    }
    out
}

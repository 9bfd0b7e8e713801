//! Broadcast fan-out to N real loopback clients, with a baseline measured in the same run.
//!
//! N tokio-tungstenite clients connect over 127.0.0.1 TCP and count every text message they
//! receive. One iteration broadcasts a burst of B identical text messages and stops the clock
//! once all N * B deliveries have reached the clients, so criterion's throughput figure is
//! **deliveries per second** (higher is better). Servers and clients share one multi-thread
//! tokio runtime with 2 workers; the bench thread broadcasts. The burst B is chosen per group
//! (see [`burst_for`]) to keep each iteration in the tens of milliseconds.
//!
//! # Groups
//!
//! **`fanout/<size>B/<n>`**, for payloads of 64 and 4096 bytes and N = 10, 100, 1000 and
//! 5000 clients, holds two functions, measured one after the other with the same number of
//! clients, payload and runtime (the first server's clients disconnect before the second's
//! connect):
//!
//! - `websocket_handler`: a hyper 1.x server whose handler adds every connection to a
//!   [`WebSocketCollection`] in `on_open`; the bench calls `collection.broadcast(payload)`.
//!   Each broadcast queues one encoded frame per connection; idle connections are written
//!   by a few flush tasks with vectored writes.
//! - `baseline_broadcast_channel`: the axum-chat pattern without axum: `accept_async` with
//!   tungstenite's default config, a `tokio::sync::broadcast` channel, and per connection a
//!   task doing `ws.send(Message::Text(rx.recv().await?))`, i.e. one flush per message. The
//!   channel carries the ref-counted `Utf8Bytes`, so the baseline copies no payload either.
//!
//! Read the result as the ratio of the two throughputs within a group:
//! `websocket_handler / baseline_broadcast_channel` above 1 means the crate delivers faster
//! than the hand-written broadcast-channel server on this machine.
//!
//! **`churn/1000`** measures only the crate's server, with 1000 stable clients receiving
//! bursts of 64-byte messages:
//!
//! - `no_churn`: nothing else happens.
//! - `with_churn`: meanwhile [`CHURN_LOOPS`] background loops connect another client to the
//!   same collection, wait until the server has added it (it greets every connection with a
//!   binary message after adding it), and drop it, as fast as they can. Churn clients receive
//!   broadcasts too, but only the stable clients' deliveries are counted. The bench prints
//!   how many churn connects per second happened while `with_churn` ran.
//!
//! Read it as the ratio `with_churn / no_churn`: close to 1 means connects and disconnects
//! do not stall the broadcast; well below 1 means they do (or that the churn's own handshakes
//! and extra deliveries took the shared cores, which the printed connect rate helps judge).
//!
//! `backplane/1000` broadcasts 64 B to 1000 clients from a room without a backplane
//! (`no_backplane`) and from a room on a `MemoryBackplane` with a peer room (`memory_backplane`),
//! where each broadcast is also put in an envelope, delivered to the peer and decoded. Read it
//! as `memory_backplane / no_backplane`: close to 1 means the backplane costs local delivery
//! nothing noticeable. (Cross-process figures through Redis are in `bench/backplane.py`.)
//!
//! Absolute numbers depend heavily on the machine (clients and servers share its cores); the
//! ratios are what to compare.
//!
//! # Running
//!
//! `cargo bench --bench fanout` runs every group (one to two minutes on 2 cores). Each
//! group ends with a line giving its ratio, for example
//! `fanout/64B/1000: websocket_handler / baseline_broadcast_channel = 2.61x (753k / 289k
//! deliveries/s; one elem = one message delivered to one client)`: criterion's `elem/s` is
//! deliveries per second. The defaults are short (10 samples, 0.5 s warm-up, 2 s of
//! measurement per function); criterion's flags override them, e.g.
//! `cargo bench --bench fanout -- --measurement-time 10`. Run one group with a filter, e.g.
//! `cargo bench --bench fanout -- fanout/64B/1000` or `cargo bench --bench fanout -- churn`;
//! clients connect only for the benchmarks that the filter selects. N = 5000 needs 10 000
//! sockets in this one process: the bench raises the soft open-files limit up to the hard
//! one by itself, and skips (saying so) what does not fit under it.
//!
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use websocket_handler::backplane::MemoryBackplane;
use websocket_handler::{
    Bytes, CloseFrame, Connection, Utf8Bytes, WebSocketCollection, WebSocketHandler,
    WebSocketServer,
};

/// Payload sizes of the `fanout` groups, in bytes.
const PAYLOAD_SIZES: [usize; 2] = [64, 4096];

/// Client counts of the `fanout` groups.
const CLIENT_COUNTS: [usize; 4] = [10, 100, 1000, 5000];

/// Stable clients of the `churn` group.
const CHURN_CLIENTS: usize = 1000;

/// Payload size of the `churn` group, in bytes.
const CHURN_PAYLOAD: usize = 64;

/// Clients and payload size of the `backplane` group.
const BACKPLANE_CLIENTS: usize = 1000;
const BACKPLANE_PAYLOAD: usize = 64;

/// Messages per burst in the `churn` group: long enough that many churn connects overlap
/// each iteration.
const CHURN_BURST: usize = 20;

/// Concurrent connect-and-drop loops while `churn/<n>/with_churn` runs.
const CHURN_LOOPS: usize = 8;

/// What the server sends a connection once it is in the collection; the churn clients wait
/// for it. Binary, so that the stable clients, which count text messages, ignore it.
const GREETING: &[u8] = b"joined";

/// Capacity of the baseline's broadcast channel; every burst is far smaller, and each
/// iteration waits for all deliveries, so no receiver can lag.
const CHANNEL_CAPACITY: usize = 4096;

/// Clients connected concurrently while setting up.
const CONNECT_BATCH: usize = 100;

/// File descriptors needed besides two sockets per client (runtime, listeners, stdio).
const FD_SLACK: usize = 256;

/// Upper bound for any single wait, so that a broken run fails with a message instead of
/// hanging.
const WAIT: Duration = Duration::from_secs(60);

/// Messages broadcast per iteration to `n` clients with `size`-byte payloads: about 8000
/// small or 4000 large deliveries, so that an iteration of the slower server stays in the
/// tens of milliseconds and the whole run within a few minutes, but at most 100 messages.
fn burst_for(n: usize, size: usize) -> usize {
    let deliveries = if size <= 1024 { 8000 } else { 4000 };
    (deliveries / n).clamp(1, 100)
}

/// A text payload of `size` bytes, as each server's text type: both reference-counted, so
/// neither server copies it per client.
#[derive(Clone)]
struct Payload {
    ours: Utf8Bytes,
    tungstenite: tokio_tungstenite::tungstenite::Utf8Bytes,
}

fn payload(size: usize) -> Payload {
    let text: String = "0123456789abcdef".chars().cycle().take(size).collect();
    Payload {
        ours: Utf8Bytes::from(text.clone()),
        tungstenite: text.into(),
    }
}

/// Whether this process may open the sockets of `clients` clients and their server side:
/// raises the soft open-files limit up to the hard one if needed (no privilege needed), and
/// says so when even that is too low.
fn fd_limit_allows(clients: usize) -> bool {
    let needed = (2 * clients + FD_SLACK) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return true; // unknown: let connect errors speak
        }
        if limit.rlim_cur >= needed {
            return true;
        }
        if limit.rlim_max >= needed {
            let raised = libc::rlimit {
                rlim_cur: needed,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return true;
            }
        }
    }
    eprintln!(
        "skipping {clients} clients: they need {needed} file descriptors and the limit is {} \
         (hard {}); raise it with `ulimit -n {needed}` to run them",
        limit.rlim_cur, limit.rlim_max
    );
    false
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime")
}

/// A wake-up for one waiter, which re-checks its condition after every event.
#[derive(Default)]
struct Events {
    notify: Notify,
}

impl Events {
    fn signal(&self) {
        // `notify_one` stores a permit if nobody waits yet, so no event is lost.
        self.notify.notify_one();
    }

    /// Waits (at most [`WAIT`]) until `ready()` holds; `what` names the wait in the panic.
    async fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let wait = async {
            while !ready() {
                self.notify.notified().await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"));
    }
}

/// Delivery counting shared by one set of clients.
#[derive(Default)]
struct Deliveries {
    received: AtomicU64,
    /// The count at which the current iteration is complete.
    target: AtomicU64,
    done: Events,
}

impl Deliveries {
    fn record(&self) {
        let count = self.received.fetch_add(1, Ordering::AcqRel) + 1;
        if count == self.target.load(Ordering::Acquire) {
            self.done.signal();
        }
    }

    /// Sets the target for `expected` more deliveries. Call only while no delivery is in
    /// flight (before a burst, after the previous one fully arrived).
    fn arm(&self, expected: u64) -> u64 {
        let target = self.received.load(Ordering::Acquire) + expected;
        self.target.store(target, Ordering::Release);
        target
    }

    async fn wait(&self, target: u64) {
        let received = &self.received;
        self.done
            .wait_until("all deliveries of a burst", || {
                received.load(Ordering::Acquire) >= target
            })
            .await;
    }
}

type ClientStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects one client to `url`, or panics saying why.
async fn connect_client(url: String) -> ClientStream {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("timed out connecting a client")
        .expect("client failed to connect (out of file descriptors, see `ulimit -n`, or ports?)");
    ws
}

/// N connected clients, each a task counting the text messages it receives.
struct Clients {
    tasks: Vec<JoinHandle<()>>,
    deliveries: Arc<Deliveries>,
}

impl Clients {
    async fn connect(addr: SocketAddr, n: usize) -> Clients {
        let deliveries = Arc::new(Deliveries::default());
        let mut tasks = Vec::with_capacity(n);
        let url = format!("ws://{addr}/fanout");
        while tasks.len() < n {
            let batch = CONNECT_BATCH.min(n - tasks.len());
            let connecting: Vec<_> = (0..batch)
                .map(|_| tokio::spawn(connect_client(url.clone())))
                .collect();
            for handle in connecting {
                let mut ws = handle.await.expect("client connect task panicked");
                let deliveries = deliveries.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_text() {
                            deliveries.record();
                        }
                    }
                }));
            }
        }
        Clients { tasks, deliveries }
    }

    /// Drops every client (its socket closes with its task).
    async fn disconnect(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What the benchmark needs from a server under test.
trait Server {
    fn addr(&self) -> SocketAddr;

    /// Waits until the server holds exactly `n` connections.
    async fn wait_for_members(&self, n: usize);

    /// Broadcasts `payload` once, asserting that at least `n` connections were sent it.
    fn broadcast(&self, payload: &Payload, n: usize);
}

// ---- websocket_handler ----------------------------------------------------------------------

struct Member {
    room: WebSocketCollection,
    events: Arc<Events>,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        // Fails only if the client is already gone, which needs no greeting.
        let _ = conn.send(Bytes::from_static(GREETING));
        self.events.signal();
    }

    async fn on_close(&mut self, _conn: &Connection, _frame: &CloseFrame) {
        self.events.signal();
    }
}

/// The crate's server: hyper 1.x http1 with upgrades, every connection in `room`.
struct CrateServer {
    addr: SocketAddr,
    room: WebSocketCollection,
    events: Arc<Events>,
    server: WebSocketServer,
}

impl CrateServer {
    async fn start() -> CrateServer {
        Self::start_in(WebSocketCollection::new()).await
    }

    /// A server whose connections join `room`.
    async fn start_in(room: WebSocketCollection) -> CrateServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the websocket_handler server");
        let addr = listener.local_addr().expect("server local addr");
        let events = Arc::new(Events::default());
        let server = WebSocketServer::new();
        let (accept_room, accept_events, accept_server) =
            (room.clone(), events.clone(), server.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (room, events, server) = (
                    accept_room.clone(),
                    accept_events.clone(),
                    accept_server.clone(),
                );
                let service = service_fn(move |req: Request<Incoming>| {
                    let member = Member {
                        room: room.clone(),
                        events: events.clone(),
                    };
                    let response = server.upgrade(req, member);
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        CrateServer {
            addr,
            room,
            events,
            server,
        }
    }
}

impl Server for CrateServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn wait_for_members(&self, n: usize) {
        let room = &self.room;
        self.events
            .wait_until(&format!("{n} websocket_handler connections"), || {
                room.len() == n
            })
            .await;
    }

    fn broadcast(&self, payload: &Payload, n: usize) {
        // Churn clients may add to the count, so it can exceed `n`.
        let queued = self.room.broadcast(payload.ours.clone());
        assert!(
            queued >= n,
            "websocket_handler queued a broadcast to {queued} connections, fewer than the \
             {n} clients (a queue was full or a connection closed)"
        );
    }
}

// ---- baseline: tokio::sync::broadcast + accept_async -----------------------------------------

/// The axum-chat pattern without axum: one broadcast channel, one send per message.
struct BaselineServer {
    addr: SocketAddr,
    tx: broadcast::Sender<tokio_tungstenite::tungstenite::Utf8Bytes>,
    events: Arc<Events>,
    lagged: Arc<AtomicBool>,
}

impl BaselineServer {
    async fn start() -> BaselineServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the baseline server");
        let addr = listener.local_addr().expect("server local addr");
        let (tx, _) =
            broadcast::channel::<tokio_tungstenite::tungstenite::Utf8Bytes>(CHANNEL_CAPACITY);
        let events = Arc::new(Events::default());
        let lagged = Arc::new(AtomicBool::new(false));
        let (accept_tx, accept_events, accept_lagged) =
            (tx.clone(), events.clone(), lagged.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (tx, events, lagged) = (
                    accept_tx.clone(),
                    accept_events.clone(),
                    accept_lagged.clone(),
                );
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let (mut sender, mut receiver) = ws.split();
                    let mut rx = tx.subscribe();
                    events.signal();
                    let mut send_task = tokio::spawn(async move {
                        loop {
                            match rx.recv().await {
                                Ok(text) => {
                                    if sender.send(WsMessage::Text(text)).await.is_err() {
                                        break;
                                    }
                                }
                                Err(broadcast::error::RecvError::Lagged(_)) => {
                                    lagged.store(true, Ordering::Relaxed);
                                }
                                Err(broadcast::error::RecvError::Closed) => break,
                            }
                        }
                    });
                    let mut recv_task =
                        tokio::spawn(
                            async move { while let Some(Ok(_)) = receiver.next().await {} },
                        );
                    let send_ended = tokio::select! {
                        _ = &mut send_task => true,
                        _ = &mut recv_task => false,
                    };
                    // Stop the other task; once it has ended, the receiver is dropped.
                    let other = if send_ended { recv_task } else { send_task };
                    other.abort();
                    let _ = other.await;
                    events.signal();
                });
            }
        });
        BaselineServer {
            addr,
            tx,
            events,
            lagged,
        }
    }
}

impl Server for BaselineServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn wait_for_members(&self, n: usize) {
        let tx = &self.tx;
        self.events
            .wait_until(&format!("{n} baseline connections"), || {
                tx.receiver_count() == n
            })
            .await;
    }

    fn broadcast(&self, payload: &Payload, n: usize) {
        let receivers = self
            .tx
            .send(payload.tungstenite.clone())
            .expect("the baseline broadcast channel has no receivers");
        assert_eq!(
            receivers, n,
            "baseline broadcast reached {receivers} of {n} receivers"
        );
        assert!(
            !self.lagged.load(Ordering::Relaxed),
            "a baseline receiver lagged; raise CHANNEL_CAPACITY or lower the burst"
        );
    }
}

// ---- churn ----------------------------------------------------------------------------------

/// Background loops that each connect a client, wait for the server's greeting (sent once
/// the connection is in the collection) and drop it, over and over.
struct Churn {
    loops: Vec<JoinHandle<()>>,
    connects: Arc<AtomicU64>,
    started: Instant,
}

impl Churn {
    /// Starts `loops` loops against `addr`. Call from within the runtime.
    fn start(addr: SocketAddr, loops: usize) -> Churn {
        let connects = Arc::new(AtomicU64::new(0));
        let url = format!("ws://{addr}/churn");
        let loops = (0..loops)
            .map(|_| tokio::spawn(Self::churn(url.clone(), connects.clone())))
            .collect();
        Churn {
            loops,
            connects,
            started: Instant::now(),
        }
    }

    async fn churn(url: String, connects: Arc<AtomicU64>) {
        loop {
            let mut ws = connect_client(url.clone()).await;
            loop {
                let message = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("timed out waiting for the server to greet a churn client");
                match message {
                    Some(Ok(message)) if message.is_binary() => break,
                    // A broadcast that reached the churn client first: not counted.
                    Some(Ok(_)) => {}
                    other => {
                        panic!("a churn client lost its connection before the greeting: {other:?}")
                    }
                }
            }
            connects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops the loops (re-raising a panic from any of them); returns the connects that
    /// completed and how long the churn ran.
    async fn stop(self) -> (u64, Duration) {
        let elapsed = self.started.elapsed();
        for task in &self.loops {
            task.abort();
        }
        for task in self.loops {
            if let Err(error) = task.await {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
        (self.connects.load(Ordering::Relaxed), elapsed)
    }
}

// ---- the benchmark --------------------------------------------------------------------------

/// Measures `iters` iterations: arm the counter, broadcast `burst` messages, wait for all
/// `n * burst` deliveries.
fn measure(
    rt: &Runtime,
    clients: &Clients,
    iters: u64,
    n: usize,
    burst: usize,
    broadcast: impl Fn(),
) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let start = Instant::now();
            let target = clients.deliveries.arm((n * burst) as u64);
            for _ in 0..burst {
                broadcast();
            }
            clients.deliveries.wait(target).await;
            total += start.elapsed();
        }
        total
    })
}

/// `n` clients of `server`, connected on first use, so that benchmarks that criterion's
/// filter skips connect none.
struct LazyClients<'a, S> {
    rt: &'a Runtime,
    server: &'a S,
    n: usize,
    clients: Option<Clients>,
}

impl<'a, S: Server> LazyClients<'a, S> {
    fn new(rt: &'a Runtime, server: &'a S, n: usize) -> Self {
        LazyClients {
            rt,
            server,
            n,
            clients: None,
        }
    }

    /// The clients, connected and held by the server.
    fn get(&mut self) -> &Clients {
        let (rt, server, n) = (self.rt, self.server, self.n);
        self.clients.get_or_insert_with(|| {
            rt.block_on(async {
                let clients = Clients::connect(server.addr(), n).await;
                server.wait_for_members(n).await;
                clients
            })
        })
    }

    /// Drops the clients, if connected, and waits until the server has let them all go.
    fn finish(self) {
        if let Some(clients) = self.clients {
            self.rt.block_on(async {
                clients.disconnect().await;
                self.server.wait_for_members(0).await;
            });
        }
    }

    /// Benchmarks `name` in `group`: bursts of `burst` broadcasts of `payload`.
    fn bench(&mut self, group: &mut Group<'_>, name: &str, burst: usize, payload: &Payload) {
        let id = format!("{}/{name}", group.name);
        group.group.bench_function(name, |b| {
            let (rt, server, n) = (self.rt, self.server, self.n);
            let clients = self.get();
            b.iter_custom(|iters| {
                let took = measure(rt, clients, iters, n, burst, || {
                    server.broadcast(payload, n)
                });
                tally(&id, iters * (n * burst) as u64, took);
                took
            })
        });
    }
}

/// A criterion group and its name, for the ratio printed when it finishes.
struct Group<'a> {
    name: String,
    group: BenchmarkGroup<'a, criterion::measurement::WallTime>,
}

impl<'a> Group<'a> {
    /// A group whose iterations deliver `deliveries` messages each: criterion's throughput
    /// (`elem/s`) is then deliveries per second.
    fn new(c: &'a mut Criterion, name: String, deliveries: usize) -> Self {
        let mut group = c.benchmark_group(&name);
        group.throughput(Throughput::Elements(deliveries as u64));
        Group { name, group }
    }

    /// Ends the group and prints `numerator / denominator`, their deliveries per second as
    /// measured over every iteration criterion ran (warm-up included, alike for both).
    fn finish(self, numerator: &str, denominator: &str) {
        let Group { name, group } = self;
        group.finish();
        let rate = |function: &str| {
            let tallies = TALLY
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let (deliveries, took) = tallies.get(&format!("{name}/{function}")).copied()?;
            (took > Duration::ZERO).then(|| deliveries as f64 / took.as_secs_f64())
        };
        match (rate(numerator), rate(denominator)) {
            (Some(top), Some(bottom)) => println!(
                "{name}: {numerator} / {denominator} = {:.2}x ({:.0}k / {:.0}k deliveries/s; \
                 one elem = one message delivered to one client)\n",
                top / bottom,
                top / 1e3,
                bottom / 1e3
            ),
            (None, None) => {} // the filter skipped the group
            _ => println!("{name}: no ratio (the filter skipped {numerator} or {denominator})\n"),
        }
    }
}

/// Deliveries and time per benchmark (`group/function`), summed over every iteration.
static TALLY: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn tally(id: &str, deliveries: u64, took: Duration) {
    let mut tallies = TALLY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = tallies.entry(id.to_owned()).or_default();
    entry.0 += deliveries;
    entry.1 += took;
}

/// `fanout/<size>B/<n>`: the crate and the baseline, one after the other.
fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let crate_server = rt.block_on(CrateServer::start());
    let baseline = rt.block_on(BaselineServer::start());

    for size in PAYLOAD_SIZES {
        let payload = payload(size);
        for n in CLIENT_COUNTS {
            if !fd_limit_allows(n) {
                continue;
            }
            let burst = burst_for(n, size);
            assert!(
                burst < CHANNEL_CAPACITY,
                "the baseline would lag: burst {burst} >= capacity {CHANNEL_CAPACITY}"
            );
            let queue = crate_server.server.config().outbound_queue_capacity();
            assert!(
                burst <= queue,
                "websocket_handler would skip clients: burst {burst} > outbound queue {queue}"
            );
            let mut group = Group::new(c, format!("fanout/{size}B/{n}"), n * burst);

            // One server's clients leave before the other's connect.
            let mut clients = LazyClients::new(&rt, &crate_server, n);
            clients.bench(&mut group, "websocket_handler", burst, &payload);
            clients.finish();

            let mut clients = LazyClients::new(&rt, &baseline, n);
            clients.bench(&mut group, "baseline_broadcast_channel", burst, &payload);
            clients.finish();

            group.finish("websocket_handler", "baseline_broadcast_channel");
        }
    }
}

/// `churn/<n>`: the crate's broadcast without and with clients coming and going.
fn churn(c: &mut Criterion) {
    let n = CHURN_CLIENTS;
    if !fd_limit_allows(n + CHURN_LOOPS) {
        return;
    }
    let rt = runtime();
    let server = rt.block_on(CrateServer::start());
    let payload = payload(CHURN_PAYLOAD);
    let mut group = Group::new(c, format!("churn/{n}"), n * CHURN_BURST);

    let mut clients = LazyClients::new(&rt, &server, n);
    clients.bench(&mut group, "no_churn", CHURN_BURST, &payload);

    // Started on first use (after the stable clients have connected), so that a filter that
    // skips `with_churn` starts no churn.
    let mut churn = None;
    let id = format!("{}/with_churn", group.name);
    group.group.bench_function("with_churn", |b| {
        let clients = clients.get();
        churn.get_or_insert_with(|| rt.block_on(async { Churn::start(server.addr, CHURN_LOOPS) }));
        b.iter_custom(|iters| {
            let took = measure(&rt, clients, iters, n, CHURN_BURST, || {
                server.broadcast(&payload, n)
            });
            tally(&id, iters * (n * CHURN_BURST) as u64, took);
            took
        })
    });
    if let Some(churn) = churn {
        let (connects, elapsed) = rt.block_on(churn.stop());
        let rate = connects as f64 / elapsed.as_secs_f64();
        eprintln!(
            "churn/{n}/with_churn: {connects} churn connects in {:.1} s = {rate:.0} connects/s",
            elapsed.as_secs_f64()
        );
        assert!(connects > 0, "no churn connect completed during with_churn");
    }
    clients.finish();
    group.finish("with_churn", "no_churn");
}

/// `backplane/<n>`: what a backplane adds to local delivery. The same broadcast, to a room
/// without a backplane and to a room on a [`MemoryBackplane`] with one other (empty) room
/// on the topic, so each broadcast is also encoded, delivered and decoded once.
fn backplane(c: &mut Criterion) {
    let n = BACKPLANE_CLIENTS;
    let rt = runtime();
    let plain = rt.block_on(CrateServer::start());
    let bus = MemoryBackplane::new();
    let linked = rt.block_on(CrateServer::start_in(WebSocketCollection::with_backplane(
        "bench",
        bus.clone(),
    )));
    let peer = WebSocketCollection::with_backplane("bench", bus);
    let payload = payload(BACKPLANE_PAYLOAD);
    let burst = burst_for(n, BACKPLANE_PAYLOAD);
    let mut group = Group::new(c, format!("backplane/{n}"), n * burst);

    let mut clients = LazyClients::new(&rt, &plain, n);
    clients.bench(&mut group, "no_backplane", burst, &payload);
    clients.finish();

    let mut clients = LazyClients::new(&rt, &linked, n);
    clients.bench(&mut group, "memory_backplane", burst, &payload);
    clients.finish();
    group.finish("memory_backplane", "no_backplane");
    drop(peer);
}

/// Short runs by default (every group takes seconds, with clients over real sockets);
/// criterion's own flags (`--warm-up-time`, `--measurement-time`, `--sample-size`) override
/// these.
fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = fanout, churn, backplane
}
criterion_main!(benches);

//! Broadcast fan-out to N real loopback clients, with a baseline measured in the same run.
//!
//! For N = 10, 100 and 1000, N tokio-tungstenite clients connect over 127.0.0.1 TCP and count
//! every text message they receive. One iteration broadcasts a burst of B identical 64-byte
//! text messages and stops the clock once all N * B deliveries have reached the clients, so
//! criterion's throughput figure is **deliveries per second** (higher is better).
//!
//! Each benchmark group (`fanout/N`) holds two functions, measured one after the other with
//! the same number of clients, payload and runtime (one multi-thread tokio runtime, 2 workers,
//! holding servers and clients; the bench thread broadcasts):
//!
//! - `websocket_handler`: a hyper 1.x server whose handler adds every connection to a
//!   [`WebSocketCollection`] in `on_open`; the bench calls `collection.broadcast(payload)`.
//!   Each connection's writer drains its queue in batches with one flush per batch.
//! - `baseline_broadcast_channel`: the axum-chat pattern without axum: `accept_async` with
//!   tungstenite's default config, a `tokio::sync::broadcast` channel, and per connection a
//!   task doing `ws.send(Message::Text(rx.recv().await?))`, i.e. one flush per message. The
//!   channel carries the ref-counted `Utf8Bytes`, so the baseline copies no payload either.
//!
//! Read the result as the ratio of the two throughputs within a group:
//! `websocket_handler / baseline_broadcast_channel` above 1 means the crate delivers faster
//! than the hand-written broadcast-channel server on this machine. Absolute numbers depend
//! heavily on the machine (clients and servers share its cores); the ratio is what to compare.
//!
//! Run with `cargo bench --bench fanout`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::{
    async_trait, upgrade, CloseFrame, Config, Connection, Utf8Bytes, WebSocketCollection,
    WebSocketHandler,
};

/// The broadcast payload: 64 bytes of text.
const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Capacity of the baseline's broadcast channel; every burst is far smaller, and each
/// iteration waits for all deliveries, so no receiver can lag.
const CHANNEL_CAPACITY: usize = 4096;

/// Clients connected concurrently while setting up.
const CONNECT_BATCH: usize = 100;

/// Upper bound for any single wait, so that a broken run fails with a message instead of
/// hanging.
const WAIT: Duration = Duration::from_secs(60);

/// Messages broadcast per iteration for `n` clients: keeps an iteration short at N = 1000.
fn burst_for(n: usize) -> usize {
    if n <= 100 {
        100
    } else {
        20
    }
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
                .map(|_| tokio::spawn(tokio_tungstenite::connect_async(url.clone())))
                .collect();
            for handle in connecting {
                let (mut ws, _) = tokio::time::timeout(WAIT, handle)
                    .await
                    .expect("timed out connecting a client")
                    .expect("client connect task panicked")
                    .expect("client failed to connect (out of file descriptors or ports?)");
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

// ---- websocket_handler ----------------------------------------------------------------------

struct Member {
    room: WebSocketCollection,
    events: Arc<Events>,
}

#[async_trait]
impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
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
}

impl CrateServer {
    async fn start() -> CrateServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the websocket_handler server");
        let addr = listener.local_addr().expect("server local addr");
        let room = WebSocketCollection::new();
        let events = Arc::new(Events::default());
        let config = Arc::new(Config::default());
        let (accept_room, accept_events) = (room.clone(), events.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (room, events, config) =
                    (accept_room.clone(), accept_events.clone(), config.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let member = Member {
                        room: room.clone(),
                        events: events.clone(),
                    };
                    let response = upgrade(req, &config, member);
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        CrateServer { addr, room, events }
    }

    async fn wait_for_members(&self, n: usize) {
        let room = &self.room;
        self.events
            .wait_until(&format!("{n} websocket_handler connections"), || {
                room.len() == n
            })
            .await;
    }

    fn broadcast(&self, n: usize) {
        let queued = self.room.broadcast(Utf8Bytes::from_static(PAYLOAD));
        assert_eq!(
            queued, n,
            "websocket_handler queued a broadcast to {queued} of {n} connections \
             (a queue was full or a connection closed)"
        );
    }
}

// ---- baseline: tokio::sync::broadcast + accept_async -----------------------------------------

/// The axum-chat pattern without axum: one broadcast channel, one send per message.
struct BaselineServer {
    addr: SocketAddr,
    tx: broadcast::Sender<Utf8Bytes>,
    events: Arc<Events>,
    lagged: Arc<AtomicBool>,
}

impl BaselineServer {
    async fn start() -> BaselineServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the baseline server");
        let addr = listener.local_addr().expect("server local addr");
        let (tx, _) = broadcast::channel::<Utf8Bytes>(CHANNEL_CAPACITY);
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

    async fn wait_for_members(&self, n: usize) {
        let tx = &self.tx;
        self.events
            .wait_until(&format!("{n} baseline connections"), || {
                tx.receiver_count() == n
            })
            .await;
    }

    fn broadcast(&self, n: usize) {
        let receivers = self
            .tx
            .send(Utf8Bytes::from_static(PAYLOAD))
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

/// Connects `n` clients, waits until the server holds them all, runs `bench`, then drops
/// the clients and waits until the server has let them all go.
fn with_clients<W>(
    rt: &Runtime,
    addr: SocketAddr,
    n: usize,
    server_holds: impl Fn(usize) -> W,
    bench: impl FnOnce(&Clients),
) where
    W: Future<Output = ()>,
{
    let clients = rt.block_on(async {
        let clients = Clients::connect(addr, n).await;
        server_holds(n).await;
        clients
    });
    bench(&clients);
    rt.block_on(async {
        clients.disconnect().await;
        server_holds(0).await;
    });
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let crate_server = rt.block_on(CrateServer::start());
    let baseline = rt.block_on(BaselineServer::start());

    for n in [10usize, 100, 1000] {
        let burst = burst_for(n);
        assert!(burst < CHANNEL_CAPACITY);
        let mut group = c.benchmark_group(format!("fanout/{n}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements((n * burst) as u64));

        with_clients(
            &rt,
            crate_server.addr,
            n,
            |n| crate_server.wait_for_members(n),
            |clients| {
                group.bench_function("websocket_handler", |b| {
                    b.iter_custom(|iters| {
                        measure(&rt, clients, iters, n, burst, || crate_server.broadcast(n))
                    })
                });
            },
        );

        with_clients(
            &rt,
            baseline.addr,
            n,
            |n| baseline.wait_for_members(n),
            |clients| {
                group.bench_function("baseline_broadcast_channel", |b| {
                    b.iter_custom(|iters| {
                        measure(&rt, clients, iters, n, burst, || baseline.broadcast(n))
                    })
                });
            },
        );

        group.finish();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);

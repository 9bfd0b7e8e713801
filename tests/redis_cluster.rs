//! The Redis backplane on a real Redis Cluster: three primaries (and their replicas, for the
//! failovers) started by the test with Debian's `redis-server`, chat example processes
//! started with `--redis-cluster`, a paced sender, and a slot migrated or a primary failed
//! over mid-run. Every listener on both servers must get every message exactly once and in
//! order; a failover may tell the clients that history was reset (a new epoch, as through
//! Sentinel), a migration may not; never a silent gap or a duplicate. And no command of the
//! backplane ever spans two slots (`CROSSSLOT`).
//!
//! The chat's rooms are one topic (`Rooms::with_backplane("chat-rooms", ..)`: a room's keys
//! share the topic's hash tag, so that a publication is one script run), so they live in one
//! slot, on one primary, which the chat tests migrate and fail over. Topics spread over
//! every primary are tested with collections of their own, two backplanes in the test
//! process (each with its own connections, as two servers would have).
//!
//! Needs `redis-server` and `redis-cli` (Debian package `redis-server`): without them these
//! tests fail under CI and are skipped loudly elsewhere.
#![cfg(feature = "redis")]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::Cluster;
use common::{connect, next_text, send_text, within, ChatServer, Client, RESET_NOTICE};
use websocket_handler::backplane::{BackplaneState, RedisBackplane};
use websocket_handler::{Connection, WebSocketCollection, WebSocketHandler, WebSocketServer};

/// Messages the sender sends in each chat run, and how fast (300 a second in all).
const MESSAGES: usize = 600;
const PACE: Duration = Duration::from_micros(3_333);
/// The disturbance comes once every listener has this many.
const DISTURB_AT: usize = 150;
/// With the replica stopped, the listeners get messages up to this one before the primary
/// is killed.
const AHEAD: usize = 180;
/// The rooms the messages go to, in turn.
const ROOMS: [&str; 3] = ["lobby", "red", "blue"];

/// The Redis stream key of the chat's rooms (`Rooms::with_backplane("chat-rooms", ..)`
/// with the default prefix): its slot is every room's.
const ROOMS_KEY: &str = "{websocket-handler:chat-rooms}";

/// Connects `name` to `room` and waits until it is in it: its own `NAME: here` came back.
async fn chat_client(addr: SocketAddr, name: &str, room: &str) -> Client {
    let mut client = connect(addr, &format!("/api/Chat?username={name}&room={room}")).await;
    send_text(&mut client, "here").await;
    while next_text(&mut client).await != format!("{name}: here") {}
    client
}

async fn chat_servers(n: usize, cluster: &Cluster) -> Vec<ChatServer> {
    let list = cluster.urls().join(",");
    let mut servers = Vec::new();
    for _ in 0..n {
        let args = ["--no-notices", "--redis-cluster", &list];
        servers.push(ChatServer::start_with("127.0.0.1:0", &args).await);
    }
    for server in &mut servers {
        server.wait_for_stderr("Redis backplane: Connected").await;
    }
    servers
}

/// Reads until `from`'s messages numbered `start..end` that go to this listener's room
/// (`n % ROOMS.len() == room`) have come, each once and in order; returns the other lines.
async fn expect_in_order(
    listener: &mut Client,
    name: &str,
    from: &str,
    room: usize,
    start: usize,
    end: usize,
) -> Vec<String> {
    let prefix = format!("{from}: ");
    let mut next = (start..end).find(|n| n % ROOMS.len() == room);
    let mut others = Vec::new();
    while let Some(expected) = next {
        // A failover takes a few seconds: allow for it.
        let text = match tokio::time::timeout(Duration::from_secs(30), next_text(listener)).await {
            Ok(text) => text,
            Err(_) => {
                panic!("{name} got {from}'s messages up to {expected} (of {end}), then nothing")
            }
        };
        let Some(n) = text.strip_prefix(&prefix) else {
            others.push(text);
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        assert_eq!(
            n, expected,
            "{name} got {from}'s message {n} when {expected} was next (lost, repeated or out of order)"
        );
        next = (expected + 1..end).find(|n| n % ROOMS.len() == room);
    }
    others
}

/// What happens mid-run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Disturbance {
    /// The rooms' slot moves to another primary, a key at a time, while messages flow.
    Migration,
    /// `CLUSTER FAILOVER` on the rooms' primary's replica: the primary hands over.
    ManualFailover,
    /// The rooms' primary is killed (SIGKILL); the cluster promotes its replica.
    Killed,
    /// The replica stops (SIGSTOP) and misses the last writes, which the listeners get;
    /// then the primary is killed and the replica, resumed, promoted: the new primary is
    /// behind what was delivered.
    KilledAhead,
}

async fn chat_through(disturbance: Disturbance) {
    let test = format!("redis_cluster::{disturbance:?}");
    let replicas = disturbance != Disturbance::Migration;
    let Some(mut cluster) = Cluster::start(&test, replicas).await else {
        return;
    };
    let chat = chat_servers(2, &cluster).await;
    // A sender and a listener on each server in each room.
    let mut senders = Vec::new();
    let mut listeners = Vec::new();
    for (r, room) in ROOMS.iter().enumerate() {
        senders.push(chat_client(chat[0].addr, &format!("sender{r}"), room).await);
        for (s, server) in chat.iter().enumerate() {
            let name = format!("listener{s}-{room}");
            listeners.push((name.clone(), r, chat_client(server.addr, &name, room).await));
        }
    }
    let slot = cluster.slot(ROOMS_KEY).await;
    let primary = cluster.primary_of(slot).await;

    let sending = async move {
        let mut pace = tokio::time::interval(PACE);
        for n in 0..MESSAGES {
            pace.tick().await;
            send_text(&mut senders[n % ROOMS.len()], &n.to_string()).await;
        }
        senders
    };
    let from = |r: usize| format!("sender{r}");
    let listening = async {
        for (name, r, listener) in &mut listeners {
            let others = expect_in_order(listener, name, &from(*r), *r, 0, DISTURB_AT).await;
            assert!(
                !others.iter().any(|line| line == RESET_NOTICE),
                "{others:?}"
            );
        }
        match disturbance {
            Disturbance::Migration => {
                let other = cluster
                    .primaries()
                    .await
                    .into_iter()
                    .map(|(port, _)| port)
                    .find(|port| *port != primary)
                    .expect("another primary");
                // Messages flow between the keys moved.
                let mut pace = tokio::time::interval(Duration::from_millis(20));
                cluster.migrate(slot, primary, other, &mut pace).await;
                assert_eq!(cluster.primary_of(slot).await, other);
            }
            Disturbance::ManualFailover => {
                let replica = cluster.replica_of(primary).await;
                cluster.failover(replica).await;
                assert_eq!(cluster.primary_of(slot).await, replica);
            }
            Disturbance::Killed => {
                let replica = cluster.replica_of(primary).await;
                cluster.kill(primary).await;
                cluster.wait_until_primary(replica).await;
                assert_eq!(cluster.primary_of(slot).await, replica);
            }
            Disturbance::KilledAhead => {
                let replica = cluster.replica_of(primary).await;
                cluster.signal(replica, "STOP");
                // The primary takes writes the stopped replica never gets: what the
                // listeners have read by then is ahead of the replica.
                for (name, r, listener) in &mut listeners {
                    expect_in_order(listener, name, &from(*r), *r, DISTURB_AT, AHEAD).await;
                }
                cluster.kill(primary).await;
                cluster.signal(replica, "CONT");
                cluster.wait_until_primary(replica).await;
                assert_eq!(cluster.primary_of(slot).await, replica);
            }
        }
        let resume_at = match disturbance {
            Disturbance::KilledAhead => AHEAD,
            _ => DISTURB_AT,
        };
        let mut told = Vec::new();
        for (name, r, listener) in &mut listeners {
            let others = expect_in_order(listener, name, &from(*r), *r, resume_at, MESSAGES).await;
            let notices = others.iter().filter(|line| *line == RESET_NOTICE).count();
            assert!(
                notices <= 1,
                "{name} was told of a reset {notices} times: {others:?}"
            );
            told.push(notices);
        }
        match disturbance {
            // A slot handed over whole keeps the rooms' history: nothing to tell.
            Disturbance::Migration => assert!(told.iter().all(|told| *told == 0), "{told:?}"),
            // The new primary lacks messages every listener had: positions from before
            // cannot stand, and every client is told.
            Disturbance::KilledAhead => assert!(told.iter().all(|told| *told == 1), "{told:?}"),
            Disturbance::ManualFailover | Disturbance::Killed => {}
        }
    };
    let (mut senders, ()) = tokio::join!(sending, listening);

    // Nothing more is on its way: the next line each listener gets is the last message.
    for (r, sender) in senders.iter_mut().enumerate() {
        send_text(sender, &format!("last{r}")).await;
    }
    for (name, r, listener) in &mut listeners {
        assert_eq!(
            next_text(listener).await,
            format!("sender{r}: last{r}"),
            "{name}'s next line"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_mid_run_loses_nothing_and_resets_nothing() {
    chat_through(Disturbance::Migration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_loses_nothing() {
    chat_through(Disturbance::ManualFailover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_nothing() {
    chat_through(Disturbance::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_primary_behind_what_was_delivered_is_reported_and_loses_nothing() {
    chat_through(Disturbance::KilledAhead).await;
}

/// One process of the library-level test: a backplane and a collection per topic, each
/// with a WebSocket server whose clients join the collection their path names.
struct Node {
    backplane: RedisBackplane,
    topics: Vec<WebSocketCollection>,
    addr: SocketAddr,
}

/// Joins the collection its request's path names (`/N`), and says `joined`.
struct Joiner {
    room: WebSocketCollection,
}

impl WebSocketHandler for Joiner {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        let _ = conn.send("joined");
    }
}

async fn node(urls: &[String], topics: usize, lossless: bool) -> Node {
    let backplane = RedisBackplane::cluster(urls.iter().cloned())
        .lossless(lossless)
        .build()
        .expect("valid node URLs");
    let topics: Vec<WebSocketCollection> = (0..topics)
        .map(|t| WebSocketCollection::with_backplane(format!("topic-{t}"), backplane.clone()))
        .collect();
    let addr = {
        let topics = topics.clone();
        common::serve(WebSocketServer::new(), move |request| {
            let t: usize = request.uri().path()[1..].parse().expect("/N");
            Joiner {
                room: topics[t].clone(),
            }
        })
        .await
    };
    let mut state = backplane.state_changes();
    within(
        "the backplane to connect",
        state.wait_for(|state| *state == BackplaneState::Connected),
    )
    .await
    .expect("the backplane's task runs");
    Node {
        backplane,
        topics,
        addr,
    }
}

/// Many topics spread over every primary, two processes: every message of every topic
/// reaches every listener once and in order, and no command the backplane sent (publish
/// scripts, reads, bells, ensure scripts) was refused for spanning slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_on_every_primary_and_no_command_across_slots() {
    const TOPICS: usize = 48;
    const PER_TOPIC: usize = 20;
    let Some(cluster) = Cluster::start("redis_cluster::spread", false).await else {
        return;
    };
    let mut primaries = BTreeSet::new();
    for t in 0..TOPICS {
        let slot = cluster
            .slot(&format!("{{websocket-handler:topic-{t}}}"))
            .await;
        primaries.insert(cluster.primary_of(slot).await);
    }
    assert_eq!(primaries.len(), 3, "the topics are on every primary");
    cluster.reset_stats().await;

    let urls = cluster.urls();
    let nodes = [
        node(&urls, TOPICS, true).await,
        node(&urls, TOPICS, true).await,
    ];
    let mut listeners = Vec::new();
    for node in &nodes {
        for t in 0..TOPICS {
            let mut client = connect(node.addr, &format!("/{t}")).await;
            assert_eq!(next_text(&mut client).await, "joined");
            listeners.push((t, client));
        }
    }
    // Both backplanes are connected, so they read every topic from where it stood then:
    // what is published from now on reaches every listener.
    let mut pace = tokio::time::interval(Duration::from_micros(3_333));
    for n in 0..PER_TOPIC {
        for t in 0..TOPICS {
            pace.tick().await;
            // From either process, in turn.
            nodes[(n + t) % 2].topics[t].broadcast(format!("{t}:{n}"));
        }
    }
    for (t, listener) in &mut listeners {
        for n in 0..PER_TOPIC {
            assert_eq!(next_text(listener).await, format!("{t}:{n}"), "topic {t}");
        }
    }
    for (port, stats) in cluster.error_stats().await {
        assert!(
            !stats.contains("CROSSSLOT"),
            "the node on {port} refused a command across slots: {stats}"
        );
    }
    for node in &nodes {
        let stats = node.backplane.stats();
        assert_eq!(
            (stats.history_resets, stats.missed, stats.refused),
            (0, 0, 0),
            "{stats:?}"
        );
    }
}

/// The pub/sub mode on a cluster: each topic a sharded channel (`SSUBSCRIBE` and `SPUBLISH`
/// on its slot's primary, never `PUBLISH`, which every node would carry), and a subscription
/// whose slot moves is made again on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_uses_sharded_channels_and_follows_a_migrated_slot() {
    const TOPICS: usize = 6;
    const BURST: usize = 200;
    let Some(cluster) = Cluster::start("redis_cluster::pubsub", false).await else {
        return;
    };
    let urls = cluster.urls();
    let nodes = [
        node(&urls, TOPICS, false).await,
        node(&urls, TOPICS, false).await,
    ];
    // A listener of each topic on the second process; the first publishes.
    let mut listeners = Vec::new();
    for t in 0..TOPICS {
        let mut client = connect(nodes[1].addr, &format!("/{t}")).await;
        assert_eq!(next_text(&mut client).await, "joined");
        listeners.push(client);
    }
    // Subscriptions are made in the background: wait until each is in place on its slot's
    // primary.
    for t in 0..TOPICS {
        let channel = format!("websocket-handler:topic-{t}");
        let owner = cluster.primary_of(cluster.slot(&channel).await).await;
        cluster.wait_for_shard_subscriber(owner, &channel).await;
    }
    // A burst: many of one topic in one pipelined batch, which must reach Redis in order.
    for t in 0..TOPICS {
        for n in 0..BURST {
            nodes[0].topics[t].broadcast(format!("{t}:{n}"));
        }
    }
    for (t, listener) in listeners.iter_mut().enumerate() {
        for n in 0..BURST {
            assert_eq!(next_text(listener).await, format!("{t}:{n}"));
        }
    }
    let stats = nodes[1].backplane.stats();
    assert_eq!((stats.missed, stats.invalid), (0, 0), "{stats:?}");
    for node in &cluster.nodes {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut common::cluster::admin(node.port).await)
            .await
            .expect("INFO commandstats");
        assert!(!stats.contains("cmdstat_publish:"), "{stats}");
    }

    // Topic 0's slot moves: its subscription follows.
    let channel = "websocket-handler:topic-0";
    let slot = cluster.slot(channel).await;
    let from = cluster.primary_of(slot).await;
    let to = cluster
        .primaries()
        .await
        .into_iter()
        .map(|(port, _)| port)
        .find(|port| *port != from)
        .expect("another primary");
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    cluster.migrate(slot, from, to, &mut pace).await;
    cluster.wait_for_shard_subscriber(to, channel).await;
    for n in 0..10 {
        nodes[0].topics[0].broadcast(format!("0:after{n}"));
    }
    for n in 0..10 {
        assert_eq!(next_text(&mut listeners[0]).await, format!("0:after{n}"));
    }
}

/// Topics on every primary, one primary killed mid-run: every message of every topic
/// reaches every listener once and in order; only the killed primary's topics start a new
/// epoch, the others keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_on_every_primary_through_a_killed_one() {
    const TOPICS: usize = 12;
    const PER_TOPIC: usize = 60;
    let Some(mut cluster) = Cluster::start("redis_cluster::spread_killed", true).await else {
        return;
    };
    let urls = cluster.urls();
    let nodes = [
        node(&urls, TOPICS, true).await,
        node(&urls, TOPICS, true).await,
    ];
    let victim = cluster
        .primary_of(cluster.slot("websocket-handler:topic-0").await)
        .await;
    let mut on_victim = 0u64;
    for t in 0..TOPICS {
        let slot = cluster.slot(&format!("websocket-handler:topic-{t}")).await;
        if cluster.primary_of(slot).await == victim {
            on_victim += 1;
        }
    }
    assert!(
        on_victim < TOPICS as u64,
        "some topics are on the other primaries"
    );
    let mut listeners = Vec::new();
    for node in &nodes {
        for t in 0..TOPICS {
            let mut client = connect(node.addr, &format!("/{t}")).await;
            assert_eq!(next_text(&mut client).await, "joined");
            listeners.push((t, client));
        }
    }
    // Each topic from one process (half from each): the order of one sender's messages is
    // kept through anything, while two senders' messages may interleave otherwise after a
    // failover (a publication retried lands after those of others that went through).
    let sending = async {
        let mut pace = tokio::time::interval(PACE);
        for n in 0..PER_TOPIC {
            for t in 0..TOPICS {
                pace.tick().await;
                nodes[t % 2].topics[t].broadcast(format!("{t}:{n}"));
            }
        }
    };
    let listening = async {
        for (t, listener) in &mut listeners {
            for n in 0..PER_TOPIC / 4 {
                assert_eq!(next_text(listener).await, format!("{t}:{n}"), "topic {t}");
            }
        }
        let replica = cluster.replica_of(victim).await;
        cluster.kill(victim).await;
        cluster.wait_until_primary(replica).await;
        for (t, listener) in &mut listeners {
            for n in PER_TOPIC / 4..PER_TOPIC {
                let got = tokio::time::timeout(Duration::from_secs(30), next_text(listener))
                    .await
                    .unwrap_or_else(|_| panic!("topic {t}: message {n} never came"));
                assert_eq!(got, format!("{t}:{n}"), "topic {t}");
            }
        }
    };
    tokio::join!(sending, listening);
    for node in &nodes {
        let stats = node.backplane.stats();
        assert_eq!(
            stats.history_resets, on_victim,
            "a new epoch for the killed primary's topics only: {stats:?}"
        );
    }
}

/// A topic added while connected is read from where it stood then: what another process
/// publishes from then on arrives, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_added_while_connected_gets_what_is_published_from_then_on() {
    let Some(cluster) = Cluster::start("redis_cluster::late", false).await else {
        return;
    };
    let urls = cluster.urls();
    let nodes = [node(&urls, 1, true).await, node(&urls, 1, true).await];
    let late: Vec<WebSocketCollection> = nodes
        .iter()
        .map(|node| WebSocketCollection::with_backplane("late", node.backplane.clone()))
        .collect();
    let addr = {
        let room = late[1].clone();
        common::serve(WebSocketServer::new(), move |_| Joiner {
            room: room.clone(),
        })
        .await
    };
    let mut listener = connect(addr, "/").await;
    assert_eq!(next_text(&mut listener).await, "joined");
    // Both processes have taken the topic in once both listen to its bell.
    let owner = cluster
        .primary_of(cluster.slot("websocket-handler:late").await)
        .await;
    cluster
        .wait_for_shard_subscribers(owner, "{websocket-handler:late}:bell", 2)
        .await;
    for n in 0..20 {
        late[0].broadcast(format!("late:{n}"));
    }
    for n in 0..20 {
        assert_eq!(next_text(&mut listener).await, format!("late:{n}"));
    }
}

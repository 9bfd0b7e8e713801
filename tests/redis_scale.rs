//! The lossless Redis backplane at real scale, on a real `redis-server`: Redis rewound to an
//! older snapshot, kept busy by scripts, out of memory, flooded with large messages, and
//! 10,000 topics on one backplane. Two "processes" are two `RedisBackplane`s, each with its
//! own collection and WebSocket server; listeners are real WebSocket clients.
//!
//! Needs `redis-server` (Debian package `redis-server`): without it these tests fail under
//! CI and are skipped loudly elsewhere.
#![cfg(feature = "redis")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::{connect, next_text, within, Client, EchoRoom};
use websocket_handler::backplane::{BackplaneState, RedisBackplane, RedisBuilder};
use websocket_handler::{
    Connection, History, Position, Rooms, WebSocketCollection, WebSocketHandler, WebSocketServer,
};

/// One process of a scaled-out application: its backplane, its collection on `topic`, and
/// a WebSocket server whose clients join that collection.
struct Node {
    backplane: RedisBackplane,
    room: WebSocketCollection,
    addr: SocketAddr,
}

async fn node(config: RedisBuilder, topic: &str) -> Node {
    let backplane = config.build().expect("a valid Redis URL");
    let room = WebSocketCollection::with_backplane(topic, backplane.clone());
    let addr = {
        let room = room.clone();
        common::serve(WebSocketServer::new(), move |_| EchoRoom {
            room: room.clone(),
        })
        .await
    };
    connected(&backplane).await;
    Node {
        backplane,
        room,
        addr,
    }
}

async fn connected(backplane: &RedisBackplane) {
    let mut state = backplane.state_changes();
    within(
        "the backplane to connect",
        state.wait_for(|state| *state == BackplaneState::Connected),
    )
    .await
    .expect("the backplane's task runs");
}

/// A client of `node`, in its collection once it has been told `joined`.
async fn listener(node: &Node) -> Client {
    let mut client = connect(node.addr, "/").await;
    assert!(next_text(&mut client).await.starts_with("joined "));
    client
}

/// Reads until `client` has had `prefix0..prefixN` (`count` of them, `start` first), in
/// order, each once.
async fn expect_in_order(client: &mut Client, prefix: &str, start: usize, count: usize) {
    for n in start..start + count {
        let text = next_text(client).await;
        assert_eq!(text, format!("{prefix}{n}"), "message {n} of {prefix}");
    }
}

/// Every listener has the whole `prefix` series of `count`.
async fn all_get(listeners: &mut [Client], prefix: &str, count: usize) {
    for listener in listeners {
        expect_in_order(listener, prefix, 0, count).await;
    }
}

fn config(redis: &RedisServer) -> RedisBuilder {
    RedisBackplane::builder(redis.url())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// Redis restarted from a snapshot taken 100 messages before it died: its counter goes back
/// under the same epoch. The next messages must reach every listener on both processes
/// (their sender's included), and the reset is counted on both.
#[tokio::test]
async fn redis_restarted_from_an_older_snapshot_loses_nothing_after_it() {
    let dir = common::temp_dir("redis-rewind");
    let Some(redis) = RedisServer::start_persistent("redis_scale::rewind", &dir).await else {
        return;
    };
    let port = redis.port;
    let a = node(config(&redis), "rewind").await;
    let b = node(config(&redis), "rewind").await;
    let mut listeners = vec![listener(&a).await, listener(&b).await];
    for n in 0..100 {
        a.room.broadcast(format!("first {n}"));
    }
    all_get(&mut listeners, "first ", 100).await;
    let mut conn = redis.admin().await;
    let _: () = redis::cmd("SAVE")
        .query_async(&mut conn)
        .await
        .expect("SAVE");
    for n in 0..100 {
        a.room.broadcast(format!("second {n}"));
    }
    all_get(&mut listeners, "second ", 100).await;
    redis.kill().await;
    let _redis = RedisServer::restart_persistent_on(port, &dir).await;
    connected_again(&a.backplane).await;
    connected_again(&b.backplane).await;
    for n in 0..50 {
        a.room.broadcast(format!("third {n}"));
    }
    all_get(&mut listeners, "third ", 50).await;
    for node in [&a, &b] {
        assert!(
            node.backplane.stats().history_resets >= 1,
            "the rewind was counted: {:?}",
            node.backplane.stats()
        );
    }
}

/// `FLUSHDB` while both processes stay connected: the next messages reach every listener,
/// and the reset is counted where it was seen.
#[tokio::test]
async fn a_flushed_redis_loses_nothing_after_the_flush() {
    let Some(redis) = RedisServer::start("redis_scale::flush").await else {
        return;
    };
    let a = node(config(&redis), "flush").await;
    let b = node(config(&redis), "flush").await;
    let mut listeners = vec![listener(&a).await, listener(&b).await];
    for n in 0..100 {
        a.room.broadcast(format!("first {n}"));
    }
    all_get(&mut listeners, "first ", 100).await;
    let mut conn = redis.admin().await;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut conn)
        .await
        .expect("FLUSHDB");
    for n in 0..50 {
        b.room.broadcast(format!("second {n}"));
    }
    all_get(&mut listeners, "second ", 50).await;
    assert!(
        a.backplane.stats().history_resets + b.backplane.stats().history_resets >= 1,
        "the flush was counted"
    );
}

/// After a restart: connected again, with the disconnect counted.
async fn connected_again(backplane: &RedisBackplane) {
    let mut state = backplane.state_changes();
    within(
        "the backplane to reconnect",
        state.wait_for(|state| *state == BackplaneState::Connected),
    )
    .await
    .expect("the backplane's task runs");
    within("the disconnect to be counted", async {
        while backplane.stats().disconnects == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Redis kept busy by short scripts (`BUSY` for everyone else) while 1,000 messages flow:
/// none is refused, every listener gets every one once, in order.
#[tokio::test]
async fn a_busy_redis_delays_messages_and_drops_none() {
    let Some(redis) = RedisServer::start("redis_scale::busy").await else {
        return;
    };
    let mut conn = redis.admin().await;
    // Others get BUSY once a script has run this long (ms).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("busy-reply-threshold")
        .arg(20)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET busy-reply-threshold");
    let a = node(config(&redis), "busy").await;
    let b = node(config(&redis), "busy").await;
    let mut listeners = vec![listener(&a).await, listener(&b).await];
    let busy = tokio::spawn(async move {
        // Scripts of 150 ms, back to back, for about 3 s.
        const SPIN: &str = "local s = redis.call('TIME') \
            while true do local n = redis.call('TIME') \
            if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 150000 then break end end return 1";
        for _ in 0..20 {
            let _: i64 = redis::cmd("EVAL")
                .arg(SPIN)
                .arg(0)
                .query_async(&mut conn)
                .await
                .expect("the busy script");
        }
    });
    let sender = tokio::spawn({
        let room = a.room.clone();
        async move {
            for n in 0..1000 {
                room.broadcast(format!("m{n}"));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), all_get(&mut listeners, "m", 1000))
        .await
        .expect("every message within a minute");
    sender.await.expect("the sender");
    busy.await.expect("the busy scripts");
    for node in [&a, &b] {
        let stats = node.backplane.stats();
        assert_eq!(stats.refused, 0, "nothing refused: {stats:?}");
        assert_eq!(stats.dropped, 0, "nothing dropped: {stats:?}");
    }
    assert!(
        a.backplane.stats().retried > 0,
        "Redis was busy for the publisher: {:?}",
        a.backplane.stats()
    );
}

/// Redis over its `maxmemory`: publications wait (`OOM`), none is dropped, and all arrive
/// in order once memory is allowed again.
#[tokio::test]
async fn an_out_of_memory_redis_delays_messages_and_drops_none() {
    let Some(redis) = RedisServer::start("redis_scale::oom").await else {
        return;
    };
    let a = node(config(&redis), "oom").await;
    let mut listeners = vec![listener(&a).await];
    a.room.broadcast("before");
    assert_eq!(next_text(&mut listeners[0]).await, "before");
    let mut conn = redis.admin().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1) // below what it uses: every write is refused
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET maxmemory");
    for n in 0..50 {
        a.room.broadcast(format!("m{n}"));
    }
    within("a publication refused for memory", async {
        while a.backplane.stats().retried == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Connected, but not publishing: the state says so (a /health would answer 503).
    let mut state = a.backplane.state_changes();
    within("the state to say Retrying", async {
        state
            .wait_for(|state| *state == BackplaneState::Retrying)
            .await
            .expect("the backplane's task runs")
    })
    .await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET maxmemory 0");
    all_get(&mut listeners, "m", 50).await;
    within("the state to say Connected again", async {
        state
            .wait_for(|state| *state == BackplaneState::Connected)
            .await
            .expect("the backplane's task runs")
    })
    .await;
    let stats = a.backplane.stats();
    assert_eq!((stats.refused, stats.dropped), (0, 0), "{stats:?}");
}

/// 200 messages of 60 KiB: the stream keeps what its byte bound allows, in Redis and in
/// the count it keeps of its bytes.
#[tokio::test]
async fn a_stream_is_bounded_in_bytes() {
    let Some(redis) = RedisServer::start("redis_scale::bytes").await else {
        return;
    };
    let a = node(config(&redis).retention_bytes(1 << 20), "bytes").await;
    let mut client = listener(&a).await;
    let big = "x".repeat(60 << 10);
    // One at a time: the client's own queue holds 1 MiB.
    for n in 0..200 {
        a.room.broadcast(format!("{n} {big}"));
        let text = next_text(&mut client).await;
        assert!(text.starts_with(&format!("{n} ")), "message {n} in order");
    }
    let mut conn = redis.admin().await;
    let stream = "{websocket-handler:bytes}";
    let len: usize = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    let bytes: usize = redis::cmd("GET")
        .arg(format!("{stream}:bytes"))
        .query_async(&mut conn)
        .await
        .expect("GET bytes");
    let memory: usize = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .expect("MEMORY USAGE");
    assert!(len <= 18, "at most 1 MiB of 60 KiB messages kept: {len}");
    assert!(bytes <= 1 << 20, "the byte count says so: {bytes}");
    assert!(
        memory < 2 << 20,
        "Redis holds about that much: {memory} bytes"
    );
}

/// 10,000 topics on one backplane: one more costs Redis a handful of commands, not one per
/// topic, and its messages flow.
#[tokio::test]
async fn a_new_topic_among_10_000_costs_work_for_itself_only() {
    let Some(redis) = RedisServer::start("redis_scale::topics").await else {
        return;
    };
    let backplane = config(&redis).build().expect("a valid Redis URL");
    let rooms: Vec<WebSocketCollection> = (0..10_000)
        .map(|n| WebSocketCollection::with_backplane(format!("room-{n}"), backplane.clone()))
        .collect();
    connected(&backplane).await;
    let mut conn = redis.admin().await;
    // Every topic is read: its keys exist once it has been taken in.
    within("the 10,000 topics to be taken in", async {
        loop {
            let known: usize = redis::cmd("EXISTS")
                .arg("{websocket-handler:room-9999}:epoch")
                .query_async(&mut conn.clone())
                .await
                .expect("EXISTS");
            if known == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("CONFIG RESETSTAT");
    let room = WebSocketCollection::with_backplane("one-more", backplane.clone());
    let addr = {
        let room = room.clone();
        common::serve(WebSocketServer::new(), move |_| EchoRoom {
            room: room.clone(),
        })
        .await
    };
    let mut client = connect(addr, "/").await;
    assert!(next_text(&mut client).await.starts_with("joined "));
    room.broadcast("hello");
    assert_eq!(next_text(&mut client).await, "hello");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO commandstats");
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    };
    let per_topic = calls("get") + calls("evalsha") + calls("xlen") + calls("exists");
    assert!(
        per_topic < 100,
        "a new topic cost {per_topic} commands of the kind run per topic:\n{stats}"
    );
    drop(rooms);
}

/// A member of one room of a `Rooms`: `?room=NAME` joins it tagged; `&resume=POSITION`
/// resumes there and then says `resumed N` or `not resumed: WHY`.
struct RoomMember {
    rooms: Rooms<String>,
}

impl WebSocketHandler for RoomMember {
    async fn on_open(&mut self, conn: &Connection) {
        let room = conn.query_param("room").unwrap_or_default();
        match conn.query_param("resume") {
            Some(after) => {
                let after: Position = after.parse().expect("a position");
                match self.rooms.resume(room, conn, &after).await {
                    Ok(resumed) => conn.send(format!("resumed {}", resumed.replayed)),
                    Err(why) => conn.send(format!("not resumed: {why}")),
                }
                .expect("the client is there");
            }
            None => {
                self.rooms.join_tagged(room, conn);
                conn.send("joined").expect("the client is there");
            }
        }
    }
}

async fn rooms_node(redis: &RedisServer) -> (RedisBackplane, Rooms<String>, SocketAddr) {
    rooms_node_with(config(redis).retention(1_000)).await
}

async fn rooms_node_with(config: RedisBuilder) -> (RedisBackplane, Rooms<String>, SocketAddr) {
    let backplane = config.build().expect("a valid URL");
    let rooms: Rooms<String> =
        Rooms::with_backplane("rooms", backplane.clone()).with_history(History::new());
    let addr = {
        let rooms = rooms.clone();
        common::serve(WebSocketServer::new(), move |_| RoomMember {
            rooms: rooms.clone(),
        })
        .await
    };
    connected(&backplane).await;
    (backplane, rooms, addr)
}

/// A quiet room keeps its history in Redis while a busy room of the same `Rooms` pushes
/// thousands of messages through the topic: a client resuming in the quiet room on a
/// process that never had it gets exactly what it missed there.
#[tokio::test]
async fn a_quiet_room_keeps_its_history_beside_a_busy_one() {
    let Some(redis) = RedisServer::start("redis_scale::quiet_room").await else {
        return;
    };
    let (a, rooms, addr) = rooms_node(&redis).await;
    let mut watcher = connect(addr, "/?room=quiet").await;
    assert_eq!(next_text(&mut watcher).await, "joined");
    for n in 0..5 {
        rooms.broadcast_to(&"quiet".to_owned(), format!("q{n}"));
    }
    let mut positions = Vec::new();
    for n in 0..5 {
        let text = next_text(&mut watcher).await;
        let (position, rest) = text.split_once(' ').expect("POSITION PREVIOUS TEXT");
        assert!(rest.ends_with(&format!(" q{n}")), "{text}");
        positions.push(position.to_owned());
    }
    // Three times what the topic's stream keeps, in the busy room.
    for n in 0..3_000 {
        rooms.broadcast_to(&"busy".to_owned(), format!("b{n}"));
    }
    within("the busy room's messages to be published", async {
        while a.stats().published < 3_005 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (_c, _rooms_c, addr_c) = rooms_node(&redis).await;
    let mut resumer = connect(addr_c, &format!("/?room=quiet&resume={}", positions[1])).await;
    for (n, position) in positions.iter().enumerate().skip(2) {
        let text = next_text(&mut resumer).await;
        assert!(
            text.starts_with(&format!("{position} ")) && text.ends_with(&format!(" q{n}")),
            "replayed q{n}: {text}"
        );
    }
    assert_eq!(next_text(&mut resumer).await, "resumed 3");
}

/// Reads `client`'s replay of `room`'s messages `first..end` (texts `PREFIX{n}`), checking
/// that each names the one before it, then the handler's `resumed N`.
async fn expect_replay(client: &mut Client, prefix: &str, first: usize, end: usize, after: &str) {
    let mut previous = after.to_owned();
    for n in first..end {
        let text = next_text(client).await;
        let mut parts = text.splitn(3, ' ');
        let (position, named, body) = (parts.next(), parts.next(), parts.next());
        assert_eq!(
            named,
            Some(previous.as_str()),
            "the chain holds at {n}: {text}"
        );
        assert_eq!(body, Some(format!("{prefix}{n}").as_str()), "{text}");
        previous = position.expect("a position").to_owned();
    }
    assert_eq!(next_text(client).await, format!("resumed {}", end - first));
}

/// A client away for 5,000 messages of its room (five times its outbound queue) resumes on
/// a process that never had the room: it gets all of them from Redis, in order, once, and
/// then the live ones; it is not closed as a slow consumer.
#[tokio::test]
async fn a_resume_of_5_000_messages_from_redis_gets_them_all_then_the_live_ones() {
    let Some(redis) = RedisServer::start("redis_scale::long_resume").await else {
        return;
    };
    let config = || config(&redis).room_retention(10_000, 64 << 20, Duration::from_secs(600));
    let (a, rooms, addr) = rooms_node_with(config()).await;
    let mut watcher = connect(addr, "/?room=long").await;
    assert_eq!(next_text(&mut watcher).await, "joined");
    let room = "long".to_owned();
    let mut first = None;
    for n in 0..5_001 {
        rooms.broadcast_to(&room, format!("m{n}"));
        if n == 0 {
            let text = next_text(&mut watcher).await;
            first = text.split(' ').next().map(str::to_owned);
        }
    }
    within("the 5,001 messages to be published", async {
        while a.stats().published < 5_001 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let first = first.expect("the first message's position");
    let (_c, rooms_c, addr_c) = rooms_node_with(config()).await;
    let mut resumer = connect(addr_c, &format!("/?room=long&resume={first}")).await;
    expect_replay(&mut resumer, "m", 1, 5_001, &first).await;
    rooms_c.broadcast_to(&room, "live");
    let text = next_text(&mut resumer).await;
    assert!(text.ends_with(" live"), "then the live ones: {text}");
}

/// A stream entry as `XRANGE` answers it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// 10,000 rooms of one `Rooms`, two messages each: a client resuming in any of them on a
/// process that never had it gets its room's second message, and nothing of the others.
#[tokio::test]
async fn each_of_10_000_rooms_keeps_its_own_history() {
    let Some(redis) = RedisServer::start("redis_scale::many_rooms").await else {
        return;
    };
    let (a, rooms, _addr) = rooms_node(&redis).await;
    // A thousand at a time: the publish queue holds 10,000.
    for round in 0..2 {
        for thousand in 0..10 {
            for n in thousand * 1_000..(thousand + 1) * 1_000 {
                rooms.broadcast_to(&format!("r{n}"), format!("r{n} says {round}"));
            }
            let published = (round * 10 + thousand + 1) as u64 * 1_000;
            within("a thousand messages to be published", async {
                while a.stats().published < published {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        }
    }
    assert_eq!(a.stats().dropped, 0);
    let mut conn = redis.admin().await;
    for n in [0, 7_777, 9_999] {
        // The first message of the room, from its own stream in Redis.
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(format!("{{websocket-handler:rooms}}:r:r{n}"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE of the room's stream");
        assert_eq!(entries.len(), 2, "room r{n} keeps its two messages");
        let (offset, fields) = &entries[0];
        let epoch = fields
            .iter()
            .find(|(name, _)| name == "e")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .expect("each entry names its epoch");
        let epoch: u64 = epoch.parse().expect("a decimal epoch");
        let offset = offset.trim_end_matches("-0");
        let after = format!("{epoch:x}.{offset}");
        let (_c, _rooms_c, addr_c) = rooms_node(&redis).await;
        let mut resumer = connect(addr_c, &format!("/?room=r{n}&resume={after}")).await;
        let text = next_text(&mut resumer).await;
        assert!(
            text.ends_with(&format!(" r{n} says 1")),
            "room r{n}'s own: {text}"
        );
        assert_eq!(next_text(&mut resumer).await, "resumed 1");
    }
}

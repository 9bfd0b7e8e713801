//! One chat room across several chat example processes, joined by a real `redis-server`.
//!
//! Needs `redis-server` (Debian package `redis-server`): without it these tests fail under
//! CI and are skipped loudly elsewhere.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::{connect, next_text, send_text, ChatServer, Client};
use futures_util::future::join_all;
use websocket_handler::backplane::{BackplaneState, RedisBackplane, RedisBackplaneError};
use websocket_handler::{
    Connection, ConnectionId, Rooms, WebSocketCollection, WebSocketHandler, WebSocketServer,
};

/// Starts `n` chat servers on free ports, all on `redis` with `mode` (`--redis`, lossless,
/// or `--redis-pubsub`), and waits until each has subscribed (it prints
/// `Redis backplane: Connected`).
async fn chat_servers(n: usize, redis: &RedisServer, mode: &str) -> Vec<ChatServer> {
    let url = redis.url();
    let mut servers = Vec::new();
    for _ in 0..n {
        let args = ["--no-notices", mode, url.as_str()];
        servers.push(ChatServer::start_with("127.0.0.1:0", &args).await);
    }
    for server in &mut servers {
        server.wait_for_stderr("Redis backplane: Connected").await;
    }
    servers
}

/// Every client sends `per_client` numbered messages at once; every client must then receive
/// every message of every client exactly once, each sender's in the order sent.
async fn everyone_gets_everything_once_in_order(servers: &[ChatServer], clients_per_server: usize) {
    let per_client = 40;
    let mut clients = Vec::new();
    for (s, server) in servers.iter().enumerate() {
        for c in 0..clients_per_server {
            let name = format!("s{s}c{c}");
            let client = connect(server.addr, &format!("/api/Chat?username={name}")).await;
            clients.push((name, client));
        }
    }
    let names: Vec<String> = clients.iter().map(|(name, _)| name.clone()).collect();
    // A client is in the room once it sees its own "hello": only then is nobody missing
    // messages because its server has not added it yet.
    let clients = join_all(clients.into_iter().map(|(name, mut client)| async move {
        send_text(&mut client, "hello").await;
        while next_text(&mut client).await != format!("{name}: hello") {}
        (name, client)
    }))
    .await;
    let total = names.len() * per_client;
    let results = join_all(clients.into_iter().map(|(name, mut client)| async move {
        for n in 0..per_client {
            send_text(&mut client, &format!("{n}")).await;
        }
        let mut received = Vec::with_capacity(total);
        // Stop early on a timeout: the checks below then say what is missing.
        while received.len() < total {
            match tokio::time::timeout(common::WAIT / 2, next_text(&mut client)).await {
                Ok(text) if text.ends_with(": hello") => {}
                Ok(text) => received.push(text),
                Err(_) => break,
            }
        }
        (name, client, received)
    }))
    .await;

    let mut clients = Vec::new();
    for (name, client, received) in results {
        let mut next_from: HashMap<&str, usize> = HashMap::new();
        for text in &received {
            let (sender, n) = text
                .split_once(": ")
                .unwrap_or_else(|| panic!("{name} got {text:?}"));
            let n: usize = n.parse().unwrap_or_else(|_| panic!("{name} got {text:?}"));
            let expected = next_from.entry(sender).or_default();
            assert_eq!(
                n, *expected,
                "{name} got {sender}'s message {n} when {expected} was next (lost, repeated or out of order)"
            );
            *expected += 1;
        }
        for sender in &names {
            assert_eq!(
                next_from.get(sender.as_str()).copied(),
                Some(per_client),
                "{name} did not get all of {sender}'s messages"
            );
        }
        clients.push(client);
    }
    // Nothing more is on its way: a last message is the next thing everyone receives, so no
    // duplicate was still in flight.
    send_text(&mut clients[0], "last").await;
    for client in &mut clients {
        assert_eq!(next_text(client).await, format!("{}: last", names[0]));
    }
}

#[tokio::test]
async fn two_servers_share_one_room() {
    let Some(redis) = RedisServer::start("backplane_redis::two_servers_share_one_room").await
    else {
        return;
    };
    let servers = chat_servers(2, &redis, "--redis").await;
    everyone_gets_everything_once_in_order(&servers, 3).await;
    drop(servers);
    let servers = chat_servers(2, &redis, "--redis-pubsub").await;
    everyone_gets_everything_once_in_order(&servers, 3).await;
}

#[tokio::test]
async fn three_servers_share_one_room() {
    let Some(redis) = RedisServer::start("backplane_redis::three_servers_share_one_room").await
    else {
        return;
    };
    let servers = chat_servers(3, &redis, "--redis").await;
    everyone_gets_everything_once_in_order(&servers, 2).await;
    drop(servers);
    let servers = chat_servers(3, &redis, "--redis-pubsub").await;
    everyone_gets_everything_once_in_order(&servers, 2).await;
}

/// Connects `name` to a chat server and waits until it is in the room: its own line
/// `NAME: here-NAME` has come back.
async fn chat_client(addr: std::net::SocketAddr, name: &str) -> Client {
    let mut client = connect(addr, &format!("/api/Chat?username={name}")).await;
    let here = format!("here-{name}");
    send_text(&mut client, &here).await;
    next_starting_with(&mut client, &here).await;
    client
}

/// The next chat line that is not someone's `here-` line from [`chat_client`].
async fn next_chat(client: &mut Client) -> String {
    loop {
        let text = next_text(client).await;
        if !text
            .split_once(": ")
            .is_some_and(|(_, body)| body.starts_with("here-"))
        {
            return text;
        }
    }
}

/// Reads the next chat line whose text starts with `prefix`, skipping others.
async fn next_starting_with(client: &mut Client, prefix: &str) -> String {
    loop {
        let text = next_text(client).await;
        if text
            .split_once(": ")
            .is_some_and(|(_, body)| body.starts_with(prefix))
        {
            return text;
        }
    }
}

#[tokio::test]
async fn redis_restart_mid_chat_and_the_room_joins_up_again() {
    let Some(redis) =
        RedisServer::start("backplane_redis::redis_restart_mid_chat_and_the_room_joins_up_again")
            .await
    else {
        return;
    };
    let port = redis.port;
    // Pub/sub mode: local broadcasts go on while Redis is down (the lossless mode holds
    // them until Redis is back: see tests/lossless_backplane.rs).
    let mut servers = chat_servers(2, &redis, "--redis-pubsub").await;
    let (a, b) = (servers[0].addr, servers[1].addr);
    let mut ann = chat_client(a, "ann").await;
    let mut amy = chat_client(a, "amy").await;
    let mut bob = chat_client(b, "bob").await;

    send_text(&mut ann, "before").await;
    assert_eq!(next_chat(&mut bob).await, "ann: before");
    assert_eq!(next_chat(&mut amy).await, "ann: before");

    redis.kill().await;
    for server in &mut servers {
        server
            .wait_for_stderr("Redis backplane: Reconnecting")
            .await;
    }
    for server in &servers {
        let health = common::http_status(server.addr, "/health").await;
        assert_eq!(health, 503, "health while Redis is down");
    }
    // Local broadcasts keep working while Redis is down.
    send_text(&mut ann, "during").await;
    assert_eq!(next_chat(&mut amy).await, "ann: during");

    let redis = RedisServer::restart_on(port).await;
    for server in &mut servers {
        server.wait_for_stderr("Redis backplane: Connected").await;
    }
    for server in &servers {
        assert_eq!(common::http_status(server.addr, "/health").await, 200);
    }
    // Both ways across, once each. "during" may or may not have reached bob: it was
    // published after a's reconnect, which may have been before b resubscribed.
    send_text(&mut ann, "after").await;
    assert_eq!(next_starting_with(&mut bob, "after").await, "ann: after");
    send_text(&mut bob, "back").await;
    for line in ["ann: before", "ann: during", "ann: after"] {
        assert_eq!(next_chat(&mut ann).await, line, "ann sees her own lines");
    }
    assert_eq!(next_chat(&mut ann).await, "bob: back");
    assert_eq!(next_chat(&mut amy).await, "ann: after");
    assert_eq!(next_chat(&mut amy).await, "bob: back");
    assert_eq!(next_chat(&mut bob).await, "bob: back");
    drop(redis);
}

/// Joins each connection to `room`, then tells the client "in".
struct Member(WebSocketCollection);

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        self.0.add(conn.clone());
        conn.send("in").expect("room for one message");
    }
}

/// A server in this process whose connections join `room`, and one client of it, in the room.
async fn client_in(room: &WebSocketCollection) -> Client {
    let room = room.clone();
    let addr = common::serve(WebSocketServer::new(), move |_| Member(room.clone())).await;
    let mut client = connect(addr, "/").await;
    assert_eq!(next_text(&mut client).await, "in");
    client
}

async fn wait_for_state(redis: &RedisBackplane, wanted: BackplaneState) {
    let mut state = redis.state_changes();
    tokio::time::timeout(common::WAIT, state.wait_for(|now| *now == wanted))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "backplane never became {wanted:?}, it is {:?}",
                redis.state()
            )
        })
        .expect("backplane task alive");
}

/// A pub/sub backplane (these tests are of that mode; tests/lossless_backplane.rs has the
/// lossless one's).
fn backplane(url: &str) -> RedisBackplane {
    RedisBackplane::builder(url)
        .lossless(false)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .max_pending(3)
        .build()
        .expect("valid URL, in a runtime")
}

/// Joins each connection to one room of `rooms`, then tells the client "in".
struct RoomMember(Rooms<String>, &'static str);

impl WebSocketHandler for RoomMember {
    async fn on_open(&mut self, conn: &Connection) {
        self.0.join(self.1.to_owned(), conn);
        conn.send("in").expect("room for one message");
    }
}

/// A client in `room` of `rooms` (through a server in this process), and its id.
async fn client_in_room(rooms: &Rooms<String>, room: &'static str) -> (Client, ConnectionId) {
    let before: Vec<_> = rooms
        .members(&room.to_owned())
        .iter()
        .map(|c| c.id())
        .collect();
    let serving = rooms.clone();
    let addr = common::serve(WebSocketServer::new(), move |_| {
        RoomMember(serving.clone(), room)
    })
    .await;
    let mut client = connect(addr, "/").await;
    assert_eq!(next_text(&mut client).await, "in");
    let id = rooms
        .members(&room.to_owned())
        .iter()
        .map(|c| c.id())
        .find(|id| !before.contains(id))
        .expect("the new member");
    (client, id)
}

/// The count a broadcast returns is true in both modes: in pub/sub mode the message is
/// queued here at once, and in lossless mode (ordered) it is queued here only when it comes
/// back from Redis, yet the count is the same: this process's members, the excepted one
/// left out. Each member counted gets it; the excepted one does not.
#[tokio::test]
async fn broadcasts_count_this_process_members_in_both_modes() {
    let Some(server) =
        RedisServer::start("backplane_redis::broadcasts_count_this_process_members_in_both_modes")
            .await
    else {
        return;
    };
    for lossless in [true, false] {
        let mode = if lossless { "lossless" } else { "pub/sub" };
        let redis = RedisBackplane::builder(server.url())
            .lossless(lossless)
            .build()
            .expect("a valid URL, in a runtime");
        wait_for_state(&redis, BackplaneState::Connected).await;

        let room = WebSocketCollection::with_backplane(format!("counted-{mode}"), redis.clone());
        let mut a = client_in(&room).await;
        let a_id = room.connections()[0].id();
        let mut b = client_in(&room).await;
        assert_eq!(room.broadcast("to both"), 2, "{mode}: broadcast");
        assert_eq!(
            room.broadcast_except(a_id, "to b"),
            1,
            "{mode}: broadcast_except"
        );
        assert_eq!(next_text(&mut a).await, "to both", "{mode}");
        assert_eq!(next_text(&mut b).await, "to both", "{mode}");
        assert_eq!(next_text(&mut b).await, "to b", "{mode}");
        assert_eq!(room.broadcast("after"), 2, "{mode}");
        assert_eq!(
            next_text(&mut a).await,
            "after",
            "{mode}: a skipped \"to b\""
        );
        assert_eq!(next_text(&mut b).await, "after", "{mode}");

        let rooms: Rooms<String> =
            Rooms::with_backplane(format!("counted-rooms-{mode}"), redis.clone());
        let (mut c, c_id) = client_in_room(&rooms, "lobby").await;
        let (mut d, _) = client_in_room(&rooms, "lobby").await;
        let lobby = "lobby".to_owned();
        assert_eq!(
            rooms.broadcast_to(&lobby, "to both"),
            2,
            "{mode}: broadcast_to"
        );
        assert_eq!(
            rooms.broadcast_to_except(&lobby, c_id, "to d"),
            1,
            "{mode}: broadcast_to_except"
        );
        assert_eq!(
            rooms.broadcast_to(&"nobody here".to_owned(), "to no one"),
            0,
            "{mode}: a room with no members here"
        );
        assert_eq!(next_text(&mut c).await, "to both", "{mode}");
        assert_eq!(next_text(&mut d).await, "to both", "{mode}");
        assert_eq!(next_text(&mut d).await, "to d", "{mode}");
        assert_eq!(rooms.broadcast_to(&lobby, "after"), 2, "{mode}");
        assert_eq!(
            next_text(&mut c).await,
            "after",
            "{mode}: c skipped \"to d\""
        );
        assert_eq!(next_text(&mut d).await, "after", "{mode}");
    }
}

/// Redis is not there at first: local broadcasts work, the state says so, publications wait
/// (the oldest beyond `max_pending` dropped and counted). Once Redis is up, the backplane
/// connects by itself and publishes what waited.
#[tokio::test]
async fn backplane_without_redis_keeps_local_broadcasts_and_catches_up_later() {
    let Some(probe) = RedisServer::start(
        "backplane_redis::backplane_without_redis_keeps_local_broadcasts_and_catches_up_later",
    )
    .await
    else {
        return;
    };
    // A port where nothing listens: where this Redis was.
    let port = probe.port;
    probe.kill().await;
    let url = format!("redis://127.0.0.1:{port}");

    let redis = backplane(&url);
    let room = WebSocketCollection::with_backplane("t", redis.clone());
    let mut client = client_in(&room).await;
    wait_for_state(&redis, BackplaneState::Reconnecting).await;
    for n in 0..5 {
        assert_eq!(room.broadcast(format!("local {n}")), 1);
    }
    for n in 0..5 {
        assert_eq!(next_text(&mut client).await, format!("local {n}"));
    }
    let stats = redis.stats();
    assert_eq!((stats.pending, stats.dropped, stats.published), (3, 2, 0));

    let _redis_server = RedisServer::restart_on(port).await;
    wait_for_state(&redis, BackplaneState::Connected).await;
    let stats = redis.stats();
    assert_eq!((stats.pending, stats.dropped, stats.published), (0, 2, 3));

    // And it carries broadcasts now: to a second "process" on the same topic.
    let other = backplane(&url);
    let other_room = WebSocketCollection::with_backplane("t", other.clone());
    let mut other_client = client_in(&other_room).await;
    wait_for_state(&other, BackplaneState::Connected).await;
    room.broadcast("across");
    assert_eq!(next_text(&mut client).await, "across");
    assert_eq!(next_text(&mut other_client).await, "across");
    assert_eq!(other.stats().delivered, 1);
}

/// Whatever else is published on the channel is counted and ignored, and the room carries on.
#[tokio::test]
async fn foreign_messages_on_the_channel_are_ignored() {
    let Some(server) =
        RedisServer::start("backplane_redis::foreign_messages_on_the_channel_are_ignored").await
    else {
        return;
    };
    let redis = backplane(&server.url());
    let room = WebSocketCollection::with_backplane("t", redis.clone());
    let mut client = client_in(&room).await;
    let other = backplane(&server.url());
    let other_room = WebSocketCollection::with_backplane("t", other.clone());
    wait_for_state(&redis, BackplaneState::Connected).await;
    wait_for_state(&other, BackplaneState::Connected).await;

    let raw = redis::Client::open(server.url()).expect("url");
    let mut raw = raw
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    for junk in [&b"not an envelope"[..], &[1, 1, 0, 0], &[9; 40]] {
        let receivers: u32 = redis::cmd("PUBLISH")
            .arg("websocket-handler:t")
            .arg(junk)
            .query_async(&mut raw)
            .await
            .expect("publish");
        assert_eq!(receivers, 2, "both backplanes are subscribed");
    }
    // Published after the junk, so delivered after it: when it arrives, the junk was seen.
    other_room.broadcast("still fine");
    assert_eq!(next_text(&mut client).await, "still fine");
    let stats = redis.stats();
    assert_eq!((stats.invalid, stats.delivered), (3, 1));

    // A dropped collection's subscription ends; the other's stays.
    drop(other_room);
    let subscribers = || async {
        let (_, count): (String, u32) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("websocket-handler:t")
            .query_async(&mut raw.clone())
            .await
            .expect("PUBSUB NUMSUB");
        count
    };
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while subscribers().await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped collection is still subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_backplane_needs_a_valid_url_and_a_runtime() {
    let invalid = RedisBackplane::new("http://nope").unwrap_err();
    assert!(
        invalid
            .to_string()
            .contains("invalid Redis URL `http://nope`"),
        "{invalid}"
    );
    // The Redis client's reason, as text: its error type is not part of the API.
    match &invalid {
        RedisBackplaneError::InvalidUrl { url, reason } => {
            assert_eq!(url, "http://nope");
            assert!(!reason.is_empty() && invalid.to_string().ends_with(reason.as_str()));
        }
        other => panic!("expected InvalidUrl, got {other:?}"),
    }
    let bad_port = RedisBackplane::new("redis://127.0.0.1:notaport").unwrap_err();
    assert!(
        matches!(bad_port, RedisBackplaneError::InvalidUrl { .. }),
        "{bad_port:?}"
    );
    let no_runtime = RedisBackplane::new("redis://127.0.0.1:1").unwrap_err();
    assert!(
        no_runtime.to_string().contains("tokio runtime"),
        "{no_runtime}"
    );
}

/// Rooms and private messages across servers: a room's messages reach its members on every
/// server and nobody else; `/msg` finds a user on another server.
#[tokio::test]
async fn rooms_and_private_messages_span_servers() {
    let Some(redis) =
        RedisServer::start("backplane_redis::rooms_and_private_messages_span_servers").await
    else {
        return;
    };
    let servers = chat_servers(2, &redis, "--redis").await;
    let (a, b) = (servers[0].addr, servers[1].addr);
    let mut ann = connect(a, "/api/Chat?username=ann&room=red").await;
    let mut bob = connect(b, "/api/Chat?username=bob&room=red").await;
    let mut cat = connect(b, "/api/Chat?username=cat&room=blue").await;
    // Each is in its room once its own line comes back.
    for (client, name) in [(&mut ann, "ann"), (&mut bob, "bob"), (&mut cat, "cat")] {
        let here = format!("here-{name}");
        send_text(client, &here).await;
        assert_eq!(
            next_starting_with(client, &here).await,
            format!("{name}: {here}")
        );
    }
    // The others' "here" lines may still be on their way: skip to what comes next.
    send_text(&mut ann, "red across").await;
    assert_eq!(
        next_starting_with(&mut bob, "red across").await,
        "ann: red across"
    );
    send_text(&mut ann, "/msg cat psst").await;
    assert_eq!(
        next_text(&mut cat).await,
        "ann → cat: psst",
        "cat saw nothing from red"
    );
    assert_eq!(
        next_starting_with(&mut ann, "psst").await,
        "ann → cat: psst"
    );
    send_text(&mut cat, "/join red").await;
    assert_eq!(next_text(&mut cat).await, "You are in room red");
    send_text(&mut bob, "welcome").await;
    assert_eq!(next_text(&mut cat).await, "bob: welcome");
    assert_eq!(
        next_starting_with(&mut ann, "welcome").await,
        "bob: welcome"
    );
}

/// A backplane connects as soon as it is made, before any collection uses it; and when its
/// last handle goes, it publishes what is still queued, then says it has stopped.
#[tokio::test]
async fn a_backplane_connects_at_once_and_flushes_on_the_way_out() {
    let Some(server) = RedisServer::start(
        "backplane_redis::a_backplane_connects_at_once_and_flushes_on_the_way_out",
    )
    .await
    else {
        return;
    };
    let receiver = backplane(&server.url());
    wait_for_state(&receiver, BackplaneState::Connected).await;
    let room = WebSocketCollection::with_backplane("t", receiver.clone());
    let mut client = client_in(&room).await;

    let sender = backplane(&server.url());
    wait_for_state(&sender, BackplaneState::Connected).await;
    let mut state = sender.state_changes();
    let outgoing = WebSocketCollection::with_backplane("t", sender);
    for n in 0..3 {
        outgoing.broadcast(format!("last words {n}"));
    }
    drop(outgoing); // the last handle
    for n in 0..3 {
        assert_eq!(next_text(&mut client).await, format!("last words {n}"));
    }
    tokio::time::timeout(
        common::WAIT,
        state.wait_for(|now| *now == BackplaneState::Stopped),
    )
    .await
    .expect("the dropped backplane says Stopped")
    .ok();
    assert_eq!(*state.borrow(), BackplaneState::Stopped);
}

/// A server that publishes a flood still delivers what other servers send, while its own
/// flood is being published: publishing and receiving take turns.
#[tokio::test]
async fn a_publishing_flood_does_not_hold_up_receiving() {
    let Some(server) =
        RedisServer::start("backplane_redis::a_publishing_flood_does_not_hold_up_receiving").await
    else {
        return;
    };
    let backplane = || {
        RedisBackplane::builder(server.url())
            .lossless(false)
            .max_pending(1_000_000)
            .build()
            .expect("backplane")
    };
    let busy = backplane();
    let quiet = backplane();
    let flood = WebSocketCollection::with_backplane("flood", busy.clone());
    let room = WebSocketCollection::with_backplane("chat", busy.clone());
    let other = WebSocketCollection::with_backplane("chat", quiet.clone());
    let mut client = client_in(&room).await;
    wait_for_state(&busy, BackplaneState::Connected).await;
    wait_for_state(&quiet, BackplaneState::Connected).await;

    let flood_size = 300_000;
    for n in 0..flood_size {
        flood.broadcast(format!("{n}"));
    }
    other.broadcast("from the other server");
    assert_eq!(next_text(&mut client).await, "from the other server");
    let pending = busy.stats().pending;
    assert!(
        pending > 0,
        "delivered only after the flood was published (pending {pending})"
    );
}

/// A Redis user allowed on the channels of topic `ok` only: publishing or subscribing to
/// any other is refused with NOPERM, while the connection stays up.
async fn limited_user(redis: &RedisServer) -> String {
    let client = redis::Client::open(redis.url()).expect("admin url");
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "~*",
            "&websocket-handler:ok*",
            "+@all",
        ])
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    format!("redis://limited:pw@127.0.0.1:{}", redis.port)
}

/// Redis refusing one channel (an ACL) is not a lost connection: that channel's messages are
/// refused and counted, the refusal is reported, and every other topic keeps flowing both
/// ways, without reconnecting.
#[tokio::test]
async fn a_channel_redis_refuses_is_reported_and_the_others_keep_flowing() {
    let Some(redis) = RedisServer::start(
        "backplane_redis::a_channel_redis_refuses_is_reported_and_the_others_keep_flowing",
    )
    .await
    else {
        return;
    };
    let url = limited_user(&redis).await;
    let (a, b) = (backplane(&url), backplane(&url));
    let ok_a = WebSocketCollection::with_backplane("ok", a.clone());
    let denied_a = WebSocketCollection::with_backplane("denied", a.clone());
    let ok_b = WebSocketCollection::with_backplane("ok", b.clone());
    let mut on_b = client_in(&ok_b).await;
    let mut on_a = client_in(&ok_a).await;
    wait_for_state(&a, BackplaneState::Connected).await;
    wait_for_state(&b, BackplaneState::Connected).await;

    denied_a.broadcast("refused by Redis");
    ok_a.broadcast("from a");
    assert_eq!(next_text(&mut on_b).await, "from a");
    ok_b.broadcast("from b");
    assert_eq!(next_text(&mut on_a).await, "from a", "its own, locally");
    assert_eq!(next_text(&mut on_a).await, "from b");
    let stats = a.stats();
    assert_eq!(
        stats.refused, 1,
        "the refused publication is counted: {stats:?}"
    );
    assert_eq!(
        stats.refused_subscriptions, 1,
        "and the refused subscription: {stats:?}"
    );
    assert_eq!(
        stats.disconnects, 0,
        "a refusal is not a lost connection: {stats:?}"
    );
    assert_eq!(a.state(), BackplaneState::Connected);
}

/// A lossless backplane on `url` that reconnects fast.
fn lossless(url: &str) -> RedisBackplane {
    RedisBackplane::builder(url)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .expect("valid URL, in a runtime")
}

/// In lossless mode too, Redis refusing one topic's stream (an ACL on its keys) is not an
/// outage: publishing to it and reading it are refused and counted, and every other topic
/// keeps flowing both ways, without reconnecting.
#[tokio::test]
async fn lossless_a_stream_redis_refuses_is_reported_and_the_others_keep_flowing() {
    let Some(redis) = RedisServer::start(
        "backplane_redis::lossless_a_stream_redis_refuses_is_reported_and_the_others_keep_flowing",
    )
    .await
    else {
        return;
    };
    let client = redis::Client::open(redis.url()).expect("admin url");
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "streams",
            "on",
            ">pw",
            "~{websocket-handler:ok}*",
            "+@all",
        ])
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let url = format!("redis://streams:pw@127.0.0.1:{}", redis.port);
    let (a, b) = (lossless(&url), lossless(&url));
    let ok_a = WebSocketCollection::with_backplane("ok", a.clone());
    let denied_a = WebSocketCollection::with_backplane("denied", a.clone());
    let ok_b = WebSocketCollection::with_backplane("ok", b.clone());
    let mut on_b = client_in(&ok_b).await;
    let mut on_a = client_in(&ok_a).await;
    let mut denied = client_in(&denied_a).await;
    wait_for_state(&a, BackplaneState::Connected).await;
    wait_for_state(&b, BackplaneState::Connected).await;

    denied_a.broadcast("refused by Redis");
    ok_a.broadcast("from a");
    assert_eq!(next_text(&mut on_b).await, "from a");
    assert_eq!(next_text(&mut on_a).await, "from a", "its own, read back");
    ok_b.broadcast("from b");
    assert_eq!(next_text(&mut on_a).await, "from b");
    let stats = a.stats();
    assert_eq!(stats.refused, 1, "the refused publication: {stats:?}");
    assert!(
        stats.refused_subscriptions >= 1,
        "the refused stream: {stats:?}"
    );
    assert_eq!(stats.disconnects, 0, "no reconnecting: {stats:?}");
    assert_eq!(a.state(), BackplaneState::Connected);
    // The refused topic's member got nothing: the next thing it sees is its close.
    drop(denied_a);
    let next = tokio::time::timeout(Duration::from_millis(200), next_text(&mut denied)).await;
    assert!(next.is_err(), "the refused topic delivered {next:?}");
}

/// `SCRIPT FLUSH` (an operator, or a failover to a replica without the script) does not
/// lose what is being published: the script is loaded again and the messages go out.
#[tokio::test]
async fn lossless_a_flushed_script_is_loaded_again_and_nothing_is_lost() {
    let Some(redis) = RedisServer::start(
        "backplane_redis::lossless_a_flushed_script_is_loaded_again_and_nothing_is_lost",
    )
    .await
    else {
        return;
    };
    let (a, b) = (lossless(&redis.url()), lossless(&redis.url()));
    let room_a = WebSocketCollection::with_backplane("t", a.clone());
    let room_b = WebSocketCollection::with_backplane("t", b.clone());
    let mut on_b = client_in(&room_b).await;
    wait_for_state(&a, BackplaneState::Connected).await;
    wait_for_state(&b, BackplaneState::Connected).await;
    room_a.broadcast("before");
    assert_eq!(next_text(&mut on_b).await, "before");

    let client = redis::Client::open(redis.url()).expect("admin url");
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .expect("SCRIPT FLUSH");
    for n in 0..20 {
        room_a.broadcast(format!("{n}"));
    }
    for n in 0..20 {
        assert_eq!(next_text(&mut on_b).await, format!("{n}"));
    }
    assert_eq!(a.stats().refused, 0, "{:?}", a.stats());
}

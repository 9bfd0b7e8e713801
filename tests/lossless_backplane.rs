//! The lossless Redis backplane (`--redis`, a Redis stream per topic) loses nothing: chat
//! example processes on a real `redis-server`, a paced sender, and Redis disturbed mid-run.
//! Every listener on every server must get every message exactly once, in order. A client
//! that drops and comes back with the last position it saw gets what it missed, once.
//!
//! Needs `redis-server` (Debian package `redis-server`): without it these tests fail under
//! CI and are skipped loudly elsewhere.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::{
    chat_client, connect, next_text, send_text, within, ChatServer, Client, RESET_NOTICE,
};

/// Messages the sender sends in each run, and how fast.
const MESSAGES: usize = 300;
const PACE: Duration = Duration::from_millis(10);
/// The disturbance comes once every listener has this many.
const DISTURB_AT: usize = 100;

/// What happens to Redis mid-run.
#[derive(Clone, Copy, Debug)]
enum Disturbance {
    /// Every subscription is killed: `CLIENT KILL TYPE pubsub`, and the connections blocked
    /// reading a stream (what subscriptions are in lossless mode).
    KillSubscriptions,
    /// Every other connection is killed: `CLIENT KILL TYPE normal`.
    KillConnections,
    /// Redis is killed, and started again (empty) 2 s later.
    Restart,
}

async fn chat_servers(n: usize, url: &str) -> Vec<ChatServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers
            .push(ChatServer::start_with("127.0.0.1:0", &["--no-notices", "--redis", url]).await);
    }
    for server in &mut servers {
        server.wait_for_stderr("Redis backplane: Connected").await;
    }
    servers
}

/// An admin connection to Redis, for the disturbances.
async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("redis url");
    within(
        "an admin connection to Redis",
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect to Redis")
}

/// Kills the connections blocked in `XREAD` (the lossless mode's readers) and every
/// pub/sub one; returns how many were killed.
async fn kill_subscriptions(url: &str) -> usize {
    let mut conn = admin(url).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    let mut killed = 0;
    for line in list.lines().filter(|line| line.contains(" cmd=xread ")) {
        let id = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("id="))
            .expect("CLIENT LIST has ids");
        let n: usize = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL ID");
        killed += n;
    }
    let n: usize = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL TYPE pubsub");
    killed + n
}

async fn kill_connections(url: &str) -> usize {
    let mut conn = admin(url).await;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL TYPE normal")
}

/// Reads what a listener gets until it has `from`'s messages `start..end`, and checks they
/// come as `start, start + 1, ...`: none lost, none twice, none out of order. Other lines
/// are skipped, and returned.
async fn expect_in_order(
    listener: &mut Client,
    name: &str,
    from: &str,
    start: usize,
    end: usize,
) -> Vec<String> {
    let prefix = format!("{from}: ");
    let mut next = start;
    let mut others = Vec::new();
    while next < end {
        let text = match tokio::time::timeout(common::WAIT, next_text(listener)).await {
            Ok(text) => text,
            Err(_) => panic!("{name} got {from}'s messages up to {next} (of {end}), then nothing"),
        };
        let Some(n) = text.strip_prefix(&prefix) else {
            others.push(text); // the other listeners' "here", a notice
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        assert_eq!(
            n, next,
            "{name} got {from}'s message {n} when {next} was next (lost, repeated or out of order)"
        );
        next += 1;
    }
    others
}

async fn nothing_lost(servers: usize, disturbance: Disturbance) {
    let test = format!("lossless_backplane::{servers}_servers_{disturbance:?}");
    let Some(redis) = RedisServer::start(&test).await else {
        return;
    };
    let url = redis.url();
    let port = redis.port;
    let mut redis = Some(redis);
    let chat = chat_servers(servers, &url).await;
    let mut listeners = Vec::new();
    for (s, server) in chat.iter().enumerate() {
        listeners.push((
            format!("listener{s}"),
            chat_client(server.addr, &format!("listener{s}")).await,
        ));
    }
    let mut sender = chat_client(chat[0].addr, "sender").await;

    let sending = async move {
        let mut pace = tokio::time::interval(PACE);
        for n in 0..MESSAGES {
            pace.tick().await;
            send_text(&mut sender, &n.to_string()).await;
        }
        sender
    };
    let listening = async {
        for (name, listener) in &mut listeners {
            let others = expect_in_order(listener, name, "sender", 0, DISTURB_AT).await;
            assert!(
                !others.iter().any(|line| line == RESET_NOTICE),
                "{others:?}"
            );
        }
        match disturbance {
            Disturbance::KillSubscriptions => {
                let killed = kill_subscriptions(&url).await;
                assert!(
                    killed >= servers,
                    "killed {killed} readers of {servers} servers"
                );
            }
            Disturbance::KillConnections => {
                let killed = kill_connections(&url).await;
                assert!(
                    killed >= servers,
                    "killed {killed} connections of {servers} servers"
                );
            }
            Disturbance::Restart => {
                if let Some(redis) = redis.take() {
                    redis.kill().await;
                }
                // The outage an operator would see: Redis back 2 s later, without its data.
                tokio::time::sleep(Duration::from_secs(2)).await;
                redis = Some(RedisServer::restart_on(port).await);
            }
        }
        for (name, listener) in &mut listeners {
            let others = expect_in_order(listener, name, "sender", DISTURB_AT, MESSAGES).await;
            // Redis came back empty, in a new epoch: every client, classic ones too, is
            // told once, on a line of its own.
            let notices = others.iter().filter(|line| *line == RESET_NOTICE).count();
            let expected = usize::from(matches!(disturbance, Disturbance::Restart));
            assert_eq!(notices, expected, "{name}'s notices of a reset: {others:?}");
        }
    };
    let (mut sender, ()) = tokio::join!(sending, listening);
    // Nothing more is on its way: the next line everyone gets is this one, so no duplicate
    // was still in flight.
    send_text(&mut sender, "last").await;
    for (name, listener) in &mut listeners {
        assert_eq!(
            next_text(listener).await,
            "sender: last",
            "{name}'s next line"
        );
    }
    expect_in_order(&mut sender, "the sender", "sender", 0, MESSAGES).await;
    assert_eq!(next_text(&mut sender).await, "sender: last");
    drop(redis);
}

#[tokio::test]
async fn two_servers_every_subscription_killed() {
    nothing_lost(2, Disturbance::KillSubscriptions).await;
}

#[tokio::test]
async fn two_servers_every_connection_killed() {
    nothing_lost(2, Disturbance::KillConnections).await;
}

#[tokio::test]
async fn two_servers_redis_restarted() {
    nothing_lost(2, Disturbance::Restart).await;
}

#[tokio::test]
async fn three_servers_every_subscription_killed() {
    nothing_lost(3, Disturbance::KillSubscriptions).await;
}

#[tokio::test]
async fn three_servers_every_connection_killed() {
    nothing_lost(3, Disturbance::KillConnections).await;
}

#[tokio::test]
async fn three_servers_redis_restarted() {
    nothing_lost(3, Disturbance::Restart).await;
}

/// A tagged room message as the chat sends it to clients that ask for positions:
/// `@POSITION PREVIOUS text`.
struct Tagged {
    position: String,
    previous: String,
    text: String,
}

fn tagged(line: &str) -> Option<Tagged> {
    let rest = line.strip_prefix('@')?;
    let (position, rest) = rest.split_once(' ')?;
    let (previous, text) = rest.split_once(' ')?;
    Some(Tagged {
        position: position.to_owned(),
        previous: previous.to_owned(),
        text: text.to_owned(),
    })
}

/// Reads tagged lines until `from`'s messages `start..end` have come, each once and in
/// order, each naming the one before it as its previous (the chain holds); returns the
/// last position and the untagged lines seen meanwhile.
async fn expect_tagged(
    client: &mut Client,
    from: &str,
    start: usize,
    end: usize,
    mut last: Option<String>,
) -> (String, Vec<String>) {
    let prefix = format!("{from}: ");
    let mut next = start;
    let mut untagged = Vec::new();
    while next < end {
        let line = match tokio::time::timeout(common::WAIT, next_text(client)).await {
            Ok(line) => line,
            Err(_) => panic!("got {from}'s messages up to {next} (of {end}), then nothing"),
        };
        let Some(message) = tagged(&line) else {
            untagged.push(line);
            continue;
        };
        if let Some(last) = &last {
            assert_eq!(
                &message.previous, last,
                "the chain of positions breaks at {line:?}"
            );
        }
        last = Some(message.position.clone());
        let Some(n) = message.text.strip_prefix(&prefix) else {
            continue;
        };
        let n: usize = n
            .parse()
            .unwrap_or_else(|_| panic!("unexpected line {line:?}"));
        assert_eq!(n, next, "got {from}'s message {n} when {next} was next");
        next += 1;
    }
    (last.expect("at least one message"), untagged)
}

/// Waits for the line the chat sends after a resume, skipping room messages; returns it.
async fn recovery_notice(client: &mut Client, untagged: &[String]) -> String {
    let is_notice = |line: &str| line.starts_with("Recovered") || line.starts_with("Could not");
    if let Some(line) = untagged.iter().find(|line| is_notice(line)) {
        return line.clone();
    }
    loop {
        let line = next_text(client).await;
        if is_notice(&line) {
            return line;
        }
    }
}

#[tokio::test]
async fn a_client_that_drops_gets_what_it_missed_once_on_any_server() {
    let Some(redis) =
        RedisServer::start("lossless_backplane::a_client_that_drops_gets_what_it_missed").await
    else {
        return;
    };
    let url = redis.url();
    let chat = chat_servers(2, &url).await;
    let (a, b) = (chat[0].addr, chat[1].addr);
    let mut sender = chat_client(a, "sender").await;
    // On ann's server: once it has a message, so has the server's history.
    let mut witness = chat_client(b, "witness").await;
    let mut ann = connect(b, "/api/Chat?username=ann&positions=1").await;
    send_text(&mut ann, "here").await;
    let here = tagged(&next_text(&mut ann).await).expect("a tagged line");
    assert_eq!(here.text, "ann: here");
    let mut last = here.position;

    // Live, then dropped while 30 messages go by.
    for n in 0..20 {
        send_text(&mut sender, &n.to_string()).await;
    }
    (last, _) = expect_tagged(&mut ann, "sender", 0, 20, Some(last)).await;
    drop(ann);
    for n in 20..50 {
        send_text(&mut sender, &n.to_string()).await;
    }
    expect_in_order(&mut witness, "the witness", "sender", 0, 50).await;

    // Back on the same server: the 30 it missed, once, in order, and it is told.
    let path = format!("/api/Chat?username=ann&resume={last}");
    let mut ann = connect(b, &path).await;
    let (back, untagged) = expect_tagged(&mut ann, "sender", 20, 50, Some(last)).await;
    assert_eq!(
        recovery_notice(&mut ann, &untagged).await,
        "Recovered 30 missed messages"
    );
    last = back;
    drop(ann);

    // Back on a server started after the messages went by, which never saw them: they
    // come from Redis. The sender keeps sending meanwhile: at the seam between replay and
    // live messages, nothing is lost or repeated.
    for n in 50..80 {
        send_text(&mut sender, &n.to_string()).await;
    }
    let mut fresh = chat_servers(1, &url).await;
    let c = fresh[0].addr;
    let sending = async {
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        for n in 80..200 {
            pace.tick().await;
            send_text(&mut sender, &n.to_string()).await;
        }
    };
    let resuming = async {
        let mut ann = connect(c, &format!("/api/Chat?username=ann&resume={last}")).await;
        let (_, untagged) = expect_tagged(&mut ann, "sender", 50, 200, Some(last.clone())).await;
        let notice = recovery_notice(&mut ann, &untagged).await;
        assert!(notice.starts_with("Recovered "), "{notice}");
        ann
    };
    let ((), mut ann) = tokio::join!(sending, resuming);

    // Nothing more on its way.
    send_text(&mut sender, "last").await;
    let line = next_text(&mut ann).await;
    assert!(line.ends_with(" sender: last"), "{line}");

    // A position of another history: the client is told, and gets the live messages.
    let mut bob = connect(c, "/api/Chat?username=bob&resume=1.5").await;
    let notice = recovery_notice(&mut bob, &[]).await;
    assert!(notice.starts_with("Could not recover"), "{notice}");
    send_text(&mut sender, "after").await;
    let line = next_text(&mut bob).await;
    assert!(line.ends_with(" sender: after"), "{line}");
    drop(fresh.pop());
}

/// A backlog arriving at once (a server whose Redis connection stalled while another
/// published) does not overflow its clients' outbound queues: the reader lets the
/// connections write between the messages it hands over, so a client that reads is never
/// closed as a slow consumer because of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_outbound_queue_reaches_a_client_that_reads() {
    use websocket_handler::backplane::{BackplaneState, RedisBackplane};
    use websocket_handler::{WebSocketCollection, WebSocketServer};
    const MESSAGES: usize = 1000;
    let Some(redis) = RedisServer::start("lossless_backplane::backlog").await else {
        return;
    };
    let port: u16 = (redis.url().rsplit(':').next())
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .expect("redis://127.0.0.1:PORT");
    let proxy = common::HeldProxy::start(([127, 0, 0, 1], port).into()).await;
    let there = RedisBackplane::new(redis.url()).expect("a backplane");
    let here = RedisBackplane::new(format!("redis://{}", proxy.addr)).expect("a backplane");
    for backplane in [&there, &here] {
        let mut state = backplane.state_changes();
        common::within(
            "the backplane to connect",
            state.wait_for(|state| *state == BackplaneState::Connected),
        )
        .await
        .expect("the backplane runs");
    }
    let room_there = WebSocketCollection::with_backplane("backlog", there.clone());
    let room_here = WebSocketCollection::with_backplane("backlog", here.clone());
    // A queue of 64 messages: the backlog is 1,000.
    let server = WebSocketServer::builder()
        .outbound_queue_capacity(64)
        .build();
    let addr = common::serve(server, move |_| common::EchoRoom {
        room: room_here.clone(),
    })
    .await;
    let mut client = common::ReadAlways::new(connect(addr, "/").await);
    assert!(client.next_line().await.starts_with("joined "));
    // Once this side reads the topic, a broadcast from the other reaches the client.
    common::within("a broadcast from the other backplane", async {
        loop {
            room_there.broadcast("warm");
            if client
                .next_line_within(Duration::from_millis(200))
                .await
                .is_some()
            {
                return;
            }
        }
    })
    .await;
    proxy.hold(true);
    let published = there.stats().published;
    for n in 0..MESSAGES {
        room_there.broadcast(format!("backlog {n}"));
    }
    common::within("the backlog to be published", async {
        while there.stats().published < published + MESSAGES as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    proxy.hold(false);
    let mut next = 0;
    while next < MESSAGES {
        let line = client
            .next_line_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!("got {next} of the {MESSAGES} messages of the backlog, then nothing")
            });
        if line == "warm" && next == 0 {
            continue;
        }
        assert_eq!(line, format!("backlog {next}"), "once each, in order");
        next += 1;
    }
}

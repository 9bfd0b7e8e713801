//! The lossless Redis backplane through Redis Sentinel: chat example processes started with
//! `--redis-sentinel` and `--redis-master`, a primary, a replica and three sentinels (real
//! `redis-server` processes on loopback ports), a paced sender, and the primary killed,
//! demoted or rewound mid-run. Every listener on both servers must get every message exactly
//! once and in order; when the new primary cannot be proven to hold what was delivered,
//! every client is told that history was reset, on a line of its own, never a silent gap
//! or a duplicate.
//!
//! Needs `redis-server` with Sentinel (Debian packages `redis-server` and `redis-sentinel`):
//! without it these tests fail under CI and are skipped loudly elsewhere.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::sentinel::{Sentinels, MASTER};
use common::{chat_client, next_text, send_text, ChatServer, Client, RESET_NOTICE};

/// Messages the sender sends in each run, and how fast (300 a second).
const MESSAGES: usize = 450;
const PACE: Duration = Duration::from_micros(3_333);
/// The disturbance comes once every listener has this many.
const DISTURB_AT: usize = 150;

/// What happens to the primary mid-run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Failure {
    /// Killed (SIGKILL); the sentinels promote the replica, which has every write.
    Killed,
    /// The replica stops (SIGSTOP) and misses the last writes; then the primary is killed
    /// and the replica, resumed, promoted: the new primary is behind what was delivered.
    KilledAhead,
    /// `SENTINEL FAILOVER`: the primary, alive, becomes a replica (writes to it are
    /// answered `READONLY`), the replica the primary.
    Demoted,
}

async fn chat_servers(n: usize, sentinels: &Sentinels) -> Vec<ChatServer> {
    let list = sentinels.sentinel_urls().join(",");
    let mut servers = Vec::new();
    for _ in 0..n {
        let args = [
            "--no-notices",
            "--redis-sentinel",
            &list,
            "--redis-master",
            MASTER,
        ];
        servers.push(ChatServer::start_with("127.0.0.1:0", &args).await);
    }
    for server in &mut servers {
        server.wait_for_stderr("Redis backplane: Connected").await;
    }
    servers
}

/// Reads until `from`'s messages `start..end` have come, each once and in order; returns
/// the other lines.
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
        // A failover takes a few seconds: allow for it.
        let text = match tokio::time::timeout(Duration::from_secs(30), next_text(listener)).await {
            Ok(text) => text,
            Err(_) => panic!("{name} got {from}'s messages up to {next} (of {end}), then nothing"),
        };
        let Some(n) = text.strip_prefix(&prefix) else {
            others.push(text);
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

/// A `/health` answer's status line.
async fn health(server: &ChatServer) -> String {
    let response = common::http_get(server.addr, "/health", "").await;
    response.lines().next().unwrap_or_default().to_owned()
}

async fn through_a_failover(failure: Failure) {
    let test = format!("redis_sentinel::{failure:?}");
    let Some(mut set) = Sentinels::start(&test).await else {
        return;
    };
    let chat = chat_servers(2, &set).await;
    let mut listeners = Vec::new();
    for (s, server) in chat.iter().enumerate() {
        let name = format!("listener{s}");
        listeners.push((name.clone(), chat_client(server.addr, &name).await));
    }
    let mut sender = chat_client(chat[0].addr, "sender").await;
    let primary = set.primary().await;
    let replica = set
        .nodes
        .iter()
        .map(|node| node.port)
        .find(|port| *port != primary)
        .expect("a replica");

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
        match failure {
            Failure::Killed => set.kill(primary).await,
            Failure::KilledAhead => {
                set.signal(replica, "STOP");
                // The primary takes writes the stopped replica never gets: what the
                // listeners have read by then is ahead of the replica.
                for (name, listener) in &mut listeners {
                    expect_in_order(listener, name, "sender", DISTURB_AT, DISTURB_AT + 30).await;
                }
                set.kill(primary).await;
                set.signal(replica, "CONT");
            }
            Failure::Demoted => {
                let mut sentinel = common::sentinel::admin(
                    set.sentinel_urls()[0]
                        .rsplit(':')
                        .next()
                        .and_then(|port| port.parse().ok())
                        .expect("a sentinel port"),
                )
                .await;
                let _: () = redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(MASTER)
                    .query_async(&mut sentinel)
                    .await
                    .expect("SENTINEL FAILOVER");
            }
        }
        let promoted = set.wait_for_failover(primary).await;
        assert_eq!(promoted, replica);
        let resume_at = match failure {
            Failure::KilledAhead => DISTURB_AT + 30,
            _ => DISTURB_AT,
        };
        let mut notices = Vec::new();
        for (name, listener) in &mut listeners {
            let others = expect_in_order(listener, name, "sender", resume_at, MESSAGES).await;
            let told = others.iter().filter(|line| *line == RESET_NOTICE).count();
            assert!(
                told <= 1,
                "{name} was told of a reset {told} times: {others:?}"
            );
            notices.push(told);
        }
        if failure == Failure::KilledAhead {
            // The new primary lacks messages every listener had: positions from before
            // cannot stand, and every client is told.
            assert!(notices.iter().all(|told| *told == 1), "{notices:?}");
        }
        // Every server publishes again: /health is 200 on both.
        for server in &chat {
            assert!(
                health(server).await.contains("200"),
                "{}",
                health(server).await
            );
        }
    };
    let (mut sender, ()) = tokio::join!(sending, listening);

    if failure != Failure::Demoted {
        // The old primary is started again as it was (an empty primary, until the sentinels
        // make it a replica): the servers keep to the primary the sentinels name.
        set.restart(primary, None).await;
    }
    send_text(&mut sender, "last").await;
    for (name, listener) in &mut listeners {
        let others = expect_in_order(listener, name, "sender", MESSAGES, MESSAGES).await;
        assert!(others.is_empty(), "{others:?}");
        assert_eq!(
            next_text(listener).await,
            "sender: last",
            "{name}'s next line"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_nothing() {
    through_a_failover(Failure::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_primary_behind_what_was_delivered_is_reported_and_loses_nothing() {
    through_a_failover(Failure::KilledAhead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_answering_readonly_loses_nothing() {
    through_a_failover(Failure::Demoted).await;
}

/// While the backplane cannot publish (the primary killed, until the sentinels promote the
/// replica), `/health` answers 503; once the new primary takes writes, 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_no_primary_takes_writes() {
    let Some(mut set) = Sentinels::start("redis_sentinel::health").await else {
        return;
    };
    let chat = chat_servers(1, &set).await;
    assert!(health(&chat[0]).await.contains("200"));
    let primary = set.primary().await;
    set.kill(primary).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !health(&chat[0]).await.contains("503") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health still says {} with the primary killed",
            health(&chat[0]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    set.wait_for_failover(primary).await;
    while !health(&chat[0]).await.contains("200") {
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(20),
            "/health still says {} after the failover",
            health(&chat[0]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

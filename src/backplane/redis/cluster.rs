//! What the lossless mode needs on a Redis Cluster besides routing by key:
//! - **Bells.** A blocked `XREAD` covers one slot only, so a reader cannot wait on all its
//!   topics with one command. Instead the publish script rings the topic's bell, a sharded
//!   pub/sub channel in the topic's slot (`SPUBLISH {topic}:bell OFFSET`), and the reader,
//!   subscribed to the bells of its topics on its connection to each primary, reads the
//!   topics rung ([`Bells`]).
//! - **Hand-overs.** A topic's keys found on a primary other than the Redis run that wrote
//!   them came by a slot migration (complete, as `MIGRATE` moves whole keys) or by a failover
//!   (a replica's copy, which may lack the last writes). [`handed_over`] tells them apart:
//!   the keys keep their epoch only if the run that wrote them is still a primary and
//!   redirects them elsewhere, which a failed-over primary never does (it is gone, or a
//!   replica now).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::conn::Conn;
use crate::backplane::lock;

/// A bell's offset that means "read, whatever the offset": a subscription (re)made.
const ANYWAY: u64 = u64::MAX;

/// The bells of one session's reader: what rang since it last looked.
#[derive(Default)]
pub(super) struct Bells {
    /// By channel (not bell) name: the highest offset its bell named, or [`ANYWAY`].
    rung: Mutex<HashMap<String, u64>>,
    /// Channels whose bell subscription the cluster ended (their slot moved): subscribed
    /// again on the slot's primary now.
    ended: Mutex<HashSet<String>>,
    /// Something rang or ended.
    wake: Notify,
    /// The connection to a node was lost.
    lost: Notify,
}

/// The bell of `channel`: a sharded channel in the slot of its keys (`{channel}`).
pub(super) fn bell(channel: &str) -> String {
    format!("{{{channel}}}:bell")
}

/// The channel a bell is of.
fn channel_of(bell: &[u8]) -> Option<String> {
    let bell = std::str::from_utf8(bell).ok()?;
    let channel = bell.strip_prefix('{')?.strip_suffix("}:bell")?;
    Some(channel.to_owned())
}

impl Bells {
    /// What Redis pushed to the reader: a bell (`smessage`), a subscription made (read the
    /// channel: anything written before it took effect rang no bell here) or ended, or a lost
    /// node.
    pub(super) fn on_push(&self, push: PushInfo) {
        let mut data = push.data.into_iter();
        let channel = match data.next() {
            Some(Value::BulkString(bell)) => channel_of(&bell),
            _ => None,
        };
        match (push.kind, channel) {
            (PushKind::SMessage, Some(channel)) => {
                let offset = match data.next() {
                    Some(Value::BulkString(offset)) => std::str::from_utf8(&offset)
                        .ok()
                        .and_then(|offset| offset.parse().ok()),
                    _ => None,
                };
                self.ring(channel, offset.unwrap_or(ANYWAY));
            }
            (PushKind::SSubscribe, Some(channel)) => self.ring(channel, ANYWAY),
            (PushKind::SUnsubscribe, Some(channel)) => {
                lock(&self.ended).insert(channel);
                self.wake.notify_one();
            }
            (PushKind::Disconnection, _) => self.lost.notify_one(),
            _ => {}
        }
    }

    /// `channel` is to be read past `offset` at least.
    pub(super) fn ring(&self, channel: String, offset: u64) {
        let mut rung = lock(&self.rung);
        let at = rung.entry(channel).or_insert(0);
        *at = (*at).max(offset);
        drop(rung);
        self.wake.notify_one();
    }

    /// `channel` is to be read again, whatever its bell said.
    pub(super) fn ring_anyway(&self, channel: String) {
        self.ring(channel, ANYWAY);
    }

    /// Wakes a [`wait`](Self::wait) in progress (the topics read changed).
    pub(super) fn interrupt(&self) {
        self.wake.notify_one();
    }

    /// What rang since the last call: by channel, the offset to read past.
    pub(super) fn take_rung(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *lock(&self.rung))
    }

    /// The channels whose bell subscription the cluster ended since the last call.
    pub(super) fn take_ended(&self) -> HashSet<String> {
        std::mem::take(&mut *lock(&self.ended))
    }

    /// Waits until a bell rings or a subscription ends, or until `until`. `Err` if a node's
    /// connection was lost.
    pub(super) async fn wait(&self, until: tokio::time::Instant) -> Result<(), Lost> {
        loop {
            if !lock(&self.rung).is_empty() || !lock(&self.ended).is_empty() {
                return Ok(());
            }
            tokio::select! {
                // `notify_one` keeps a permit: a push between the check and here is not missed.
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(until) => return Ok(()),
                () = self.lost.notified() => return Err(Lost),
            }
        }
    }
}

/// The connection to a node of the cluster was lost.
#[derive(Debug)]
pub(super) struct Lost;

/// Of the `(run, key)` pairs asked, those whose run handed the key over: a Redis run that
/// is still a primary of the cluster (same run id: not restarted) and that answers `MOVED` or
/// `ASK` for the key (it no longer has it). Anything that cannot be asked counts as not
/// handed over. `node` says how to reach a node (credentials, database); its address is the
/// cluster's answer.
pub(super) async fn handed_over(
    conn: &mut Conn,
    node: &ConnectionInfo,
    asked: &[(String, String)],
    timeout: Duration,
) -> HashSet<(String, String)> {
    let mut proven = HashSet::new();
    let runs: HashSet<&str> = asked.iter().map(|(run, _)| run.as_str()).collect();
    let nodes: String = match tokio::time::timeout(
        timeout,
        redis::cmd("CLUSTER").arg("NODES").query_async(conn),
    )
    .await
    {
        Ok(Ok(nodes)) => nodes,
        _ => return proven,
    };
    for (host, port) in primaries(&nodes) {
        let info = node.clone().set_addr(ConnectionAddr::Tcp(host, port));
        let Ok(client) = redis::Client::open(info) else {
            continue;
        };
        let asking = async {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let mut direct = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let server: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut direct)
                .await?;
            let Some(run) = server
                .lines()
                .find_map(|line| line.strip_prefix("run_id:"))
                .map(str::trim)
                .filter(|run| runs.contains(run))
            else {
                return Ok::<_, redis::RedisError>(Vec::new());
            };
            // Its role now, from itself: a demoted primary is a replica.
            let replication: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut direct)
                .await?;
            if !replication.lines().any(|line| line.trim() == "role:master") {
                return Ok(Vec::new());
            }
            let mut handed = Vec::new();
            for (of, key) in asked.iter().filter(|(of, _)| of == run) {
                let exists: redis::RedisResult<i64> =
                    redis::cmd("EXISTS").arg(key).query_async(&mut direct).await;
                if let Err(error) = exists {
                    if matches!(error.code(), Some("MOVED" | "ASK")) {
                        handed.push((of.clone(), key.clone()));
                    }
                }
            }
            Ok(handed)
        };
        if let Ok(Ok(handed)) = tokio::time::timeout(timeout, asking).await {
            proven.extend(handed);
        }
    }
    proven
}

/// The addresses of the primaries that `CLUSTER NODES` lists as reachable.
fn primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (_id, addr, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            let down = ["fail", "fail?", "handshake", "noaddr"];
            if !flags.contains(&"master") || flags.iter().any(|flag| down.contains(flag)) {
                return None;
            }
            // `ip:port@cport[,hostname]`
            let addr = addr.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            (!host.is_empty()).then(|| Some((host.to_owned(), port.parse().ok()?)))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{bell, channel_of, primaries, Bells};
    use redis::{PushInfo, PushKind, Value};

    #[test]
    fn a_bell_is_in_its_topics_slot_and_names_it() {
        assert_eq!(bell("app:chat"), "{app:chat}:bell");
        assert_eq!(channel_of(b"{app:chat}:bell").as_deref(), Some("app:chat"));
        assert_eq!(channel_of(b"{a}b}:bell").as_deref(), Some("a}b"));
        assert_eq!(channel_of(b"app:chat"), None);
    }

    #[test]
    fn bells_keep_the_highest_offset_and_subscriptions_read_anyway() {
        let bells = Bells::default();
        let push = |kind, data: Vec<&str>| PushInfo {
            kind,
            data: data
                .into_iter()
                .map(|text| Value::BulkString(text.as_bytes().to_vec()))
                .collect(),
        };
        bells.on_push(push(PushKind::SMessage, vec!["{a}:bell", "7"]));
        bells.on_push(push(PushKind::SMessage, vec!["{a}:bell", "5"]));
        bells.on_push(push(PushKind::SSubscribe, vec!["{b}:bell"]));
        bells.on_push(push(PushKind::SUnsubscribe, vec!["{c}:bell"]));
        bells.on_push(push(PushKind::SMessage, vec!["not a bell", "9"]));
        let rung = bells.take_rung();
        assert_eq!(rung.len(), 2);
        assert_eq!(rung["a"], 7);
        assert_eq!(rung["b"], u64::MAX);
        assert!(bells.take_rung().is_empty());
        assert_eq!(bells.take_ended().into_iter().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn primaries_are_the_reachable_masters() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
a3 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected 10923-16383
a4 127.0.0.1:7004@17004,node4.example slave a1 0 0 1 connected
a5 :7005@17005 master - 0 0 5 connected
a6 10.0.0.6:7006@17006,node6.example master - 0 0 6 connected 10923-16383
";
        assert_eq!(
            primaries(nodes),
            [
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002),
                ("10.0.0.6".to_owned(), 7006)
            ]
        );
    }
}

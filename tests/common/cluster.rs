//! A real Redis Cluster on loopback ports, started and stopped by the test: three primaries,
//! each with one replica if asked, made a cluster with `redis-cli --cluster create`. Slots
//! are migrated as `redis-cli --cluster reshard` does (`SETSLOT`, `MIGRATE`), a key at a
//! time, so that a test can act while a slot is half moved.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Child;

use super::redis_server::{free_port, installed, spawn_until};
use super::{within, WAIT};

/// A node of the cluster.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
}

/// The cluster; every process is killed when it is dropped.
pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts three primaries (and a replica of each with `replicas`) for test `test`, makes
    /// them a cluster and waits until every node says it is ok and every replica is in sync.
    /// Without `redis-server`, fails under CI and otherwise reports the test as skipped and
    /// returns `None`.
    pub async fn start(test: &str, replicas: bool) -> Option<Cluster> {
        if !installed() {
            super::skip(
                test,
                "needs redis-server and redis-cli (Debian: apt-get install -y redis-server)",
            );
            return None;
        }
        let dir = super::temp_dir(test);
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        let count = if replicas { 6 } else { 3 };
        for _ in 0..count {
            let node = cluster.start_node().await;
            cluster.nodes.push(node);
        }
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(
            cluster
                .nodes
                .iter()
                .map(|node| format!("127.0.0.1:{}", node.port)),
        );
        create.extend([
            "--cluster-replicas".to_owned(),
            if replicas { "1" } else { "0" }.to_owned(),
            "--cluster-yes".to_owned(),
        ]);
        let output = within(
            "redis-cli --cluster create",
            tokio::process::Command::new("redis-cli")
                .args(&create)
                .output(),
        )
        .await
        .expect("run redis-cli");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        cluster.wait_until_settled().await;
        Some(cluster)
    }

    async fn start_node(&self) -> Node {
        for _ in 0..5 {
            let (port, bus) = (free_port(), free_port());
            let args = self.node_args(port, bus);
            if let Some(child) = spawn_until(&args, "Ready to accept connections").await {
                return Node {
                    child: Some(child),
                    port,
                };
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn node_args(&self, port: u16, bus: u16) -> Vec<String> {
        let dir = self.dir.to_string_lossy().into_owned();
        [
            "--port",
            &port.to_string(),
            "--cluster-port",
            &bus.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            // A failed primary is noticed within a second: failovers take a few.
            "--cluster-node-timeout",
            "1000",
            // The layout stays as the test made it.
            "--cluster-allow-replica-migration",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--dbfilename",
            &format!("never-written-{port}.rdb"),
        ]
        .map(str::to_owned)
        .into()
    }

    /// `redis://127.0.0.1:PORT` of every node, as the backplane is given them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect()
    }

    /// The ports of the nodes that are primaries now, with the slot ranges each serves.
    pub async fn primaries(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let nodes = self.cluster_nodes(self.live_port()).await;
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let flags = *fields.get(2)?;
                if !flags.split(',').any(|flag| flag == "master") || flags.contains("fail") {
                    return None;
                }
                let port = port_of(fields.get(1)?)?;
                let ranges = fields[8..]
                    .iter()
                    .filter(|range| !range.starts_with('['))
                    .filter_map(|range| match range.split_once('-') {
                        Some((from, to)) => Some((from.parse().ok()?, to.parse().ok()?)),
                        None => {
                            let slot = range.parse().ok()?;
                            Some((slot, slot))
                        }
                    })
                    .collect();
                Some((port, ranges))
            })
            .collect()
    }

    /// The port of the primary that serves `slot` now.
    pub async fn primary_of(&self, slot: u16) -> u16 {
        self.primaries()
            .await
            .into_iter()
            .find(|(_, ranges)| {
                ranges
                    .iter()
                    .any(|(from, to)| (*from..=*to).contains(&slot))
            })
            .map(|(port, _)| port)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// The port of a replica of the primary on `primary`.
    pub async fn replica_of(&self, primary: u16) -> u16 {
        let nodes = self.cluster_nodes(primary).await;
        let id = nodes
            .lines()
            .find(|line| line.contains("myself"))
            .and_then(|line| line.split(' ').next())
            .expect("the node names itself")
            .to_owned();
        nodes
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.get(3) == Some(&id.as_str()) && !fields[2].contains("fail"))
                    .then(|| port_of(fields[1]))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("the primary on {primary} has no replica"))
    }

    /// The slot of `key`.
    pub async fn slot(&self, key: &str) -> u16 {
        let mut admin = admin(self.live_port()).await;
        within(
            "CLUSTER KEYSLOT",
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut admin),
        )
        .await
        .expect("CLUSTER KEYSLOT")
    }

    /// Moves `slot` from the primary on `from` to the one on `to` as `redis-cli --cluster
    /// reshard` does: the slot importing and migrating, its keys moved by `MIGRATE`, one at a
    /// time, a tick of `pace` apart, then the slot given to `to` everywhere.
    pub async fn migrate(&self, slot: u16, from: u16, to: u16, pace: &mut tokio::time::Interval) {
        let (mut source, mut target) = (admin(from).await, admin(to).await);
        let from_id = self.id(from).await;
        let to_id = self.id(to).await;
        let setslot = |state: &str, id: &str| {
            let mut command = redis::cmd("CLUSTER");
            command.arg("SETSLOT").arg(slot).arg(state).arg(id);
            command
        };
        let _: () = within(
            "SETSLOT IMPORTING",
            setslot("IMPORTING", &from_id).query_async(&mut target),
        )
        .await
        .expect("SETSLOT IMPORTING");
        let _: () = within(
            "SETSLOT MIGRATING",
            setslot("MIGRATING", &to_id).query_async(&mut source),
        )
        .await
        .expect("SETSLOT MIGRATING");
        loop {
            let keys: Vec<String> = within(
                "GETKEYSINSLOT",
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(1)
                    .query_async(&mut source),
            )
            .await
            .expect("GETKEYSINSLOT");
            let Some(key) = keys.into_iter().next() else {
                break;
            };
            let _: redis::Value = within(
                "MIGRATE",
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&key)
                    .query_async(&mut source),
            )
            .await
            .expect("MIGRATE");
            pace.tick().await;
        }
        // The new owner first, then the old one, then the rest (as redis-cli does).
        for port in [to, from] {
            let _: () = within(
                "SETSLOT NODE",
                setslot("NODE", &to_id).query_async(&mut admin(port).await),
            )
            .await
            .expect("SETSLOT NODE");
        }
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            if node.port != from && node.port != to {
                let _: redis::RedisResult<()> = setslot("NODE", &to_id)
                    .query_async(&mut admin(node.port).await)
                    .await;
            }
        }
        self.wait_for("every node to see the slot moved", |cluster| async move {
            for node in cluster.nodes.iter().filter(|node| node.child.is_some()) {
                let nodes = cluster.cluster_nodes(node.port).await;
                let owner = nodes.lines().find(|line| {
                    line.split(' ').nth(1).and_then(port_of) == Some(to)
                        && line.split(' ').skip(8).any(|range| covers(range, slot))
                });
                if owner.is_none() {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// `CLUSTER FAILOVER` on the replica on `replica`: its primary hands over, the replica
    /// having caught up first. Waits until the replica is a primary and the cluster is ok.
    pub async fn failover(&self, replica: u16) {
        let _: () = within(
            "CLUSTER FAILOVER",
            redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query_async(&mut admin(replica).await),
        )
        .await
        .expect("CLUSTER FAILOVER");
        self.wait_until_primary(replica).await;
    }

    /// Waits until the node on `port` is a primary and every live node says the cluster is ok.
    pub async fn wait_until_primary(&self, port: u16) {
        self.wait_for("the replica to be promoted", |_| async move {
            let mut admin = admin(port).await;
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut admin)
                .await
                .unwrap_or_default();
            matches!(role.first(), Some(redis::Value::BulkString(role)) if role == b"master")
        })
        .await;
        self.wait_until_settled().await;
    }

    /// Kills the node on `port` (SIGKILL, as a crash would).
    pub async fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("a node on that port");
        let mut child = node.child.take().expect("the node is running");
        child.start_kill().expect("kill redis-server");
        let _ = within("the killed redis-server to exit", child.wait()).await;
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the node on `port`: a stopped replica misses
    /// what its primary writes meanwhile.
    pub fn signal(&self, port: u16, signal: &str) {
        let pid = self
            .nodes
            .iter()
            .find(|node| node.port == port)
            .and_then(|node| node.child.as_ref())
            .and_then(Child::id)
            .expect("the node is running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits until every live node says the cluster is ok, agrees on the layout of all 16384
    /// slots, and every replica is in sync with its primary.
    pub async fn wait_until_settled(&self) {
        self.wait_for("the cluster to settle", |cluster| async move {
            let mut layouts = Vec::new();
            for node in cluster.nodes.iter().filter(|node| node.child.is_some()) {
                let mut admin = admin(node.port).await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut admin)
                    .await
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok")
                    || !info.contains("cluster_slots_assigned:16384")
                {
                    return false;
                }
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut admin)
                    .await
                    .unwrap_or_default();
                if replication.contains("role:slave")
                    && !replication.contains("master_link_status:up")
                {
                    return false;
                }
                let mut layout: Vec<String> = cluster
                    .cluster_nodes(node.port)
                    .await
                    .lines()
                    .filter(|line| !line.contains("fail"))
                    .map(|line| {
                        let fields: Vec<&str> = line.split(' ').collect();
                        let role = if fields[2].contains("master") {
                            "m"
                        } else {
                            "r"
                        };
                        format!("{} {role} {}", fields[1], fields[8..].join(" "))
                    })
                    .collect();
                layout.sort();
                layouts.push(layout);
            }
            layouts.windows(2).all(|pair| pair[0] == pair[1])
        })
        .await;
    }

    /// Waits until the node on `port` has a subscriber to the sharded channel `channel`.
    pub async fn wait_for_shard_subscriber(&self, port: u16, channel: &str) {
        self.wait_for_shard_subscribers(port, channel, 1).await;
    }

    /// Waits until the node on `port` has `count` subscribers to the sharded channel
    /// `channel`, or more.
    pub async fn wait_for_shard_subscribers(&self, port: u16, channel: &str, count: i64) {
        let what = format!("{count} subscribers to {channel} on {port}");
        self.wait_for(&what, |_| async move {
            let counts: Vec<redis::Value> = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(channel)
                .query_async(&mut admin(port).await)
                .await
                .unwrap_or_default();
            matches!(counts.get(1), Some(redis::Value::Int(n)) if *n >= count)
        })
        .await;
    }

    /// `CONFIG RESETSTAT` on every live node: error counts start from zero.
    pub async fn reset_stats(&self) {
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let _: () = within(
                "CONFIG RESETSTAT",
                redis::cmd("CONFIG")
                    .arg("RESETSTAT")
                    .query_async(&mut admin(node.port).await),
            )
            .await
            .expect("CONFIG RESETSTAT");
        }
    }

    /// `INFO errorstats` of every live node, by port.
    pub async fn error_stats(&self) -> Vec<(u16, String)> {
        let mut stats = Vec::new();
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let info: String = within(
                "INFO errorstats",
                redis::cmd("INFO")
                    .arg("errorstats")
                    .query_async(&mut admin(node.port).await),
            )
            .await
            .expect("INFO errorstats");
            stats.push((node.port, info));
        }
        stats
    }

    async fn id(&self, port: u16) -> String {
        within(
            "CLUSTER MYID",
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut admin(port).await),
        )
        .await
        .expect("CLUSTER MYID")
    }

    async fn cluster_nodes(&self, port: u16) -> String {
        within(
            "CLUSTER NODES",
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut admin(port).await),
        )
        .await
        .expect("CLUSTER NODES")
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|node| node.child.is_some())
            .map(|node| node.port)
            .expect("a live node")
    }

    /// Polls `check` every 50 ms until it holds; panics after 30 s, naming `what`.
    async fn wait_for<'a, F, Fut>(&'a self, what: &str, check: F)
    where
        F: Fn(&'a Cluster) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30).max(WAIT);
        while !check(self).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes first: they write their files until they are gone.
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The port of `ip:port@cport[,hostname]`.
fn port_of(addr: &str) -> Option<u16> {
    addr.split(['@', ','])
        .next()?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

/// Whether a slot field of `CLUSTER NODES` (`N` or `FROM-TO`) covers `slot`.
fn covers(range: &str, slot: u16) -> bool {
    match range.split_once('-') {
        Some((from, to)) => match (from.parse::<u16>(), to.parse::<u16>()) {
            (Ok(from), Ok(to)) => (from..=to).contains(&slot),
            _ => false,
        },
        None => range.parse() == Ok(slot),
    }
}

/// A plain connection to the node on `port`.
pub async fn admin(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("redis url");
    within(
        "an admin connection",
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect to Redis")
}

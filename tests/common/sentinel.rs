//! A real Redis Sentinel deployment on loopback ports, started and stopped by the test: a
//! primary, a replica and three sentinels (quorum 2) watching them under one master name.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Child;

use super::redis_server::{free_port, installed, spawn_until};
use super::{within, WAIT};

/// The master name the sentinels watch.
pub const MASTER: &str = "mymaster";

/// A data node (primary or replica) of the deployment.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
}

/// The deployment; every process is killed when it is dropped.
pub struct Sentinels {
    pub nodes: Vec<Node>,
    sentinels: Vec<(Child, u16)>,
    dir: PathBuf,
}

impl Sentinels {
    /// Starts the deployment for test `test` and waits until the sentinels know the
    /// replica and each other (failover works only then). Without `redis-server`, fails
    /// under CI and otherwise reports the test as skipped and returns `None`.
    pub async fn start(test: &str) -> Option<Sentinels> {
        if !installed() {
            super::skip(
                test,
                "needs redis-server with Sentinel (Debian: apt-get install -y redis-server redis-sentinel)",
            );
            return None;
        }
        let dir = super::temp_dir(test);
        let primary = start_node(None).await;
        let replica = start_node(Some(primary.port)).await;
        let mut set = Sentinels {
            nodes: vec![primary, replica],
            sentinels: Vec::new(),
            dir,
        };
        let primary_port = set.nodes[0].port;
        for i in 0..3 {
            set.start_sentinel(i, primary_port).await;
        }
        set.wait_until_replicated(set.nodes[1].port).await;
        // Every sentinel knows the replica and the two other sentinels.
        set.wait_for(
            "the sentinels to know each other and the replica",
            |set| async move {
                for (_, port) in &set.sentinels {
                    let mut admin = admin(*port).await;
                    let others: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("sentinels")
                        .arg(MASTER)
                        .query_async(&mut admin)
                        .await
                        .unwrap_or_default();
                    let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg(MASTER)
                        .query_async(&mut admin)
                        .await
                        .unwrap_or_default();
                    if others.len() < 2 || replicas.is_empty() {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        Some(set)
    }

    async fn start_sentinel(&mut self, i: usize, primary: u16) {
        for _ in 0..5 {
            let port = free_port();
            let conf = self.dir.join(format!("sentinel-{i}.conf"));
            // Sentinel rewrites its configuration file: one of its own, writable.
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n",
                dir = self.dir.display()
            );
            std::fs::write(&conf, text).expect("write a sentinel configuration");
            let args = [conf.to_string_lossy().into_owned(), "--sentinel".to_owned()];
            if let Some(child) = spawn_until(&args, "+monitor master").await {
                self.sentinels.push((child, port));
                return;
            }
        }
        panic!("sentinel {i} did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:PORT` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(_, port)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The port of the node the sentinels name as primary now.
    pub async fn primary(&self) -> u16 {
        let (_, port) = self.sentinels[0];
        let mut admin = admin(port).await;
        let (_host, port): (String, u16) = within(
            "SENTINEL get-master-addr-by-name",
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query_async(&mut admin),
        )
        .await
        .expect("the sentinels name a primary");
        port
    }

    /// Waits until the sentinels name a primary other than `old`, and it says it is one.
    pub async fn wait_for_failover(&self, old: u16) -> u16 {
        self.wait_for(
            "the sentinels to promote another primary",
            |set| async move {
                let port = set.primary().await;
                if port == old {
                    return false;
                }
                let mut admin = admin(port).await;
                let role: Vec<redis::Value> = redis::cmd("ROLE")
                    .query_async(&mut admin)
                    .await
                    .unwrap_or_default();
                matches!(role.first(), Some(redis::Value::BulkString(role)) if role == b"master")
            },
        )
        .await;
        self.primary().await
    }

    /// Waits until the replica on `port` has a live link to its primary.
    pub async fn wait_until_replicated(&self, port: u16) {
        self.wait_for("the replica's link to its primary", |_| async move {
            let mut admin = admin(port).await;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut admin)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        })
        .await;
    }

    /// Kills the node on `port` (SIGKILL, as a crash would).
    pub async fn kill(&mut self, port: u16) {
        let node = self.node(port);
        let mut child = node.child.take().expect("the node is running");
        child.start_kill().expect("kill redis-server");
        let _ = within("the killed redis-server to exit", child.wait()).await;
    }

    /// Starts the node on `port` again as it was first started (a primary with no data, or
    /// the replica of the first primary), as an operator restarting a crashed server would.
    pub async fn restart(&mut self, port: u16, replica_of: Option<u16>) {
        let args = node_args(port, replica_of);
        let child = spawn_until(&args, "Ready to accept connections")
            .await
            .unwrap_or_else(|| panic!("redis-server did not start again on {port}"));
        self.node(port).child = Some(child);
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the node on `port`: a stopped replica misses
    /// what its primary writes meanwhile.
    pub fn signal(&mut self, port: u16, signal: &str) {
        let pid = self
            .node(port)
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the node is running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// Polls `check` every 50 ms until it holds; panics after 20 s, naming `what`.
    async fn wait_for<'a, F, Fut>(&'a self, what: &str, check: F)
    where
        F: Fn(&'a Sentinels) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20).max(WAIT);
        while !check(self).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn node_args(port: u16, replica_of: Option<u16>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        "/tmp",
        "--dbfilename",
        &format!("never-written-{port}.rdb"),
    ]
    .map(str::to_owned)
    .into();
    if let Some(primary) = replica_of {
        args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.to_string(),
        ]);
    }
    args
}

async fn start_node(replica_of: Option<u16>) -> Node {
    for _ in 0..5 {
        let port = free_port();
        if let Some(child) =
            spawn_until(&node_args(port, replica_of), "Ready to accept connections").await
        {
            return Node {
                child: Some(child),
                port,
            };
        }
    }
    panic!("redis-server did not start on any of 5 free ports");
}

/// A plain connection to the Redis server or sentinel on `port`.
pub async fn admin(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("redis url");
    within(
        "an admin connection",
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect to Redis")
}

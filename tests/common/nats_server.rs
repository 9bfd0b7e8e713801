//! Real `nats-server` processes with JetStream on loopback ports, started and stopped by the
//! test: one server, or a cluster of three. Each keeps its store in a folder of the test's
//! own, so a server killed and started again comes back with its data.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::redis_server::free_port;
use super::{within, WAIT};

/// One server of the deployment.
pub struct Node {
    child: Option<Child>,
    /// Its name (`n0`, `n1`, ...), as stream information names leaders.
    pub name: String,
    pub port: u16,
    /// Its cluster port (cluster deployments only).
    cluster_port: Option<u16>,
    store: PathBuf,
}

/// One `nats-server -js`, or a cluster of three; every process is killed when dropped.
pub struct Nats {
    pub nodes: Vec<Node>,
    routes: Vec<u16>,
    /// More arguments for every server (credentials, say).
    extra: Vec<String>,
}

impl Nats {
    /// One server with JetStream, for test `test`. Without `nats-server`, fails under CI
    /// and otherwise reports the test as skipped and returns `None`.
    pub async fn single(test: &str) -> Option<Nats> {
        Self::single_with(test, &[]).await
    }

    /// Like [`single`](Self::single), with more arguments for `nats-server`.
    pub async fn single_with(test: &str, extra: &[&str]) -> Option<Nats> {
        let extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        if !installed() {
            skip(test);
            return None;
        }
        let dir = super::temp_dir(test);
        for _ in 0..5 {
            let mut node = Node {
                child: None,
                name: "n0".to_owned(),
                port: free_port(),
                cluster_port: None,
                store: dir.join("n0"),
            };
            if let Some(child) = spawn(&node, &[], &extra).await {
                node.child = Some(child);
                return Some(Nats {
                    nodes: vec![node],
                    routes: Vec::new(),
                    extra,
                });
            }
        }
        panic!("nats-server did not start on any of 5 free ports");
    }

    /// A cluster of three servers with JetStream, routes between all of them, for test
    /// `test`; `None` as [`single`](Self::single).
    pub async fn cluster(test: &str) -> Option<Nats> {
        if !installed() {
            skip(test);
            return None;
        }
        let dir = super::temp_dir(test);
        'attempt: for _ in 0..5 {
            let mut nodes: Vec<Node> = (0..3)
                .map(|i| Node {
                    child: None,
                    name: format!("n{i}"),
                    port: free_port(),
                    cluster_port: Some(free_port()),
                    store: dir.join(format!("n{i}")),
                })
                .collect();
            let routes: Vec<u16> = nodes.iter().filter_map(|node| node.cluster_port).collect();
            for node in &mut nodes {
                match spawn(node, &routes, &[]).await {
                    Some(child) => node.child = Some(child),
                    // A port was taken meanwhile: kill what started and try other ports.
                    None => continue 'attempt,
                }
            }
            return Some(Nats {
                nodes,
                routes,
                extra: Vec::new(),
            });
        }
        panic!("a nats-server cluster did not start on any of 5 sets of free ports");
    }

    /// `nats://127.0.0.1:PORT` of every server, separated by commas.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills the server named `name` (SIGKILL, as a crash would) and waits until it is gone.
    pub async fn kill(&mut self, name: &str) {
        let node = self.node(name);
        let mut child = node.child.take().expect("the server is running");
        child.start_kill().expect("kill nats-server");
        let _ = within("the killed nats-server to exit", child.wait()).await;
    }

    /// Starts the server named `name` again, on its ports and with its store.
    pub async fn restart(&mut self, name: &str) {
        let (routes, extra) = (self.routes.clone(), self.extra.clone());
        let node = self.node(name);
        let child = spawn(node, &routes, &extra)
            .await
            .unwrap_or_else(|| panic!("nats-server {name} did not start again"));
        node.child = Some(child);
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    /// A client of the running servers, to look at streams.
    #[cfg(feature = "nats")]
    pub async fn admin(&self) -> async_nats::jetstream::Context {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| {
                format!("nats://127.0.0.1:{}", node.port)
                    .parse()
                    .expect("a server address")
            })
            .collect();
        let client = within("an admin connection to NATS", async_nats::connect(urls))
            .await
            .expect("connect to NATS");
        async_nats::jetstream::new(client)
    }

    /// The name of the server that leads `stream` now; waits (20 s at most) until it has
    /// one, and, with `not`, until it is another than `not`.
    #[cfg(feature = "nats")]
    pub async fn leader(&self, stream: &str, not: Option<&str>) -> String {
        let admin = self.admin().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let leader = match admin.get_stream(stream).await {
                Ok(mut found) => found
                    .info()
                    .await
                    .ok()
                    .and_then(|info| info.cluster.as_ref().and_then(|c| c.leader.clone())),
                Err(_) => None,
            };
            if let Some(leader) = leader.filter(|leader| Some(leader.as_str()) != not) {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream {stream} has no leader (other than {not:?}) after 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Nats {
    /// Waits (20 s at most) until the server named `name` is a current replica of
    /// `stream`: back in its group and caught up.
    #[cfg(feature = "nats")]
    pub async fn wait_current(&self, stream: &str, name: &str) {
        let admin = self.admin().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let current = match admin.get_stream(stream).await {
                Ok(mut found) => found.info().await.ok().is_some_and(|info| {
                    info.cluster.as_ref().is_some_and(|cluster| {
                        cluster.leader.as_deref() == Some(name)
                            || cluster
                                .replicas
                                .iter()
                                .any(|peer| peer.name == name && peer.current && !peer.offline)
                    })
                }),
                Err(_) => false,
            };
            if current {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} is not a current replica of {stream} after 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Starts `node`, with routes to `routes` (a cluster), and waits until it says it is
/// ready; `None` if it exited first (its port taken, most likely). Its log is read on, so
/// that it never blocks on a full pipe.
async fn spawn(node: &Node, routes: &[u16], extra: &[String]) -> Option<Child> {
    let mut args: Vec<String> = [
        "-a",
        "127.0.0.1",
        "-p",
        &node.port.to_string(),
        "-n",
        &node.name,
        "-js",
        "-sd",
        &node.store.to_string_lossy(),
    ]
    .map(str::to_owned)
    .into();
    args.extend(extra.iter().cloned());
    if let Some(cluster_port) = node.cluster_port {
        let routes: Vec<String> = routes
            .iter()
            .filter(|port| **port != cluster_port)
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        args.extend([
            "--cluster_name".to_owned(),
            "wsh".to_owned(),
            "--cluster".to_owned(),
            format!("nats://127.0.0.1:{cluster_port}"),
            "--routes".to_owned(),
            routes.join(","),
        ]);
    }
    let mut child = Command::new("nats-server")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start nats-server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let started = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Server is ready") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or_else(|_| panic!("nats-server {args:?} neither said it is ready nor exited"));
    if !started {
        let _ = within("nats-server to exit", child.wait()).await;
        return None;
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(child)
}

fn skip(test: &str) {
    super::skip(
        test,
        "needs nats-server (Debian: apt-get install -y nats-server)",
    );
}

pub fn installed() -> bool {
    std::process::Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

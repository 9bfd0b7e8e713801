//! A real `redis-server` on a free loopback port, started and stopped by the test itself.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{within, WAIT};

/// A running `redis-server`; killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts Redis on a free port for the test `test`. Without `redis-server` installed,
    /// fails under CI and otherwise reports the test as skipped (see [`super::skip`]) and
    /// returns `None`, so the caller can return.
    pub async fn start(test: &str) -> Option<RedisServer> {
        // Another process may take the port between our probe and Redis binding it: retry.
        Self::start_in(test, None).await
    }

    /// Like [`start`](Self::start), keeping its data in `dir` (`dump.rdb`, written only by
    /// an explicit `SAVE`), so that a restart on the same port loads that snapshot.
    #[allow(dead_code)] // not every test binary uses it
    pub async fn start_persistent(test: &str, dir: &std::path::Path) -> Option<RedisServer> {
        Self::start_in(test, Some(dir)).await
    }

    async fn start_in(test: &str, dir: Option<&std::path::Path>) -> Option<RedisServer> {
        if !installed() {
            let why = "needs redis-server (Debian: apt-get install -y redis-server)";
            super::skip(test, why);
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::try_start_on(port, dir).await {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts Redis again on `port` with the snapshot in `dir`, as after a crash. Panics
    /// if it cannot.
    #[allow(dead_code)] // not every test binary uses it
    pub async fn restart_persistent_on(port: u16, dir: &std::path::Path) -> RedisServer {
        Self::try_start_on(port, Some(dir))
            .await
            .unwrap_or_else(|| panic!("redis-server did not start again on port {port}"))
    }

    /// Starts Redis again on `port`, as after a restart. Panics if it cannot.
    pub async fn restart_on(port: u16) -> RedisServer {
        Self::try_start_on(port, None)
            .await
            .unwrap_or_else(|| panic!("redis-server did not start again on port {port}"))
    }

    async fn try_start_on(port: u16, dir: Option<&std::path::Path>) -> Option<RedisServer> {
        // Without a folder, no files: nothing to clean up, nothing left over from an earlier
        // run (a snapshot is loaded only from a folder of the test's own).
        let (dir, dbfilename) = match dir {
            Some(dir) => (dir.to_string_lossy().into_owned(), "dump.rdb".to_owned()),
            None => ("/tmp".to_owned(), format!("never-written-{port}.rdb")),
        };
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--dbfilename",
            &dbfilename,
        ]
        .map(str::to_owned);
        let child = spawn_until(&args, "Ready to accept connections").await?;
        Some(RedisServer { child, port })
    }

    /// A plain connection to this Redis, to look at or disturb it.
    #[cfg(feature = "redis")]
    #[allow(dead_code)] // not every test binary uses it
    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis url");
        within(
            "an admin connection to Redis",
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("connect to Redis")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills Redis (SIGKILL, as a crash would) and waits until it is gone; panics after
    /// [`WAIT`].
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill redis-server");
        let _ = within("the killed redis-server to exit", self.child.wait()).await;
    }
}

/// Starts `redis-server ARGS` and waits until its log says `ready`; `None` if it exited
/// first (most likely because its port was taken). Its log is read on, so that it never
/// blocks on a full pipe.
pub async fn spawn_until(args: &[String], ready: &str) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let started = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(ready) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or_else(|_| panic!("redis-server {args:?} neither logged {ready:?} nor exited"));
    if !started {
        let _ = within("redis-server to exit", child.wait()).await;
        return None;
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(child)
}

pub fn installed() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

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
        if !installed() {
            let why = "needs redis-server (Debian: apt-get install -y redis-server)";
            super::skip(test, why);
            return None;
        }
        // Another process may take the port between our probe and Redis binding it: retry.
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::try_start_on(port).await {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts Redis again on `port`, as after a restart. Panics if it cannot.
    pub async fn restart_on(port: u16) -> RedisServer {
        Self::try_start_on(port)
            .await
            .unwrap_or_else(|| panic!("redis-server did not start again on port {port}"))
    }

    async fn try_start_on(port: u16) -> Option<RedisServer> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // No files: nothing to clean up, nothing left over from an earlier run.
            .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false // exited, most likely because the port was taken
        })
        .await
        .expect("redis-server neither started nor exited");
        if !ready {
            // Its output ended: it is exiting (or has exited).
            let _ = within("redis-server to exit", child.wait()).await;
            return None;
        }
        // Keep reading its log, so Redis never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(RedisServer { child, port })
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

fn installed() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

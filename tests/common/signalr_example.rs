//! `examples/signalr_chat` as a process, for the tests that drive it with the official
//! clients (Node's in `tests/signalr.rs`, Chromium's in `tests/browser.rs`).
#![allow(dead_code)] // not every test binary runs it

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The example, listening; killed when dropped.
pub struct SignalrExample {
    child: Child,
    pub addr: SocketAddr,
}

impl SignalrExample {
    /// Starts the example on `addr` (port 0: a free one) and waits until it listens.
    pub async fn start(addr: &str) -> SignalrExample {
        Self::start_with(addr, &[]).await
    }

    /// Like [`start`](Self::start), with more command-line arguments.
    pub async fn start_with(addr: &str, args: &[&str]) -> SignalrExample {
        let binary = super::example_binary("signalr_chat");
        let mut child = Command::new(&binary)
            .args(["--addr", addr])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = super::within("the example to listen", lines.next_line())
            .await
            .expect("read its stdout")
            .expect("the example exited before listening");
        let url = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("not the line expected: {line:?}"));
        let addr = url[..url.find('/').expect("a path")]
            .parse()
            .expect("an address");
        // Keep reading stdout, so the example never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        SignalrExample { child, addr }
    }

    /// The process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the example runs")
    }

    /// The hub's URL, by address.
    pub fn hub_url(&self) -> String {
        format!("http://{}/hubs/chat", self.addr)
    }

    /// Ctrl-C: the example closes every connection (a Close with allowReconnect) and exits.
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("pid").to_string();
        // The shell's own `kill`: no procps needed on a minimal machine.
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -INT {pid}")])
            .status()
            .expect("run kill");
        assert!(status.success());
        let exit = super::within("the example to exit", self.child.wait())
            .await
            .expect("wait for it");
        assert!(exit.success(), "{exit:?}");
    }

    /// Kills it, as a crash would.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill");
        let _ = super::within("the killed example to exit", self.child.wait()).await;
    }
}

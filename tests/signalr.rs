//! The official SignalR JavaScript client (`@microsoft/signalr`, installed in
//! `tests/signalr/` by `npm ci` from its committed lock file) against the real
//! `examples/signalr_chat` binary on a free loopback port: every method of the example,
//! groups, streams and a cancelled one, client results, and automatic reconnect across a
//! server stopped and started again. Each scenario is a function of
//! `tests/signalr/scenarios.mjs`, run by Node.
//!
//! Needs `node` and `tests/signalr/node_modules` (`npm ci` there; `.ci/run` does it).
//! Without them the tests fail under CI (`CI` set) and otherwise print a notice and pass.
#![cfg(feature = "signalr")]

mod common;

use common::signalr_example::SignalrExample as Example;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The longest a scenario may take, so a broken hub fails instead of hanging.
const SCENARIO_WAIT: Duration = Duration::from_secs(90);

/// The folder of the Node scenarios, if Node and the client are installed.
fn node_scenarios(test: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signalr");
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !node {
        common::skip(test, "`node` is not installed");
        return None;
    }
    if !dir.join("node_modules/@microsoft/signalr").is_dir() {
        common::skip(
            test,
            "the client is not installed: run `npm ci` in tests/signalr",
        );
        return None;
    }
    Some(dir)
}

/// A Node scenario running: its `event:` lines, and its end.
struct Scenario {
    child: Child,
    events: mpsc::UnboundedReceiver<String>,
    name: String,
}

impl Scenario {
    fn start(dir: &Path, name: &str, url: &str) -> Scenario {
        let mut child = Command::new("node")
            .arg("scenarios.mjs")
            .args([name, url])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node");
        let (sender, events) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[node] {line}");
                let _ = sender.send(line);
            }
        });
        Scenario {
            child,
            events,
            name: name.to_owned(),
        }
    }

    /// Waits for the line `event: {event}`.
    async fn event(&mut self, event: &str) {
        let wanted = format!("event: {event}");
        let waiting = async {
            while let Some(line) = self.events.recv().await {
                if line == wanted {
                    return;
                }
            }
            panic!("scenario {} ended before {wanted:?}", self.name);
        };
        tokio::time::timeout(SCENARIO_WAIT, waiting)
            .await
            .unwrap_or_else(|_| panic!("scenario {} did not say {wanted:?}", self.name));
    }

    /// Waits for the scenario to end; panics unless it said `ok` and exited 0.
    async fn passes(mut self) {
        let status = tokio::time::timeout(SCENARIO_WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("scenario {} did not end", self.name))
            .expect("wait for node");
        let mut said_ok = false;
        while let Ok(line) = self.events.try_recv() {
            said_ok |= line == "ok";
        }
        assert!(
            status.success() && said_ok,
            "scenario {} failed ({status}): see its output above",
            self.name
        );
    }
}

async fn run(test: &str, name: &str) {
    let Some(dir) = node_scenarios(test) else {
        return;
    };
    let example = Example::start("127.0.0.1:0").await;
    Scenario::start(&dir, name, &example.hub_url())
        .passes()
        .await;
}

#[tokio::test]
async fn every_method_of_the_example_answers_the_official_client() {
    run(
        "every_method_of_the_example_answers_the_official_client",
        "methods",
    )
    .await;
}

#[tokio::test]
async fn group_members_get_what_is_sent_to_their_group_and_others_do_not() {
    run(
        "group_members_get_what_is_sent_to_their_group_and_others_do_not",
        "groups",
    )
    .await;
}

#[tokio::test]
async fn streams_complete_and_a_cancelled_stream_stops_with_a_completion() {
    run(
        "streams_complete_and_a_cancelled_stream_stops_with_a_completion",
        "streams",
    )
    .await;
}

#[tokio::test]
async fn a_hub_method_awaits_its_callers_client_result() {
    run(
        "a_hub_method_awaits_its_callers_client_result",
        "client-results",
    )
    .await;
}

/// Stopped with Ctrl-C (a Close that allows reconnecting), then killed: after each, the
/// example starts again on the same port and the client reconnects by itself.
#[tokio::test]
async fn the_client_reconnects_by_itself_after_the_server_restarts() {
    let test = "the_client_reconnects_by_itself_after_the_server_restarts";
    let Some(dir) = node_scenarios(test) else {
        return;
    };
    let example = Example::start("127.0.0.1:0").await;
    let addr = example.addr.to_string();
    let mut scenario = Scenario::start(&dir, "reconnect", &example.hub_url());
    scenario.event("connected").await;
    example.stop().await;
    let example = Example::start(&addr).await;
    scenario.event("reconnected 1").await;
    example.kill().await;
    let _example = Example::start(&addr).await;
    scenario.event("reconnected 2").await;
    scenario.passes().await;
}

/// A TCP proxy in front of the example whose connections the test can cut (as a network
/// that fails would), both sides at once.
struct Proxy {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("its address");
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                    // Dropped: both sockets close, mid-message if that is where they were.
                });
            }
        });
        Proxy { addr, cut }
    }

    /// Drops every connection through the proxy now.
    fn cut(&self) {
        self.cut.send_modify(|cuts| *cuts += 1);
    }
}

/// Stateful reconnect: the socket is cut while 200 stream items and 200 messages flow;
/// the client reattaches through the proxy and gets all of them once, in order.
#[tokio::test]
async fn a_stateful_client_resumes_after_its_socket_is_cut_and_misses_nothing() {
    let test = "a_stateful_client_resumes_after_its_socket_is_cut_and_misses_nothing";
    let Some(dir) = node_scenarios(test) else {
        return;
    };
    let example = Example::start("127.0.0.1:0").await;
    let proxy = Proxy::start(example.addr).await;
    let url = format!("http://{}/hubs/chat", proxy.addr);
    let mut scenario = Scenario::start(&dir, "stateful", &url);
    scenario.event("cut").await;
    proxy.cut();
    scenario.passes().await;
}

/// The benchmark tooling works: `loadgen --signalr` negotiates, joins the group and sends
/// to it through the example, every broadcast reaches every client (4 KiB texts, so the
/// records span many of loadgen's eight-byte steps), and the JSON line says so.
#[tokio::test]
async fn loadgen_drives_the_example_in_a_group_without_losing_a_message() {
    let example = Example::start("127.0.0.1:0").await;
    let loadgen = common::example_binary("loadgen");
    let url = format!("ws://{}/hubs/chat", example.addr);
    let run = Command::new(&loadgen)
        .args([
            "--url",
            &url,
            "--signalr",
            "--clients",
            "20",
            "--senders",
            "2",
        ])
        .args(["--size", "4096", "--duration", "1", "--warmup", "0"])
        // No `--server-pid`: loadgen would wait for the server's memory to settle after
        // the run, seconds on a loaded machine, and nothing here asserts it.
        .arg("--quiet")
        .output();
    // Longer than `within`'s 10 s: loadgen connects, runs, drains and closes 20 clients.
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("loadgen did not finish within 60 s")
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(line["signalr"], true, "{line}");
    assert!(line["deliveries"].as_u64() >= Some(20), "{line}");
    assert_eq!(line["deliveries"], line["expected_deliveries"], "{line}");
    assert_eq!(line["lost"], 0, "{line}");
    assert_eq!(line["errors"], serde_json::json!([]), "{line}");
}

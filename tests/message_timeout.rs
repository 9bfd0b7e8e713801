//! `message_timeout(Duration::ZERO)` means no deadline for a message: a message in progress
//! costs no CPU while it waits for its next byte, and may take as long as it likes.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use common::{masked_frame, raw_client, read_frame, read_frame_text, within};
use tokio::io::AsyncWriteExt;
use websocket_handler::{Connection, Message, WebSocketHandler, WebSocketServer};

struct Echo;

impl WebSocketHandler for Echo {
    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = conn.send(message);
    }
}

/// The thread `tid`'s state letter (`R` running or runnable, `S` sleeping, ...) and the
/// CPU time (user and system) it has used so far.
fn thread_stat(tid: i32) -> (char, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .expect("the server thread's /proc stat");
    // After the command name, in parentheses (which may hold spaces), come the fields from
    // the third on: the state, ..., utime and stime (the 14th and 15th).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let state = fields[0].chars().next().expect("a state");
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a system setting.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(per_second > 0, "clock ticks per second");
    (
        state,
        Duration::from_secs_f64(ticks as f64 / per_second as f64),
    )
}

/// Watches the thread `tid` for a second: the CPU it used, and in how many of 50 looks it
/// was running (a thread that spins shows `R` even when the machine's other work leaves
/// it little CPU; one that waits for the network sleeps).
async fn watch_for_a_second(tid: i32) -> (Duration, usize) {
    let (_, before) = thread_stat(tid);
    let mut running = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if thread_stat(tid).0 == 'R' {
            running += 1;
        }
    }
    (thread_stat(tid).1 - before, running)
}

/// Runs `server` on a thread and runtime of its own (so that its CPU time is its own, and
/// a server that never yields cannot stall the test): its thread id and address. It runs
/// until the process ends.
fn server_on_own_thread(server: WebSocketServer) -> (i32, SocketAddr) {
    let (started, ready) = std_mpsc::channel();
    std::thread::Builder::new()
        .name("zero-timeout".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let addr = common::serve(server, |_| Echo).await;
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                started.send((tid, addr)).expect("the test waits");
                std::future::pending::<()>().await;
            });
        })
        .expect("a thread");
    ready
        .recv_timeout(common::WAIT)
        .expect("the server thread started")
}

async fn send(client: &mut tokio::net::TcpStream, frame: &[u8]) {
    within("a frame to be written", client.write_all(frame))
        .await
        .expect("write");
}

#[tokio::test]
async fn a_zero_message_timeout_means_no_deadline_and_costs_no_cpu_while_a_message_waits() {
    let server = WebSocketServer::builder()
        .message_timeout(Duration::ZERO)
        // Any deadline at all would end a message this slow.
        .min_message_rate(u32::MAX)
        .ping_interval(None)
        .idle_timeout(None)
        .build();
    let (tid, addr) = server_on_own_thread(server);
    let mut client = raw_client(addr, "/", None).await;
    // A message begins: its first fragment, then nothing of it for a while. Pings in
    // between wake the server, which then looks at its timers.
    send(&mut client, &masked_frame(false, 0x1, b"hel")).await;
    for ping in [&b"one"[..], b"two"] {
        send(&mut client, &masked_frame(true, 0x9, ping)).await;
        let (cpu, running) = watch_for_a_second(tid).await;
        assert!(
            cpu < Duration::from_millis(500) && running < 25,
            "the server spent {cpu:?} of CPU in a second, and was running in {running} of 50 \
             looks, on a connection waiting for a fragment"
        );
        assert_eq!(read_frame(&mut client).await, (false, 0xA, ping.to_vec()));
    }
    // The rest, late: with no deadline, the message is whole and echoed.
    send(&mut client, &masked_frame(true, 0x0, b"lo")).await;
    assert_eq!(read_frame_text(&mut client).await, "hello");
}

//! The poller with real sockets on 127.0.0.1: reads and writes that wait and are woken,
//! sockets closed and tokens reused when dropped, and a poller per runtime.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::{PolledRead, PolledWrite, Poller};
use crate::engine::sync::lock;

const WAIT: Duration = Duration::from_secs(10);

/// A connected pair: our end adopted by the current runtime's poller, and the peer's end.
async fn adopted_pair() -> (PolledRead, PolledWrite, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (peer, accepted) = timeout(WAIT, async {
        tokio::join!(TcpStream::connect(address), listener.accept())
    })
    .await
    .expect("no connection to 127.0.0.1 within 10 s");
    let (ours, _) = accepted.expect("accept");
    let (read, write) = Poller::current()
        .expect("a poller")
        .adopt(ours)
        .expect("adopted");
    (read, write, peer.expect("connect"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_for_the_peer_and_is_woken_by_its_bytes() {
    let (mut read, _write, mut peer) = adopted_pair().await;
    let reading = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let n = read.read(&mut buf).await.expect("read");
        buf[..n].to_vec()
    });
    // The read has nothing to take yet: it must wait for the poller.
    tokio::task::yield_now().await;
    assert!(!reading.is_finished(), "a read with no bytes sent returned");
    peer.write_all(b"hello").await.expect("peer writes");
    let got = timeout(WAIT, reading)
        .await
        .expect("the waiting read was not woken by the peer's bytes within 10 s")
        .expect("the reading task");
    assert_eq!(got, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_full_socket_resumes_when_the_peer_reads() {
    let (_read, mut write, mut peer) = adopted_pair().await;
    // Far more than the two sockets' buffers hold: the write must wait for room.
    let sent = vec![7u8; 32 << 20];
    let total = sent.len();
    let writing = tokio::spawn(async move {
        write.write_all(&sent).await.expect("write");
        write.shutdown().await.expect("shutdown");
    });
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = timeout(WAIT, peer.read(&mut buf))
            .await
            .expect("the writer stopped sending: not woken once the peer read")
            .expect("peer reads");
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&byte| byte == 7), "bytes were changed");
        received += n;
    }
    assert_eq!(
        received, total,
        "the peer did not receive every byte written"
    );
    timeout(WAIT, writing)
        .await
        .expect("the writing task")
        .expect("the writing task ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_is_closed_and_its_token_reused() {
    let poller = Poller::current().expect("a poller");
    let mut peers = Vec::new();
    let mut halves = Vec::new();
    for _ in 0..50 {
        let (read, write, peer) = adopted_pair().await;
        halves.push((read, write));
        peers.push(peer);
    }
    let listed = lock(&poller.slots).watched.len();
    assert!(listed >= 50, "{listed} slots for 50 sockets");
    drop(halves);
    for mut peer in peers {
        let mut buf = [0u8; 1];
        let n = timeout(WAIT, peer.read(&mut buf))
            .await
            .expect("the peer saw no end within 10 s of dropping our socket")
            .expect("peer reads");
        assert_eq!(n, 0, "the dropped socket was not closed");
    }
    for _ in 0..50 {
        let (read, write, peer) = adopted_pair().await;
        drop((read, write, peer));
    }
    let relisted = lock(&poller.slots).watched.len();
    assert_eq!(relisted, listed, "the freed tokens were not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sockets_wait_and_are_woken_each_by_its_own_peer() {
    let mut tasks = Vec::new();
    let mut peers = Vec::new();
    for i in 0..200u32 {
        let (mut read, mut write, peer) = adopted_pair().await;
        peers.push(peer);
        // Each echoes what it reads, once.
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 4];
            read.read_exact(&mut buf).await.expect("read");
            assert_eq!(u32::from_le_bytes(buf), i, "a socket read another's bytes");
            write.write_all(&buf).await.expect("write");
        }));
    }
    // In reverse order, so that no socket is woken by chance in the order it waited.
    for (i, peer) in peers.iter_mut().enumerate().rev() {
        peer.write_all(&(i as u32).to_le_bytes())
            .await
            .expect("peer writes");
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        let mut buf = [0u8; 4];
        timeout(WAIT, peer.read_exact(&mut buf))
            .await
            .expect("a socket was not woken by its peer's bytes within 10 s")
            .expect("peer reads");
        assert_eq!(u32::from_le_bytes(buf), i as u32);
    }
    for task in tasks {
        timeout(WAIT, task)
            .await
            .expect("an echoing task had not ended 10 s after its echo arrived")
            .expect("an echoing task failed");
    }
}

#[test]
fn each_runtime_has_a_poller_of_its_own_and_a_new_one_after_its_end() {
    let first = runtime();
    let poller = first.block_on(async { Poller::current().expect("a poller") });
    let again = first.block_on(async { Poller::current().expect("a poller") });
    assert!(Arc::ptr_eq(&poller, &again), "one runtime, two pollers");
    drop(again);
    drop(first);
    assert!(
        !poller.running(),
        "the poller runs on after its runtime's end"
    );
    let second = runtime();
    second.block_on(async {
        let fresh = Poller::current().expect("a poller");
        assert!(
            !Arc::ptr_eq(&poller, &fresh),
            "a new runtime got the ended poller"
        );
        // And its sockets are watched: a read waits and is woken.
        let (mut read, _write, mut peer) = adopted_pair().await;
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 2];
            read.read_exact(&mut buf).await.map(|_| buf)
        });
        peer.write_all(b"ok").await.expect("peer writes");
        let got = timeout(WAIT, reading)
            .await
            .expect("not woken in the second runtime within 10 s")
            .expect("the reading task")
            .expect("read");
        assert_eq!(&got, b"ok");
    });
}

#[test]
fn a_socket_waiting_when_its_runtime_ends_fails_instead_of_waiting_forever() {
    let first = runtime();
    let (mut read, _write, _peer) = first.block_on(adopted_pair());
    drop(first);
    // Polled from another runtime, the read finds no poller to wake it.
    let second = runtime();
    let mut buf = [0u8; 1];
    let read = second.block_on(async { timeout(WAIT, read.read(&mut buf)).await });
    let error = read
        .expect("the read waited on an ended poller")
        .expect_err("the read succeeded with nothing sent");
    assert!(
        error.to_string().contains("shut down"),
        "unexpected error: {error}"
    );
}

#[test]
fn a_poller_and_its_task_end_with_its_last_socket() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let (read, write, peer) = adopted_pair().await;
        assert_eq!(tasks(), 1, "no poller task runs for the adopted socket");
        // The last socket gone, the poller is dropped, and its task must see that and end
        // (rather than hold its epoll descriptor for the runtime's life).
        drop((read, write, peer));
        timeout(WAIT, async {
            while tasks() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the poller's task still runs 10 s after its last socket was dropped");
    });
}

#[test]
fn a_poller_whose_task_never_ran_is_ended_with_its_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Spawned but never polled: the runtime is not driven before it is dropped.
    let poller = {
        let _entered = runtime.enter();
        Poller::current().expect("a poller")
    };
    drop(runtime);
    assert!(
        !poller.running(),
        "the poller runs on after its runtime ended before its task first ran: its \
         sockets would wait forever instead of failing"
    );
}

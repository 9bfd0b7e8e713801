//! Heap allocations per received message, counted by a global allocator: a message handed to
//! a handler should cost what reading it needs and one box for the callback's future, not a
//! box per layer.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use websocket_handler::{Connection, Message, WebSocketHandler, WebSocketServer};

use common::{masked_frame, within};

/// Counts every allocation of the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts the messages it is given, and does nothing else.
struct Counter(Arc<AtomicUsize>);

impl WebSocketHandler for Counter {
    async fn on_message(&mut self, _conn: &Connection, _message: Message) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_received_message_costs_at_most_two_allocations() {
    const MESSAGES: usize = 2000;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let addr = common::serve(WebSocketServer::new(), move |_| Counter(counter.clone())).await;
    let mut stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    within("the 101 response", async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("the response head"));
        }
    })
    .await;
    // Every frame encoded before counting: the client allocates nothing while it sends.
    let frames: Vec<u8> = (0..MESSAGES)
        .flat_map(|_| masked_frame(true, 1, b"a short chat message"))
        .collect();
    let warm_up = masked_frame(true, 1, b"warm up");
    stream.write_all(&warm_up).await.expect("write");
    within("the warm-up message", async {
        while received.load(Ordering::Acquire) < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    stream.write_all(&frames).await.expect("write");
    within("every message handled", async {
        while received.load(Ordering::Acquire) < MESSAGES + 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let per_message = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / MESSAGES as f64;
    assert!(
        per_message <= 2.1,
        "{per_message:.2} allocations per received message (its payload and one box for the \
         callback's future are expected)"
    );
}

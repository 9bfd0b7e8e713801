//! What a collection's history holds in memory: `cargo bench --bench history_memory`.
//!
//! Counts the bytes the allocator has handed out and not taken back (a counting global
//! allocator), before and after a collection with a history has broadcast enough messages
//! to fill it. The figure per message is the payload plus the history's own cost; that
//! cost must stay under [`MAX_OVERHEAD`] bytes per message, or the benchmark fails.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use websocket_handler::{History, WebSocketCollection};

/// The history's own bytes per message (its entry, and its share of the ring's spare
/// capacity: the ring grows by doubling), at most.
const MAX_OVERHEAD: f64 = 160.0;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is
// kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Bytes held once a history of `kept` messages of `size` bytes is full (it has seen
/// twice as many, so eviction has run).
fn held(kept: usize, size: usize) -> isize {
    let before = live();
    // Bounded by count alone here: the bytes bound would cut the large messages short.
    let history = History::new().max_messages(kept).max_bytes(usize::MAX);
    let room = WebSocketCollection::new().with_history(history);
    for _ in 0..2 * kept {
        // Exactly `size` bytes, no spare capacity: what is held beyond is the history's.
        room.broadcast("x".repeat(size));
    }
    let held = live() - before;
    drop(room);
    held
}

fn main() {
    // `cargo bench` passes criterion-style flags (--bench); none apply here.
    println!("history memory: bytes held by a full history, per message kept");
    println!("| messages kept | payload bytes | held per message | overhead per message |");
    println!("|---:|---:|---:|---:|");
    let mut worst: f64 = 0.0;
    for kept in [1_000, 10_000] {
        for size in [16, 64, 1024] {
            let per = held(kept, size) as f64 / kept as f64;
            let overhead = per - size as f64;
            worst = worst.max(overhead);
            println!("| {kept} | {size} | {per:.0} | {overhead:.0} |");
        }
    }
    if worst > MAX_OVERHEAD {
        eprintln!("history memory: {worst:.0} bytes of overhead per message, over {MAX_OVERHEAD}");
        std::process::exit(1);
    }
    println!("worst overhead {worst:.0} bytes per message (limit {MAX_OVERHEAD})");
}

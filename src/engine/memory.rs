//! Giving freed memory back to the operating system after a storm.
//!
//! A reconnect storm (every client of a deploy coming back at once) or a burst of
//! broadcasts fills queues with short-lived buffers, interleaved in the heap with the
//! connections' long-lived state. Once they drain, glibc's malloc keeps the freed memory in
//! its arenas: measured on the chat example, 10,000 clients connecting with join notices
//! left 220 MiB of RSS for 51 MiB in use, and 123 MiB after every client had left for
//! 1.8 MiB in use. `malloc_trim` gives it back (64 MiB and 8.6 MiB).
//!
//! So the engine counts what it frees in bulk (drained queue buffers, ended connections)
//! and, once a MiB has been freed and the burst has calmed down, trims the heap once, on
//! a blocking thread, at most every five seconds. Elsewhere than Linux with glibc this does nothing: other allocators
//! return memory by themselves, or offer no such call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Some server of the process trims (see [`enable`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Freed since the last trim, in bytes (an estimate).
static FREED: AtomicUsize = AtomicUsize::new(0);

/// A trim is scheduled.
static SCHEDULED: AtomicBool = AtomicBool::new(false);

/// Trim once this much has been freed: less is not worth walking the heap for.
const THRESHOLD: usize = 1 << 20;

/// A burst is over when less than [`THRESHOLD`] was freed in the last `CALM`. While it
/// goes on, what is freed is soon reused, and trimming would only cost page faults.
const CALM: Duration = Duration::from_secs(1);

/// At most one trim this often: under steady churn, often enough to keep RSS near what is
/// used, rarely enough that walking the heap costs nothing noticeable.
const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// What an ended connection frees, besides its queue: its state, request parts, task,
/// socket registration (about what an idle one costs).
pub(crate) const CONNECTION: usize = 8 * 1024;

/// Lets the process trim: the heap is one per process, so one server asking is enough.
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Notes `bytes` freed; schedules a trim once enough has been, if a runtime is at hand.
pub(crate) fn freed(bytes: usize) {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let total = FREED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if total < THRESHOLD || SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        SCHEDULED.store(false, Ordering::Release);
        return;
    };
    runtime.spawn(async {
        static LAST: std::sync::Mutex<Option<tokio::time::Instant>> = std::sync::Mutex::new(None);
        let last = *LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(last) = last {
            tokio::time::sleep_until(last + MIN_INTERVAL).await;
        }
        // Wait for the burst to calm down: memory freed now would only be reused.
        loop {
            let before = FREED.load(Ordering::Relaxed);
            tokio::time::sleep(CALM).await;
            if FREED.load(Ordering::Relaxed) - before < THRESHOLD {
                break;
            }
        }
        FREED.store(0, Ordering::Relaxed);
        // Walking the heap can take milliseconds: not on a worker thread.
        let _ = tokio::task::spawn_blocking(trim).await;
        *LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(tokio::time::Instant::now());
        SCHEDULED.store(false, Ordering::Release);
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only walks and releases glibc's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

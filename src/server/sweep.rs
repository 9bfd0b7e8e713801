//! One timer per server for the keep-alive of all its connections. A tokio timer per
//! connection costs each idle connection some 130 bytes, and a ping due 15 s after the
//! last frame needs no millisecond precision: every tick, each connection whose keep-alive
//! is due (as its core says) has its task woken, which pings or gives up on the peer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::engine::clock;
use crate::engine::flush::HasCore;
use crate::engine::sync::lock;
use crate::server::shutdown::Open;
use crate::server::Inner;

/// Whether the server's timer task runs.
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    running: AtomicBool,
}

/// How often the timer ticks for these settings: an eighth of the shortest of them (a
/// ping is at most that late), between 5 ms and a second; `None` if neither is set.
pub(crate) fn period(
    ping_interval: Option<Duration>,
    idle_timeout: Option<Duration>,
) -> Option<Duration> {
    let shortest = match (ping_interval, idle_timeout) {
        (Some(ping), Some(idle)) => ping.min(idle),
        (ping, idle) => ping.or(idle)?,
    };
    Some((shortest / 8).clamp(Duration::from_millis(5), Duration::from_secs(1)))
}

impl Sweep {
    /// Starts the server's timer unless it runs. It ends when the server is gone, or with
    /// the runtime it runs on (the next connection then starts it again, on its own).
    /// Call it from inside a tokio runtime.
    pub(super) fn start(&self, server: Weak<Inner>, every: Duration) {
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(server, every));
        }
    }
}

/// Clears [`Sweep::running`] however the timer's task ends.
struct Running(Weak<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(server) = self.0.upgrade() {
            server.sweep.running.store(false, Ordering::Release);
        }
    }
}

async fn run(server: Weak<Inner>, every: Duration) {
    let _running = Running(server.clone());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(server) = server.upgrade() else {
            return;
        };
        let now = clock::stamp(Instant::now());
        sweep_all(server.shutdown.connections(), now);
    }
}

/// What one walk of the list did.
#[derive(Debug, Default, Clone, Copy)]
struct Walk {
    /// Connections visited.
    visited: usize,
    /// Times the list's lock was taken.
    holds: usize,
    /// The most connections visited under one hold of the lock.
    most_in_one_hold: usize,
}

/// Connections visited per hold of the server's lock: a handshake, or a connection's end,
/// waits for the list at most as long as the timer takes to visit these (a few
/// microseconds), however many connections the server has.
const CHUNK: usize = 256;

/// Wakes the connections of `open` whose keep-alive is due at `now`, [`CHUNK`] slots of
/// the list at a time, letting go of its lock in between. A connection keeps its slot, so
/// none is missed; one added meanwhile may be, and is seen on the next tick (it is not due
/// before).
fn sweep_all(open: &Mutex<Open>, now: u32) -> Walk {
    let mut walk = Walk::default();
    let mut from: usize = 0;
    loop {
        let open = lock(open);
        walk.holds += 1;
        let slots = open.slots();
        let to = slots.len().min(from.saturating_add(CHUNK));
        let mut visited = 0;
        // Empty if the list shrank meanwhile (it gives its memory back once empty).
        for conn in slots.get(from..to).unwrap_or_default().iter().flatten() {
            conn.core().sweep_keepalive(now);
            visited += 1;
        }
        walk.visited += visited;
        walk.most_in_one_hold = walk.most_in_one_hold.max(visited);
        if to >= slots.len() {
            return walk;
        }
        from = to;
    }
}

#[cfg(test)]
mod tests {
    use super::{period, sweep_all};
    use crate::connection::{Connection, RequestParts};
    use crate::engine::flush::HasCore;
    use crate::engine::shared::Shared;
    use crate::engine::sync::lock;
    use crate::server::shutdown::Tracked;
    use crate::server::WebSocketServer;
    use std::time::{Duration, Instant};

    fn connection() -> Connection {
        let parts = RequestParts::detached(
            &http::Uri::from_static("/"),
            &http::HeaderMap::new(),
            None,
            None,
            0,
        );
        Connection::new(parts, None, &Shared::for_tests(), None)
    }

    /// A server (with no timer of its own) and `n` connections in its list.
    fn server_with(n: usize) -> (WebSocketServer, Vec<Connection>, Vec<Tracked>) {
        let server = WebSocketServer::builder()
            .ping_interval(None)
            .idle_timeout(None)
            .build();
        let conns: Vec<Connection> = (0..n).map(|_| connection()).collect();
        let tracked = conns
            .iter()
            .map(|conn| server.track(conn).expect("not shutting down"))
            .collect();
        (server, conns, tracked)
    }

    #[test]
    fn a_sweep_of_10_000_connections_holds_the_lock_a_chunk_at_a_time_and_wakes_every_one_due() {
        let (server, conns, _tracked) = server_with(10_000);
        for conn in &conns {
            conn.core().set_keepalive_due(Some(1_000));
        }
        let walk = sweep_all(server.shutdown_state().connections(), 2_000);
        assert_eq!(walk.visited, 10_000);
        // A handshake (or a connection's end) waits for the list at most as long as the
        // timer takes to visit a few hundred connections, not all of them.
        assert!(
            walk.most_in_one_hold <= 256,
            "{} connections visited under one hold of the server's lock",
            walk.most_in_one_hold
        );
        assert!(walk.holds >= 10_000 / 256, "{walk:?}");
        assert!(
            conns.iter().all(|conn| conn.core().take_keepalive_fired()),
            "every connection due was woken"
        );
    }

    /// How long a handshake waits for the server's list while the timer sweeps 10,000
    /// connections every millisecond (a thousand times as often as it does with the
    /// default settings, to meet many handshakes): `cargo test --release --lib sweep --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn measure_the_wait_for_the_list_during_sweeps() {
        use std::sync::atomic::{AtomicBool, Ordering};

        let (server, _conns, _tracked) = server_with(10_000);
        let open = server.shutdown_state().connections();
        let stop = AtomicBool::new(false);
        let (waits, sweeps, holds) = std::thread::scope(|scope| {
            let handshakes = scope.spawn(|| {
                let mut waits = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    drop(lock(open));
                    waits.push(asked.elapsed());
                    std::thread::sleep(Duration::from_micros(20));
                }
                waits
            });
            let started = Instant::now();
            let (mut sweeps, mut holds) = (Vec::new(), 0);
            while started.elapsed() < Duration::from_secs(3) {
                let at = Instant::now();
                holds += sweep_all(open, 0).holds;
                sweeps.push(at.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, Ordering::Relaxed);
            let waits = handshakes.join().expect("the handshake thread");
            (waits, sweeps, holds)
        });
        let count = sweeps.len();
        let quantile = |all: &mut Vec<Duration>, q: f64| {
            all.sort_unstable();
            all[((all.len() - 1) as f64 * q) as usize]
        };
        let (mut sweeps, mut waits) = (sweeps, waits);
        let sweep = quantile(&mut sweeps, 0.5);
        eprintln!(
            "10,000 connections, {count} sweeps: {sweep:?} each (median), {:.1} holds of the \
             lock each, {:?} per hold; a handshake waited for the list {:?} (p50), {:?} \
             (p90), {:?} (p99), {:?} (p99.9), over {} tries, {} of them over 10 µs",
            holds as f64 / count as f64,
            sweep / (holds / count) as u32,
            quantile(&mut waits, 0.5),
            quantile(&mut waits, 0.9),
            quantile(&mut waits, 0.99),
            quantile(&mut waits, 0.999),
            waits.len(),
            waits
                .iter()
                .filter(|w| **w > Duration::from_micros(10))
                .count(),
        );
    }

    #[test]
    fn ticks_an_eighth_of_the_shortest_timeout_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(period(Some(s(15)), Some(s(30))), Some(s(1)));
        assert_eq!(
            period(Some(Duration::from_millis(100)), None),
            Some(Duration::from_micros(12_500))
        );
        assert_eq!(
            period(None, Some(Duration::from_millis(1))),
            Some(Duration::from_millis(5))
        );
        assert_eq!(period(None, None), None);
    }
}

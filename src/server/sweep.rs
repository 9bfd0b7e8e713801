//! One timer per server for the keep-alive of all its connections. A tokio timer per
//! connection costs each idle connection some 130 bytes, and a ping due 15 s after the
//! last frame needs no millisecond precision: every tick, each connection whose keep-alive
//! is due (as its core says) has its task woken, which pings or gives up on the peer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::engine::clock;
use crate::engine::flush::HasCore;
use crate::engine::sync::lock;
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
        for conn in lock(server.shutdown.connections()).iter() {
            conn.core().sweep_keepalive(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::period;
    use std::time::Duration;

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

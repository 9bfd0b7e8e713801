//! Dead-peer detection: ping a connection that has gone quiet, and give up on one that has
//! sent nothing at all (not even a pong) for the idle timeout. Half-open TCP connections
//! (a client that vanished without a FIN) otherwise stay open, and in collections, forever.

use std::time::Duration;

use tokio::time::Instant;

use crate::engine::clock::stamp;
use crate::engine::settings::Millis;

/// What to do when [`KeepAlive::due_stamp`] passes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Send a ping.
    Ping,
    /// The peer has been silent for the idle timeout: drop it.
    Idle,
    /// Nothing yet (the deadline moved since it was armed).
    Nothing,
}

/// When to ping and when to give up: the server's settings, read from there rather than
/// kept by every connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Intervals {
    pub(crate) ping: Option<Duration>,
    pub(crate) idle: Option<Duration>,
}

impl Intervals {
    /// Whether anything is ever due.
    pub(crate) fn is_on(self) -> bool {
        self.ping.is_some() || self.idle.is_some()
    }
}

/// One connection's times, as [`stamp`]s: eight bytes.
pub(crate) struct KeepAlive {
    /// When the peer last sent a frame.
    last_seen: u32,
    /// When we last pinged, if after `last_seen`; 0 if not (a ping that falls on 0 is
    /// counted a millisecond later).
    last_ping: u32,
}

impl KeepAlive {
    pub(crate) fn new(now: Instant) -> Self {
        KeepAlive {
            last_seen: stamp(now),
            last_ping: 0,
        }
    }

    /// The peer sent a frame.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = stamp(now);
        self.last_ping = 0;
    }

    /// Milliseconds from `now` until the ping and until the idle timeout (0 if past).
    fn left(&self, every: Intervals, now: Instant) -> (Option<u32>, Option<u32>) {
        let now = stamp(now);
        let since_seen = now.wrapping_sub(self.last_seen);
        let since_ping = match self.last_ping {
            0 => since_seen,
            ping => now.wrapping_sub(ping),
        };
        (
            every
                .ping
                .map(|ping| Millis::new(ping).as_u32().saturating_sub(since_ping)),
            every
                .idle
                .map(|idle| Millis::new(idle).as_u32().saturating_sub(since_seen)),
        )
    }

    /// The next time something may be due, as a [`stamp`], if anything ever is.
    pub(crate) fn due_stamp(&self, every: Intervals, now: Instant) -> Option<u32> {
        let soonest = match self.left(every, now) {
            (Some(ping), Some(idle)) => Some(ping.min(idle)),
            (ping, idle) => ping.or(idle),
        };
        soonest.map(|ms| stamp(now).wrapping_add(ms))
    }

    /// What is due at `now`.
    pub(crate) fn due(&mut self, every: Intervals, now: Instant) -> Due {
        let (ping, idle) = self.left(every, now);
        if idle == Some(0) {
            return Due::Idle;
        }
        if ping == Some(0) {
            self.last_ping = stamp(now).max(1);
            return Due::Ping;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::{stamp, Due, Intervals, KeepAlive};
    use std::time::Duration;
    use tokio::time::Instant;

    const S: Duration = Duration::from_secs(1);

    const BOTH: Intervals = Intervals {
        ping: Some(Duration::from_secs(15)),
        idle: Some(Duration::from_secs(30)),
    };

    #[test]
    fn pings_a_quiet_peer_then_gives_up_on_a_silent_one() {
        let start = Instant::now();
        let mut keepalive = KeepAlive::new(start);
        assert_eq!(
            keepalive.due_stamp(BOTH, start),
            Some(stamp(start) + 15_000)
        );
        assert_eq!(keepalive.due(BOTH, start + 14 * S), Due::Nothing);
        assert_eq!(keepalive.due(BOTH, start + 15 * S), Due::Ping);
        // Next ping 15 s after the last one, but the idle timeout comes first.
        assert_eq!(
            keepalive.due_stamp(BOTH, start + 15 * S),
            Some(stamp(start) + 30_000)
        );
        assert_eq!(keepalive.due(BOTH, start + 30 * S), Due::Idle);
    }

    #[test]
    fn any_frame_from_the_peer_resets_both() {
        let start = Instant::now();
        let mut keepalive = KeepAlive::new(start);
        assert_eq!(keepalive.due(BOTH, start + 15 * S), Due::Ping);
        keepalive.seen(start + 16 * S); // the pong
        assert_eq!(
            keepalive.due_stamp(BOTH, start + 16 * S),
            Some(stamp(start) + 31_000)
        );
        assert_eq!(keepalive.due(BOTH, start + 30 * S), Due::Nothing);
    }

    #[test]
    fn either_can_be_off() {
        let start = Instant::now();
        let off = Intervals {
            ping: None,
            idle: None,
        };
        assert_eq!(KeepAlive::new(start).due_stamp(off, start), None);
        let idle = Intervals {
            ping: None,
            idle: Some(30 * S),
        };
        let mut idle_only = KeepAlive::new(start);
        assert_eq!(
            idle_only.due_stamp(idle, start),
            Some(stamp(start) + 30_000)
        );
        assert_eq!(idle_only.due(idle, start + 29 * S), Due::Nothing);
        let ping = Intervals {
            ping: Some(15 * S),
            idle: None,
        };
        assert_eq!(KeepAlive::new(start).due(ping, start + 60 * S), Due::Ping);
    }
}

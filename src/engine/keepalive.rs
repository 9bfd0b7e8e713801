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

pub(crate) struct KeepAlive {
    ping_interval: Option<Millis>,
    idle_timeout: Option<Millis>,
    /// When the peer last sent a frame, as a [`stamp`] (four bytes, not an `Instant`'s 16).
    last_seen: u32,
    /// When we last pinged, if after `last_seen`, as a [`stamp`].
    last_ping: Option<u32>,
}

impl KeepAlive {
    pub(crate) fn new(
        ping_interval: Option<Duration>,
        idle_timeout: Option<Duration>,
        now: Instant,
    ) -> Self {
        KeepAlive {
            ping_interval: ping_interval.map(Millis::new),
            idle_timeout: idle_timeout.map(Millis::new),
            last_seen: stamp(now),
            last_ping: None,
        }
    }

    /// The peer sent a frame.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = stamp(now);
        self.last_ping = None;
    }

    /// Whether anything is ever due.
    pub(crate) fn is_on(&self) -> bool {
        self.ping_interval.is_some() || self.idle_timeout.is_some()
    }

    /// Milliseconds from `now` until the ping and until the idle timeout (0 if past).
    fn left(&self, now: Instant) -> (Option<u32>, Option<u32>) {
        let now = stamp(now);
        let since_seen = now.wrapping_sub(self.last_seen);
        let since_ping = self
            .last_ping
            .map_or(since_seen, |ping| now.wrapping_sub(ping));
        (
            self.ping_interval
                .map(|every| every.as_u32().saturating_sub(since_ping)),
            self.idle_timeout
                .map(|after| after.as_u32().saturating_sub(since_seen)),
        )
    }

    /// The next time something may be due, as a [`stamp`], if anything ever is.
    pub(crate) fn due_stamp(&self, now: Instant) -> Option<u32> {
        let soonest = match self.left(now) {
            (Some(ping), Some(idle)) => Some(ping.min(idle)),
            (ping, idle) => ping.or(idle),
        };
        soonest.map(|ms| stamp(now).wrapping_add(ms))
    }

    /// What is due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Due {
        let (ping, idle) = self.left(now);
        if idle == Some(0) {
            return Due::Idle;
        }
        if ping == Some(0) {
            self.last_ping = Some(stamp(now));
            return Due::Ping;
        }
        Due::Nothing
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout.map(Millis::get)
    }
}

#[cfg(test)]
mod tests {
    use super::{stamp, Due, KeepAlive};
    use std::time::Duration;
    use tokio::time::Instant;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pings_a_quiet_peer_then_gives_up_on_a_silent_one() {
        let start = Instant::now();
        let mut keepalive = KeepAlive::new(Some(15 * S), Some(30 * S), start);
        assert_eq!(keepalive.due_stamp(start), Some(stamp(start) + 15_000));
        assert_eq!(keepalive.due(start + 14 * S), Due::Nothing);
        assert_eq!(keepalive.due(start + 15 * S), Due::Ping);
        // Next ping 15 s after the last one, but the idle timeout comes first.
        assert_eq!(
            keepalive.due_stamp(start + 15 * S),
            Some(stamp(start) + 30_000)
        );
        assert_eq!(keepalive.due(start + 30 * S), Due::Idle);
    }

    #[test]
    fn any_frame_from_the_peer_resets_both() {
        let start = Instant::now();
        let mut keepalive = KeepAlive::new(Some(15 * S), Some(30 * S), start);
        assert_eq!(keepalive.due(start + 15 * S), Due::Ping);
        keepalive.seen(start + 16 * S); // the pong
        assert_eq!(
            keepalive.due_stamp(start + 16 * S),
            Some(stamp(start) + 31_000)
        );
        assert_eq!(keepalive.due(start + 30 * S), Due::Nothing);
    }

    #[test]
    fn either_can_be_off() {
        let start = Instant::now();
        assert_eq!(KeepAlive::new(None, None, start).due_stamp(start), None);
        let mut idle_only = KeepAlive::new(None, Some(30 * S), start);
        assert_eq!(idle_only.due_stamp(start), Some(stamp(start) + 30_000));
        assert_eq!(idle_only.due(start + 29 * S), Due::Nothing);
        let mut ping_only = KeepAlive::new(Some(15 * S), None, start);
        assert_eq!(ping_only.due(start + 60 * S), Due::Ping);
    }
}

//! Dead-peer detection: ping a connection that has gone quiet, and give up on one that has
//! sent nothing at all (not even a pong) for the idle timeout. Half-open TCP connections
//! (a client that vanished without a FIN) otherwise stay open, and in collections, forever.

use std::time::Duration;

use tokio::time::Instant;

use crate::engine::settings::Millis;

/// What to do when [`KeepAlive::deadline`] passes.
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
    /// When the peer last sent a frame.
    last_seen: Instant,
    /// When we last pinged, if after `last_seen`.
    last_ping: Option<Instant>,
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
            last_seen: now,
            last_ping: None,
        }
    }

    /// The peer sent a frame.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = now;
        self.last_ping = None;
    }

    /// The next time something may be due, if anything ever is.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let ping = self
            .ping_interval
            .map(|every| self.last_ping.unwrap_or(self.last_seen) + every.get());
        let idle = self.idle_timeout.map(|after| self.last_seen + after.get());
        match (ping, idle) {
            (Some(ping), Some(idle)) => Some(ping.min(idle)),
            (ping, idle) => ping.or(idle),
        }
    }

    /// What is due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Due {
        if self
            .idle_timeout
            .is_some_and(|after| now >= self.last_seen + after.get())
        {
            return Due::Idle;
        }
        let since = self.last_ping.unwrap_or(self.last_seen);
        if self
            .ping_interval
            .is_some_and(|every| now >= since + every.get())
        {
            self.last_ping = Some(now);
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
    use super::{Due, KeepAlive};
    use std::time::Duration;
    use tokio::time::Instant;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pings_a_quiet_peer_then_gives_up_on_a_silent_one() {
        let start = Instant::now();
        let mut keepalive = KeepAlive::new(Some(15 * S), Some(30 * S), start);
        assert_eq!(keepalive.deadline(), Some(start + 15 * S));
        assert_eq!(keepalive.due(start + 14 * S), Due::Nothing);
        assert_eq!(keepalive.due(start + 15 * S), Due::Ping);
        // Next ping 15 s after the last one, but the idle timeout comes first.
        assert_eq!(keepalive.deadline(), Some(start + 30 * S));
        assert_eq!(keepalive.due(start + 30 * S), Due::Idle);
    }

    #[test]
    fn any_frame_from_the_peer_resets_both() {
        let start = Instant::now();
        let mut keepalive = KeepAlive::new(Some(15 * S), Some(30 * S), start);
        assert_eq!(keepalive.due(start + 15 * S), Due::Ping);
        keepalive.seen(start + 16 * S); // the pong
        assert_eq!(keepalive.deadline(), Some(start + 31 * S));
        assert_eq!(keepalive.due(start + 30 * S), Due::Nothing);
    }

    #[test]
    fn either_can_be_off() {
        let start = Instant::now();
        assert_eq!(KeepAlive::new(None, None, start).deadline(), None);
        let mut idle_only = KeepAlive::new(None, Some(30 * S), start);
        assert_eq!(idle_only.deadline(), Some(start + 30 * S));
        assert_eq!(idle_only.due(start + 29 * S), Due::Nothing);
        let mut ping_only = KeepAlive::new(Some(15 * S), None, start);
        assert_eq!(ping_only.due(start + 60 * S), Due::Ping);
    }
}

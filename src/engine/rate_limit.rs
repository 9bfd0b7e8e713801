//! A per-connection limit on inbound messages: a token bucket.

use tokio::time::Instant;

use crate::engine::clock;

/// How many messages a client may send: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimit {
    pub(crate) per_second: f64,
    pub(crate) burst: f64,
}

/// The bucket of one connection: eight bytes, kept in the connection's task whether the
/// limit is on or not (the limit itself is the server's setting).
pub(crate) struct Bucket {
    tokens: f32,
    /// When the bucket was last refilled, as a [`clock`] stamp: only whole milliseconds
    /// are taken from it, so messages closer together than that still refill it.
    refilled: u32,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        Bucket {
            tokens: limit.burst as f32,
            refilled: clock::stamp(now),
        }
    }

    /// Takes one message's token; `false` if the client is over its limit.
    pub(crate) fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = clock::since(self.refilled, now);
        self.refilled = self.refilled.wrapping_add(elapsed);
        let refill = f64::from(elapsed) / 1000.0 * limit.per_second;
        self.tokens = (f64::from(self.tokens) + refill).min(limit.burst) as f32;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Bucket, RateLimit};
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn a_burst_then_the_average_rate() {
        let start = Instant::now();
        let limit = RateLimit {
            per_second: 10.0,
            burst: 3.0,
        };
        let mut bucket = Bucket::new(limit, start);
        assert!((0..3).all(|_| bucket.take(limit, start)));
        assert!(!bucket.take(limit, start), "the burst is spent");
        assert!(
            bucket.take(limit, start + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!bucket.take(limit, start + Duration::from_millis(150)));
        // A long pause refills only up to the burst.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(limit, later)));
        assert!(!bucket.take(limit, later));
    }

    #[test]
    fn messages_less_than_a_millisecond_apart_still_refill_it() {
        let start = Instant::now();
        let limit = RateLimit {
            per_second: 1000.0,
            burst: 5.0,
        };
        let mut bucket = Bucket::new(limit, start);
        assert!((0..5).all(|_| bucket.take(limit, start)));
        // One message every 0.4 ms for 10 ms: the bucket refills by one a millisecond, so
        // about ten of them go through; none would if the fractions were lost each time.
        let taken = (1..=25)
            .filter(|i| bucket.take(limit, start + Duration::from_micros(400 * i)))
            .count();
        assert!((9..=11).contains(&taken), "{taken} of 25 taken");
    }
}

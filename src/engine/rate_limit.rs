//! A per-connection limit on inbound messages: a token bucket.

use std::time::Duration;

use tokio::time::Instant;

/// How many messages a client may send: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimit {
    pub(crate) per_second: f64,
    pub(crate) burst: f64,
}

/// The bucket of one connection.
pub(crate) struct Bucket {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        Bucket {
            limit,
            tokens: limit.burst,
            refilled: now,
        }
    }

    /// Takes one message's token; `false` if the client is over its limit.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed: Duration = now.saturating_duration_since(self.refilled);
        self.refilled = now;
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * self.limit.per_second).min(self.limit.burst);
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
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start), "the burst is spent");
        assert!(
            bucket.take(start + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!bucket.take(start + Duration::from_millis(150)));
        // A long pause refills only up to the burst.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }
}

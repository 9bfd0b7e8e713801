//! Millisecond stamps on a process-wide clock: four bytes where an `Instant` takes sixteen,
//! for the times every idle connection keeps (when the peer was last heard, when the close
//! began).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// `now` in milliseconds since the clock's first use, wrapping every 49 days. Only the
/// difference of two stamps means anything, and wrapping subtraction gets it right up to
/// 49 days: longer than any timeout a connection keeps (they are capped there).
pub(crate) fn stamp(now: Instant) -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    // The truncation is the wrapping.
    now.saturating_duration_since(epoch).as_millis() as u32
}

/// Milliseconds from the stamp `then` to `now`.
pub(crate) fn since(then: u32, now: Instant) -> u32 {
    stamp(now).wrapping_sub(then)
}

/// The instant a stamp stands for, seen from `now` (within the millisecond it dropped).
pub(crate) fn instant_of(then: u32, now: Instant) -> Instant {
    now.checked_sub(Duration::from_millis(u64::from(since(then, now))))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::{instant_of, since, stamp};
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn differences_of_stamps_are_elapsed_milliseconds() {
        let start = Instant::now();
        let then = stamp(start);
        let later = start + Duration::from_millis(1500);
        assert_eq!(since(then, later), 1500);
        let back = instant_of(then, later);
        assert!(back <= start && start - back < Duration::from_millis(1));
    }
}

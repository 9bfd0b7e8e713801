//! What every connection of one server shares, made once with the server: the settings the
//! engine reads, the counters, and the budget of half-received messages.
//!
//! A connection keeps one pointer to it ([`Core::shared`](crate::engine::core::Core)) and
//! reads its settings from there, rather than keeping copies: the timeouts, bounds and
//! limits copied into each connection cost an idle one some 80 bytes.

use std::sync::Arc;

use crate::engine::budget::PartialBudget;
use crate::engine::metrics::Metrics;
use crate::engine::settings::Settings;

/// One server's settings, counters and budget, behind the one pointer each of its
/// connections keeps.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) metrics: Metrics,
    pub(crate) budget: PartialBudget,
}

impl Shared {
    /// The shared state of a server with these settings, counting into `metrics`.
    pub(crate) fn new(settings: Settings, metrics: Metrics, max_partial_bytes: usize) -> Arc<Self> {
        Arc::new(Shared {
            settings,
            metrics,
            budget: PartialBudget::new(max_partial_bytes),
        })
    }

    /// For the engine's tests: the default settings, fresh counters, no practical budget.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        Shared::new(Settings::default(), Metrics::new(), usize::MAX)
    }
}

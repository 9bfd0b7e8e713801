//! The server-wide budget for what is half-received: the bytes of every message that has
//! started to arrive but not finished, across all connections.
//!
//! A client may legally start a message and then trickle the rest, one byte at a time,
//! forever: each such client holds what it has sent so far. The budget bounds the sum.
//! When a connection's partial message would take it past the budget, the connection
//! holding the most is refused further bytes and closed (1013, try again later): the
//! biggest holder is the likeliest attacker, and closing it frees the most. Only messages
//! still partial after a read count, so ordinary traffic (a message arrives in one piece)
//! never touches the budget's lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use crate::engine::id::ConnectionId;
use crate::engine::sync::lock;

/// The budget of one server.
pub(crate) struct PartialBudget {
    limit: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    /// Each connection with a partial message: what it holds, and how to refuse it.
    by_connection: HashMap<ConnectionId, (usize, Arc<Refusal>)>,
}

/// How the budget tells a connection's task that it is refused: a flag, and the task to
/// wake. Made by a connection the first time it holds a partial message.
#[derive(Default)]
pub(crate) struct Refusal {
    refused: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Refusal {
    /// Whether the connection has been refused; if not, wakes `cx`'s task when it is.
    pub(crate) fn poll_refused(&self, cx: &mut Context<'_>) -> bool {
        let mut task = lock(&self.task);
        if self.refused.load(Ordering::Acquire) {
            return true;
        }
        if !task
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            *task = Some(cx.waker().clone());
        }
        false
    }

    /// Whether the connection has been refused (without waiting to hear it).
    pub(crate) fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }

    fn refuse(&self) {
        let task = {
            let mut task = lock(&self.task);
            self.refused.store(true, Ordering::Release);
            task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl PartialBudget {
    pub(crate) fn new(limit: usize) -> Self {
        PartialBudget {
            limit,
            held: Mutex::new(Held::default()),
        }
    }

    /// The connection `id` now holds `bytes` of a partial message (0: none any more). If
    /// that takes the total past the budget, the connections holding the most are refused
    /// (through their [`Refusal`]) until it fits again.
    pub(crate) fn hold(&self, id: ConnectionId, refusal: &Arc<Refusal>, bytes: usize) {
        let mut refused = Vec::new();
        {
            let mut held = lock(&self.held);
            let before = match bytes {
                0 => held.by_connection.remove(&id).map_or(0, |(b, _)| b),
                _ => held
                    .by_connection
                    .insert(id, (bytes, refusal.clone()))
                    .map_or(0, |(b, _)| b),
            };
            held.total = held.total - before + bytes;
            while held.total > self.limit {
                let largest = held
                    .by_connection
                    .iter()
                    .max_by_key(|(_, (bytes, _))| *bytes)
                    .map(|(id, _)| *id);
                let Some((bytes, victim)) = largest.and_then(|id| held.by_connection.remove(&id))
                else {
                    break;
                };
                held.total -= bytes;
                refused.push(victim);
            }
        }
        // Outside the lock: refusing wakes the victim's task.
        for victim in refused {
            victim.refuse();
        }
    }

    /// The budget, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now, in all.
    pub(crate) fn total(&self) -> usize {
        lock(&self.held).total
    }
}

#[cfg(test)]
mod tests {
    use super::{PartialBudget, Refusal};
    use crate::engine::id::ConnectionId;
    use std::sync::Arc;
    use std::task::{Context, Waker};

    #[test]
    fn past_the_budget_the_largest_holders_are_refused() {
        let budget = PartialBudget::new(100);
        let cx = &mut Context::from_waker(Waker::noop());
        let holders: Vec<_> = (0..3)
            .map(|_| (ConnectionId::next(), Arc::new(Refusal::default())))
            .collect();
        budget.hold(holders[0].0, &holders[0].1, 40);
        budget.hold(holders[1].0, &holders[1].1, 50);
        assert_eq!(budget.total(), 90);
        assert!(holders.iter().all(|(_, r)| !r.poll_refused(cx)));
        // The third takes it past 100: the largest (50) goes, the others stay.
        budget.hold(holders[2].0, &holders[2].1, 20);
        assert!(holders[1].1.poll_refused(cx));
        assert!(!holders[0].1.poll_refused(cx) && !holders[2].1.poll_refused(cx));
        assert_eq!(budget.total(), 60);
        // A holder that completes its message gives its share back.
        budget.hold(holders[0].0, &holders[0].1, 0);
        assert_eq!(budget.total(), 20);
        // One alone past the budget is refused itself.
        budget.hold(holders[2].0, &holders[2].1, 101);
        assert!(holders[2].1.poll_refused(cx));
        assert_eq!(budget.total(), 0);
    }
}

//! Locking without poisoning, and the mutex of the queue hand-over, which is loom's under
//! the `wsh_loom` cfg so that the model check explores every interleaving of it
//! (`RUSTFLAGS="--cfg wsh_loom" cargo test --release --lib loom`).

use std::sync::{Mutex, MutexGuard};

#[cfg(wsh_loom)]
pub(crate) use loom::sync::{Mutex as HandoverMutex, MutexGuard as HandoverGuard};
#[cfg(not(wsh_loom))]
pub(crate) use std::sync::Mutex as HandoverMutex;

/// Locks a mutex, recovering from poisoning: the guarded data stays consistent because no
/// code in this crate panics while holding its locks.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for the hand-over's mutexes: a connection's queue and its write side.
#[cfg(wsh_loom)]
pub(crate) fn lock_handover<T>(mutex: &HandoverMutex<T>) -> HandoverGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for the hand-over's mutexes: a connection's queue and its write side.
#[cfg(not(wsh_loom))]
pub(crate) use lock as lock_handover;

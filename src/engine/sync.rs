//! Locking without poisoning.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering from poisoning: the guarded data stays consistent because no
/// code in this crate panics while holding its locks.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! The server-wide connection limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::protocol::handshake::HandshakeError;

/// Counts a server's open connections against its limit.
#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    max: usize,
    open: AtomicUsize,
}

/// One connection counted against the limit; released when dropped.
#[derive(Debug)]
pub(crate) struct Permit(Option<Arc<ConnectionLimit>>);

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// Counts one more connection, unless the limit is reached. No limit, no count.
    pub(crate) fn admit(limit: Option<&Arc<Self>>) -> Result<Permit, HandshakeError> {
        let Some(limit) = limit else {
            return Ok(Permit(None));
        };
        limit
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit.max).then_some(open + 1)
            })
            .map(|_| Permit(Some(limit.clone())))
            .map_err(|_| HandshakeError::TooManyConnections(limit.max))
    }
}

impl ConnectionLimit {
    /// Gives back the count of a permit that [kept it](Permit::keep_counted).
    pub(crate) fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Permit {
    /// Lets go of the permit but not of its count, which stays taken until the holder of
    /// the server calls [`ConnectionLimit::release`]: a permit held for a connection's
    /// life would cost it a pointer.
    pub(crate) fn keep_counted(mut self) {
        // Its reference to the limit goes; the count stays.
        self.0 = None;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(limit) = &self.0 {
            limit.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

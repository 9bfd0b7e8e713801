//! What a WebSocket holds of its server until its handler has finished: its count against
//! the connection limit, and against its address's, its place in the list of open
//! connections (`close_all`, the keep-alive timer), and over HTTP/2 its stream's link.
//!
//! Every connection's task holds one for its whole life, so it is small: the server and the
//! slot inline (the connection limit's count is given back through the server), the rest,
//! which most connections have none of, boxed.

use crate::server::address::AddressPermit;
use crate::server::limit::Permit;
use crate::server::listener::ListenerLease;
use crate::server::shutdown::Tracked;

/// Gives everything back when dropped, in the order it was taken.
pub(crate) struct Lease {
    tracked: Tracked,
    rest: Option<Box<Rest>>,
}

/// What only some connections hold: a count against their address (with a limit per
/// address), their HTTP/2 connection's (over HTTP/2).
struct Rest {
    per_address: Option<AddressPermit>,
    /// Held, never read: dropping it tells the HTTP/2 connection.
    _listener: Option<ListenerLease>,
}

impl Lease {
    /// Holds `permit`'s count (given back through the server), `per_address`, `tracked`
    /// and `listener` until dropped.
    pub(crate) fn new(
        permit: Permit,
        per_address: Option<AddressPermit>,
        tracked: Tracked,
        listener: Option<ListenerLease>,
    ) -> Self {
        permit.keep_counted();
        let rest = (per_address.is_some() || listener.is_some()).then(|| {
            Box::new(Rest {
                per_address,
                _listener: listener,
            })
        });
        Lease { tracked, rest }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The connection limit's count first, then the address's, then the place in the
        // list (whose removal tells `close_all`), then the HTTP/2 stream's link.
        if let Some(limit) = self.tracked.server().limit() {
            limit.release();
        }
        if let Some(rest) = self.rest.as_deref_mut() {
            rest.per_address = None;
        }
        // The fields drop now: `tracked`, then `rest` with the listener's lease.
    }
}

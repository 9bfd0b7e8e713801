//! Flushing many connections at once, after a broadcast.

use crate::engine::core::Core;

/// Connections flushed by one flush task: big enough that spawning is cheap next to the
/// writes, small enough that a broadcast to thousands spreads over every core.
const FLUSH_CHUNK: usize = 128;

/// Something that has a connection's [`Core`]: how upper layers hand connections to
/// [`flush_all`] without the engine knowing their types.
pub(crate) trait HasCore: Send + 'static {
    fn core(&self) -> &Core;
}

/// Flushes connections a broadcast found idle, spread over a few tasks so that every core
/// helps; inline when called outside a tokio runtime.
pub(crate) fn flush_all<C: HasCore>(mut connections: Vec<C>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        connections.iter().for_each(|c| c.core().flush_now());
        return;
    };
    // In order, so that connections that have waited longest are written first.
    while !connections.is_empty() {
        let rest = connections.split_off(connections.len().min(FLUSH_CHUNK));
        let chunk = std::mem::replace(&mut connections, rest);
        // Unconstrained: tokio's cooperative budget would otherwise report writable sockets
        // as full after a hundred or so writes, and hand them over for nothing.
        runtime.spawn(tokio::task::unconstrained(async move {
            chunk.iter().for_each(|c| c.core().flush_now())
        }));
    }
}

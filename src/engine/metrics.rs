//! Counters of what the connections of a server do, for the application to read and export.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex};

use crate::engine::id::ConnectionId;

/// Live counters of one [`WebSocketServer`](crate::WebSocketServer)'s connections: open
/// connections, messages and bytes each way, messages dropped for slow consumers, and
/// closes by code.
///
/// Cheap to clone; clones share the counters. Every server has one:
///
/// ```
/// use websocket_handler::WebSocketServer;
///
/// let server = WebSocketServer::new();
/// // ... serve with `server`, then, say on every scrape:
/// let now = server.metrics().snapshot();
/// assert_eq!(now.connections_open(), 0);
/// ```
///
/// Counting is cheap: the per-message counters are split into stripes, by connection, so
/// that cores writing to different clients do not contend for one counter, and sent
/// messages are counted once per socket write, not per message.
#[derive(Clone)]
pub struct Metrics {
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    stripes: [Stripe; STRIPES],
    opened: AtomicU64,
    closed: AtomicU64,
    /// Closes with the codes 1000 to 1015, the ones the protocol defines.
    closes_standard: [AtomicU64; 16],
    /// Closes with any other code (applications' own 4000-4999).
    closes_other: Mutex<BTreeMap<u16, u64>>,
    /// permessage-deflate: messages compressed, their bytes before and after. Not striped:
    /// a broadcast is compressed once, not per client.
    compressed: AtomicU64,
    compressed_from: AtomicU64,
    compressed_to: AtomicU64,
}

const STRIPES: usize = 16;

/// One cache line (two, on machines that fetch pairs) of counters.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_dropped: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
}

/// The counters of a [`Metrics`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Connections upgraded so far.
    pub connections_opened: u64,
    /// Connections that have ended so far.
    pub connections_closed: u64,
    /// Data messages received (text and binary).
    pub messages_received: u64,
    /// Payload bytes of the messages received.
    pub bytes_received: u64,
    /// Data messages written to sockets.
    pub messages_sent: u64,
    /// Payload bytes of the messages written.
    pub bytes_sent: u64,
    /// Messages that never went out because the client was too slow: those its full queue
    /// refused, and those still queued when the slow-consumer policy closed it or when a
    /// close frame went ahead of its full queue ([`Connection::close`](crate::Connection::close),
    /// a server shutdown, a failure).
    pub messages_dropped: u64,
    /// Connections closed by [`SlowConsumer::Disconnect`](crate::SlowConsumer::Disconnect).
    pub slow_consumer_disconnects: u64,
    /// Messages compressed with permessage-deflate: a broadcast once for all the clients
    /// that agreed the same window, a [`send`](crate::Connection::send) once.
    pub messages_compressed: u64,
    /// Payload bytes of those messages before compressing them.
    pub compressed_from_bytes: u64,
    /// And after.
    pub compressed_to_bytes: u64,
    /// Ended connections by close code: the first close frame on the wire, in either
    /// direction, or 1006 if there was none; a connection the slow-consumer policy
    /// closed counts as 1008 even when its client, having stopped reading, never got the
    /// frame.
    pub closes: BTreeMap<u16, u64>,
}

impl MetricsSnapshot {
    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_opened
            .saturating_sub(self.connections_closed)
    }
}

impl Metrics {
    /// New counters, all zero.
    pub(crate) fn new() -> Self {
        Metrics {
            counters: Arc::default(),
        }
    }

    /// The counters now. Each is read on its own, so under load the figures may be a few
    /// messages apart from each other.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let c = &self.counters;
        // Closes first: each close is counted after its open and its code (with Release), so
        // reading it first (with Acquire) means the opens and codes read next include it.
        let connections_closed = c.closed.load(Acquire);
        let sum = |field: fn(&Stripe) -> &AtomicU64| -> u64 {
            c.stripes
                .iter()
                .map(|stripe| field(stripe).load(Relaxed))
                .sum()
        };
        let mut closes: BTreeMap<u16, u64> = c
            .closes_other
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for (offset, count) in c.closes_standard.iter().enumerate() {
            let count = count.load(Relaxed);
            if count > 0 {
                closes.insert(1000 + offset as u16, count);
            }
        }
        MetricsSnapshot {
            connections_opened: c.opened.load(Relaxed),
            connections_closed,
            messages_received: sum(|s| &s.messages_received),
            bytes_received: sum(|s| &s.bytes_received),
            messages_sent: sum(|s| &s.messages_sent),
            bytes_sent: sum(|s| &s.bytes_sent),
            messages_dropped: sum(|s| &s.messages_dropped),
            slow_consumer_disconnects: sum(|s| &s.slow_consumer_disconnects),
            messages_compressed: c.compressed.load(Relaxed),
            compressed_from_bytes: c.compressed_from.load(Relaxed),
            compressed_to_bytes: c.compressed_to.load(Relaxed),
            closes,
        }
    }

    fn stripe(&self, id: ConnectionId) -> &Stripe {
        &self.counters.stripes[(id.as_u64() % STRIPES as u64) as usize]
    }

    /// A message of `from` bytes was compressed to `to`.
    pub(crate) fn compressed(&self, from: usize, to: usize) {
        let c = &self.counters;
        c.compressed.fetch_add(1, Relaxed);
        c.compressed_from.fetch_add(from as u64, Relaxed);
        c.compressed_to.fetch_add(to as u64, Relaxed);
    }

    pub(crate) fn opened(&self) {
        self.counters.opened.fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self, code: u16) {
        let c = &self.counters;
        match code
            .checked_sub(1000)
            .and_then(|i| c.closes_standard.get(i as usize))
        {
            Some(count) => {
                count.fetch_add(1, Relaxed);
            }
            None => {
                *c.closes_other
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .entry(code)
                    .or_default() += 1;
            }
        }
        // Last, and with Release, so that a snapshot never shows a close without its code.
        c.closed.fetch_add(1, Release);
    }

    pub(crate) fn received(&self, id: ConnectionId, bytes: usize) {
        let stripe = self.stripe(id);
        stripe.messages_received.fetch_add(1, Relaxed);
        stripe.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn sent(&self, id: ConnectionId, messages: u64, bytes: u64) {
        let stripe = self.stripe(id);
        stripe.messages_sent.fetch_add(messages, Relaxed);
        stripe.bytes_sent.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn dropped(&self, id: ConnectionId, messages: u64) {
        self.stripe(id)
            .messages_dropped
            .fetch_add(messages, Relaxed);
    }

    pub(crate) fn slow_consumer_disconnected(&self, id: ConnectionId) {
        self.stripe(id)
            .slow_consumer_disconnects
            .fetch_add(1, Relaxed);
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn closes_are_counted_by_code() {
        let metrics = Metrics::new();
        for code in [1000, 1000, 1006, 4001, 999] {
            metrics.opened();
            metrics.closed(code);
        }
        let snapshot = metrics.snapshot();
        let closes: Vec<_> = snapshot.closes.into_iter().collect();
        assert_eq!(closes, [(999, 1), (1000, 2), (1006, 1), (4001, 1)]);
        assert_eq!(snapshot.connections_opened, 5);
        assert_eq!(snapshot.connections_closed, 5);
    }
}

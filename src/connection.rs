//! The cloneable handle to one live connection and its bounded outbound queue.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use http::{HeaderMap, HeaderValue, Uri};
use tokio::sync::Notify;

use crate::close::{CloseCode, CloseFrame};
use crate::collection::Members;
use crate::config::{Config, SlowConsumer};
use crate::error::SendError;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::outbound::{Frame, Outbound, OutboundQueue, Pushed, Rejected};
use crate::writer::WriteSide;

/// A process-unique connection id, stable for the connection's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl ConnectionId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

const OPEN: u8 = 0;
const CLOSING: u8 = 1;
const CLOSED: u8 = 2;

/// A cheap, cloneable handle to one WebSocket connection, usable from any task.
///
/// [`send`](Connection::send) never blocks on the peer: it puts the message in the
/// connection's bounded queue and writes what the socket takes at once; the rest is written
/// by the connection's own task as the socket drains. Clones share one connection.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) id: ConnectionId,
    uri: Uri,
    headers: HeaderMap,
    remote_addr: Option<SocketAddr>,
    protocol: Option<HeaderValue>,
    pub(crate) queue: OutboundQueue,
    slow_consumer: SlowConsumer,
    /// Set when the slow-consumer policy closed the connection: queued messages and bytes.
    overflow: Mutex<Option<(usize, usize)>>,
    /// The socket's write half, once the upgrade has completed.
    pub(crate) write_side: Mutex<Option<WriteSide>>,
    state: AtomicU8,
    /// Wakes those awaiting [`Connection::closed`].
    closed: Notify,
    /// Signalled by the writer once our close frame is on the wire; starts the close timeout.
    pub(crate) close_sent: Notify,
    /// The first close frame on the wire, in either direction.
    first_close: Mutex<Option<CloseFrame>>,
    /// Collections this connection is in, so that closing leaves all of them.
    memberships: Mutex<Vec<Weak<Members>>>,
    pub(crate) metrics: Metrics,
}

/// The parts of the upgrade request a connection keeps.
pub(crate) struct RequestParts {
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) remote_addr: Option<SocketAddr>,
}

impl RequestParts {
    /// Keeps the request's URI and headers in one small buffer of their own.
    ///
    /// hyper parses them as slices of its 8 KiB read buffer, so keeping them as they are
    /// would pin that whole buffer for the connection's lifetime: more than everything else
    /// an idle connection costs.
    pub(crate) fn detached(
        uri: &Uri,
        headers: &HeaderMap,
        remote_addr: Option<SocketAddr>,
    ) -> Self {
        let uri_text = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let total = uri_text.len() + headers.values().map(|v| v.len()).sum::<usize>();
        let mut buffer = bytes::BytesMut::with_capacity(total);
        buffer.extend_from_slice(uri_text.as_bytes());
        for value in headers.values() {
            buffer.extend_from_slice(value.as_bytes());
        }
        let buffer = buffer.freeze();

        // Both were valid a moment ago, so re-parsing the same bytes cannot fail.
        let uri = Uri::from_maybe_shared(buffer.slice(..uri_text.len())).unwrap_or_default();
        let mut copy = HeaderMap::with_capacity(headers.len());
        let mut at = uri_text.len();
        for (name, value) in headers {
            let range = at..at + value.len();
            at = range.end;
            if let Ok(mut detached) = HeaderValue::from_maybe_shared(buffer.slice(range)) {
                detached.set_sensitive(value.is_sensitive());
                copy.append(name.clone(), detached);
            }
        }
        RequestParts {
            uri,
            headers: copy,
            remote_addr,
        }
    }
}

impl Connection {
    pub(crate) fn new(
        request: RequestParts,
        protocol: Option<HeaderValue>,
        config: &Config,
    ) -> Self {
        let shared = Shared {
            id: ConnectionId::next(),
            uri: request.uri,
            headers: request.headers,
            remote_addr: request.remote_addr,
            protocol,
            queue: OutboundQueue::new(
                config.get_outbound_queue_capacity(),
                config.get_outbound_queue_bytes(),
            ),
            slow_consumer: config.get_slow_consumer(),
            overflow: Mutex::new(None),
            write_side: Mutex::new(None),
            state: AtomicU8::new(OPEN),
            closed: Notify::new(),
            close_sent: Notify::new(),
            first_close: Mutex::new(None),
            memberships: Mutex::new(Vec::new()),
            metrics: config.get_metrics().clone(),
        };
        Connection {
            shared: Arc::new(shared),
        }
    }

    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// The upgrade request's URI (path and query).
    pub fn uri(&self) -> &Uri {
        &self.shared.uri
    }

    /// The upgrade request's path, for example `/api/Chat`.
    pub fn path(&self) -> &str {
        self.shared.uri.path()
    }

    /// The upgrade request's raw query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.shared.uri.query()
    }

    /// One query parameter of the upgrade request, percent-decoded; `None` if it is absent or
    /// not valid UTF-8. See [`query_param`](crate::query_param) to tell those apart.
    pub fn query_param(&self, name: &str) -> Option<String> {
        crate::query::query_param(self.query()?, name)
            .ok()
            .flatten()
    }

    /// The upgrade request's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.shared.headers
    }

    /// The peer's address, if the server put it in the request's extensions as a
    /// [`SocketAddr`] (see [`upgrade`](crate::upgrade)).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote_addr
    }

    /// How many messages wait in this connection's outbound queue, and their payload bytes.
    /// A batch the writer has taken but not yet fully written is not counted.
    pub fn queued(&self) -> (usize, usize) {
        self.shared.queue.queued()
    }

    /// The subprotocol chosen in the handshake (see
    /// [`Config::protocols`](crate::Config::protocols)), if any.
    pub fn protocol(&self) -> Option<&str> {
        self.shared.protocol.as_ref()?.to_str().ok()
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == CLOSED
    }

    /// Whether the connection is open: not closed and no close requested.
    pub fn is_open(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == OPEN
    }

    /// Queues a text or binary message without waiting.
    ///
    /// Returns [`SendError::Closed`] once the connection is closed or closing, and
    /// [`SendError::QueueFull`] when the peer is too far behind.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let pushed = self.send_frame(Frame::from_message(message.into()))?;
        self.after_push(pushed);
        Ok(())
    }

    /// Queues an encoded frame; the broadcast path, where the frame is shared. The caller
    /// must act on [`Pushed::MustFlush`].
    pub(crate) fn send_frame(&self, frame: Frame) -> Result<Pushed, SendError> {
        if !self.is_open() {
            return Err(SendError::Closed);
        }
        self.shared
            .queue
            .push_data(frame)
            .map_err(|rejected| match rejected {
                Rejected::Full { messages, bytes } => {
                    self.shared.metrics.dropped(self.id(), 1);
                    if self.shared.slow_consumer == SlowConsumer::Disconnect {
                        self.disconnect_slow_consumer(messages, bytes);
                    }
                    SendError::QueueFull {
                        capacity: self.shared.queue.max_messages(),
                    }
                }
                Rejected::Stopped => SendError::Closed,
            })
    }

    /// Queues a ping (an empty one: only the answer matters).
    pub(crate) fn send_ping(&self) {
        if let Ok(pushed) = self
            .shared
            .queue
            .push_protocol(Outbound::Raw(bytes::Bytes::from_static(&[0x89, 0])))
        {
            self.after_push(pushed);
        }
    }

    /// The peer is too far behind: drop what is queued for it, send 1008 next, and end the
    /// connection within the close timeout even if the peer never reads again.
    fn disconnect_slow_consumer(&self, messages: usize, bytes: usize) {
        {
            let mut overflow = lock(&self.shared.overflow);
            if overflow.is_none() {
                *overflow = Some((messages, bytes));
                self.shared.metrics.slow_consumer_disconnected(self.id());
            }
        }
        let frame = CloseFrame {
            code: CloseCode::POLICY_VIOLATION,
            reason: "slow consumer: outbound queue full".to_owned(),
        };
        let _ =
            self.shared
                .state
                .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire);
        if let Ok((pushed, dropped)) = self.shared.queue.push_close_counting(frame, true) {
            // What was still queued goes unsent: the close frame replaces it.
            self.shared.metrics.dropped(self.id(), dropped as u64);
            self.after_push(pushed);
        }
        // Start the close timeout now: the close frame may never get onto a full socket.
        self.shared.close_sent.notify_one();
    }

    /// Set once the slow-consumer policy closed this connection: the queue's size then.
    pub(crate) fn overflow(&self) -> Option<(usize, usize)> {
        *lock(&self.shared.overflow)
    }

    /// Starts the close handshake with `code` and `reason`, behind any messages already
    /// queued. Later sends fail with [`SendError::Closed`]. If the queue is full, the close
    /// frame goes out ahead of what is queued.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code.as_u16()));
        }
        if reason.len() > 123 {
            return Err(SendError::CloseReasonTooLong(reason.len()));
        }
        if self
            .shared
            .state
            .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(SendError::Closed);
        }
        self.queue_close(CloseFrame {
            code,
            reason: reason.to_owned(),
        });
        Ok(())
    }

    /// Queues a close frame behind everything already queued (so nothing queued is lost),
    /// or sends it ahead of the queue when the queue is full.
    pub(crate) fn queue_close(&self, frame: CloseFrame) {
        let _ =
            self.shared
                .state
                .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire);
        if let Ok(pushed) = self.shared.queue.push_close(frame, false) {
            self.after_push(pushed);
        }
    }

    /// Resolves once the connection has ended (immediately if it already has).
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.state.load(Ordering::Acquire) == CLOSED {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Records a close frame seen on the wire; only the first one counts.
    pub(crate) fn record_close(&self, frame: CloseFrame) {
        self.shared.record_close(frame);
    }

    /// The peer sent its close frame: sending is over.
    pub(crate) fn peer_closed(&self, frame: CloseFrame) {
        let _ =
            self.shared
                .state
                .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire);
        self.record_close(frame);
    }

    pub(crate) fn first_close(&self) -> Option<CloseFrame> {
        lock(&self.shared.first_close).clone()
    }

    /// Marks the connection closed: it leaves every collection and `closed()` resolves.
    pub(crate) fn mark_closed(&self) {
        let memberships = {
            let mut memberships = lock(&self.shared.memberships);
            self.shared.state.store(CLOSED, Ordering::Release);
            std::mem::take(&mut *memberships)
        };
        for members in memberships.iter().filter_map(Weak::upgrade) {
            members.remove(self.id());
        }
        self.shared.closed.notify_waiters();
    }

    /// Runs `insert` under the membership lock if the connection is not closed, and remembers
    /// the collection so that closing leaves it. Returns what `insert` returned.
    pub(crate) fn join(&self, members: &Arc<Members>, insert: impl FnOnce() -> bool) -> bool {
        let mut memberships = lock(&self.shared.memberships);
        if self.shared.state.load(Ordering::Acquire) == CLOSED {
            return false;
        }
        let inserted = insert();
        memberships.retain(|weak| weak.strong_count() > 0);
        if !memberships
            .iter()
            .any(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(members)))
        {
            memberships.push(Arc::downgrade(members));
        }
        inserted
    }

    /// Forgets a collection after this connection was removed from it, unless a concurrent
    /// `join` put it back.
    pub(crate) fn forget(&self, members: &Arc<Members>) {
        let mut memberships = lock(&self.shared.memberships);
        if !members.contains(self.id()) {
            memberships.retain(|weak| !std::ptr::eq(weak.as_ptr(), Arc::as_ptr(members)));
        }
    }
}

impl Shared {
    fn record_close(&self, frame: CloseFrame) {
        lock(&self.first_close).get_or_insert(frame);
    }

    /// Our close frame is on the wire: the peer's answer is now awaited.
    pub(crate) fn close_written(&self, frame: CloseFrame) {
        self.record_close(frame);
        self.close_sent.notify_one();
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("path", &self.path())
            .field("remote_addr", &self.shared.remote_addr)
            .field("open", &self.is_open())
            .finish()
    }
}

/// Locks a mutex, recovering from poisoning: the guarded data stays consistent because no
/// code here panics while holding these locks.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::RequestParts;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Uri};

    #[test]
    fn detached_parts_do_not_point_into_the_request_buffer() {
        // Like hyper: the URI and header values are slices of one big read buffer.
        let buffer = Bytes::from(b"/api/Chat?username=ann secret-cookie".repeat(100));
        let inside = |ptr: *const u8| buffer.as_ptr_range().contains(&ptr);
        let uri = Uri::from_maybe_shared(buffer.slice(0..22)).expect("valid uri");
        let mut headers = HeaderMap::new();
        let mut cookie = HeaderValue::from_maybe_shared(buffer.slice(23..36)).expect("value");
        cookie.set_sensitive(true);
        headers.insert(http::header::COOKIE, cookie);
        headers.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        assert!(inside(headers[http::header::COOKIE].as_bytes().as_ptr()));

        let parts = RequestParts::detached(&uri, &headers, None);
        assert_eq!(parts.uri.query(), Some("username=ann"));
        let cookies: Vec<_> = parts.headers.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(cookies, ["secret-cookie", "b=2"]);
        assert!(cookies[0].is_sensitive());
        assert!(!inside(parts.uri.path().as_ptr()));
        assert!(!inside(cookies[0].as_bytes().as_ptr()));
    }
}

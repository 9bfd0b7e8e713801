//! The connection layer: the public handle to one connection, the trait an application
//! implements to handle it, and the task that runs it ([`driver`]).

pub(crate) mod driver;
pub(crate) mod handler;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use http::{HeaderMap, HeaderValue, Uri};

use crate::engine::core::Core;
use crate::engine::flush::HasCore;
use crate::engine::id::ConnectionId;
use crate::engine::metrics::Metrics;
use crate::engine::settings::Settings;
use crate::engine::sync::lock;
use crate::error::SendError;
use crate::protocol::close::CloseCode;
use crate::protocol::frame::Frame;
use crate::protocol::message::Message;

/// A cheap, cloneable handle to one WebSocket connection, usable from any task.
///
/// [`send`](Connection::send) never blocks on the peer: it puts the message in the
/// connection's bounded queue and writes what the socket takes at once; the rest is written
/// by the connection's own task as the socket drains. Clones share one connection.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    uri: Uri,
    headers: HeaderMap,
    remote_addr: Option<SocketAddr>,
    protocol: Option<HeaderValue>,
    /// Collections this connection is in, so that closing leaves all of them.
    memberships: Mutex<Vec<Weak<dyn Membership>>>,
}

/// A set of connections (a collection) that a connection leaves when it closes. The
/// connection layer knows sets only through this, so that it does not depend on the
/// fan-out layer above it.
pub(crate) trait Membership: Send + Sync + 'static {
    /// Removes the connection, if it is there.
    fn remove_member(&self, id: ConnectionId);
    /// Whether the connection is there.
    fn has_member(&self, id: ConnectionId) -> bool;
}

/// The parts of the upgrade request a connection keeps.
pub(crate) struct RequestParts {
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) remote_addr: Option<SocketAddr>,
}

impl RequestParts {
    /// Keeps the request's URI, and its headers up to `header_bytes` (names and values),
    /// in one small buffer of their own. Headers that do not fit are dropped whole; the
    /// smaller ones after them are still kept.
    ///
    /// hyper parses them as slices of its 8 KiB read buffer, so keeping them as they are
    /// would pin that whole buffer for the connection's lifetime: more than everything else
    /// an idle connection costs. And hyper accepts hundreds of KiB of headers, which a
    /// connection would otherwise hold for its whole life.
    pub(crate) fn detached(
        uri: &Uri,
        headers: &HeaderMap,
        remote_addr: Option<SocketAddr>,
        header_bytes: usize,
    ) -> Self {
        let mut budget = header_bytes;
        let kept: Vec<_> = headers
            .iter()
            .filter(|(name, value)| {
                let size = name.as_str().len() + value.len();
                let fits = size <= budget;
                if fits {
                    budget -= size;
                }
                fits
            })
            .collect();
        if kept.len() < headers.len() {
            tracing::debug!(
                kept = kept.len(),
                dropped = headers.len() - kept.len(),
                "request headers beyond the kept size dropped"
            );
        }
        let uri_text = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let total = uri_text.len() + kept.iter().map(|(_, v)| v.len()).sum::<usize>();
        let mut buffer = bytes::BytesMut::with_capacity(total);
        buffer.extend_from_slice(uri_text.as_bytes());
        for (_, value) in &kept {
            buffer.extend_from_slice(value.as_bytes());
        }
        let buffer = buffer.freeze();

        // Both were valid a moment ago, so re-parsing the same bytes cannot fail.
        let uri = Uri::from_maybe_shared(buffer.slice(..uri_text.len())).unwrap_or_default();
        let mut copy = HeaderMap::with_capacity(kept.len());
        let mut at = uri_text.len();
        for (name, value) in kept {
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
        settings: &Settings,
        metrics: Metrics,
    ) -> Self {
        let inner = Inner {
            core: Core::new(settings, metrics),
            uri: request.uri,
            headers: request.headers,
            remote_addr: request.remote_addr,
            protocol,
            memberships: Mutex::new(Vec::new()),
        };
        Connection {
            inner: Arc::new(inner),
        }
    }

    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.inner.core.id
    }

    /// The upgrade request's URI (path and query).
    pub fn uri(&self) -> &Uri {
        &self.inner.uri
    }

    /// The upgrade request's path, for example `/api/Chat`.
    pub fn path(&self) -> &str {
        self.inner.uri.path()
    }

    /// The upgrade request's raw query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.inner.uri.query()
    }

    /// One query parameter of the upgrade request, percent-decoded; `None` if it is absent or
    /// not valid UTF-8. See [`query_param`](crate::query_param) to tell those apart.
    pub fn query_param(&self, name: &str) -> Option<String> {
        crate::protocol::query::query_param(self.query()?, name)
            .ok()
            .flatten()
    }

    /// The upgrade request's headers, as far as the server keeps them (see
    /// [`ServerBuilder::kept_header_bytes`](crate::ServerBuilder::kept_header_bytes), 4 KiB
    /// by default). The handler's constructor sees the whole request, if it needs more.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The peer's address, if the server put it in the request's extensions as a
    /// [`SocketAddr`] (see [`WebSocketServer::upgrade`](crate::WebSocketServer::upgrade)).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr
    }

    /// How many messages wait in this connection's outbound queue, and their payload bytes.
    /// A batch the writer has taken but not yet fully written is not counted.
    pub fn queued(&self) -> (usize, usize) {
        self.inner.core.queue.queued()
    }

    /// The subprotocol chosen in the handshake (see
    /// [`ServerBuilder::protocols`](crate::ServerBuilder::protocols)), if any.
    pub fn protocol(&self) -> Option<&str> {
        self.inner.protocol.as_ref()?.to_str().ok()
    }

    /// Whether the connection is open: not closed and no close requested.
    pub fn is_open(&self) -> bool {
        self.inner.core.is_open()
    }

    /// Queues a text or binary message without waiting.
    ///
    /// Returns [`SendError::Closed`] once the connection is closed or closing, and
    /// [`SendError::QueueFull`] when the peer is too far behind.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let core = &self.inner.core;
        let pushed = core.send_frame(Frame::from_message(message.into()))?;
        core.after_push(pushed);
        Ok(())
    }

    /// Starts the close handshake with `code` and `reason`, behind any messages already
    /// queued. Later sends fail with [`SendError::Closed`]. If the queue is full, the close
    /// frame goes out ahead of what is queued. Whatever the peer does, the connection is gone
    /// within the close timeout from now
    /// ([`ServerBuilder::close_timeout`](crate::ServerBuilder::close_timeout)).
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.inner.core.close(code, reason)
    }

    /// Resolves once the connection has ended (immediately if it already has): its socket
    /// is closed and it has left every collection. Its handler's `on_close` may still be to
    /// come; [`WebSocketServer::close_all`](crate::WebSocketServer::close_all) waits for that.
    pub async fn closed(&self) {
        self.inner.core.closed().await
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.core.is_closed()
    }

    /// Marks the connection closed: it leaves every collection and `closed()` resolves.
    pub(crate) fn mark_closed(&self) {
        let memberships = {
            let mut memberships = lock(&self.inner.memberships);
            self.inner.core.set_closed();
            std::mem::take(&mut *memberships)
        };
        for members in memberships.iter().filter_map(Weak::upgrade) {
            members.remove_member(self.id());
        }
        self.inner.core.notify_closed();
    }

    /// Runs `insert` under the membership lock if the connection is not closed, and remembers
    /// the collection so that closing leaves it. Returns what `insert` returned.
    pub(crate) fn join<M: Membership>(
        &self,
        members: &Arc<M>,
        insert: impl FnOnce() -> bool,
    ) -> bool {
        let mut memberships = lock(&self.inner.memberships);
        if self.is_closed() {
            return false;
        }
        let inserted = insert();
        memberships.retain(|weak| weak.strong_count() > 0);
        if !memberships
            .iter()
            .any(|weak| std::ptr::addr_eq(weak.as_ptr(), Arc::as_ptr(members)))
        {
            let weak: Weak<dyn Membership> = Arc::downgrade(members) as Weak<dyn Membership>;
            memberships.push(weak);
        }
        inserted
    }

    /// Forgets a collection after this connection was removed from it, unless a concurrent
    /// `join` put it back.
    pub(crate) fn forget<M: Membership>(&self, members: &Arc<M>) {
        let mut memberships = lock(&self.inner.memberships);
        if !members.has_member(self.id()) {
            memberships.retain(|weak| !std::ptr::addr_eq(weak.as_ptr(), Arc::as_ptr(members)));
        }
    }
}

impl HasCore for Connection {
    fn core(&self) -> &Core {
        &self.inner.core
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id())
            .field("path", &self.path())
            .field("remote_addr", &self.inner.remote_addr)
            .field("open", &self.is_open())
            .finish()
    }
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

        let parts = RequestParts::detached(&uri, &headers, None, usize::MAX);
        assert_eq!(parts.uri.query(), Some("username=ann"));
        let cookies: Vec<_> = parts.headers.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(cookies, ["secret-cookie", "b=2"]);
        assert!(cookies[0].is_sensitive());
        assert!(!inside(parts.uri.path().as_ptr()));
        assert!(!inside(cookies[0].as_bytes().as_ptr()));
    }

    #[test]
    fn headers_beyond_the_kept_size_are_dropped_whole() {
        let uri = Uri::from_static("/chat");
        let mut headers = HeaderMap::new();
        headers.insert("x-small", HeaderValue::from_static("1"));
        headers.insert(
            "x-huge",
            HeaderValue::from_str(&"a".repeat(300_000)).expect("value"),
        );
        headers.insert(http::header::ORIGIN, HeaderValue::from_static("http://x"));
        let parts = RequestParts::detached(&uri, &headers, None, 4096);
        assert_eq!(
            parts.headers.len(),
            2,
            "the huge one is dropped, the others kept"
        );
        assert!(parts.headers.get("x-huge").is_none());
        assert_eq!(parts.headers[http::header::ORIGIN], "http://x");
        let kept: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        assert!(kept <= 4096);
        let none = RequestParts::detached(&uri, &headers, None, 0);
        assert!(none.headers.is_empty());
        assert_eq!(none.uri.path(), "/chat", "the URI is always kept");
    }
}

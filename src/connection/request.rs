//! What a connection keeps of its upgrade request: the URI, the subprotocol chosen, the
//! peer's address, and the headers up to a size, in as few bytes as an idle connection can
//! afford: the texts in one buffer, parsed into a `Uri` and a `HeaderMap` only when asked for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use once_cell::race::OnceBox;

/// The parts of the upgrade request a connection keeps.
pub(crate) struct RequestParts {
    pub(crate) request: KeptRequest,
    pub(crate) remote_addr: KeptAddr,
}

impl RequestParts {
    /// Keeps the request's URI, the subprotocol chosen for it, and its headers up to
    /// `header_bytes` (names and values), in one small buffer of their own. Headers that do
    /// not fit are dropped whole; the smaller ones after them are still kept.
    ///
    /// hyper parses them as slices of its 8 KiB read buffer, so keeping them as they are
    /// would pin that whole buffer for the connection's lifetime: more than everything else
    /// an idle connection costs. And hyper accepts hundreds of KiB of headers, which a
    /// connection would otherwise hold for its whole life.
    pub(crate) fn detached(
        uri: &Uri,
        headers: &HeaderMap,
        protocol: Option<&HeaderValue>,
        remote_addr: Option<SocketAddr>,
        header_bytes: usize,
    ) -> Self {
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let protocol = protocol.and_then(|protocol| protocol.to_str().ok());
        RequestParts {
            request: KeptRequest::keep(target, protocol, headers, header_bytes),
            remote_addr: KeptAddr::new(remote_addr),
        }
    }
}

/// The request's path and query, the subprotocol and the headers, as one buffer: 32 bytes
/// inline and one allocation, made into a [`Uri`] (88 bytes) and a [`HeaderMap`] (some 600
/// bytes even for a few headers) the first time the application asks: most handlers read
/// only the query, if anything.
pub(crate) struct KeptRequest {
    /// The path and query (`..uri_end`), the subprotocol (`..protocol_end`), then the
    /// headers: per header, [`SENSITIVE`] or not, the name, `:`, the value, `\n`. Neither a
    /// name nor a value can hold `\n`, and a name cannot hold `:`.
    text: Box<[u8]>,
    uri_end: u32,
    protocol_end: u32,
    /// One pointer until either is asked for.
    built: OnceBox<Built>,
}

/// What the kept request is made into when asked.
#[derive(Default)]
struct Built {
    uri: OnceLock<Uri>,
    headers: OnceLock<HeaderMap>,
}

/// Marks a header whose value was flagged sensitive (kept out of logs and HPACK tables).
const SENSITIVE: u8 = b'!';
/// Marks one that was not.
const PLAIN: u8 = b' ';

impl KeptRequest {
    /// Keeps `target`, `protocol`, and `headers` up to `budget` bytes of names and values,
    /// dropping whole headers.
    fn keep(target: &str, protocol: Option<&str>, headers: &HeaderMap, mut budget: usize) -> Self {
        let mut text = Vec::with_capacity(target.len() + protocol.map_or(0, str::len));
        text.extend_from_slice(target.as_bytes());
        let uri_end = text.len();
        text.extend_from_slice(protocol.unwrap_or("").as_bytes());
        let protocol_end = text.len();
        let mut dropped = 0;
        for (name, value) in headers {
            let size = name.as_str().len() + value.len();
            if size > budget {
                dropped += 1;
                continue;
            }
            budget -= size;
            text.push(if value.is_sensitive() {
                SENSITIVE
            } else {
                PLAIN
            });
            text.extend_from_slice(name.as_str().as_bytes());
            text.push(b':');
            text.extend_from_slice(value.as_bytes());
            text.push(b'\n');
        }
        if dropped > 0 {
            tracing::debug!(dropped, "request headers beyond the kept size dropped");
        }
        // A request target and a protocol name are far below 4 GiB (hyper refuses long
        // heads); were they not, the offsets would only cut them short.
        let offset = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
        KeptRequest {
            text: text.into_boxed_slice(),
            uri_end: offset(uri_end),
            protocol_end: offset(protocol_end),
            built: OnceBox::new(),
        }
    }

    /// The text between two offsets (it was kept from text).
    fn text(&self, from: u32, to: u32) -> &str {
        let part = self
            .text
            .get(from as usize..to as usize)
            .unwrap_or_default();
        std::str::from_utf8(part).unwrap_or_default()
    }

    /// The path and query, for example `/api/Chat?username=ann`.
    fn target(&self) -> &str {
        self.text(0, self.uri_end)
    }

    /// The path, for example `/api/Chat`.
    pub(crate) fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// The query, without the `?`.
    pub(crate) fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, query)| query)
    }

    /// The subprotocol chosen, if any.
    pub(crate) fn protocol(&self) -> Option<&str> {
        Some(self.text(self.uri_end, self.protocol_end)).filter(|protocol| !protocol.is_empty())
    }

    /// The path and query as a [`Uri`], built on the first call.
    pub(crate) fn uri(&self) -> &Uri {
        self.built().uri.get_or_init(|| {
            // It was a valid URI's path and query, so parsing it again cannot fail.
            let bytes = Bytes::copy_from_slice(self.target().as_bytes());
            Uri::from_maybe_shared(bytes).unwrap_or_default()
        })
    }

    /// The kept headers, in their order, built on the first call.
    pub(crate) fn headers(&self) -> &HeaderMap {
        self.built().headers.get_or_init(|| {
            let mut map = HeaderMap::new();
            let raw = self
                .text
                .get(self.protocol_end as usize..)
                .unwrap_or_default();
            for line in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let Some((&flag, line)) = line.split_first() else {
                    continue;
                };
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    continue;
                };
                let (name, value) = line.split_at(colon);
                let value = value.get(1..).unwrap_or_default();
                // Both were a valid name and value when kept, so these cannot fail.
                if let (Ok(name), Ok(mut value)) =
                    (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                {
                    value.set_sensitive(flag == SENSITIVE);
                    map.append(name, value);
                }
            }
            map
        })
    }

    fn built(&self) -> &Built {
        self.built.get_or_init(Box::default)
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
        headers.insert("x-custom", HeaderValue::from_static("a: b"));
        assert!(inside(headers[http::header::COOKIE].as_bytes().as_ptr()));

        let protocol = HeaderValue::from_static("chat.v2");
        let parts = RequestParts::detached(&uri, &headers, Some(&protocol), None, usize::MAX);
        let kept = &parts.request;
        assert_eq!(kept.query(), Some("username=ann"));
        assert_eq!(kept.path(), "/api/Chat");
        assert_eq!(kept.uri(), "/api/Chat?username=ann");
        assert_eq!(kept.protocol(), Some("chat.v2"));
        let kept = kept.headers();
        let cookies: Vec<_> = kept.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(cookies, ["secret-cookie", "b=2"]);
        assert!(cookies[0].is_sensitive());
        assert!(!cookies[1].is_sensitive());
        assert_eq!(kept["x-custom"], "a: b", "a colon in a value is kept");
        assert_eq!(kept.len(), 3);
        assert!(!inside(parts.request.path().as_ptr()));
        assert!(!inside(parts.request.uri().path().as_ptr()));
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
        let parts = RequestParts::detached(&uri, &headers, None, None, 4096);
        let kept = parts.request.headers();
        assert_eq!(kept.len(), 2, "the huge one is dropped, the others kept");
        assert!(kept.get("x-huge").is_none());
        assert_eq!(kept[http::header::ORIGIN], "http://x");
        let size: usize = kept
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        assert!(size <= 4096);
        let none = RequestParts::detached(&uri, &headers, None, None, 0);
        assert!(none.request.headers().is_empty());
        assert_eq!(none.request.path(), "/chat", "the URI is always kept");
        assert_eq!(none.request.query(), None);
        assert_eq!(none.request.protocol(), None);
    }
}

/// The peer's address in 24 bytes, where an `Option<SocketAddr>` takes 32: the address
/// bytes, the port, an IPv6 scope and which kind it is. The IPv6 flow label, which nothing
/// reads, is dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeptAddr {
    ip: [u8; 16],
    scope_id: u32,
    port: u16,
    kind: AddrKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrKind {
    None,
    V4,
    V6,
}

impl KeptAddr {
    fn new(addr: Option<SocketAddr>) -> Self {
        let mut kept = KeptAddr {
            ip: [0; 16],
            scope_id: 0,
            port: 0,
            kind: AddrKind::None,
        };
        match addr {
            None => {}
            Some(SocketAddr::V4(v4)) => {
                kept.ip[..4].copy_from_slice(&v4.ip().octets());
                kept.port = v4.port();
                kept.kind = AddrKind::V4;
            }
            Some(SocketAddr::V6(v6)) => {
                kept.ip = v6.ip().octets();
                kept.scope_id = v6.scope_id();
                kept.port = v6.port();
                kept.kind = AddrKind::V6;
            }
        }
        kept
    }

    pub(crate) fn get(&self) -> Option<SocketAddr> {
        match self.kind {
            AddrKind::None => None,
            AddrKind::V4 => {
                let [a, b, c, d, ..] = self.ip;
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
                    self.port,
                ))
            }
            AddrKind::V6 => Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(self.ip),
                self.port,
                0,
                self.scope_id,
            ))),
        }
    }
}

#[cfg(test)]
mod kept_addr_tests {
    use super::KeptAddr;
    use std::net::SocketAddr;

    #[test]
    fn addresses_come_back_as_they_went_in() {
        for text in [
            "127.0.0.1:8080",
            "[::1]:443",
            "[fe80::1%3]:9000",
            "10.1.2.3:0",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(KeptAddr::new(Some(addr)).get(), Some(addr), "{text}");
        }
        assert_eq!(KeptAddr::new(None).get(), None);
        assert_eq!(std::mem::size_of::<KeptAddr>(), 24);
    }
}

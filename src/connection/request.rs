//! What a connection keeps of its upgrade request: the URI, the peer's address, and the
//! headers up to a size, in as few bytes as an idle connection can afford.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use once_cell::race::OnceBox;

/// The parts of the upgrade request a connection keeps.
pub(crate) struct RequestParts {
    pub(crate) uri: KeptUri,
    pub(crate) headers: KeptHeaders,
    pub(crate) remote_addr: KeptAddr,
}

impl RequestParts {
    /// Keeps the request's URI, and its headers up to `header_bytes` (names and values),
    /// in small buffers of their own. Headers that do not fit are dropped whole; the
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
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        RequestParts {
            uri: KeptUri {
                text: target.into(),
                uri: OnceBox::new(),
            },
            headers: KeptHeaders::keep(headers, header_bytes),
            remote_addr: KeptAddr::new(remote_addr),
        }
    }
}

/// The request's path and query as text, made into a [`Uri`] the first time the
/// application asks for one (a `Uri` is 88 bytes; most handlers read only the query).
pub(crate) struct KeptUri {
    text: Box<str>,
    /// One pointer until built (a `OnceLock<Box<_>>` is two words).
    uri: OnceBox<Uri>,
}

impl KeptUri {
    /// The path, for example `/api/Chat`.
    pub(crate) fn path(&self) -> &str {
        self.text
            .split_once('?')
            .map_or(&*self.text, |(path, _)| path)
    }

    /// The query, without the `?`.
    pub(crate) fn query(&self) -> Option<&str> {
        self.text.split_once('?').map(|(_, query)| query)
    }

    /// The path and query as a [`Uri`], built on the first call.
    pub(crate) fn uri(&self) -> &Uri {
        self.uri.get_or_init(|| {
            // It was a valid URI's path and query, so parsing it again cannot fail.
            let bytes = Bytes::copy_from_slice(self.text.as_bytes());
            Box::new(Uri::from_maybe_shared(bytes).unwrap_or_default())
        })
    }
}

/// Request headers kept as one compact buffer, made into a [`HeaderMap`] the first time
/// the application asks for them: a `HeaderMap` costs about 600 bytes even for a few
/// headers, and most handlers never look.
pub(crate) struct KeptHeaders {
    /// Per header: [`SENSITIVE`] or not, the name, `:`, the value, `\n`. Neither a name
    /// nor a value can hold `\n`, and a name cannot hold `:`.
    raw: Box<[u8]>,
    /// One pointer until built.
    map: OnceBox<HeaderMap>,
}

/// Marks a header whose value was flagged sensitive (kept out of logs and HPACK tables).
const SENSITIVE: u8 = b'!';
/// Marks one that was not.
const PLAIN: u8 = b' ';

impl KeptHeaders {
    /// Keeps `headers` up to `budget` bytes of names and values, dropping whole headers.
    fn keep(headers: &HeaderMap, mut budget: usize) -> Self {
        let mut raw = Vec::new();
        let mut dropped = 0;
        for (name, value) in headers {
            let size = name.as_str().len() + value.len();
            if size > budget {
                dropped += 1;
                continue;
            }
            budget -= size;
            raw.push(if value.is_sensitive() {
                SENSITIVE
            } else {
                PLAIN
            });
            raw.extend_from_slice(name.as_str().as_bytes());
            raw.push(b':');
            raw.extend_from_slice(value.as_bytes());
            raw.push(b'\n');
        }
        if dropped > 0 {
            tracing::debug!(dropped, "request headers beyond the kept size dropped");
        }
        KeptHeaders {
            raw: raw.into_boxed_slice(),
            map: OnceBox::new(),
        }
    }

    /// The kept headers, in their order, built on the first call.
    pub(crate) fn map(&self) -> &HeaderMap {
        self.map.get_or_init(|| {
            let mut map = HeaderMap::new();
            for line in self.raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
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
            Box::new(map)
        })
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

        let parts = RequestParts::detached(&uri, &headers, None, usize::MAX);
        assert_eq!(parts.uri.query(), Some("username=ann"));
        assert_eq!(parts.uri.path(), "/api/Chat");
        assert_eq!(parts.uri.uri(), "/api/Chat?username=ann");
        let kept = parts.headers.map();
        let cookies: Vec<_> = kept.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(cookies, ["secret-cookie", "b=2"]);
        assert!(cookies[0].is_sensitive());
        assert!(!cookies[1].is_sensitive());
        assert_eq!(kept["x-custom"], "a: b", "a colon in a value is kept");
        assert_eq!(kept.len(), 3);
        assert!(!inside(parts.uri.path().as_ptr()));
        assert!(!inside(parts.uri.uri().path().as_ptr()));
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
        let kept = parts.headers.map();
        assert_eq!(kept.len(), 2, "the huge one is dropped, the others kept");
        assert!(kept.get("x-huge").is_none());
        assert_eq!(kept[http::header::ORIGIN], "http://x");
        let size: usize = kept
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        assert!(size <= 4096);
        let none = RequestParts::detached(&uri, &headers, None, 0);
        assert!(none.headers.map().is_empty());
        assert_eq!(none.uri.path(), "/chat", "the URI is always kept");
        assert_eq!(none.uri.query(), None);
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

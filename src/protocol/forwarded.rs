//! Who a request came through: the client addresses that proxies record in `Forwarded`
//! (RFC 7239) and `X-Forwarded-For`, nearest proxy last.
//!
//! These headers are whatever the client (or any proxy) wrote, so they are parsed in one
//! pass, bounded (at most [`MAX_HOPS`] addresses, values longer than [`MAX_LEN`] ignored),
//! and anything that is not an IP address (`unknown`, an obfuscated `_name`, garbage) ends
//! the chain there: what lies before it cannot be trusted.

use std::net::IpAddr;

/// Most addresses read from the headers; proxies beyond this many hops are not followed.
pub(crate) const MAX_HOPS: usize = 32;

/// Longest header value read, in bytes.
pub(crate) const MAX_LEN: usize = 4096;

/// The `for` addresses of the `Forwarded` header values, in order (the client first, the
/// nearest proxy's peer last). Each element of the list carries one `for=`; an element
/// whose `for` is missing or not an address is recorded as `None`.
pub(crate) fn forwarded_for<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in values {
        let Some(value) = usable(value) else {
            hops.push(None);
            continue;
        };
        for element in value.split(',') {
            if hops.len() == MAX_HOPS {
                return hops;
            }
            let for_value = element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim())
            });
            hops.push(for_value.and_then(node_address));
        }
    }
    hops
}

/// The addresses of the `X-Forwarded-For` header values, in order (the client first).
pub(crate) fn x_forwarded_for<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in values {
        let Some(value) = usable(value) else {
            hops.push(None);
            continue;
        };
        for element in value.split(',') {
            if hops.len() == MAX_HOPS {
                return hops;
            }
            hops.push(node_address(element.trim()));
        }
    }
    hops
}

/// A header value short enough and textual enough to read.
fn usable(value: &[u8]) -> Option<&str> {
    if value.len() > MAX_LEN {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// An address from a node: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`,
/// `[2001:db8::1]`, `2001:db8::1`, optionally quoted. `None` for anything else.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    if let Some(bracketed) = node.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        let (address, after) = bracketed.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return address.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(address);
    }
    // `v4:port`.
    let (address, port) = node.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A port (RFC 7239 also allows an obfuscated `_port`).
fn is_port(port: &str) -> bool {
    port.parse::<u16>().is_ok() || (port.starts_with('_') && port.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::{forwarded_for, node_address, x_forwarded_for, MAX_HOPS};
    use std::net::IpAddr;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("an address"))
    }

    #[test]
    fn nodes_in_every_form_rfc_7239_allows() {
        assert_eq!(node_address("192.0.2.60"), ip("192.0.2.60"));
        assert_eq!(node_address("192.0.2.60:4711"), ip("192.0.2.60"));
        assert_eq!(
            node_address("\"[2001:db8:cafe::17]:4711\""),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(node_address("[2001:db8:cafe::17]"), ip("2001:db8:cafe::17"));
        assert_eq!(node_address("2001:db8:cafe::17"), ip("2001:db8:cafe::17"));
        assert_eq!(node_address("192.0.2.60:_hidden"), ip("192.0.2.60"));
        for not_an_address in [
            "unknown",
            "_hidden",
            "",
            "[::1",
            "[::1]x",
            "1.2.3.4:99999",
            "evil",
        ] {
            assert_eq!(node_address(not_an_address), None, "{not_an_address}");
        }
    }

    #[test]
    fn forwarded_lists_every_for_in_order() {
        let values: [&[u8]; 2] = [
            b"for=192.0.2.43, for=\"[2001:db8:cafe::17]\";proto=https",
            b"For=unknown;by=203.0.113.43",
        ];
        assert_eq!(
            forwarded_for(values),
            [ip("192.0.2.43"), ip("2001:db8:cafe::17"), None]
        );
        assert_eq!(forwarded_for([&b"proto=http"[..]]), [None], "no for=");
    }

    #[test]
    fn x_forwarded_for_lists_every_address_in_order() {
        let values: [&[u8]; 2] = [b"203.0.113.195, 70.41.3.18", b" 150.172.238.178 ,junk"];
        assert_eq!(
            x_forwarded_for(values),
            [
                ip("203.0.113.195"),
                ip("70.41.3.18"),
                ip("150.172.238.178"),
                None
            ]
        );
    }

    #[test]
    fn the_headers_are_bounded() {
        let many = "1.2.3.4,".repeat(400);
        assert_eq!(x_forwarded_for([many.as_bytes()]).len(), MAX_HOPS);
        let huge = "a".repeat(10_000);
        assert_eq!(x_forwarded_for([huge.as_bytes()]), [None]);
        assert_eq!(forwarded_for([&[0xff, 0xfe][..]]), [None], "not UTF-8");
    }
}

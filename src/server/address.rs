//! Limits per client address: how many connections one address may hold open, and how
//! fast it may open new ones; and which address a request is from, behind trusted proxies.
//!
//! IPv4 addresses count one by one; IPv6 ones by their /64 prefix, which is what one
//! subscriber usually gets (so a client cannot dodge the limit by using another address of
//! its own network).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use crate::engine::sync::lock;
use crate::protocol::forwarded::{forwarded_for, x_forwarded_for};
use crate::protocol::handshake::HandshakeError;

/// An IP network, `address/prefix`: a trusted proxy, or a range of them (see
/// [`ServerBuilder::trusted_proxies`](crate::ServerBuilder::trusted_proxies)).
///
/// ```
/// use websocket_handler::IpNetwork;
///
/// let private: IpNetwork = "10.0.0.0/8".parse().unwrap();
/// assert!(private.contains("10.1.2.3".parse().unwrap()));
/// assert!(!private.contains("192.0.2.1".parse().unwrap()));
/// let one: IpNetwork = "::1".parse().unwrap(); // a single address: /32 or /128
/// assert!(one.contains("::1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<IpNetwork>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    address: IpAddr,
    prefix: u8,
}

/// Why a text is not an [`IpNetwork`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP network (`address` or `address/prefix`)")]
pub struct IpNetworkError(String);

impl IpNetwork {
    /// The network of `address` with a prefix of `prefix` bits; `None` if the prefix is
    /// longer than the address (32 bits for IPv4, 128 for IPv6).
    pub fn new(address: IpAddr, prefix: u8) -> Option<Self> {
        let bits = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(IpNetwork { address, prefix })
    }

    /// Whether `address` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, canonical(address)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNetwork {
    type Err = IpNetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || IpNetworkError(text.to_owned());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse().map_err(|_| invalid())?,
            None => bits,
        };
        IpNetwork::new(canonical(address), prefix).ok_or_else(invalid)
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) as the IPv4 address they are.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a request is from: the peer's, or, when the peer is a trusted proxy, the
/// first address before the trusted proxies in `Forwarded` (or else `X-Forwarded-For`),
/// read from the nearest proxy backwards. A header a client wrote itself cannot make an
/// untrusted peer count as someone else.
pub(crate) fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpNetwork],
) -> IpAddr {
    let peer = canonical(peer.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded = headers.get_all(http::header::FORWARDED);
    let hops = if forwarded.iter().next().is_some() {
        forwarded_for(forwarded.iter().map(|value| value.as_bytes()))
    } else {
        x_forwarded_for(
            headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes()),
        )
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop.map(canonical) {
            Some(ip) if is_trusted(ip) => client = ip,
            Some(ip) => return ip,
            // Not an address: nothing before it can be told apart; the last trusted hop
            // is who we know.
            None => return client,
        }
    }
    client
}

/// The peer's address, from a request's extensions: a [`SocketAddr`] (what the crate's own
/// listener, and most hyper servers, put there), or, with the cargo feature `axum`, axum's
/// `ConnectInfo<SocketAddr>` (`Router::into_make_service_with_connect_info`).
pub(crate) fn peer_address(extensions: &http::Extensions) -> Option<SocketAddr> {
    let plain = extensions.get::<SocketAddr>().copied();
    #[cfg(feature = "axum")]
    let plain = plain.or_else(|| {
        extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
    });
    plain
}

/// What counts as one client: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Key {
    fn from(address: IpAddr) -> Self {
        match canonical(address) {
            IpAddr::V4(v4) => Key::V4(v4.into()),
            IpAddr::V6(v6) => Key::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The limits per address of one server, and where each address stands.
pub(crate) struct AddressLimits {
    max_open: Option<u32>,
    /// Handshakes per second, and burst.
    rate: Option<(f64, f64)>,
    shards: [Mutex<Shard>; SHARDS],
    /// Whether the warning that a request came without a peer address was given.
    warned: AtomicBool,
    /// Entries looked at by `forget_idle`, for the tests of its cost.
    #[cfg(test)]
    scanned: std::sync::atomic::AtomicUsize,
}

const SHARDS: usize = 16;

/// Addresses remembered per shard before idle ones are forgotten.
const FORGET_ABOVE: usize = 4096;

/// The addresses of one shard.
#[derive(Default)]
struct Shard {
    entries: HashMap<Key, Entry>,
    /// How many entries make the next sweep for idle ones: twice what the last one kept
    /// (at least [`FORGET_ABOVE`]), so that sweeping costs each handshake O(1) on
    /// average however many addresses are busy, where sweeping at a fixed size cost
    /// every handshake past it a look at every entry.
    sweep_at: usize,
}

struct Entry {
    open: u32,
    tokens: f64,
    refilled: Instant,
}

/// One connection counted against its address; released when dropped.
pub(crate) struct AddressPermit {
    limits: Arc<AddressLimits>,
    key: Key,
}

impl AddressLimits {
    pub(crate) fn new(max_open: Option<u32>, rate: Option<(u32, u32)>) -> Arc<Self> {
        Arc::new(AddressLimits {
            max_open,
            rate: rate
                .map(|(per_second, burst)| (f64::from(per_second.max(1)), f64::from(burst.max(1)))),
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    entries: HashMap::new(),
                    sweep_at: FORGET_ABOVE,
                })
            }),
            warned: AtomicBool::new(false),
            #[cfg(test)]
            scanned: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Counts a new connection from `address`, unless it is over a limit.
    pub(crate) fn admit(
        self: &Arc<Self>,
        address: IpAddr,
    ) -> Result<AddressPermit, HandshakeError> {
        let key = Key::from(address);
        let now = Instant::now();
        let mut shard = lock(self.shard(key));
        if shard.entries.len() >= shard.sweep_at {
            #[cfg(test)]
            self.scanned
                .fetch_add(shard.entries.len(), std::sync::atomic::Ordering::Relaxed);
            forget_idle(&mut shard.entries, self.rate, now);
            shard.sweep_at = FORGET_ABOVE.max(2 * shard.entries.len());
        }
        let burst = self.rate.map_or(0.0, |(_, burst)| burst);
        let entry = shard.entries.entry(key).or_insert(Entry {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        if let Some(max) = self.max_open {
            if entry.open >= max {
                return Err(HandshakeError::AddressBusy { limit: max });
            }
        }
        if let Some((per_second, burst)) = self.rate {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * per_second).min(burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(HandshakeError::AddressRateLimited {
                    per_second: per_second as u32,
                });
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        Ok(AddressPermit {
            limits: self.clone(),
            key,
        })
    }

    /// A request came with no peer address, so these limits could not count it: says so,
    /// once, since it means they are off for every request served the same way.
    pub(crate) fn warn_no_address(&self) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "limits per client address are set, but an upgrade request carries no peer \
                 address, so they do not apply to it: put the peer's `SocketAddr` in the \
                 request's extensions (the crate's listener does), or, behind axum, serve \
                 with `into_make_service_with_connect_info::<SocketAddr>()` and the cargo \
                 feature `axum`"
            );
        }
    }

    fn shard(&self, key: Key) -> &Mutex<Shard> {
        let hash = match key {
            Key::V4(v4) => u64::from(v4),
            Key::V6(v6) => v6 ^ (v6 >> 32),
        };
        &self.shards[(hash % SHARDS as u64) as usize]
    }
}

/// Drops the entries of addresses with nothing open and a full bucket: they are as good as
/// new, so forgetting them changes nothing.
fn forget_idle(shard: &mut HashMap<Key, Entry>, rate: Option<(f64, f64)>, now: Instant) {
    shard.retain(|_, entry| {
        let full = rate.is_none_or(|(per_second, burst)| {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens + elapsed * per_second >= burst
        });
        entry.open > 0 || !full
    });
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut shard = lock(self.limits.shard(self.key));
        if let Some(entry) = shard.entries.get_mut(&self.key) {
            entry.open = entry.open.saturating_sub(1);
            // Without a rate to remember, an address with nothing open is as good as new.
            if entry.open == 0 && self.limits.rate.is_none() {
                shard.entries.remove(&self.key);
            }
        }
    }
}

/// How long a client over a per-address limit is told to wait (`Retry-After`).
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40000)
    }

    #[test]
    fn forwarded_headers_count_only_from_a_trusted_peer() {
        let trusted: Vec<IpNetwork> = vec!["10.0.0.0/8".parse().expect("net")];
        let forged = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_address(peer("192.0.2.9"), &forged, &trusted),
            "192.0.2.9".parse::<IpAddr>().unwrap(),
            "an untrusted peer is who it is"
        );
        // Through two trusted proxies: the client is the first untrusted from the right.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(
            client_address(peer("10.0.0.1"), &chain, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let rfc = headers(&[("forwarded", "for=198.51.100.17;proto=https, for=10.0.0.2")]);
        assert_eq!(
            client_address(peer("10.0.0.1"), &rfc, &trusted),
            "198.51.100.17".parse::<IpAddr>().unwrap()
        );
        let garbage = headers(&[("x-forwarded-for", "203.0.113.7, nonsense, 10.0.0.2")]);
        assert_eq!(
            client_address(peer("10.0.0.1"), &garbage, &trusted),
            "10.0.0.2".parse::<IpAddr>().unwrap(),
            "nothing past an unreadable hop is believed"
        );
        assert_eq!(
            client_address(peer("10.0.0.1"), &HeaderMap::new(), &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Key::from(a), Key::from(b));
        assert_ne!(Key::from(a), Key::from(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            Key::from(mapped),
            Key::from("192.0.2.1".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn an_address_is_limited_in_open_connections_and_in_handshakes() {
        let limits = AddressLimits::new(Some(2), None);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limits.admit(ip).expect("1");
        let _second = limits.admit(ip).expect("2");
        assert_eq!(
            limits.admit(ip).err(),
            Some(HandshakeError::AddressBusy { limit: 2 })
        );
        assert!(
            limits.admit("192.0.2.2".parse().unwrap()).is_ok(),
            "another address"
        );
        drop(first);
        assert!(limits.admit(ip).is_ok(), "room again once one closed");

        let limits = AddressLimits::new(None, Some((1, 3)));
        let burst: Vec<_> = (0..3)
            .map(|_| limits.admit(ip).expect("the burst"))
            .collect();
        assert_eq!(
            limits.admit(ip).err(),
            Some(HandshakeError::AddressRateLimited { per_second: 1 })
        );
        drop(burst);
        assert!(limits.admit("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn admitting_is_constant_time_however_many_addresses_are_remembered() {
        // Every address holds a connection, so none can be forgotten: 200,000 addresses,
        // far past what a shard keeps before it sweeps.
        let limits = AddressLimits::new(Some(1), Some((1, 10)));
        let count = 200_000u32;
        let address = |n: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        let open: Vec<AddressPermit> = (0..count)
            .map(|n| limits.admit(address(n)).expect("a new address"))
            .collect();
        let scanned = limits.scanned.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            scanned <= 4 * count as usize,
            "{scanned} entries looked at for {count} handshakes"
        );
        // And what is remembered still counts.
        assert_eq!(
            limits.admit(address(0)).err(),
            Some(HandshakeError::AddressBusy { limit: 1 })
        );
        drop(open);
        assert!(limits.admit(address(0)).is_ok());
    }
}

//! Who a request is from behind proxies (`Forwarded`, `X-Forwarded-For`): the input is
//! header lines. Checks, beyond "no panic": from an untrusted peer the headers change
//! nothing, and from a trusted one the answer is the same every time.
#![no_main]

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use websocket_handler::IpNetwork;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let mut parts = line.splitn(2, |&b| b == b':');
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = match name.first().map(|b| b % 3) {
            Some(0) => HeaderName::from_static("forwarded"),
            Some(1) => HeaderName::from_static("x-forwarded-for"),
            _ => continue,
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let trusted: Vec<IpNetwork> = ["10.0.0.0/8", "::1"].iter().map(|n| n.parse().unwrap()).collect();
    let untrusted: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    assert_eq!(
        websocket_handler::fuzzing::client_address(untrusted, &headers, &trusted),
        untrusted.ip()
    );
    let proxy: SocketAddr = "10.1.1.1:5000".parse().unwrap();
    let client = websocket_handler::fuzzing::client_address(proxy, &headers, &trusted);
    // Not the untrusted peer's, and the same every time.
    assert_ne!(client, untrusted.ip());
    assert_eq!(
        client,
        websocket_handler::fuzzing::client_address(proxy, &headers, &trusted)
    );
});

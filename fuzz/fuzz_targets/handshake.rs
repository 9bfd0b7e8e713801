//! The upgrade request checks: any method, HTTP version and headers must give either a
//! 28-character accept key (an HTTP/2 extended CONNECT: a 200) or a clean refusal, never a
//! panic.
//!
//! Input: byte 0 picks the method, byte 1 the HTTP version, and the rest is header lines
//! (`\n`-separated `name:value`). A name of a single byte 0x01 to 0x05 stands for one of the
//! headers the check reads, so the fuzzer reaches the key checks quickly. Invalid names and
//! values are skipped.
#![no_main]

use http::{header, HeaderName, HeaderValue, Method, Request, Version};
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 8] = [
    "GET", "GET", "GET", "POST", "HEAD", "OPTIONS", "CONNECT", "get",
];
const VERSIONS: [Version; 6] = [
    Version::HTTP_11,
    Version::HTTP_11,
    Version::HTTP_10,
    Version::HTTP_09,
    Version::HTTP_2,
    Version::HTTP_3,
];
const SHORT_NAMES: [HeaderName; 5] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_KEY,
    header::HOST,
];

fuzz_target!(|data: &[u8]| {
    let [method, version, headers @ ..] = data else {
        return;
    };
    let method = Method::from_bytes(METHODS[*method as usize % METHODS.len()].as_bytes())
        .expect("valid method");
    let mut builder = Request::builder()
        .method(method)
        .version(VERSIONS[*version as usize % VERSIONS.len()]);
    for line in headers.split(|&byte| byte == b'\n') {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let name = match name {
            [short @ 1..=5] => SHORT_NAMES[*short as usize - 1].clone(),
            _ => match HeaderName::from_bytes(name) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };

    // Either kind of request: over HTTP/1.1 the same answer as above; over HTTP/2 a CONNECT
    // with `:protocol` websocket (the method byte's parity says whether there is one) and
    // one `Sec-WebSocket-Version: 13`, or a refusal.
    let protocol = (data[0] % 2 == 0).then_some("websocket");
    let either = websocket_handler::fuzzing::check_request(&request, protocol);
    match (&either, request.version()) {
        (Ok(true), version) => {
            assert_eq!(version, Version::HTTP_2);
            assert_eq!(request.method(), Method::CONNECT);
            assert_eq!(protocol, Some("websocket"));
            assert_eq!(
                request
                    .headers()
                    .get_all(header::SEC_WEBSOCKET_VERSION)
                    .iter()
                    .count(),
                1
            );
        }
        (Ok(false), version) => assert_eq!(version, Version::HTTP_11),
        (Err(_), _) => {}
    }
    if request.version() != Version::HTTP_2 {
        assert_eq!(
            either.as_ref().map_err(Clone::clone).map(|_| ()),
            websocket_handler::fuzzing::check_handshake(&request).map(|_| ())
        );
    }

    match websocket_handler::fuzzing::check_handshake(&request) {
        Ok(accept) => {
            // base64 of a 20-byte SHA-1: 27 characters and one `=`.
            let accept = accept.as_bytes();
            assert_eq!(accept.len(), 28, "{accept:?}");
            assert!(
                accept[..27]
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/'),
                "{accept:?}"
            );
            assert_eq!(accept[27], b'=');
            // Accepted only with exactly one key, GET and HTTP/1.1.
            assert_eq!(
                request
                    .headers()
                    .get_all(header::SEC_WEBSOCKET_KEY)
                    .iter()
                    .count(),
                1
            );
            assert_eq!(request.method(), Method::GET);
            assert_eq!(request.version(), Version::HTTP_11);
        }
        Err(error) => {
            let status = error.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{status}"
            );
            assert!(!error.to_string().is_empty());
            let response = error.to_response();
            assert_eq!(response.status(), status);
            assert!(response.headers().contains_key(header::CONTENT_TYPE));
        }
    }
});

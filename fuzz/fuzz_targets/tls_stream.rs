//! The server's TLS stream (`server/tls/stream.rs`) on arbitrary client bytes, split at
//! arbitrary points, during the handshake and after a real one: no panic, what it keeps
//! bounded, and what it reads is what the client sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    websocket_handler::fuzzing::tls_stream(data);
});

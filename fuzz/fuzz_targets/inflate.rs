//! Inflating a client's permessage-deflate message (RFC 7692) within a limit: the input is
//! the compressed payload. Checks, beyond "no panic": an inflated message is never longer
//! than the limit, and the input itself, compressed and inflated back, comes back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    websocket_handler::fuzzing::inflate_bounded(data);
});

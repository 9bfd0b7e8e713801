//! permessage-deflate negotiation (RFC 7692): the input is `Sec-WebSocket-Extensions` lines,
//! one per `\n`. Checks, beyond "no panic": an answer starts with `permessage-deflate`,
//! names a window of 8 to 15 bits that is the one agreed and no larger than the server's,
//! and is accepted the same when offered back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    websocket_handler::fuzzing::extension_offers(data);
});

//! A client's text message to a SignalR hub, read as the hub reads it: the handshake, then
//! records split at 0x1E and parsed. Never a panic; what parses holds what its text said.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    websocket_handler::fuzzing::signalr_records(data);
});

//! The frame decoder (`protocol/decode.rs`) on arbitrary client bytes: the same items and
//! errors whatever the chunking of the input, never more held than twice what arrived, and
//! no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    websocket_handler::fuzzing::decoder_chunking(data);
});

//! A NATS message on a backplane topic's subject, from anyone who can publish there, split
//! into envelopes as the NATS backplane reads it: a batch header, a newline, the payload.
//! Never a panic; what splits is the payload, whole and in order.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    websocket_handler::fuzzing::nats_batch(data);
});

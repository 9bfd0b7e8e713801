//! What a backplane hands a collection's inbox, from anyone who can publish on the channel:
//! delivered, skipped or refused with an `EnvelopeError`, never a panic. And the same bytes
//! delivered twice are never delivered twice.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use websocket_handler::backplane::{Backplane, Delivery, Inbox};
use websocket_handler::{Bytes, WebSocketCollection};

/// A backplane that only keeps the inbox it is given.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Inbox>>>);

impl Backplane for Capture {
    fn publish(&self, _topic: &str, _envelope: Bytes) {}

    fn subscribe(&self, _topic: &str, inbox: Inbox) {
        *self.0.lock().expect("not poisoned") = Some(inbox);
    }
}

fuzz_target!(|data: &[u8]| {
    let capture = Capture::default();
    let room = WebSocketCollection::with_backplane("t", capture.clone());
    let inbox = capture.0.lock().expect("not poisoned").clone().expect("subscribed");
    let envelope = Bytes::copy_from_slice(data);
    match inbox.deliver(envelope.clone()) {
        Ok(Delivery::Delivered { queued, .. }) => {
            assert_eq!(queued, 0, "the room has no connections");
            assert_eq!(
                inbox.deliver(envelope),
                Ok(Delivery::Duplicate),
                "the same envelope delivered twice"
            );
        }
        Ok(other) => panic!("a fresh room's inbox said {other:?}"),
        Err(_) => {}
    }
    drop(room);
});

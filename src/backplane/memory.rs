//! A backplane within one process: for tests, examples and single-process setups that want
//! the same code path as a multi-process one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{lock, Backplane, Inbox};

/// Joins collections on the same topic within one process. Clones share one bus.
///
/// Delivery happens inside `publish`, on the publishing thread, so it is immediate and in
/// order. See the [module docs](crate::backplane) for an example.
#[derive(Clone, Default)]
pub struct MemoryBackplane {
    topics: Arc<Mutex<HashMap<String, Vec<Inbox>>>>,
}

impl MemoryBackplane {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backplane for MemoryBackplane {
    fn publish(&self, topic: &str, envelope: Bytes) {
        // Deliver outside the lock: delivering broadcasts, and a subscriber may be added
        // meanwhile.
        let inboxes = {
            let mut topics = lock(&self.topics);
            let Some(inboxes) = topics.get_mut(topic) else {
                return;
            };
            inboxes.retain(|inbox| !inbox.is_closed());
            inboxes.clone()
        };
        for inbox in inboxes {
            if let Err(error) = inbox.deliver(envelope.clone()) {
                tracing::warn!(%error, topic, "memory backplane: dropped a message");
            }
        }
    }

    fn subscribe(&self, topic: &str, inbox: Inbox) {
        lock(&self.topics)
            .entry(topic.to_owned())
            .or_default()
            .push(inbox);
    }

    fn unsubscribe(&self, topic: &str) {
        let mut topics = lock(&self.topics);
        if let Some(inboxes) = topics.get_mut(topic) {
            inboxes.retain(|inbox| !inbox.is_closed());
            if inboxes.is_empty() {
                topics.remove(topic);
            }
        }
    }
}

impl std::fmt::Debug for MemoryBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackplane")
            .field("topics", &lock(&self.topics).len())
            .finish()
    }
}

//! Publishing: a bounded queue, emptied in order, a batch at a time (see [`batch`]), each
//! acknowledged by JetStream before the next goes.
//!
//! One batch at a time, because order is the point: a receiver delivers each sender's
//! messages in sequence and drops one older than what it has (a duplicate). With several
//! messages in flight, a leader change or a lost connection could fail one and store the
//! next; the failed one, sent again, would land behind it and be dropped everywhere. A batch
//! is one NATS message, stored whole or not at all, so everything that queued while the
//! last one was on its way goes in the next round trip. A batch that is not acknowledged (a
//! timeout, no leader, no connection) is sent again, the same, before anything after it,
//! with backoff, for as long as it takes. Each carries a `Nats-Msg-Id` (its first envelope's
//! sender and sequence number, and how many): when an earlier attempt was stored after all
//! and only its acknowledgement was lost, JetStream stores the retry not at all and answers
//! with the first one's sequence (`duplicate`).
//!
//! [`batch`]: super::batch

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self as js};
use bytes::Bytes;

use super::batch;
use super::config::NatsConfig;
use super::names::TopicNames;
use super::streams::{classify_api, Failure};
use super::Shared;
use crate::backplane::envelope;

/// Topics and envelopes waiting to be published, bounded in count and bytes.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) items: VecDeque<(String, Bytes)>,
    pub(super) bytes: usize,
}

impl Pending {
    pub(super) fn push_back(&mut self, item: (String, Bytes)) {
        self.bytes += item.1.len();
        self.items.push_back(item);
    }

    pub(super) fn pop_front(&mut self) -> Option<(String, Bytes)> {
        let item = self.items.pop_front()?;
        self.bytes -= item.1.len();
        Some(item)
    }

    /// The oldest queued envelopes of one topic and room, in order, as one batch: up to
    /// [`batch::MAX_COUNT`] and [`batch::MAX_BYTES`] (or one larger envelope alone).
    pub(super) fn take_batch(&mut self) -> Option<Batch> {
        let (topic, first) = self.pop_front()?;
        let mut bytes = first.len();
        let mut envelopes = vec![first];
        while envelopes.len() < batch::MAX_COUNT {
            let Some((next_topic, next)) = self.items.front() else {
                break;
            };
            if *next_topic != topic
                || envelope::room_of(next) != envelope::room_of(&envelopes[0])
                || bytes + next.len() > batch::MAX_BYTES
            {
                break;
            }
            bytes += next.len();
            if let Some((_, next)) = self.pop_front() {
                envelopes.push(next);
            }
        }
        Some(Batch {
            topic,
            envelopes,
            id: None,
        })
    }

    /// Drops the oldest while over either bound; returns how many.
    pub(super) fn trim(&mut self, config: &NatsConfig) -> usize {
        let mut dropped = 0;
        while self.items.len() > config.max_pending
            || (self.bytes > config.max_pending_bytes && self.items.len() > 1)
        {
            if self.pop_front().is_none() {
                break;
            }
            dropped += 1;
        }
        dropped
    }
}

/// Envelopes of one topic and room, published as one NATS message.
pub(super) struct Batch {
    pub(super) topic: String,
    /// At least one.
    pub(super) envelopes: Vec<Bytes>,
    /// Its `Nats-Msg-Id`, once sent: the same in every attempt.
    id: Option<String>,
}

/// The `Nats-Msg-Id` of a batch: its first envelope's sender and sequence number, which
/// name it in every attempt, and, for more than one, how many. Bytes that are not an
/// envelope get an id of this process's own.
pub(super) fn message_id(shared: &Shared, envelopes: &[Bytes]) -> String {
    let first = envelopes.first().map_or(&[][..], |first| &first[..]);
    let id = envelope_id(first).unwrap_or_else(|| {
        let n = shared.own_ids.fetch_add(1, Ordering::Relaxed);
        format!("{:032x}-{n}", shared.process_id)
    });
    match envelopes.len() {
        1 => id,
        count => format!("{id}+{count}"),
    }
}

/// An envelope's sender and sequence number, in hex; `None` for what is not an envelope.
fn envelope_id(bytes: &[u8]) -> Option<String> {
    let header = bytes.get(2..envelope::HEADER_LEN)?;
    if bytes.first() != Some(&1) {
        return None;
    }
    let mut hex = String::with_capacity(2 * header.len());
    for byte in header {
        hex.push_str(&format!("{byte:02x}"));
    }
    Some(hex)
}

/// What became of one publication.
pub(super) enum Outcome {
    /// Stored (now, or by an earlier attempt: `duplicate`).
    Stored { duplicate: bool },
    /// Not stored: see [`Failure`].
    Failed(Failure),
}

/// Publishes `batch` on `names`' stream as one message and waits for JetStream's
/// acknowledgement (within the context's timeout, the response timeout).
pub(super) async fn publish_batch(
    shared: &Shared,
    context: &js::Context,
    names: &TopicNames,
    batch: &mut Batch,
) -> Outcome {
    let subject = names.subject(batch.envelopes.first().and_then(|e| envelope::room_of(e)));
    let id = (batch.id)
        .get_or_insert_with(|| message_id(shared, &batch.envelopes))
        .clone();
    let (payload, count) = batch::encode(&batch.envelopes);
    let mut publish = PublishMessage::build().payload(payload).message_id(id);
    if let Some(count) = count {
        publish = publish.header(batch::HEADER, count.as_str());
    }
    let acked = match context.send_publish(subject, publish).await {
        Ok(ack) => ack.await,
        Err(error) => Err(error),
    };
    match acked {
        Ok(ack) => Outcome::Stored {
            duplicate: ack.duplicate,
        },
        Err(error) => Outcome::Failed(match error.kind() {
            PublishErrorKind::MaxPayloadExceeded => Failure::Refused(error.to_string()),
            // No one took the publication: no stream, or none with a leader right now.
            PublishErrorKind::StreamNotFound => Failure::Missing,
            PublishErrorKind::Other => {
                let api = std::error::Error::source(&error)
                    .and_then(|source| source.downcast_ref::<js::Error>());
                match api {
                    Some(api) => classify_api(api),
                    None => Failure::Unavailable(error.to_string()),
                }
            }
            _ => Failure::Unavailable(error.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::Message;

    #[test]
    fn an_envelope_is_named_by_its_sender_and_sequence_number() {
        let first = envelope::encode(0xab, 7, Some("lobby"), &Message::from("hi"));
        let again = envelope::encode(0xab, 7, Some("lobby"), &Message::from("hi"));
        let next = envelope::encode(0xab, 8, Some("lobby"), &Message::from("hi"));
        let id = envelope_id(&first).expect("an envelope");
        assert_eq!(id, format!("{:032x}{:016x}", 0xab, 7));
        assert_eq!(envelope_id(&again), Some(id.clone()), "a retry is the same");
        assert_ne!(envelope_id(&next), Some(id));
        assert_eq!(envelope_id(b"junk"), None);
        assert_eq!(envelope_id(&[9; 40]), None, "another version");
    }

    #[test]
    fn the_pending_queue_is_bounded_in_messages_and_in_bytes() {
        let config = super::super::NatsBuilder::new("nats://h")
            .max_pending(3)
            .max_pending_bytes(100)
            .config;
        let mut pending = Pending::default();
        let item = |len: usize| ("t".to_owned(), Bytes::from(vec![0u8; len]));
        for _ in 0..5 {
            pending.push_back(item(10));
        }
        assert_eq!(pending.trim(&config), 2, "beyond 3 messages");
        assert_eq!((pending.items.len(), pending.bytes), (3, 30));
        pending.push_back(item(90));
        assert_eq!(pending.trim(&config), 2, "beyond 100 bytes, oldest first");
        assert_eq!((pending.items.len(), pending.bytes), (2, 100));
        pending.push_back(item(500));
        assert_eq!(
            pending.trim(&config),
            2,
            "a message larger than the bound stays alone"
        );
        assert_eq!(pending.pop_front().map(|(_, e)| e.len()), Some(500));
        assert_eq!(pending.bytes, 0);
    }
}

//! Reading a topic: one task per topic and process, which delivers every message of the
//! topic's stream, in sequence order, from the last one it delivered.
//!
//! It reads through a consumer of its own: ephemeral, in memory, on one server, without
//! acknowledgements, starting at the sequence after the last delivered; the first one at
//! the time the topic was subscribed to (less [`SINCE_SLACK`]), so that what other processes
//! published while this one was setting the topic up is not skipped. The process keeps
//! where it stands, not the server: whatever happens to the consumer (its server killed, a
//! leader change, a reconnect to another server, a gap in the consumer's own numbering,
//! which means something was lost on the way), the task makes a new one from the last
//! sequence delivered, so nothing is skipped and nothing delivered twice. One consumer
//! serves every room of the topic: rooms cost nothing per read.
//!
//! Before reading again after a failure it looks at the stream: one made again (another
//! creation time) is a new epoch, read from its start and counted as a history reset; a
//! sequence gone back below what was delivered is counted and logged the same way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures_util::StreamExt;

use super::batch;
use super::names::TopicNames;
use super::streams::{self, classify_api, jitter, Failure, StreamState};
use super::Shared;
use crate::backplane::{Delivery, EnvelopeError, Inbox};
use crate::fanout::history::Position;

/// Messages handed over between two yields of the reader: a backlog (a server catching up
/// after an outage) reaches the connections' queues no faster than their writers can run,
/// so clients that read are not closed as slow consumers because a backlog came at once.
const DELIVERIES_PER_YIELD: usize = 16;

/// Messages asked for per pull.
const PULL_BATCH: usize = 256;

/// Bytes asked for per pull at most: what one pull brings into memory.
const PULL_BYTES: usize = 4 << 20;

/// How long a pull waits on the server for new messages; a pull that the server does not
/// end within this and the response timeout is taken for a lost consumer.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// An unused consumer of ours is removed by the server after this (ours are left behind
/// when their reader moves on).
pub(super) const CONSUMER_INACTIVE: Duration = Duration::from_secs(30);

/// How long before its subscription a topic is read from: what two clocks may differ by
/// (this process's, which took the time, and the NATS servers', which stamp the messages).
/// A message published that much before the subscription may reach the subscribers too.
const SINCE_SLACK: Duration = Duration::from_secs(1);

/// Where reading a topic stands: the stream's epoch and the last sequence delivered (or
/// the one reading started after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadState {
    pub(super) epoch: u64,
    pub(super) offset: u64,
}

/// Reads `topic` from `at`, or from what was stored `since` (less [`SINCE_SLACK`]) if
/// given, until the task is aborted (the topic's last collection is gone, or the backplane
/// stopped).
pub(super) async fn run(
    shared: Arc<Shared>,
    context: js::Context,
    topic: String,
    names: TopicNames,
    mut at: ReadState,
    mut since: Option<SystemTime>,
) {
    let config = &shared.config;
    let mut backoff = config.reconnect_min;
    let mut failing = Failing {
        shared: &shared,
        on: false,
    };
    loop {
        let lost = read(
            &shared,
            &context,
            (&topic, &names),
            (&mut at, &mut since),
            &mut failing,
        )
        .await;
        // Read for a while (a consumer was made): the next attempt waits the least.
        let progressed = !failing.on;
        if progressed {
            backoff = config.reconnect_min;
            failing.set(true);
        }
        match &lost {
            Lost::Consumer(Failure::Refused(_)) => {
                tracing::warn!(stream = names.stream, reason = %lost, "nats backplane: cannot read the topic")
            }
            _ => {
                tracing::debug!(stream = names.stream, reason = %lost, "nats backplane: reading again")
            }
        }
        // Where the stream stands, before reading again: made again, or gone back?
        let state = match streams::info(&context, &names).await {
            Ok(state) => Some(state),
            Err(Failure::Missing) => streams::ensure(&context, config, &names)
                .await
                .ok()
                .map(|(state, _)| state),
            Err(_) => None,
        };
        if let Some(state) = state {
            moved(&shared, &names, &mut at, state);
        }
        tokio::time::sleep(jitter(backoff)).await;
        if !progressed {
            backoff = (backoff * 2).min(config.reconnect_max);
        }
    }
}

/// Whether a reader cannot read now, counted in [`Shared::readers_failing`] (the state
/// says `Retrying` while any cannot); uncounted when the reader ends.
struct Failing<'a> {
    shared: &'a Shared,
    on: bool,
}

impl Failing<'_> {
    fn set(&mut self, on: bool) {
        if self.on == on {
            return;
        }
        self.on = on;
        if on {
            self.shared.readers_failing.fetch_add(1, Ordering::AcqRel);
        } else {
            self.shared.readers_failing.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.update_state();
    }
}

impl Drop for Failing<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// The stream is at `state`: another epoch (it was made again) is read from its start; a
/// last sequence below what was delivered (it went back) is read from there. Either is a
/// history reset.
pub(super) fn moved(shared: &Shared, names: &TopicNames, at: &mut ReadState, state: StreamState) {
    if state.epoch != at.epoch {
        shared.history_resets.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            stream = names.stream,
            delivered = %Position::new(at.epoch, batch::offset(at.offset, batch::LAST_INDEX)),
            epoch = state.epoch,
            "nats backplane: the topic's stream was deleted and made again; reading its new \
             epoch from the start"
        );
        *at = ReadState {
            epoch: state.epoch,
            offset: state.first.saturating_sub(1),
        };
    } else if state.last < at.offset {
        shared.history_resets.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            stream = names.stream,
            delivered = %Position::new(at.epoch, batch::offset(at.offset, batch::LAST_INDEX)),
            last = state.last,
            "nats backplane: the topic's stream went back below what was delivered (its \
             servers lost data); reading on from its last message"
        );
        at.offset = state.last;
    }
}

/// Why reading stopped, to be made again.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("cannot make a consumer: {0}")]
    Consumer(Failure),
    #[error("a pull failed: {0}")]
    Pull(String),
    #[error("a pull was not answered in time")]
    Silent,
    #[error("a gap in the consumer's numbering (at {0}): something was lost on the way")]
    Gap(u64),
    #[error("a message without its sequence numbers: {0}")]
    NoInfo(String),
}

/// Makes a consumer from the sequence after `at` (or from the time `since`, until the
/// first message comes) and delivers what it brings, until something goes wrong.
async fn read(
    shared: &Shared,
    context: &js::Context,
    (topic, names): (&str, &TopicNames),
    (at, since): (&mut ReadState, &mut Option<SystemTime>),
    failing: &mut Failing<'_>,
) -> Lost {
    let mut config = consumer_config(at.offset + 1, None);
    if let Some(since) = *since {
        config.deliver_policy = DeliverPolicy::ByStartTime {
            start_time: since.checked_sub(SINCE_SLACK).unwrap_or(since).into(),
        };
    }
    let consumer = match context
        .create_consumer_on_stream(config, &names.stream)
        .await
    {
        Ok(consumer) => consumer,
        Err(error) => {
            return Lost::Consumer(match error.kind() {
                ConsumerErrorKind::JetStream(api) => classify_api(&api),
                _ => Failure::Unavailable(error.to_string()),
            })
        }
    };
    failing.set(false);
    let mut next_consumer_seq = 1;
    let mut delivered = 0usize;
    let wait = PULL_EXPIRES + shared.config.response_timeout;
    loop {
        let batch = consumer
            .batch()
            .max_messages(PULL_BATCH)
            .max_bytes(PULL_BYTES)
            .expires(PULL_EXPIRES)
            .messages();
        let mut batch = match tokio::time::timeout(wait, batch).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(error)) => return Lost::Pull(error.to_string()),
            Err(_) => return Lost::Silent,
        };
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            let message = tokio::select! {
                message = batch.next() => message,
                () = &mut deadline => return Lost::Silent,
            };
            let message = match message {
                None => break,
                Some(Err(error)) => return Lost::Pull(error.to_string()),
                Some(Ok(message)) => message,
            };
            let (stream_seq, consumer_seq) = match message.info() {
                Ok(info) => (info.stream_sequence, info.consumer_sequence),
                Err(error) => return Lost::NoInfo(error.to_string()),
            };
            if consumer_seq != next_consumer_seq {
                return Lost::Gap(at.offset);
            }
            next_consumer_seq += 1;
            if since.take().is_some() {
                // The first message since the subscription: reading stands before it.
                at.offset = stream_seq.saturating_sub(1);
            }
            if stream_seq <= at.offset {
                continue; // delivered already
            }
            // Sequences are dense: a hole is what was removed before it was read (away
            // longer than the retention).
            let missed = stream_seq - at.offset - 1;
            if missed > 0 {
                shared.missed.fetch_add(missed, Ordering::Relaxed);
                tracing::warn!(
                    stream = names.stream,
                    missed,
                    "nats backplane: messages removed from the stream before they were read \
                     (away longer than the retention)"
                );
            }
            at.offset = stream_seq;
            let message = message.message;
            let header = (message.headers.as_ref())
                .and_then(|headers| headers.get(batch::HEADER))
                .map(|value| value.as_str());
            match batch::split(message.payload.clone(), header) {
                Ok(envelopes) => {
                    for (index, envelope) in (0..).zip(envelopes) {
                        let position = Position::new(at.epoch, batch::offset(stream_seq, index));
                        deliver(shared, topic, envelope, position);
                        delivered += 1;
                        if delivered.is_multiple_of(DELIVERIES_PER_YIELD) {
                            tokio::task::yield_now().await;
                        }
                    }
                }
                Err(error) => {
                    shared.invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stream = names.stream, %error, "nats backplane: ignored a message");
                }
            }
        }
    }
}

/// The consumer a reader (or a resume, with its subject) makes: from `start`, without
/// acknowledgements, in memory, on one server, removed by the server when left unused.
pub(super) fn consumer_config(start: u64, filter: Option<String>) -> pull::Config {
    pull::Config {
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: start.max(1),
        },
        ack_policy: AckPolicy::None,
        filter_subject: filter.unwrap_or_default(),
        memory_storage: true,
        num_replicas: 1,
        inactive_threshold: CONSUMER_INACTIVE,
        description: Some("websocket-handler backplane reader".to_owned()),
        ..Default::default()
    }
}

/// Hands a message to the topic's inboxes.
fn deliver(shared: &Shared, topic: &str, envelope: Bytes, position: Position) {
    let inboxes = shared.inboxes_of(topic);
    for inbox in &inboxes {
        match deliver_guarded(inbox, &envelope, position) {
            Ok(Delivery::Delivered { .. }) => {
                shared.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Delivery::Own | Delivery::Duplicate | Delivery::Closed) => {}
            Err(error) => {
                shared.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic, %error, "nats backplane: ignored a message");
            }
        }
    }
}

/// Hands an envelope to an inbox; a panic in what that runs (the application's tag
/// function, say) is caught and reported, so that it cannot stop the reader.
fn deliver_guarded(
    inbox: &Inbox,
    envelope: &Bytes,
    position: Position,
) -> Result<Delivery, EnvelopeError> {
    let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        inbox.deliver_at(envelope.clone(), position)
    }));
    delivered.unwrap_or_else(|_| {
        tracing::error!(%position, "nats backplane: delivering a message panicked; it was skipped");
        Ok(Delivery::Closed)
    })
}

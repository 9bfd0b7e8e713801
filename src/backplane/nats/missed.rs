//! History for resumes ([`Backplane::missed`](crate::backplane::Backplane::missed)): a page
//! of a topic's stream after a position, read through a consumer made for it, filtered by
//! JetStream to the room's own subject, so that a resume reads its room's messages alone.

use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures_util::StreamExt;

use super::batch;
use super::names::TopicNames;
use super::read::consumer_config;
use super::streams::{self, Failure};
use super::Shared;
use crate::backplane::MissedPage;
use crate::fanout::history::{Position, ResumeError};

/// Messages per fetch at most.
const FETCH_MAX: usize = 256;

/// How long a resume tries to read a page while NATS is unavailable (a leader election
/// takes 3 to 8 s) before it is told the history cannot be reached.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// A page of `topic`'s messages (of `room`'s alone, for a room) after `after`: about
/// `max_bytes` (at least one message, if there is one), up to the stream's last message
/// when asked. What fails for now (a consumer placed on a server that is down, a request
/// lost in a reconnect, no leader) is tried again with backoff, for [`PATIENCE`].
pub(super) async fn missed(
    shared: &Shared,
    topic: &str,
    room: Option<&str>,
    after: Position,
    max_bytes: usize,
) -> Result<MissedPage, ResumeError> {
    let Some(context) = shared.context() else {
        return Err(ResumeError::Unavailable);
    };
    let _turn = shared
        .history_reads
        .acquire()
        .await
        .map_err(|_| ResumeError::Unavailable)?;
    let mut wait = shared.config.reconnect_min;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        match page(shared, &context, topic, room, after, max_bytes).await {
            Err(ResumeError::Unavailable) if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(streams::jitter(wait)).await;
                wait = (wait * 2).min(shared.config.reconnect_max);
            }
            done => return done,
        }
    }
}

/// One attempt at [`missed`].
async fn page(
    shared: &Shared,
    context: &js::Context,
    topic: &str,
    room: Option<&str>,
    after: Position,
    max_bytes: usize,
) -> Result<MissedPage, ResumeError> {
    let names = TopicNames::new(&shared.config.prefix, topic);
    let state = stream_state(context, &names).await?;
    let other_epoch = |current| ResumeError::OtherEpoch {
        asked: after,
        current,
    };
    // The client's last message is at `index` in the batch stored at `sequence`.
    let (sequence, index) = batch::sequence_and_index(after.offset());
    if state.epoch != after.epoch() || sequence > state.last {
        return Err(other_epoch(state.epoch));
    }
    let complete_at =
        |last: u64| Position::new(after.epoch(), batch::offset(last, batch::LAST_INDEX));
    if sequence == state.last && index == batch::LAST_INDEX {
        return Ok(MissedPage::new(Vec::new(), after, true));
    }
    let too_old = |first: u64| ResumeError::TooOld {
        asked: after,
        oldest: Some(Position::new(after.epoch(), batch::offset(first, 0))),
    };
    // Reading starts at the client's last batch, for what it holds after the client's last
    // message, unless the client had all of it.
    let start = if index == batch::LAST_INDEX {
        sequence + 1
    } else {
        sequence
    };
    // Something after the client's last message is gone (for a room too: it cannot be
    // told whether the room's or another's).
    if start < state.first {
        return Err(too_old(state.first));
    }
    let filter = names.subject(room.map(str::as_bytes));
    let config = consumer_config(start, Some(filter));
    let consumer = context
        .create_consumer_on_stream(config, &names.stream)
        .await
        .map_err(|error| match error.kind() {
            ConsumerErrorKind::JetStream(api) => match streams::classify_api(&api) {
                Failure::Missing => other_epoch(0),
                _ => ResumeError::Unavailable,
            },
            _ => ResumeError::Unavailable,
        })?;
    // A fetch whose answer is lost (a reconnect meanwhile) is not waited for for ever.
    let wait = shared.config.response_timeout * 4;
    let page = tokio::time::timeout(wait, read_page(&consumer, state.last, max_bytes))
        .await
        .unwrap_or(Err(ResumeError::Unavailable));
    // Made for this page only: removed now (the server would after a while anyway).
    let name = consumer.cached_info().name.clone();
    let (cleanup, stream) = (context.clone(), names.stream.clone());
    tokio::spawn(async move {
        let _ = cleanup.delete_consumer_from_stream(&name, &stream).await;
    });
    let (batches, through, complete) = page?;
    // The stream as it is now: made again meanwhile, or trimmed past `after`.
    let now = stream_state(context, &names).await?;
    if now.epoch != after.epoch() {
        return Err(other_epoch(now.epoch));
    }
    if start < now.first {
        return Err(too_old(now.first));
    }
    let mut envelopes = Vec::new();
    for (at, envelopes_at) in batches {
        for (i, envelope) in (0..).zip(envelopes_at) {
            let offset = batch::offset(at, i);
            if offset > after.offset() {
                envelopes.push((Position::new(after.epoch(), offset), envelope));
            }
        }
    }
    let through = Some(complete_at(through))
        .filter(|through| through.offset() > after.offset())
        .unwrap_or(after);
    Ok(MissedPage::new(envelopes, through, complete))
}

async fn stream_state(
    context: &js::Context,
    names: &TopicNames,
) -> Result<streams::StreamState, ResumeError> {
    match streams::info(context, names).await {
        Ok(state) => Ok(state),
        // No stream: no history of any epoch.
        Err(Failure::Missing) => Err(ResumeError::NoHistory),
        Err(_) => Err(ResumeError::Unavailable),
    }
}

/// What a page holds: batches' envelopes by sequence, how far it reaches (a sequence),
/// whether to `last`.
type Page = (Vec<(u64, Vec<Bytes>)>, u64, bool);

/// Fetches what the consumer has, up to sequence `last`, until the page holds `max_bytes`:
/// a few messages at first, then as many as the room left holds at the size seen so far.
/// A message that is not a batch of envelopes is left out (the live reader says so).
async fn read_page(
    consumer: &js::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    last: u64,
    max_bytes: usize,
) -> Result<Page, ResumeError> {
    let mut pending = consumer.cached_info().num_pending;
    let mut batches: Vec<(u64, Vec<Bytes>)> = Vec::new();
    let (mut bytes, mut through) = (0, 0);
    let mut count = 16;
    while pending > 0 && (batches.is_empty() || bytes < max_bytes) {
        let want = count.min(usize::try_from(pending).unwrap_or(FETCH_MAX));
        let mut fetched = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .map_err(|_| ResumeError::Unavailable)?;
        let mut got = 0;
        while let Some(message) = fetched.next().await {
            let message = message.map_err(|_| ResumeError::Unavailable)?;
            let (seq, left) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(_) => return Err(ResumeError::Unavailable),
            };
            got += 1;
            pending = left;
            if seq > last {
                // Published after the page was asked for: the next page's.
                pending = 0;
                break;
            }
            let message = message.message;
            bytes += message.payload.len();
            through = seq;
            let header = (message.headers.as_ref())
                .and_then(|headers| headers.get(batch::HEADER))
                .map(|value| value.as_str());
            let envelopes = batch::split(message.payload.clone(), header).unwrap_or_default();
            batches.push((seq, envelopes));
        }
        if got == 0 {
            // Nothing more now (what was pending was removed meanwhile).
            pending = 0;
        }
        let average = bytes / batches.len().max(1);
        count = (max_bytes.saturating_sub(bytes) / average.max(1)).clamp(1, FETCH_MAX);
    }
    let complete = pending == 0;
    Ok((batches, if complete { last } else { through }, complete))
}

impl Shared {
    /// The JetStream context, once connected, for resumes.
    fn context(&self) -> Option<js::Context> {
        super::lock(&self.context).clone()
    }
}

//! The lossless mode of the Redis backplane: each topic is a Redis stream.
//!
//! A publication is one script run (atomic in Redis): it takes the topic's next offset
//! (`INCR`), appends the envelope to the stream under that offset (`XADD ... MAXLEN ~`),
//! and answers the topic's epoch (made at random the first time; a Redis that lost its
//! data has none, so it makes a new one). Every process reads every stream it subscribes
//! to from the last offset it delivered (`XREAD BLOCK`, a bounded `COUNT` at a time) and
//! delivers in offset order with the position `(epoch, offset)`: its own publications
//! included, so all processes deliver the same messages in the same order.
//!
//! - A dropped or killed connection costs nothing: reading resumes from the last offset,
//!   within the retention.
//! - A Redis that restarts without its data has a new epoch: readers start the new stream
//!   from its beginning, and each publisher first publishes again what it published
//!   recently in the old epoch (the readers drop what they had already delivered, by sender
//!   and sequence number), then what queued up meanwhile.
//! - Offsets of one epoch are contiguous, so a gap (a reader away longer than the retention
//!   kept) shows, and is counted and logged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::{is_refusal, SessionError, Shared, FINAL_FLUSH, PUBLISH_BATCH};
use crate::backplane::{lock, BackplaneState, Delivery, MissedEnvelopes, MissedPage};
use crate::fanout::history::{Position, ResumeError};

/// Takes the next offset, appends the envelope under it, and answers `{epoch, offset}`.
/// KEYS: the stream, its offset counter, its epoch. ARGV: the envelope, the stream's
/// length to keep, an epoch to use if the topic has none.
const PUBLISH: &str = r#"
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3], ARGV[3])
  epoch = ARGV[3]
end
local offset = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'd', ARGV[1])
return {epoch, offset}
"#;

/// Entries read at most per `XREAD`: what Redis hands over at once stays bounded.
const READ_COUNT: usize = 512;

/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);

/// The Redis keys of a topic's channel name: one hash tag, so all three live on one node
/// of a cluster.
pub(super) struct Keys {
    pub(super) stream: String,
    pub(super) offset: String,
    pub(super) epoch: String,
}

pub(super) fn keys(channel: &str) -> Keys {
    let stream = format!("{{{channel}}}");
    Keys {
        offset: format!("{stream}:offset"),
        epoch: format!("{stream}:epoch"),
        stream,
    }
}

/// What a read brings: by stream key, each entry's offset and envelope.
type Entries = Vec<(String, Vec<(u64, Bytes)>)>;

/// Where reading stands in each stream, by channel name.
#[derive(Default)]
struct Streams {
    read: HashMap<String, ReadState>,
    /// Streams Redis refused to let us read (an ACL): left out of every read, so that they
    /// do not take the others with them, until the subscriptions change.
    refused: HashSet<String>,
}

struct ReadState {
    /// The last offset delivered (0: none).
    offset: u64,
    /// The epoch of that offset, once known.
    epoch: Option<u64>,
}

/// One connection's life in lossless mode: `Ok` once stopped, or why it was lost.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    client: &redis::Client,
    connected: &mut bool,
    streams_state: &mut HashMap<String, (u64, Option<u64>)>,
) -> Result<(), SessionError> {
    let config = &shared.config;
    let timed = |timeout: Duration| move |_| SessionError::Timeout(timeout);
    let connect = |response: Duration| {
        let options = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(response));
        async move {
            tokio::time::timeout(
                config.connect_timeout,
                client.get_multiplexed_async_connection_with_config(&options),
            )
            .await
            .map_err(timed(config.connect_timeout))?
            .map_err(SessionError::from)
        }
    };
    let mut publisher = connect(config.response_timeout).await?;
    // The reader blocks in XREAD: a connection of its own, allowed to wait that long.
    let mut reader = connect(config.response_timeout + BLOCK).await?;
    let reader_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut reader)
        .await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(PUBLISH)
        .query_async(&mut publisher)
        .await?;
    *lock(&shared.connection) = Some(publisher.clone());

    // Redis may have lost its data while we were away: what we published recently in an
    // epoch that is gone goes out again first, then what queued up meanwhile.
    republish_lost(shared, &mut publisher).await?;
    let mut streams = Streams {
        read: std::mem::take(streams_state)
            .into_iter()
            .map(|(channel, (offset, epoch))| (channel, ReadState { offset, epoch }))
            .collect(),
        refused: HashSet::new(),
    };
    let result = async {
        shared.subscriptions_changed.store(false, Ordering::Release);
        streams.sync(shared, &mut publisher).await?;
        while publish_batch(shared, &mut publisher, &sha).await? {}
        *connected = true;
        shared.drop_reported.store(false, Ordering::Relaxed);
        shared.state.send_replace(BackplaneState::Connected);
        tracing::info!(url = %config.url, "redis backplane (lossless): connected");
        loop {
            let read = read(reader.clone(), &streams);
            tokio::pin!(read);
            let entries = loop {
                if shared.subscriptions_changed.swap(false, Ordering::AcqRel) {
                    streams.refused.clear();
                    // A topic was added: where it stands is read before anything more is
                    // published to it (same connection, in order), so none of its messages
                    // is skipped. The read in progress is cut short to take it in.
                    streams.sync(shared, &mut publisher).await?;
                    unblock(&mut publisher, reader_id).await?;
                    break (&mut read).await?;
                }
                let more = publish_batch(shared, &mut publisher, &sha).await?;
                if shared.stopped.load(Ordering::Acquire) {
                    let flush = async {
                        while publish_batch(shared, &mut publisher, &sha).await? {}
                        Ok(())
                    };
                    return match tokio::time::timeout(FINAL_FLUSH, flush).await {
                        Ok(result) => result,
                        Err(_) => Ok(()),
                    };
                }
                if more {
                    // Between batches, anything already read is delivered.
                    if let Some(entries) = futures_util::FutureExt::now_or_never(&mut read) {
                        break entries?;
                    }
                    continue;
                }
                tokio::select! {
                    entries = &mut read => break entries?,
                    () = shared.work.notified() => {}
                }
            };
            match entries {
                Read::Entries(entries) => streams.deliver(shared, &mut publisher, entries).await?,
                Read::Refused => streams.find_refused(shared, &mut publisher).await?,
            }
        }
    }
    .await;
    // Where reading stands survives the connection: the next one goes on from there.
    *streams_state = streams
        .read
        .into_iter()
        .map(|(channel, state)| (channel, (state.offset, state.epoch)))
        .collect();
    *lock(&shared.connection) = None;
    result
}

/// Ends the reader's `XREAD` now (it answers as if it timed out). Where `CLIENT UNBLOCK`
/// is not allowed (an ACL), the read ends by itself within [`BLOCK`].
async fn unblock(conn: &mut MultiplexedConnection, reader: i64) -> Result<(), SessionError> {
    let unblocked: redis::RedisResult<i64> = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(reader)
        .query_async(conn)
        .await;
    match unblocked {
        Err(error) if !is_refusal(&error) => Err(error.into()),
        _ => Ok(()),
    }
}

impl Streams {
    /// Makes the streams read match the channels with live inboxes. A new one is read from
    /// its end as it is now (like a subscription, it gets what is published from now on);
    /// one whose epoch changed while we were away (Redis lost its data) is read again from
    /// the start of its new epoch.
    async fn sync(
        &mut self,
        shared: &Shared,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), SessionError> {
        let wanted: Vec<String> = {
            let mut inboxes = lock(&shared.inboxes);
            inboxes.retain(|_, list| {
                list.retain(|inbox| !inbox.is_closed());
                !list.is_empty()
            });
            inboxes.keys().cloned().collect()
        };
        self.read.retain(|channel, _| wanted.contains(channel));
        for channel in wanted {
            if self.refused.contains(&channel) {
                continue;
            }
            let keys = keys(&channel);
            let epoch = match epoch_of(conn, &keys).await {
                Err(SessionError::Redis(error)) if is_refusal(&error) => {
                    self.refuse(shared, channel, &error);
                    continue;
                }
                epoch => epoch?,
            };
            match self.read.get_mut(&channel) {
                Some(state) if state.epoch.is_some() && state.epoch != epoch => {
                    shared.history_resets.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        channel,
                        "redis backplane: Redis lost this topic's stream (a restart without \
                         its data?); reading its new one from the start"
                    );
                    *state = ReadState { offset: 0, epoch };
                }
                Some(state) => state.epoch = state.epoch.or(epoch),
                None => {
                    let offset: Option<u64> = redis::cmd("GET")
                        .arg(&keys.offset)
                        .query_async(conn)
                        .await?;
                    let offset = if epoch.is_some() {
                        offset.unwrap_or(0)
                    } else {
                        0
                    };
                    self.read.insert(channel, ReadState { offset, epoch });
                }
            }
        }
        Ok(())
    }

    /// Leaves `channel` out of the reads: Redis refused it.
    fn refuse(&mut self, shared: &Shared, channel: String, error: &redis::RedisError) {
        shared.refused_subscriptions.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            channel,
            %error,
            "redis backplane: Redis refused to let us read this topic's stream; messages \
             for it will not arrive"
        );
        self.read.remove(&channel);
        self.refused.insert(channel);
    }

    /// A read was refused as a whole: finds the streams Redis refuses, one by one, and
    /// leaves them out.
    async fn find_refused(
        &mut self,
        shared: &Shared,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), SessionError> {
        let channels: Vec<String> = self.read.keys().cloned().collect();
        for channel in channels {
            let probe: redis::RedisResult<u64> = redis::cmd("XLEN")
                .arg(keys(&channel).stream)
                .query_async(conn)
                .await;
            match probe {
                Err(error) if is_refusal(&error) => self.refuse(shared, channel, &error),
                Err(error) => return Err(error.into()),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Delivers what a read brought, in offset order, with its position.
    async fn deliver(
        &mut self,
        shared: &Shared,
        conn: &mut MultiplexedConnection,
        entries: Entries,
    ) -> Result<(), SessionError> {
        for (stream, list) in entries {
            let Some(channel) = stream
                .strip_prefix('{')
                .and_then(|rest| rest.strip_suffix('}'))
            else {
                continue;
            };
            let Some(state) = self.read.get_mut(channel) else {
                continue;
            };
            if state.epoch.is_none() {
                // The stream was made after we looked: its epoch is there now.
                state.epoch = epoch_of(conn, &keys(channel)).await?;
            }
            let Some(epoch) = state.epoch else { continue };
            let inboxes = {
                let mut all = lock(&shared.inboxes);
                let Some(inboxes) = all.get_mut(channel) else {
                    continue;
                };
                inboxes.retain(|inbox| !inbox.is_closed());
                inboxes.clone()
            };
            for (offset, envelope) in list {
                if offset <= state.offset {
                    continue;
                }
                // Offsets of an epoch are contiguous: a hole is what the stream trimmed
                // before we read it.
                let missed = offset - state.offset - 1;
                if missed > 0 {
                    shared.missed.fetch_add(missed, Ordering::Relaxed);
                    tracing::warn!(
                        channel,
                        missed,
                        "redis backplane: messages trimmed from the stream before they were \
                         read (away longer than the retention)"
                    );
                }
                state.offset = offset;
                let position = Position::new(epoch, offset);
                for inbox in &inboxes {
                    match inbox.deliver_at(envelope.clone(), position) {
                        Ok(Delivery::Delivered { .. }) => {
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Delivery::Own | Delivery::Duplicate | Delivery::Closed) => {}
                        Err(error) => {
                            shared.invalid.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(channel, %error, "redis backplane: ignored a message");
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The topic's epoch, if it has one.
async fn epoch_of(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
) -> Result<Option<u64>, SessionError> {
    let epoch: Option<String> = redis::cmd("GET").arg(&keys.epoch).query_async(conn).await?;
    Ok(epoch.and_then(|epoch| epoch.parse().ok()))
}

/// What one read brought.
enum Read {
    Entries(Entries),
    /// Redis refused the read: one of the streams is not allowed.
    Refused,
}

/// Waits for new entries in the streams read (at most [`BLOCK`]); by stream key, each
/// entry's offset and envelope.
fn read(
    mut conn: MultiplexedConnection,
    streams: &Streams,
) -> impl std::future::Future<Output = Result<Read, SessionError>> {
    let (keys, ids): (Vec<String>, Vec<String>) = streams
        .read
        .iter()
        .map(|(channel, state)| (keys(channel).stream, format!("{}-0", state.offset)))
        .unzip();
    async move {
        if keys.is_empty() {
            tokio::time::sleep(BLOCK).await;
            return Ok(Read::Entries(Vec::new()));
        }
        let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&keys)
            .arg(&ids)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(reply) => Ok(Read::Entries(parse_read(reply))),
            Err(error) if is_refusal(&error) => Ok(Read::Refused),
            Err(error) => Err(error.into()),
        }
    }
}

/// The entries of an `XREAD` (or `XRANGE`) reply, in RESP2 or RESP3 form; what is not an
/// entry of ours is left out.
fn parse_read(reply: Value) -> Entries {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    Some((pair.next()?, pair.next()?))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .filter_map(|(key, entries)| Some((text(key)?, parse_entries(entries))))
        .collect()
}

/// `[[id, [field, value, ...]], ...]` as offsets and envelopes (the `d` field).
fn parse_entries(entries: Value) -> Vec<(u64, Bytes)> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(entry) = entry else {
                return None;
            };
            let mut entry = entry.into_iter();
            let id = text(entry.next()?)?;
            let offset = id.split_once('-')?.0.parse().ok()?;
            let fields = match entry.next()? {
                Value::Array(fields) => fields,
                Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => return None,
            };
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if text(name).as_deref() == Some("d") {
                    if let Value::BulkString(bytes) = value {
                        return Some((offset, Bytes::from(bytes)));
                    }
                }
            }
            None
        })
        .collect()
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Publishes the oldest queued messages, up to a batch, each with the script, in one
/// pipelined round trip; returns whether more are queued. Like the pub/sub mode's: a
/// failed connection puts the batch back, a refusal drops and counts the message. What is
/// published is remembered (bounded by the retention) in case Redis loses it.
async fn publish_batch(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    sha: &str,
) -> Result<bool, SessionError> {
    let batch = lock(&shared.pending).take(PUBLISH_BATCH);
    if batch.is_empty() {
        return Ok(false);
    }
    let retention = shared.config.retention;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (channel, envelope) in &batch {
        let keys = keys(channel);
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(3)
            .arg(&keys.stream)
            .arg(&keys.offset)
            .arg(&keys.epoch)
            .arg(envelope.as_ref())
            .arg(retention)
            .arg(new_epoch());
    }
    let results = match pipe
        .query_async::<Vec<redis::RedisResult<Value>>>(conn)
        .await
    {
        Ok(results) => results,
        Err(error) => {
            let dropped = {
                let mut pending = lock(&shared.pending);
                for item in batch.into_iter().rev() {
                    pending.push_front(item);
                }
                pending.trim(&shared.config)
            };
            shared.dropped(dropped);
            return Err(error.into());
        }
    };
    let mut published = 0;
    let mut results = batch.into_iter().zip(results);
    while let Some(((channel, envelope), result)) = results.next() {
        match result {
            Err(error) if error.code() == Some("NOSCRIPT") => {
                // The script was flushed (SCRIPT FLUSH): this and the rest go back to the
                // queue, and the next connection loads it again.
                let mut pending = lock(&shared.pending);
                let rest: Vec<_> = std::iter::once((channel, envelope))
                    .chain(results.map(|(item, _)| item))
                    .collect();
                for item in rest.into_iter().rev() {
                    pending.push_front(item);
                }
                drop(pending);
                shared.published.fetch_add(published, Ordering::Relaxed);
                return Err(error.into());
            }
            Ok(reply) => {
                published += 1;
                let epoch = epoch_in(&reply);
                lock(&shared.recent).remember(channel, envelope, epoch, retention);
            }
            Err(error) if is_refusal(&error) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    channel,
                    %error,
                    "redis backplane: Redis refused to publish; the message is dropped"
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    shared.published.fetch_add(published, Ordering::Relaxed);
    Ok(!lock(&shared.pending).items.is_empty())
}

/// The epoch in the script's answer `{epoch, offset}`.
fn epoch_in(reply: &Value) -> Option<u64> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.first()? {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::Int(epoch) => u64::try_from(*epoch).ok(),
        _ => None,
    }
}

/// Publishes again, ahead of the queue, what was published recently on topics whose epoch
/// is gone: Redis lost it, and some process may not have read it yet.
async fn republish_lost(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
) -> Result<(), SessionError> {
    let channels = lock(&shared.recent).channels();
    for (channel, epoch) in channels {
        let now = epoch_of(conn, &keys(&channel)).await?;
        if now.is_some() && now == Some(epoch) {
            continue;
        }
        let lost = lock(&shared.recent).take(&channel);
        if lost.is_empty() {
            continue;
        }
        shared.history_resets.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            channel,
            again = lost.len(),
            "redis backplane: Redis lost this topic's stream; publishing the recent messages \
             again (the other servers drop those they already have)"
        );
        let mut pending = lock(&shared.pending);
        for envelope in lost.into_iter().rev() {
            pending.push_front((channel.clone(), envelope));
        }
    }
    Ok(())
}

/// A random epoch for a topic that has none (decimal, as the script stores it).
fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish().max(1).to_string()
}

/// [`Backplane::missed`](crate::backplane::Backplane::missed) of the lossless mode: a page
/// of the stream's entries after `after`, about `max_bytes`, if `after` is of its epoch and
/// still kept. Read a few entries at a time, so that what one resume holds stays near
/// `max_bytes` whatever the size of the messages.
pub(super) fn missed(
    shared: &Arc<Shared>,
    channel: String,
    after: Position,
    max_bytes: usize,
) -> MissedEnvelopes {
    let conn = lock(&shared.connection).clone();
    let shared = shared.clone();
    Box::pin(async move {
        let Some(mut conn) = conn else {
            return Err(ResumeError::Unavailable);
        };
        let _turn = shared
            .history_reads
            .acquire()
            .await
            .map_err(|_| ResumeError::Unavailable)?;
        let keys = keys(&channel);
        let unavailable = |_| ResumeError::Unavailable;
        let epoch = epoch_of(&mut conn, &keys).await.map_err(unavailable)?;
        if epoch != Some(after.epoch()) {
            return Err(ResumeError::OtherEpoch {
                asked: after,
                current: epoch.unwrap_or(0),
            });
        }
        let last: Option<u64> = redis::cmd("GET")
            .arg(&keys.offset)
            .query_async(&mut conn)
            .await
            .map_err(|_| ResumeError::Unavailable)?;
        let last = last.unwrap_or(0);
        if after.offset() > last {
            return Err(ResumeError::OtherEpoch {
                asked: after,
                current: after.epoch(),
            });
        }
        let mut envelopes: Vec<(Position, Bytes)> = Vec::new();
        let mut bytes = 0;
        let mut through = after.offset();
        // Entries per read: a few at first, then as many as the page has room for at the
        // size seen so far.
        let mut count = 16;
        while through < last && (envelopes.is_empty() || bytes < max_bytes) {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&keys.stream)
                .arg(format!("{}-0", through + 1))
                .arg(format!("{last}-0"))
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await
                .map_err(|_| ResumeError::Unavailable)?;
            let entries = parse_entries(reply);
            // Offsets of an epoch are contiguous: a hole is what was trimmed.
            if entries
                .first()
                .is_none_or(|(first, _)| *first != through + 1)
            {
                return Err(ResumeError::TooOld {
                    asked: after,
                    oldest: entries
                        .first()
                        .map(|(offset, _)| Position::new(after.epoch(), *offset)),
                });
            }
            for (offset, envelope) in entries {
                bytes += envelope.len();
                through = offset;
                envelopes.push((Position::new(after.epoch(), offset), envelope));
            }
            let average = bytes / envelopes.len().max(1);
            count = (max_bytes.saturating_sub(bytes) / average.max(1)).clamp(1, 256);
        }
        Ok(MissedPage::new(
            envelopes,
            Position::new(after.epoch(), through),
            through >= last,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::{keys, parse_read};
    use redis::Value;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn xread_replies_in_both_protocols() {
        let entry = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![bulk("d"), bulk("env")]),
        ]);
        let resp3 = Value::Map(vec![(bulk("{t}"), Value::Array(vec![entry.clone()]))]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("{t}"),
            Value::Array(vec![entry]),
        ])]);
        for reply in [resp3, resp2] {
            let parsed = parse_read(reply);
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].0, "{t}");
            assert_eq!(parsed[0].1, [(7, bytes::Bytes::from_static(b"env"))]);
        }
        assert!(parse_read(Value::Nil).is_empty());
        let junk = Value::Array(vec![Value::Array(vec![bulk("{t}"), bulk("x")])]);
        assert!(parse_read(junk)[0].1.is_empty());
    }

    #[test]
    fn a_topics_keys_share_one_hash_tag() {
        let keys = keys("websocket-handler:chat");
        assert_eq!(keys.stream, "{websocket-handler:chat}");
        assert_eq!(keys.offset, "{websocket-handler:chat}:offset");
        assert_eq!(keys.epoch, "{websocket-handler:chat}:epoch");
    }
}

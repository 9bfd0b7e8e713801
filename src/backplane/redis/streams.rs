//! The lossless mode of the Redis backplane: each topic is a Redis stream.
//!
//! A topic's publications of one batch are one script run (atomic in Redis): it appends
//! each envelope under the topic's next offset with the topic's epoch (`XADD`), and to its
//! room's own stream, trims the streams to their retention in messages and in bytes, and
//! answers the epoch and the offsets. Every
//! process reads every stream it subscribes to from the last offset it delivered (`XREAD
//! BLOCK`, a bounded number of entries at a time) and delivers in offset order with the
//! position `(epoch, offset)`: its own publications included, so all processes deliver the
//! same messages in the same order.
//!
//! One position names one message for ever. A topic's epoch belongs to one run of the
//! Redis server (its `run_id`) and to keys that were never lost, so whatever makes Redis
//! forget or go back (a restart, from an older snapshot or none, a failover, `FLUSHDB`, an
//! eviction) gives the topic a new epoch the next time anyone touches it:
//! - its offsets start above every earlier epoch's (the server's clock in microseconds), so
//!   a reader waiting past the old offsets sees the new entries, and each entry names its
//!   epoch, so the reader knows them for what they are;
//! - readers notice (on every connect, in every entry, and when the counter is behind what
//!   they delivered), count it ([`RedisStats::history_resets`]), log it, and read the new
//!   epoch from its start; collections with a history tell their clients;
//! - a publisher whose publication finds a new epoch has it refused (`moved`), publishes
//!   again first what it published lately, then the rest: receivers drop what they had,
//!   by sender and sequence number.
//!
//! Transient refusals (`BUSY`, `LOADING`, `OOM`, ...) are retried with backoff, in order:
//! a batch's publications of a topic are one script run, which stops at the first one
//! refused, and that one and the later ones go back to the queue.
//!
//! [`RedisStats::history_resets`]: super::RedisStats::history_resets

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::Value;

use super::cluster::{self, Bells};
use super::conn::Conn;
use super::servers::Target;
use super::{classify, Failure, SessionError, Shared, FINAL_FLUSH, PUBLISH_BATCH};
use crate::backplane::{envelope, lock, BackplaneState, Delivery, MissedPage};
use crate::fanout::history::{Position, ResumeError};

/// What both scripts share, as Lua functions; KEYS as [`Keys::all`] (then, for a room,
/// [`RoomKeys`]). Every number written is formatted with `%d` (Lua's own conversion would
/// write offsets, which are microseconds, in exponent form).
/// - `epoch_for(run, new, stale, foreign)`: the topic's epoch and counters, in one `MGET`:
///   started over (with `new`, and offsets from the server's clock in microseconds, above
///   every earlier epoch's) when it has none valid for this Redis run (`run`; `''`: asked
///   with `INFO`, in a cluster, where the node that runs the script is the slot's primary,
///   whichever it is), or it is `stale` (a reader saw its counter go back). Keys written
///   under another run are `foreign`: `''` or `'!'` starts over; `'?'` answers
///   `{foreign = run}` (the caller finds out whether that run handed them over, see
///   `cluster::handed_over`); a run id keeps the epoch if they were written under that run,
///   and makes them this run's.
/// - `slack(keep)`: how far past `keep` entries a stream may grow before it is trimmed back
///   to `keep` (1/16 of it, 1 to 100): trimmed in batches, as `MAXLEN ~` would.
/// - `trim(stream, len, bytes, keep, keep_bytes)`: removes the oldest entries of a stream of
///   `len` entries holding `bytes` of data until at most `keep` are left and, if `bytes` is
///   over `keep_bytes`, until at most `keep_bytes - keep_bytes / 64` are (never more than
///   `keep_bytes`, trimmed again only after 1/64 of it more); the newest always stays. Reads
///   the sizes of what goes (`XRANGE`), then removes it at once (`XTRIM MAXLEN`, exact).
///   Answers what is left, in entries and bytes, and the last id removed (`false`: none).
const FUNCTIONS: &str = r#"
local function epoch_for(run, new, stale, foreign)
  if run == '' then
    run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
  end
  local kept = redis.call('MGET', KEYS[3], KEYS[4], KEYS[2], KEYS[5], KEYS[6])
  local epoch = kept[1]
  if epoch and epoch ~= stale and kept[3] then
    local valid = kept[2] == run
    if not valid and kept[2] and foreign ~= '' and foreign ~= '!' then
      if foreign ~= kept[2] then return {foreign = kept[2]} end
      redis.call('SET', KEYS[4], run)
      valid = true
    end
    if valid then
      return {epoch = epoch, offset = kept[3], bytes = tonumber(kept[4]) or 0,
        base = kept[5] or '0'}
    end
  end
  local now = redis.call('TIME')
  local base = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('DEL', KEYS[1], KEYS[5])
  redis.call('MSET', KEYS[2], base, KEYS[6], base, KEYS[3], new, KEYS[4], run)
  return {epoch = new, offset = base, bytes = 0, base = base}
end

local function slack(keep)
  return math.max(1, math.min(100, math.floor(keep / 16)))
end

local function trim(stream, len, bytes, keep, keep_bytes)
  local target = keep_bytes
  if bytes > keep_bytes then target = keep_bytes - math.floor(keep_bytes / 64) end
  local removed, last, from = 0, false, '-'
  while len - removed > 1 and (len - removed > keep or bytes > target) do
    local left = len - removed
    local want = left - keep
    if bytes > target then
      want = math.max(want, math.ceil((bytes - target) * left / bytes))
    end
    want = math.min(math.max(want, 1), left - 1, 1024)
    local page = redis.call('XRANGE', stream, from, '+', 'COUNT', want)
    if #page == 0 then break end
    for _, entry in ipairs(page) do
      if not (len - removed > 1 and (len - removed > keep or bytes > target)) then break end
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then bytes = bytes - #fields[i + 1] end
      end
      removed = removed + 1
      last = entry[1]
    end
    local ms, seq = string.match(last or '', '^(%d+)%-(%d+)$')
    if not ms then break end
    from = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
  end
  if removed > 0 then redis.call('XTRIM', stream, 'MAXLEN', len - removed) end
  return len - removed, bytes, last
end
"#;

/// Publishes a topic's envelopes of one batch, in order, in one run. KEYS: the topic's
/// ([`Keys::all`]), then two per room of the batch ([`RoomKeys`]: its stream and its
/// counters). ARGV: 1 messages kept, 2 bytes kept, 3 run id, 4 a new epoch, 5 the epoch the
/// publisher expects ('' for any), 6 a room's messages kept, 7 its bytes kept, 8 how long
/// it is kept after its last message, in milliseconds, 9 what to do with keys of another
/// run (`foreign` in `epoch_for`), 10 the topic's bell ('' for none: one server); then for
/// each envelope, the envelope and its room (the room's number in KEYS, from 1; 0 for none).
///
/// Answers `{'moved', epoch}` (another epoch than expected: nothing published), `{'foreign',
/// run}` (keys of another run, nothing published), or
/// `{epoch, offset, published, error, [n, room error]...}`: the first `published`
/// envelopes went in at the offsets after `offset`; if fewer than all, the next one was
/// refused with `error` (the later ones were not tried). A room whose own history refused
/// an envelope that the topic took names it (its number, from 1) and the error.
///
/// The bell, if any, is rung with the last offset (`SPUBLISH`; a bell refused is left out: the
/// readers' sweep finds the messages).
///
/// Redis calls of a batch: `INFO` in a cluster, `MGET` (the topic's epoch and counters), an
/// `XADD` per envelope
/// (the first one is the first write: a batch that Redis refuses for memory is refused
/// whole), `MSET` of the counters, the bell; per room of the batch, `HMGET` (its epoch and counters;
/// `EXISTS` for a new one), an `XADD` per envelope, `HSET` and `PEXPIRE` of its two keys.
/// Trimming (`XLEN`, `XRANGE`, `XTRIM`) runs when a stream may be `slack` entries past its
/// bound, or its bytes are past theirs (which are then trimmed 1/64 below).
fn publish_script() -> String {
    format!(
        r#"{FUNCTIONS}
local function error_text(e)
  if type(e) == 'table' then e = e.err end
  return tostring(e)
end

-- A room's own history, of one epoch only, forgotten when the room goes quiet; its
-- counters (a hash): e its epoch, b its bytes, n its entries, f the last id trimmed (a
-- resume from before it is too old).
local function room_open(n, epoch, offset)
  local stream, meta = KEYS[5 + 2 * n], KEYS[6 + 2 * n]
  local kept = redis.call('HMGET', meta, 'e', 'b', 'n')
  local room = {{stream = stream, meta = meta, bytes = tonumber(kept[2]) or 0,
    len = tonumber(kept[3]) or 0, floor = false}}
  if kept[1] ~= epoch then
    if kept[1] then
      redis.call('DEL', stream, meta)
    elseif redis.call('EXISTS', stream) == 1 then
      -- A stream without its counters (they were lost): it starts over, and nothing
      -- before this message can be resumed from it.
      redis.call('DEL', stream)
      room.floor = string.format('%d-0', offset - 1)
    end
    room.bytes, room.len = 0, 0
  end
  return room
end

local function room_add(rooms, n, epoch, offset, id, data)
  local room = rooms[n]
  if not room then
    room = room_open(n, epoch, offset)
    rooms[n] = room
  end
  redis.call('XADD', room.stream, id, 'e', epoch, 'd', data)
  room.len, room.bytes = room.len + 1, room.bytes + #data
end

local function room_close(room, epoch)
  local keep, keep_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
  if room.len > keep + slack(keep) or room.bytes > keep_bytes then
    local trimmed
    room.len, room.bytes, trimmed = trim(room.stream, redis.call('XLEN', room.stream),
      room.bytes, keep, keep_bytes)
    room.floor = trimmed or room.floor
  end
  local counters = {{'e', epoch, 'b', string.format('%d', room.bytes), 'n',
    string.format('%d', room.len)}}
  if room.floor then
    counters[7], counters[8] = 'f', room.floor
  end
  redis.call('HSET', room.meta, unpack(counters))
  redis.call('PEXPIRE', room.stream, ARGV[8])
  redis.call('PEXPIRE', room.meta, ARGV[8])
end

local topic = epoch_for(ARGV[3], ARGV[4], '', ARGV[9])
if topic.foreign then return {{'foreign', topic.foreign}} end
local epoch = topic.epoch
if ARGV[5] ~= '' and ARGV[5] ~= epoch then return {{'moved', epoch}} end
local count = (#ARGV - 10) / 2
local first = tonumber(topic.offset)
local bytes, published, failed = topic.bytes, 0, ''
local rooms, last_of, refused = {{}}, {{}}, {{}}
for i = 1, count do
  local data, n = ARGV[9 + 2 * i], tonumber(ARGV[10 + 2 * i])
  local id = string.format('%d-0', first + i)
  local ok, e = pcall(redis.call, 'XADD', KEYS[1], id, 'e', epoch, 'd', data)
  if not ok then
    failed = error_text(e)
    break
  end
  published, bytes = i, bytes + #data
  if n > 0 then
    ok, e = pcall(room_add, rooms, n, epoch, first + i, id, data)
    last_of[n] = i
    if not ok then
      refused[#refused + 1] = i
      refused[#refused + 1] = error_text(e)
    end
  end
end
if published == 0 then
  -- Nothing written (the first XADD is the first write: refused whole when Redis is out
  -- of memory).
  return {{epoch, first, 0, failed}}
end
local keep, keep_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local every, last = slack(keep), first + published
-- The count is looked at each time the offsets pass a multiple of the slack.
if math.floor(last / every) > math.floor(first / every) or bytes > keep_bytes then
  local _
  _, bytes = trim(KEYS[1], redis.call('XLEN', KEYS[1]), bytes, keep, keep_bytes)
end
redis.call('MSET', KEYS[2], string.format('%d', last), KEYS[5], string.format('%d', bytes))
for n, room in pairs(rooms) do
  local ok, e = pcall(room_close, room, epoch)
  if not ok then
    refused[#refused + 1] = last_of[n]
    refused[#refused + 1] = error_text(e)
  end
end
if ARGV[10] ~= '' then
  pcall(redis.call, 'SPUBLISH', ARGV[10], string.format('%d', last))
end
return {{epoch, first, published, failed, unpack(refused)}}
"#
    )
}

/// Makes sure a topic has an epoch valid for this run. ARGV: 1 run id, 2 a new epoch, 3 an
/// epoch to replace ('' for none), 4 what to do with keys of another run (`foreign` in
/// `epoch_for`). Answers `{epoch, counter, base}`: the last offset given out, and the one
/// the epoch started after; or `{'foreign', run}`.
fn ensure_script() -> String {
    format!(
        "{FUNCTIONS}
local topic = epoch_for(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if topic.foreign then return {{'foreign', topic.foreign}} end
return {{topic.epoch, topic.offset, topic.base}}
"
    )
}

/// Entries read at most per `XREAD`, over all streams (each stream gets its share, at
/// least one): what Redis hands over at once stays bounded whatever the number of topics.
const READ_TOTAL: usize = 1024;

/// Entries handed over between two yields of the reader: a backlog (a server catching up
/// after an outage or a stall) reaches the connections' queues no faster than their
/// writers can run, so clients that read are not closed as slow consumers because a
/// backlog came at once.
const DELIVERIES_PER_YIELD: usize = 16;

/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);

/// The Redis keys of a topic's channel name: one hash tag, so all live on one node of a
/// cluster.
pub(super) struct Keys {
    pub(super) stream: String,
    pub(super) offset: String,
    pub(super) epoch: String,
    /// The Redis run the epoch belongs to.
    run: String,
    /// The payload bytes the stream holds.
    bytes: String,
    /// The offset the epoch started after.
    base: String,
}

/// The Redis keys of one room's own history on a topic: in the topic's hash slot. The
/// room's name ends each, after a prefix of its own, so that no room's keys are another's.
pub(super) struct RoomKeys {
    stream: Vec<u8>,
    /// Its counters, a hash: `e` the epoch of its entries, `b` their bytes, `n` how many,
    /// `f` the last id trimmed from it (a resume from below it is too old).
    meta: Vec<u8>,
}

/// `room` (its name's bytes) on `channel`; `None` for the keys passed when there is none.
fn room_keys(channel: &str, room: Option<&[u8]>) -> RoomKeys {
    let key = |kind: &str| {
        [
            format!("{{{channel}}}:{kind}:").as_bytes(),
            room.unwrap_or_default(),
        ]
        .concat()
    };
    RoomKeys {
        stream: key("r"),
        meta: key("m"),
    }
}

pub(super) fn keys(channel: &str) -> Keys {
    let stream = format!("{{{channel}}}");
    Keys {
        offset: format!("{stream}:offset"),
        epoch: format!("{stream}:epoch"),
        run: format!("{stream}:run"),
        bytes: format!("{stream}:bytes"),
        base: format!("{stream}:base"),
        stream,
    }
}

impl Keys {
    /// The `KEYS` of the scripts, in their order.
    fn all(&self) -> [&str; 6] {
        [
            &self.stream,
            &self.offset,
            &self.epoch,
            &self.run,
            &self.bytes,
            &self.base,
        ]
    }
}

/// One stream entry: its offset, the epoch it was written in (if it says), the envelope.
type Entry = (u64, Option<u64>, Bytes);

/// What a read brings: by stream key, its entries.
type Entries = Vec<(String, Vec<Entry>)>;

/// Where reading stands in each stream, by channel name, kept across connections.
#[derive(Default)]
pub(super) struct Streams {
    read: HashMap<String, ReadState>,
    /// Streams Redis refused to let us read (an ACL): left out of every read, so that they
    /// do not take the others with them, until the subscriptions change. Where they stood
    /// is kept.
    refused: HashSet<String>,
}

struct ReadState {
    /// The last offset delivered, or the one the epoch started after.
    offset: u64,
    /// The epoch of that offset.
    epoch: u64,
}

/// What this connection's scripts and server are.
struct Session {
    publish: String,
    ensure: String,
    /// The server's run id; empty in a cluster, where each script asks its node's.
    run_id: String,
    /// In a cluster: how to reach one node directly (its credentials and database), to ask
    /// a primary whether it handed a topic over.
    node: Option<redis::ConnectionInfo>,
    /// After a transient refusal: no publishing before this.
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
    response_timeout: Duration,
}

impl Session {
    /// What the scripts do with a topic's keys written under another run: on one server,
    /// start a new epoch (a restart); in a cluster, say so (a migration or a failover).
    fn foreign(&self) -> &'static str {
        if self.node.is_some() {
            "?"
        } else {
            ""
        }
    }
}

/// How a session waits for new entries.
enum Reader {
    /// One server: a connection of its own, blocked in `XREAD` over every topic at once
    /// (`CLIENT UNBLOCK`ed, by its id, when the topics change).
    Blocking { conn: Conn, id: i64 },
    /// A cluster: one connection per primary (the cluster client's), subscribed to the bells
    /// of the topics read; topics are read when rung, and a few in turn every [`BLOCK`]
    /// (see [`SWEEP`]).
    Bells {
        conn: Conn,
        bells: Arc<Bells>,
        /// The channels whose bell this connection is subscribed to.
        subscribed: HashSet<String>,
        /// Channels whose bell subscription is to be made to match whether they are read
        /// (every one when the session starts, then those whose collections changed): the
        /// work of a change is proportional to it.
        reconsider: HashSet<String>,
        /// The channels still to read in the current sweep.
        sweep: Vec<String>,
        /// When the next sweep is due.
        next_sweep: tokio::time::Instant,
    },
}

/// In a cluster, topics read every [`BLOCK`] whether or not their bell rang, in turn: what
/// a lost bell (a subscription being moved, a node reconnecting) held back arrives within
/// `topics / SWEEP` seconds.
const SWEEP: usize = 256;

/// In a cluster, `XREAD`s (one per slot) in one read at most; the rest waits for the next.
const READS: usize = 64;

/// One connection's life in lossless mode: `Ok` once stopped, or why it was lost.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    target: &Target,
    connected: &mut bool,
    streams: &mut Streams,
) -> Result<(), SessionError> {
    let config = &shared.config;
    let mut publisher = Conn::open(target, config, config.response_timeout, None).await?;
    let mut reader = match target {
        Target::One(_) => {
            // The reader blocks in XREAD: a connection of its own, allowed to wait that long.
            let mut conn =
                Conn::open(target, config, config.response_timeout + BLOCK, None).await?;
            let id: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut conn)
                .await?;
            Reader::Blocking { conn, id }
        }
        Target::Cluster(_) => {
            let bells = Arc::new(Bells::default());
            let pushes: super::conn::Pushes = {
                let bells = bells.clone();
                Arc::new(move |push| bells.on_push(push))
            };
            let conn = Conn::open(target, config, config.response_timeout, Some(pushes)).await?;
            Reader::Bells {
                conn,
                bells,
                subscribed: HashSet::new(),
                reconsider: HashSet::new(),
                sweep: Vec::new(),
                next_sweep: tokio::time::Instant::now() + BLOCK,
            }
        }
    };
    let (run_id, node) = match target {
        Target::One(_) => (run_id(&mut publisher).await?, None),
        Target::Cluster(nodes) => (String::new(), nodes.first().cloned()),
    };
    let mut session = Session {
        publish: load(&mut publisher, &publish_script()).await?,
        ensure: load(&mut publisher, &ensure_script()).await?,
        run_id,
        node,
        retry_at: None,
        backoff: config.reconnect_min,
        response_timeout: config.response_timeout,
    };
    let result = async {
        lock(&shared.changed).clear();
        shared.subscriptions_changed.store(false, Ordering::Release);
        // Every topic, on every connect: Redis may have lost or rewound any of them.
        let mut all: HashSet<String> = lock(&shared.inboxes).keys().cloned().collect();
        all.extend(streams.read.keys().cloned());
        let all = all.into_iter().collect();
        streams.refused.clear();
        streams.sync(shared, &mut publisher, &session, all).await?;
        // For resumes, once every topic's epoch is known valid for this run.
        *lock(&shared.connection) = Some(publisher.clone());
        reader.reconsider(streams.read.keys().cloned());
        while publish_batch(shared, &mut publisher, &mut session).await? {}
        *connected = true;
        shared.drop_reported.store(false, Ordering::Relaxed);
        shared.state.send_replace(BackplaneState::Connected);
        tracing::info!(redis = %config.target(), "redis backplane (lossless): connected");
        loop {
            reader.follow(shared, streams).await?;
            let read = reader.wait(streams);
            tokio::pin!(read);
            let read = loop {
                if shared.subscriptions_changed.swap(false, Ordering::AcqRel) {
                    let changed: Vec<String> = lock(&shared.changed).drain().collect();
                    for channel in &changed {
                        streams.refused.remove(channel);
                    }
                    // A topic was added: where it stands is read before anything more is
                    // published to it (same connection, in order), so none of its messages
                    // is skipped. The read in progress is cut short to take it in.
                    reader.reconsider(changed.iter().cloned());
                    streams
                        .sync(shared, &mut publisher, &session, changed)
                        .await?;
                    reader.interrupt(&mut publisher).await?;
                    break (&mut read).await?;
                }
                let waiting = session
                    .retry_at
                    .is_some_and(|at| at > tokio::time::Instant::now());
                let more = !waiting && publish_batch(shared, &mut publisher, &mut session).await?;
                if shared.stopped.load(Ordering::Acquire) {
                    let flush = async {
                        while publish_batch(shared, &mut publisher, &mut session).await? {
                            if let Some(at) = session.retry_at {
                                tokio::time::sleep_until(at).await;
                            }
                        }
                        Ok(())
                    };
                    return match tokio::time::timeout(FINAL_FLUSH, flush).await {
                        Ok(result) => result,
                        Err(_) => Ok(()),
                    };
                }
                if more && session.retry_at.is_none() {
                    // Between batches, anything already read is delivered.
                    if let Some(read) = futures_util::FutureExt::now_or_never(&mut read) {
                        break read?;
                    }
                    continue;
                }
                let retry = session.retry_at;
                tokio::select! {
                    read = &mut read => break read?,
                    () = shared.work.notified() => {}
                    () = sleep_until(retry) => {}
                }
            };
            let read = match read {
                Some(read) => read,
                // Woken (in a cluster): read what rang.
                None => reader.fetch(streams).await?,
            };
            if !read.entries.is_empty() {
                streams
                    .deliver(shared, &mut publisher, &session, read.entries)
                    .await?;
            }
            if read.refused {
                streams.find_refused(shared, &mut publisher).await?;
            }
            if let Some(error) = read.busy {
                // Redis answers, but cannot serve reads now: wait, and read again from
                // where we were.
                tracing::warn!(%error, "redis backplane: Redis cannot serve reads now; retrying");
                tokio::time::sleep(session.next_backoff(config)).await;
            }
        }
    }
    .await;
    *lock(&shared.connection) = None;
    result
}

impl Reader {
    /// In a cluster, `channels` are to have their bell subscription made to match whether
    /// they are read (at the next [`follow`](Self::follow)).
    fn reconsider(&mut self, channels: impl Iterator<Item = String>) {
        if let Reader::Bells { reconsider, .. } = self {
            reconsider.extend(channels);
        }
    }

    /// In a cluster, makes the bell subscriptions of the channels to reconsider, and of
    /// those the cluster ended (their slot moved), match the topics read: subscribes to new
    /// ones, one command each (they may be in as many slots), and ends those of topics no
    /// longer read.
    async fn follow(&mut self, shared: &Shared, streams: &mut Streams) -> Result<(), SessionError> {
        let Reader::Bells {
            conn,
            bells,
            subscribed,
            reconsider,
            ..
        } = self
        else {
            return Ok(());
        };
        for channel in bells.take_ended() {
            subscribed.remove(&channel);
            reconsider.insert(channel);
        }
        if reconsider.is_empty() {
            return Ok(());
        }
        let (mut gone, mut new) = (Vec::new(), Vec::new());
        for channel in reconsider.drain() {
            let wanted = streams.read.contains_key(&channel) && !streams.refused.contains(&channel);
            match (wanted, subscribed.contains(&channel)) {
                (true, false) => new.push(channel),
                (false, true) => gone.push(channel),
                _ => {}
            }
        }
        if !gone.is_empty() {
            let bells_gone: Vec<String> =
                gone.iter().map(|channel| cluster::bell(channel)).collect();
            conn.unsubscribe(&bells_gone).await?;
            for channel in &gone {
                subscribed.remove(channel);
            }
        }
        // Through the cluster client's own call (it keeps the subscription across
        // reconnects), a few at once.
        let mut subscribing = futures_util::stream::iter(new)
            .map(|channel| {
                let mut conn = conn.clone();
                async move {
                    let result = conn.subscribe(&cluster::bell(&channel)).await;
                    (channel, result)
                }
            })
            .buffer_unordered(super::conn::IN_FLIGHT);
        while let Some((channel, result)) = subscribing.next().await {
            match result {
                Ok(()) => {
                    subscribed.insert(channel);
                }
                Err(error) if classify(&error) == Failure::Permanent => {
                    streams.refuse(shared, channel, &error);
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Waits for new entries: on one server, reads them (`Some`, within [`BLOCK`]); in a
    /// cluster, waits until a bell rings or a sweep is due (`None`: [`fetch`](Self::fetch)
    /// reads then).
    fn wait(
        &self,
        streams: &Streams,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<Read>, SessionError>> + Send>,
    > {
        match self {
            Reader::Blocking { conn, .. } => {
                let read = read(conn.clone(), streams);
                Box::pin(async move { read.await.map(Some) })
            }
            Reader::Bells {
                bells, next_sweep, ..
            } => {
                let (bells, until) = (bells.clone(), *next_sweep);
                Box::pin(async move {
                    bells.wait(until).await.map_err(|_| SessionError::Closed)?;
                    Ok(None)
                })
            }
        }
    }

    /// Cuts a wait short: the topics read changed.
    async fn interrupt(&mut self, publisher: &mut Conn) -> Result<(), SessionError> {
        match self {
            Reader::Blocking { id, .. } => unblock(publisher, *id).await,
            Reader::Bells { bells, .. } => {
                bells.interrupt();
                Ok(())
            }
        }
    }

    /// In a cluster: reads the topics whose bell rang past where they stand, and, when a
    /// sweep is due, the next [`SWEEP`] topics in turn. One `XREAD` per slot (never a
    /// command across slots), at most [`READS`] of them and [`READ_TOTAL`] entries in all;
    /// what is left, and topics that may hold more, are read next time.
    async fn fetch(&mut self, streams: &Streams) -> Result<Read, SessionError> {
        let Reader::Bells {
            conn,
            bells,
            sweep,
            next_sweep,
            ..
        } = self
        else {
            return Ok(Read::default());
        };
        let readable = |channel: &str| {
            (!streams.refused.contains(channel))
                .then(|| streams.read.get(channel))
                .flatten()
        };
        let mut wanted: Vec<String> = bells
            .take_rung()
            .into_iter()
            .filter(|(channel, rung)| readable(channel).is_some_and(|state| *rung > state.offset))
            .map(|(channel, _)| channel)
            .collect();
        if tokio::time::Instant::now() >= *next_sweep {
            *next_sweep = tokio::time::Instant::now() + BLOCK;
            if sweep.is_empty() {
                sweep.extend(streams.read.keys().cloned());
            }
            let from = sweep.len().saturating_sub(SWEEP);
            let turn: HashSet<&String> = wanted.iter().collect();
            let turn: Vec<String> = sweep[from..]
                .iter()
                .filter(|channel| !turn.contains(channel))
                .cloned()
                .collect();
            sweep.truncate(from);
            wanted.extend(turn);
        }
        // By slot, in a stable order.
        let mut by_slot: std::collections::BTreeMap<u16, Vec<(String, u64)>> = Default::default();
        for channel in wanted {
            if let Some(state) = readable(&channel) {
                let stream = keys(&channel).stream;
                by_slot
                    .entry(super::conn::slot(stream.as_bytes()))
                    .or_default()
                    .push((channel, state.offset));
            }
        }
        let mut groups: Vec<Vec<(String, u64)>> = by_slot.into_values().collect();
        for left in groups.split_off(groups.len().min(READS)) {
            for (channel, _) in left {
                bells.ring_anyway(channel);
            }
        }
        let streams_read: usize = groups.iter().map(Vec::len).sum();
        let count = (READ_TOTAL / streams_read.max(1)).max(1);
        let commands = groups
            .iter()
            .map(|group| {
                let mut command = redis::cmd("XREAD");
                command.arg("COUNT").arg(count).arg("STREAMS");
                for (channel, _) in group {
                    command.arg(keys(channel).stream);
                }
                for (_, offset) in group {
                    command.arg(format!("{offset}-0"));
                }
                command
            })
            .collect();
        let mut read = Read::default();
        for (group, result) in groups.into_iter().zip(conn.run_each(commands).await?) {
            match result {
                Ok(reply) => {
                    for (stream, entries) in parse_read(reply) {
                        if entries.len() >= count {
                            // There may be more: read on next time.
                            if let Some(channel) = channel_of(&stream) {
                                bells.ring_anyway(channel.to_owned());
                            }
                        }
                        read.entries.push((stream, entries));
                    }
                }
                Err(error) => match classify(&error) {
                    Failure::Permanent => read.refused = true,
                    Failure::Transient => {
                        for (channel, _) in group {
                            bells.ring_anyway(channel);
                        }
                        read.busy = Some(error);
                    }
                    Failure::Reconnect => return Err(error.into()),
                },
            }
        }
        if !read.entries.is_empty() {
            // Something was read: the backoff is for reads that bring nothing.
            read.busy = None;
        }
        Ok(read)
    }
}

/// The channel of a topic's stream key, `{channel}`.
fn channel_of(stream: &str) -> Option<&str> {
    stream.strip_prefix('{')?.strip_suffix('}')
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// The wait before the next retry after a transient refusal: doubling up to the
    /// reconnect backoff's maximum.
    fn next_backoff(&mut self, config: &super::RedisConfig) -> Duration {
        let wait = super::jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(config.reconnect_max);
        wait
    }
}

/// Loads `script` (in a cluster, on every node: `EVALSHA` may go to any of them).
async fn load(conn: &mut Conn, script: &str) -> Result<String, SessionError> {
    Ok(redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(conn)
        .await?)
}

/// The server's `run_id`: new every time Redis starts.
async fn run_id(conn: &mut Conn) -> Result<String, SessionError> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let run_id = info
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned());
    // A server that does not say (a proxy) counts as one run for this connection.
    Ok(run_id.unwrap_or_default())
}

/// Ends the reader's `XREAD` now (it answers as if it timed out). Where `CLIENT UNBLOCK`
/// is not allowed (an ACL), the read ends by itself within [`BLOCK`].
async fn unblock(conn: &mut Conn, reader: i64) -> Result<(), SessionError> {
    let unblocked: redis::RedisResult<i64> = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(reader)
        .query_async(conn)
        .await;
    match unblocked {
        Err(error) if classify(&error) != Failure::Reconnect => Ok(()),
        Err(error) => Err(error.into()),
        Ok(_) => Ok(()),
    }
}

/// What [`ensure_script`] answers: the epoch, the last offset given out, and the offset
/// the epoch started after.
struct Ensured {
    epoch: u64,
    counter: u64,
    base: u64,
}

impl Streams {
    /// Makes the streams read match the inboxes for `channels`: a channel without live
    /// inboxes is no longer read; a new one is read from its end as it is now (like a
    /// subscription, it gets what is published from now on); one whose epoch changed while
    /// we were away (Redis lost or rewound it) is read again from the start of its new
    /// epoch. One pipelined round trip, whatever the number of channels.
    async fn sync(
        &mut self,
        shared: &Shared,
        conn: &mut Conn,
        session: &Session,
        channels: Vec<String>,
    ) -> Result<(), SessionError> {
        let mut wanted = Vec::new();
        {
            let mut inboxes = lock(&shared.inboxes);
            for channel in channels {
                let live = inboxes.get_mut(&channel).is_some_and(|list| {
                    list.retain(|inbox| !inbox.is_closed());
                    !list.is_empty()
                });
                if live {
                    wanted.push(channel);
                } else {
                    inboxes.remove(&channel);
                    self.read.remove(&channel);
                    self.refused.remove(&channel);
                    lock(&shared.recent).forget(&channel);
                }
            }
        }
        let replies = ensure_all(conn, session, &wanted, None).await?;
        for (channel, reply) in wanted.into_iter().zip(replies) {
            let ensured = match reply {
                Ok(ensured) => ensured,
                Err(error) => match classify(&error) {
                    Failure::Permanent => {
                        self.refuse(shared, channel, &error);
                        continue;
                    }
                    _ => return Err(error.into()),
                },
            };
            self.take_in(shared, conn, session, channel, ensured)
                .await?;
        }
        Ok(())
    }

    /// Starts or goes on reading `channel` as Redis has it now.
    async fn take_in(
        &mut self,
        shared: &Shared,
        conn: &mut Conn,
        session: &Session,
        channel: String,
        mut ensured: Ensured,
    ) -> Result<(), SessionError> {
        requeue_if_lost(shared, &channel, ensured.epoch);
        match self.read.get_mut(&channel) {
            None => {
                self.read.insert(
                    channel,
                    ReadState {
                        offset: ensured.counter,
                        epoch: ensured.epoch,
                    },
                );
            }
            Some(state) if state.epoch == ensured.epoch && ensured.counter >= state.offset => {}
            Some(state) => {
                if state.epoch == ensured.epoch {
                    // The counter went back under the same epoch: the same positions would
                    // name other messages. A new epoch, for everyone.
                    let stale = Some(ensured.epoch);
                    let mut again =
                        ensure_all(conn, session, std::slice::from_ref(&channel), stale).await?;
                    ensured = match again.pop() {
                        Some(Ok(ensured)) => ensured,
                        Some(Err(error)) => return Err(error.into()),
                        None => return Err(SessionError::Closed),
                    };
                    requeue_if_lost(shared, &channel, ensured.epoch);
                }
                shared.history_resets.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    channel,
                    delivered = %Position::new(state.epoch, state.offset),
                    epoch = ensured.epoch,
                    "redis backplane: Redis lost or rewound this topic's stream (a restart, a \
                     failover, a flush or an eviction); reading its new epoch from the start"
                );
                *state = ReadState {
                    offset: ensured.base,
                    epoch: ensured.epoch,
                };
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
        self.refused.insert(channel);
    }

    /// A read was refused as a whole: finds the streams Redis refuses, one by one, and
    /// leaves them out.
    async fn find_refused(&mut self, shared: &Shared, conn: &mut Conn) -> Result<(), SessionError> {
        let channels: Vec<String> = self
            .read
            .keys()
            .filter(|channel| !self.refused.contains(*channel))
            .cloned()
            .collect();
        for channel in channels {
            let probe: redis::RedisResult<u64> = redis::cmd("XLEN")
                .arg(keys(&channel).stream)
                .query_async(conn)
                .await;
            match probe {
                Err(error) if classify(&error) == Failure::Permanent => {
                    self.refuse(shared, channel, &error)
                }
                Err(error) => return Err(error.into()),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Delivers what a read brought, in offset order, with its position. An entry of
    /// another epoch than the one read means Redis lost or rewound the stream meanwhile:
    /// the channel is taken in again (from the start of its new epoch) and its entries are
    /// read again.
    async fn deliver(
        &mut self,
        shared: &Shared,
        conn: &mut Conn,
        session: &Session,
        entries: Entries,
    ) -> Result<(), SessionError> {
        let mut delivered = 0usize;
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
            let inboxes = {
                let mut all = lock(&shared.inboxes);
                let Some(inboxes) = all.get_mut(channel) else {
                    continue;
                };
                inboxes.retain(|inbox| !inbox.is_closed());
                inboxes.clone()
            };
            let mut other_epoch = None;
            for (offset, epoch, envelope) in list {
                if epoch.is_some_and(|epoch| epoch != state.epoch) {
                    other_epoch = Some(offset);
                    break;
                }
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
                delivered += 1;
                if delivered.is_multiple_of(DELIVERIES_PER_YIELD) {
                    tokio::task::yield_now().await;
                }
                let position = Position::new(state.epoch, offset);
                for inbox in &inboxes {
                    match deliver_guarded(inbox, &envelope, position) {
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
            if let Some(at) = other_epoch {
                let channel = channel.to_owned();
                let mut ensured =
                    ensure_all(conn, session, std::slice::from_ref(&channel), None).await?;
                let ensured = match ensured.pop() {
                    Some(Ok(ensured)) => ensured,
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(SessionError::Closed),
                };
                let still = (ensured.epoch == state.epoch).then_some(state);
                if let Some(state) = still {
                    // The topic is where we thought: that entry is not ours (written by
                    // something else), and is passed over rather than read for ever.
                    shared.invalid.fetch_add(1, Ordering::Relaxed);
                    state.offset = state.offset.max(at);
                    continue;
                }
                self.take_in(shared, conn, session, channel, ensured)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Hands an envelope to an inbox; a panic in what that runs (the application's tag
/// function, say) is caught and reported, so that it cannot stop the backplane's task.
fn deliver_guarded(
    inbox: &crate::backplane::Inbox,
    envelope: &Bytes,
    position: Position,
) -> Result<Delivery, crate::backplane::EnvelopeError> {
    let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        inbox.deliver_at(envelope.clone(), position)
    }));
    delivered.unwrap_or_else(|_| {
        tracing::error!(%position, "redis backplane: delivering a message panicked; it was skipped");
        Ok(Delivery::Closed)
    })
}

/// Runs [`ensure_script`] for each channel, in one round trip (one pipeline on one server,
/// commands at once in a cluster); `stale`: an epoch to replace.
///
/// In a cluster, a topic whose keys another Redis run wrote (they came by a slot migration
/// or a failover) keeps its epoch if that run handed them over ([`cluster::handed_over`]),
/// and starts a new one otherwise.
async fn ensure_all(
    conn: &mut Conn,
    session: &Session,
    channels: &[String],
    stale: Option<u64>,
) -> Result<Vec<redis::RedisResult<Ensured>>, SessionError> {
    let stale = stale.map(|epoch| epoch.to_string()).unwrap_or_default();
    let asked: Vec<(&str, String)> = channels
        .iter()
        .map(|channel| (channel.as_str(), session.foreign().to_owned()))
        .collect();
    let mut replies = ensure_with(conn, session, &asked, &stale).await?;
    // Twice at most: a run found to have handed the keys over may have been replaced by
    // another meanwhile (a second move); then a new epoch.
    for round in 0..2 {
        let foreign: Vec<(usize, String)> = replies
            .iter()
            .enumerate()
            .filter_map(|(i, reply)| match reply {
                Ok(Ensure::Foreign(run)) => Some((i, run.clone())),
                _ => None,
            })
            .collect();
        if foreign.is_empty() {
            break;
        }
        let proven = match (&session.node, round) {
            (Some(node), 0) => {
                let pairs: Vec<(String, String)> = foreign
                    .iter()
                    .map(|(i, run)| (run.clone(), keys(channels[*i].as_str()).epoch))
                    .collect();
                cluster::handed_over(conn, node, &pairs, session.response_timeout).await
            }
            _ => HashSet::new(),
        };
        let again: Vec<(&str, String)> = foreign
            .iter()
            .map(|(i, run)| {
                let channel = channels[*i].as_str();
                let handed = proven.contains(&(run.clone(), keys(channel).epoch));
                if handed {
                    tracing::info!(
                        channel,
                        "redis backplane: this topic's slot moved to another primary, handed \
                         over whole: its history goes on"
                    );
                    (channel, run.clone())
                } else {
                    tracing::warn!(
                        channel,
                        "redis backplane: this topic's keys are on another primary than the one \
                         that wrote them, and it cannot be shown that they were handed over \
                         whole (a failover): its history starts a new epoch"
                    );
                    (channel, "!".to_owned())
                }
            })
            .collect();
        let answers = ensure_with(conn, session, &again, &stale).await?;
        for ((i, _), answer) in foreign.into_iter().zip(answers) {
            replies[i] = answer;
        }
    }
    Ok(replies
        .into_iter()
        .map(|reply| match reply? {
            Ensure::Ensured(ensured) => Ok(ensured),
            Ensure::Foreign(_) => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a topic's keys moved between Redis runs again and again",
            ))),
        })
        .collect())
}

/// What [`ensure_script`] answers.
enum Ensure {
    Ensured(Ensured),
    /// Keys of this other run, which the script was told to ask about.
    Foreign(String),
}

/// [`ensure_script`] for each `(channel, foreign)` (see `epoch_for`).
async fn ensure_with(
    conn: &mut Conn,
    session: &Session,
    asked: &[(&str, String)],
    stale: &str,
) -> Result<Vec<redis::RedisResult<Ensure>>, SessionError> {
    let commands = asked
        .iter()
        .map(|(channel, foreign)| {
            let keys = keys(channel);
            let mut command = redis::cmd("EVALSHA");
            command.arg(&session.ensure).arg(6);
            for key in keys.all() {
                command.arg(key);
            }
            command
                .arg(&session.run_id)
                .arg(new_epoch())
                .arg(stale)
                .arg(foreign);
            command
        })
        .collect();
    let replies = conn.run_each(commands).await?;
    Ok(replies
        .into_iter()
        .map(|reply| {
            let reply = reply?;
            parse_ensured(&reply).ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "the backplane's script answered something else than {epoch, counter, base}",
                ))
            })
        })
        .collect())
}

fn parse_ensured(reply: &Value) -> Option<Ensure> {
    let Value::Array(items) = reply else {
        return None;
    };
    if let [Value::BulkString(word), run] = items.as_slice() {
        if word == b"foreign" {
            return Some(Ensure::Foreign(text(run.clone())?));
        }
    }
    let mut numbers = items.iter().map(number);
    Some(Ensure::Ensured(Ensured {
        epoch: numbers.next()??,
        counter: numbers.next()??,
        base: numbers.next()??,
    }))
}

/// A number Redis answered as an integer or as text.
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// What this process published lately on `channel` in an epoch other than `epoch` may be
/// lost: it goes to the front of the queue, to be published again first.
fn requeue_if_lost(shared: &Shared, channel: &str, epoch: u64) {
    let lost = lock(&shared.recent).moved(channel, epoch);
    if lost.is_empty() {
        return;
    }
    tracing::warn!(
        channel,
        again = lost.len(),
        "redis backplane: publishing again what this server published lately on a topic \
         Redis lost or rewound (the other servers drop those they already have)"
    );
    let mut pending = lock(&shared.pending);
    for envelope in lost.into_iter().rev() {
        pending.push_front((channel.to_owned(), envelope));
    }
}

/// What one read brought.
#[derive(Default)]
struct Read {
    entries: Entries,
    /// Redis refused (part of) the read: one of the streams is not allowed.
    refused: bool,
    /// Redis cannot serve it now (loading, busy, a slot migrating): read again after a
    /// while.
    busy: Option<redis::RedisError>,
}

/// Waits for new entries in the streams read (at most [`BLOCK`]).
fn read(
    mut conn: Conn,
    streams: &Streams,
) -> impl std::future::Future<Output = Result<Read, SessionError>> {
    let (keys, ids): (Vec<String>, Vec<String>) = streams
        .read
        .iter()
        .filter(|(channel, _)| !streams.refused.contains(*channel))
        .map(|(channel, state)| (keys(channel).stream, format!("{}-0", state.offset)))
        .unzip();
    let count = (READ_TOTAL / keys.len().max(1)).max(1);
    async move {
        if keys.is_empty() {
            tokio::time::sleep(BLOCK).await;
            return Ok(Read::default());
        }
        let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&keys)
            .arg(&ids)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(reply) => Ok(Read {
                entries: parse_read(reply),
                ..Read::default()
            }),
            Err(error) => match classify(&error) {
                Failure::Permanent => Ok(Read {
                    refused: true,
                    ..Read::default()
                }),
                Failure::Transient => Ok(Read {
                    busy: Some(error),
                    ..Read::default()
                }),
                Failure::Reconnect => Err(error.into()),
            },
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

/// `[[id, [field, value, ...]], ...]` as offsets, epochs (the `e` field) and envelopes
/// (the `d` field).
fn parse_entries(entries: Value) -> Vec<Entry> {
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
            let (mut epoch, mut data) = (None, None);
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                match text(name).as_deref() {
                    Some("d") => {
                        if let Value::BulkString(bytes) = value {
                            data = Some(Bytes::from(bytes));
                        }
                    }
                    Some("e") => epoch = number(&value),
                    _ => {}
                }
            }
            Some((offset, epoch, data?))
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

/// What Redis said of a topic's publications of one batch.
enum Outcome {
    /// The first `published` went in, in the epoch; if fewer than all, the next one was
    /// refused with `error` (and the later ones not tried). `rooms`: envelopes (by index)
    /// that the topic took but their room's own history refused, with the error.
    Published {
        epoch: u64,
        published: usize,
        error: Option<String>,
        rooms: Vec<(usize, String)>,
    },
    /// None went in: the topic is at another epoch than the publisher expected (Redis lost
    /// or rewound it), and it is this one now.
    Moved(u64),
    /// None went in: the topic's keys were written under another Redis run (in a cluster:
    /// a slot migrated, or a primary failed over).
    Foreign,
}

fn parse_outcome(reply: &Value) -> Option<Outcome> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.as_slice() {
        [Value::BulkString(word), epoch] if word == b"moved" => {
            Some(Outcome::Moved(number(epoch)?))
        }
        [Value::BulkString(word), _run] if word == b"foreign" => Some(Outcome::Foreign),
        [epoch, _offset, published, error, rooms @ ..] => {
            let error = match error {
                Value::BulkString(text) if text.is_empty() => None,
                Value::BulkString(text) => Some(String::from_utf8_lossy(text).into_owned()),
                _ => return None,
            };
            let rooms = rooms
                .chunks(2)
                .map(|pair| match pair {
                    [n, Value::BulkString(text)] => Some((
                        usize::try_from(number(n)?).ok()?.checked_sub(1)?,
                        String::from_utf8_lossy(text).into_owned(),
                    )),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Outcome::Published {
                epoch: number(epoch)?,
                published: usize::try_from(number(published)?).ok()?,
                error,
                rooms,
            })
        }
        _ => None,
    }
}

/// The error Redis gave as text inside a script (`CODE detail`), classified as a reply
/// would be.
fn script_error(text: &str) -> (Failure, redis::RedisError) {
    let (code, detail) = text.split_once(' ').unwrap_or((text, ""));
    let error = redis::RedisError::from((
        redis::ErrorKind::Extension,
        "refused inside the publish script",
        format!("{code} {detail}"),
    ));
    (super::classify_code(code, detail), error)
}

/// Publishes the oldest queued messages, up to a batch, in one pipelined round trip: one
/// script run per topic, with that topic's messages in order. Returns whether more are
/// queued.
///
/// - A failed connection puts the batch back (and ends the session).
/// - A transient refusal (`BUSY`, `OOM`, ...) puts the topic's messages back (from the one
///   refused on), and waits a backoff before publishing again, so that a topic's messages
///   are published in order.
/// - A topic Redis lost or rewound (`moved`): what this process published on it lately,
///   then the topic's messages of the batch, go back to the front of the queue.
/// - A permanent refusal (`NOPERM`, `WRONGTYPE`, a script error) drops and counts the
///   message refused (all of the topic's in the batch if the script refused them whole);
///   the later ones go back to the queue. A room's own history refusing a message that
///   the topic took is counted and logged; the message is published.
async fn publish_batch(
    shared: &Shared,
    conn: &mut Conn,
    session: &mut Session,
) -> Result<bool, SessionError> {
    let batch = lock(&shared.pending).take(PUBLISH_BATCH);
    if batch.is_empty() {
        return Ok(false);
    }
    let config = &shared.config;
    // By topic, in the order they first appear: its messages, in order.
    let mut topics: Vec<(String, Vec<Bytes>)> = Vec::new();
    {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (channel, envelope) in &batch {
            let at = *index.entry(channel).or_insert_with(|| {
                topics.push((channel.clone(), Vec::new()));
                topics.len() - 1
            });
            topics[at].1.push(envelope.clone());
        }
    }
    drop(batch);
    let mut commands = Vec::with_capacity(topics.len());
    for (channel, envelopes) in &topics {
        let keys = keys(channel);
        let expected = lock(&shared.recent)
            .epoch(channel)
            .map(|epoch| epoch.to_string())
            .unwrap_or_default();
        // The rooms of the topic's messages, numbered from 1 in the order they appear.
        let mut rooms: Vec<&[u8]> = Vec::new();
        let numbers: Vec<usize> = envelopes
            .iter()
            .map(|envelope| {
                let Some(room) = envelope::room_of(envelope).filter(|_| config.room_retention > 0)
                else {
                    return 0;
                };
                match rooms.iter().position(|known| *known == room) {
                    Some(at) => at + 1,
                    None => {
                        rooms.push(room);
                        rooms.len()
                    }
                }
            })
            .collect();
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(&session.publish)
            .arg(keys.all().len() + 2 * rooms.len());
        for key in keys.all() {
            command.arg(key);
        }
        for room in &rooms {
            let room_keys = room_keys(channel, Some(room));
            command.arg(&room_keys.stream).arg(&room_keys.meta);
        }
        let bell = match session.node {
            Some(_) => cluster::bell(channel),
            None => String::new(),
        };
        command
            .arg(config.retention)
            .arg(config.retention_bytes)
            .arg(&session.run_id)
            .arg(new_epoch())
            .arg(expected)
            .arg(config.room_retention)
            .arg(config.room_retention_bytes)
            .arg(config.room_history_ttl.as_millis() as u64)
            .arg(session.foreign())
            .arg(bell);
        for (envelope, number) in envelopes.iter().zip(numbers) {
            command.arg(envelope.as_ref()).arg(number);
        }
        commands.push(command);
    }
    let results = match conn.run_each(commands).await {
        Ok(results) => results,
        Err(error) => {
            let dropped = {
                let mut pending = lock(&shared.pending);
                for (channel, envelopes) in topics.into_iter().rev() {
                    for envelope in envelopes.into_iter().rev() {
                        pending.push_front((channel.clone(), envelope));
                    }
                }
                pending.trim(config)
            };
            shared.dropped(dropped);
            return Err(error.into());
        }
    };
    let mut published = 0;
    // What goes back to the front of the queue, in order (each topic's in its order).
    let mut again: Vec<(String, Bytes)> = Vec::new();
    let mut transient = None;
    let mut reconnect = None;
    // Topics whose keys another Redis run wrote (in a cluster): found out about below.
    let mut foreign = Vec::new();
    for ((channel, envelopes), result) in topics.into_iter().zip(results) {
        let outcome = match result {
            Ok(reply) => parse_outcome(&reply),
            Err(error) => {
                match classify(&error) {
                    Failure::Permanent => {
                        shared
                            .refused
                            .fetch_add(envelopes.len() as u64, Ordering::Relaxed);
                        tracing::error!(
                            channel,
                            %error,
                            messages = envelopes.len(),
                            "redis backplane: Redis refused to publish; the messages are dropped"
                        );
                        continue;
                    }
                    Failure::Transient => transient = Some(error),
                    Failure::Reconnect => reconnect = Some(error),
                }
                again.extend(
                    envelopes
                        .into_iter()
                        .map(|envelope| (channel.clone(), envelope)),
                );
                continue;
            }
        };
        match outcome {
            Some(Outcome::Published {
                epoch,
                published: count,
                error,
                rooms,
            }) => {
                let count = count.min(envelopes.len());
                published += count as u64;
                let mut rest = envelopes.into_iter();
                {
                    let mut recent = lock(&shared.recent);
                    for envelope in rest.by_ref().take(count) {
                        recent.remember(&channel, envelope, epoch, config);
                    }
                }
                for (n, error) in rooms {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        channel,
                        message = n,
                        %error,
                        "redis backplane: Redis refused to keep a message in its room's own \
                         history; it was published to the topic"
                    );
                }
                if let Some(error) = error {
                    let (failure, error) = script_error(&error);
                    match failure {
                        Failure::Permanent => {
                            // The refused one is dropped; the later ones go again.
                            rest.next();
                            shared.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                channel,
                                %error,
                                "redis backplane: Redis refused to publish; the message is dropped"
                            );
                        }
                        Failure::Transient => transient = Some(error),
                        Failure::Reconnect => reconnect = Some(error),
                    }
                }
                again.extend(rest.map(|envelope| (channel.clone(), envelope)));
            }
            Some(Outcome::Moved(epoch)) => {
                // What we published lately in the old epoch goes first, then these.
                let lost = lock(&shared.recent).moved(&channel, epoch);
                shared.history_resets.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    channel,
                    again = lost.len(),
                    "redis backplane: Redis lost or rewound this topic; publishing again \
                     what this server published lately"
                );
                again.extend(lost.into_iter().map(|lost| (channel.clone(), lost)));
                again.extend(
                    envelopes
                        .into_iter()
                        .map(|envelope| (channel.clone(), envelope)),
                );
            }
            Some(Outcome::Foreign) => {
                again.extend(
                    envelopes
                        .into_iter()
                        .map(|envelope| (channel.clone(), envelope)),
                );
                foreign.push(channel);
            }
            None => {
                shared
                    .invalid
                    .fetch_add(envelopes.len() as u64, Ordering::Relaxed);
                tracing::error!(channel, messages = envelopes.len(), "redis backplane: the publish script answered something unexpected; the messages are dropped");
            }
        }
    }
    shared.published.fetch_add(published, Ordering::Relaxed);
    if !again.is_empty() {
        let dropped = {
            let mut pending = lock(&shared.pending);
            for item in again.into_iter().rev() {
                pending.push_front(item);
            }
            pending.trim(config)
        };
        shared.dropped(dropped);
    }
    if let Some(error) = reconnect {
        return Err(error.into());
    }
    if !foreign.is_empty() {
        // The topic keeps its epoch (a migration) or gets a new one (a failover): in the
        // second case what this process published lately goes first, then the batch.
        for (channel, ensured) in foreign
            .iter()
            .zip(ensure_all(conn, session, &foreign, None).await?)
        {
            match ensured {
                Ok(ensured) => requeue_if_lost(shared, channel, ensured.epoch),
                // Its messages are back in the queue: tried again after a backoff.
                Err(error) if classify(&error) != Failure::Reconnect => transient = Some(error),
                Err(error) => return Err(error.into()),
            }
        }
    }
    match transient {
        Some(error) => {
            shared.retried.fetch_add(1, Ordering::Relaxed);
            let wait = session.next_backoff(config);
            tracing::warn!(%error, retry_in = ?wait, "redis backplane: Redis cannot publish now; retrying in order");
            session.retry_at = Some(tokio::time::Instant::now() + wait);
            shared.state.send_if_modified(|state| {
                let connected = *state == BackplaneState::Connected;
                if connected {
                    *state = BackplaneState::Retrying;
                }
                connected
            });
        }
        None => {
            session.retry_at = None;
            session.backoff = config.reconnect_min;
            shared.state.send_if_modified(|state| {
                let retrying = *state == BackplaneState::Retrying;
                if retrying {
                    *state = BackplaneState::Connected;
                }
                retrying
            });
        }
    }
    Ok(!lock(&shared.pending).items.is_empty())
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
/// of the entries after `after`, about `max_bytes`, if `after` is of the topic's epoch and
/// still kept: from the room's own stream for a room, else from the topic's. Read a few
/// entries at a time, so that what one resume holds stays near `max_bytes` whatever the
/// size of the messages.
pub(super) async fn missed(
    shared: &Shared,
    channel: String,
    room: Option<&str>,
    after: Position,
    max_bytes: usize,
) -> Result<MissedPage, ResumeError> {
    let conn = lock(&shared.connection).clone();
    let room = room.map(|room| room_keys(&channel, Some(room.as_bytes())));
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
    let (epoch, last): (Option<u64>, Option<u64>) = redis::pipe()
        .get(&keys.epoch)
        .get(&keys.offset)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    let last = last.unwrap_or(0);
    if epoch != Some(after.epoch()) || after.offset() > last {
        return Err(ResumeError::OtherEpoch {
            asked: after,
            current: epoch.unwrap_or(0),
        });
    }
    let stream = match &room {
        Some(room) => room.stream.clone(),
        None => keys.stream.clone().into_bytes(),
    };
    let mut envelopes: Vec<(Position, Bytes)> = Vec::new();
    let mut bytes = 0;
    let mut through = after.offset();
    // Entries per read: a few at first, then as many as the page has room for at the
    // size seen so far.
    let mut count = 16;
    while through < last && (envelopes.is_empty() || bytes < max_bytes) {
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(&stream)
            .arg(format!("{}-0", through + 1))
            .arg(format!("{last}-0"))
            .arg("COUNT")
            .arg(count);
        if let Some(room) = &room {
            pipe.hget(&room.meta, "f");
        }
        let (reply, floor): (Value, Option<String>) = if room.is_some() {
            pipe.query_async(&mut conn).await.map_err(unavailable)?
        } else {
            let (reply,): (Value,) = pipe.query_async(&mut conn).await.map_err(unavailable)?;
            (reply, None)
        };
        let entries = parse_entries(reply);
        let complete = match room {
            // A room's offsets are sparse: what is missing is what was trimmed.
            Some(_) => {
                let floor = floor
                    .and_then(|floor| floor.split_once('-').and_then(|(n, _)| n.parse().ok()))
                    .unwrap_or(0);
                floor <= through
            }
            // The topic's are contiguous: a hole is what was trimmed.
            None => entries
                .first()
                .is_some_and(|(first, _, _)| *first == through + 1),
        };
        if !complete {
            return Err(ResumeError::TooOld {
                asked: after,
                oldest: entries
                    .first()
                    .map(|(offset, _, _)| Position::new(after.epoch(), *offset)),
            });
        }
        let whole = entries.len() < count;
        for (offset, epoch, envelope) in entries {
            if epoch.is_some_and(|epoch| epoch != after.epoch()) {
                // Written in another epoch: the stream was lost or rewound meanwhile.
                return Err(ResumeError::OtherEpoch {
                    asked: after,
                    current: epoch.unwrap_or(0),
                });
            }
            bytes += envelope.len();
            through = offset;
            envelopes.push((Position::new(after.epoch(), offset), envelope));
        }
        if whole {
            // Nothing more up to `last` in this stream.
            through = last;
        }
        let average = bytes / envelopes.len().max(1);
        count = (max_bytes.saturating_sub(bytes) / average.max(1)).clamp(1, 256);
    }
    Ok(MissedPage::new(
        envelopes,
        Position::new(after.epoch(), through),
        through >= last,
    ))
}

#[cfg(test)]
mod tests {
    use super::{keys, parse_ensured, parse_outcome, parse_read, script_error, Ensure, Outcome};
    use crate::backplane::redis::Failure;
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
            assert_eq!(parsed[0].1, [(7, None, bytes::Bytes::from_static(b"env"))]);
        }
        assert!(parse_read(Value::Nil).is_empty());
        let junk = Value::Array(vec![Value::Array(vec![bulk("{t}"), bulk("x")])]);
        assert!(parse_read(junk)[0].1.is_empty());
    }

    #[test]
    fn ensure_replies() {
        let ensured = Value::Array(vec![bulk("7"), Value::Int(100), bulk("90")]);
        assert!(matches!(
            parse_ensured(&ensured),
            Some(Ensure::Ensured(super::Ensured {
                epoch: 7,
                counter: 100,
                base: 90
            }))
        ));
        let foreign = Value::Array(vec![bulk("foreign"), bulk("ab12")]);
        assert!(matches!(parse_ensured(&foreign), Some(Ensure::Foreign(run)) if run == "ab12"));
        assert!(parse_ensured(&Value::Array(vec![bulk("7")])).is_none());
    }

    #[test]
    fn publish_replies() {
        let moved = Value::Array(vec![bulk("moved"), bulk("42")]);
        assert!(matches!(parse_outcome(&moved), Some(Outcome::Moved(42))));
        let foreign = Value::Array(vec![bulk("foreign"), bulk("ab12")]);
        assert!(matches!(parse_outcome(&foreign), Some(Outcome::Foreign)));
        let all = Value::Array(vec![bulk("7"), Value::Int(100), Value::Int(3), bulk("")]);
        match parse_outcome(&all) {
            Some(Outcome::Published {
                epoch: 7,
                published: 3,
                error: None,
                rooms,
            }) => assert!(rooms.is_empty()),
            _ => panic!("three published"),
        }
        let partly = Value::Array(vec![
            bulk("7"),
            Value::Int(100),
            Value::Int(1),
            bulk("WRONGTYPE Operation against a key holding the wrong kind of value"),
            Value::Int(1),
            bulk("NOPERM this user has no permissions to access one of the keys"),
        ]);
        match parse_outcome(&partly) {
            Some(Outcome::Published {
                published: 1,
                error: Some(error),
                rooms,
                ..
            }) => {
                assert!(error.starts_with("WRONGTYPE"));
                assert_eq!(rooms.len(), 1);
                assert_eq!(rooms[0].0, 0, "rooms name messages from 1");
            }
            _ => panic!("one published, one refused"),
        }
        assert!(parse_outcome(&Value::Array(vec![bulk("7")])).is_none());
        assert!(parse_outcome(&Value::Nil).is_none());
    }

    #[test]
    fn errors_inside_the_script_are_classified_as_replies() {
        assert!(script_error("OOM command not allowed").0 == Failure::Transient);
        assert!(script_error("BUSY Redis is busy").0 == Failure::Transient);
        assert!(script_error("READONLY You can't write").0 == Failure::Reconnect);
        // Redirects the cluster client gave up following: its view of the slots is stale.
        assert!(script_error("MOVED 3999 127.0.0.1:6381").0 == Failure::Reconnect);
        assert!(script_error("ASK 3999 127.0.0.1:6381").0 == Failure::Reconnect);
        assert!(script_error("TRYAGAIN Multiple keys request").0 == Failure::Transient);
        assert!(script_error("CLUSTERDOWN The cluster is down").0 == Failure::Transient);
        assert!(script_error("CROSSSLOT Keys in request").0 == Failure::Permanent);
        assert!(script_error("WRONGTYPE Operation").0 == Failure::Permanent);
        assert!(
            script_error("ERR The ID specified in XADD is equal or smaller").0
                == Failure::Permanent
        );
    }

    #[test]
    fn a_topics_keys_share_one_hash_tag() {
        let keys = keys("websocket-handler:chat");
        assert_eq!(keys.stream, "{websocket-handler:chat}");
        assert_eq!(keys.offset, "{websocket-handler:chat}:offset");
        assert_eq!(keys.epoch, "{websocket-handler:chat}:epoch");
    }
}

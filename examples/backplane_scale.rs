//! The lossless Redis backplane at scale, in one process: two (or three) "servers", each a
//! `RedisBackplane` with a `Rooms<String>` keeping a history, share one Redis. Prints one
//! JSON line with the results; `bench/redis_scale.py` runs it against fresh Redis servers
//! and reads Redis's own figures around it.
//!
//! ```text
//! cargo run --release --features redis --example backplane_scale -- --redis redis://127.0.0.1:6379 \
//!     throughput --rooms 100 --messages 50000 --size 64
//! ... resume --missed 10000 --size 64 --room-retention 10000
//! ... memory --rooms 10000 --messages 10000 --size 4096 --retention 10000
//! ```
//!
//! Scenarios:
//! - `throughput`: server A broadcasts `--messages` messages round-robin over `--rooms`
//!   rooms; timed until server B's backplane has handed every one to B's rooms
//!   (`RedisStats::delivered`, which counts a message once it is decoded, ordered and handed
//!   to the `Rooms`, whether or not the room has members on B: B has none here, so this is
//!   the backplane's path, not fan-out to connections). Messages/s and this process's CPU
//!   time (both servers: A publishes and, lossless, reads its own topic back too; B reads)
//!   per million messages.
//! - `resume`: A publishes `--missed` messages in one room; then a third server C, which
//!   never had the room, serves a WebSocket client that resumes there from the first
//!   message: C replays the other `missed - 1` from the room's stream in Redis. Timed on the
//!   server (`Rooms::resume`, until the whole replay is queued to the connection, which
//!   waits for the client to read) and on the client (first replayed message to last).
//! - `memory`: A publishes, B reads, both wait until everything went through; the script
//!   reads Redis's memory.
//!
//! Retention flags (`--retention`, `--retention-bytes`, `--room-retention`,
//! `--room-retention-bytes`) set the `RedisBuilder` bounds; `--pubsub` uses the pub/sub mode
//! instead (throughput only: nothing is kept in Redis, so no resume).
//!
//! `--cluster URL[,URL...]` (instead of `--redis`) puts both servers on a Redis Cluster;
//! `--topics T` (throughput only) gives each server T `Rooms`, topics `scale0`..`scale{T-1}`,
//! and sends message n to topic n % T: a topic's stream is one key, so one slot, and only
//! separate topics spread the load over a cluster's primaries.
//!
//! Built with `RUSTFLAGS='--cfg backplane_scale_baseline'` (as `bench/redis_scale.py
//! --baseline-rev` does), it compiles against older versions of the crate (from 7823ee6,
//! before byte and room retention, and with `RedisConfig` for a builder): the `throughput`
//! and `memory` scenarios only, with `--retention` the only bound.

// Built for an older crate, what only the newer scenarios use is left unused.
#![cfg_attr(backplane_scale_baseline, allow(unused))]

#[cfg(not(feature = "redis"))]
fn main() {
    eprintln!("backplane_scale needs the Redis backplane: cargo run --features redis --example backplane_scale");
    std::process::exit(2);
}

#[cfg(feature = "redis")]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match scale::run().await {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("backplane_scale: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "redis")]
mod scale {
    use std::error::Error;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};
    use websocket_handler::backplane::{BackplaneState, RedisBackplane};
    use websocket_handler::{History, Rooms};
    #[cfg(not(backplane_scale_baseline))]
    use {
        futures_util::StreamExt,
        tokio_tungstenite::tungstenite::Message as WsMessage,
        websocket_handler::{Connection, Position, WebSocketHandler, WebSocketServer},
    };

    type Result<T> = std::result::Result<T, Box<dyn Error>>;

    /// The `Rooms` topic of every scenario.
    const TOPIC: &str = "scale";
    /// The default channel prefix: the room streams' keys start with it.
    const PREFIX: &str = "websocket-handler:";

    const USAGE: &str = "usage: backplane_scale --redis URL (throughput --rooms N --messages M \
        | resume --missed K | memory --rooms N --messages M) [--size BYTES] [--timeout S] \
        [--retention N] [--retention-bytes B] [--room-retention N] [--room-retention-bytes B] \
        [--pubsub] [--cluster URL[,URL...] instead of --redis] [--topics T]";

    struct Args {
        redis: String,
        scenario: String,
        rooms: usize,
        messages: usize,
        missed: usize,
        size: usize,
        timeout: Duration,
        retention: Option<usize>,
        retention_bytes: Option<usize>,
        room_retention: Option<usize>,
        room_retention_bytes: Option<usize>,
        pubsub: bool,
        cluster: Vec<String>,
        topics: usize,
    }

    fn parse_args() -> Result<Args> {
        let mut args = Args {
            redis: String::new(),
            scenario: String::new(),
            rooms: 1,
            messages: 10_000,
            missed: 1_000,
            size: 64,
            timeout: Duration::from_secs(120),
            retention: None,
            retention_bytes: None,
            room_retention: None,
            room_retention_bytes: None,
            pubsub: false,
            cluster: Vec::new(),
            topics: 1,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| format!("{arg} needs a value; {USAGE}"))
            };
            match arg.as_str() {
                "--redis" => args.redis = value()?,
                "--rooms" => args.rooms = value()?.parse()?,
                "--messages" => args.messages = value()?.parse()?,
                "--missed" => args.missed = value()?.parse()?,
                "--size" => args.size = value()?.parse()?,
                "--timeout" => args.timeout = Duration::from_secs_f64(value()?.parse()?),
                "--retention" => args.retention = Some(value()?.parse()?),
                "--retention-bytes" => args.retention_bytes = Some(value()?.parse()?),
                "--room-retention" => args.room_retention = Some(value()?.parse()?),
                "--room-retention-bytes" => args.room_retention_bytes = Some(value()?.parse()?),
                "--pubsub" => args.pubsub = true,
                "--cluster" => {
                    args.cluster = value()?.split(',').map(str::to_owned).collect();
                }
                "--topics" => args.topics = value()?.parse()?,
                "throughput" | "resume" | "memory" if args.scenario.is_empty() => {
                    args.scenario = arg.clone()
                }
                other => return Err(format!("unknown argument {other:?}; {USAGE}").into()),
            }
        }
        if args.redis.is_empty() == args.cluster.is_empty() || args.scenario.is_empty() {
            return Err(USAGE.into());
        }
        if args.topics == 0 || (args.topics > 1 && args.scenario != "throughput") {
            return Err("--topics is at least 1, and more than 1 only for throughput".into());
        }
        if cfg!(backplane_scale_baseline) && (!args.cluster.is_empty() || args.topics > 1) {
            return Err(
                "built for an older crate (backplane_scale_baseline): no --cluster, no --topics"
                    .into(),
            );
        }
        if !args.cluster.is_empty() && args.scenario == "resume" {
            return Err("--cluster is for the throughput and memory scenarios".into());
        }
        if args.rooms == 0 || args.messages == 0 || args.missed < 2 {
            return Err("need --rooms >= 1, --messages >= 1, --missed >= 2".into());
        }
        if args.pubsub && args.scenario != "throughput" {
            return Err("--pubsub is for the throughput scenario only".into());
        }
        let newer = args.retention_bytes.is_some()
            || args.room_retention.is_some()
            || args.room_retention_bytes.is_some()
            || args.scenario == "resume";
        if cfg!(backplane_scale_baseline) && newer {
            return Err(
                "built for an older crate (backplane_scale_baseline): no resume \
                 scenario, no byte or room retention"
                    .into(),
            );
        }
        Ok(args)
    }

    /// The settings of a backplane, with builder-style setters.
    #[cfg(not(backplane_scale_baseline))]
    type Settings = websocket_handler::backplane::RedisBuilder;
    /// An older crate's: a `RedisConfig` with setters, given to `RedisBackplane::new`.
    #[cfg(backplane_scale_baseline)]
    type Settings = websocket_handler::backplane::RedisConfig;

    #[cfg(not(backplane_scale_baseline))]
    fn backplane(settings: Settings) -> Result<RedisBackplane> {
        Ok(settings.build()?)
    }

    #[cfg(backplane_scale_baseline)]
    fn backplane(settings: Settings) -> Result<RedisBackplane> {
        Ok(RedisBackplane::new(settings)?)
    }

    impl Args {
        fn config(&self) -> Settings {
            // Everything a scenario publishes may wait to be published at once: the queue
            // is not what is measured.
            let mut config = self
                .base_settings()
                .lossless(!self.pubsub)
                .max_pending(self.messages.max(self.missed) + 1)
                .max_pending_bytes(usize::MAX / 2);
            if let Some(messages) = self.retention {
                config = config.retention(messages);
            }
            self.newer_bounds(config)
        }

        /// One Redis (`--redis`), or a cluster (`--cluster`).
        #[cfg(not(backplane_scale_baseline))]
        fn base_settings(&self) -> Settings {
            if self.cluster.is_empty() {
                Settings::new(&self.redis)
            } else {
                Settings::cluster(self.cluster.iter().cloned())
            }
        }

        /// One Redis: an older crate has no cluster.
        #[cfg(backplane_scale_baseline)]
        fn base_settings(&self) -> Settings {
            Settings::new(&self.redis)
        }

        /// The bounds an older crate does not have (see `parse_args`).
        #[cfg(backplane_scale_baseline)]
        fn newer_bounds(&self, config: Settings) -> Settings {
            config
        }

        #[cfg(not(backplane_scale_baseline))]
        fn newer_bounds(&self, mut config: Settings) -> Settings {
            if let Some(bytes) = self.retention_bytes {
                config = config.retention_bytes(bytes);
            }
            if self.room_retention.is_some() || self.room_retention_bytes.is_some() {
                config = config.room_retention(
                    self.room_retention.unwrap_or(1_000),
                    self.room_retention_bytes.unwrap_or(1 << 20),
                    Duration::from_secs(3600),
                );
            }
            config
        }

        fn settings(&self) -> Value {
            json!({
                "retention": self.retention,
                "retention_bytes": self.retention_bytes,
                "room_retention": self.room_retention,
                "room_retention_bytes": self.room_retention_bytes,
                "lossless": !self.pubsub,
                "cluster": !self.cluster.is_empty(),
                "topics": self.topics,
            })
        }
    }

    /// One server: its backplane and its rooms, keeping a history (the default: 1,000
    /// messages, 1 MiB per room).
    struct Server {
        backplane: RedisBackplane,
        /// One per topic: only `TOPIC` when there is one.
        topics: Vec<Rooms<String>>,
    }

    impl Server {
        /// The `Rooms` of the only (or first) topic.
        #[cfg(not(backplane_scale_baseline))]
        fn rooms(&self) -> &Rooms<String> {
            &self.topics[0]
        }
    }

    async fn server(args: &Args) -> Result<Server> {
        let backplane = backplane(args.config())?;
        let topics = (0..args.topics)
            .map(|t| {
                let topic = if args.topics == 1 {
                    TOPIC.to_owned()
                } else {
                    format!("{TOPIC}{t}")
                };
                Rooms::with_backplane(topic, backplane.clone()).with_history(History::new())
            })
            .collect();
        let mut state = backplane.state_changes();
        tokio::time::timeout(
            Duration::from_secs(15),
            state.wait_for(|state| *state == BackplaneState::Connected),
        )
        .await
        .map_err(|_| "the backplane did not connect to Redis within 15 s")??;
        Ok(Server { backplane, topics })
    }

    /// CPU seconds (user + system) of this process so far.
    fn cpu_s() -> f64 {
        // SAFETY: getrusage writes into the struct it is given, nothing else.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return f64::NAN;
        }
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// A text of `size` bytes starting with `m{n} `.
    fn payload(n: usize, size: usize) -> String {
        let mut text = format!("m{n} ");
        let fill = size.saturating_sub(text.len());
        text.extend(std::iter::repeat_n('x', fill));
        text
    }

    /// Polls `done` every millisecond until it holds, or fails after `timeout` with `what`.
    async fn until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !done() {
            if Instant::now() > deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    fn stats_json(backplane: &RedisBackplane) -> Value {
        let s = backplane.stats();
        #[cfg_attr(backplane_scale_baseline, allow(unused_mut))]
        let mut stats = json!({
            "published": s.published, "delivered": s.delivered, "dropped": s.dropped,
            "missed": s.missed, "invalid": s.invalid, "refused": s.refused,
            "history_resets": s.history_resets, "disconnects": s.disconnects,
        });
        #[cfg(not(backplane_scale_baseline))]
        {
            stats["retried"] = json!(s.retried);
        }
        stats
    }

    pub async fn run() -> Result<String> {
        let args = parse_args()?;
        let result = match args.scenario.as_str() {
            "throughput" | "memory" => throughput(&args).await?,
            #[cfg(not(backplane_scale_baseline))]
            "resume" => resume(&args).await?,
            _ => unreachable!("parse_args knows the scenarios"),
        };
        Ok(result.to_string())
    }

    /// Throughput and memory: A broadcasts round-robin over the rooms, B receives.
    async fn throughput(args: &Args) -> Result<Value> {
        let a = server(args).await?;
        let b = server(args).await?;
        let names: Vec<String> = (0..args.rooms).map(|n| format!("r{n}")).collect();
        let texts: Vec<String> = (0..64).map(|n| payload(n, args.size)).collect();
        let total = args.messages as u64;
        let (cpu0, started) = (cpu_s(), Instant::now());
        for n in 0..args.messages {
            a.topics[n % args.topics]
                .broadcast_to(&names[n % args.rooms], texts[n % texts.len()].as_str());
        }
        let queued_s = started.elapsed().as_secs_f64();
        let mut published_s = None;
        let outcome = until(args.timeout, "server B to receive every message", || {
            if published_s.is_none() && a.backplane.stats().published >= total {
                published_s = Some(started.elapsed().as_secs_f64());
            }
            let s = b.backplane.stats();
            // What was trimmed before B read it is counted as missed: never waited for.
            s.delivered + s.missed >= total || s.dropped > 0
        })
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_s() - cpu0;
        let received = b.backplane.stats().delivered;
        let mut line = json!({
            "scenario": args.scenario, "rooms": args.rooms, "messages": args.messages,
            "size": args.size, "settings": args.settings(),
            "ok": outcome.is_ok() && received == total,
            "error": outcome.err().map(|e| e.to_string()),
            "seconds": seconds, "queued_s": queued_s, "published_s": published_s,
            "messages_per_s": received as f64 / seconds,
            "cpu_s": cpu, "cpu_s_per_million": cpu * 1e6 / received.max(1) as f64,
            "a": stats_json(&a.backplane), "b": stats_json(&b.backplane),
        });
        if received != total {
            line["error"] = json!(format!(
                "B received {received} of {total}: {}",
                line["error"].as_str().unwrap_or("lost")
            ));
        }
        Ok(line)
    }

    #[cfg(not(backplane_scale_baseline))]
    /// On open: resumes in `?room=` from `?after=`, timing `Rooms::resume`, and says
    /// `resumed REPLAYED MICROSECONDS` (or `not resumed: WHY`).
    struct Resumer {
        rooms: Rooms<String>,
    }

    #[cfg(not(backplane_scale_baseline))]
    impl WebSocketHandler for Resumer {
        async fn on_open(&mut self, conn: &Connection) {
            let room = conn.query_param("room").unwrap_or_default();
            let after: Option<Position> = conn.query_param("after").and_then(|p| p.parse().ok());
            let Some(after) = after else {
                let _ = conn.send("not resumed: no ?after=POSITION");
                return;
            };
            let started = Instant::now();
            let resumed = self.rooms.resume(room, conn, &after).await;
            let micros = started.elapsed().as_micros();
            let _ = match resumed {
                Ok(resumed) => conn.send(format!("resumed {} {micros}", resumed.replayed)),
                Err(why) => conn.send(format!("not resumed: {why}")),
            };
        }
    }

    #[cfg(not(backplane_scale_baseline))]
    /// One entry of an `XRANGE` reply: its id and its fields, values as bytes.
    type StreamEntry = (String, Vec<(String, Vec<u8>)>);

    #[cfg(not(backplane_scale_baseline))]
    /// The position of the oldest message in the room's own stream in Redis.
    async fn first_position(url: &str, room: &str) -> Result<Position> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let key = format!("{{{PREFIX}{TOPIC}}}:r:{room}");
        // The envelope field (`d`) is binary: values as bytes.
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let (id, fields) = entries
            .into_iter()
            .next()
            .ok_or_else(|| format!("no entries in {key}"))?;
        let epoch = fields
            .iter()
            .find(|(name, _)| name == "e")
            .ok_or("the entry names no epoch")?;
        let epoch: u64 = std::str::from_utf8(&epoch.1)?.parse()?;
        // The oldest kept must be the first published (`m0 ...`): else the room's stream
        // trimmed some (raise --room-retention), and the resume would start later.
        let data = fields
            .iter()
            .find(|(name, _)| name == "d")
            .ok_or("the entry has no envelope")?;
        if !data.1.windows(3).any(|w| w == b"m0 ") {
            return Err(format!(
                "the oldest message kept in {key} is not the first published: the room's \
                 stream was trimmed (raise --room-retention / --room-retention-bytes)"
            )
            .into());
        }
        let offset = id.trim_end_matches("-0");
        Ok(format!("{epoch:x}.{offset}").parse()?)
    }

    #[cfg(not(backplane_scale_baseline))]
    async fn resume(args: &Args) -> Result<Value> {
        let room = "resume".to_owned();
        let a = server(args).await?;
        let total = args.missed as u64;
        let published = Instant::now();
        for n in 0..args.missed {
            a.rooms().broadcast_to(&room, payload(n, args.size));
        }
        until(args.timeout, "every message to be published", || {
            a.backplane.stats().published >= total
        })
        .await?;
        let published_s = published.elapsed().as_secs_f64();
        let after = first_position(&args.redis, &room).await?;

        // Server C never had the room: the replay comes from Redis.
        let c = server(args).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ws = WebSocketServer::new();
        let rooms = c.rooms().clone();
        // An older crate's `serve` took a handler maker that returned an `Option`.
        #[cfg(backplane_scale_baseline)]
        let admit = move |_: &http::request::Parts| {
            Some(Resumer {
                rooms: rooms.clone(),
            })
        };
        #[cfg(not(backplane_scale_baseline))]
        let admit = move |upgrade: websocket_handler::WebSocketUpgrade| {
            let rooms = rooms.clone();
            async move { upgrade.accept(Resumer { rooms }) }
        };
        tokio::spawn(async move {
            let _ = ws.serve(listener, admit).await;
        });
        let (cpu0, started) = (cpu_s(), Instant::now());
        let url = format!("ws://{addr}/?room={room}&after={after}");
        let (mut client, _) = tokio_tungstenite::connect_async(url).await?;
        let connected_s = started.elapsed().as_secs_f64();
        let expected = args.missed - 1;
        let (mut replayed, mut first_at, mut last_at) = (0usize, None, None);
        let mut last_text = String::new();
        let mut said = None;
        let read = async {
            while let Some(message) = client.next().await {
                let text = match message? {
                    WsMessage::Text(text) => text.to_string(),
                    WsMessage::Close(_) => break,
                    _ => continue,
                };
                if text.starts_with("resumed ") || text.starts_with("not resumed") {
                    said = Some(text);
                    break;
                }
                replayed += 1;
                let now = started.elapsed().as_secs_f64();
                first_at.get_or_insert(now);
                last_at = Some(now);
                last_text = text;
            }
            Ok::<(), Box<dyn Error>>(())
        };
        let outcome = match tokio::time::timeout(args.timeout, read).await {
            Ok(read) => read.err().map(|e| e.to_string()),
            Err(_) => Some(format!("timed out after {:?}", args.timeout)),
        };
        let done_s = started.elapsed().as_secs_f64();
        let cpu = cpu_s() - cpu0;
        // `resumed N MICROS`
        let (server_replayed, resume_call_s) = said
            .as_deref()
            .and_then(|said| said.strip_prefix("resumed "))
            .and_then(|rest| rest.split_once(' '))
            .map_or((None, None), |(n, micros)| {
                (
                    n.parse::<usize>().ok(),
                    micros.parse::<f64>().ok().map(|us| us / 1e6),
                )
            });
        let last_ok = last_text
            .split(' ')
            .nth(2)
            .is_some_and(|body| body == format!("m{}", args.missed - 1));
        let ok = outcome.is_none()
            && replayed == expected
            && server_replayed == Some(expected)
            && last_ok;
        let error = outcome.or_else(|| {
            (!ok).then(|| {
                format!(
                    "replayed {replayed} of {expected}; the server said {said:?}; last {:?}",
                    last_text.chars().take(80).collect::<String>()
                )
            })
        });
        Ok(json!({
            "scenario": "resume", "missed": args.missed, "size": args.size,
            "settings": args.settings(), "ok": ok, "error": error,
            "replayed": replayed, "after": after.to_string(),
            "published_s": published_s,
            "connected_s": connected_s,
            "first_s": first_at, "last_s": last_at,
            "first_to_last_s": first_at.zip(last_at).map(|(f, l)| l - f),
            "resume_call_s": resume_call_s,
            "total_s": done_s,
            "cpu_s": cpu,
            "a": stats_json(&a.backplane), "c": stats_json(&c.backplane),
        }))
    }
}

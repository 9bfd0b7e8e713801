//! A connection of the backplane: to one Redis server, or to a Redis Cluster, where each
//! command goes to the primary of its key's slot (the client follows `MOVED` and `ASK`, and
//! keeps one connection per node).
//!
//! In a cluster every command, pipeline and script must stay within one slot (else
//! `CROSSSLOT`): [`Conn::run_groups`] runs groups of commands of many slots, each group a
//! pipeline of its own, at once, where one server takes them all as one pipeline.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, PushInfo, RedisFuture, RedisResult, Value};

use super::servers::Target;
use super::{RedisConfig, SessionError};

/// What Redis pushes to a connection (messages, subscription changes, a lost node), handed
/// over as it is read.
pub(super) type Pushes = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// Cluster commands (or pipelines) in flight at once in [`Conn::run_groups`].
pub(super) const IN_FLIGHT: usize = 256;

/// How often the cluster client retries a command itself (a redirect, `TRYAGAIN` during a
/// slot migration, a node reconnecting), and how long it waits between tries: longer
/// outages are the backplane's, which reconnects with its own backoff and says so.
const CLUSTER_RETRIES: u32 = 4;
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (10, 200);

/// A connection to one server or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Conn {
    /// Connects to `target` within the connect timeout; `response`: how long an answer may
    /// take. RESP3 always: what Redis pushes comes to `pushes`, on the connection that also
    /// carries commands.
    pub(super) async fn open(
        target: &Target,
        config: &RedisConfig,
        response: Duration,
        pushes: Option<Pushes>,
    ) -> Result<Conn, SessionError> {
        let connect = config.connect_timeout;
        let push = pushes.map(|pushes| {
            move |push: PushInfo| {
                pushes(push);
                Ok::<(), std::convert::Infallible>(())
            }
        });
        let connecting = async {
            match target {
                Target::One(client) => {
                    let mut options = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(connect))
                        .set_response_timeout(Some(response));
                    if let Some(push) = push {
                        options = options.set_push_sender(push);
                    }
                    client
                        .get_multiplexed_async_connection_with_config(&options)
                        .await
                        .map(Conn::One)
                }
                Target::Cluster(nodes) => {
                    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .connection_timeout(connect)
                        .response_timeout(response)
                        .retries(CLUSTER_RETRIES)
                        .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
                        .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1);
                    if let Some(push) = push {
                        builder = builder.push_sender(push);
                    }
                    builder
                        .build()?
                        .get_async_connection()
                        .await
                        .map(Conn::Cluster)
                }
            }
        };
        // A cluster connects to each of its nodes: give it the time of a connect and an
        // answer (the layout is asked first).
        let limit = match target {
            Target::One(_) => connect,
            Target::Cluster(_) => connect + response,
        };
        Ok(tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| SessionError::Timeout(limit))??)
    }

    /// Runs `commands` and answers each one's result, in order: on one server as one
    /// pipeline (an `Err` for all if the connection fails), in a cluster each on its own,
    /// at most [`IN_FLIGHT`] at once (they may be in as many slots, and their order is not
    /// kept).
    pub(super) async fn run_each(
        &mut self,
        commands: Vec<Cmd>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        self.run_groups(commands.into_iter().map(|command| vec![command]).collect())
            .await
    }

    /// Runs `groups` of commands and answers each command's result, in order: on one
    /// server all as one pipeline (an `Err` for all if the connection fails); in a cluster
    /// each group as a pipeline of its own (its commands must share one slot; they reach
    /// Redis in their order), the groups at once, at most [`IN_FLIGHT`].
    pub(super) async fn run_groups(
        &mut self,
        groups: Vec<Vec<Cmd>>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let pipeline = |commands: Vec<Cmd>| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for command in commands {
                pipe.add_command(command);
            }
            pipe
        };
        match self {
            Conn::One(conn) => {
                let commands: Vec<Cmd> = groups.into_iter().flatten().collect();
                if commands.is_empty() {
                    return Ok(Vec::new());
                }
                pipeline(commands).query_async(conn).await
            }
            Conn::Cluster(conn) => {
                let answers: Vec<Vec<RedisResult<Value>>> = futures_util::stream::iter(groups)
                    .map(|group| {
                        let mut conn = conn.clone();
                        async move {
                            let count = group.len();
                            if let [command] = &group[..] {
                                return vec![command.query_async::<Value>(&mut conn).await];
                            }
                            // A failed group fails each of its commands.
                            match pipeline(group)
                                .query_async::<Vec<RedisResult<Value>>>(&mut conn)
                                .await
                            {
                                Ok(answers) => answers,
                                Err(error) => (0..count).map(|_| Err(error.clone())).collect(),
                            }
                        }
                    })
                    .buffered(IN_FLIGHT)
                    .collect()
                    .await;
                Ok(answers.into_iter().flatten().collect())
            }
        }
    }

    /// Subscribes to `channel`: a pub/sub channel on one server, a sharded one (`SSUBSCRIBE`,
    /// Redis 7) in a cluster, kept by the node of the channel's slot.
    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::One(conn) => conn.subscribe(channel).await,
            Conn::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    /// Ends the subscriptions to `channels` (see [`subscribe`](Self::subscribe)).
    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::One(conn) => conn.unsubscribe(channels).await,
            Conn::Cluster(conn) => {
                // One command per channel: they may be in as many slots.
                for channel in channels {
                    conn.sunsubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    /// The publish command for `channel`: `PUBLISH`, or `SPUBLISH` in a cluster.
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Conn::One(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        }
    }
}

/// The hash slot of `key` (CRC16 of its hash tag, or of the key, modulo 16384), as Redis
/// Cluster computes it.
pub(super) fn slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tag) % 16384
}

/// CRC-16/XMODEM, the checksum Redis Cluster's slots are made from.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn slots_are_redis_clusters() {
        // As `CLUSTER KEYSLOT` answers.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{t1}"), 8943);
        assert_eq!(slot(b"{t1}:offset"), 8943);
        assert_eq!(slot(b"{t1}:bell"), 8943);
        assert_eq!(slot(b"a{}b"), slot(b"a{}b"), "an empty tag: the whole key");
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
    }
}

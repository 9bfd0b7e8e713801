//! Which Redis to connect to: one server at a fixed address, the primary that Redis
//! Sentinel names, asked again on every connect (a remembered address may have become a
//! replica, or an empty primary restarted with its old configuration), or a Redis Cluster.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo};

/// Where the backplane's connections go.
pub(super) enum Servers {
    /// One Redis server.
    One(redis::Client),
    /// The primary of `master` as the sentinels see it.
    Sentinel {
        /// The sentinels, asked in turn, starting with the last that answered.
        sentinels: Vec<redis::Client>,
        master: String,
        /// How to reach a data node (protocol, database, credentials); its address is the
        /// sentinels' answer.
        node: ConnectionInfo,
        /// The sentinel to ask first.
        first: std::sync::atomic::AtomicUsize,
    },
    /// A Redis Cluster, known by some of its nodes: the client asks them for the rest.
    Cluster(Vec<ConnectionInfo>),
}

/// What one connect goes to.
pub(super) enum Target {
    /// One server.
    One(redis::Client),
    /// A Redis Cluster, through these of its nodes.
    Cluster(Vec<ConnectionInfo>),
}

/// Why no primary could be found through the sentinels.
#[derive(Debug, thiserror::Error)]
pub(super) enum NoPrimary {
    #[error("no sentinel answered for master {master:?} ({tried} tried; last error: {last})")]
    NoSentinel {
        master: String,
        tried: usize,
        last: String,
    },
    #[error("the sentinels know no master named {0:?}")]
    UnknownMaster(String),
    #[error(
        "the sentinels name {addr} as the primary of {master:?}, but it is not one (yet): {role}"
    )]
    NotPrimary {
        master: String,
        addr: String,
        role: String,
    },
}

impl Servers {
    /// What to connect to now. Through Sentinel, the primary is looked up and asked for its
    /// `ROLE`, so that a stale answer (a sentinel that has not seen the failover yet, a
    /// demoted primary) is never used.
    pub(super) async fn target(&self, timeout: Duration) -> Result<Target, NoPrimary> {
        let (sentinels, master, node, first) = match self {
            Servers::One(client) => return Ok(Target::One(client.clone())),
            Servers::Cluster(nodes) => return Ok(Target::Cluster(nodes.clone())),
            Servers::Sentinel {
                sentinels,
                master,
                node,
                first,
            } => (sentinels, master, node, first),
        };
        use std::sync::atomic::Ordering;
        let start = first.load(Ordering::Relaxed);
        let mut last = NoPrimary::NoSentinel {
            master: master.clone(),
            tried: 0,
            last: "none asked".to_owned(),
        };
        for i in 0..sentinels.len() {
            let at = (start + i) % sentinels.len();
            let answer = ask(&sentinels[at], master, timeout).await;
            let (host, port) = match answer {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    last = NoPrimary::UnknownMaster(master.clone());
                    continue;
                }
                Err(error) => {
                    last = NoPrimary::NoSentinel {
                        master: master.clone(),
                        tried: i + 1,
                        last: error.to_string(),
                    };
                    continue;
                }
            };
            first.store(at, Ordering::Relaxed);
            let info = node
                .clone()
                .set_addr(ConnectionAddr::Tcp(host.clone(), port));
            let Ok(client) = redis::Client::open(info) else {
                continue;
            };
            match role(&client, timeout).await {
                Ok(role) if role == "master" => return Ok(Target::One(client)),
                Ok(role) => {
                    last = NoPrimary::NotPrimary {
                        master: master.clone(),
                        addr: format!("{host}:{port}"),
                        role,
                    }
                }
                Err(error) => {
                    last = NoPrimary::NotPrimary {
                        master: master.clone(),
                        addr: format!("{host}:{port}"),
                        role: format!("unreachable: {error}"),
                    }
                }
            }
        }
        Err(last)
    }
}

/// `SENTINEL get-master-addr-by-name`: `None` if the sentinel does not know the name.
async fn ask(
    sentinel: &redis::Client,
    master: &str,
    timeout: Duration,
) -> Result<Option<(String, u16)>, redis::RedisError> {
    let mut conn = connect(sentinel, timeout).await?;
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("get-master-addr-by-name").arg(master);
    within(timeout, ask.query_async::<Option<(String, u16)>>(&mut conn)).await
}

/// The first element of `ROLE`: `master`, `slave` or `sentinel`.
async fn role(node: &redis::Client, timeout: Duration) -> Result<String, redis::RedisError> {
    let mut conn = connect(node, timeout).await?;
    let ask = redis::cmd("ROLE");
    let role = within(timeout, ask.query_async::<Vec<redis::Value>>(&mut conn)).await?;
    Ok(match role.first() {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(redis::Value::SimpleString(text)) => text.clone(),
        other => format!("{other:?}"),
    })
}

async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    within(
        timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
}

async fn within<T>(
    timeout: Duration,
    future: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, redis::RedisError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ))),
    }
}

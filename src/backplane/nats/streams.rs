//! A topic's JetStream stream: made when first needed, looked up, and its epoch.
//!
//! A position's offset is the stream's sequence number, which JetStream never reuses while
//! the stream lives (an R3 stream keeps it through the loss of any one server). Its epoch
//! is a random number the process that made the stream wrote in the stream's description:
//! the same in every process and on every server of a cluster (the configuration is
//! replicated with the stream), and new only if the stream is deleted and made again, which
//! is exactly when old positions stop naming the same messages. Not the stream's creation
//! time: nats-server 2.9 can answer with another one from another server (a reader then
//! saw a new epoch where there was none).

use std::time::Duration;

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self as js, context::GetStreamErrorKind};

use super::config::NatsConfig;
use super::names::TopicNames;

/// Where a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StreamState {
    /// Its creation time, in nanoseconds since 1970 (at least 1).
    pub(super) epoch: u64,
    /// The oldest sequence it holds (one past the last when empty).
    pub(super) first: u64,
    /// The last sequence it gave out (0 for none).
    pub(super) last: u64,
}

impl StreamState {
    pub(super) fn of(info: &stream::Info) -> Self {
        let epoch = (info.config.description.as_deref())
            .and_then(epoch_in)
            .unwrap_or_else(|| {
                // A stream made by an earlier version, without an epoch of its own.
                let nanos = info.created.unix_timestamp_nanos();
                u64::try_from(nanos).unwrap_or(1).max(1)
            });
        StreamState {
            epoch,
            first: info.state.first_sequence,
            last: info.state.last_sequence,
        }
    }
}

/// How the description of a stream this backplane makes starts; the epoch follows, in hex.
const DESCRIPTION: &str = "websocket-handler backplane topic, epoch ";

/// The epoch a stream's description names; `None` if it names none.
fn epoch_in(description: &str) -> Option<u64> {
    let hex = description.strip_prefix(DESCRIPTION)?;
    u64::from_str_radix(hex, 16)
        .ok()
        .filter(|epoch| *epoch != 0)
}

/// A new stream's epoch: random, never 0.
fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish().max(1)
}

/// Why NATS did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Failure {
    /// The stream does not exist (deleted, or never made).
    #[error("the stream does not exist")]
    Missing,
    /// JetStream refused, and would again (not enabled for the account, a limit on
    /// streams, a configuration it cannot take): asked again only after the longest wait.
    #[error("JetStream refused: {0}")]
    Refused(String),
    /// Not now: no leader for the stream, no connection, a timeout.
    #[error("{0}")]
    Unavailable(String),
}

/// JetStream errors that pass: the cluster or the stream is between leaders, or short of
/// peers or resources for now.
const TRANSIENT: [ErrorCode; 8] = [
    ErrorCode::CLUSTER_INCOMPLETE,
    ErrorCode::CLUSTER_NO_PEERS,
    ErrorCode::CLUSTER_NOT_ACTIVE,
    ErrorCode::CLUSTER_NOT_ASSIGNED,
    ErrorCode::CLUSTER_NOT_AVAILABLE,
    ErrorCode::CLUSTER_NOT_LEADER,
    ErrorCode::INSUFFICIENT_RESOURCES,
    ErrorCode::STREAM_STORE_FAILED,
];

/// A JetStream error reply, sorted.
pub(super) fn classify_api(error: &js::Error) -> Failure {
    let code = error.error_code();
    if code == ErrorCode::STREAM_NOT_FOUND {
        Failure::Missing
    } else if TRANSIENT.contains(&code) {
        Failure::Unavailable(error.to_string())
    } else {
        Failure::Refused(error.to_string())
    }
}

/// The stream configuration this backplane makes for a topic, with `epoch`.
fn stream_config(config: &NatsConfig, names: &TopicNames, epoch: u64) -> stream::Config {
    stream::Config {
        name: names.stream.clone(),
        subjects: vec![names.wildcard()],
        max_messages: i64::try_from(config.retention).unwrap_or(i64::MAX),
        max_bytes: i64::try_from(config.retention_bytes).unwrap_or(i64::MAX),
        max_age: config.max_age,
        storage: if config.file_storage {
            StorageType::File
        } else {
            StorageType::Memory
        },
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        discard: DiscardPolicy::Old,
        retention: RetentionPolicy::Limits,
        description: Some(format!("{DESCRIPTION}{epoch:016x}")),
        ..Default::default()
    }
}

/// The stream's state now.
pub(super) async fn info(
    context: &js::Context,
    names: &TopicNames,
) -> Result<StreamState, Failure> {
    match context.get_stream(&names.stream).await {
        Ok(stream) => Ok(StreamState::of(stream.cached_info())),
        Err(error) => Err(match error.kind() {
            GetStreamErrorKind::JetStream(api) => classify_api(&api),
            _ => Failure::Unavailable(error.to_string()),
        }),
    }
}

/// The stream's state, making it first if it does not exist. Returns whether it was made
/// now.
pub(super) async fn ensure(
    context: &js::Context,
    config: &NatsConfig,
    names: &TopicNames,
) -> Result<(StreamState, bool), Failure> {
    match context.get_stream(&names.stream).await {
        Ok(stream) => {
            warn_if_different(config, names, &stream.cached_info().config);
            return Ok((StreamState::of(stream.cached_info()), false));
        }
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(api) => match classify_api(&api) {
                Failure::Missing => {}
                other => return Err(other),
            },
            _ => return Err(Failure::Unavailable(error.to_string())),
        },
    }
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    // Made by two processes at once, the stream is the first one's, with its epoch: the
    // other one's configuration differs by the epoch, so JetStream refuses it.
    match context
        .create_stream(stream_config(config, names, new_epoch()))
        .await
    {
        Ok(_) => {
            tracing::info!(
                stream = names.stream,
                replicas = config.replicas,
                "nats backplane: created the topic's stream"
            );
            // Its state as everyone reads it.
            info(context, names).await.map(|state| (state, true))
        }
        Err(error) => match error.kind() {
            // Made meanwhile by another process (with other settings, or JetStream would
            // have answered with it): use it.
            Kind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NAME_EXIST => {
                info(context, names).await.map(|state| (state, false))
            }
            Kind::JetStream(api) => Err(classify_api(&api)),
            Kind::EmptyStreamName | Kind::InvalidStreamName | Kind::DomainAndExternalSet => {
                Err(Failure::Refused(error.to_string()))
            }
            _ => Err(Failure::Unavailable(error.to_string())),
        },
    }
}

/// Logs what an existing stream keeps differently from what this process would make.
fn warn_if_different(config: &NatsConfig, names: &TopicNames, found: &stream::Config) {
    let ours = stream_config(config, names, 1);
    if found.num_replicas != ours.num_replicas
        || found.max_messages != ours.max_messages
        || found.max_bytes != ours.max_bytes
        || found.max_age != ours.max_age
    {
        tracing::debug!(
            stream = names.stream,
            replicas = found.num_replicas,
            max_messages = found.max_messages,
            max_bytes = found.max_bytes,
            max_age = ?found.max_age,
            "nats backplane: the topic's stream exists with other settings than this \
             server's; it is used as it is"
        );
    }
}

/// `delay` give or take a quarter, so that servers that lost NATS together do not all
/// come back in the same instant.
pub(super) fn jitter(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let quarter = delay / 4;
    let spread = quarter.as_nanos() as u64 * 2;
    if spread == 0 {
        return delay;
    }
    delay - quarter + Duration::from_nanos(random % spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_epoch_is_the_one_its_description_names() {
        let epoch = new_epoch();
        assert_ne!(epoch, 0);
        assert_ne!(epoch, new_epoch(), "each stream its own");
        let names = TopicNames::new("p", "t");
        let config = super::super::NatsBuilder::new("nats://h").config;
        let config = stream_config(&config, &names, epoch);
        let description = config.description.expect("a description");
        assert_eq!(epoch_in(&description), Some(epoch));
        assert_eq!(
            epoch_in("websocket-handler backplane topic"),
            None,
            "an earlier version's"
        );
        assert_eq!(epoch_in(&format!("{DESCRIPTION}0")), None);
        assert_eq!(epoch_in(&format!("{DESCRIPTION}zz")), None);
    }
}

//! The NATS backplane's settings: [`NatsBuilder`] chooses them, [`NatsConfig`] reads them back.

use std::path::PathBuf;
use std::time::Duration;

use super::{NatsBackplane, NatsBackplaneError};

/// The shortest wait the settings allow: a zero wait would retry a dead server in a busy loop.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Builds a [`NatsBackplane`]: every setting, with builder-style setters, and
/// [`build`](NatsBuilder::build) at the end ([`NatsBackplane::new`] takes the defaults).
/// The settings are read back with [`NatsBackplane::config`].
///
/// | setting | default |
/// | --- | --- |
/// | [`prefix`](NatsBuilder::prefix) | `websocket-handler` |
/// | [`replicas`](NatsBuilder::replicas) | 1 (3 advised on a cluster) |
/// | [`retention`](NatsBuilder::retention) | 10,000 messages, 16 MiB, 24 h per topic |
/// | [`file_storage`](NatsBuilder::file_storage) | on |
/// | [`duplicate_window`](NatsBuilder::duplicate_window) | 2 min |
/// | [`max_pending`](NatsBuilder::max_pending) | 10,000 messages |
/// | [`max_pending_bytes`](NatsBuilder::max_pending_bytes) | 64 MiB |
/// | [`reconnect_backoff`](NatsBuilder::reconnect_backoff) | 100 ms to 3 s |
/// | [`connect_timeout`](NatsBuilder::connect_timeout) | 2 s |
/// | [`response_timeout`](NatsBuilder::response_timeout) | 2 s |
/// | credentials | none ([`user_and_password`](NatsBuilder::user_and_password), [`token`](NatsBuilder::token), [`credentials_file`](NatsBuilder::credentials_file)) |
///
/// **Replicas.** A stream of one replica (R1) lives on one server: it is the right choice
/// with one `nats-server`, and on a cluster it stops when that server does. On a cluster of
/// three, R3 is advised: JetStream then acknowledges a publication only once two of the
/// three servers stored it, and the stream goes on (after 3 to 8 s without a leader, which
/// the backplane rides out by retrying) when any one server dies, with its sequence, and
/// so every [`Position`](crate::Position), unchanged. R3 costs a write on three servers and
/// a round of consensus per publication.
///
/// ```
/// use std::time::Duration;
/// use websocket_handler::backplane::NatsBackplane;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let servers = "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222";
/// let nats = NatsBackplane::builder(servers)
///     .replicas(3)
///     .retention(50_000, 64 << 20, Duration::from_secs(3600))
///     .build()?; // connects in the background
/// assert_eq!(nats.config().replicas(), 3);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` makes the backplane"]
pub struct NatsBuilder {
    pub(super) config: NatsConfig,
}

impl NatsBuilder {
    /// Settings for the NATS servers at `servers`: `nats://host:port` (or `tls://`), or
    /// several separated by commas, as NATS clients take them. One is enough, the others
    /// of a cluster are learnt from it, but the client tries every one given when it
    /// (re)connects. With the defaults in the table above.
    pub fn new(servers: impl AsRef<str>) -> Self {
        let servers = servers
            .as_ref()
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        NatsBuilder {
            config: NatsConfig::defaults(Servers(servers)),
        }
    }

    /// The backplane, with these settings: see [`NatsBackplane::new`].
    ///
    /// # Errors
    ///
    /// If a server URL is invalid, there is none, the prefix cannot be part of a NATS
    /// subject, the credentials file cannot be read, or there is no tokio runtime.
    pub fn build(self) -> Result<NatsBackplane, NatsBackplaneError> {
        NatsBackplane::with_config(self.config)
    }

    /// What each topic's JetStream stream and subjects are named after, so that several
    /// applications can share one NATS: topic `chat` is the stream `PREFIX-chat`, with
    /// subjects under `PREFIX.chat.`. Letters, digits, `-` and `_` only. Default
    /// `websocket-handler`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// How many servers hold each stream (1 to 5): 1 for one server, 3 advised on a
    /// cluster (see the table above for why). Used when the backplane creates a topic's
    /// stream; a stream that exists already keeps its own (a difference is logged).
    /// Default 1.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.config.replicas = replicas.clamp(1, 5);
        self
    }

    /// What each topic's stream keeps: its last `messages`, within `bytes` (as JetStream
    /// counts them: the payload, subject and headers, some 100 bytes more per message than
    /// the envelope), none older than `max_age` (zero: no age limit). The oldest go first.
    /// This is how far back a process that was away, or a client that resumes, can catch
    /// up. Default 10,000 messages, 16 MiB, 24 hours; at least 1 message and 1 byte.
    pub fn retention(mut self, messages: usize, bytes: usize, max_age: Duration) -> Self {
        self.config.retention = messages.max(1);
        self.config.retention_bytes = bytes.max(1);
        self.config.max_age = max_age;
        self
    }

    /// Whether streams keep their messages in files (on) or in memory only (off: faster,
    /// and lost, with every position, when every server holding the stream restarts).
    /// Default on.
    pub fn file_storage(mut self, on: bool) -> Self {
        self.config.file_storage = on;
        self
    }

    /// How long JetStream remembers a publication's id to store it only once when the
    /// backplane sends it again (after a lost acknowledgement, a leader change, a
    /// reconnect). It must outlast how long publications are retried: the backplane
    /// retries for as long as NATS is unavailable, so an outage longer than this may store
    /// a retried message twice; the receivers still deliver it once. Default 2 minutes;
    /// at least 1 second.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.config.duplicate_window = window.max(Duration::from_secs(1));
        self
    }

    /// Messages held for publishing while NATS is unreachable or has no stream leader;
    /// beyond this, the oldest are dropped (and counted in
    /// [`NatsStats::dropped`](super::NatsStats::dropped)). Default 10,000.
    pub fn max_pending(mut self, messages: usize) -> Self {
        self.config.max_pending = messages.max(1);
        self
    }

    /// Bytes of messages held for publishing, the other bound of the same queue. Default
    /// 64 MiB.
    pub fn max_pending_bytes(mut self, bytes: usize) -> Self {
        self.config.max_pending_bytes = bytes.max(1);
        self
    }

    /// The wait between reconnects and between retries of a publication: `min` after the
    /// first failure, doubling up to `max`, with jitter. Default 100 ms to 3 s; at least
    /// 1 ms.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.reconnect_min = min.max(MIN_WAIT);
        self.config.reconnect_max = max.max(self.config.reconnect_min);
        self
    }

    /// How long connecting to a server may take. Default 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout.max(MIN_WAIT);
        self
    }

    /// How long JetStream may take to acknowledge a publication or answer a request
    /// (stream information, a consumer); then it is retried. Default 2 s; at least 1 ms.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout.max(MIN_WAIT);
        self
    }

    /// Connect as `user` with `password`. Replaces other credentials.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.config.credentials = Credentials::UserPassword(user.into(), Secret(password.into()));
        self
    }

    /// Connect with `token`. Replaces other credentials.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.credentials = Credentials::Token(Secret(token.into()));
        self
    }

    /// Connect with the user JWT and NKey seed of a `.creds` file (as `nsc` writes them),
    /// read when the backplane is built. Replaces other credentials.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.credentials = Credentials::File(path.into());
        self
    }
}

/// A [`NatsBackplane`]'s settings, read back with [`NatsBackplane::config`]. They are
/// chosen with [`NatsBuilder`], which documents each one and its default.
///
/// ```
/// use websocket_handler::backplane::NatsBackplane;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = NatsBackplane::new("nats://127.0.0.1:4222")?;
/// assert_eq!(nats.config().servers(), ["nats://127.0.0.1:4222"]);
/// assert_eq!(nats.config().replicas(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub(super) servers: Servers,
    pub(super) prefix: String,
    pub(super) replicas: usize,
    pub(super) retention: usize,
    pub(super) retention_bytes: usize,
    pub(super) max_age: Duration,
    pub(super) file_storage: bool,
    pub(super) duplicate_window: Duration,
    pub(super) max_pending: usize,
    pub(super) max_pending_bytes: usize,
    pub(super) reconnect_min: Duration,
    pub(super) reconnect_max: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) credentials: Credentials,
}

/// The servers' URLs, shown without passwords.
#[derive(Clone)]
pub(super) struct Servers(pub(super) Vec<String>);

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|url| redact(url)))
            .finish()
    }
}

/// How the backplane authenticates. Secrets are never shown (`Debug` has `***`).
#[derive(Debug, Clone)]
pub(super) enum Credentials {
    None,
    UserPassword(String, Secret),
    Token(Secret),
    File(PathBuf),
}

/// A password or token: shown as `***`.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl NatsConfig {
    /// The defaults (see [`NatsBuilder`]) for `servers`.
    fn defaults(servers: Servers) -> Self {
        NatsConfig {
            servers,
            prefix: "websocket-handler".into(),
            replicas: 1,
            retention: 10_000,
            retention_bytes: 16 << 20,
            max_age: Duration::from_secs(24 * 3600),
            file_storage: true,
            duplicate_window: Duration::from_secs(120),
            max_pending: 10_000,
            max_pending_bytes: 64 << 20,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            credentials: Credentials::None,
        }
    }

    /// The servers' URLs, as given to [`NatsBuilder::new`], one each. (`Debug` and the logs
    /// show them without a password.)
    pub fn servers(&self) -> &[String] {
        &self.servers.0
    }

    /// [`NatsBuilder::prefix`].
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// [`NatsBuilder::replicas`].
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// [`NatsBuilder::retention`]: messages, bytes and age.
    pub fn retention(&self) -> (usize, usize, Duration) {
        (self.retention, self.retention_bytes, self.max_age)
    }

    /// [`NatsBuilder::file_storage`].
    pub fn file_storage(&self) -> bool {
        self.file_storage
    }

    /// [`NatsBuilder::duplicate_window`].
    pub fn duplicate_window(&self) -> Duration {
        self.duplicate_window
    }

    /// [`NatsBuilder::max_pending`].
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// [`NatsBuilder::max_pending_bytes`].
    pub fn max_pending_bytes(&self) -> usize {
        self.max_pending_bytes
    }

    /// [`NatsBuilder::reconnect_backoff`]: the shortest and the longest wait.
    pub fn reconnect_backoff(&self) -> (Duration, Duration) {
        (self.reconnect_min, self.reconnect_max)
    }

    /// [`NatsBuilder::connect_timeout`].
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// [`NatsBuilder::response_timeout`].
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// The servers as logs show them: passwords in URLs replaced by `***`.
    pub(super) fn shown_servers(&self) -> String {
        self.servers
            .0
            .iter()
            .map(|url| redact(url))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `url` with the password of its user information (`nats://user:password@host`), if any,
/// replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{scheme}://{}:***{}", &authority[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact("nats://ann:s3cret@host:4222"),
            "nats://ann:***@host:4222"
        );
        assert_eq!(redact("nats://tok@host"), "nats://tok@host");
        let config = NatsBuilder::new("nats://a:s3cret@h")
            .user_and_password("bob", "hunter2")
            .config;
        let shown = format!("{config:?} {}", config.shown_servers());
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
        let config = NatsBuilder::new("nats://h").token("t0ken").config;
        assert!(!format!("{config:?}").contains("t0ken"));
    }

    #[test]
    fn settings_are_kept_within_their_bounds() {
        let config = NatsBuilder::new("nats://h")
            .replicas(9)
            .retention(0, 0, Duration::ZERO)
            .reconnect_backoff(Duration::ZERO, Duration::ZERO)
            .duplicate_window(Duration::ZERO)
            .config;
        assert_eq!(config.replicas(), 5);
        assert_eq!(config.retention(), (1, 1, Duration::ZERO));
        assert!(config.reconnect_min > Duration::ZERO);
        assert!(config.reconnect_max >= config.reconnect_min);
        assert_eq!(config.duplicate_window(), Duration::from_secs(1));
        let config = NatsBuilder::new(" nats://a:1, nats://b:2,,").config;
        assert_eq!(config.servers(), ["nats://a:1", "nats://b:2"]);
    }
}

//! What the engine needs to know of the server's settings, per connection.

use std::time::Duration;

use crate::engine::rate_limit::RateLimit;
use crate::protocol::deflate::DeflateSettings;

/// The per-connection part of the server's [`Config`](crate::Config): sizes, bounds and
/// timers. Copied into each connection's task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) write_buffer_size: usize,
    pub(crate) outbound_queue_capacity: usize,
    pub(crate) outbound_queue_bytes: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) close_timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) kept_header_bytes: usize,
    pub(crate) message_timeout: Duration,
    /// Bytes per second.
    pub(crate) min_message_rate: u32,
    /// Whether permessage-deflate is offered to clients that ask, and how it compresses.
    pub(crate) deflate_on: bool,
    pub(crate) deflate: DeflateSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_size: 64 * 1024,
            max_frame_size: 64 * 1024,
            read_buffer_size: 16 * 1024,
            write_buffer_size: 64 * 1024,
            outbound_queue_capacity: 1024,
            outbound_queue_bytes: 1024 * 1024,
            slow_consumer: SlowConsumer::Disconnect,
            close_timeout: Duration::from_secs(5),
            ping_interval: Some(Duration::from_secs(15)),
            idle_timeout: Some(Duration::from_secs(30)),
            rate_limit: None,
            kept_header_bytes: 4 * 1024,
            message_timeout: Duration::from_secs(30),
            min_message_rate: 1024,
            deflate_on: false,
            deflate: DeflateSettings::default(),
        }
    }
}

/// What happens to a client whose outbound queue is full: it is not reading as fast as
/// messages are sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Close the connection with 1008 (policy violation) and report
    /// [`Error::SlowConsumer`](crate::Error::SlowConsumer) to its handler. What was queued
    /// for it is dropped, the close frame goes out next, and the connection ends within the
    /// close timeout even if the client never reads again. The default: a client that
    /// cannot keep up would otherwise silently miss messages.
    #[default]
    Disconnect,
    /// Keep the connection and drop the messages that do not fit:
    /// [`Connection::send`](crate::Connection::send) returns
    /// [`SendError::QueueFull`](crate::SendError::QueueFull) and broadcasts skip the client.
    DropMessages,
}

/// A duration kept per connection, in whole milliseconds: four bytes instead of a
/// `Duration`'s sixteen, in what every idle connection holds. Parts of a millisecond are
/// dropped; longer than about 49 days counts as 49 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Millis(u32);

impl Millis {
    pub(crate) fn new(duration: Duration) -> Self {
        Millis(u32::try_from(duration.as_millis()).unwrap_or(u32::MAX))
    }

    pub(crate) fn get(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }

    pub(crate) fn as_u32(self) -> u32 {
        self.0
    }
}

//! What went wrong on a connection, and why a send was refused.
//!
//! The errors of other steps live with them: `HandshakeError` in
//! [`protocol::handshake`](crate::protocol::handshake), `QueryError` in the query parser,
//! `EnvelopeError` in the backplane.

use std::time::Duration;

use crate::protocol::close::CloseCode;
use crate::protocol::decode::DecodeError;

/// Why a connection failed. Passed to [`WebSocketHandler::on_error`](crate::WebSocketHandler::on_error).
///
/// Each variant maps to the close code the server sends (see [`Error::close_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer sent a message or frame larger than the configured limit. Closed with 1009.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Size of the message (or frame) as far as it was read.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer sent a text message that is not valid UTF-8. Closed with 1007.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// The peer broke the WebSocket protocol (RFC 6455). Closed with 1002.
    #[error("WebSocket protocol violation: {reason}")]
    Protocol {
        /// What the peer did wrong.
        reason: String,
    },
    /// The peer sent messages faster than [`Config::rate_limit`](crate::Config::rate_limit)
    /// allows. Closed with 1008.
    #[error("peer sent messages faster than {per_second} per second")]
    RateLimited {
        /// The configured average rate.
        per_second: u32,
    },
    /// The connection's handler panicked; the connection is closed with 1011 (internal
    /// error), and every other connection carries on.
    #[error("the connection's handler panicked: {message}")]
    HandlerPanicked {
        /// The panic's message, when it was a string.
        message: String,
    },
    /// The peer did not read fast enough: its outbound queue reached its bound, and the
    /// [`SlowConsumer::Disconnect`](crate::SlowConsumer::Disconnect) policy closed it with
    /// 1008.
    #[error("peer is not reading fast enough: its outbound queue is full ({messages} messages, {bytes} bytes)")]
    SlowConsumer {
        /// Messages queued when the bound was reached.
        messages: usize,
        /// Payload bytes queued when the bound was reached.
        bytes: usize,
    },
    /// The peer dropped the TCP connection without a close frame (close code 1006).
    #[error("peer closed the connection without a close frame")]
    AbruptClose,
    /// The peer sent nothing, not even a pong, for the configured idle timeout; the
    /// connection is dropped without a close handshake (the peer is presumed gone).
    #[error("peer sent nothing for {0:?}")]
    IdleTimeout(Duration),
    /// A message began to arrive and did not finish in time: within
    /// [`ServerBuilder::message_timeout`](crate::ServerBuilder::message_timeout), or later
    /// only while it kept up [`min_message_rate`](crate::ServerBuilder::min_message_rate).
    /// Closed with 1008: a client that trickles a message it never ends holds the server's
    /// memory.
    #[error("message not finished in time: {received} bytes in {elapsed:?}")]
    MessageTimeout {
        /// How long the message had been arriving.
        elapsed: Duration,
        /// Its bytes so far.
        received: usize,
    },
    /// The server's budget for partially received messages
    /// ([`ServerBuilder::max_partial_bytes`](crate::ServerBuilder::max_partial_bytes)) was
    /// spent and this connection held the most of it: it was refused further bytes and
    /// closed with 1013 (try again later).
    #[error("the server's budget of {budget} bytes for partial messages is spent, and this connection held the most")]
    PartialBudget {
        /// The budget, in bytes.
        budget: usize,
    },
    /// The peer did not answer our close frame in time.
    #[error("peer did not complete the close handshake within {0:?}")]
    CloseTimeout(Duration),
    /// The socket failed.
    #[error("I/O error on the connection: {0}")]
    Io(#[source] std::io::Error),
}

impl Error {
    /// The close code the server sends to the peer for this error, if a close frame can still
    /// be sent at all.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::MessageTooLarge { .. } => Some(CloseCode::MESSAGE_TOO_BIG),
            Error::InvalidUtf8 => Some(CloseCode::INVALID_PAYLOAD),
            Error::Protocol { .. } => Some(CloseCode::PROTOCOL_ERROR),
            Error::SlowConsumer { .. }
            | Error::RateLimited { .. }
            | Error::MessageTimeout { .. } => Some(CloseCode::POLICY_VIOLATION),
            Error::PartialBudget { .. } => Some(CloseCode::TRY_AGAIN_LATER),
            Error::HandlerPanicked { .. } => Some(CloseCode::INTERNAL_ERROR),
            Error::AbruptClose | Error::IdleTimeout(_) | Error::CloseTimeout(_) | Error::Io(_) => {
                None
            }
        }
    }
}

impl From<DecodeError> for Error {
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::MessageTooLarge { size, max } => Error::MessageTooLarge {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                max,
            },
            DecodeError::InvalidUtf8 => Error::InvalidUtf8,
            DecodeError::Protocol(reason) => Error::Protocol {
                reason: reason.to_owned(),
            },
        }
    }
}

/// Why [`Connection::send`](crate::Connection::send) or
/// [`Connection::close`](crate::Connection::close) did not queue anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed or closing; nothing more can be sent on it.
    #[error("connection is closed")]
    Closed,
    /// The connection's outbound queue is full: the peer is not reading fast enough.
    #[error("outbound queue is full ({capacity} messages): the peer is not keeping up")]
    QueueFull {
        /// The configured queue bound.
        capacity: usize,
    },
    /// The close code may not be sent on the wire (for example 1005 or 1006).
    #[error("close code {0} may not be sent in a close frame")]
    InvalidCloseCode(u16),
    /// The close reason is longer than the 123 bytes a close frame can carry.
    #[error("close reason is {0} bytes; a close frame carries at most 123")]
    CloseReasonTooLong(usize),
}

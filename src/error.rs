//! Error types: what went wrong on a connection, on a send, and in a handshake.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::close::CloseCode;

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
    /// The peer did not answer our close frame in time.
    #[error("peer did not complete the close handshake within {0:?}")]
    CloseTimeout(Duration),
    /// The socket failed.
    #[error("I/O error on the connection: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The close code the server sends to the peer for this error, if a close frame can still
    /// be sent at all.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::MessageTooLarge { .. } => Some(CloseCode::MESSAGE_TOO_BIG),
            Error::InvalidUtf8 => Some(CloseCode::INVALID_PAYLOAD),
            Error::Protocol { .. } => Some(CloseCode::PROTOCOL_ERROR),
            Error::SlowConsumer { .. } | Error::RateLimited { .. } => {
                Some(CloseCode::POLICY_VIOLATION)
            }
            Error::HandlerPanicked { .. } => Some(CloseCode::INTERNAL_ERROR),
            Error::AbruptClose | Error::IdleTimeout(_) | Error::CloseTimeout(_) | Error::Io(_) => {
                None
            }
        }
    }

    pub(crate) fn from_tungstenite(error: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
        use tokio_tungstenite::tungstenite::Error as Ws;
        match error {
            Ws::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                Error::MessageTooLarge {
                    size,
                    max: max_size,
                }
            }
            Ws::Utf8(_) => Error::InvalidUtf8,
            Ws::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Error::AbruptClose,
            Ws::Io(io) => Error::Io(io),
            other => Error::Protocol {
                reason: other.to_string(),
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

/// Why an upgrade request was refused. Each variant has an HTTP status; see
/// [`HandshakeError::status`] and [`HandshakeError::to_response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The request method is not `GET` (405).
    #[error("WebSocket upgrade requires GET, got {0}")]
    MethodNotAllowed(http::Method),
    /// The request is not HTTP/1.1 (400): HTTP/1.0 cannot upgrade, and HTTP/2 upgrades (RFC 8441)
    /// are not supported.
    #[error("WebSocket upgrade requires HTTP/1.1, got {0:?}")]
    HttpVersion(http::Version),
    /// The `Connection` header does not contain `upgrade` (400).
    #[error("missing `Connection: upgrade` header")]
    MissingConnectionUpgrade,
    /// The `Upgrade` header does not contain `websocket` (400).
    #[error("missing `Upgrade: websocket` header")]
    MissingUpgradeWebSocket,
    /// `Sec-WebSocket-Version` is missing or not `13` (426, with `Sec-WebSocket-Version: 13`).
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing (400).
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    /// `Sec-WebSocket-Key` is not the base64 form of 16 bytes (400).
    #[error("invalid Sec-WebSocket-Key header (must be 16 bytes, base64-encoded)")]
    InvalidKey,
    /// The request did not come from a hyper server that can hand over the connection (500).
    /// Serve the connection with hyper's `with_upgrades()`.
    #[error("this connection cannot be upgraded (is the hyper connection served with_upgrades?)")]
    NotUpgradable,
    /// The request's `Origin` is not in [`Config::allowed_origins`](crate::Config::allowed_origins)
    /// (403): a page from another site tried to connect with the user's cookies.
    #[error("origin {0:?} is not allowed")]
    OriginNotAllowed(String),
    /// The server already holds [`Config::max_connections`](crate::Config::max_connections)
    /// connections (503).
    #[error("server is at its limit of {0} connections; try again later")]
    TooManyConnections(usize),
    /// The server is shutting down (503); see [`Shutdown`](crate::Shutdown).
    #[error("server is shutting down")]
    ShuttingDown,
}

impl HandshakeError {
    /// The HTTP status this rejection is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::NotUpgradable => StatusCode::INTERNAL_SERVER_ERROR,
            HandshakeError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            HandshakeError::TooManyConnections(_) | HandshakeError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HandshakeError::HttpVersion(_)
            | HandshakeError::MissingConnectionUpgrade
            | HandshakeError::MissingUpgradeWebSocket
            | HandshakeError::MissingKey
            | HandshakeError::InvalidKey => StatusCode::BAD_REQUEST,
        }
    }

    /// The plain-text HTTP response for this rejection, with the headers RFC 6455 and RFC 9110
    /// ask for (`Allow: GET` on 405, `Sec-WebSocket-Version: 13` on 426).
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(format!("{self}\n"))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            HandshakeError::MethodNotAllowed(_) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            HandshakeError::UnsupportedVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        response
    }
}

/// A query parameter could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// After percent-decoding, the value is not valid UTF-8.
    #[error("query parameter `{name}` is not valid UTF-8")]
    InvalidUtf8 {
        /// The parameter's name.
        name: String,
    },
}

/// Bytes from a backplane that are not a message envelope of this crate. Nothing is
/// delivered; the backplane reports and drops them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than the 26-byte envelope header.
    #[error("backplane message of {len} bytes is shorter than the 26-byte envelope header")]
    TooShort {
        /// Its length in bytes.
        len: usize,
    },
    /// Written by a different version of this crate's envelope format.
    #[error("backplane message has envelope version {0}; this build reads version 1")]
    UnknownVersion(u8),
    /// The message kind is neither text (1) nor binary (2).
    #[error("backplane message has unknown kind {0} (1 is text, 2 is binary)")]
    UnknownKind(u8),
    /// A text message, or a room name, that is not valid UTF-8.
    #[error("backplane message has text or a room name that is not valid UTF-8")]
    InvalidUtf8,
    /// The room name's length points past the end of the message.
    #[error("backplane message ends inside its room name")]
    Truncated,
    /// A message for one room of a `Rooms` on a collection's topic, or the other way
    /// round: two applications share a topic.
    #[error("backplane message for a {got} arrived on the topic of a {expected}; do two applications share the topic?")]
    WrongTarget {
        /// What the message is for: `room` or `collection`.
        got: &'static str,
        /// What subscribed to the topic.
        expected: &'static str,
    },
}

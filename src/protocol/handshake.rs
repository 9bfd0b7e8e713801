//! The opening handshake (RFC 6455 section 4.2): what makes an upgrade request valid, the
//! `Sec-WebSocket-Accept` answer, and the reasons a request is refused.

use http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Why an upgrade request was refused. Each variant has an HTTP status; see
/// [`HandshakeError::status`] and [`HandshakeError::to_response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// An HTTP/1.1 request whose method is not `GET` (405, with `Allow: GET`).
    #[error("WebSocket upgrade requires GET, got {0}")]
    MethodNotAllowed(http::Method),
    /// An HTTP/2 request whose method is not `CONNECT` (405, with `Allow: CONNECT`): over
    /// HTTP/2 a WebSocket is an extended CONNECT (RFC 8441).
    #[error("a WebSocket over HTTP/2 is opened with CONNECT, got {0}")]
    ConnectRequired(http::Method),
    /// The request is neither HTTP/1.1 nor HTTP/2 (400): HTTP/1.0 cannot upgrade.
    #[error("WebSocket upgrade requires HTTP/1.1 or HTTP/2, got {0:?}")]
    HttpVersion(http::Version),
    /// The `Connection` header does not contain `upgrade` (400).
    #[error("missing `Connection: upgrade` header")]
    MissingConnectionUpgrade,
    /// The `Upgrade` header does not contain `websocket` (400); over HTTP/2, the
    /// `:protocol` of the `CONNECT` is not `websocket`.
    #[error("missing `Upgrade: websocket` header (over HTTP/2: `:protocol` websocket)")]
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
    /// The client's address already holds
    /// [`ServerBuilder::max_connections_per_address`](crate::ServerBuilder::max_connections_per_address)
    /// connections (429, with `Retry-After`).
    #[error("too many connections from this address (limit {limit})")]
    AddressBusy {
        /// The limit per address.
        limit: u32,
    },
    /// The client's address opens connections faster than
    /// [`ServerBuilder::handshake_rate_per_address`](crate::ServerBuilder::handshake_rate_per_address)
    /// allows (429, with `Retry-After`).
    #[error("this address opens connections faster than {per_second} per second")]
    AddressRateLimited {
        /// The average rate allowed per address.
        per_second: u32,
    },
    /// The server is shutting down (503); see [`WebSocketServer::close_all`](crate::WebSocketServer::close_all).
    #[error("server is shutting down")]
    ShuttingDown,
}

impl HandshakeError {
    /// The HTTP status this rejection is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::MethodNotAllowed(_) | HandshakeError::ConnectRequired(_) => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::NotUpgradable => StatusCode::INTERNAL_SERVER_ERROR,
            HandshakeError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            HandshakeError::AddressBusy { .. } | HandshakeError::AddressRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
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
}

/// How a checked request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Accept {
    /// HTTP/1.1 Upgrade (RFC 6455): `101 Switching Protocols` with this
    /// `Sec-WebSocket-Accept`.
    Upgrade(HeaderValue),
    /// HTTP/2 extended CONNECT (RFC 8441): `200`, and the stream carries the WebSocket.
    Connect,
}

/// [`check_head`] on a whole request (the fuzz targets').
#[cfg(fuzzing)]
pub(crate) fn check_request<B>(
    request: &http::Request<B>,
    protocol: Option<&str>,
) -> Result<Accept, HandshakeError> {
    check_head(
        request.method(),
        request.version(),
        request.headers(),
        protocol,
    )
}

/// Checks an upgrade request's head, of either kind: an HTTP/1.1 `GET` with `Upgrade:
/// websocket`, or an HTTP/2 `CONNECT` whose `:protocol` (`protocol`, which HTTP servers keep
/// apart from the headers) is `websocket` (RFC 8441 section 5): there is no key to answer,
/// and `Sec-WebSocket-Version` must be 13 as over HTTP/1.1.
pub(crate) fn check_head(
    method: &http::Method,
    version: Version,
    headers: &HeaderMap,
    protocol: Option<&str>,
) -> Result<Accept, HandshakeError> {
    if version != Version::HTTP_2 {
        return check_upgrade(method, version, headers).map(Accept::Upgrade);
    }
    if method != http::Method::CONNECT {
        return Err(HandshakeError::ConnectRequired(method.clone()));
    }
    if !protocol.is_some_and(|protocol| protocol.eq_ignore_ascii_case("websocket")) {
        return Err(HandshakeError::MissingUpgradeWebSocket);
    }
    check_version(headers)?;
    Ok(Accept::Connect)
}

/// Exactly one `Sec-WebSocket-Version`, and it is 13.
fn check_version(headers: &HeaderMap) -> Result<(), HandshakeError> {
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(version), None) if version.as_bytes().trim_ascii() == b"13" => Ok(()),
        _ => Err(HandshakeError::UnsupportedVersion),
    }
}

/// [`check_upgrade`] on a whole request (the fuzz targets').
#[cfg(fuzzing)]
pub(crate) fn check_handshake<B>(
    request: &http::Request<B>,
) -> Result<HeaderValue, HandshakeError> {
    check_upgrade(request.method(), request.version(), request.headers())
}

/// Checks an HTTP/1.1 upgrade's method, version and headers (RFC 6455 section 4.2.1) and
/// returns the `Sec-WebSocket-Accept` value to answer with.
fn check_upgrade(
    method: &http::Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<HeaderValue, HandshakeError> {
    if method != http::Method::GET {
        return Err(HandshakeError::MethodNotAllowed(method.clone()));
    }
    if version != Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion(version));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::MissingUpgradeWebSocket);
    }
    check_version(headers)?;
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (None, _) => return Err(HandshakeError::MissingKey),
        (Some(key), None) => key.as_bytes().trim_ascii(),
        (Some(_), Some(_)) => return Err(HandshakeError::InvalidKey),
    };
    if !is_base64_of_16_bytes(key) {
        return Err(HandshakeError::InvalidKey);
    }
    HeaderValue::from_str(&derive_accept_key(key)).map_err(|_| HandshakeError::InvalidKey)
}

/// Whether any value of the (comma-separated list) header contains `token`, ignoring case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|list| {
                list.split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
            .unwrap_or(false)
    })
}

/// 16 bytes in base64 are 22 significant characters and `==`; the 22nd carries only
/// two bits, so it must be one of `AQgw`.
fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    let is_b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24
        && key[..21].iter().all(is_b64)
        && b"AQgw".contains(&key[21])
        && &key[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::is_base64_of_16_bytes;

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        assert!(is_base64_of_16_bytes(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_base64_of_16_bytes(b"dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_base64_of_16_bytes(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_base64_of_16_bytes(b"not a key at all, really"));
        assert!(!is_base64_of_16_bytes(b""));
    }
}

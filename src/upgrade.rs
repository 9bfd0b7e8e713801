//! The hyper 1.x upgrade adapter: handshake checks, the `101` answer, and handing the
//! upgraded socket to the connection driver.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::Instrument;

use crate::config::Config;
use crate::connection::{Connection, RequestParts};
use crate::driver;
use crate::error::HandshakeError;
use crate::handler::WebSocketHandler;
use crate::stream;

/// Answers a WebSocket upgrade request and, once hyper hands over the connection, runs it
/// with `handler`.
///
/// Returns `101 Switching Protocols` for a valid handshake, or the plain-text 4xx of the
/// [`HandshakeError`] that refused it (405 for a method other than GET, 400 for missing or
/// invalid `Connection`, `Upgrade` or `Sec-WebSocket-Key` headers, 426 with
/// `Sec-WebSocket-Version: 13` for another protocol version). A refused request never calls
/// the handler. Call it from inside a tokio runtime: the connection runs on a spawned task.
///
/// Works for any body type, so it fits a plain hyper `service_fn` and an axum handler alike
/// (axum's request is an `http::Request`). The hyper connection must be served with
/// `with_upgrades()`. If the request's extensions hold a [`SocketAddr`], it becomes the
/// connection's [`remote_addr`](Connection::remote_addr).
///
/// ```no_run
/// use std::convert::Infallible;
/// use async_trait::async_trait;
/// use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
/// use hyper_util::rt::TokioIo;
/// use websocket_handler::{upgrade, Config, Connection, Message, WebSocketHandler};
///
/// struct Echo;
///
/// #[async_trait]
/// impl WebSocketHandler for Echo {
///     async fn on_message(&mut self, conn: &Connection, message: Message) {
///         let _ = conn.send(message);
///     }
/// }
///
/// # async fn serve() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     stream.set_nodelay(true)?;
///     let service = service_fn(move |mut req: Request<Incoming>| async move {
///         req.extensions_mut().insert(peer);
///         Ok::<_, Infallible>(upgrade(req, &Config::default(), Echo))
///     });
///     tokio::spawn(
///         http1::Builder::new()
///             .serve_connection(TokioIo::new(stream), service)
///             .with_upgrades(),
///     );
/// }
/// # }
/// ```
pub fn upgrade<B, H>(request: Request<B>, config: &Config, handler: H) -> Response<Full<Bytes>>
where
    H: WebSocketHandler,
{
    match try_upgrade(request, config, handler) {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "refused WebSocket upgrade");
            error.to_response()
        }
    }
}

/// Like [`upgrade`], but hands back the [`HandshakeError`] of a refused request instead of
/// its response, for servers that answer refusals their own way.
pub fn try_upgrade<B, H>(
    mut request: Request<B>,
    config: &Config,
    handler: H,
) -> Result<Response<Full<Bytes>>, HandshakeError>
where
    H: WebSocketHandler,
{
    let accept_key = check_handshake(&request)?;
    let origin = request.headers().get(header::ORIGIN);
    if !config.origin_allowed(origin, request.headers().get(header::HOST)) {
        let origin = origin.map_or_else(String::new, |origin| {
            String::from_utf8_lossy(origin.as_bytes()).into_owned()
        });
        return Err(HandshakeError::OriginNotAllowed(origin));
    }
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return Err(HandshakeError::NotUpgradable);
    }
    // Counted from here until the connection ends.
    let permit = config.admit()?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or(HandshakeError::NotUpgradable)?;
    let protocol = config.choose_protocol(request.headers());

    let remote_addr = request.extensions().get::<SocketAddr>().copied();
    let conn = Connection::new(
        RequestParts::detached(request.uri(), request.headers(), remote_addr),
        protocol.clone(),
        config,
    );
    drop(request);
    if let Some(shutdown) = config.get_shutdown() {
        shutdown.track(&conn)?;
    }
    let config = config.clone();
    // Everything the connection logs, the handler's own events included, carries its id
    // and the peer's address.
    let span = match conn.remote_addr() {
        Some(remote) => tracing::info_span!("websocket", id = %conn.id(), %remote),
        None => tracing::info_span!("websocket", id = %conn.id()),
    };
    let connection = async move {
        match on_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                // A plain TCP socket: its halves need no lock between reading and writing.
                Ok(parts) => {
                    let (read, write) = parts.io.into_inner().into_split();
                    let read = stream::leftover(parts.read_buf).chain(read);
                    driver::run(read, write, conn, handler, config, permit).await
                }
                Err(upgraded) => {
                    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                    driver::run(read, write, conn, handler, config, permit).await
                }
            },
            Err(error) => {
                tracing::debug!(%error, "HTTP upgrade did not complete");
                conn.mark_closed();
            }
        }
    };
    tokio::spawn(connection.instrument(span));

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    Ok(response)
}

/// Checks the handshake headers (RFC 6455 section 4.2.1) and returns the
/// `Sec-WebSocket-Accept` value to answer with.
pub(crate) fn check_handshake<B>(request: &Request<B>) -> Result<HeaderValue, HandshakeError> {
    if request.method() != http::Method::GET {
        return Err(HandshakeError::MethodNotAllowed(request.method().clone()));
    }
    if request.version() != Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion(request.version()));
    }
    let headers = request.headers();
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::MissingUpgradeWebSocket);
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(version), None) if version.as_bytes().trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
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

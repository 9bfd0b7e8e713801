//! Behind axum (cargo feature `axum`): [`WebSocketUpgrade`] as an extractor, and
//! [`HandshakeError`] as its rejection.

use axum::extract::{FromRef, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use hyper::upgrade::OnUpgrade;

use crate::protocol::handshake::HandshakeError;
use crate::server::listener::ListenerLink;
use crate::server::upgrade::WebSocketUpgrade;
use crate::server::WebSocketServer;

/// Checks the handshake of the request as [`WebSocketServer::check_upgrade`] does, with the
/// [`WebSocketServer`] of the router's state (`WebSocketServer: FromRef<S>`: the state itself,
/// or a field marked `#[from_ref]`). A request that is no valid upgrade is answered with the
/// [`HandshakeError`]'s response. The peer's address comes from axum's
/// `ConnectInfo<SocketAddr>` (serve the router with `into_make_service_with_connect_info`).
///
/// ```
/// use axum::{extract::Query, routing::any, Router};
/// use http::StatusCode;
/// use websocket_handler::{Body, Connection, Message, WebSocketHandler, WebSocketServer, WebSocketUpgrade};
///
/// struct Echo;
///
/// impl WebSocketHandler for Echo {
///     async fn on_message(&mut self, conn: &Connection, message: Message) {
///         let _ = conn.send(message);
///     }
/// }
///
/// async fn ws(upgrade: WebSocketUpgrade) -> http::Response<Body> {
///     match upgrade.headers().get("authorization") {
///         Some(_) => upgrade.accept(Echo),
///         None => upgrade.refuse(StatusCode::UNAUTHORIZED, "log in first\n"),
///     }
/// }
///
/// let router: Router = Router::new()
///     .route("/ws", any(ws)) // `any`: over HTTP/2 a WebSocket is a CONNECT
///     .with_state(WebSocketServer::new());
/// ```
impl<S> FromRequestParts<S> for WebSocketUpgrade
where
    WebSocketServer: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = HandshakeError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let server = WebSocketServer::from_ref(state);
        let on_upgrade = parts.extensions.remove::<OnUpgrade>();
        let listener = parts.extensions.remove::<ListenerLink>();
        server.check_parts(
            parts.method.clone(),
            parts.version,
            parts.uri.clone(),
            parts.headers.clone(),
            &parts.extensions,
            on_upgrade,
            listener,
        )
    }
}

/// The refusal's status, headers and plain-text body (see [`HandshakeError::to_response`]).
impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        tracing::debug!(error = %self, "refused WebSocket upgrade");
        self.to_response().map(axum::body::Body::new)
    }
}

//! TLS (cargo feature `tls`): HTTPS with HTTP/2 and HTTP/1.1 on one listener, with rustls.
//!
//! A [`TlsConfig`] is made once, from PEM files ([`pem`]) or from a rustls `ServerConfig`
//! ([`config`]); a [`ConnectionSlot`](crate::ConnectionSlot) serves one accepted connection
//! over it, its handshake within the handshake timeout and its HTTP version chosen by ALPN
//! ([`connection`]); [`serve_tls`](crate::WebSocketServer::serve_tls) is `serve`'s accept
//! loop over it ([`serve`]).

pub(crate) mod config;
pub(crate) mod connection;
#[cfg(fuzzing)]
pub(crate) mod fuzzing;
pub(crate) mod pem;
pub(crate) mod serve;
pub(crate) mod stream;

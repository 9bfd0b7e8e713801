//! The protocol layer: what RFC 6455 says, as plain types and pure functions.
//!
//! Close codes and close frames, whole messages and their text type, the encoding of the
//! frames a server sends, the checks of an upgrade request, and reading a URL query. Nothing
//! here knows about tokio, sockets, connections or collections: every other layer builds on
//! this one, and this one imports no other.

pub(crate) mod close;
pub(crate) mod frame;
pub(crate) mod handshake;
pub(crate) mod message;
pub(crate) mod query;

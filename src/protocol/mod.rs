//! The protocol layer: what RFC 6455 says, as plain types and pure functions.
//!
//! Close codes and close frames, whole messages and their text type, the decoding of the
//! frames a client sends and the encoding of those a server sends, UTF-8 validation as bytes
//! arrive, the checks of an upgrade request, reading a URL query, and permessage-deflate
//! (RFC 7692: negotiating it, compressing, bounded inflating). Nothing here knows about
//! tokio, sockets, connections or collections: every other layer builds on this one, and
//! this one imports no other.

pub(crate) mod close;
pub(crate) mod decode;
pub(crate) mod deflate;
pub(crate) mod forwarded;
pub(crate) mod frame;
pub(crate) mod handshake;
pub(crate) mod message;
pub(crate) mod query;
pub(crate) mod utf8;

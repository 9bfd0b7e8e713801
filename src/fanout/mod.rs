//! The fan-out layer: sets of connections to broadcast to ([`collection`]), keyed sets of
//! them ([`rooms`]), the [`history`] of their broadcasts for clients that resume, and the
//! hooks a backplane plugs into to carry them between processes ([`relay`]).
//!
//! A broadcast is encoded once here and pushed into every member's queue; the engine writes
//! it. This layer knows connections and the engine, never a particular backplane or HTTP.

pub(crate) mod collection;
pub(crate) mod frames;
pub(crate) mod history;
pub(crate) mod relay;
pub(crate) mod replay_frames;
pub(crate) mod rooms;

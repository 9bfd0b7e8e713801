//! The engine: how one connection's bytes move, and nothing about what they mean to the
//! application.
//!
//! Per connection, a bounded outbound queue ([`queue`]) that many producers fill and one
//! writer at a time empties into the socket ([`writer`]), the state around them
//! ([`core`]), flushing after a broadcast ([`flush`]), the read side ([`reader`]), and what
//! the connection's own task runs: the protocol's answers, the timers and the limits of a
//! live connection ([`session`], [`keepalive`], [`rate_limit`], on the millisecond
//! [`clock`]), with the [`metrics`] they count into, the [`poller`] that watches plain
//! sockets (chosen in [`tcp`]), what a server's connections share
//! ([`shared`]: the [`settings`], the counters, the [`budget`]), and giving memory back after
//! a storm ([`memory`]). Crate-internal; the engine knows the protocol layer and
//! nothing of connections' handles, handlers, collections, backplanes or HTTP.

pub(crate) mod batch_pool;
pub(crate) mod budget;
pub(crate) mod clock;
pub(crate) mod core;
pub(crate) mod flush;
pub(crate) mod id;
pub(crate) mod keepalive;
pub(crate) mod kept;
pub(crate) mod memory;
pub(crate) mod metrics;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) mod poller;
pub(crate) mod queue;
pub(crate) mod rate_limit;
pub(crate) mod reader;
pub(crate) mod session;
pub(crate) mod settings;
pub(crate) mod shared;
pub(crate) mod sync;
pub(crate) mod tcp;
pub(crate) mod writer;

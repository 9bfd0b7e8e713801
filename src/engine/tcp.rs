//! A plain TCP socket's halves once its connection is a WebSocket: in the crate's own
//! [`poller`](crate::engine::poller) on Linux and Android (where mio's epoll set is a
//! descriptor tokio can watch), tokio's own halves elsewhere. The one place that chooses.

use std::io;

use tokio::net::TcpStream;

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use crate::engine::poller::{PolledRead as TcpRead, PolledWrite as TcpWrite};
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) use tokio::net::tcp::{OwnedReadHalf as TcpRead, OwnedWriteHalf as TcpWrite};

/// `socket`'s halves. On Linux the socket leaves tokio's reactor for the poller, where an
/// idle one costs a fraction of what tokio's registration does.
pub(crate) fn split(socket: TcpStream) -> io::Result<(TcpRead, TcpWrite)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return crate::engine::poller::Poller::current()?.adopt(socket);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return Ok(socket.into_split());
}

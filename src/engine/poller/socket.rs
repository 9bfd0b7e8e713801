//! A socket in the [`Poller`](super::Poller), and the halves a connection reads and writes
//! it with.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::task::AtomicWaker;
use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::coop;

use super::Poller;

/// What the poller saw of a socket: bits of [`Watched::ready`].
#[derive(Clone, Copy)]
pub(super) struct Readiness(u8);

impl Readiness {
    const READ: u8 = 1;
    const WRITE: u8 = 2;
    /// Both: what the poller's end tells every socket, so that nothing waits on it.
    pub(super) const ALL: Readiness = Readiness(Self::READ | Self::WRITE);

    /// An end of the stream or an error counts as ready: the next read or write says which.
    pub(super) fn of(event: &Event) -> Readiness {
        let mut bits = 0;
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            bits |= Self::READ;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            bits |= Self::WRITE;
        }
        Readiness(bits)
    }
}

/// One socket in the poller, shared by the connection's read and write halves.
pub(super) struct Watched {
    socket: TcpStream,
    token: usize,
    poller: Arc<Poller>,
    /// [`Readiness`] bits the poller set since a half last looked: an event that came
    /// between a read that would block and the waker's registration is seen here.
    ready: AtomicU8,
    /// The write half shut the sending direction down: dropping it need not. Here, in
    /// what was padding, rather than beside the write half's pointer, where it would
    /// make the half (and every connection's writer) a word bigger.
    write_shut: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Watched {
    pub(super) fn new(socket: TcpStream, token: usize, poller: Arc<Poller>) -> Self {
        Watched {
            socket,
            token,
            poller,
            ready: AtomicU8::new(0),
            write_shut: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        }
    }

    /// Adds the socket to the epoll set, edge-triggered, for both directions.
    pub(super) fn register(&self, registry: &Registry) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        registry.register(
            &mut SourceFd(&fd),
            Token(self.token),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Called by the poller's task: notes `readiness` and wakes who waits for it.
    pub(super) fn ready(&self, readiness: Readiness) {
        self.ready.fetch_or(readiness.0, Ordering::AcqRel);
        if readiness.0 & Readiness::READ != 0 {
            self.reader.wake();
        }
        if readiness.0 & Readiness::WRITE != 0 {
            self.writer.wake();
        }
    }

    /// Runs `attempt` until it does not block; when it would, waits for the poller to see
    /// the `bit` direction ready again.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        bit: u8,
        mut attempt: impl FnMut(&TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        // Within the task's budget, as tokio's own sockets are: a connection that always
        // has input must still let the other tasks of its thread run.
        let coop = ready!(coop::poll_proceed(cx));
        loop {
            match attempt(&self.socket) {
                Ok(done) => {
                    coop.made_progress();
                    return Poll::Ready(Ok(done));
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let waker = if bit == Readiness::READ {
                        &self.reader
                    } else {
                        &self.writer
                    };
                    waker.register(cx.waker());
                    // Ready since the attempt: try again rather than wait for an event
                    // that has already come.
                    if self.ready.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
                        continue;
                    }
                    if !self.poller.running() {
                        return Poll::Ready(Err(io::Error::other(
                            "the runtime that watched this socket has shut down",
                        )));
                    }
                    return Poll::Pending;
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let fd = self.socket.as_raw_fd();
        // Closing the socket would remove it from the set as well; deregistering first
        // keeps the set's view exact until the token is reused.
        let _ = self.poller.registry.deregister(&mut SourceFd(&fd));
        self.poller.release(self.token);
    }
}

/// The read and write halves of `watched`.
pub(super) fn halves(watched: Arc<Watched>) -> (PolledRead, PolledWrite) {
    (PolledRead(watched.clone()), PolledWrite(watched))
}

/// The half a connection's task reads with.
pub(crate) struct PolledRead(Arc<Watched>);

/// The half the connection's writer writes with. Like tokio's `OwnedWriteHalf`, it shuts
/// the socket's sending direction down when dropped, if that was not done before. One
/// pointer, so that a connection's writer holds it in two words with its other kind of
/// stream (see `WriteIo`).
pub(crate) struct PolledWrite(Arc<Watched>);

impl Drop for PolledWrite {
    fn drop(&mut self) {
        if !self.0.write_shut.load(Ordering::Acquire) {
            let _ = self.0.socket.shutdown(Shutdown::Write);
        }
    }
}

impl AsyncRead for PolledRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The engine reads into initialised scratch: this costs nothing there.
        let unfilled = buf.initialize_unfilled();
        let read = ready!(self
            .0
            .poll_io(cx, Readiness::READ, |mut socket| socket.read(unfilled)))?;
        buf.advance(read);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PolledWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0
            .poll_io(cx, Readiness::WRITE, |mut socket| socket.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_io(cx, Readiness::WRITE, |mut socket| {
            socket.write_vectored(bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = self.0.socket.shutdown(Shutdown::Write);
        if shut.is_ok() {
            self.0.write_shut.store(true, Ordering::Release);
        }
        Poll::Ready(shut)
    }
}

//! The write side of a connection: queued frames go to the socket with vectored writes,
//! header and payload straight from the queue, no copy.
//!
//! Writing is arranged without a task per connection. Whoever finds a connection's queue
//! idle when queueing ([`Pushed::MustFlush`]) makes sure it gets flushed: `send` flushes at
//! once, and a broadcast hands all the connections it found idle to a few flush tasks, which
//! write to each in turn, oldest broadcast first. Those writes never wait: when a socket is
//! full, the connection's own task takes over and waits for it (a slow client never holds
//! up a flush task, nor any other client).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::AsyncWrite;

use crate::connection::{lock, Connection, Shared};
use crate::outbound::{Outbound, Pushed};

/// Most slices handed to one vectored write (Linux allows 1024).
const MAX_SLICES: usize = 128;

/// Writes up to this size are copied together and sent with one plain write.
const SMALL_WRITE: usize = 1024;

/// Connections flushed by one flush task: big enough that spawning is cheap next to the
/// writes, small enough that a broadcast to thousands spreads over every core.
const FLUSH_CHUNK: usize = 128;

/// The socket's write half and what has been taken from the queue but not yet written.
pub(crate) struct WriteSide {
    io: Pin<Box<dyn AsyncWrite + Send>>,
    in_flight: VecDeque<Outbound>,
    /// Bytes of `in_flight[0]` already written.
    written: usize,
    /// Most bytes handed to one write.
    max_write: usize,
    /// A close frame (ours, or the answer to the peer's) is written: nothing more may be.
    closed: bool,
    failed: bool,
}

/// Why the writing stopped for good.
pub(crate) enum WriteEnd {
    /// A close frame is on the wire.
    Closed,
    /// The socket failed.
    Failed,
}

impl WriteSide {
    pub(crate) fn new(io: Pin<Box<dyn AsyncWrite + Send>>, max_write: usize) -> Self {
        WriteSide {
            io,
            in_flight: VecDeque::new(),
            written: 0,
            max_write: max_write.max(1),
            closed: false,
            failed: false,
        }
    }

    /// Writes until the queue is empty (`Ready(None)`), the socket is full (`Pending`), or
    /// writing ended for good.
    fn poll_write_queue(
        &mut self,
        shared: &Shared,
        cx: &mut Context<'_>,
    ) -> Poll<Option<WriteEnd>> {
        if self.failed {
            return Poll::Ready(Some(WriteEnd::Failed));
        }
        loop {
            if self.in_flight.is_empty() {
                // Flush before looking for more: the queue may be marked idle only once all
                // is on the wire. Marked idle while a flush is pending, a producer could poll
                // the socket with another waker and strand this one (buffering transports).
                match self.io.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Some(self.fail(shared))),
                    Poll::Pending => return Poll::Pending,
                }
                if self.closed {
                    return Poll::Ready(Some(WriteEnd::Closed));
                }
                if shared.queue.take(&mut self.in_flight) {
                    continue;
                }
                // Idle: give the buffer back; an idle connection should hold no queue memory.
                self.in_flight = VecDeque::new();
                return Poll::Ready(None);
            }

            let mut slices = Vec::with_capacity(MAX_SLICES.min(2 * self.in_flight.len()));
            let mut skip = self.written;
            let mut gathered = 0;
            for item in &self.in_flight {
                if slices.len() >= MAX_SLICES - 1 || gathered >= self.max_write {
                    break;
                }
                gathered += item.slices(skip, &mut slices);
                skip = 0;
            }
            let polled = if gathered <= SMALL_WRITE {
                // Typical at low rates: one small frame. A plain send of a copy is cheaper
                // in the kernel than a vectored write.
                let mut small = [0u8; SMALL_WRITE];
                let mut at = 0;
                for slice in &slices {
                    small[at..at + slice.len()].copy_from_slice(slice);
                    at += slice.len();
                }
                self.io.as_mut().poll_write(cx, &small[..at])
            } else {
                self.io.as_mut().poll_write_vectored(cx, &slices)
            };
            drop(slices);
            let wrote = match polled {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Some(self.fail(shared)))
                }
                Poll::Ready(Ok(wrote)) => wrote,
                Poll::Pending => return Poll::Pending,
            };
            self.advance(wrote, shared);
        }
    }

    /// Drops the items `wrote` bytes completed.
    fn advance(&mut self, wrote: usize, shared: &Shared) {
        let mut done = self.written + wrote;
        let (mut messages, mut payload) = (0, 0);
        while let Some(front) = self.in_flight.front() {
            let len = front.len();
            if done < len {
                break;
            }
            done -= len;
            match self.in_flight.pop_front() {
                Some(Outbound::Data(frame)) => {
                    messages += 1;
                    payload += frame.payload().len() as u64;
                }
                // `take` put nothing behind a close frame.
                Some(Outbound::Close(close)) => {
                    shared.close_written(close.0);
                    self.closed = true;
                }
                Some(Outbound::Reply(_)) => self.closed = true,
                _ => {}
            }
        }
        if messages > 0 {
            // Once per write, not per message: the counters are shared.
            shared.metrics.sent(shared.id, messages, payload);
        }
        self.written = done;
    }

    fn fail(&mut self, shared: &Shared) -> WriteEnd {
        self.failed = true;
        self.in_flight.clear();
        shared.queue.stop();
        WriteEnd::Failed
    }
}

impl Connection {
    /// Writes what is queued without waiting; a full socket is handed to the connection's
    /// own task.
    pub(crate) fn flush_now(&self) {
        let shared = self.shared();
        let mut side = lock(&shared.write_side);
        let Some(side) = side.as_mut() else {
            // Not connected yet: the driver flushes once the socket is in place.
            return;
        };
        if shared.queue.is_handed_over() {
            // The connection's task is writing and waiting for the socket; polling it here
            // would replace the waker it waits with.
            return;
        }
        if side
            .poll_write_queue(shared, &mut Context::from_waker(Waker::noop()))
            .is_pending()
        {
            shared.queue.hand_over();
        }
    }

    /// Acts on what queueing returned.
    pub(crate) fn after_push(&self, pushed: Pushed) {
        if pushed == Pushed::MustFlush {
            self.flush_now();
        }
    }

    /// The connection task's share of writing: finishes flushes handed over to it, waiting
    /// for the socket. Returns when writing has ended for good.
    pub(crate) async fn write_handed_over(&self) -> WriteEnd {
        loop {
            std::future::poll_fn(|cx| self.shared().queue.poll_handed_over(cx)).await;
            if let Some(end) = self.write_queue().await {
                return end;
            }
        }
    }

    /// Writes until the queue is empty, waiting for the socket as needed. Returns `Some` if
    /// writing has ended for good.
    pub(crate) async fn write_queue(&self) -> Option<WriteEnd> {
        std::future::poll_fn(|cx| {
            let shared = self.shared();
            match lock(&shared.write_side).as_mut() {
                Some(side) => side.poll_write_queue(shared, cx),
                None => Poll::Ready(Some(WriteEnd::Failed)),
            }
        })
        .await
    }
}

/// Flushes connections a broadcast found idle, spread over a few tasks so that every core
/// helps; inline when called outside a tokio runtime.
pub(crate) fn flush_all(mut connections: Vec<Connection>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        connections.iter().for_each(Connection::flush_now);
        return;
    };
    // In order, so that connections that have waited longest are written first.
    while !connections.is_empty() {
        let rest = connections.split_off(connections.len().min(FLUSH_CHUNK));
        let chunk = std::mem::replace(&mut connections, rest);
        // Unconstrained: tokio's cooperative budget would otherwise report writable sockets
        // as full after a hundred or so writes, and hand them over for nothing.
        runtime.spawn(tokio::task::unconstrained(async move {
            chunk.iter().for_each(Connection::flush_now)
        }));
    }
}

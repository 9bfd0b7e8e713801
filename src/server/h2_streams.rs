//! Ending an HTTP/2 WebSocket stream on the wire once its WebSocket is over.
//!
//! hyper hands an upgraded HTTP/2 stream over as an `Upgraded` whose writes go through a
//! task of hyper's own (its "upgraded send stream task"), which owns the stream's sending
//! half. When the WebSocket ends and the `Upgraded` is dropped, that task still sends what
//! it holds before it ends the stream; a client that stopped reading never gives it the
//! flow-control window to do so, and the task, the stream, and what h2 buffers for it then
//! live as long as the TCP connection. `Upgraded` cannot reset its stream.
//!
//! hyper spawns that task through the connection's executor, from inside the poll of the
//! stream's own task, right after it got the response. So the listener serves HTTP/2 with
//! [`StreamExecutor`], which runs every stream task with a thread-local marker set while it
//! is polled, and the listener's service hands the response's [`StreamLink`] (put there by
//! `try_upgrade`) to that marker when the response is ready. The next task spawned from
//! that poll is the send task: it runs wrapped in [`UpgradedTask`], which drops it once
//! the WebSocket has ended and a grace period (the close timeout) has passed. Dropping the
//! last handle of an open h2 stream makes h2 send `RST_STREAM` (`CANCEL`) and free what it
//! had buffered for it.
//!
//! If a hyper version spawned the task some other way, the link is simply never armed: the
//! stream then ends with its connection (the listener's idle timeout).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::engine::sync::lock;

/// The executor of the listener's HTTP/2 connections (see the module's doc).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamExecutor;

/// What the thread is polling, as far as this module is concerned.
#[derive(Default)]
enum Polling {
    /// Anything but a stream task.
    #[default]
    Other,
    /// A stream task; with the link of the WebSocket its response opened, once it is ready.
    Stream(Option<StreamLink>),
}

thread_local! {
    static POLLING: Cell<Polling> = const { Cell::new(Polling::Other) };
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        match POLLING.with(Cell::take) {
            Polling::Other => {
                // hyper spawns a stream's task from the connection's poll.
                tokio::spawn(StreamTask { future });
            }
            Polling::Stream(link) => {
                // Spawned from a stream's poll: the send task of the stream just upgraded.
                POLLING.with(|polling| polling.set(Polling::Stream(None)));
                match link {
                    Some(link) => tokio::spawn(UpgradedTask {
                        future,
                        link,
                        grace: None,
                    }),
                    None => tokio::spawn(future),
                };
            }
        }
    }
}

/// Called by the listener's service when a response is ready: if it opened a WebSocket
/// stream, its link goes to the send task that hyper spawns next in this poll.
pub(crate) fn response_ready(link: StreamLink) {
    POLLING.with(|polling| match polling.take() {
        Polling::Stream(_) => polling.set(Polling::Stream(Some(link))),
        // Not in a stream's task (HTTP/1.1, or hyper changed): nothing to arm.
        other => polling.set(other),
    });
}

pin_project_lite::pin_project! {
    /// One stream's task, polled with the marker set.
    struct StreamTask<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future<Output = ()>> Future for StreamTask<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let before = POLLING.with(|polling| polling.replace(Polling::Stream(None)));
        let polled = self.project().future.poll(cx);
        // A link not taken (a response that opened no send task) goes with the marker.
        POLLING.with(|polling| polling.set(before));
        polled
    }
}

/// The link between a WebSocket over an HTTP/2 stream and hyper's send task for it.
#[derive(Clone, Debug)]
pub(crate) struct StreamLink(Arc<LinkState>);

#[derive(Debug)]
struct LinkState {
    /// How long the send task may go on once the WebSocket has ended.
    grace: Duration,
    inner: Mutex<Link>,
}

#[derive(Debug, Default)]
struct Link {
    ended: bool,
    /// The send task, waiting to hear that the WebSocket has ended.
    waker: Option<Waker>,
}

impl StreamLink {
    pub(crate) fn new(grace: Duration) -> Self {
        StreamLink(Arc::new(LinkState {
            grace,
            inner: Mutex::new(Link::default()),
        }))
    }

    /// The guard the WebSocket's lease holds: dropped when the WebSocket has ended.
    pub(crate) fn guard(&self) -> StreamGuard {
        StreamGuard(self.clone())
    }
}

/// Held by the WebSocket until it has ended; then the stream's send task gets its grace.
#[derive(Debug)]
pub(crate) struct StreamGuard(StreamLink);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let waker = {
            let mut link = lock(&self.0 .0.inner);
            link.ended = true;
            link.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// hyper's send task for one WebSocket stream, dropped (resetting the stream) if it is
    /// still running a grace period after the WebSocket ended.
    struct UpgradedTask<F> {
        #[pin]
        future: F,
        link: StreamLink,
        grace: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future<Output = ()>> Future for UpgradedTask<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.project();
        if me.future.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if me.grace.is_none() {
            let state = &me.link.0;
            let mut link = lock(&state.inner);
            if !link.ended {
                link.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            *me.grace = Some(Box::pin(tokio::time::sleep(state.grace)));
        }
        let Some(grace) = me.grace.as_mut() else {
            return Poll::Pending;
        };
        if grace.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        tracing::debug!("HTTP/2 stream of an ended WebSocket still sending: reset");
        // Returning drops the send task: h2 resets the stream and frees its buffer.
        Poll::Ready(())
    }
}

//! A poller of the crate's own for the plain TCP sockets of WebSocket connections.
//!
//! tokio's reactor gives every socket a registration of 256 bytes aligned to 128 bytes
//! (and with glibc 2.36, which carves an aligned block out of a larger one, often a free
//! fragment of 112 bytes in front of it that nothing reuses), and the halves of
//! `TcpStream::into_split` share one more allocation. A WebSocket holds its socket for
//! hours, mostly idle, so those bytes are a large part of what an idle connection costs.
//! Once the handshake is done, a plain connection's socket leaves tokio's reactor for this
//! one: one epoll set per runtime (mio's `Poll`), itself registered with tokio once and
//! watched by one task, and per socket one small shared allocation, [`Watched`]: the
//! socket, its token, two wakers and the readiness the task saw.
//!
//! The task reads the epoll set when tokio says it is readable and wakes the readers and
//! writers of the sockets that are ready. A read or write first tries the socket and only
//! waits when the kernel says it would block, so a broadcast's writes never pass through
//! the task; only waiting for data or for room in a full socket does.

mod socket;

pub(crate) use socket::{PolledRead, PolledWrite};

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mio::{Events, Poll, Registry};
use tokio::io::unix::AsyncFd;
use tokio::runtime::{Handle, Id};
use tokio::sync::oneshot;

use crate::engine::sync::lock;
use socket::{Readiness, Watched};

/// Events read from the epoll set at a time.
const EVENTS: usize = 256;

/// The poller of each runtime that has one: a poller's task runs on its runtime, and a
/// socket must be watched by a task that lives as long as it does.
static POLLERS: Mutex<Vec<(Id, Weak<Poller>)>> = Mutex::new(Vec::new());

/// One epoll set and what its task needs to find the sockets in it.
pub(crate) struct Poller {
    registry: Registry,
    /// The sockets by token: a token is an index here.
    slots: Mutex<Slots>,
    /// Dropped with the poller, which ends its task. (Not an event in the epoll set: one
    /// that comes as the set's last socket leaves could be lost with it.)
    _stop: oneshot::Sender<()>,
    /// False once the task has ended (its runtime shut down): sockets can no longer wait.
    running: AtomicBool,
}

#[derive(Default)]
struct Slots {
    watched: Vec<Weak<Watched>>,
    /// Indexes of `watched` free for the next socket.
    free: Vec<usize>,
}

impl Poller {
    /// The current runtime's poller, made (and its task spawned) on first use.
    pub(crate) fn current() -> io::Result<Arc<Poller>> {
        let handle = Handle::try_current().map_err(io::Error::other)?;
        let id = handle.id();
        let mut pollers = lock(&POLLERS);
        pollers.retain(|(_, poller)| poller.upgrade().is_some_and(|poller| poller.running()));
        let found = pollers.iter().find(|(of, _)| *of == id);
        if let Some(poller) = found.and_then(|(_, poller)| poller.upgrade()) {
            return Ok(poller);
        }
        let poll = Poll::new()?;
        let (stop, stopped) = oneshot::channel();
        let poller = Arc::new(Poller {
            registry: poll.registry().try_clone()?,
            slots: Mutex::new(Slots::default()),
            _stop: stop,
            running: AtomicBool::new(true),
        });
        // `with_interest` is deprecated since tokio 1.51.6 for types that could close their
        // descriptor while registered; `Poll` owns its epoll descriptor for its whole life,
        // and the replacement is not in every tokio this crate allows.
        #[allow(deprecated)]
        let watching = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
        let ended = Ended(Arc::downgrade(&poller));
        handle.spawn(watch(watching, Arc::downgrade(&poller), stopped, ended));
        pollers.push((id, Arc::downgrade(&poller)));
        Ok(poller)
    }

    fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Takes `socket` out of tokio's reactor into this poller, split into the halves a
    /// connection reads and writes with. On an error the socket is closed.
    pub(crate) fn adopt(
        self: Arc<Self>,
        socket: tokio::net::TcpStream,
    ) -> io::Result<(PolledRead, PolledWrite)> {
        // Non-blocking, as tokio left it.
        let socket = socket.into_std()?;
        let watched = {
            let mut slots = lock(&self.slots);
            let token = slots.free.pop().unwrap_or(slots.watched.len());
            let watched = Arc::new(Watched::new(socket, token, self.clone()));
            // Listed before it is registered, so that no event of it finds the slot empty.
            let listed = Arc::downgrade(&watched);
            match slots.watched.get_mut(token) {
                Some(slot) => *slot = listed,
                None => slots.watched.push(listed),
            }
            watched
        };
        // Outside the lock: on an error `watched` is dropped, which releases its token.
        watched.register(&self.registry)?;
        Ok(socket::halves(watched))
    }

    /// Frees `token` for another socket; its socket is being dropped.
    fn release(&self, token: usize) {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.watched.get_mut(token) {
            *slot = Weak::new();
            slots.free.push(token);
        }
    }

    /// Wakes the readers and writers of the sockets `events` names. The sockets are
    /// collected under the lock and woken (and possibly dropped) after it.
    fn dispatch(&self, events: &Events, ready: &mut Vec<(Arc<Watched>, Readiness)>) {
        {
            let slots = lock(&self.slots);
            for event in events {
                let found = slots.watched.get(event.token().0).and_then(Weak::upgrade);
                if let Some(watched) = found {
                    ready.push((watched, Readiness::of(event)));
                }
            }
        }
        for (watched, readiness) in ready.drain(..) {
            watched.ready(readiness);
        }
    }

    /// Every socket, woken so that its waiting reader and writer find the poller ended.
    fn wake_all(&self) {
        let all: Vec<Arc<Watched>> = lock(&self.slots)
            .watched
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for watched in all {
            watched.ready(Readiness::ALL);
        }
    }
}

/// Marks its poller ended however the poller's task ends: the runtime's shutdown
/// included, even before the task first ran (it is an argument of the task's future, so
/// it is dropped with it).
struct Ended(Weak<Poller>);

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(poller) = self.0.upgrade() {
            poller.running.store(false, Ordering::Release);
            poller.wake_all();
        }
    }
}

/// The poller's task: reads the epoll set whenever tokio reports it readable, until the
/// poller is dropped (`stopped`).
async fn watch(
    mut watching: AsyncFd<Poll>,
    poller: Weak<Poller>,
    mut stopped: oneshot::Receiver<()>,
    _ended: Ended,
) {
    let mut events = Events::with_capacity(EVENTS);
    let mut ready = Vec::new();
    loop {
        let mut guard = tokio::select! {
            biased;
            _ = &mut stopped => return,
            ready = watching.readable_mut() => match ready {
                Ok(guard) => guard,
                Err(_) => return,
            },
        };
        match guard
            .get_inner_mut()
            .poll(&mut events, Some(Duration::ZERO))
        {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::error!(%error, "the WebSocket sockets' poller failed");
                return;
            }
        }
        let count = events.iter().count();
        if count < EVENTS {
            // Read to the end: wait for tokio to say there is more. An event that came
            // after the read keeps the readiness set (tokio compares its ticks).
            guard.clear_ready();
        }
        if count == 0 {
            continue;
        }
        let Some(poller) = poller.upgrade() else {
            return;
        };
        poller.dispatch(&events, &mut ready);
    }
}

#[cfg(test)]
mod tests;

//! Flushing many connections at once, after a broadcast, and holding those flushes back
//! while a connection's task handles what it has read ([`Corked`]).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::engine::core::Core;

/// Connections flushed by one flush task: big enough that spawning is cheap next to the
/// writes, small enough that a broadcast to thousands spreads over every core.
pub(crate) const FLUSH_CHUNK: usize = 128;

/// Most broadcasts whose flushes one poll of a corked task holds back: what a connection
/// can have queued by then, so far below any queue's bound.
const MOST_HELD: u32 = 16;

/// Something that has a connection's [`Core`]: how upper layers hand connections to
/// [`flush_all`] without the engine knowing their types.
pub(crate) trait HasCore: Send + 'static {
    fn core(&self) -> &Core;
}

/// Flushes held back by the corked task being polled on this thread.
#[derive(Default)]
struct Held {
    flushes: Vec<Box<dyn FnOnce() + Send>>,
    broadcasts: u32,
}

thread_local! {
    /// `Some` while a corked task is polled on this thread.
    static CORK: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Flushes connections a broadcast found idle, spread over a few tasks so that every core
/// helps; inline when called outside a tokio runtime. While a corked task is polled, held
/// back until its poll ends (or [`MOST_HELD`] broadcasts), so that messages it broadcasts
/// one after the other go out in one write to each connection.
pub(crate) fn flush_all<C: HasCore>(connections: Vec<C>) {
    let mut connections = Some(connections);
    let release = CORK.with(|cork| {
        let Ok(mut cork) = cork.try_borrow_mut() else {
            return None;
        };
        let held = cork.as_mut()?;
        if let Some(connections) = connections.take().filter(|c| !c.is_empty()) {
            held.flushes.push(Box::new(move || flush_now(connections)));
        }
        held.broadcasts += 1;
        (held.broadcasts >= MOST_HELD).then(|| std::mem::take(held))
    });
    if let Some(held) = release {
        held.flushes.into_iter().for_each(|flush| flush());
    }
    if let Some(connections) = connections {
        flush_now(connections);
    }
}

/// [`flush_all`] at once.
fn flush_now<C: HasCore>(mut connections: Vec<C>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        connections.iter().for_each(|c| c.core().flush_now());
        return;
    };
    // In order, so that connections that have waited longest are written first.
    while !connections.is_empty() {
        let rest = connections.split_off(connections.len().min(FLUSH_CHUNK));
        let chunk = std::mem::replace(&mut connections, rest);
        // Unconstrained: tokio's cooperative budget would otherwise report writable sockets
        // as full after a hundred or so writes, and hand them over for nothing.
        runtime.spawn(tokio::task::unconstrained(async move {
            chunk.iter().for_each(|c| c.core().flush_now())
        }));
    }
}

pin_project_lite::pin_project! {
    /// A connection's task, whose broadcasts' flushes wait for the end of each poll: the
    /// messages it reads together go out together, as one write to each connection.
    pub(crate) struct Corked<F> {
        #[pin]
        future: F,
    }
}

impl<F> Corked<F> {
    pub(crate) fn new(future: F) -> Self {
        Corked { future }
    }
}

/// Ends a cork, however the poll ends (a panic included): what it held is flushed.
struct Uncork {
    owner: bool,
}

impl Drop for Uncork {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let held = CORK.with(|cork| cork.try_borrow_mut().ok().and_then(|mut c| c.take()));
        if let Some(held) = held {
            held.flushes.into_iter().for_each(|flush| flush());
        }
    }
}

impl<F: Future> Future for Corked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let owner = CORK.with(|cork| match cork.try_borrow_mut() {
            Ok(mut cork) if cork.is_none() => {
                *cork = Some(Held::default());
                true
            }
            _ => false,
        });
        let _uncork = Uncork { owner };
        self.project().future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::{poll_fn, Future};
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::{flush_all, Corked, HasCore, MOST_HELD};
    use crate::engine::core::Core;
    use crate::engine::shared::Shared;

    /// A connection whose flushes are counted (each asks for its core once).
    struct Counted(Arc<Core>, Arc<AtomicUsize>);

    impl HasCore for Counted {
        fn core(&self) -> &Core {
            self.1.fetch_add(1, Ordering::Relaxed);
            &self.0
        }
    }

    /// Polls `body` once inside a cork (outside a runtime: flushes are made inline).
    fn corked(body: impl FnMut() + Unpin) {
        let mut body = body;
        let future = pin!(Corked::new(poll_fn(move |_| {
            body();
            Poll::Ready(())
        })));
        assert!(future
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready());
    }

    #[test]
    fn a_corked_polls_flushes_wait_for_its_end_and_others_do_not() {
        let core = Arc::new(Core::new(&Shared::for_tests()));
        let flushed = Arc::new(AtomicUsize::new(0));
        let one = || vec![Counted(core.clone(), flushed.clone())];
        corked(|| {
            flush_all(one());
            flush_all(Vec::<Counted>::new());
            flush_all(one());
            assert_eq!(flushed.load(Ordering::Relaxed), 0, "held while polled");
        });
        assert_eq!(
            flushed.load(Ordering::Relaxed),
            2,
            "flushed as the poll ended"
        );
        flush_all(one());
        assert_eq!(flushed.load(Ordering::Relaxed), 3, "uncorked: at once");
    }

    #[test]
    fn a_cork_lets_go_after_its_most_broadcasts() {
        let core = Arc::new(Core::new(&Shared::for_tests()));
        let flushed = Arc::new(AtomicUsize::new(0));
        corked(|| {
            for _ in 0..MOST_HELD {
                flush_all(vec![Counted(core.clone(), flushed.clone())]);
            }
            assert_eq!(flushed.load(Ordering::Relaxed), MOST_HELD as usize);
            flush_all(vec![Counted(core.clone(), flushed.clone())]);
            assert_eq!(flushed.load(Ordering::Relaxed), MOST_HELD as usize);
        });
        assert_eq!(flushed.load(Ordering::Relaxed), MOST_HELD as usize + 1);
    }
}

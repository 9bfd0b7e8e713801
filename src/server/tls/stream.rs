//! [`TlsStream`]: a server's TLS session over a socket, on rustls's unbuffered API, holding
//! no buffer while idle.
//!
//! rustls's own buffered connection keeps a receive buffer (4 KiB and more) and send and
//! plaintext queues for the whole life of each connection; an idle WebSocket would pay them
//! all. Here reads go into a scratch buffer of the thread, and a connection keeps only what
//! one read left over: the start of a record (the rest has not arrived), plaintext its
//! reader had no room for, records the socket would not take yet. Each is freed once used
//! up, so an idle connection holds its keys and nothing else.
//!
//! A write encrypts what it is given (up to one record, 16 KiB, joined from the slices of a
//! vectored write) into the thread's buffer and writes it with one system call; only what
//! the socket did not take is kept, and written before anything else.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most plaintext one write takes: one TLS record, the largest there is.
const MAX_PLAINTEXT: usize = 16 * 1024;

/// A record's encryption adds at most this (header, explicit nonce, padding and tag; TLS
/// 1.3 adds 22 bytes, TLS 1.2's CBC suites, which rustls does not have, would add more).
const RECORD_OVERHEAD: usize = 256;

/// Most bytes one read takes from the socket: one whole record of the largest size.
pub(crate) const READ_SIZE: usize = MAX_PLAINTEXT + 2048 + 5;

/// Most input kept that does not yet make whole records: a handshake message, whose
/// records rustls joins before it can discard them, is at most 64 KiB; then one record.
pub(crate) const MAX_HELD_INPUT: usize = 0xffff + READ_SIZE;

/// Most records kept that the socket has not taken. A write adds at most one record and
/// only once the earlier ones are written; reading adds handshake messages, alerts and
/// key updates, which rustls bounds.
pub(crate) const MAX_HELD_OUTPUT: usize = 64 * 1024;

thread_local! {
    /// Each worker thread's buffer for reads from sockets: nothing held per connection.
    static READ: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Each worker thread's buffers for writes: the plaintext joined from a vectored
    /// write's slices, and the records encrypted from it.
    static WRITE: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Why a TLS session failed; given to the stream's reader and writer as an `io::Error`
/// with this as its source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// rustls refused what the peer sent (bad records, a failed handshake...).
    #[error("TLS error: {0}")]
    Rustls(#[from] rustls::Error),
    /// The peer keeps sending records that do not complete (a handshake message of more
    /// than 64 KiB, a record over the size limit): more than this many bytes would be held.
    #[error("TLS input not making whole records within {0} bytes")]
    InputOverLimit(usize),
    /// The peer makes us answer (alerts, key updates) faster than it reads.
    #[error("more than {0} bytes of TLS records waiting for the peer to read them")]
    OutputOverLimit(usize),
    /// rustls could not encrypt (its key is used up).
    #[error("TLS encryption failed: {0}")]
    Encrypt(EncryptError),
    /// The peer closed the connection during the handshake.
    #[error("the peer closed the connection during the TLS handshake")]
    HandshakeEof,
    /// The peer closed the connection in the middle of a record, or without `close_notify`.
    #[error("the peer closed the connection without TLS close_notify")]
    UnexpectedEof,
    /// A write after the session was closed.
    #[error("the TLS session is closed for writing")]
    WriteAfterClose,
    /// A read or write after the session failed.
    #[error("the TLS session failed earlier")]
    Failed,
    /// A write before the handshake was done.
    #[error("the TLS session cannot send yet")]
    NotReady,
}

impl From<TlsError> for io::Error {
    fn from(error: TlsError) -> Self {
        let kind = match error {
            TlsError::HandshakeEof | TlsError::UnexpectedEof => io::ErrorKind::UnexpectedEof,
            TlsError::WriteAfterClose | TlsError::Failed => io::ErrorKind::BrokenPipe,
            TlsError::NotReady => io::ErrorKind::NotConnected,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error)
    }
}

/// Bytes kept for later: one pointer, null (no allocation) when there are none, which is
/// the case of an idle connection.
#[derive(Default)]
struct Held(Option<Box<Bytes>>);

/// [`Held`]'s bytes, read from `at` on.
struct Bytes {
    bytes: Vec<u8>,
    at: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |held| held.bytes.len().saturating_sub(held.at))
    }

    fn pending(&self) -> &[u8] {
        match &self.0 {
            Some(held) => held.bytes.get(held.at..).unwrap_or_default(),
            None => &[],
        }
    }

    fn pending_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Some(held) => held.bytes.get_mut(held.at..).unwrap_or_default(),
            None => &mut [],
        }
    }

    /// `count` bytes are used up; the buffer is freed with the last.
    fn consume(&mut self, count: usize) {
        if let Some(held) = &mut self.0 {
            held.at = held.at.saturating_add(count);
        }
        if self.is_empty() {
            self.0 = None;
        }
    }

    /// The bytes, what was used up moved out first; made if there were none.
    fn bytes(&mut self) -> &mut Vec<u8> {
        let held = self.0.get_or_insert_with(|| {
            Box::new(Bytes {
                bytes: Vec::new(),
                at: 0,
            })
        });
        if held.at > 0 {
            let at = held.at.min(held.bytes.len());
            held.bytes.drain(..at);
            held.at = 0;
        }
        &mut held.bytes
    }

    /// Keeps `bytes` after what is kept already.
    fn append(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let held = self.bytes();
        if held.is_empty() {
            // Exactly what is kept, no more: this may stay a while.
            *held = bytes.to_vec();
        } else {
            held.extend_from_slice(bytes);
        }
    }

    /// Room for `len` more bytes at the end, zeroed, for rustls to write into.
    fn spare(&mut self, len: usize) -> &mut [u8] {
        let held = self.bytes();
        let start = held.len();
        held.resize(start + len, 0);
        &mut held[start..]
    }

    /// Drops the `unused` last bytes of what [`spare`](Self::spare) added.
    fn unspare(&mut self, unused: usize) {
        let held = self.bytes();
        held.truncate(held.len().saturating_sub(unused));
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// Where rustls's progress stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reached {
    /// The session can send (and, once the handshake is done, receive) application data;
    /// more input is needed to go on.
    Traffic,
    /// The handshake needs more input.
    Handshake,
    /// The peer sent `close_notify`: nothing more comes from it.
    PeerClosed,
}

/// Where the plaintext that rustls decrypts goes: the reader's buffer, then what is kept.
struct Plaintext<'a, 'b> {
    reader: Option<&'a mut ReadBuf<'b>>,
    kept: &'a mut Held,
}

impl Plaintext<'_, '_> {
    fn deliver(&mut self, mut payload: &[u8]) {
        if let Some(reader) = self.reader.as_deref_mut() {
            let now = payload.len().min(reader.remaining());
            reader.put_slice(&payload[..now]);
            payload = &payload[now..];
        }
        self.kept.append(payload);
    }
}

/// What [`advance`] calls once the session can send application data.
type Encrypt<'a> =
    &'a mut dyn FnMut(&mut WriteTraffic<'_, ServerConnectionData>) -> Result<(), TlsError>;

/// Runs rustls on `input` (what has arrived and was not yet used) until it needs more:
/// decrypted plaintext to `plaintext`, records to send (handshake messages, alerts) to
/// `outgoing`, and, if it can send application data, `encrypt` called with the session.
/// Returns the number of bytes of `input` used up, and where it stopped. On an error, the
/// alert rustls made of it is in `outgoing`.
fn advance(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    plaintext: &mut Plaintext<'_, '_>,
    outgoing: &mut Held,
    mut encrypt: Option<Encrypt<'_>>,
) -> Result<(usize, Reached), TlsError> {
    let mut used = 0;
    loop {
        let rest = input.get_mut(used..).unwrap_or_default();
        let UnbufferedStatus { discard, state } = conn.process_tls_records(rest);
        let state = match state {
            Ok(state) => state,
            Err(error) => {
                let rest = input.get_mut(used + discard..).unwrap_or_default();
                queue_alert(conn, rest, outgoing);
                return Err(error.into());
            }
        };
        let mut extra = 0;
        let reached = match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    extra += record.discard;
                    plaintext.deliver(record.payload);
                }
                None
            }
            ConnectionState::ReadEarlyData(mut early) => {
                // Only if the application's `ServerConfig` allows early data: it is the
                // stream's first bytes.
                while let Some(record) = early.next_record() {
                    let record = record?;
                    extra += record.discard;
                    plaintext.deliver(record.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, outgoing)?;
                None
            }
            // The records are in `outgoing`, which is written before anything else.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Reached::Handshake),
            ConnectionState::WriteTraffic(mut traffic) => {
                if let Some(encrypt) = encrypt.take() {
                    encrypt(&mut traffic)?;
                }
                Some(Reached::Traffic)
            }
            ConnectionState::PeerClosed => Some(Reached::PeerClosed),
            // Both sides have sent close_notify: nothing more is read.
            ConnectionState::Closed => Some(Reached::PeerClosed),
            // A state of a later rustls (a certificate to check...): none of this server's.
            _ => Some(Reached::Handshake),
        };
        used += discard + extra;
        if outgoing.len() > MAX_HELD_OUTPUT {
            return Err(TlsError::OutputOverLimit(MAX_HELD_OUTPUT));
        }
        if let Some(reached) = reached {
            return Ok((used.min(input.len()), reached));
        }
    }
}

/// After rustls failed: the alert it queued, at the end of `outgoing`. rustls hands its
/// queued records out before it looks at the input again, and only while there are some
/// (`wants_write`): it must not see the bad input twice.
fn queue_alert(conn: &mut UnbufferedServerConnection, input: &mut [u8], outgoing: &mut Held) {
    // An alert is one record; a few more at most.
    for _ in 0..4 {
        if !conn.wants_write() {
            return;
        }
        let UnbufferedStatus { state, .. } = conn.process_tls_records(input);
        let Ok(ConnectionState::EncodeTlsData(mut encode)) = state else {
            return;
        };
        if encode_into(&mut encode, outgoing).is_err() {
            return;
        }
    }
}

/// Encodes a handshake record (or alert) at the end of `outgoing`.
fn encode_into(
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
    outgoing: &mut Held,
) -> Result<(), TlsError> {
    let mut room = 1024;
    // Twice at most: the second time with the size rustls asked for.
    for _ in 0..2 {
        let spare = outgoing.spare(room);
        match encode.encode(spare) {
            Ok(written) => {
                outgoing.unspare(room - written.min(room));
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.unspare(room);
                room = required_size;
            }
            Err(EncodeError::AlreadyEncoded) => {
                outgoing.unspare(room);
                return Ok(());
            }
        }
    }
    Err(TlsError::OutputOverLimit(room))
}

/// Encrypts `plaintext` into the start of `sealed` (the thread's buffer: it only grows,
/// so that its bytes are not zeroed again for every write), as records of the session;
/// returns their length.
fn seal(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    plaintext: &[u8],
    sealed: &mut Vec<u8>,
) -> Result<usize, TlsError> {
    let mut room = plaintext.len() + RECORD_OVERHEAD;
    for _ in 0..2 {
        if sealed.len() < room {
            sealed.resize(room, 0);
        }
        match traffic.encrypt(plaintext, sealed) {
            Ok(written) => return Ok(written),
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(error) => return Err(TlsError::Encrypt(error)),
        }
    }
    Err(TlsError::OutputOverLimit(room))
}

/// One write of `bytes` to the socket. A vectored write of one slice: `writev` on a TCP
/// socket, as tokio-rustls's writes were, which the kernel counts as a write (`syscw` in
/// `/proc/PID/io`, what `bench/tls.py` counts) where a plain write is a `send` it does not.
fn write_to<I: AsyncWrite + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    bytes: &[u8],
) -> Poll<io::Result<usize>> {
    Pin::new(io).poll_write_vectored(cx, &[IoSlice::new(bytes)])
}

/// `f` with the thread's read buffer, or with one of its own if that is in use (a read
/// that came back here on the same thread) or gone (the thread is exiting).
fn with_read_buffer<R>(mut f: impl FnMut(&mut [u8]) -> R) -> R {
    let done = READ.try_with(|scratch| {
        let mut scratch = scratch.try_borrow_mut().ok()?;
        if scratch.len() < READ_SIZE {
            scratch.resize(READ_SIZE, 0);
        }
        Some(f(&mut scratch[..READ_SIZE]))
    });
    match done {
        Ok(Some(done)) => done,
        _ => f(&mut vec![0; READ_SIZE]),
    }
}

/// `f` with the thread's write buffers (for the plaintext joined, for the records), or
/// with buffers of its own, as [`with_read_buffer`].
fn with_write_buffers<R>(mut f: impl FnMut(&mut Vec<u8>, &mut Vec<u8>) -> R) -> R {
    let done = WRITE.try_with(|buffers| {
        let mut buffers = buffers.try_borrow_mut().ok()?;
        let (joined, sealed) = &mut *buffers;
        Some(f(joined, sealed))
    });
    match done {
        Ok(Some(done)) => done,
        _ => f(&mut Vec::new(), &mut Vec::new()),
    }
}

/// A server's TLS session over `io`: [`accept`](Self::accept) runs the handshake, then it is
/// an `AsyncRead + AsyncWrite` of the plaintext. See the module's documentation for what it
/// keeps.
pub(crate) struct TlsStream<I> {
    io: I,
    conn: UnbufferedServerConnection,
    /// Received bytes rustls could not use yet (the start of a record).
    input: Held,
    /// Decrypted bytes the reader had no room for.
    plaintext: Held,
    /// Records to send that the socket has not taken yet.
    outgoing: Held,
    /// The peer sent `close_notify`: reads give the end of the stream, once `plaintext` is
    /// read.
    read_closed: bool,
    /// The socket ended without `close_notify`: reads fail, once `plaintext` is read.
    truncated: bool,
    /// Our `close_notify` is queued: nothing more may be written, and what arrives is
    /// drained unread.
    close_notify_sent: bool,
    /// rustls failed: nothing more is read or written (but the alert).
    failed: bool,
}

impl<I: AsyncRead + AsyncWrite + Unpin> TlsStream<I> {
    /// The TLS handshake on `io` with `config`'s settings; the stream once it is done, and
    /// every record of ours (session tickets included) written.
    pub(crate) async fn accept(io: I, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Rustls)?;
        let mut stream = TlsStream {
            io,
            conn,
            input: Held::default(),
            plaintext: Held::default(),
            outgoing: Held::default(),
            read_closed: false,
            truncated: false,
            close_notify_sent: false,
            failed: false,
        };
        match poll_fn(|cx| stream.poll_handshake(cx)).await {
            Ok(()) => Ok(stream),
            Err(error) => {
                // The alert rustls made of the error, if the socket takes it now.
                let mut cx = Context::from_waker(Waker::noop());
                let _ = stream.poll_write_held(&mut cx);
                Err(error)
            }
        }
    }

    /// Bytes kept (partial input, plaintext not yet read, records not yet written): what
    /// the fuzz target bounds.
    #[cfg(any(fuzzing, test))]
    pub(crate) fn held_bytes(&self) -> usize {
        self.input.len() + self.plaintext.len() + self.outgoing.len()
    }

    /// The ALPN protocol the handshake agreed on, if any.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_held(cx))?;
            if self.failed {
                return Poll::Ready(Err(TlsError::Failed.into()));
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Err(TlsError::HandshakeEof.into()));
            }
            ready!(self.poll_read_records(cx, None))?;
        }
    }

    /// One read from the socket, and rustls on it: plaintext to `reader` first. `Ready`
    /// once something came of it (plaintext, progress of the handshake, the end).
    fn poll_read_records(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        with_read_buffer(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            let len = read.filled().len();
            if len == 0 {
                self.read_closed = true;
                // After our close_notify, the end of the socket is the end we wait for.
                self.truncated = !self.close_notify_sent;
                self.input = Held(None);
                return Poll::Ready(Ok(()));
            }
            if self.close_notify_sent {
                // Our side is closed: what still comes is drained unread, until the peer
                // closes the socket (reading on is what keeps the kernel from resetting a
                // socket closed with bytes unread). rustls is not given it: an error after
                // its close_notify trips a debug assertion of its own (it has "sent" its
                // one alert).
                self.input = Held(None);
                return Poll::Ready(Ok(()));
            }
            let mut plaintext = Plaintext {
                reader: reader.as_deref_mut(),
                kept: &mut self.plaintext,
            };
            let advanced = if self.input.is_empty() {
                // The usual case: whole records, processed where they were read.
                let input = &mut scratch[..len];
                let advanced = advance(
                    &mut self.conn,
                    input,
                    &mut plaintext,
                    &mut self.outgoing,
                    None,
                );
                if let Ok((used, _)) = advanced {
                    self.input.append(input.get(used..).unwrap_or_default());
                }
                advanced
            } else {
                self.input.append(&scratch[..len]);
                let advanced = advance(
                    &mut self.conn,
                    self.input.pending_mut(),
                    &mut plaintext,
                    &mut self.outgoing,
                    None,
                );
                if let Ok((used, _)) = advanced {
                    self.input.consume(used);
                }
                advanced
            };
            match advanced {
                Ok((_, reached)) => self.reached(reached),
                Err(error) => {
                    self.fail();
                    return Poll::Ready(Err(error.into()));
                }
            }
            if self.input.len() > MAX_HELD_INPUT {
                self.fail();
                return Poll::Ready(Err(TlsError::InputOverLimit(MAX_HELD_INPUT).into()));
            }
            Poll::Ready(Ok(()))
        })
    }

    fn reached(&mut self, reached: Reached) {
        if reached == Reached::PeerClosed {
            self.read_closed = true;
            // "Any data received after a closure alert has been received MUST be ignored."
            self.input = Held(None);
        }
    }

    /// After an error: nothing more is read or written but the alert, queued already.
    fn fail(&mut self) {
        self.failed = true;
        self.read_closed = true;
        self.input = Held(None);
        self.plaintext = Held(None);
    }

    /// Writes the records held, all of them, or `Pending`.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let wrote = ready!(write_to(&mut self.io, cx, self.outgoing.pending()))?;
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.consume(wrote);
        }
        Poll::Ready(Ok(()))
    }

    /// Runs rustls on the input held, with `encrypt` called once it can send.
    fn advance_held(&mut self, encrypt: Encrypt<'_>) -> Result<bool, TlsError> {
        let mut called = false;
        let mut wrapped = |traffic: &mut WriteTraffic<'_, ServerConnectionData>| {
            called = true;
            encrypt(traffic)
        };
        let mut plaintext = Plaintext {
            reader: None,
            kept: &mut self.plaintext,
        };
        let advanced = advance(
            &mut self.conn,
            self.input.pending_mut(),
            &mut plaintext,
            &mut self.outgoing,
            Some(&mut wrapped),
        );
        match advanced {
            Ok((used, reached)) => {
                self.input.consume(used);
                self.reached(reached);
                Ok(called)
            }
            Err(error) => {
                self.fail();
                Err(error)
            }
        }
    }

    /// Encrypts up to one record of `bufs` and writes it, or keeps what the socket does
    /// not take.
    fn poll_write_records(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_write_held(cx))?;
        if self.failed {
            return Poll::Ready(Err(TlsError::Failed.into()));
        }
        if self.close_notify_sent {
            return Poll::Ready(Err(TlsError::WriteAfterClose.into()));
        }
        let total = bufs
            .iter()
            .fold(0usize, |total, buf| total.saturating_add(buf.len()));
        let take = total.min(MAX_PLAINTEXT);
        if take == 0 {
            return Poll::Ready(Ok(0));
        }
        with_write_buffers(|joined, sealed| {
            // One slice (or a first one that covers it): encrypted as it is.
            let first = bufs.iter().find(|buf| !buf.is_empty());
            let plaintext: &[u8] = match first {
                Some(first) if first.len() >= take => &first[..take],
                _ => {
                    joined.clear();
                    for buf in bufs {
                        let room = take - joined.len();
                        joined.extend_from_slice(&buf[..buf.len().min(room)]);
                    }
                    joined
                }
            };
            let mut len = 0;
            let mut encrypt = |traffic: &mut WriteTraffic<'_, ServerConnectionData>| {
                len = seal(traffic, plaintext, sealed)?;
                Ok(())
            };
            if !self.advance_held(&mut encrypt)? {
                // Not after a successful handshake: the session cannot send yet.
                return Poll::Ready(Err(TlsError::NotReady.into()));
            }
            let sealed = sealed.get(..len).unwrap_or_default();
            if self.outgoing.is_empty() {
                match write_to(&mut self.io, cx, sealed) {
                    Poll::Ready(Ok(wrote)) => {
                        self.outgoing.append(&sealed[wrote.min(sealed.len())..])
                    }
                    Poll::Pending => self.outgoing.append(sealed),
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                }
            } else {
                // Records rustls queued come first.
                self.outgoing.append(sealed);
                if let Poll::Ready(Err(error)) = self.poll_write_held(cx) {
                    return Poll::Ready(Err(error));
                }
            }
            Poll::Ready(Ok(take))
        })
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.plaintext.is_empty() {
                let now = this.plaintext.len().min(buf.remaining());
                buf.put_slice(&this.plaintext.pending()[..now]);
                this.plaintext.consume(now);
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(TlsError::Failed.into()));
            }
            if this.truncated {
                return Poll::Ready(Err(TlsError::UnexpectedEof.into()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(this.poll_read_records(cx, Some(buf)))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_records(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_records(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// `close_notify`, then the socket's own shutdown (TCP's FIN).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent && !this.failed {
            this.close_notify_sent = true;
            let mut alert = [0u8; 64];
            let mut len = 0;
            let mut encrypt = |traffic: &mut WriteTraffic<'_, ServerConnectionData>| {
                len = traffic
                    .queue_close_notify(&mut alert)
                    .map_err(TlsError::Encrypt)?;
                Ok(())
            };
            // A session that cannot send (it failed) ends without one.
            let _ = this.advance_held(&mut encrypt);
            this.outgoing.append(&alert[..len.min(alert.len())]);
        }
        ready!(this.poll_write_held(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

    use super::{TlsStream, MAX_PLAINTEXT};

    /// The server's end of the pipe, counting the writes made to it.
    struct Counted {
        io: DuplexStream,
        writes: Arc<Mutex<Vec<usize>>>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let polled = Pin::new(&mut self.io).poll_write(cx, buf);
            if let Poll::Ready(Ok(wrote)) = polled {
                self.writes.lock().unwrap().push(wrote);
            }
            polled
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A session: the server's stream, the client's rustls connection and its end of the
    /// pipe, and the server's writes.
    async fn session() -> (
        TlsStream<Counted>,
        ClientConnection,
        DuplexStream,
        Arc<Mutex<Vec<usize>>>,
    ) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).expect("a key");
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("a server config");
        let mut roots = RootCertStore::empty();
        roots.add(cert).expect("trust it");
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("a name");
        let mut tls = ClientConnection::new(Arc::new(client), name).expect("a client");
        let (mut client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let server_io = Counted {
            io: server_io,
            writes: writes.clone(),
        };
        let accept = tokio::spawn(TlsStream::accept(server_io, Arc::new(server)));
        while tls.is_handshaking() {
            pump(&mut tls, &mut client_io).await;
        }
        // The client's Finished, and the session tickets that follow it.
        pump(&mut tls, &mut client_io).await;
        let stream = tokio::time::timeout(std::time::Duration::from_secs(10), accept)
            .await
            .expect("the handshake within 10 s")
            .expect("the task")
            .expect("the handshake");
        writes.lock().unwrap().clear();
        (stream, tls, client_io, writes)
    }

    /// What the client has to send, sent; what the server sent, read (once, if anything).
    async fn pump(tls: &mut ClientConnection, io: &mut DuplexStream) {
        let mut out = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut out).expect("client records");
        }
        io.write_all(&out).await.expect("to the server");
        let mut back = vec![0u8; 1 << 16];
        let read = tokio::time::timeout(std::time::Duration::from_millis(200), io.read(&mut back))
            .await
            .unwrap_or(Ok(0))
            .expect("from the server");
        let mut back = &back[..read];
        while !back.is_empty() {
            tls.read_tls(&mut back).expect("server records");
            tls.process_new_packets().expect("valid records");
        }
    }

    #[tokio::test]
    async fn a_vectored_batch_is_one_record_in_one_write_and_comes_out_whole() {
        let (mut stream, mut tls, mut io, writes) = session().await;
        let frames: Vec<Vec<u8>> = (0..50u8).map(|n| vec![n; 66]).collect();
        let slices: Vec<_> = frames.iter().map(|f| std::io::IoSlice::new(f)).collect();
        let wrote = stream.write_vectored(&slices).await.expect("a write");
        assert_eq!(wrote, 50 * 66);
        stream.flush().await.expect("a flush");
        // 3,300 bytes of plaintext: one record (22 bytes more in TLS 1.3), one write.
        assert_eq!(*writes.lock().unwrap(), [50 * 66 + 22]);
        pump(&mut tls, &mut io).await;
        let mut plain = vec![0u8; 50 * 66];
        tls.reader().read_exact(&mut plain).expect("the plaintext");
        assert_eq!(plain, frames.concat());
        assert_eq!(stream.held_bytes(), 0, "nothing kept once written");
    }

    #[tokio::test]
    async fn a_write_takes_one_record_at_most() {
        let (mut stream, _tls, _io, writes) = session().await;
        let big = vec![7u8; 40_000];
        let wrote = stream.write(&big).await.expect("a write");
        assert_eq!(wrote, MAX_PLAINTEXT);
        assert_eq!(writes.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn records_split_anywhere_are_read_whole_and_nothing_is_kept_after() {
        let (mut stream, mut tls, mut io, _writes) = session().await;
        let message: Vec<u8> = (0..20_000u32).map(|n| n as u8).collect();
        tls.writer().write_all(&message).expect("plaintext");
        let mut records = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut records).expect("records");
        }
        let mut read = Vec::new();
        // Split inside the first record's header, then inside the second record.
        for part in [&records[..3], &records[3..17_000], &records[17_000..]] {
            io.write_all(part).await.expect("to the server");
            let mut buf = [0u8; 1000];
            while read.len() < message.len() {
                let polled = tokio::time::timeout(
                    std::time::Duration::from_millis(50),
                    stream.read(&mut buf),
                )
                .await;
                match polled {
                    Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
                    Ok(Err(error)) => panic!("{error}"),
                    Err(_) => break,
                }
            }
        }
        assert_eq!(read, message);
        assert_eq!(stream.held_bytes(), 0, "nothing kept once read");
    }

    #[tokio::test]
    async fn garbage_after_the_handshake_is_an_error_not_a_panic_and_the_alert_goes_out() {
        let (mut stream, mut tls, mut io, _writes) = session().await;
        io.write_all(&[23, 3, 3, 0, 40])
            .await
            .expect("a record header");
        io.write_all(&[0u8; 40])
            .await
            .expect("a record that does not decrypt");
        let mut buf = [0u8; 100];
        let error = stream.read(&mut buf).await.expect_err("a bad record");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
        stream.flush().await.expect("the alert written");
        let mut back = vec![0u8; 100];
        let read = io.read(&mut back).await.expect("the alert");
        let _ = tls.read_tls(&mut &back[..read]);
        assert!(
            tls.process_new_packets().is_err(),
            "the client hears the alert"
        );
        assert!(
            stream.write(b"more").await.is_err(),
            "a failed session writes nothing"
        );
    }

    #[tokio::test]
    async fn after_our_close_notify_what_arrives_is_drained_and_the_end_is_clean() {
        let (mut stream, mut tls, mut io, _writes) = session().await;
        stream.shutdown().await.expect("close_notify");
        pump(&mut tls, &mut io).await;
        assert!(tls.process_new_packets().expect("fine").peer_has_closed());
        // Not even records: dropped unread, with no error.
        io.write_all(&[0xff; 300]).await.expect("garbage");
        drop(io);
        let mut buf = [0u8; 100];
        let read = stream.read(&mut buf).await.expect("a clean end");
        assert_eq!(read, 0);
    }
}

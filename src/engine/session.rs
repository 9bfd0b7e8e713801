//! A live connection, seen from its own task: reading and answering the protocol, the
//! timers (pings, the idle timeout, the close timeout), the inbound rate limit, and the
//! writes handed over to the task.
//!
//! The task either waits for the next message ([`Session::poll_next`]) or, while a handler
//! callback runs, keeps everything but the delivery of messages going
//! ([`Session::watch`]): pings go out, pongs and the peer's close are answered, writes
//! continue, and the timers run whatever the handler does.
//!
//! Reading goes on while a callback runs, so that the peer's pongs and its close frame are
//! heard: a busy handler is no reason to think a client dead. Messages read meanwhile are
//! held for the handler, at most two (`Backlog`); with two held, reading pauses (the
//! client is slowed down by TCP, a slow handler slows only its own client), and the idle
//! timeout does not count meanwhile: the peer's silence cannot be heard while nobody
//! listens. Once the close is under way, reading goes on whatever is held, to reach the
//! peer's close frame; messages beyond what may be held are then dropped.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::time::{Instant, Sleep};

use crate::engine::budget::Refusal;
use crate::engine::core::Core;
use crate::engine::keepalive::{Due, Intervals, KeepAlive};
use crate::engine::rate_limit::Bucket;
use crate::engine::reader::{ReadError, Reader, Reading};
use crate::engine::settings::{Millis, Settings};
use crate::engine::shared::Shared;
use crate::engine::writer::WriteEnd;
use crate::error::Error;
use crate::protocol::decode::{Item, Limits};
use crate::protocol::deflate::{self, InflateError};
use crate::protocol::message::Message;

/// What the connection's task gets from [`Session::poll_next`].
pub(crate) enum Event {
    /// A whole message for the handler.
    Message(Message),
    /// The connection is over.
    End(End),
}

/// How a connection ended, as far as the transport is concerned.
#[derive(Debug)]
pub(crate) enum End {
    /// The close handshake is done: both close frames are on the wire.
    Closed,
    /// The connection failed; the error says how.
    Failed(Error),
}

/// What a connection's task keeps between polls. Its settings (timeouts, limits) are the
/// server's, read through the connection's core; what only some connections need at some
/// times is in [`UnderWay`], allocated while they do.
pub(crate) struct Session<R> {
    reader: Reader<R>,
    keepalive: KeepAlive,
    /// The inbound rate limit's bucket, used when the server sets a limit.
    bucket: Bucket,
    /// Allocated while something is under way, dropped when nothing is.
    under_way: Option<Box<UnderWay>>,
    /// The peer's close frame has arrived: reading is over.
    peer_closed: bool,
    /// The writer has ended for good (a close frame is out).
    writes_ended: bool,
    /// Bytes arrived since the keep-alive last looked: the peer is alive.
    heard: bool,
    /// The close handshake is done ([`End::Closed`] was noted).
    closed_cleanly: bool,
}

/// What a connection holds only while it is under way: the close's timer, messages read
/// while a callback ran, and a message that takes more than one read (its deadline, and
/// its bytes counted against the server's budget). One allocation for all of them, made
/// when the first is needed, so that an idle connection holds one pointer for them.
#[derive(Default)]
struct UnderWay {
    /// Armed once the close has been asked for.
    close_timer: Option<Pin<Box<Sleep>>>,
    /// Messages read while a callback ran, for the next [`poll_next`](Session::poll_next)s.
    held: Option<Backlog>,
    /// The message in progress must finish by this deadline (see `poll_timers`).
    message: Option<MessageDeadline>,
    /// What this connection holds of the server's budget for partial messages.
    partial: Option<Held>,
    /// The first thing that went wrong: the connection is ending.
    failure: Option<Error>,
}

impl UnderWay {
    /// Nothing is under way: the allocation can go. A budget share goes once it is back
    /// to nothing, unless it was refused meanwhile (the connection must still see that).
    fn is_idle(&self) -> bool {
        self.close_timer.is_none()
            && self.held.is_none()
            && self.message.is_none()
            && self.failure.is_none()
            && self
                .partial
                .as_ref()
                .is_none_or(|held| held.bytes == 0 && !held.refusal.is_refused())
    }
}

/// The messages read while a callback runs and held for the handler, oldest first: at most
/// two, the one it gets next and one read ahead (so that the control frames behind the
/// first are heard). The one read ahead counts against the partial-message budget.
struct Backlog {
    first: Message,
    /// Read ahead behind `first`.
    then: Option<Message>,
}

/// What this connection holds of the server's budget for partial messages; given back when
/// dropped.
struct Held {
    /// The server's budget.
    shared: Arc<Shared>,
    /// Under this id in the budget.
    id: crate::engine::id::ConnectionId,
    /// How the budget tells this connection it must go.
    refusal: Arc<Refusal>,
    /// The bytes counted against the budget.
    bytes: usize,
}

impl Held {
    /// Counts `bytes` against the budget now.
    fn set(&mut self, bytes: usize) {
        if bytes != self.bytes {
            self.bytes = bytes;
            self.shared.budget.hold(self.id, &self.refusal, bytes);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// When the message in progress began to arrive, and its checks: every `window`, how much
/// of it has arrived.
struct MessageDeadline {
    started: Instant,
    timer: Pin<Box<Sleep>>,
    /// Its length at the last check.
    checked_len: usize,
}

/// How often a message that takes long is checked for progress.
const MESSAGE_WINDOW: Duration = Duration::from_secs(5);

/// After a failed connection's close frame: how long the peer may stay silent before the
/// socket is closed (see [`Session::write_close`]).
const LINGER_QUIET: Duration = Duration::from_secs(1);

impl<R: AsyncRead + Unpin> Session<R> {
    /// A session reading `read`, after `leftover` (bytes read along with the handshake), for
    /// the connection whose state is `core`.
    pub(crate) fn new(read: R, leftover: &[u8], core: &Core) -> Self {
        let settings = core.settings();
        let now = Instant::now();
        let keepalive = KeepAlive::new(now);
        core.set_keepalive_due(keepalive.due_stamp(intervals(settings), now));
        let full = settings
            .rate_limit
            .unwrap_or(crate::engine::rate_limit::RateLimit {
                per_second: 0.0,
                burst: 0.0,
            });
        Session {
            reader: Reader::new(read, leftover),
            keepalive,
            bucket: Bucket::new(full, now),
            under_way: None,
            peer_closed: false,
            writes_ended: false,
            heard: false,
            closed_cleanly: false,
        }
    }

    /// Notes how the connection ends: the close handshake done, or a failure (the first
    /// one counts).
    pub(crate) fn note(&mut self, end: End) {
        match end {
            End::Closed => self.closed_cleanly = true,
            End::Failed(error) => {
                self.under_way().failure.get_or_insert(error);
            }
        }
    }

    /// Whether the close handshake is done.
    pub(crate) fn closed_cleanly(&self) -> bool {
        self.closed_cleanly
    }

    /// Whether something went wrong (see [`take_failure`](Self::take_failure)).
    pub(crate) fn failed(&self) -> bool {
        self.under_way
            .as_ref()
            .is_some_and(|under_way| under_way.failure.is_some())
    }

    /// The first thing that went wrong, if anything did.
    pub(crate) fn take_failure(&mut self) -> Option<Error> {
        self.under_way.as_deref_mut()?.failure.take()
    }

    /// Whether reading was given up for good ([`close_read`](Self::close_read)).
    pub(crate) fn is_read_closed(&self) -> bool {
        self.reader.is_closed()
    }

    /// What is under way, made now if nothing was.
    fn under_way(&mut self) -> &mut UnderWay {
        self.under_way.get_or_insert_with(Box::default)
    }

    /// Lets go of what was under way if nothing is any more.
    fn tidy(&mut self) {
        if self.under_way.as_deref().is_some_and(UnderWay::is_idle) {
            self.under_way = None;
        }
    }

    /// The next message, or the end of the connection.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>, core: &Core) -> Poll<Event> {
        self.poll_event(cx, core, true)
    }

    /// Runs the connection while its handler is busy; resolves only when the connection is
    /// over (then the task must end it at once, without waiting for the handler).
    pub(crate) async fn watch(&mut self, core: &Core) -> End {
        poll_fn(|cx| match self.poll_event(cx, core, false) {
            Poll::Ready(Event::End(end)) => Poll::Ready(end),
            // A message is never delivered while watching: it is held instead.
            Poll::Ready(Event::Message(_)) | Poll::Pending => Poll::Pending,
        })
        .await
    }

    /// Ends a connection that failed: waits until our close frame is on the wire, then
    /// shuts the write half down and, unless the peer has closed too, lingers: reads and
    /// drops what it still sends until it ends the stream or falls quiet for
    /// `LINGER_QUIET`. All within the close timeout, or until the socket fails. What the
    /// peer sends meanwhile is dropped undecoded (the decoder may be what failed).
    ///
    /// Closing a socket with unread bytes, or that bytes reach after it is closed, makes
    /// the kernel answer with a reset, which destroys whatever is still on its way to the
    /// peer, our close frame included: as nginx does, this lingers instead.
    pub(crate) async fn write_close(&mut self, core: &Core) {
        let mut quiet = pin!(tokio::time::sleep(LINGER_QUIET));
        let mut lingering = false;
        poll_fn(|cx| {
            if self.poll_close_timer(cx, core).is_ready() {
                return Poll::Ready(());
            }
            if !self.writes_ended && !core.close_written() {
                if let Poll::Ready(end) = core.poll_write_handed_over(cx) {
                    self.writes_ended = true;
                    if let WriteEnd::Failed = end {
                        return Poll::Ready(());
                    }
                }
            }
            if !core.close_written() {
                // The peer's end of the stream only ends reading: it may still read ours.
                let _ = self.reader.poll_discard(cx, &mut self.heard);
                return Poll::Pending;
            }
            if core.poll_shutdown(cx).is_pending() {
                return Poll::Pending;
            }
            if self.peer_closed || self.reader.poll_discard(cx, &mut self.heard).is_ready() {
                return Poll::Ready(());
            }
            if std::mem::take(&mut self.heard) || !lingering {
                lingering = true;
                quiet.as_mut().reset(Instant::now() + LINGER_QUIET);
            }
            quiet.as_mut().poll(cx)
        })
        .await
    }

    /// Both close frames are on the wire: the write half is shut down (within the close
    /// timeout), and the connection is closed.
    fn poll_shut_down(&mut self, cx: &mut Context<'_>, core: &Core) -> Poll<Event> {
        if core.poll_shutdown(cx).is_pending() && self.poll_close_timer(cx, core).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Event::End(End::Closed))
    }

    /// Stops reading: the socket's read half goes, and with it what was half-received.
    pub(crate) fn close_read(&mut self) {
        self.reader.close();
        if let Some(under_way) = self.under_way.as_deref_mut() {
            // Gives the budget its share back.
            under_way.partial = None;
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>, core: &Core, deliver: bool) -> Poll<Event> {
        let event = self.poll_event_inner(cx, core, deliver);
        if event.is_pending() {
            self.tidy();
        }
        event
    }

    fn poll_event_inner(
        &mut self,
        cx: &mut Context<'_>,
        core: &Core,
        deliver: bool,
    ) -> Poll<Event> {
        if !self.writes_ended {
            if let Poll::Ready(end) = core.poll_write_handed_over(cx) {
                self.writes_ended = true;
                if let WriteEnd::Failed = end {
                    let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
                    return Poll::Ready(Event::End(End::Failed(Error::Io(broken))));
                }
            }
        }
        if self.peer_closed && core.close_written() {
            // The close handshake is done. What arrived before the peer's close still goes
            // to the handler: first, or, if a callback runs, once the connection has ended
            // (see `take_held`).
            if deliver {
                if let Some(message) = self.take_held() {
                    return Poll::Ready(Event::Message(message));
                }
            }
            return self.poll_shut_down(cx, core);
        }
        if let Poll::Ready(failure) = self.poll_timers(cx, core) {
            return Poll::Ready(Event::End(End::Failed(failure)));
        }
        if self
            .under_way
            .as_ref()
            .and_then(|under_way| under_way.partial.as_ref())
            .is_some_and(|held| held.refusal.poll_refused(cx))
        {
            let budget = core.shared.budget.limit();
            return Poll::Ready(Event::End(End::Failed(Error::PartialBudget { budget })));
        }
        if deliver {
            if let Some(message) = self.take_held() {
                // Fewer bytes held: never refused for it.
                let _ = self.count_held_bytes(cx);
                return Poll::Ready(Event::Message(message));
            }
        }
        let reading = reading(core);
        while !self.peer_closed && !self.paused(core) {
            let item = self.reader.poll_item(cx, &reading, &mut self.heard);
            if std::mem::take(&mut self.heard) {
                self.keepalive.seen(Instant::now());
                self.track_message(core.settings());
                if let Poll::Ready(failure) = self.count_held(cx, core) {
                    return Poll::Ready(Event::End(End::Failed(failure)));
                }
            }
            let item = match item {
                Poll::Pending => break,
                Poll::Ready(Ok(item)) => item,
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Event::End(End::Failed(read_failure(error))))
                }
            };
            let message = match item {
                Item::Message(message) => message,
                Item::Compressed { text, payload } => {
                    // The decoder refuses RSV1 unless permessage-deflate was agreed.
                    match inflated(text, &payload, reading.limits.max_message_size) {
                        Ok(message) => message,
                        Err(error) => return Poll::Ready(Event::End(End::Failed(error))),
                    }
                }
                Item::Ping(payload) => {
                    core.send_pong(&payload);
                    continue;
                }
                Item::Pong(_) => continue,
                Item::Close(frame) => {
                    self.peer_closed = true;
                    core.peer_closed(frame);
                    // Answered at once if the socket took it; else the writer finishes it.
                    return self.poll_event_inner(cx, core, deliver);
                }
            };
            core.metrics().received(core.id, message.len());
            if let Some(limit) = core.settings().rate_limit {
                if !self.bucket.take(limit, Instant::now()) {
                    let per_second = limit.per_second as u32;
                    return Poll::Ready(Event::End(End::Failed(Error::RateLimited { per_second })));
                }
            }
            if deliver {
                return Poll::Ready(Event::Message(message));
            }
            if let Poll::Ready(failure) = self.hold(message, cx, core) {
                return Poll::Ready(Event::End(End::Failed(failure)));
            }
        }
        Poll::Pending
    }

    /// Whether reading waits for the handler: as many messages are held as may be, and
    /// the connection is open (once it is closing, reading goes on to reach the peer's
    /// close frame).
    fn paused(&self, core: &Core) -> bool {
        self.backlog().is_some_and(|held| held.then.is_some()) && core.is_open()
    }

    /// The messages held for the handler, if any.
    fn backlog(&self) -> Option<&Backlog> {
        self.under_way.as_ref()?.held.as_ref()
    }

    /// Holds a message read while a callback runs, for a later [`poll_next`](Self::poll_next).
    fn hold(&mut self, message: Message, cx: &mut Context<'_>, core: &Core) -> Poll<Error> {
        let held = &mut self.under_way().held;
        match held {
            None => {
                *held = Some(Backlog {
                    first: message,
                    then: None,
                });
                Poll::Pending
            }
            Some(held) if held.then.is_none() => {
                held.then = Some(message);
                // Read ahead: counted against the budget.
                self.count_held(cx, core)
            }
            Some(_) => {
                // Only while closing (else reading pauses first): our close frame is out,
                // and reading goes on to reach the peer's answer.
                tracing::debug!(
                    bytes = message.len(),
                    "message dropped: the connection is closing and its handler is busy"
                );
                Poll::Pending
            }
        }
    }

    /// The oldest message held for the handler, if any. After a clean close that came
    /// while a callback ran, the connection's task takes what is left with this: those
    /// messages arrived before the peer's close frame.
    pub(crate) fn take_held(&mut self) -> Option<Message> {
        let slot = &mut self.under_way.as_deref_mut()?.held;
        let held = slot.as_mut()?;
        let message = match held.then.take() {
            Some(then) => Some(std::mem::replace(&mut held.first, then)),
            None => slot.take().map(|held| held.first),
        };
        self.tidy();
        message
    }

    /// Starts (or ends) the deadline of the message in progress, after bytes arrived.
    fn track_message(&mut self, settings: &Settings) {
        if !self.reader.in_message() {
            if let Some(under_way) = self.under_way.as_deref_mut() {
                under_way.message = None;
            }
            return;
        }
        let Some(timeout) = message_timeout(settings) else {
            return;
        };
        let message = &mut self.under_way().message;
        if message.is_none() {
            let started = Instant::now();
            let window = MESSAGE_WINDOW.min(timeout);
            *message = Some(MessageDeadline {
                started,
                timer: Box::pin(tokio::time::sleep_until(started + window)),
                checked_len: 0,
            });
        }
    }

    /// Tells the server's budget what this connection now holds of what is half-received
    /// (and of what was read ahead for a busy handler); ready with the failure if that
    /// got the connection refused.
    fn count_held(&mut self, cx: &mut Context<'_>, core: &Core) -> Poll<Error> {
        let bytes = self.held_bytes();
        if bytes > 0 {
            let partial = &mut self.under_way().partial;
            if partial.is_none() {
                *partial = Some(Held {
                    shared: core.shared.clone(),
                    id: core.id,
                    refusal: Arc::default(),
                    bytes: 0,
                });
            }
        }
        self.count_held_bytes(cx)
    }

    fn count_held_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let bytes = self.held_bytes();
        let Some(held) = self
            .under_way
            .as_deref_mut()
            .and_then(|under_way| under_way.partial.as_mut())
        else {
            return Poll::Pending;
        };
        if bytes != held.bytes {
            held.set(bytes);
            if held.refusal.poll_refused(cx) {
                let budget = held.shared.budget.limit();
                return Poll::Ready(Error::PartialBudget { budget });
            }
        }
        Poll::Pending
    }

    /// What counts against the budget: the reader's partial message and undecoded bytes,
    /// and a message read ahead for a busy handler.
    fn held_bytes(&self) -> usize {
        let ahead = self
            .backlog()
            .and_then(|held| held.then.as_ref())
            .map_or(0, Message::len);
        self.reader.held() + ahead
    }

    /// Ready once the close timeout has passed (armed once the close is asked for).
    fn poll_close_timer(&mut self, cx: &mut Context<'_>, core: &Core) -> Poll<()> {
        let armed = self
            .under_way
            .as_ref()
            .is_some_and(|under_way| under_way.close_timer.is_some());
        if !armed {
            let Some(since) = core.closing_since() else {
                return Poll::Pending;
            };
            let deadline = since + close_timeout(core.settings());
            self.under_way().close_timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        match self
            .under_way
            .as_deref_mut()
            .and_then(|under_way| under_way.close_timer.as_mut())
        {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// The close timeout, pings, the idle timeout and the deadline of the message in
    /// progress; ready with the failure when one of them ends the connection.
    fn poll_timers(&mut self, cx: &mut Context<'_>, core: &Core) -> Poll<Error> {
        let settings = core.settings();
        if self.poll_close_timer(cx, core).is_ready() {
            return Poll::Ready(Error::CloseTimeout(close_timeout(settings)));
        }
        // A message must finish within the timeout, or later only while each window keeps
        // bringing the minimum rate: a client on a slow phone finishes; one that trickles a
        // message it never ends (control frames in between change nothing) is dropped.
        if let (Some(timeout), Some(message)) = (
            message_timeout(settings),
            self.under_way
                .as_deref_mut()
                .and_then(|under_way| under_way.message.as_mut()),
        ) {
            let window = MESSAGE_WINDOW.min(timeout);
            let min_rate = settings.min_message_rate.max(1);
            while message.timer.as_mut().poll(cx).is_ready() {
                let received = self.reader.message_len();
                let recent = received - message.checked_len.min(received);
                message.checked_len = received;
                let elapsed = message.started.elapsed();
                let enough = recent as f64 >= f64::from(min_rate) * window.as_secs_f64();
                if elapsed >= timeout && !enough {
                    return Poll::Ready(Error::MessageTimeout { elapsed, received });
                }
                let next = message.started
                    + window * (elapsed.as_nanos() / window.as_nanos().max(1) + 1) as u32;
                message.timer.as_mut().reset(next);
            }
        }
        // Noted on every read, but the deadline the server's timer sees is moved only when it
        // fires: if the deadline moved meanwhile, `due` says so.
        let every = intervals(settings);
        if every.is_on() && core.take_keepalive_fired() {
            let now = Instant::now();
            if self.paused(core) {
                // Not reading, so the peer's frames wait unheard in the socket: its silence
                // is not known, and no ping is needed. Counted from when reading resumes.
                self.keepalive.seen(now);
            }
            match self.keepalive.due(every, now) {
                Due::Idle => {
                    let idle = every.idle.map(|idle| Millis::new(idle).get());
                    return Poll::Ready(Error::IdleTimeout(idle.unwrap_or_default()));
                }
                Due::Ping => core.send_ping(),
                Due::Nothing => {}
            }
            core.set_keepalive_due(self.keepalive.due_stamp(every, now));
        }
        Poll::Pending
    }
}

/// How the connection reads: its server's limits, and permessage-deflate's RSV1 if agreed.
fn reading(core: &Core) -> Reading {
    let settings = core.settings();
    Reading {
        limits: Limits {
            max_frame_size: settings.max_frame_size.min(settings.max_message_size),
            max_message_size: settings.max_message_size,
            allow_rsv1: core.deflate.agreed(),
        },
        max_read: settings.read_buffer_size,
    }
}

/// The keep-alive's intervals, as the server sets them.
fn intervals(settings: &Settings) -> Intervals {
    Intervals {
        ping: settings.ping_interval,
        idle: settings.idle_timeout,
    }
}

/// The close timeout, in whole milliseconds.
fn close_timeout(settings: &Settings) -> Duration {
    Millis::new(settings.close_timeout).get()
}

/// The message timeout: none when zero (a message that must arrive in no time at all
/// would be no setting anyone means), and anything else in whole milliseconds, at least one.
fn message_timeout(settings: &Settings) -> Option<Duration> {
    let timeout = settings.message_timeout;
    (!timeout.is_zero()).then(|| Millis::new(timeout.max(Duration::from_millis(1))).get())
}

/// A client's compressed message, inflated within `max` bytes (counted on what it inflates
/// to, as it inflates: a small bomb costs no more than the limit), and checked as text.
fn inflated(text: bool, compressed: &[u8], max: usize) -> Result<Message, Error> {
    let bytes = deflate::inflate(compressed, max).map_err(|error| match error {
        InflateError::TooBig { limit } => Error::MessageTooLarge {
            size: limit.saturating_add(1),
            max: limit,
        },
        InflateError::Corrupt(why) => Error::Protocol {
            reason: format!("invalid permessage-deflate data: {why}"),
        },
    })?;
    if text {
        let text = String::from_utf8(bytes).map_err(|_| Error::InvalidUtf8)?;
        Ok(Message::from(text))
    } else {
        Ok(Message::Binary(bytes.into()))
    }
}

/// The connection's failure when reading stopped.
fn read_failure(error: ReadError) -> Error {
    match error {
        ReadError::Eof => Error::AbruptClose,
        ReadError::Io(error) => Error::Io(error),
        ReadError::Decode(error) => error.into(),
    }
}

//! One SignalR connection: from negotiate (or a socket that skipped it) until it ends. Its
//! id and token, the WebSocket it is on, the invocations of its client run one at a time,
//! its streams, the client results it awaits.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::connection::Connection;
use crate::engine::flush::HasCore;
use crate::engine::sync::lock;
use crate::protocol::message::Message;
use crate::signalr::error::HubError;

/// A boxed future, as the hub's methods and jobs are kept.
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How many invocations of one client may wait for the one running: past it the server
/// stops reading from that client until one has finished.
const MAX_QUEUED_INVOCATIONS: usize = 64;

/// What a client answered to an invocation of ours (a client result).
#[derive(Debug)]
pub(crate) enum Answer {
    /// Its result, as JSON (`None`: no result).
    Result(Option<String>),
    /// Its error.
    Error(String),
}

/// Why a socket may not attach to a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The connection is over (404).
    Gone,
    /// It has a socket already (409).
    Taken,
}

pub(crate) struct Session {
    /// The id other clients and the application know it by (`connectionId`).
    pub(crate) id: Box<str>,
    /// What attaches a socket to it (`connectionToken`): secret.
    pub(crate) token: Box<str>,
    /// The client asked for stateful reconnect, and the hub allows it.
    pub(crate) stateful: bool,
    /// When negotiate made it: it is dropped if no socket comes.
    pub(crate) created: Instant,
    state: Mutex<State>,
    /// The handshake was answered: records may go to the client.
    handshaken: AtomicBool,
    next_result_id: AtomicU64,
    /// Client results awaited, by the invocation id we gave them.
    pending: Mutex<HashMap<Box<str>, oneshot::Sender<Answer>>>,
    /// Streams running, by the client's invocation id: dropping the sender cancels one.
    streams: Mutex<HashMap<Box<str>, oneshot::Sender<()>>>,
    /// The client's invocations, run one at a time in order.
    serial: Mutex<Serial>,
    permits: Arc<Semaphore>,
    inbound: Mutex<Inbound>,
    /// For the server's pings: the data messages queued to the socket when last looked,
    /// and since when that count has not moved (a clock stamp).
    pub(crate) quiet_count: AtomicU32,
    pub(crate) quiet_since: AtomicU32,
}

#[derive(Default)]
struct State {
    socket: Option<Connection>,
    /// Counts the sockets attached: a socket's end concerns the connection only if no
    /// other has attached since.
    generation: u64,
    /// A socket was accepted for it.
    claimed: bool,
    /// Stateful reconnect: the socket is gone, its messages kept, the client may come back.
    parked: bool,
    user: Option<Arc<str>>,
    ended: bool,
}

/// Stateful reconnect's count of the records the client sent (types 1 to 5).
#[derive(Default)]
struct Inbound {
    /// The number the next record the client sends will have (its Sequence sets it).
    next: u64,
    /// The highest number processed: a record at or below it is a replayed duplicate.
    processed: u64,
    /// The highest number acknowledged to the client, and when.
    acked: u64,
    acked_at: Option<Instant>,
}

#[derive(Default)]
struct Serial {
    jobs: VecDeque<(BoxFuture, OwnedSemaphorePermit)>,
    running: bool,
}

impl Session {
    pub(crate) fn new(id: String, token: String, stateful: bool) -> Self {
        Session {
            id: id.into(),
            token: token.into(),
            stateful,
            created: Instant::now(),
            state: Mutex::new(State::default()),
            handshaken: AtomicBool::new(false),
            next_result_id: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            serial: Mutex::new(Serial::default()),
            permits: Arc::new(Semaphore::new(MAX_QUEUED_INVOCATIONS)),
            inbound: Mutex::new(Inbound {
                next: 1,
                ..Inbound::default()
            }),
            quiet_count: AtomicU32::new(0),
            quiet_since: AtomicU32::new(0),
        }
    }

    /// Takes the connection for a new socket: refused if it is over, or if it has one and
    /// cannot take another. With stateful reconnect, a new socket replaces the one it has
    /// (returned: the new one takes over from it), if that one can be resumed.
    pub(crate) fn claim(&self) -> Result<Option<Connection>, Refused> {
        let mut state = lock(&self.state);
        if state.ended {
            return Err(Refused::Gone);
        }
        if !state.claimed {
            state.claimed = true;
            return Ok(None);
        }
        match &state.socket {
            Some(old) if self.stateful && old.can_resume() => Ok(Some(old.clone())),
            Some(_) if self.stateful => Err(Refused::Gone),
            _ => Err(Refused::Taken),
        }
    }

    /// Whether a socket was ever accepted for it.
    pub(crate) fn is_claimed(&self) -> bool {
        lock(&self.state).claimed
    }

    /// The socket is open: sends go to it. Returns its generation, or `None` if the
    /// connection is over.
    pub(crate) fn attach(&self, socket: &Connection, user: Option<Arc<str>>) -> Option<u64> {
        let mut state = lock(&self.state);
        if state.ended {
            return None;
        }
        state.socket = Some(socket.clone());
        state.parked = false;
        state.generation += 1;
        if user.is_some() || state.user.is_none() {
            state.user = user;
        }
        Some(state.generation)
    }

    /// The socket of `generation` is gone and the client may come back: true if it is the
    /// current one, now parked.
    pub(crate) fn park(&self, generation: u64) -> bool {
        let mut state = lock(&self.state);
        if state.ended || state.generation != generation {
            return false;
        }
        state.parked = true;
        true
    }

    /// Whether the socket of `generation` is the current one and parked.
    pub(crate) fn is_parked_at(&self, generation: u64) -> bool {
        let state = lock(&self.state);
        state.parked && state.generation == generation && !state.ended
    }

    /// Whether the current socket is parked.
    pub(crate) fn is_parked(&self) -> bool {
        lock(&self.state).parked
    }

    /// Whether no socket has attached since the one of `generation`.
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        lock(&self.state).generation == generation
    }

    /// Stateful reconnect: a record of types 1 to 5 arrived; false if it is a duplicate
    /// of one processed before the socket changed (the client's replay).
    pub(crate) fn inbound_record(&self) -> bool {
        let mut inbound = lock(&self.inbound);
        let number = inbound.next;
        inbound.next += 1;
        if number <= inbound.processed {
            return false;
        }
        inbound.processed = number;
        true
    }

    /// The client's Sequence: its next record has number `next`. False if that is past
    /// what the client can have sent.
    pub(crate) fn inbound_sequence(&self, next: u64) -> bool {
        let mut inbound = lock(&self.inbound);
        if next == 0 || next > inbound.processed + 1 {
            return false;
        }
        inbound.next = next;
        true
    }

    /// The Ack to send the client now, if one is due: what was processed since the last,
    /// at most one a second.
    pub(crate) fn ack_due(&self, now: Instant) -> Option<u64> {
        let mut inbound = lock(&self.inbound);
        let recent = inbound
            .acked_at
            .is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1));
        if inbound.processed == inbound.acked || recent {
            return None;
        }
        inbound.acked = inbound.processed;
        inbound.acked_at = Some(now);
        Some(inbound.acked)
    }

    /// The connection's current socket.
    pub(crate) fn socket(&self) -> Option<Connection> {
        lock(&self.state).socket.clone()
    }

    /// The user the hub's `identify` named, if any.
    pub(crate) fn user(&self) -> Option<Arc<str>> {
        lock(&self.state).user.clone()
    }

    pub(crate) fn set_handshaken(&self) {
        self.handshaken.store(true, Ordering::Release);
    }

    pub(crate) fn is_handshaken(&self) -> bool {
        self.handshaken.load(Ordering::Acquire)
    }

    /// Queues a record to the client without waiting.
    pub(crate) fn send(&self, record: String) -> Result<(), HubError> {
        let socket = self.socket().ok_or(HubError::Closed)?;
        socket
            .send(Message::from(record))
            .map_err(|_| HubError::Closed)
    }

    /// Queues a record that stateful reconnect does not count (a Ping, a Close, an Ack)
    /// without waiting: never kept for a replay.
    pub(crate) fn send_untracked(&self, record: &str) -> Result<(), HubError> {
        let socket = self.socket().ok_or(HubError::Closed)?;
        socket.core().send_unkept_text(record);
        Ok(())
    }

    /// Queues a record to the client, waiting while its queue is full (a stream's items).
    pub(crate) async fn send_wait(&self, record: String) -> Result<(), HubError> {
        let socket = self.socket().ok_or(HubError::Closed)?;
        socket
            .send_wait(Message::from(record))
            .await
            .map_err(|_| HubError::Closed)
    }

    /// The connection is over: client results awaited fail, streams stop.
    pub(crate) fn end(&self) {
        {
            let mut state = lock(&self.state);
            state.ended = true;
            state.socket = None;
        }
        // Dropping the senders wakes the waiters, outside the locks' holders.
        let pending = std::mem::take(&mut *lock(&self.pending));
        drop(pending);
        let streams = std::mem::take(&mut *lock(&self.streams));
        drop(streams);
        let jobs = std::mem::take(&mut lock(&self.serial).jobs);
        drop(jobs);
    }

    /// A new invocation id for a client result, and the receiver of its answer.
    pub(crate) fn expect_answer(&self) -> (String, oneshot::Receiver<Answer>) {
        let id = format!("s{}", self.next_result_id.fetch_add(1, Ordering::Relaxed));
        let (sender, receiver) = oneshot::channel();
        lock(&self.pending).insert(id.clone().into(), sender);
        (id, receiver)
    }

    /// The client answered the invocation `id`; false if nothing awaited it.
    pub(crate) fn answer(&self, id: &str, answer: Answer) -> bool {
        let sender = lock(&self.pending).remove(id);
        match sender {
            Some(sender) => sender.send(answer).is_ok(),
            None => false,
        }
    }

    /// The wait for the answer to `id` was given up.
    pub(crate) fn forget_answer(&self, id: &str) {
        lock(&self.pending).remove(id);
    }

    /// A stream starts: the receiver resolves (or fails) when it is to stop. `None` if a
    /// stream with this id runs already.
    pub(crate) fn start_stream(&self, id: &str) -> Option<oneshot::Receiver<()>> {
        let mut streams = lock(&self.streams);
        if streams.contains_key(id) || lock(&self.state).ended {
            return None;
        }
        let (sender, receiver) = oneshot::channel();
        streams.insert(id.into(), sender);
        Some(receiver)
    }

    /// The client cancelled the stream (or invocation) `id`.
    pub(crate) fn cancel_stream(&self, id: &str) {
        let sender = lock(&self.streams).remove(id);
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    /// The stream `id` has ended by itself.
    pub(crate) fn stream_done(&self, id: &str) {
        lock(&self.streams).remove(id);
    }

    /// A place for one more invocation in the queue, waiting while it is full.
    pub(crate) async fn invocation_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// Queues an invocation behind the others; true if the caller must start
    /// [`run_invocations`].
    pub(crate) fn queue_invocation(&self, job: BoxFuture, permit: OwnedSemaphorePermit) -> bool {
        let mut serial = lock(&self.serial);
        serial.jobs.push_back((job, permit));
        !std::mem::replace(&mut serial.running, true)
    }
}

/// Runs the queued invocations of `session` one at a time, in order, until none is left:
/// a task only while there are some, so that an idle connection has none.
pub(crate) async fn run_invocations(session: Arc<Session>) {
    loop {
        let next = {
            let mut serial = lock(&session.serial);
            match serial.jobs.pop_front() {
                Some(job) => job,
                None => {
                    serial.running = false;
                    return;
                }
            }
        };
        let (job, permit) = next;
        job.await;
        drop(permit);
    }
}

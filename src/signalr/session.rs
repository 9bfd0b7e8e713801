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
    /// For the server's pings: the data messages queued to the socket when last looked,
    /// and since when that count has not moved (a clock stamp).
    pub(crate) quiet_count: AtomicU32,
    pub(crate) quiet_since: AtomicU32,
}

#[derive(Default)]
struct State {
    socket: Option<Connection>,
    /// A socket was accepted for it.
    claimed: bool,
    user: Option<Arc<str>>,
    ended: bool,
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
            quiet_count: AtomicU32::new(0),
            quiet_since: AtomicU32::new(0),
        }
    }

    /// Takes the connection for a new socket: refused if it is over, or if it has one and
    /// cannot take another.
    pub(crate) fn claim(&self) -> Result<(), Refused> {
        let mut state = lock(&self.state);
        if state.ended {
            return Err(Refused::Gone);
        }
        if state.claimed {
            return Err(Refused::Taken);
        }
        state.claimed = true;
        Ok(())
    }

    /// Whether a socket was ever accepted for it.
    pub(crate) fn is_claimed(&self) -> bool {
        lock(&self.state).claimed
    }

    /// The socket is open: sends go to it.
    pub(crate) fn attach(&self, socket: &Connection, user: Option<Arc<str>>) -> bool {
        let mut state = lock(&self.state);
        if state.ended {
            return false;
        }
        state.socket = Some(socket.clone());
        state.user = user;
        true
    }

    /// The connection's current socket.
    pub(crate) fn socket(&self) -> Option<Connection> {
        lock(&self.state).socket.clone()
    }

    /// The user the hub's `identify` named, if any.
    pub(crate) fn user(&self) -> Option<Arc<str>> {
        lock(&self.state).user.clone()
    }

    pub(crate) fn is_ended(&self) -> bool {
        lock(&self.state).ended
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

    /// Queues a record that stateful reconnect does not count (a Ping, a Close, an Ack, a
    /// Sequence) without waiting.
    pub(crate) fn send_untracked(&self, record: String) -> Result<(), HubError> {
        self.send(record)
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

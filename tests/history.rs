//! History and resume over real sockets: a client that reconnects with the last position it
//! saw gets exactly what it missed, in order, then the live messages, with nothing lost or
//! repeated at the seam, even while broadcasts go on; and it is told clearly when that
//! cannot be.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{next_text, within, Client, WAIT};
use tokio::time::Instant;
use websocket_handler::{
    Connection, History, Position, ResumeError, WebSocketCollection, WebSocketHandler,
    WebSocketServer,
};

/// Joins the room tagged, or resumes from `?after=POSITION`; says how a resume went.
struct Member {
    room: WebSocketCollection,
    after: Option<Position>,
}

impl WebSocketHandler for Member {
    async fn on_open(&mut self, conn: &Connection) {
        match self.after {
            None => {
                self.room.add_tagged(conn.clone());
            }
            Some(after) => match self.room.resume(conn, &after).await {
                Ok(resumed) => {
                    let _ = conn.send(format!("resumed {}", resumed.replayed));
                }
                Err(error @ (ResumeError::TooOld { .. } | ResumeError::OtherEpoch { .. })) => {
                    let _ = conn.send(format!("not recovered: {error}"));
                }
                Err(error) => panic!("unexpected {error}"),
            },
        }
    }
}

async fn start(room: WebSocketCollection, server: WebSocketServer) -> SocketAddr {
    common::serve(server, move |req| Member {
        room: room.clone(),
        after: req
            .uri()
            .query()
            .and_then(|q| websocket_handler::query_param(q, "after").ok().flatten())
            .and_then(|after| after.parse().ok()),
    })
    .await
}

/// A tagged line: `POSITION PREVIOUS text`.
fn parse(line: &str) -> (Position, Option<Position>, String) {
    let mut parts = line.splitn(3, ' ');
    let position = parts
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a position");
    let previous = parts.next().and_then(|p| p.parse().ok());
    (position, previous, parts.next().unwrap_or("").to_owned())
}

/// Waits until the room has `n` members.
async fn members(room: &WebSocketCollection, n: usize) {
    let deadline = Instant::now() + WAIT;
    while room.len() != n {
        assert!(Instant::now() < deadline, "the room never had {n} members");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resumes_gets_exactly_what_it_missed_then_the_live_ones() {
    let room = WebSocketCollection::new().with_history(History::new().max_messages(10_000));
    let addr = start(room.clone(), WebSocketServer::new()).await;
    let mut client = common::connect(addr, "/").await;
    members(&room, 1).await;
    for n in 0..20 {
        room.broadcast(format!("{n}"));
    }
    let mut last = None;
    for n in 0..20 {
        let (position, previous, text) = parse(&next_text(&mut client).await);
        assert_eq!(text, n.to_string());
        assert_eq!(previous, last, "each message names the one before it");
        last = Some(position);
    }
    // The client loses its connection; the room goes on, and keeps going on while it
    // comes back: every number must arrive once, in order, across the seam.
    within("the close", client.close(None))
        .await
        .expect("close");
    members(&room, 0).await;
    let running = Arc::new(AtomicBool::new(true));
    let broadcaster = {
        let (room, running) = (room.clone(), running.clone());
        tokio::spawn(async move {
            let mut n = 20;
            while running.load(Ordering::Relaxed) && n < 3000 {
                room.broadcast(format!("{n}"));
                n += 1;
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let last = last.expect("a position");
    let mut client = common::connect(addr, &format!("/?after={last}")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    running.store(false, Ordering::Relaxed);
    let sent = within("the broadcaster", broadcaster)
        .await
        .expect("broadcaster");
    let mut expected = 20;
    let mut previous = Some(last);
    let mut resumed = None;
    while expected < sent {
        let line = next_text(&mut client).await;
        if let Some(replayed) = line.strip_prefix("resumed ") {
            resumed = Some(replayed.parse::<usize>().expect("a count"));
            continue;
        }
        let (position, before, text) = parse(&line);
        assert_eq!(text, expected.to_string(), "lost, repeated or out of order");
        assert_eq!(
            before, previous,
            "the chain of positions holds across the seam"
        );
        previous = Some(position);
        expected += 1;
    }
    let replayed = resumed.expect("the resume reported itself");
    assert!(
        replayed > 0 && replayed <= sent - 20,
        "replayed {replayed} of {}",
        sent - 20
    );
    // Nothing more: the next is a new broadcast.
    room.broadcast("after");
    assert_eq!(parse(&next_text(&mut client).await).2, "after");
}

#[tokio::test]
async fn a_resume_from_too_long_ago_or_another_history_is_told_clearly() {
    let room = WebSocketCollection::new().with_history(History::new().max_messages(5));
    let addr = start(room.clone(), WebSocketServer::new()).await;
    let mut client = common::connect(addr, "/").await;
    members(&room, 1).await;
    room.broadcast("first");
    let (first, _, _) = parse(&next_text(&mut client).await);
    for n in 0..10 {
        room.broadcast(format!("{n}"));
    }
    let mut late = common::connect(addr, &format!("/?after={first}")).await;
    let line = next_text(&mut late).await;
    assert!(
        line.starts_with("not recovered:") && line.contains("older"),
        "{line}"
    );
    // Still added, from the live messages on.
    room.broadcast("live");
    assert_eq!(parse(&next_text(&mut late).await).2, "live");

    let other = Position::to_string(&"abc.3".parse::<Position>().expect("a position"));
    let mut stranger = common::connect(addr, &format!("/?after={other}")).await;
    let line = next_text(&mut stranger).await;
    assert!(
        line.starts_with("not recovered:") && line.contains("another history"),
        "{line}"
    );
}

/// Broadcasts `from..to` as text, yielding now and then so that the client keeps reading.
async fn broadcast_numbers(room: &WebSocketCollection, from: usize, to: usize) {
    for n in from..to {
        room.broadcast(format!("{n}"));
        if n % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// Reads tagged lines until `resumed N`; checks they are `from..` in order with an unbroken
/// chain of positions from `previous`; returns N, the last position and how many came.
async fn read_replay(
    client: &mut Client,
    from: usize,
    mut previous: Option<Position>,
) -> (usize, Option<Position>, usize) {
    let mut expected = from;
    loop {
        let line = next_text(client).await;
        if let Some(replayed) = line.strip_prefix("resumed ") {
            let replayed = replayed.parse().expect("a count");
            return (replayed, previous, expected - from);
        }
        let (position, before, text) = parse(&line);
        assert_eq!(text, expected.to_string(), "lost, repeated or out of order");
        assert_eq!(before, previous, "the chain of positions holds");
        previous = Some(position);
        expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_of_five_times_the_queue_gets_everything_in_order_then_the_live_ones() {
    let room = WebSocketCollection::new().with_history(History::new().max_messages(10_000));
    let server = WebSocketServer::builder()
        .outbound_queue_capacity(1024)
        .build();
    let addr = start(room.clone(), server).await;
    let mut client = common::connect(addr, "/").await;
    members(&room, 1).await;
    room.broadcast("first");
    let (first, _, _) = parse(&next_text(&mut client).await);
    drop(client);
    members(&room, 0).await;
    broadcast_numbers(&room, 0, 5000).await;

    let mut late = common::connect(addr, &format!("/?after={first}")).await;
    let (replayed, last, got) = read_replay(&mut late, 0, Some(first)).await;
    assert_eq!(replayed, 5000, "Resumed::replayed is what was queued");
    assert_eq!(got, 5000, "every missed message came before the report");
    // Still open and a member: the live ones follow, chained to the replay.
    room.broadcast("live");
    let (_, previous, text) = parse(&next_text(&mut late).await);
    assert_eq!((previous, text.as_str()), (last, "live"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_resume_while_the_room_goes_on_loses_and_repeats_nothing() {
    let room = WebSocketCollection::new().with_history(History::new().max_messages(20_000));
    let server = WebSocketServer::builder()
        .outbound_queue_capacity(256)
        .build();
    let addr = start(room.clone(), server).await;
    let mut client = common::connect(addr, "/").await;
    members(&room, 1).await;
    room.broadcast("first");
    let (first, _, _) = parse(&next_text(&mut client).await);
    drop(client);
    members(&room, 0).await;
    broadcast_numbers(&room, 0, 5000).await;

    let mut late = common::connect(addr, &format!("/?after={first}")).await;
    // The room goes on during the replay: each number must come once, in order.
    let live = {
        let room = room.clone();
        tokio::spawn(async move { broadcast_numbers(&room, 5000, 8000).await })
    };
    let (replayed, mut previous, got) = read_replay(&mut late, 0, Some(first)).await;
    assert!(
        (5000..=got).contains(&replayed),
        "replayed {replayed}, {got} came before the report"
    );
    within("the live broadcasts", live)
        .await
        .expect("broadcaster");
    for n in got..8000 {
        let (position, before, text) = parse(&next_text(&mut late).await);
        assert_eq!(text, n.to_string(), "lost, repeated or out of order");
        assert_eq!(before, previous, "the chain of positions holds");
        previous = Some(position);
    }
    room.broadcast("after");
    assert_eq!(parse(&next_text(&mut late).await).2, "after");
}

/// An ordered backplane within the test: it numbers what is published (epoch
/// [`BUS_EPOCH`], offsets from 1) and keeps it, serves resumes from it a few envelopes a
/// page, and delivers to its subscribers only when the test says (`pump`), so that a
/// process can be made to lag behind it.
#[derive(Clone, Default)]
struct OrderedBus {
    state: Arc<std::sync::Mutex<BusState>>,
    /// Envelopes in one page of `missed`.
    page: usize,
}

#[derive(Default)]
struct BusState {
    log: Vec<bytes::Bytes>,
    /// Each subscriber and how much of the log it has been given.
    inboxes: Vec<(websocket_handler::backplane::Inbox, usize)>,
}

const BUS_EPOCH: u64 = 0xb05;

fn bus_position(offset: usize) -> Position {
    format!("{BUS_EPOCH:x}.{offset}")
        .parse()
        .expect("a position")
}

impl OrderedBus {
    fn lock(&self) -> std::sync::MutexGuard<'_, BusState> {
        self.state.lock().expect("the bus's lock")
    }

    /// Delivers everything published so far to every subscriber, in order.
    fn pump(&self) {
        let (log, inboxes) = {
            let mut state = self.lock();
            let log = state.log.clone();
            let inboxes: Vec<_> = state
                .inboxes
                .iter()
                .map(|(i, from)| (i.clone(), *from))
                .collect();
            for (_, given) in state.inboxes.iter_mut() {
                *given = log.len();
            }
            (log, inboxes)
        };
        for (inbox, from) in inboxes {
            for (at, envelope) in log.iter().enumerate().skip(from) {
                inbox
                    .deliver_at(envelope.clone(), bus_position(at + 1))
                    .expect("an envelope");
            }
        }
    }
}

#[websocket_handler::async_trait]
impl websocket_handler::backplane::Backplane for OrderedBus {
    fn publish(&self, _topic: &str, envelope: bytes::Bytes) {
        self.lock().log.push(envelope);
    }

    fn subscribe(&self, _topic: &str, inbox: websocket_handler::backplane::Inbox) {
        // It hears from now on, like a process that joins the topic late.
        let mut state = self.lock();
        let now = state.log.len();
        state.inboxes.push((inbox, now));
    }

    fn ordered(&self) -> bool {
        true
    }

    async fn missed(
        &self,
        _topic: &str,
        _room: Option<&str>,
        after: Position,
        _max_bytes: usize,
    ) -> Result<websocket_handler::backplane::MissedPage, ResumeError> {
        let state = self.lock();
        let from = usize::try_from(after.offset()).expect("an offset");
        let page: Vec<_> = (from..state.log.len())
            .take(self.page)
            .map(|at| (bus_position(at + 1), state.log[at].clone()))
            .collect();
        let through = page.last().map_or(after, |(position, _)| *position);
        let complete = through.offset() as usize >= state.log.len();
        Ok(websocket_handler::backplane::MissedPage::new(
            page, through, complete,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_ordered_backplane_a_client_resumed_from_it_while_this_process_lags_gets_each_message_once(
) {
    // The relay's one page reaches past what this process has heard: it holds the client
    // through there.
    resume_on_an_ordered_backplane(100, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_ordered_backplane_a_resume_goes_from_the_relays_pages_to_the_history_here() {
    // Page by page until the history here reaches back: 2 to 4, then 5 and 6 from here.
    resume_on_an_ordered_backplane(3, 5).await;
}

/// A process joins the topic after five messages, hears two (5 and 6), a client resumes
/// from 2 while three more (7 to 9) are on the relay only: with pages of `page` envelopes
/// it replays `replayed`, and gets the rest live, each once, while the other member gets
/// everything.
async fn resume_on_an_ordered_backplane(page: usize, replayed: usize) {
    let bus = OrderedBus {
        page,
        ..OrderedBus::default()
    };
    let writer = WebSocketCollection::with_backplane("topic", bus.clone());
    for n in 0..5 {
        writer.broadcast(format!("{n}"));
    }
    let room =
        WebSocketCollection::with_backplane("topic", bus.clone()).with_history(History::new());
    let addr = start(room.clone(), WebSocketServer::new()).await;
    let mut member = common::connect(addr, "/").await;
    members(&room, 1).await;
    writer.broadcast("5");
    writer.broadcast("6");
    bus.pump();
    let mut previous = None;
    for n in 5..7 {
        let (position, before, text) = parse(&next_text(&mut member).await);
        assert_eq!((text, before), (n.to_string(), previous));
        previous = Some(position);
    }
    for n in 7..10 {
        writer.broadcast(format!("{n}"));
    }
    let mut resumed = common::connect(addr, &format!("/?after={}", bus_position(2))).await;
    let (count, mut last, got) = read_replay(&mut resumed, 2, Some(bus_position(2))).await;
    assert_eq!(
        (count, got),
        (replayed, replayed),
        "Resumed::replayed is exact"
    );
    // This process catches up; then one more.
    bus.pump();
    writer.broadcast("10");
    bus.pump();
    for n in 7..11 {
        let (position, before, text) = parse(&next_text(&mut member).await);
        assert_eq!(
            (text, before),
            (n.to_string(), previous),
            "the member gets all"
        );
        previous = Some(position);
    }
    for n in 2 + got..11 {
        let (position, before, text) = parse(&next_text(&mut resumed).await);
        assert_eq!(text, n.to_string(), "lost, repeated or out of order");
        assert_eq!(before, last, "the chain of positions holds");
        last = Some(position);
    }
    assert_eq!(last, Some(bus_position(11)));
}

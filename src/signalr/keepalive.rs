//! The hub's one timer: a Ping to every client the server has not written to for the
//! keep-alive interval (the JavaScript client gives up after 30 s without a record, and
//! cannot see WebSocket pings), and the end of connections negotiated whose socket never
//! came.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::clock;
use crate::engine::flush::HasCore;
use crate::signalr::records;
use crate::signalr::shared::HubShared;

/// How often the timer looks: a ping goes out within this much after the interval.
const TICK: Duration = Duration::from_millis(500);

/// Starts the timer, once per hub; it ends with the hub or the server's shutdown.
pub(crate) fn start(shared: &Arc<HubShared>) {
    if shared.timer_started.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !tick(&weak) {
                return;
            }
        }
    });
}

/// One look at every connection; false once the timer is to stop.
fn tick(weak: &Weak<HubShared>) -> bool {
    let Some(shared) = weak.upgrade() else {
        return false;
    };
    if shared.server.is_shutting_down() {
        return false;
    }
    let now = Instant::now();
    let stamp = clock::stamp(now).max(1);
    let interval = u32::try_from(shared.settings.keep_alive.as_millis()).unwrap_or(u32::MAX);
    for session in shared.sessions() {
        if !session.is_claimed() {
            if now.duration_since(session.created) > shared.settings.negotiate_timeout {
                tracing::debug!(id = %session.id, "negotiated, but no socket came: forgotten");
                session.end();
                shared.unregister(&session);
            }
            continue;
        }
        let Some(socket) = session.socket() else {
            continue;
        };
        if !session.is_handshaken() || session.is_parked() {
            continue;
        }
        let pushed = socket.core().queue.pushed();
        let since = session.quiet_since.load(Ordering::Relaxed);
        if since == 0 || session.quiet_count.swap(pushed, Ordering::Relaxed) != pushed {
            // Written to since the last look (or first seen): quiet from now.
            session.quiet_since.store(stamp, Ordering::Relaxed);
            continue;
        }
        if session.stateful && !session.is_parked() {
            if let Some(through) = session.ack_due(now) {
                let _ = session.send_untracked(&records::ack(through));
            }
        }
        if clock::since(since, now) >= interval {
            let _ = session.send_untracked(records::PING);
            // Not a data message the count sees: quiet from now again.
            session.quiet_since.store(stamp, Ordering::Relaxed);
        }
    }
    true
}

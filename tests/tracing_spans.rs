//! Each connection's `tracing` span: its events, the handler's own included, carry the
//! connection's id and the peer's address.
//!
//! On its own in this file: `tracing` caches per call site whether anyone listens, so a test
//! running alongside without a subscriber could hide events from this one.

mod common;

use std::sync::{Arc, Mutex};

use common::{connect, next_text, send_text, within};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::{CloseFrame, Connection, Message, WebSocketHandler, WebSocketServer};

/// Logs and echoes; reports each close.
struct Echo {
    closed: mpsc::UnboundedSender<u16>,
}

impl WebSocketHandler for Echo {
    async fn on_message(&mut self, conn: &Connection, message: Message) {
        tracing::info!(len = message.len(), "echo");
        let _ = conn.send(message);
    }

    async fn on_close(&mut self, _conn: &Connection, frame: &CloseFrame) {
        let _ = self.closed.send(frame.code.as_u16());
    }
}

/// A `tracing` layer that keeps, for every event, the fields of the `websocket` span it
/// happened in.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<(String, String)>>>,
}

struct SpanFields(String);

impl<S> tracing_subscriber::Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = FieldText(String::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.0));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = FieldText(String::new());
        event.record(&mut message);
        let span = ctx
            .event_span(event)
            .filter(|span| span.name() == "websocket")
            .and_then(|span| span.extensions().get::<SpanFields>().map(|f| f.0.clone()))
            .unwrap_or_default();
        self.events
            .lock()
            .expect("not poisoned")
            .push((message.0, span));
    }
}

/// Fields as `name=value ` text.
struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

#[tokio::test]
async fn handler_events_carry_the_connections_id_and_address() {
    use tracing_subscriber::layer::SubscriberExt;

    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    // This test's runtime has one thread, so the connection's task runs under it too.
    let _default = tracing::subscriber::set_default(subscriber);

    let (tx, mut closed) = mpsc::unbounded_channel();
    let addr = common::serve(WebSocketServer::new(), move |_| Echo { closed: tx.clone() }).await;
    let mut client = connect(addr, "/").await;
    let client_addr = client.get_ref().get_ref().local_addr().expect("local addr");
    send_text(&mut client, "hi").await;
    assert_eq!(next_text(&mut client).await, "hi");
    within(
        "the close frame to be sent",
        client.send(WsMessage::Close(None)),
    )
    .await
    .expect("close");
    within("on_close", closed.recv()).await.expect("closed");

    let events = recorder.events.lock().expect("not poisoned").clone();
    let echo = events
        .iter()
        .find(|(message, _)| message.contains("message=echo"))
        .unwrap_or_else(|| panic!("no echo event in {events:?}"));
    assert!(echo.1.starts_with("id="), "span fields: {:?}", echo.1);
    assert!(
        echo.1.contains(&format!("remote={client_addr}")),
        "span fields {:?} lack remote={client_addr}",
        echo.1
    );
    let closed_event = events
        .iter()
        .find(|(message, _)| message.contains("connection closed"))
        .unwrap_or_else(|| panic!("no close event in {events:?}"));
    assert!(closed_event.0.contains("code=1005"), "{closed_event:?}");
    assert_eq!(closed_event.1, echo.1, "one span for the connection's life");
}

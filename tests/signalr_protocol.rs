//! What the official SignalR clients hold a hub to, checked on the wire with no client
//! library: negotiate's JSON, the WebSocket's 404 and 409, the server's pings after write
//! silence, several records in one frame, and a bad call answered without losing the
//! connection. A hub of the crate on a free loopback port, driven by raw HTTP requests and
//! a plain WebSocket client writing records by hand.
#![cfg(feature = "signalr")]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use websocket_handler::signalr::{Hub, HubBuilder, HubError};
use websocket_handler::WebSocketServer;

/// The record separator of the JSON hub protocol.
const RS: char = '\u{1e}';

/// A hub at `/hubs/chat` with a few methods, `configure`d, served on a free port.
async fn start_hub(configure: impl FnOnce(HubBuilder) -> HubBuilder) -> SocketAddr {
    let server = WebSocketServer::new();
    let builder = Hub::builder("/hubs/chat")
        .method("Echo", |_call, (value,): (Value,)| async move { Ok(value) })
        .method("Add", |_call, (a, b): (i64, i64)| async move { Ok(a + b) })
        .method("Fail", |_call, (): ()| async move {
            Err::<(), _>(HubError::new("Fail was called"))
        })
        .stream("Counter", |_call, (count,): (u64,), items| async move {
            for i in 0..count {
                items.send(&i).await?;
            }
            Ok(())
        });
    let hub = configure(builder).build(&server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { hub.serve(listener).await });
    addr
}

/// `POST /hubs/chat/negotiate?{query}`: the status and the JSON body.
async fn negotiate(addr: SocketAddr, query: &str) -> (u16, Value) {
    let response = common::http_request(
        addr,
        "POST",
        &format!("/hubs/chat/negotiate?{query}"),
        "X-Requested-With: XMLHttpRequest\r\n",
    )
    .await;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let (_, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {response:?}"));
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, body)
}

/// A negotiated connection's token.
async fn token(addr: SocketAddr, query: &str) -> String {
    let (status, answer) = negotiate(addr, query).await;
    assert_eq!(status, 200, "{answer}");
    answer["connectionToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no connectionToken in {answer}"))
        .to_owned()
}

/// Opens the hub's WebSocket at `target`: the socket, or the HTTP status it was refused with.
async fn open(addr: SocketAddr, target: &str) -> Result<common::Client, u16> {
    let url = format!("ws://{addr}{target}");
    match common::within(
        "the WebSocket upgrade",
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("the upgrade failed without an HTTP answer: {error}"),
    }
}

/// A hub client that writes records by hand and reads them one by one, whatever frames
/// they came in.
struct HubClient {
    socket: common::Client,
    records: VecDeque<Value>,
}

impl HubClient {
    /// Negotiates, opens the socket with the token, and does the handshake (`{}`).
    async fn connect(addr: SocketAddr) -> HubClient {
        let token = token(addr, "negotiateVersion=1").await;
        let socket = open(addr, &format!("/hubs/chat?id={token}"))
            .await
            .unwrap_or_else(|status| panic!("the socket was refused with {status}"));
        let mut client = HubClient {
            socket,
            records: VecDeque::new(),
        };
        client.handshake().await;
        client
    }

    async fn handshake(&mut self) {
        self.send_text(&format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"))
            .await;
        assert_eq!(self.next().await, json!({}), "the handshake's answer");
    }

    /// Sends `records` in one text frame.
    async fn send(&mut self, records: &[Value]) {
        let text: String = records
            .iter()
            .map(|record| format!("{record}{RS}"))
            .collect();
        self.send_text(&text).await;
    }

    async fn send_text(&mut self, text: &str) {
        common::within(
            "a frame to be sent",
            self.socket.send(WsMessage::text(text)),
        )
        .await
        .expect("send");
    }

    /// The next record, within [`common::WAIT`].
    async fn next(&mut self) -> Value {
        self.next_within(common::WAIT)
            .await
            .unwrap_or_else(|| panic!("no record within {:?}", common::WAIT))
    }

    /// The next record, or `None` if none comes within `wait`. Panics if the socket ends
    /// or carries anything but text.
    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.records.is_empty() {
            let message = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return None,
                Ok(message) => message,
            };
            match message {
                Some(Ok(WsMessage::Text(text))) => {
                    let text = text.as_str();
                    assert!(text.ends_with(RS), "a frame ends with a record: {text:?}");
                    for record in text.split_terminator(RS) {
                        let record = serde_json::from_str(record)
                            .unwrap_or_else(|e| panic!("not JSON: {record:?}: {e}"));
                        self.records.push_back(record);
                    }
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                other => panic!("expected a text frame of records, got {other:?}"),
            }
        }
        self.records.pop_front()
    }

    /// The next record that is not a Ping.
    async fn next_not_ping(&mut self) -> Value {
        loop {
            let record = self.next().await;
            if record != json!({"type": 6}) {
                return record;
            }
        }
    }

    /// Calls `target` and returns its Completion.
    async fn call(&mut self, id: &str, target: &str, arguments: Value) -> Value {
        self.send(&[invocation(id, target, arguments)]).await;
        let completion = self.next_not_ping().await;
        assert_eq!(completion["invocationId"], id, "{completion}");
        completion
    }
}

fn invocation(id: &str, target: &str, arguments: Value) -> Value {
    json!({"type": 1, "invocationId": id, "target": target, "arguments": arguments})
}

#[tokio::test]
async fn negotiate_answers_what_the_client_reads_and_stateful_only_when_asked() {
    let addr = start_hub(|hub| hub).await;
    let (status, answer) = negotiate(addr, "negotiateVersion=1").await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["connectionId"].as_str().expect("a connectionId");
    let token = answer["connectionToken"]
        .as_str()
        .expect("a connectionToken");
    assert!(!id.is_empty() && !token.is_empty(), "{answer}");
    // The id is for others to see; the token attaches the socket, so it must not be it.
    assert_ne!(id, token, "{answer}");
    assert_eq!(answer["negotiateVersion"], 1, "{answer}");
    assert_eq!(
        answer["availableTransports"],
        json!([{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}]),
    );
    // Unasked, the client fails on it.
    assert!(answer.get("useStatefulReconnect").is_none(), "{answer}");

    let (status, stateful) = negotiate(addr, "negotiateVersion=1&useStatefulReconnect=true").await;
    assert_eq!(status, 200, "{stateful}");
    assert_eq!(stateful["useStatefulReconnect"], true, "{stateful}");
    assert_ne!(stateful["connectionId"], answer["connectionId"]);
    assert_ne!(stateful["connectionToken"], answer["connectionToken"]);

    // A hub without stateful reconnect never offers it.
    let plain = start_hub(HubBuilder::no_stateful_reconnect).await;
    let (_, refused) = negotiate(plain, "negotiateVersion=1&useStatefulReconnect=true").await;
    assert!(refused.get("useStatefulReconnect").is_none(), "{refused}");

    // The socket attaches with the token, not with the id anyone may know.
    assert_eq!(
        open(addr, &format!("/hubs/chat?id={id}")).await.err(),
        Some(404)
    );
    assert!(open(addr, &format!("/hubs/chat?id={token}")).await.is_ok());
}

#[tokio::test]
async fn a_socket_with_an_unknown_id_gets_404() {
    let addr = start_hub(|hub| hub).await;
    assert_eq!(open(addr, "/hubs/chat?id=unknown").await.err(), Some(404));
}

#[tokio::test]
async fn a_second_socket_on_a_connection_without_stateful_reconnect_gets_409() {
    let addr = start_hub(|hub| hub).await;
    let token = token(addr, "negotiateVersion=1").await;
    let first = open(addr, &format!("/hubs/chat?id={token}"))
        .await
        .expect("the first socket");
    assert_eq!(
        open(addr, &format!("/hubs/chat?id={token}")).await.err(),
        Some(409)
    );
    // The first one is untouched: it does its handshake and calls.
    let mut first = HubClient {
        socket: first,
        records: VecDeque::new(),
    };
    first.handshake().await;
    let answer = first.call("1", "Echo", json!(["still here"])).await;
    assert_eq!(answer["result"], "still here", "{answer}");
}

/// With the keep-alive interval at 1 s: a Ping once the server has written nothing for
/// that long, none while it writes more often, and one again when it falls silent.
#[tokio::test]
async fn the_server_pings_after_write_silence_and_not_while_it_writes() {
    let interval = Duration::from_secs(1);
    // The timer looks twice a second, so a ping comes up to 1 s after the interval (the
    // write seen late, the interval reached just after a look); more on a busy machine.
    let late = interval + Duration::from_secs(3);
    let addr = start_hub(|hub| hub.keep_alive_interval(interval)).await;
    let mut client = HubClient::connect(addr).await;
    let silent = Instant::now();
    let ping = client.next_within(late + Duration::from_secs(1)).await;
    assert_eq!(ping, Some(json!({"type": 6})), "a Ping after write silence");
    let after = silent.elapsed();
    assert!(
        after >= interval - Duration::from_millis(100) && after <= late,
        "the Ping came {after:?} after the last write, not about {interval:?}"
    );

    // Answers every 300 ms: the server writes, so it does not ping.
    let mut pace = tokio::time::interval(Duration::from_millis(300));
    for n in 0..10 {
        pace.tick().await;
        client
            .send(&[invocation(&n.to_string(), "Echo", json!([n]))])
            .await;
        let answer = client.next().await;
        assert_eq!(
            answer,
            json!({"type": 3, "invocationId": n.to_string(), "result": n}),
            "a Completion, with no Ping between answers 300 ms apart"
        );
    }
    let silent = Instant::now();
    let ping = client.next_within(late + Duration::from_secs(1)).await;
    assert_eq!(
        ping,
        Some(json!({"type": 6})),
        "a Ping after write silence again"
    );
    let after = silent.elapsed();
    assert!(
        after >= interval - Duration::from_millis(100) && after <= late,
        "the Ping came {after:?} after the last write, not about {interval:?}"
    );
}

/// With the default interval, the first Ping comes 15 s after the last write (the
/// JavaScript client gives up after 30 s without a record).
#[tokio::test]
async fn by_default_the_server_pings_after_15_s_of_write_silence() {
    let addr = start_hub(|hub| hub).await;
    let mut client = HubClient::connect(addr).await;
    let silent = Instant::now();
    let ping = client.next_within(Duration::from_secs(20)).await;
    assert_eq!(ping, Some(json!({"type": 6})), "a Ping within 20 s");
    let after = silent.elapsed();
    assert!(
        after >= Duration::from_millis(14_900) && after <= Duration::from_millis(17_000),
        "the Ping came {after:?} after the last write, not about 15 s"
    );
}

#[tokio::test]
async fn every_record_of_a_frame_is_handled_in_order() {
    let addr = start_hub(|hub| hub).await;
    let token = token(addr, "negotiateVersion=1").await;
    let socket = open(addr, &format!("/hubs/chat?id={token}"))
        .await
        .expect("the socket");
    let mut client = HubClient {
        socket,
        records: VecDeque::new(),
    };
    // The handshake and three calls in one frame, as a client may send them.
    let text = format!(
        "{{\"protocol\":\"json\",\"version\":1}}{RS}{}{RS}{}{RS}",
        invocation("1", "Echo", json!(["a"])),
        invocation("2", "Add", json!([2, 3])),
    );
    client.send_text(&text).await;
    assert_eq!(client.next().await, json!({}), "the handshake's answer");
    assert_eq!(
        client.next_not_ping().await,
        json!({"type": 3, "invocationId": "1", "result": "a"})
    );
    assert_eq!(
        client.next_not_ping().await,
        json!({"type": 3, "invocationId": "2", "result": 5})
    );

    // After the handshake: calls, a ping and a stream, one frame.
    client
        .send(&[
            invocation("3", "Echo", json!([{"nested": [1, 2]}])),
            json!({"type": 6}),
            invocation("4", "Add", json!([40, 2])),
            json!({"type": 4, "invocationId": "5", "target": "Counter", "arguments": [2]}),
            invocation("6", "Echo", json!(["last"])),
        ])
        .await;
    let mut got = Vec::new();
    while got.len() < 6 {
        got.push(client.next_not_ping().await);
    }
    let calls: Vec<&Value> = got
        .iter()
        .filter(|record| record["invocationId"] != "5")
        .collect();
    assert_eq!(
        calls,
        [
            &json!({"type": 3, "invocationId": "3", "result": {"nested": [1, 2]}}),
            &json!({"type": 3, "invocationId": "4", "result": 42}),
            &json!({"type": 3, "invocationId": "6", "result": "last"}),
        ],
        "every call of the frame answered, in order: {got:?}"
    );
    // The stream runs beside the calls: its own records in order.
    let stream: Vec<&Value> = got
        .iter()
        .filter(|record| record["invocationId"] == "5")
        .collect();
    assert_eq!(
        stream,
        [
            &json!({"type": 2, "invocationId": "5", "item": 0}),
            &json!({"type": 2, "invocationId": "5", "item": 1}),
            &json!({"type": 3, "invocationId": "5"}),
        ],
        "the stream of the frame: {got:?}"
    );
}

#[tokio::test]
async fn a_bad_call_gets_a_completion_with_an_error_and_the_connection_stays() {
    let addr = start_hub(|hub| hub).await;
    let mut client = HubClient::connect(addr).await;
    let bad = [
        ("1", "Nope", json!([])),            // no such method
        ("2", "Add", json!([1])),            // too few arguments
        ("3", "Add", json!(["one", "two"])), // arguments of the wrong type
        ("4", "Echo", json!(["a", "b"])),    // too many arguments
        ("5", "Counter", json!([3])),        // a stream, called as a method
        ("6", "Fail", json!([])),            // the method's own error
    ];
    for (id, target, arguments) in bad {
        let answer = client.call(id, target, arguments.clone()).await;
        assert_eq!(answer["type"], 3, "{target}{arguments}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{target}{arguments} answered without an error: {answer}"));
        assert!(!error.is_empty(), "{answer}");
        assert!(answer.get("result").is_none(), "{answer}");
    }
    // A method called as a stream: a Completion with an error too.
    client
        .send(&[json!({"type": 4, "invocationId": "7", "target": "Echo", "arguments": [1]})])
        .await;
    let answer = client.next_not_ping().await;
    assert_eq!(answer["invocationId"], "7", "{answer}");
    assert!(answer["error"].is_string(), "{answer}");

    // Still connected: the next call is answered.
    let answer = client.call("8", "Echo", json!(["fine"])).await;
    assert_eq!(
        answer,
        json!({"type": 3, "invocationId": "8", "result": "fine"})
    );
}

#[tokio::test]
async fn a_hub_method_that_panics_is_answered_with_an_error_and_later_calls_still_run() {
    let addr = start_hub(|hub| {
        hub.method("Panic", |_call, (really,): (bool,)| async move {
            if really {
                panic!("a hub method panicking on purpose");
            }
            Ok(())
        })
    })
    .await;
    let mut client = HubClient::connect(addr).await;
    let answer = client.call("1", "Panic", json!([true])).await;
    assert_eq!(answer["type"], 3, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("Panic"), "{answer}");
    // The client's next calls still run: the panic did not leave its queue stuck.
    for id in ["2", "3"] {
        let answer = client.call(id, "Echo", json!([id])).await;
        assert_eq!(answer, json!({"type": 3, "invocationId": id, "result": id}));
    }
}

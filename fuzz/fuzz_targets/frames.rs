//! The whole connection engine on hostile client bytes: a valid upgrade request, then the
//! fuzz input as the WebSocket byte stream, through hyper and `WebSocketServer::upgrade`
//! with the default settings and an echo handler, over an in-memory duplex pipe.
//!
//! Checks, beyond "no panic": the server ends the connection once the client has sent
//! everything and shut its side down, and the handler sees `on_open` first and exactly one
//! `on_close`, last. The clock is paused, so close timeouts cost no real time.
//!
//! Input: byte 0 picks the mode. Even: the rest is sent as it is. Odd: the rest is a list
//! of frames, each `[fin/rsv/opcode byte][length byte][extended length]?[payload]`, sent with
//! the mask bit set and a fixed mask applied, so most frames pass the framing checks and the
//! fuzzer reaches message assembly, UTF-8, control frames and close codes. A length byte of
//! 126 or 127 takes a 2- or 8-byte declared length from the input (which may lie).
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use websocket_handler::{
    CloseCode, CloseFrame, Connection, Error, Message,
    WebSocketHandler, WebSocketServer,
};

const HANDSHAKE: &[u8] = b"GET /fuzz HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Open,
    Message,
    Error,
    Close,
}

/// Echoes messages back, closes on the text `!close`, and records its callbacks.
struct Echo {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Echo {
    fn record(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

impl WebSocketHandler for Echo {
    async fn on_open(&mut self, _conn: &Connection) {
        self.record(Event::Open);
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        self.record(Event::Message);
        if matches!(&message, Message::Text(text) if text.as_str() == "!close") {
            let _ = conn.close(CloseCode::NORMAL, "bye");
        } else {
            let _ = conn.send(message);
        }
    }

    async fn on_error(&mut self, _conn: &Connection, _error: &Error) {
        self.record(Event::Error);
    }

    async fn on_close(&mut self, _conn: &Connection, _frame: &CloseFrame) {
        self.record(Event::Close);
    }
}

/// The odd mode: frames described by the input, masked as a client must.
fn masked_frames(mut input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 2);
    while let [head, length, rest @ ..] = input {
        out.push(*head);
        let (declared, rest) = match *length {
            126 if rest.len() >= 2 => (u16::from_be_bytes([rest[0], rest[1]]) as u64, &rest[2..]),
            127 if rest.len() >= 8 => (
                u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
                &rest[8..],
            ),
            126 | 127 => (0, rest),
            short => (short as u64, rest),
        };
        match declared {
            0..=125 => out.push(0x80 | declared as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(declared as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&declared.to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        let take = rest
            .len()
            .min(usize::try_from(declared).unwrap_or(usize::MAX));
        let (payload, rest) = rest.split_at(take);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        input = rest;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let stream = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        masked_frames(rest)
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let events = Arc::new(Mutex::new(Vec::new()));
    let handler_events = events.clone();
    runtime.block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let websockets = WebSocketServer::new();
        let service = service_fn(move |request| {
            let handler = Echo {
                events: handler_events.clone(),
            };
            let response = websockets.upgrade(request, handler);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(
            http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .with_upgrades(),
        );

        let (mut from_server, mut to_server) = tokio::io::split(client);
        // The frames go right behind the request (hyper may read some along with it), but
        // the client shuts its side down only after the 101: hyper drops a connection that
        // is half-closed before it answers.
        let (answered, wait_for_answer) = tokio::sync::oneshot::channel::<()>();
        let send = async {
            // The server may stop reading (and drop the pipe) at any point: ignore errors.
            let _ = to_server.write_all(HANDSHAKE).await;
            let _ = to_server.write_all(&stream).await;
            let _ = wait_for_answer.await;
            let _ = to_server.shutdown().await;
        };
        let receive = async {
            let mut answered = Some(answered);
            let mut received = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = from_server.read(&mut chunk).await {
                received.extend_from_slice(&chunk[..n]);
                if answered.is_some() && received.windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = answered.take().expect("checked").send(());
                }
            }
            received
        };
        let (_, received) = tokio::time::timeout(Duration::from_secs(600), async {
            tokio::join!(send, receive)
        })
        .await
        .expect("the server did not end the connection after the client's EOF");
        assert!(
            received.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
            "{:?}",
            String::from_utf8_lossy(&received[..received.len().min(200)])
        );

        // on_close may run just after the socket is dropped: give the driver time to finish.
        for _ in 0..1000 {
            if events.lock().unwrap().contains(&Event::Close) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let events = events.lock().unwrap();
        assert_eq!(events.first(), Some(&Event::Open), "{events:?}");
        assert_eq!(events.last(), Some(&Event::Close), "{events:?}");
        assert_eq!(
            events.iter().filter(|e| **e == Event::Close).count(),
            1,
            "{events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| **e == Event::Open).count(),
            1,
            "{events:?}"
        );
    });
});

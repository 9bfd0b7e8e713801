//! permessage-deflate (RFC 7692) with real sockets: raw TCP clients that offer the extension
//! and read and write compressed frames themselves (inflating and deflating with flate2),
//! beside a plain client that does not offer it.

mod common;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tokio::sync::Barrier;
use websocket_handler::{
    Connection, History, Position, WebSocketCollection, WebSocketHandler, WebSocketServer,
};

use common::{connect, masked_frame, next_text, read_frame, serve, within, EchoRoom};

/// Chrome's offer.
const CHROME: &str = "permessage-deflate; client_max_window_bits";

async fn room_server(server: WebSocketServer) -> (std::net::SocketAddr, WebSocketCollection) {
    let room = WebSocketCollection::new();
    let shared = room.clone();
    let addr = serve(server, move |_| EchoRoom {
        room: shared.clone(),
    })
    .await;
    (addr, room)
}

/// A raw client that offered `offer` (none if empty): its socket and the 101's headers.
async fn raw(addr: std::net::SocketAddr, offer: &str) -> (TcpStream, String) {
    raw_to(addr, "/", offer).await
}

/// [`raw`] for the request target `path`.
async fn raw_to(addr: std::net::SocketAddr, path: &str, offer: &str) -> (TcpStream, String) {
    let mut stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let extension = if offer.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Extensions: {offer}\r\n")
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         {extension}\r\n"
    );
    within("the handshake", stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    // Byte by byte: the first frame may follow the head in the same segment.
    let mut head = Vec::new();
    within("the 101 response", async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("the response head"));
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
    (stream, head)
}

/// The `Sec-WebSocket-Extensions` value of a response head, if any.
fn extensions(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    })
}

/// The next text message, inflated if it came compressed; and whether it did.
async fn read_text(stream: &mut TcpStream) -> (String, bool) {
    let (compressed, opcode, payload) = read_frame(stream).await;
    assert_eq!(opcode, 1, "a text frame");
    let bytes = if compressed {
        inflate(&payload)
    } else {
        payload
    };
    (String::from_utf8(bytes).expect("UTF-8"), compressed)
}

/// What a client does (RFC 7692 section 7.2.2): append 00 00 ff ff, raw inflate.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(64 * 1024);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("the server's deflate data inflates");
    out
}

/// What a client sends (RFC 7692 section 7.2.1): raw deflate, sync flush, the trailing
/// 00 00 ff ff removed.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut deflater = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    deflater
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A masked client frame with RSV1 set.
fn compressed_frame(opcode: u8, compressed: &[u8]) -> Vec<u8> {
    let mut frame = masked_frame(true, opcode, compressed);
    frame[0] |= 0x40;
    frame
}

/// A chat-like JSON line of about `len` bytes.
fn json_like(len: usize) -> String {
    let mut text = String::new();
    let mut n = 0;
    while text.len() < len {
        text.push_str(&format!(
            "{{\"user\":\"user{n}\",\"room\":\"lobby\",\"text\":\"hello everyone, message {n}\"}},"
        ));
        n += 1;
    }
    text.truncate(len);
    text
}

#[tokio::test]
async fn a_broadcast_is_compressed_once_for_all_that_agreed_and_plain_for_the_others() {
    let server = WebSocketServer::builder().permessage_deflate(true).build();
    let metrics = server.metrics().clone();
    let (addr, room) = room_server(server).await;
    let mut deflaters = Vec::new();
    for _ in 0..5 {
        let (mut stream, head) = raw(addr, CHROME).await;
        let answer = extensions(&head).expect("permessage-deflate accepted");
        assert!(answer.starts_with("permessage-deflate"), "{answer}");
        assert!(answer.contains("server_no_context_takeover"), "{answer}");
        assert!(answer.contains("client_no_context_takeover"), "{answer}");
        assert!(!answer.contains("client_max_window_bits"), "{answer}");
        let (joined, compressed) = read_text(&mut stream).await;
        assert!(joined.starts_with("joined "), "{joined}");
        assert!(!compressed, "a short message goes plain");
        deflaters.push(stream);
    }
    let mut plain = connect(addr, "/").await;
    assert!(next_text(&mut plain).await.starts_with("joined "));
    within("all six in the room", async {
        while room.len() < 6 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let text = json_like(4096);
    let before = metrics.snapshot();
    assert_eq!(room.broadcast(text.clone()), 6);
    for stream in &mut deflaters {
        assert_eq!(read_text(stream).await, (text.clone(), true));
    }
    assert_eq!(next_text(&mut plain).await, text);
    let after = metrics.snapshot();
    assert_eq!(
        after.messages_compressed - before.messages_compressed,
        1,
        "one compression for the five clients that agreed"
    );
    let (from, to) = (
        after.compressed_from_bytes - before.compressed_from_bytes,
        after.compressed_to_bytes - before.compressed_to_bytes,
    );
    assert_eq!(from, 4096);
    assert!(
        to * 3 <= from,
        "JSON-like text shrinks at least 3x: {from} -> {to}"
    );
}

#[tokio::test]
async fn a_clients_compressed_messages_are_inflated_and_a_bomb_closes_with_1009() {
    let server = WebSocketServer::builder()
        .permessage_deflate(true)
        .max_message_size(64 * 1024)
        .build();
    let (addr, _room) = room_server(server).await;
    let (mut stream, head) = raw(addr, "permessage-deflate").await;
    assert!(
        extensions(&head).is_some(),
        "Firefox's bare offer is accepted"
    );
    read_text(&mut stream).await;

    // Echoed: inflated by the server, compressed again on the way back.
    let text = json_like(2000);
    let frame = compressed_frame(1, &deflate(text.as_bytes()));
    stream.write_all(&frame).await.expect("write");
    assert_eq!(read_text(&mut stream).await, (text, true));

    // 10 MiB of zeros in about 10 KB: past the 64 KiB limit as it inflates.
    let bomb = deflate(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    stream
        .write_all(&compressed_frame(2, &bomb))
        .await
        .expect("write");
    let (_, opcode, payload) = read_frame(&mut stream).await;
    assert_eq!(opcode, 8, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
}

#[tokio::test]
async fn offers_the_server_cannot_take_are_declined_without_failing_the_handshake() {
    let server = WebSocketServer::builder().permessage_deflate(true).build();
    let (addr, _room) = room_server(server).await;
    let text = json_like(1000);

    // An unknown parameter: declined, and the connection works uncompressed.
    let (mut stream, head) = raw(addr, "permessage-deflate; hello=world").await;
    assert_eq!(extensions(&head), None);
    read_text(&mut stream).await;
    stream
        .write_all(&masked_frame(true, 1, text.as_bytes()))
        .await
        .expect("write");
    assert_eq!(read_text(&mut stream).await, (text.clone(), false));

    // An 8-bit window, which zlib cannot deflate with: accepted (the client may compress),
    // but the server sends plain frames.
    let (mut stream, head) = raw(addr, "permessage-deflate; server_max_window_bits=8").await;
    let answer = extensions(&head).expect("accepted");
    assert!(answer.contains("server_max_window_bits=8"), "{answer}");
    read_text(&mut stream).await;
    stream
        .write_all(&compressed_frame(1, &deflate(text.as_bytes())))
        .await
        .expect("write");
    assert_eq!(read_text(&mut stream).await, (text.clone(), false));

    // A smaller window is honoured.
    let (mut stream, head) = raw(addr, "permessage-deflate; server_max_window_bits=10").await;
    assert!(extensions(&head)
        .expect("accepted")
        .contains("server_max_window_bits=10"));
    read_text(&mut stream).await;
    stream
        .write_all(&masked_frame(true, 1, text.as_bytes()))
        .await
        .expect("write");
    assert_eq!(read_text(&mut stream).await, (text, true));
}

#[tokio::test]
async fn without_permessage_deflate_the_offer_is_ignored_and_rsv1_is_refused() {
    let server = WebSocketServer::builder().build();
    let (addr, _room) = room_server(server).await;
    let (mut stream, head) = raw(addr, CHROME).await;
    assert_eq!(extensions(&head), None);
    read_text(&mut stream).await;
    stream
        .write_all(&compressed_frame(1, &deflate(b"hello")))
        .await
        .expect("write");
    let (_, opcode, payload) = read_frame(&mut stream).await;
    assert_eq!(opcode, 8, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
}

/// Resumes from `?after=POSITION` once every client of `together` has come, then says
/// `resumed N`.
struct Resumer {
    room: WebSocketCollection,
    after: Position,
    together: Arc<Barrier>,
}

impl WebSocketHandler for Resumer {
    async fn on_open(&mut self, conn: &Connection) {
        self.together.wait().await;
        let resumed = self.room.resume(conn, &self.after).await.expect("resumed");
        let _ = conn.send(format!("resumed {}", resumed.replayed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resuming_together_share_each_replayed_messages_compression() {
    const MISSED: usize = 600;
    const CLIENTS: usize = 4;
    // A small queue: each replay goes out in many small steps, side by side.
    let server = WebSocketServer::builder()
        .permessage_deflate(true)
        .outbound_queue_capacity(32)
        .build();
    let metrics = server.metrics().clone();
    let room = WebSocketCollection::new()
        .with_history(History::new().max_messages(10_000).max_bytes(16 << 20));
    room.broadcast("first");
    let first = room.last_position().expect("a position");
    let texts: Vec<String> = (0..MISSED)
        .map(|n| format!("{n} {}", json_like(2048)))
        .collect();
    for text in &texts {
        room.broadcast(text.clone());
    }
    let together = Arc::new(Barrier::new(CLIENTS));
    let shared = room.clone();
    let addr = common::serve(server, move |_| Resumer {
        room: shared.clone(),
        after: first,
        together: together.clone(),
    })
    .await;

    let before = metrics.snapshot();
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let (mut stream, head) = raw_to(addr, &format!("/?after={first}"), CHROME).await;
        assert!(extensions(&head).is_some(), "permessage-deflate accepted");
        let texts = texts.clone();
        readers.push(tokio::spawn(async move {
            for text in &texts {
                let (line, compressed) = read_text(&mut stream).await;
                let (_position, rest) = line.split_once(' ').expect("tagged");
                let (_previous, got) = rest.split_once(' ').expect("tagged");
                assert_eq!(got, text, "replayed in order");
                assert!(compressed, "a long replayed message comes compressed");
            }
            let (line, _) = read_text(&mut stream).await;
            assert_eq!(line, format!("resumed {MISSED}"));
        }));
    }
    for reader in readers {
        within("every replay", reader).await.expect("a reader");
    }
    let compressed = metrics.snapshot().messages_compressed - before.messages_compressed;
    assert_eq!(
        compressed, MISSED as u64,
        "each replayed message compressed once for the {CLIENTS} resumes, not once each"
    );
}

/// Joins the room and hands its connection to the test.
struct Handed {
    room: WebSocketCollection,
    connections: std::sync::mpsc::Sender<Connection>,
}

impl WebSocketHandler for Handed {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        let _ = self.connections.send(conn.clone());
    }
}

/// Reads and drops every frame until the socket ends.
fn drain(mut stream: TcpStream) {
    tokio::spawn(async move {
        let mut buffer = vec![0; 1 << 16];
        while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_compressed_broadcast_does_not_hold_up_joins_and_leaves() {
    const BROADCASTS: usize = 3;
    let server = WebSocketServer::builder()
        .permessage_deflate(true)
        .max_message_size(64 << 20)
        .build();
    let metrics = server.metrics().clone();
    // With a history: its lock is held while a broadcast is delivered, too.
    let room = WebSocketCollection::new().with_history(History::new().max_bytes(64 << 20));
    let (connections, handed) = std::sync::mpsc::channel();
    let shared = room.clone();
    let addr = common::serve(server, move |_| Handed {
        room: shared.clone(),
        connections: connections.clone(),
    })
    .await;
    // One member stays; the other leaves and joins again and again.
    let mut members = Vec::new();
    for _ in 0..2 {
        let (stream, head) = raw(addr, CHROME).await;
        assert!(extensions(&head).is_some(), "permessage-deflate accepted");
        drain(stream);
        let connection = within("the connection", async {
            loop {
                if let Ok(connection) = handed.try_recv() {
                    break connection;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        members.push(connection);
    }
    let mover = members.pop().expect("two members");

    let text = json_like(1 << 20);
    let before = metrics.snapshot();
    let broadcasting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let joins = {
        let (room, broadcasting) = (room.clone(), broadcasting.clone());
        std::thread::spawn(move || {
            let mut longest = std::time::Duration::ZERO;
            let mut count = 0;
            while broadcasting.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                room.remove(mover.id());
                room.add(mover.clone());
                longest = longest.max(started.elapsed());
                count += 1;
            }
            (longest, count)
        })
    };
    let room_for_broadcasts = room.clone();
    let shortest_broadcast = tokio::task::spawn_blocking(move || {
        (0..BROADCASTS)
            .map(|_| {
                let started = std::time::Instant::now();
                room_for_broadcasts.broadcast(text.clone());
                started.elapsed()
            })
            .min()
            .expect("broadcasts")
    })
    .await
    .expect("the broadcasts");
    broadcasting.store(false, std::sync::atomic::Ordering::Relaxed);
    let (longest_join, joins) = joins.join().expect("the joins");
    let compressed = metrics.snapshot().messages_compressed - before.messages_compressed;
    assert!(
        compressed >= BROADCASTS as u64,
        "every broadcast was compressed ({compressed})"
    );
    assert!(joins > 0, "members joined during the broadcasts");
    assert!(
        longest_join * 2 < shortest_broadcast,
        "a leave and join took up to {longest_join:?} while a compressing broadcast took \
         {shortest_broadcast:?}: held behind the compression"
    );
}

/// Closes the connection, then tries to send a long message: says how that went.
struct SendsAfterClose {
    text: String,
}

impl WebSocketHandler for SendsAfterClose {
    async fn on_open(&mut self, conn: &Connection) {
        let _ = conn.send(self.text.clone());
        conn.close(websocket_handler::CloseCode::NORMAL, "bye")
            .expect("a close");
        assert_eq!(
            conn.send(self.text.clone()),
            Err(websocket_handler::SendError::Closed)
        );
    }
}

#[tokio::test]
async fn a_send_on_a_closing_connection_is_refused_before_it_is_compressed() {
    let server = WebSocketServer::builder().permessage_deflate(true).build();
    let metrics = server.metrics().clone();
    let text = json_like(64 << 10);
    let shared = text.clone();
    let addr = common::serve(server, move |_| SendsAfterClose {
        text: shared.clone(),
    })
    .await;
    let (mut stream, _) = raw(addr, CHROME).await;
    assert_eq!(read_text(&mut stream).await, (text, true));
    let (_, opcode, _) = read_frame(&mut stream).await;
    assert_eq!(opcode, 8, "then the close");
    assert_eq!(
        metrics.snapshot().messages_compressed,
        1,
        "the message sent before the close, and not the one after"
    );
}

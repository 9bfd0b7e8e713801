//! Shared test harness: a real hyper server on 127.0.0.1 and real tokio-tungstenite clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use websocket_handler::{WebSocketHandler, WebSocketServer};

#[cfg(feature = "redis")]
#[allow(dead_code)] // only the cluster tests use it
pub mod cluster;
pub mod nats_server;
pub mod redis_server;
#[cfg(feature = "redis")]
#[allow(dead_code)] // only the Sentinel tests use it
pub mod sentinel;
pub mod signalr_example;
pub mod tls;

/// A client connected to a test server.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for any single wait in a test, so a broken feature fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future` for at most [`WAIT`]: a wait that would never end fails the test with
/// "timed out after 10s waiting for {what}" and the caller's line, instead of hanging it.
///
/// For any wait that is not already bounded (a helper below, or a `timeout` of its own):
/// `within("the server's close answer", client.next()).await`.
#[allow(dead_code)] // not every test binary uses it
#[track_caller]
pub fn within<'a, F>(what: &'a str, future: F) -> impl Future<Output = F::Output> + 'a
where
    F: Future + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(WAIT, future).await {
            Ok(output) => output,
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what} (at {caller})"),
        }
    }
}

/// Starts a hyper server on a free loopback port; `server` upgrades every request with a handler
/// made by `make_handler` from the request. Returns the server's address.
pub async fn serve<H, F>(server: WebSocketServer, make_handler: F) -> SocketAddr
where
    H: WebSocketHandler,
    F: Fn(&Request<Incoming>) -> H + Send + Sync + 'static,
{
    serve_with(server, Options::default(), make_handler).await
}

/// How [`serve_with`] treats accepted sockets.
#[derive(Default, Clone, Copy)]
#[allow(dead_code)] // not every test binary uses every option
pub struct Options {
    /// The kernel send buffer, in bytes: small, a client that stops reading fills it fast.
    pub send_buffer: Option<usize>,
    /// Wrap the socket in a `BufStream`: a transport that buffers writes (like TLS), whose
    /// flush can be pending, and which the crate cannot split without a lock.
    pub buffered: bool,
}

/// Like [`serve`], with [`Options`] for the accepted sockets.
#[allow(dead_code)] // not every test binary uses it
pub async fn serve_with<H, F>(
    server: WebSocketServer,
    options: Options,
    make_handler: F,
) -> SocketAddr
where
    H: WebSocketHandler,
    F: Fn(&Request<Incoming>) -> H + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let make_handler = Arc::new(make_handler);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            if let Some(bytes) = options.send_buffer {
                socket2::SockRef::from(&stream)
                    .set_send_buffer_size(bytes)
                    .expect("set the send buffer size");
            }
            let make_handler = make_handler.clone();
            let server = server.clone();
            let service = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(peer);
                let handler = make_handler(&req);
                let response = server.upgrade(req, handler);
                async move { Ok::<_, Infallible>(response) }
            });
            if options.buffered {
                let stream = tokio::io::BufStream::new(stream);
                tokio::spawn(
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            } else {
                tokio::spawn(
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        }
    });
    addr
}

/// Whether this is a CI run (`CI` set to something other than empty, `0` or `false`): then a
/// test whose programs are missing fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "0" && value != "false")
}

/// Reports that `test` did not run, and why, where the person running the tests sees it:
/// straight to stderr, which libtest does not capture (an `eprintln!` from a passing test
/// would be hidden). Under CI it fails the test instead, so nothing is skipped there.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    assert!(!in_ci(), "{test} cannot run under CI: {why}");
    let notice = format!(
        "\n    SKIPPED {test}: {why}\n    (it did not run, though libtest counts it as passed)\n\n"
    );
    let _ = std::io::stderr().write_all(notice.as_bytes());
}

/// Connects a WebSocket client to `ws://addr{path}`.
pub async fn connect(addr: SocketAddr, path: &str) -> Client {
    let (client, response) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("connect timed out")
    .expect("connect");
    assert_eq!(response.status(), 101);
    client
}

/// The next data or close message a client receives (pings and pongs are skipped), within
/// [`WAIT`] in all: pings that keep coming (a short ping interval) do not extend the wait.
pub async fn next_message<S>(client: &mut WebSocketStream<S>) -> Option<WsMessage>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("a message", async {
        loop {
            match client.next().await {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
}

/// The next text message a client receives; panics on anything else.
pub async fn next_text<S>(client: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match next_message(client).await {
        Some(WsMessage::Text(text)) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// A client read by a task of its own, so that it answers the server's pings however long
/// a test leaves it alone (the server drops a client silent past its idle timeout, 30 s by
/// default): what it gets waits in a channel until the test asks for it.
pub struct ReadAlways {
    sink: futures_util::stream::SplitSink<Client, WsMessage>,
    /// Text lines, then one `Err` saying how the connection ended, if it did.
    lines: tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
}

impl ReadAlways {
    /// Starts reading `client` now.
    pub fn new(client: Client) -> ReadAlways {
        let (sink, mut stream) = client.split();
        let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let line = match message {
                    Ok(WsMessage::Text(text)) => Ok(text.as_str().to_owned()),
                    Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                    other => Err(format!("{other:?}")),
                };
                let ended = line.is_err();
                if lines_tx.send(line).is_err() || ended {
                    return;
                }
            }
            let _ = lines_tx.send(Err("the end of the stream".to_owned()));
        });
        ReadAlways { sink, lines }
    }

    /// Sends a text message.
    pub async fn send(&mut self, text: &str) {
        within("a client's send", self.sink.send(WsMessage::text(text)))
            .await
            .expect("send");
    }

    /// The next text line, within `patience`; `None` after it. Panics if the connection
    /// ended or brought something else than text.
    pub async fn next_line_within(&mut self, patience: Duration) -> Option<String> {
        match tokio::time::timeout(patience, self.lines.recv()).await {
            Err(_) => None,
            Ok(Some(Ok(line))) => Some(line),
            Ok(Some(Err(what))) => panic!("expected a text message, got {what}"),
            Ok(None) => panic!("expected a text message, the reader is gone"),
        }
    }

    /// The next text line, within [`WAIT`]; panics without one.
    pub async fn next_line(&mut self) -> String {
        self.next_line_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no text message within {WAIT:?}"))
    }
}

/// A TCP proxy on 127.0.0.1 to `target` whose traffic can be held: while held, nothing
/// passes in either direction (what is sent waits in the proxy), as on a stalled network.
pub struct HeldProxy {
    pub addr: SocketAddr,
    held: tokio::sync::watch::Sender<bool>,
}

impl HeldProxy {
    pub async fn start(target: SocketAddr) -> HeldProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (held, gate) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (from_client, to_client) = inbound.into_split();
                let (from_target, to_target) = outbound.into_split();
                tokio::spawn(pump(from_client, to_target, gate.clone()));
                tokio::spawn(pump(from_target, to_client, gate.clone()));
            }
        });
        HeldProxy { addr, held }
    }

    /// Holds the traffic (`true`) or lets it pass, what waited first.
    pub fn hold(&self, on: bool) {
        self.held.send_replace(on);
    }
}

/// Copies `from` to `to`, waiting while the gate says held.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 64 * 1024];
    loop {
        if gate.wait_for(|held| !*held).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|held| !*held).await.is_err() || to.write_all(&buffer[..n]).await.is_err()
        {
            return;
        }
    }
}

/// What the chat example tells every client when its room's history was lost.
#[allow(dead_code)] // not every test binary uses it
pub const RESET_NOTICE: &str = "some messages were lost: history was reset";

/// Connects `name` to a chat example server (the classic protocol) and waits until it is
/// in the room: its own `NAME: here` has come back.
#[allow(dead_code)] // not every test binary uses it
pub async fn chat_client(addr: SocketAddr, name: &str) -> Client {
    let mut client = connect(addr, &format!("/api/Chat?username={name}")).await;
    send_text(&mut client, "here").await;
    while next_text(&mut client).await != format!("{name}: here") {}
    client
}

/// Sends a text message from a client.
pub async fn send_text<S>(client: &mut WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("a client's send", client.send(WsMessage::text(text)))
        .await
        .expect("send");
}

/// Builds the example with the same cargo that runs the tests (a no-op when `cargo test`
/// already built it, and never a stale binary when only this test target was built), and
/// returns its path.
#[allow(dead_code)] // not every test binary runs an example
pub fn example_binary(name: &str) -> std::path::PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_build_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    let mut build = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    build.args(["build", "--quiet", "--example", name]);
    // The same features as this test build, so that `--all-features` tests the whole example.
    let features = [
        ("redis", cfg!(feature = "redis")),
        ("nats", cfg!(feature = "nats")),
        ("json", cfg!(feature = "json")),
        ("axum", cfg!(feature = "axum")),
        ("tls", cfg!(feature = "tls")),
        ("signalr", cfg!(feature = "signalr")),
    ];
    for (feature, on) in features {
        if on {
            build.args(["--features", feature]);
        }
    }
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    // Not the variables cargo set for this test binary (`CARGO_PKG_NAME`...): build scripts
    // that watch one (ring's) would otherwise rebuild, here and again in the next `cargo test`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let for_this_crate = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
        ];
        if for_this_crate.iter().any(|prefix| key.starts_with(prefix))
            || matches!(&*key, "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR")
        {
            build.env_remove(&*key);
        }
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build --example");
    assert!(status.success(), "cargo build --example {name} failed");
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// The chat example process, listening; killed when dropped.
#[allow(dead_code)] // not every test binary runs the chat example
pub struct ChatServer {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Lines the example printed to stderr, not yet consumed by `wait_for_stderr`.
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
}

#[allow(dead_code)]
impl ChatServer {
    /// Starts the example on `addr` (port 0: a free one) and waits until it listens.
    pub async fn start(addr: &str) -> ChatServer {
        Self::start_with(addr, &[]).await
    }

    /// Like [`start`](Self::start), with more command-line arguments.
    pub async fn start_with(addr: &str, args: &[&str]) -> ChatServer {
        Self::start_example("chat", addr, args).await
    }

    /// Starts the chat example `name` (`chat` or `axum_chat`), which takes `--addr` and
    /// prints the page's URL once it listens.
    pub async fn start_example(name: &str, addr: &str, args: &[&str]) -> ChatServer {
        use tokio::io::{AsyncBufReadExt, BufReader};

        let binary = example_binary(name);
        let mut child = tokio::process::Command::new(&binary)
            .args(["--addr", addr])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // The example prints the URL to open once it listens: wait for that line.
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("chat example printed nothing")
            .expect("read stdout")
            .expect("chat example exited");
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://") || word.starts_with("https://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        assert!(url.ends_with("/chat.htm"), "{url}");
        let host = url.split_once("://").map_or(url, |(_, rest)| rest);
        let addr: SocketAddr = host[..host.len() - "/chat.htm".len()]
            .parse()
            .expect("address in URL");
        // Keep reading stdout, so the example never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // Stderr is echoed, as if inherited, and kept for `wait_for_stderr`.
        let (stderr_tx, stderr) = tokio::sync::mpsc::unbounded_channel();
        let mut err_lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                eprintln!("[chat {addr}] {line}");
                let _ = stderr_tx.send(line);
            }
        });
        ChatServer {
            child,
            addr,
            stderr,
        }
    }

    /// Waits until the example prints a line to stderr containing `needle`; panics after
    /// [`WAIT`]. Lines before it are consumed.
    pub async fn wait_for_stderr(&mut self, needle: &str) -> String {
        let waiting = async {
            while let Some(line) = self.stderr.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!(
                "chat example {} exited before printing {needle:?}",
                self.addr
            )
        };
        tokio::time::timeout(WAIT, waiting)
            .await
            .unwrap_or_else(|_| panic!("chat example {} did not print {needle:?}", self.addr))
    }

    /// Presses Ctrl-C (sends SIGINT): `client` must then get a 1001 close and the server
    /// must exit with success.
    pub async fn ctrl_c_expecting_goodbye(mut self, client: &mut Client) {
        let pid = self.child.id().expect("example pid").to_string();
        // The shell's own `kill`: no procps needed on a minimal machine.
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -INT {pid}")])
            .status()
            .expect("run kill");
        assert!(status.success());
        match next_message(client).await {
            Some(WsMessage::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
        assert_eq!(next_message(client).await, None);
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the example exits")
            .expect("wait for it");
        assert!(exit.success(), "{exit:?}");
    }

    /// Kills the server (as a crash would) and waits until it is gone; panics after [`WAIT`].
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill the chat example");
        let _ = within("the killed chat example to exit", self.child.wait()).await;
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A valid opening handshake for `path`, written by hand, for raw TCP clients.
#[allow(dead_code)] // not every test binary uses it
pub fn raw_handshake(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

/// Reads from a raw client until the bytes received contain `needle`; panics if the server
/// closes first or it takes longer than [`WAIT`]. Returns everything read.
#[allow(dead_code)] // not every test binary uses it
pub async fn read_until_contains(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;

    let mut received = Vec::new();
    let reading = async {
        while !received
            .windows(needle.len())
            .any(|window| window == needle)
        {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "server closed before sending {needle:?}: {received:?}"
            );
            received.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, reading)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}"));
    received
}

/// Sends a raw HTTP/1.1 GET for `target` (with `extra_headers`, each ending in `\r\n`) and
/// returns the whole response as text.
#[allow(dead_code)] // not every test binary uses it
pub async fn http_get(addr: SocketAddr, target: &str, extra_headers: &str) -> String {
    http_request(addr, "GET", target, extra_headers).await
}

/// Like [`http_get`], with another method (`POST`, with an empty body; `OPTIONS`...).
#[allow(dead_code)] // not every test binary uses it
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    extra_headers: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = within("a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{length}{extra_headers}\r\n"
    );
    within(
        "the request to be written",
        stream.write_all(request.as_bytes()),
    )
    .await
    .expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// The status code of [`http_get`]'s response.
#[allow(dead_code)] // not every test binary uses it
pub async fn http_status(addr: SocketAddr, target: &str) -> u16 {
    let response = http_get(addr, target, "").await;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// A client frame as RFC 6455 says a client must send it: masked (with a fixed key).
#[allow(dead_code)] // not every test binary uses it
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// A raw TCP WebSocket client that has done its handshake and may then misbehave: stop
/// reading (a receive buffer of `recv_buffer` bytes fills fast), trickle bytes, and so on.
#[allow(dead_code)] // not every test binary uses it
pub async fn raw_client(addr: SocketAddr, path: &str, recv_buffer: Option<u32>) -> TcpStream {
    use tokio::io::AsyncWriteExt;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).expect("receive buffer");
    }
    let mut stream = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    within(
        "the handshake to be written",
        stream.write_all(&raw_handshake(path)),
    )
    .await
    .expect("send the handshake");
    read_until_contains(&mut stream, b"\r\n\r\n").await;
    stream
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written in a directory of its
/// own: the PEM files of the certificate and its key, and the certificate for a client's
/// trust store.
#[allow(dead_code)] // not every test binary serves TLS
pub fn self_signed_certificate(
    test: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    tokio_rustls::rustls::pki_types::CertificateDer<'static>,
) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("a self-signed certificate");
    let dir = temp_dir(test);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert.pem");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key.pem");
    (cert, key, made.cert.der().clone())
}

/// A fresh, empty directory of the test's own under the system's temporary directory.
#[allow(dead_code)] // not every test binary needs one
pub fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsh-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// One frame from a server over any byte stream (a raw socket, TLS, an HTTP/2 stream):
/// whether RSV1 (compressed) is set, the opcode, and the payload. Servers do not mask.
#[allow(dead_code)] // not every test binary reads raw frames
pub async fn read_frame<S>(stream: &mut S) -> (bool, u8, Vec<u8>)
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;

    within("a frame from the server", async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.expect("frame header");
        let len = match head[1] & 0x7f {
            126 => {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.expect("length");
                u64::from(u16::from_be_bytes(len))
            }
            127 => {
                let mut len = [0u8; 8];
                stream.read_exact(&mut len).await.expect("length");
                u64::from_be_bytes(len)
            }
            len => u64::from(len),
        };
        assert_eq!(head[1] & 0x80, 0, "servers do not mask");
        assert!(head[0] & 0x80 != 0, "the server sends no fragments");
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.expect("payload");
        (head[0] & 0x40 != 0, head[0] & 0x0f, payload)
    })
    .await
}

/// The next frame from the server, which must be an uncompressed text frame.
#[allow(dead_code)] // not every test binary reads raw frames
pub async fn read_frame_text<S>(stream: &mut S) -> String
where
    S: tokio::io::AsyncRead + Unpin,
{
    let (compressed, opcode, payload) = read_frame(stream).await;
    assert_eq!((compressed, opcode), (false, 1), "a plain text frame");
    String::from_utf8(payload).expect("UTF-8")
}

/// Writes a masked text frame, as a client must, to any byte stream.
#[allow(dead_code)] // not every test binary writes raw frames
pub async fn send_masked_text<S>(stream: &mut S, text: &str)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;

    within(
        "a frame to be written",
        stream.write_all(&masked_frame(true, 1, text.as_bytes())),
    )
    .await
    .expect("write");
}

/// A handler that puts every connection in one room and says `joined ID`; a message
/// `broadcast TEXT` goes to the room as TEXT, anything else is echoed.
#[allow(dead_code)] // not every test binary uses it
pub struct EchoRoom {
    pub room: websocket_handler::WebSocketCollection,
}

impl WebSocketHandler for EchoRoom {
    async fn on_open(&mut self, conn: &websocket_handler::Connection) {
        self.room.add(conn.clone());
        let _ = conn.send(format!("joined {}", conn.id()));
    }

    async fn on_message(
        &mut self,
        conn: &websocket_handler::Connection,
        message: websocket_handler::Message,
    ) {
        match message
            .as_text()
            .and_then(|text| text.strip_prefix("broadcast "))
        {
            Some(text) => {
                self.room.broadcast(text.to_owned());
            }
            None => {
                let _ = conn.send(message);
            }
        }
    }
}

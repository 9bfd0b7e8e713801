//! Admission that can wait: `serve` hands each checked upgrade to an async `admit`, which
//! accepts it with a handler or answers any response; nothing is counted until it accepts.
//! Over real sockets, with tokio-tungstenite clients.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{within, WAIT};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Error as WsError;
use websocket_handler::http::StatusCode;
use websocket_handler::{Connection, Message, WebSocketHandler, WebSocketServer, WebSocketUpgrade};

/// Greets with the peer's address as the server sees it and the `tag`s of its query, then
/// echoes.
struct Echo;

impl WebSocketHandler for Echo {
    async fn on_open(&mut self, conn: &Connection) {
        let peer = conn.remote_addr().map(|addr| addr.to_string());
        let tags = conn.query_params("tag").join(",");
        let _ = conn.send(format!("peer {} tags {tags}", peer.unwrap_or_default()));
    }
    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = conn.send(message);
    }
}

/// The application's key store: looking a token up takes a trip, as to a database; the
/// token "slow" waits until the test lets it through.
#[derive(Clone)]
struct Keys {
    gate: Arc<Semaphore>,
}

impl Keys {
    async fn user_of(&self, token: &str) -> Option<String> {
        tokio::task::yield_now().await;
        match token {
            "ana-key" => Some("ana".to_owned()),
            "slow" => {
                let _pass = self.gate.acquire().await.ok()?;
                Some("slow".to_owned())
            }
            _ => None,
        }
    }
}

/// `serve` on a free port with an admission that checks `?token=` against `keys`;
/// counts the admissions asked for.
async fn serve_with_tokens(server: WebSocketServer, keys: Keys) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, move |upgrade: WebSocketUpgrade| {
                counted.fetch_add(1, Ordering::SeqCst);
                let keys = keys.clone();
                async move {
                    let Some(token) = upgrade.query_param("token") else {
                        return upgrade.refuse(StatusCode::FORBIDDEN, "no token\n");
                    };
                    match keys.user_of(&token).await {
                        Some(_user) => upgrade.accept(Echo),
                        None => upgrade.refuse(StatusCode::UNAUTHORIZED, "unknown token\n"),
                    }
                }
            })
            .await;
    });
    (addr, asked)
}

fn keys() -> Keys {
    Keys {
        gate: Arc::new(Semaphore::new(0)),
    }
}

/// The status and body of a refused handshake.
async fn refused(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let url = format!("ws://{addr}{path}");
    match within("the handshake", tokio_tungstenite::connect_async(url)).await {
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (
                response.status(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
        Err(other) => panic!("{path}: the handshake failed otherwise: {other}"),
        Ok((_, response)) => panic!("{path} was admitted: {}", response.status()),
    }
}

#[tokio::test]
async fn an_async_check_admits_a_good_token_and_refuses_others_with_their_own_response() {
    let (addr, _) = serve_with_tokens(WebSocketServer::new(), keys()).await;

    let mut client = common::connect(addr, "/?tag=a&token=ana-key&tag=b+c").await;
    let greeting = common::next_text(&mut client).await;
    assert!(
        greeting.starts_with("peer 127.0.0.1:"),
        "the handler sees the peer's address: {greeting:?}"
    );
    assert!(
        greeting.ends_with(" tags a,b c"),
        "every value of a repeated parameter: {greeting:?}"
    );
    common::send_text(&mut client, "hello").await;
    assert_eq!(common::next_text(&mut client).await, "hello");

    assert_eq!(
        refused(addr, "/?token=stolen").await,
        (StatusCode::UNAUTHORIZED, "unknown token\n".to_owned())
    );
    assert_eq!(
        refused(addr, "/").await,
        (StatusCode::FORBIDDEN, "no token\n".to_owned())
    );
}

#[tokio::test]
async fn an_admission_that_waits_holds_up_no_other() {
    let keys = keys();
    let (addr, _) = serve_with_tokens(WebSocketServer::new(), keys.clone()).await;

    let slow = tokio::spawn(common::connect(addr, "/?token=slow"));
    // While the slow one waits on its lookup, another client is admitted.
    let mut quick = common::connect(addr, "/?token=ana-key").await;
    common::next_text(&mut quick).await;
    assert!(
        !slow.is_finished(),
        "the slow admission went ahead of its lookup"
    );
    keys.gate.add_permits(1);
    let mut slow = within("the slow admission", slow)
        .await
        .expect("the slow client's task");
    common::next_text(&mut slow).await;
    common::send_text(&mut slow, "late but in").await;
    assert_eq!(common::next_text(&mut slow).await, "late but in");
}

#[tokio::test]
async fn refusals_hold_no_connection_only_an_accept_counts() {
    let server = WebSocketServer::builder().max_connections(1).build();
    let (addr, _) = serve_with_tokens(server, keys()).await;
    for _ in 0..20 {
        assert_eq!(
            refused(addr, "/?token=bad").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // Twenty refusals later the one place is still free...
    let mut client = common::connect(addr, "/?token=ana-key").await;
    common::next_text(&mut client).await;
    // ...and now taken: the limit is checked when the admission accepts.
    assert_eq!(
        refused(addr, "/?token=ana-key").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn an_invalid_handshake_never_reaches_the_admission() {
    let (addr, asked) = serve_with_tokens(WebSocketServer::new(), keys()).await;
    assert_eq!(common::http_status(addr, "/?token=ana-key").await, 400);
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    let _client = common::connect(addr, "/?token=ana-key").await;
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_admission_slower_than_the_handshake_timeout_is_answered_503() {
    let server = WebSocketServer::builder()
        .handshake_timeout(Duration::from_millis(300))
        .build();
    // "slow" waits for a gate that never opens.
    let (addr, _) = serve_with_tokens(server, keys()).await;
    let started = tokio::time::Instant::now();
    let (status, body) = refused(addr, "/?token=slow").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < WAIT,
        "answered only after {:?}",
        started.elapsed()
    );
}

//! A SignalR chat hub that the official clients connect to: the JavaScript client
//! (`@microsoft/signalr`) on the page `/`, or any client at `/hubs/chat`.
//!
//! ```text
//! cargo run --example signalr_chat --features signalr                 # http://127.0.0.1:5000/
//! cargo run --example signalr_chat --features signalr -- --addr 127.0.0.1:0
//! cargo run --example signalr_chat --features signalr -- --same-origin \
//!     --allowed-origin http://localhost:8080
//! ```
//!
//! The hub's methods:
//! - `SendMessage(user, message)`: every client gets `ReceiveMessage(user, message)`;
//! - `JoinGroup(group)`, `LeaveGroup(group)`, and `SendToGroup(group, user, message)`: the
//!   group's members get `ReceiveMessage(user, message)`;
//! - `Echo(value)` returns `value`; `Fail()` answers an error;
//! - `Counter(count, delayMs)` streams `0, 1, ... count - 1`, one every `delayMs`;
//! - `AskClient(value)` invokes the caller's `ClientEcho(value)` and returns its answer.
//!
//! The page loads the JavaScript client from `/signalr.js`, served from the npm package
//! installed by `npm ci` in `tests/signalr/` (or the file `--client-js` names): the
//! repository holds no copy of it. `/?hub=URL` connects the page to a hub elsewhere: a
//! page of another origin sends negotiate with credentials after a CORS preflight, which
//! the hub answers for the origins it accepts (any, unless `--same-origin` or
//! `--allowed-origin` say otherwise). Ctrl-C closes every connection with a Close that lets
//! the clients reconnect.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{header, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde_json::Value;
use tokio::net::TcpListener;
use websocket_handler::signalr::{Hub, HubError};
use websocket_handler::{Body, WebSocketServer};

const PAGE: &str = include_str!("signalr_chat.htm");

/// The hub of the chat, at `/hubs/chat`.
fn chat_hub(server: &WebSocketServer) -> Hub {
    Hub::builder("/hubs/chat")
        .method(
            "SendMessage",
            |call, (user, message): (String, String)| async move {
                call.clients()
                    .all()
                    .send("ReceiveMessage", (user, message))?;
                Ok(())
            },
        )
        .method("JoinGroup", |call, (group,): (String,)| async move {
            call.join(&group);
            Ok(())
        })
        .method("LeaveGroup", |call, (group,): (String,)| async move {
            call.leave(&group);
            Ok(())
        })
        .method(
            "SendToGroup",
            |call, (group, user, message): (String, String, String)| async move {
                call.clients()
                    .group(&group)
                    .send("ReceiveMessage", (user, message))?;
                Ok(())
            },
        )
        .method("Echo", |_call, (value,): (Value,)| async move { Ok(value) })
        .method("Fail", |_call, (): ()| async move {
            Err::<(), _>(HubError::new("Fail was called: this is its error"))
        })
        .stream(
            "Counter",
            |_call, (count, delay_ms): (u64, u64), items| async move {
                for i in 0..count {
                    items.send(&i).await?;
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                Ok(())
            },
        )
        .method("AskClient", |call, (value,): (Value,)| async move {
            // The caller's own method answers; its connection reads on meanwhile.
            call.caller()
                .invoke::<Value, _>("ClientEcho", (value,))
                .await
        })
        .build(server)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let client_js = args.client_js.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/signalr/node_modules/@microsoft/signalr/dist/browser/signalr.js")
    });
    let mut builder = WebSocketServer::builder();
    if !args.allowed_origins.is_empty() {
        builder = builder.allowed_origins(args.allowed_origins);
    }
    if args.same_origin {
        // After `allowed_origins`, which it adds to.
        builder = builder.same_origin();
    }
    let server = builder.build();
    let hub = chat_hub(&server);
    let listener = match TcpListener::bind(args.addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on {}: {error}", args.addr);
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().unwrap_or(args.addr);
    println!("listening on http://{local}/ (hub at /hubs/chat)");
    loop {
        let slot = server.connection_slot().await;
        let (stream, peer) = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (hub, client_js) = (hub.clone(), client_js.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let response = route(&hub, &client_js, request);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            if let Err(error) = slot.serve(stream, peer, Version::HTTP_11, service).await {
                eprintln!("connection from {peer} failed: {error}");
            }
        });
    }
    eprintln!("Shutting down: {} connections.", hub.connections());
    let unfinished = server.close_all(Duration::from_secs(5)).await;
    eprintln!("Stopped ({unfinished} connections did not close in time).");
}

/// The page, the client's script, and the hub.
fn route(hub: &Hub, client_js: &PathBuf, request: Request<Incoming>) -> Response<Body> {
    match request.uri().path() {
        "/" | "/signalr_chat.htm" => file(PAGE.into(), "text/html; charset=utf-8"),
        "/signalr.js" => match std::fs::read(client_js) {
            Ok(script) => file(script, "text/javascript"),
            Err(error) => {
                let text = format!(
                    "{}: {error} (run `npm ci` in tests/signalr, or pass --client-js)\n",
                    client_js.display()
                );
                status(StatusCode::NOT_FOUND, text)
            }
        },
        path if hub.serves(path) => hub.handle(request),
        _ => status(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn file(body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.parse().expect("a valid type"),
    );
    response
}

fn status(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

struct Args {
    addr: SocketAddr,
    client_js: Option<PathBuf>,
    allowed_origins: Vec<String>,
    same_origin: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = "127.0.0.1:5000".to_owned();
    let mut client_js = None;
    let mut allowed_origins = Vec::new();
    let mut same_origin = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "--client-js" => {
                client_js = Some(PathBuf::from(
                    args.next().ok_or("--client-js needs a path")?,
                ))
            }
            "--allowed-origin" => allowed_origins.push(
                args.next()
                    .ok_or("--allowed-origin needs an origin, like http://localhost:8080")?,
            ),
            "--same-origin" => same_origin = true,
            "--help" | "-h" => {
                println!(
                    "usage: signalr_chat [--addr HOST:PORT] [--client-js PATH] \
                     [--same-origin] [--allowed-origin ORIGIN]...\n  \
                     --addr            where to listen (default 127.0.0.1:5000; port 0: any free one)\n  \
                     --client-js       the browser build of @microsoft/signalr to serve at /signalr.js\n  \
                     --same-origin     accept pages of this server only (and --allowed-origin's)\n  \
                     --allowed-origin  accept pages of this origin (scheme://host:port), and of no\n                    \
                     other unless listed too or --same-origin; by default any origin"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let addr = addr
        .parse()
        .map_err(|error| format!("invalid --addr {addr:?}: {error}"))?;
    Ok(Args {
        addr,
        client_js,
        allowed_origins,
        same_origin,
    })
}

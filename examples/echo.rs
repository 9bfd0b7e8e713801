//! Echoes every text and binary message back; the server the Autobahn conformance suite runs
//! against.
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:9001
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use websocket_handler::{upgrade, Config, Connection, Message, WebSocketHandler};

struct Echo;

#[async_trait]
impl WebSocketHandler for Echo {
    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = conn.send(message);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:9001".parse()?;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?.parse()?,
            other => {
                return Err(
                    format!("unknown argument {other:?}; usage: echo [--addr HOST:PORT]").into(),
                )
            }
        }
    }
    let listener = TcpListener::bind(addr).await?;
    println!("Echo server listening on ws://{}", listener.local_addr()?);

    // The conformance suite sends messages of up to 16 MiB.
    let config = Config::default()
        .max_message_size(64 << 20)
        .max_frame_size(16 << 20);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let config = config.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let response = upgrade(req, &config, Echo);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(
            http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades(),
        );
    }
}

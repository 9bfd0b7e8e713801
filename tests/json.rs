//! Typed JSON messages over real sockets (cargo feature `json`): a client's message read as
//! a value of the application's type, an error that says what was wrong (the connection
//! kept), and values sent and broadcast as JSON text.
#![cfg(feature = "json")]

mod common;

use common::{connect, next_text, send_text};
use serde::{Deserialize, Serialize};
use websocket_handler::{
    Connection, Message, WebSocketCollection, WebSocketHandler, WebSocketServer,
};

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Command {
    Bid { lot: u32, amount: u64 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Outbid {
    lot: u32,
    amount: u64,
    by: String,
}

#[derive(Serialize)]
struct Problem {
    error: String,
}

/// An auction room: every bid is broadcast as an `Outbid`; a bad message is answered with
/// a `Problem` to its sender only.
struct Bidder {
    name: String,
    room: WebSocketCollection,
}

impl WebSocketHandler for Bidder {
    async fn on_open(&mut self, conn: &Connection) {
        self.room.add(conn.clone());
        conn.send_json(&serde_json::json!({ "welcome": self.name }))
            .expect("queued");
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        match message.json::<Command>() {
            Ok(Command::Bid { lot, amount }) => {
                let outbid = Outbid {
                    lot,
                    amount,
                    by: self.name.clone(),
                };
                self.room.broadcast_json(&outbid).expect("encoded");
            }
            Err(error) => {
                let problem = Problem {
                    error: error.to_string(),
                };
                conn.send_json(&problem).expect("queued");
            }
        }
    }
}

#[tokio::test]
async fn typed_json_in_and_out_and_a_bad_message_is_told_what_was_wrong() {
    let room = WebSocketCollection::new();
    let shared = room.clone();
    let addr = common::serve(WebSocketServer::new(), move |request| Bidder {
        name: request.uri().query().unwrap_or("anonymous").to_owned(),
        room: shared.clone(),
    })
    .await;
    let mut ann = connect(addr, "/?ann").await;
    assert_eq!(next_text(&mut ann).await, r#"{"welcome":"ann"}"#);
    let mut bob = connect(addr, "/?bob").await;
    assert_eq!(next_text(&mut bob).await, r#"{"welcome":"bob"}"#);

    send_text(&mut ann, r#"{"type": "bid", "lot": 7, "amount": 120}"#).await;
    for client in [&mut ann, &mut bob] {
        let outbid: Outbid = serde_json::from_str(&next_text(client).await).expect("JSON");
        assert_eq!(
            outbid,
            Outbid {
                lot: 7,
                amount: 120,
                by: "ann".to_owned()
            }
        );
    }

    // Wrong shape, then not JSON at all: each answered, the connection kept.
    send_text(&mut bob, r#"{"type": "bid", "lot": "seven", "amount": 1}"#).await;
    let problem: serde_json::Value = serde_json::from_str(&next_text(&mut bob).await).unwrap();
    let error = problem["error"].as_str().expect("an error");
    // An enum tagged by a field is read from a copy without positions.
    assert_eq!(
        error,
        r#"JSON of the wrong shape: invalid type: string "seven", expected u32"#
    );
    send_text(&mut bob, r#"{"type": "bid", "lot": 7"#).await;
    let problem: serde_json::Value = serde_json::from_str(&next_text(&mut bob).await).unwrap();
    let error = problem["error"].as_str().expect("an error");
    assert!(error.starts_with("not JSON (line 1, column 24)"), "{error}");

    send_text(&mut bob, r#"{"type": "bid", "lot": 8, "amount": 5}"#).await;
    let outbid: Outbid = serde_json::from_str(&next_text(&mut ann).await).expect("JSON");
    assert_eq!((outbid.lot, outbid.by.as_str()), (8, "bob"));
}

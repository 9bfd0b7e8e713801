//! Typed JSON messages (cargo feature `json`): read a message as a value of your own type,
//! send or broadcast a value encoded once.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use websocket_handler::{Connection, Message, WebSocketCollection, WebSocketHandler};
//!
//! #[derive(Deserialize)]
//! #[serde(tag = "type", rename_all = "snake_case")]
//! enum Command {
//!     Say { text: String },
//! }
//!
//! #[derive(Serialize)]
//! struct Said<'a> {
//!     from: &'a str,
//!     text: &'a str,
//! }
//!
//! struct Chat {
//!     name: String,
//!     room: WebSocketCollection,
//! }
//!
//! impl WebSocketHandler for Chat {
//!     async fn on_message(&mut self, conn: &Connection, message: Message) {
//!         match message.json::<Command>() {
//!             Ok(Command::Say { text }) => {
//!                 let said = Said { from: &self.name, text: &text };
//!                 // Encoded once for every member.
//!                 let _ = self.room.broadcast_json(&said);
//!             }
//!             // Says what was wrong and where; the connection stays open.
//!             Err(error) => {
//!                 let _ = conn.send(error.to_string());
//!             }
//!         }
//!     }
//! }
//! ```

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Connection;
use crate::error::SendError;
use crate::fanout::collection::WebSocketCollection;
use crate::fanout::rooms::Rooms;
use crate::protocol::message::Message;

/// Why a message is not the JSON value asked for, or a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The message is not JSON: malformed, or cut short.
    #[error("not JSON{}: {reason}", at(*.line, *.column))]
    Syntax {
        /// Where the input went wrong, from 1 (0 when not known).
        line: usize,
        /// Where on that line, from 1 (0 when not known).
        column: usize,
        /// What was wrong, as serde_json says it.
        reason: String,
    },
    /// The message is JSON, but not of the type asked for (a missing field, a string where
    /// a number was expected...).
    #[error("JSON of the wrong shape{}: {reason}", at(*.line, *.column))]
    Shape {
        /// Where, from 1 (0 when not known: serde reads some types, such as enums tagged
        /// by a field, from a copy of the input without positions).
        line: usize,
        /// Where on that line, from 1 (0 when not known).
        column: usize,
        /// What was wrong, as serde_json says it.
        reason: String,
    },
    /// The value could not be encoded (its `Serialize` failed, or a map had keys that
    /// are not strings).
    #[error("could not encode JSON: {0}")]
    Encode(String),
}

/// " (line L, column C)", or nothing when the position is not known.
fn at(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" (line {line}, column {column})")
    }
}

impl JsonError {
    pub(crate) fn decoding(error: serde_json::Error) -> Self {
        let (line, column) = (error.line(), error.column());
        // serde_json's own text ends with " at line L column C": said above already.
        let reason = error.to_string();
        let reason = match reason.rfind(" at line ") {
            Some(at) => reason[..at].to_owned(),
            None => reason,
        };
        match error.classify() {
            serde_json::error::Category::Data => JsonError::Shape {
                line,
                column,
                reason,
            },
            _ => JsonError::Syntax {
                line,
                column,
                reason,
            },
        }
    }
}

/// Why [`Connection::send_json`] did not queue a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendJsonError {
    /// The value could not be encoded.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The connection did not take it (closed, or its queue full).
    #[error(transparent)]
    Send(#[from] SendError),
}

impl Message {
    /// The message (text or binary) read as JSON into a `T`.
    ///
    /// ```
    /// use websocket_handler::{JsonError, Message};
    ///
    /// #[derive(serde::Deserialize, Debug, PartialEq)]
    /// struct Bid { lot: u32, amount: u64 }
    ///
    /// let bid: Bid = Message::from(r#"{"lot": 7, "amount": 120}"#).json().unwrap();
    /// assert_eq!(bid, Bid { lot: 7, amount: 120 });
    ///
    /// let wrong = Message::from(r#"{"lot": "seven"}"#).json::<Bid>().unwrap_err();
    /// assert!(matches!(wrong, JsonError::Shape { column: 15, .. }), "{wrong}");
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, JsonError> {
        serde_json::from_slice(self.as_bytes()).map_err(JsonError::decoding)
    }

    /// A text message holding `value` as JSON.
    pub fn from_json<T: Serialize + ?Sized>(value: &T) -> Result<Message, JsonError> {
        let text =
            serde_json::to_string(value).map_err(|error| JsonError::Encode(error.to_string()))?;
        Ok(Message::from(text))
    }
}

impl Connection {
    /// Queues `value` as a JSON text message, without waiting (as [`send`](Self::send)).
    pub fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendJsonError> {
        Ok(self.send(Message::from_json(value)?)?)
    }
}

impl WebSocketCollection {
    /// Broadcasts `value` as a JSON text message, encoded once for every member (as
    /// [`broadcast`](Self::broadcast), and returning what it returns).
    pub fn broadcast_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<usize, JsonError> {
        Ok(self.broadcast(Message::from_json(value)?))
    }
}

impl<K> Rooms<K>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    /// Broadcasts `value` as a JSON text message to `room`, encoded once (as
    /// [`broadcast_to`](Self::broadcast_to), and returning what it returns).
    pub fn broadcast_json_to<T: Serialize + ?Sized>(
        &self,
        room: &K,
        value: &T,
    ) -> Result<usize, JsonError> {
        Ok(self.broadcast_to(room, Message::from_json(value)?))
    }
}

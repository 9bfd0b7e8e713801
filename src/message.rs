//! Whole WebSocket messages, as handlers receive them and as connections send them.

use bytes::Bytes;
use tokio_tungstenite::tungstenite;

pub use tungstenite::Utf8Bytes;

/// A whole WebSocket data message: text or binary.
///
/// Payloads are reference-counted ([`Utf8Bytes`], [`Bytes`]): cloning a message, for example
/// to queue it to a thousand connections, copies no payload bytes.
///
/// Received payloads share their allocation with the connection's read buffer; copy them
/// (`text.to_string()`, `bytes.to_vec()`) if you keep them for long.
///
/// ```
/// use websocket_handler::Message;
///
/// let text = Message::from("hello");
/// assert_eq!(text.as_text(), Some("hello"));
/// let binary = Message::from(vec![1u8, 2, 3]);
/// assert_eq!(binary.len(), 3);
/// assert_eq!(binary.as_text(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A UTF-8 text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The payload as bytes, for either kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text.into())
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(text: Utf8Bytes) -> Self {
        Message::Text(text)
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Message::Binary(bytes)
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::Binary(bytes.into())
    }
}

impl From<&[u8]> for Message {
    fn from(bytes: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(bytes))
    }
}

//! The bytes a backplane carries: one broadcast with its sender and sequence number.
//!
//! Layout, big-endian: version (1 byte), kind (1 byte: 1 text, 2 binary, plus 16 when a
//! room follows), sender id (16 bytes), sequence number (8 bytes), then for a room its
//! name's length (2 bytes) and the name in UTF-8, then the payload as it goes on the wire.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::SenderId;
use crate::protocol::message::{Message, Utf8Bytes};

const VERSION: u8 = 1;
const TEXT: u8 = 1;
const BINARY: u8 = 2;
/// Set in the kind when the envelope is for one room of a [`Rooms`](crate::Rooms).
const ROOM: u8 = 16;
pub(crate) const HEADER_LEN: usize = 1 + 1 + 16 + 8;

/// Bytes from a backplane that are not a message envelope of this crate. Nothing is
/// delivered; the backplane reports and drops them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than the 26-byte envelope header.
    #[error("backplane message of {len} bytes is shorter than the 26-byte envelope header")]
    TooShort {
        /// Its length in bytes.
        len: usize,
    },
    /// Written by a different version of this crate's envelope format.
    #[error("backplane message has envelope version {0}; this build reads version 1")]
    UnknownVersion(u8),
    /// The message kind is neither text (1) nor binary (2).
    #[error("backplane message has unknown kind {0} (1 is text, 2 is binary)")]
    UnknownKind(u8),
    /// A text message, or a room name, that is not valid UTF-8.
    #[error("backplane message has text or a room name that is not valid UTF-8")]
    InvalidUtf8,
    /// The room name's length points past the end of the message.
    #[error("backplane message ends inside its room name")]
    Truncated,
    /// A message for one room of a `Rooms` on a collection's topic, or the other way
    /// round: two applications share a topic.
    #[error("backplane message for a {got} arrived on the topic of a {expected}; do two applications share the topic?")]
    WrongTarget {
        /// What the message is for: `room` or `collection`.
        got: &'static str,
        /// What subscribed to the topic.
        expected: &'static str,
    },
}

/// A decoded envelope.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) sender: SenderId,
    pub(crate) seq: u64,
    pub(crate) room: Option<String>,
    pub(crate) message: Message,
}

/// Longest room name an envelope can carry, in bytes.
pub(crate) const MAX_ROOM_LEN: usize = u16::MAX as usize;

/// `room` must be at most [`MAX_ROOM_LEN`] bytes.
pub(crate) fn encode(sender: SenderId, seq: u64, room: Option<&str>, message: &Message) -> Bytes {
    let payload = message.as_bytes();
    let room_len = room.map_or(0, |room| 2 + room.len());
    let mut bytes = BytesMut::with_capacity(HEADER_LEN + room_len + payload.len());
    bytes.put_u8(VERSION);
    let kind = match message {
        Message::Text(_) => TEXT,
        Message::Binary(_) => BINARY,
    };
    bytes.put_u8(if room.is_some() { kind | ROOM } else { kind });
    bytes.put_u128(sender);
    bytes.put_u64(seq);
    if let Some(room) = room {
        debug_assert!(room.len() <= MAX_ROOM_LEN);
        bytes.put_u16(room.len() as u16);
        bytes.put_slice(room.as_bytes());
    }
    bytes.put_slice(payload);
    bytes.freeze()
}

/// The room an envelope is for, read from its header alone: `None` for a whole collection's,
/// and for what is not an envelope (that is found out when it is decoded).
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))] // read by the Redis and NATS backplanes
pub(crate) fn room_of(bytes: &[u8]) -> Option<&[u8]> {
    let kind = *bytes.get(1)?;
    if bytes.first() != Some(&VERSION) || kind & ROOM == 0 {
        return None;
    }
    let len = bytes.get(HEADER_LEN..HEADER_LEN + 2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    bytes.get(HEADER_LEN + 2..HEADER_LEN + 2 + len)
}

/// The payload shares `bytes`' allocation.
pub(crate) fn decode(mut bytes: Bytes) -> Result<Envelope, EnvelopeError> {
    if bytes.len() < HEADER_LEN {
        return Err(EnvelopeError::TooShort { len: bytes.len() });
    }
    let version = bytes.get_u8();
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion(version));
    }
    let kind = bytes.get_u8();
    let sender = bytes.get_u128();
    let seq = bytes.get_u64();
    let room = if kind & ROOM != 0 {
        if bytes.len() < 2 {
            return Err(EnvelopeError::Truncated);
        }
        let len = usize::from(bytes.get_u16());
        if bytes.len() < len {
            return Err(EnvelopeError::Truncated);
        }
        let name = bytes.split_to(len);
        let name = std::str::from_utf8(&name).map_err(|_| EnvelopeError::InvalidUtf8)?;
        Some(name.to_owned())
    } else {
        None
    };
    let message = match kind & !ROOM {
        TEXT => Message::Text(Utf8Bytes::try_from(bytes).map_err(|_| EnvelopeError::InvalidUtf8)?),
        BINARY => Message::Binary(bytes),
        other => return Err(EnvelopeError::UnknownKind(other)),
    };
    Ok(Envelope {
        sender,
        seq,
        room,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_binary() {
        for message in [Message::from("héllo"), Message::from(vec![0u8, 255, 3])] {
            for room in [None, Some(""), Some("salle à manger")] {
                let bytes = encode(u128::MAX - 1, 42, room, &message);
                let room_len = room.map_or(0, |room| 2 + room.len());
                assert_eq!(bytes.len(), HEADER_LEN + room_len + message.len());
                let envelope = decode(bytes.clone()).expect("decodes");
                assert_eq!(envelope.sender, u128::MAX - 1);
                assert_eq!(envelope.seq, 42);
                assert_eq!(envelope.room.as_deref(), room);
                let header_room = room_of(&bytes).map(|name| std::str::from_utf8(name).unwrap());
                assert_eq!(header_room, room);
                assert_eq!(envelope.message, message);
            }
        }
    }

    #[test]
    fn rejects_what_is_not_an_envelope() {
        let good = encode(1, 1, None, &Message::from("x"));
        assert_eq!(
            decode(good.slice(..HEADER_LEN - 1)).unwrap_err(),
            EnvelopeError::TooShort {
                len: HEADER_LEN - 1
            }
        );
        let mut other_version = BytesMut::from(&good[..]);
        other_version[0] = 9;
        assert_eq!(
            decode(other_version.freeze()).unwrap_err(),
            EnvelopeError::UnknownVersion(9)
        );
        let mut other_kind = BytesMut::from(&good[..]);
        other_kind[1] = 3;
        assert_eq!(
            decode(other_kind.freeze()).unwrap_err(),
            EnvelopeError::UnknownKind(3)
        );
        let mut bad_text = BytesMut::from(&good[..HEADER_LEN]);
        bad_text.put_slice(&[0xff, 0xfe]);
        assert_eq!(
            decode(bad_text.freeze()).unwrap_err(),
            EnvelopeError::InvalidUtf8
        );
        let roomed = encode(1, 1, Some("abc"), &Message::from("x"));
        for cut in [HEADER_LEN, HEADER_LEN + 1, HEADER_LEN + 4] {
            assert_eq!(room_of(&roomed[..cut]), None, "cut at {cut}");
            assert_eq!(
                decode(roomed.slice(..cut)).unwrap_err(),
                EnvelopeError::Truncated,
                "cut at {cut}"
            );
        }
        let mut bad_room = BytesMut::from(&roomed[..HEADER_LEN + 2]);
        bad_room.put_slice(&[0xff, 0xfe, 0xfd]);
        assert_eq!(
            decode(bad_room.freeze()).unwrap_err(),
            EnvelopeError::InvalidUtf8
        );
    }
}

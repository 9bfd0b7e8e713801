//! The bytes a backplane carries: one broadcast with its sender and sequence number.
//!
//! Layout, big-endian: version (1 byte), kind (1 byte: 1 text, 2 binary), sender id
//! (16 bytes), sequence number (8 bytes), then the payload as it goes on the wire.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::SenderId;
use crate::error::EnvelopeError;
use crate::message::{Message, Utf8Bytes};

const VERSION: u8 = 1;
const TEXT: u8 = 1;
const BINARY: u8 = 2;
pub(crate) const HEADER_LEN: usize = 1 + 1 + 16 + 8;

/// A decoded envelope.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) sender: SenderId,
    pub(crate) seq: u64,
    pub(crate) message: Message,
}

pub(crate) fn encode(sender: SenderId, seq: u64, message: &Message) -> Bytes {
    let payload = message.as_bytes();
    let mut bytes = BytesMut::with_capacity(HEADER_LEN + payload.len());
    bytes.put_u8(VERSION);
    bytes.put_u8(match message {
        Message::Text(_) => TEXT,
        Message::Binary(_) => BINARY,
    });
    bytes.put_u128(sender);
    bytes.put_u64(seq);
    bytes.put_slice(payload);
    bytes.freeze()
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
    let message = match kind {
        TEXT => Message::Text(Utf8Bytes::try_from(bytes).map_err(|_| EnvelopeError::InvalidUtf8)?),
        BINARY => Message::Binary(bytes),
        other => return Err(EnvelopeError::UnknownKind(other)),
    };
    Ok(Envelope {
        sender,
        seq,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_binary() {
        for message in [Message::from("héllo"), Message::from(vec![0u8, 255, 3])] {
            let bytes = encode(u128::MAX - 1, 42, &message);
            assert_eq!(bytes.len(), HEADER_LEN + message.len());
            let envelope = decode(bytes).expect("decodes");
            assert_eq!(envelope.sender, u128::MAX - 1);
            assert_eq!(envelope.seq, 42);
            assert_eq!(envelope.message, message);
        }
    }

    #[test]
    fn rejects_what_is_not_an_envelope() {
        let good = encode(1, 1, &Message::from("x"));
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
    }
}

//! The frames a server sends (RFC 6455 section 5.2): encoded once, unmasked, so the same
//! header and payload can go to every client of a broadcast.

use bytes::Bytes;

use crate::protocol::close::CloseFrame;
use crate::protocol::deflate;
use crate::protocol::message::Message;

/// Opcodes (RFC 6455 section 5.2).
pub(crate) mod opcode {
    /// A text message.
    pub(crate) const TEXT: u8 = 0x1;
    /// A binary message.
    pub(crate) const BINARY: u8 = 0x2;
    /// A close frame.
    pub(crate) const CLOSE: u8 = 0x8;
    /// A pong.
    pub(crate) const PONG: u8 = 0xa;
}

/// The first header bit after FIN: set on a compressed message's first frame (RFC 7692).
const RSV1: u8 = 0x40;

/// A server-to-client frame, encoded once: servers never mask, so the same header and
/// payload go to every client of a broadcast.
#[derive(Clone)]
pub(crate) struct Frame {
    header: [u8; 10],
    header_len: u8,
    payload: Bytes,
}

impl Frame {
    /// A final (unfragmented) frame with `opcode`.
    pub(crate) fn new(opcode: u8, payload: Bytes) -> Self {
        let mut header = [0u8; 10];
        header[0] = 0x80 | opcode;
        let len = payload.len();
        let header_len = if len < 126 {
            header[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            header[1] = 126;
            header[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Frame {
            header,
            header_len,
            payload,
        }
    }

    /// The frame for a text or binary message.
    pub(crate) fn from_message(message: Message) -> Self {
        match message {
            Message::Text(text) => Frame::new(opcode::TEXT, text.into()),
            Message::Binary(bytes) => Frame::new(opcode::BINARY, bytes),
        }
    }

    /// The frame for a text or binary message compressed with permessage-deflate (RSV1
    /// set), at zlib `level` with a window of `bits`; `None` if compressing failed or did
    /// not make it smaller (the message then goes plain). One compressed frame serves every
    /// client that agreed the same window: no context is taken over from one message to
    /// the next.
    pub(crate) fn deflated(message: &Message, level: u32, bits: u8) -> Option<Self> {
        let code = match message {
            Message::Text(_) => opcode::TEXT,
            Message::Binary(_) => opcode::BINARY,
        };
        let compressed = deflate::compress(message.as_bytes(), level, bits).ok()?;
        if compressed.len() >= message.len() {
            // Already compressed, or random: the plain frame is the smaller.
            return None;
        }
        let mut frame = Frame::new(code, compressed.into());
        frame.header[0] |= RSV1;
        Some(frame)
    }

    /// The same frame with a payload of its own (see the collection's copy per shard).
    pub(crate) fn fresh_copy(&self) -> Self {
        Frame {
            payload: shared_copy(&self.payload),
            ..*self
        }
    }

    /// The frame for our close frame.
    pub(crate) fn close(frame: &CloseFrame) -> Self {
        let mut payload = Vec::with_capacity(2 + frame.reason.len());
        payload.extend_from_slice(&frame.code.as_u16().to_be_bytes());
        payload.extend_from_slice(frame.reason.as_bytes());
        Frame::new(opcode::CLOSE, payload.into())
    }

    pub(crate) fn payload(&self) -> &Bytes {
        &self.payload
    }

    pub(crate) fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }

    /// Length on the wire.
    pub(crate) fn len(&self) -> usize {
        self.header().len() + self.payload.len()
    }
}

/// A copy of `payload` that clones without allocating: up to 1 KiB, in one allocation with
/// its reference count (`Bytes::copy_from_slice` makes a second one at the first clone).
fn shared_copy(payload: &[u8]) -> Bytes {
    fn inline<const N: usize>(payload: &[u8]) -> Bytes {
        let mut bytes = [0u8; N];
        bytes[..payload.len()].copy_from_slice(payload);
        Bytes::from_owner(Inline {
            len: payload.len() as u16,
            bytes,
        })
    }
    match payload.len() {
        0..=64 => inline::<64>(payload),
        65..=256 => inline::<256>(payload),
        257..=1024 => inline::<1024>(payload),
        _ => Bytes::copy_from_slice(payload),
    }
}

/// A small payload held inline, for [`Bytes::from_owner`].
struct Inline<const N: usize> {
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::Frame;
    use crate::protocol::close::{CloseCode, CloseFrame};
    use bytes::Bytes;

    #[test]
    fn frames_are_encoded_as_rfc_6455_says() {
        let short = Frame::new(0x1, Bytes::from_static(b"hi"));
        assert_eq!(short.header(), [0x81, 2]);
        let medium = Frame::new(0x2, Bytes::from(vec![0; 300]));
        assert_eq!(medium.header(), [0x82, 126, 1, 44]);
        let long = Frame::new(0x2, Bytes::from(vec![0; 70_000]));
        assert_eq!(long.header(), [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let close = CloseFrame {
            code: CloseCode::NORMAL,
            reason: "bye".to_owned(),
        };
        assert_eq!(Frame::close(&close).header(), [0x88, 5]);
        assert_eq!(&Frame::close(&close).payload()[..], b"\x03\xe8bye");
    }

    #[test]
    fn a_message_that_compression_does_not_shrink_goes_plain() {
        use crate::protocol::message::Message;
        let text = Message::from("hello hello hello hello hello hello hello hello".repeat(20));
        let frame = Frame::deflated(&text, 6, 15).expect("repetitive text shrinks");
        assert!(frame.payload().len() < text.len());
        // Bytes with no redundancy (a xorshift sequence) come out of deflate a little larger.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(Frame::deflated(&Message::Binary(noise.into()), 6, 15).is_none());
    }

    #[test]
    fn a_shared_copy_is_the_payload_at_every_size() {
        for len in [0, 1, 64, 65, 256, 257, 1024, 1025, 4096] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let copy = super::shared_copy(&payload);
            assert_eq!(&copy[..], &payload[..], "at {len} bytes");
            assert_ne!(copy.as_ptr(), payload.as_ptr());
        }
    }
}

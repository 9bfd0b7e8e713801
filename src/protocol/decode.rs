//! Streaming, sans-IO decoder of client-to-server WebSocket frames (RFC 6455 section 5)
//! into whole messages.
//!
//! Header bytes (2 to 14) are collected in a fixed array and each field is checked as
//! soon as it is complete. Payload bytes are unmasked while they are copied into the
//! message buffer, which grows only with bytes that have arrived. Nothing refers to the
//! caller's input after `feed` returns, so the input may come in chunks of any size.
//!
//! Between two frames, as an idle connection's is, a decoder holds nothing but an empty
//! pointer: its working state is on the caller's stack while it decodes, and is boxed only
//! when an input ends within a frame or a message.

use bytes::Bytes;

use crate::protocol::close::{CloseCode, CloseFrame};
use crate::protocol::message::{Message, Utf8Bytes};
use crate::protocol::utf8::Utf8Validator;

/// Longest frame header: 2 fixed bytes, 8 bytes of extended length, 4 bytes of mask.
const MAX_HEADER: usize = 14;
/// Longest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;

/// Size limits and negotiated options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest payload one frame may declare.
    pub(crate) max_frame_size: usize,
    /// Largest payload of a whole data message, all fragments together.
    pub(crate) max_message_size: usize,
    /// Whether RSV1 (permessage-deflate) may be set on the first frame of a data message.
    pub(crate) allow_rsv1: bool,
}

/// One complete unit decoded from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// A whole data message (fragments reassembled, text validated).
    Message(Message),
    /// A whole data message whose first frame had RSV1 set (permessage-deflate): the
    /// unmasked payload of all its fragments concatenated, still compressed, NOT UTF-8-validated.
    Compressed {
        /// Whether the message is text (opcode 0x1) rather than binary.
        text: bool,
        /// The compressed payload.
        payload: Bytes,
    },
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// The peer's close frame: None if its payload was empty.
    Close(Option<CloseFrame>),
}

/// Why the stream was rejected; the decoder returns it again for every later call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The peer broke RFC 6455 (close with 1002).
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
    /// A text message or close reason is not UTF-8 (close with 1007).
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A frame or message is larger than allowed (close with 1009).
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The size the message (or, for a control frame, the frame) would reach.
        size: u64,
        /// The limit that was exceeded.
        max: usize,
    },
}

/// The opcodes RFC 6455 defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpCode {
    /// 0x0: the next fragment of a data message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decodes the low nibble of the first header byte; `None` for reserved opcodes.
    fn from_nibble(nibble: u8) -> Option<Self> {
        match nibble {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// The frame whose payload is being received.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// What the frame carries.
    opcode: OpCode,
    /// Whether this is the last frame of its message.
    fin: bool,
    /// The masking key.
    mask: [u8; 4],
    /// Payload bytes received so far; it selects the mask byte for the next one.
    received: usize,
    /// Payload bytes still to come.
    remaining: usize,
}

/// The data message being reassembled.
#[derive(Debug)]
struct Partial {
    /// Text (opcode 0x1) rather than binary.
    text: bool,
    /// The first frame had RSV1 set: the payload is compressed and not validated here.
    compressed: bool,
    /// The unmasked payload received so far.
    buf: Vec<u8>,
    /// UTF-8 state of `buf` for uncompressed text.
    utf8: Utf8Validator,
}

/// Where the decoder is in the stream.
#[derive(Debug)]
enum State {
    /// Collecting a frame header into `Decoder::header`.
    Header,
    /// Receiving the payload of `Decoder::frame`.
    Payload,
    /// A close frame was returned; all further input is discarded.
    Closed,
    /// An error was returned and is returned again for every call (boxed: the state is
    /// moved in and out of its box on every call that finds one).
    Failed(Box<DecodeError>),
}

/// Streaming decoder of the frames a client sends to a server.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// The state between two inputs, when an input ended within a frame or a message, or
    /// the stream has ended (closed or failed); none between frames.
    work: Option<Box<Work>>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub(crate) fn new() -> Self {
        Decoder { work: None }
    }

    /// Consumes a prefix of `input` and returns how many bytes it consumed plus at most one
    /// complete item. The caller calls again with the rest until all input is consumed
    /// (consumed == 0 only when input is empty). Never panics. `limits` are the stream's,
    /// the same on every call.
    pub(crate) fn feed(
        &mut self,
        limits: &Limits,
        input: &[u8],
    ) -> Result<(usize, Option<Item>), DecodeError> {
        match self.work.as_deref_mut() {
            Some(work) => {
                work.limits = *limits;
                let fed = work.feed(input);
                if work.is_between_frames() {
                    self.work = None;
                }
                fed
            }
            None => {
                let mut work = Work::new(*limits);
                let fed = work.feed(input);
                if !work.is_between_frames() {
                    self.work = Some(Box::new(work));
                }
                fed
            }
        }
    }

    /// Whether a data message is in progress: from the first byte of a data frame's header
    /// until its last fragment completes (control frames alone do not count). False after
    /// an error or a close frame.
    pub(crate) fn in_message(&self) -> bool {
        self.work
            .as_ref()
            .is_some_and(|work| work.message.is_some())
    }

    /// Heap bytes held for the partial message (the capacity of its buffer), for a
    /// server-wide memory budget. 0 when no message is in progress.
    pub(crate) fn buffered(&self) -> usize {
        self.work.as_ref().map_or(0, |work| work.buffered())
    }

    /// Payload bytes received so far of the message in progress.
    pub(crate) fn message_len(&self) -> usize {
        self.work.as_ref().map_or(0, |work| work.message_len())
    }
}

/// What a decoder works with: the limits, where it is in the stream, and what it has of
/// the frame and the message under way.
#[derive(Debug)]
struct Work {
    /// Limits and options, the stream's.
    limits: Limits,
    /// Where the decoder is in the stream.
    state: State,
    /// Header bytes received so far of the next frame.
    header: [u8; MAX_HEADER],
    /// How many bytes of `header` are in use (at most 14: a byte, not a word, of what
    /// every idle connection holds).
    header_len: u8,
    /// The frame being received, valid in `State::Payload`.
    frame: Frame,
    /// The data message in progress, from the first header byte of its first frame.
    message: Option<Partial>,
    /// Unmasked payload of the control frame being received: allocated only for a control
    /// frame that has a payload (a pong to our empty pings has none).
    control: Vec<u8>,
}

impl Work {
    /// At the start of a stream, or between two frames.
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Header,
            header: [0; MAX_HEADER],
            header_len: 0,
            frame: Frame {
                opcode: OpCode::Binary,
                fin: true,
                mask: [0; 4],
                received: 0,
                remaining: 0,
            },
            message: None,
            control: Vec::new(),
        }
    }

    /// Between two frames, with no message under way: nothing to keep (what `new` makes).
    fn is_between_frames(&self) -> bool {
        matches!(self.state, State::Header)
            && self.header_len == 0
            && self.message.is_none()
            && self.control.capacity() == 0
    }

    /// [`Decoder::feed`].
    fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Item>), DecodeError> {
        match &self.state {
            State::Failed(e) => return Err((**e).clone()),
            State::Closed => return Ok((input.len(), None)),
            State::Header | State::Payload => {}
        }
        // The item this call completes: on the caller's stack, not in the decoder.
        let mut ready = None;
        match self.feed_frames(input, &mut ready) {
            Ok(used) => Ok((used, ready)),
            Err(e) => {
                self.state = State::Failed(Box::new(e.clone()));
                // Free the partial message at once; the connection is going away.
                self.message = None;
                Err(e)
            }
        }
    }

    /// [`Decoder::buffered`].
    fn buffered(&self) -> usize {
        self.message.as_ref().map_or(0, |m| m.buf.capacity())
    }

    /// [`Decoder::message_len`].
    fn message_len(&self) -> usize {
        self.message.as_ref().map_or(0, |m| m.buf.len())
    }

    /// Runs frames through the state machine until an item is in `ready` or `input` is
    /// used up; returns the bytes consumed.
    fn feed_frames(
        &mut self,
        input: &[u8],
        ready: &mut Option<Item>,
    ) -> Result<usize, DecodeError> {
        let mut used = 0;
        while let Some(rest) = input.get(used..).filter(|r| !r.is_empty()) {
            let n = match self.state {
                State::Header => {
                    let (n, complete) = self.read_header(rest)?;
                    if complete {
                        self.start_frame(ready)?;
                    }
                    n
                }
                State::Payload => self.read_payload(rest, ready)?,
                // Unreachable: a close item returns at once and errors propagate.
                State::Closed | State::Failed(_) => rest.len(),
            };
            used += n;
            // Defensive `n == 0`: every state consumes at least one byte of non-empty input.
            if ready.is_some() || n == 0 {
                break;
            }
        }
        Ok(used)
    }

    /// Moves header bytes from `input` into `self.header`, checking each field as soon as
    /// it is complete. Returns the bytes used and whether the header is complete.
    fn read_header(&mut self, input: &[u8]) -> Result<(usize, bool), DecodeError> {
        if self.header_len == 0 {
            if let Some(n) = self.read_whole_header(input)? {
                return Ok((n, true));
            }
        }
        let mut used = 0;
        loop {
            let target = self.next_checkpoint();
            let filled = usize::from(self.header_len);
            let n = target
                .saturating_sub(filled)
                .min(input.len().saturating_sub(used));
            let src = input.get(used..used + n).unwrap_or_default();
            if let Some(dst) = self.header.get_mut(filled..filled + n) {
                dst.copy_from_slice(src);
            }
            used += n;
            // At most MAX_HEADER: `target` never exceeds it.
            self.header_len = (filled + n) as u8;
            if filled + n < target {
                return Ok((used, false));
            }
            if self.check_header()? {
                return Ok((used, true));
            }
        }
    }

    /// Fast path for a header wholly present at the start of `input`: one copy, and the
    /// same checks in the same order as the byte-wise path, so results do not depend on
    /// chunking. Returns the header length, or None to take the byte-wise path.
    fn read_whole_header(&mut self, input: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(&b1) = input.get(1) else {
            return Ok(None);
        };
        let total = 2 + extended_len(b1) + 4;
        // Usually more input follows, so copy a fixed 14 bytes (no length arithmetic).
        if let Some(src) = input.get(..MAX_HEADER) {
            self.header.copy_from_slice(src);
        } else if let Some(src) = input.get(..total) {
            self.header[..total].copy_from_slice(src);
        } else {
            return Ok(None);
        }
        self.header_len = 1;
        self.check_first_byte()?;
        // At most MAX_HEADER.
        self.header_len = total as u8;
        self.check_second_byte()?;
        self.check_length()?;
        Ok(Some(total))
    }

    /// The header length at which the next check is due: after the first byte, after the
    /// second, after the extended length (if any), and after the mask.
    fn next_checkpoint(&self) -> usize {
        match usize::from(self.header_len) {
            0 => 1,
            1 => 2,
            n => {
                let length_end = 2 + extended_len(self.header[1]);
                if n < length_end {
                    length_end
                } else {
                    length_end + 4
                }
            }
        }
    }

    /// Checks the header field that has just become complete; true once the whole header is.
    fn check_header(&mut self) -> Result<bool, DecodeError> {
        if self.header_len == 1 {
            self.check_first_byte()?;
            return Ok(false);
        }
        let length_end = 2 + extended_len(self.header[1]);
        let filled = usize::from(self.header_len);
        if filled == 2 {
            self.check_second_byte()?;
        }
        if filled == length_end {
            self.check_length()?;
        }
        Ok(filled == length_end + 4)
    }

    /// FIN, RSV and opcode rules; opens the message for a text or binary frame.
    fn check_first_byte(&mut self) -> Result<(), DecodeError> {
        let b0 = self.header[0];
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(DecodeError::Protocol("reserved bit RSV2 or RSV3 set"));
        }
        let Some(opcode) = OpCode::from_nibble(b0 & 0x0F) else {
            return Err(DecodeError::Protocol("reserved opcode"));
        };
        match opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                if rsv1 {
                    return Err(DecodeError::Protocol("RSV1 set on a control frame"));
                }
                if !fin {
                    return Err(DecodeError::Protocol("fragmented control frame"));
                }
            }
            OpCode::Continuation => {
                if self.message.is_none() {
                    return Err(DecodeError::Protocol(
                        "continuation frame without a message in progress",
                    ));
                }
                if rsv1 {
                    return Err(DecodeError::Protocol("RSV1 set on a continuation frame"));
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    return Err(DecodeError::Protocol(
                        "new data frame before the previous message finished",
                    ));
                }
                if rsv1 && !self.limits.allow_rsv1 {
                    return Err(DecodeError::Protocol(
                        "RSV1 set without a negotiated extension",
                    ));
                }
                // The message is in progress from its first header byte; an empty Vec
                // does not allocate.
                self.message = Some(Partial {
                    text: opcode == OpCode::Text,
                    compressed: rsv1,
                    buf: Vec::new(),
                    utf8: Utf8Validator::new(),
                });
            }
        }
        Ok(())
    }

    /// Mask bit and the control frame length bound.
    fn check_second_byte(&self) -> Result<(), DecodeError> {
        let b1 = self.header[1];
        if b1 & 0x80 == 0 {
            return Err(DecodeError::Protocol("client frame is not masked"));
        }
        if self.opcode().is_control() && usize::from(b1 & 0x7F) > MAX_CONTROL {
            return Err(DecodeError::Protocol(
                "control frame payload longer than 125 bytes",
            ));
        }
        Ok(())
    }

    /// The 64-bit length's top bit and the size limits, before any payload is buffered.
    fn check_length(&self) -> Result<(), DecodeError> {
        let len = self.declared_len();
        if len >> 63 != 0 {
            return Err(DecodeError::Protocol(
                "64-bit payload length has its most significant bit set",
            ));
        }
        let data = !self.opcode().is_control();
        let held = if data { self.message_len() } else { 0 };
        let size = to_u64(held).saturating_add(len);
        if len > to_u64(self.limits.max_frame_size) {
            return Err(DecodeError::MessageTooLarge {
                size,
                max: self.limits.max_frame_size,
            });
        }
        if data && size > to_u64(self.limits.max_message_size) {
            return Err(DecodeError::MessageTooLarge {
                size,
                max: self.limits.max_message_size,
            });
        }
        Ok(())
    }

    /// The opcode of the header being read (checked valid by `check_first_byte`).
    fn opcode(&self) -> OpCode {
        OpCode::from_nibble(self.header[0] & 0x0F).unwrap_or(OpCode::Binary)
    }

    /// The payload length the complete length field declares.
    fn declared_len(&self) -> u64 {
        let [_, b1, a, b, c, d, e, f, g, h, ..] = self.header;
        match b1 & 0x7F {
            126 => u64::from(u16::from_be_bytes([a, b])),
            127 => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
            n => u64::from(n),
        }
    }

    /// Turns the complete header into the current frame; completes an empty frame at once.
    fn start_frame(&mut self, ready: &mut Option<Item>) -> Result<(), DecodeError> {
        let b0 = self.header[0];
        let h = self.header;
        let mask = match extended_len(h[1]) {
            0 => [h[2], h[3], h[4], h[5]],
            2 => [h[4], h[5], h[6], h[7]],
            _ => [h[10], h[11], h[12], h[13]],
        };
        // check_length bounded it by max_frame_size, a usize.
        let remaining =
            usize::try_from(self.declared_len()).map_err(|_| DecodeError::MessageTooLarge {
                size: self.declared_len(),
                max: self.limits.max_frame_size,
            })?;
        self.frame = Frame {
            opcode: self.opcode(),
            fin: b0 & 0x80 != 0,
            mask,
            received: 0,
            remaining,
        };
        self.header_len = 0;
        self.state = State::Payload;
        if remaining == 0 {
            self.finish_frame(ready)?;
        }
        Ok(())
    }

    /// Unmasks as much of the current frame's payload as `input` holds into its destination.
    fn read_payload(
        &mut self,
        input: &[u8],
        ready: &mut Option<Item>,
    ) -> Result<usize, DecodeError> {
        let frame = &mut self.frame;
        let n = frame.remaining.min(input.len());
        let chunk = input.get(..n).unwrap_or_default();
        if frame.opcode.is_control() {
            // received + remaining <= 125 was checked from the header.
            self.control.reserve_exact(frame.remaining);
            unmask_extend(&mut self.control, chunk, frame.mask, frame.received);
        } else {
            let Some(msg) = self.message.as_mut() else {
                // Unreachable: a data frame's first header byte opened or found a message.
                return Err(DecodeError::Protocol("data frame without a message"));
            };
            grow(
                &mut msg.buf,
                n,
                frame.remaining,
                self.limits.max_message_size,
            );
            let start = msg.buf.len();
            unmask_extend(&mut msg.buf, chunk, frame.mask, frame.received);
            if msg.text && !msg.compressed {
                // Validate while the bytes are hot in cache, failing before the message ends.
                let fresh = msg.buf.get(start..).unwrap_or_default();
                msg.utf8.feed(fresh).map_err(|_| DecodeError::InvalidUtf8)?;
            }
        }
        frame.received += n;
        frame.remaining -= n;
        if frame.remaining == 0 {
            self.finish_frame(ready)?;
        }
        Ok(n)
    }

    /// Completes the current frame and puts the item it finishes, if any, in `ready`.
    fn finish_frame(&mut self, ready: &mut Option<Item>) -> Result<(), DecodeError> {
        self.state = State::Header;
        let frame = self.frame;
        let control = std::mem::take(&mut self.control);
        let item = match frame.opcode {
            OpCode::Ping => Item::Ping(Bytes::from(control)),
            OpCode::Pong => Item::Pong(Bytes::from(control)),
            OpCode::Close => {
                let close = parse_close(&control)?;
                self.state = State::Closed;
                self.message = None;
                Item::Close(close)
            }
            OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                if !frame.fin {
                    return Ok(());
                }
                let Some(msg) = self.message.take() else {
                    return Err(DecodeError::Protocol("data frame without a message"));
                };
                // The buffer moves into the Bytes without a copy.
                let payload = Bytes::from(msg.buf);
                if msg.compressed {
                    Item::Compressed {
                        text: msg.text,
                        payload,
                    }
                } else if msg.text {
                    msg.utf8.finish().map_err(|_| DecodeError::InvalidUtf8)?;
                    // SAFETY: `finish` has just checked the whole payload is UTF-8.
                    #[allow(unsafe_code)]
                    let text = unsafe { Utf8Bytes::from_validated(payload) };
                    Item::Message(Message::Text(text))
                } else {
                    Item::Message(Message::Binary(payload))
                }
            }
        };
        // Stored rather than returned: moving the large Result through every layer
        // measurably slowed small frames.
        *ready = Some(item);
        Ok(())
    }
}

/// Bytes of extended payload length that the second header byte announces.
fn extended_len(b1: u8) -> usize {
    match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    }
}

/// Widens a usize; lossless on every platform Rust supports (usize is at most 64 bits).
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Parses a close frame's payload (RFC 6455 section 5.5.1 and 7.4).
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, DecodeError> {
    match payload {
        [] => Ok(None),
        [_] => Err(DecodeError::Protocol("close frame payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(DecodeError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| DecodeError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code: CloseCode(code),
                reason: reason.to_owned(),
            }))
        }
    }
}

/// Makes room in `buf` for `arriving` bytes of a frame that has `frame_left` bytes to go
/// (`arriving <= frame_left`), within a message limited to `max` bytes.
///
/// A first allocation is exactly what arrived, so a whole frame present in one input gets
/// an exact buffer. Later growth doubles, but stops at the frame's end when that still
/// grows by half: frames arriving in a few chunks end up exactly sized, while many small
/// fragments stay amortised O(1) per byte. Capacity stays below twice what arrived.
fn grow(buf: &mut Vec<u8>, arriving: usize, frame_left: usize, max: usize) {
    let len = buf.len();
    let cap = buf.capacity();
    let needed = len.saturating_add(arriving);
    if needed <= cap {
        return;
    }
    let frame_end = len.saturating_add(frame_left);
    let target = cap
        .saturating_mul(2)
        .min(frame_end.max(cap.saturating_add(cap / 2)))
        .min(max)
        .max(needed);
    buf.reserve_exact(target - len);
}

/// The mask rotated so that its first byte applies at payload offset `offset`.
fn rotated(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let mut m = mask;
    m.rotate_left(offset % 4);
    m
}

/// XORs one 8-byte word with the repeated mask.
#[inline]
fn unmask_word(word: &[u8], mask: u64) -> [u8; 8] {
    let w: [u8; 8] = word.try_into().unwrap_or_default();
    (u64::from_ne_bytes(w) ^ mask).to_ne_bytes()
}

/// Appends `src` unmasked to `dst`, `offset` being the payload offset of `src[0]`.
///
/// One pass: 64-byte blocks are unmasked into a stack array (which the compiler keeps
/// in vector registers) and appended, which measured faster than a copy followed by an
/// in-place XOR and needs no `unsafe`.
fn unmask_extend(dst: &mut Vec<u8>, src: &[u8], mask: [u8; 4], offset: usize) {
    let [a, b, c, d] = rotated(mask, offset);
    let mask = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    dst.reserve(src.len());
    let mut blocks = src.chunks_exact(64);
    for block in &mut blocks {
        let mut out = [0u8; 64];
        for (o, word) in out.chunks_exact_mut(8).zip(block.chunks_exact(8)) {
            o.copy_from_slice(&unmask_word(word, mask));
        }
        dst.extend_from_slice(&out);
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for word in &mut words {
        dst.extend_from_slice(&unmask_word(word, mask));
    }
    let tail = words.remainder();
    let mut last = [0u8; 8];
    for (l, s) in last.iter_mut().zip(tail) {
        *l = *s;
    }
    let last = unmask_word(&last, mask);
    dst.extend_from_slice(last.get(..tail.len()).unwrap_or_default());
}

/// What decoding one stream observed, for comparing chunkings.
#[cfg(any(test, fuzzing))]
#[derive(Debug, PartialEq)]
struct Trace {
    /// Items in order, ending with the error if there was one.
    items: Vec<Result<Item, DecodeError>>,
    /// `in_message()` at the end.
    in_message: bool,
    /// `message_len()` at the end.
    message_len: usize,
}

/// Decodes `data` in chunks whose sizes `next_chunk` picks, through a reused scratch
/// buffer, checking the API's invariants after every call.
#[cfg(any(test, fuzzing))]
fn decode_chunked(limits: Limits, data: &[u8], next_chunk: &mut dyn FnMut() -> usize) -> Trace {
    let mut dec = Decoder::new();
    let mut scratch = Vec::new();
    let mut items = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let n = next_chunk().clamp(1, data.len() - pos);
        scratch.clear();
        scratch.extend_from_slice(&data[pos..pos + n]);
        pos += n;
        let mut off = 0;
        while off < scratch.len() {
            match dec.feed(&limits, &scratch[off..]) {
                Ok((used, item)) => {
                    assert!(
                        used > 0 && used <= scratch.len() - off,
                        "bad consumed count"
                    );
                    off += used;
                    assert!(dec.message_len() <= limits.max_message_size);
                    assert!(dec.buffered() <= 2 * dec.message_len(), "over-allocated");
                    assert!(dec.buffered() <= limits.max_message_size);
                    assert!(dec.in_message() || dec.buffered() == 0);
                    items.extend(item.map(Ok));
                }
                Err(e) => {
                    assert_eq!(
                        dec.feed(&limits, b"\x81").err(),
                        Some(e.clone()),
                        "not poisoned"
                    );
                    assert!(!dec.in_message() && dec.buffered() == 0);
                    items.push(Err(e));
                    return Trace {
                        items,
                        in_message: false,
                        message_len: 0,
                    };
                }
            }
        }
        // Scribble over the scratch buffer: the decoder must not depend on it.
        scratch.fill(0xAA);
    }
    Trace {
        items,
        in_message: dec.in_message(),
        message_len: dec.message_len(),
    }
}

/// Decodes arbitrary `data` whole, byte by byte and in pseudo-random chunkings, with
/// generous and with tight limits, and panics if the results differ or an API invariant
/// breaks. For tests and fuzzing.
#[cfg(any(test, fuzzing))]
pub(crate) fn check_chunking_invariance(data: &[u8]) {
    let generous = Limits {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 22,
        allow_rsv1: true,
    };
    let tight = Limits {
        max_frame_size: 64,
        max_message_size: 100,
        allow_rsv1: false,
    };
    let mut seed = data.iter().fold(0x2545_F491_4F6C_DD1D_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    }) | 1;
    for limits in [generous, tight] {
        let whole = decode_chunked(limits, data, &mut || usize::MAX);
        let bytewise = decode_chunked(limits, data, &mut || 1);
        assert_eq!(whole, bytewise, "byte-by-byte differs");
        for max_chunk in [2_u64, 3, 7, 16, 100, 1000] {
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                usize::try_from(seed % max_chunk + 1).unwrap_or(1)
            };
            let chunked = decode_chunked(limits, data, &mut next);
            assert_eq!(whole, chunked, "chunks of up to {max_chunk} differ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder with its limits, as the tests below use it.
    struct Dec {
        limits: Limits,
        inner: super::Decoder,
    }

    impl Dec {
        fn new(limits: Limits) -> Self {
            Dec {
                limits,
                inner: super::Decoder::new(),
            }
        }

        fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Item>), DecodeError> {
            self.inner.feed(&self.limits, input)
        }

        fn in_message(&self) -> bool {
            self.inner.in_message()
        }

        fn buffered(&self) -> usize {
            self.inner.buffered()
        }

        fn message_len(&self) -> usize {
            self.inner.message_len()
        }
    }

    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    const RSV1: u8 = 0b100;
    const RSV2: u8 = 0b010;
    const RSV3: u8 = 0b001;

    /// How a test header encodes its payload length.
    #[derive(Clone, Copy)]
    enum Len {
        /// The shortest form.
        Minimal,
        /// Always the 16-bit form (126).
        Ext16,
        /// Always the 64-bit form (127).
        Ext64,
    }

    /// A frame header; `rsv` holds RSV1..RSV3 as bits 2..0, `mask` None for unmasked.
    fn header(
        fin: bool,
        rsv: u8,
        opcode: u8,
        len: u64,
        form: Len,
        mask: Option<[u8; 4]>,
    ) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | (rsv & 7) << 4 | (opcode & 0x0F)];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match form {
            Len::Minimal if len < 126 => out.push(m | len as u8),
            Len::Minimal if len <= 0xFFFF => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Len::Ext16 => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Len::Minimal | Len::Ext64 => {
                out.push(m | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend_from_slice(&mask.unwrap_or_default());
        out
    }

    /// A whole masked client frame with the given length form.
    fn frame_with(
        fin: bool,
        rsv: u8,
        opcode: u8,
        payload: &[u8],
        form: Len,
        mask: [u8; 4],
    ) -> Vec<u8> {
        let mut out = header(fin, rsv, opcode, payload.len() as u64, form, Some(mask));
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// A whole masked client frame.
    fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        frame_with(fin, rsv, opcode, payload, Len::Minimal, mask)
    }

    /// Final masked frame without RSV bits.
    fn fin(opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(true, 0, opcode, payload, MASK)
    }

    /// Non-final masked frame without RSV bits.
    fn part(opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(false, 0, opcode, payload, MASK)
    }

    fn limits() -> Limits {
        Limits {
            max_frame_size: 1 << 20,
            max_message_size: 1 << 21,
            allow_rsv1: false,
        }
    }

    fn with_rsv1() -> Limits {
        Limits {
            allow_rsv1: true,
            ..limits()
        }
    }

    /// Decodes `data` whole with `limits`, up to and including the first error.
    fn decode(limits: Limits, data: &[u8]) -> Vec<Result<Item, DecodeError>> {
        decode_chunked(limits, data, &mut || usize::MAX).items
    }

    fn text(s: &str) -> Result<Item, DecodeError> {
        Ok(Item::Message(Message::from(s.to_owned())))
    }

    fn binary(b: &[u8]) -> Result<Item, DecodeError> {
        Ok(Item::Message(Message::Binary(Bytes::copy_from_slice(b))))
    }

    fn protocol<T>(r: Result<T, DecodeError>) -> bool {
        matches!(r, Err(DecodeError::Protocol(_)))
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn text_and_binary_messages() {
        let data = cat(&[fin(1, b"Hello"), fin(2, &[0, 1, 2, 255])]);
        assert_eq!(
            decode(limits(), &data),
            vec![text("Hello"), binary(&[0, 1, 2, 255])]
        );
    }

    #[test]
    fn returns_one_item_per_call_and_consumes_a_prefix() {
        let first = fin(1, b"one");
        let data = cat(&[first.clone(), fin(1, b"two")]);
        let mut dec = Dec::new(limits());
        let (used, item) = dec.feed(&data).unwrap();
        assert_eq!(used, first.len());
        assert_eq!(Ok(item.unwrap()), text("one"));
        let (used2, item) = dec.feed(&data[used..]).unwrap();
        assert_eq!(used + used2, data.len());
        assert_eq!(Ok(item.unwrap()), text("two"));
        assert_eq!(dec.feed(&[]).unwrap(), (0, None));
    }

    #[test]
    fn whole_frame_gets_an_exact_allocation() {
        let payload = vec![7u8; 1000];
        let mut dec = Dec::new(limits());
        let data = fin(2, &payload);
        // Feed all but the last byte: the buffer holds exactly what arrived.
        let (used, item) = dec.feed(&data[..data.len() - 1]).unwrap();
        assert!(item.is_none() && used == data.len() - 1);
        assert_eq!(dec.buffered(), 999);
        let (_, item) = dec.feed(&data[data.len() - 1..]).unwrap();
        assert_eq!(Ok(item.unwrap()), binary(&payload));
        // A frame arriving in two chunks grows straight to its exact size, not by doubling.
        let mut dec = Dec::new(limits());
        dec.feed(&data[..600]).unwrap();
        assert_eq!(dec.buffered(), 600 - 4 - 4);
        assert_eq!(dec.message_len(), 592);
        dec.feed(&data[600..data.len() - 1]).unwrap();
        assert_eq!(dec.message_len(), 999);
        assert_eq!(dec.buffered(), 1000);
    }

    #[test]
    fn fragmented_text_with_interleaved_control_frames() {
        let data = cat(&[
            part(1, b"Hel"),
            fin(9, b"ping"),
            part(0, b"lo"),
            fin(0xA, b"pong"),
            fin(0, b" world"),
        ]);
        assert_eq!(
            decode(limits(), &data),
            vec![
                Ok(Item::Ping(Bytes::from_static(b"ping"))),
                Ok(Item::Pong(Bytes::from_static(b"pong"))),
                text("Hello world"),
            ]
        );
    }

    #[test]
    fn control_frame_does_not_disturb_the_message_in_progress() {
        let mut dec = Dec::new(limits());
        dec.feed(&part(2, b"abc")).unwrap();
        assert_eq!(dec.message_len(), 3);
        let (_, item) = dec.feed(&fin(9, b"")).unwrap();
        assert_eq!(item, Some(Item::Ping(Bytes::new())));
        assert!(dec.in_message());
        assert_eq!(dec.message_len(), 3);
        let (_, item) = dec.feed(&fin(0, b"d")).unwrap();
        assert_eq!(Ok(item.unwrap()), binary(b"abcd"));
    }

    #[test]
    fn code_point_split_across_fragments() {
        let smile = "😀".as_bytes();
        for split in 1..smile.len() {
            let data = cat(&[
                part(1, &smile[..split]),
                fin(9, b"x"),
                fin(0, &smile[split..]),
            ]);
            let items = decode(limits(), &data);
            assert_eq!(items.last(), Some(&text("😀")), "split at {split}");
        }
        // Spread over three fragments, one byte in the middle one.
        let data = cat(&[
            part(1, &smile[..1]),
            part(0, &smile[1..2]),
            fin(0, &smile[2..]),
        ]);
        assert_eq!(decode(limits(), &data), vec![text("😀")]);
    }

    #[test]
    fn invalid_utf8_fails_fast_in_unfinished_message() {
        // The first fragment is invalid; nothing else has arrived.
        assert_eq!(
            decode(limits(), &part(1, b"ok\xFFmore")),
            vec![Err(DecodeError::InvalidUtf8)]
        );
        // Within a single frame, before its payload is complete.
        let data = fin(1, b"abc\xC0\x80 and a long tail that has not arrived yet");
        let mut dec = Dec::new(limits());
        assert_eq!(dec.feed(&data[..2 + 4 + 5]), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn out_of_range_and_surrogate_tails_rejected_immediately() {
        for tail in [&b"a\xF4\x90"[..], b"a\xED\xA0"] {
            let mut dec = Dec::new(limits());
            assert_eq!(
                dec.feed(&part(1, tail)),
                Err(DecodeError::InvalidUtf8),
                "{tail:02X?}"
            );
        }
        // While a valid incomplete tail waits for the next fragment.
        let mut dec = Dec::new(limits());
        assert_eq!(dec.feed(&part(1, b"a\xF4\x8F")).map(|r| r.1), Ok(None));
    }

    #[test]
    fn incomplete_code_point_at_message_end_rejected() {
        let data = cat(&[part(1, b"a\xE2\x82"), fin(0, b"")]);
        assert_eq!(decode(limits(), &data), vec![Err(DecodeError::InvalidUtf8)]);
        assert_eq!(
            decode(limits(), &fin(1, b"\xF0\x9F\x98")),
            vec![Err(DecodeError::InvalidUtf8)]
        );
    }

    #[test]
    fn unmasked_frame_rejected() {
        let mut data = header(true, 0, 1, 2, Len::Minimal, None);
        data.extend_from_slice(b"hi");
        assert!(protocol(Dec::new(limits()).feed(&data)));
        // Decided from the second byte alone.
        assert!(protocol(Dec::new(limits()).feed(&data[..2])));
    }

    #[test]
    fn rsv2_and_rsv3_rejected() {
        for rsv in [RSV2, RSV3, RSV1 | RSV2] {
            let r = Dec::new(with_rsv1()).feed(&frame(true, rsv, 2, b"x", MASK));
            assert!(protocol(r), "rsv {rsv:03b}");
        }
    }

    #[test]
    fn rsv1_rejected_without_extension() {
        let r = Dec::new(limits()).feed(&frame(true, RSV1, 1, b"x", MASK));
        assert!(protocol(r));
    }

    #[test]
    fn rsv1_on_first_frame_gives_compressed_message() {
        // Not valid UTF-8: compressed text is not validated here.
        let data = cat(&[
            frame(false, RSV1, 1, b"\xFF\x00", MASK),
            fin(9, b""),
            fin(0, b"\xC0"),
        ]);
        assert_eq!(
            decode(with_rsv1(), &data),
            vec![
                Ok(Item::Ping(Bytes::new())),
                Ok(Item::Compressed {
                    text: true,
                    payload: Bytes::from_static(b"\xFF\x00\xC0"),
                }),
            ]
        );
        let data = frame(true, RSV1, 2, b"zz", MASK);
        assert_eq!(
            decode(with_rsv1(), &data),
            vec![Ok(Item::Compressed {
                text: false,
                payload: Bytes::from_static(b"zz"),
            })]
        );
    }

    #[test]
    fn rsv1_rejected_on_continuation_and_control_frames() {
        let data = cat(&[part(1, b"a"), frame(true, RSV1, 0, b"b", MASK)]);
        let items = decode(with_rsv1(), &data);
        assert!(protocol(items[0].clone()));
        for op in [8, 9, 0xA] {
            let r = Dec::new(with_rsv1()).feed(&frame(true, RSV1, op, b"", MASK));
            assert!(protocol(r), "opcode {op}");
        }
    }

    #[test]
    fn reserved_opcodes_rejected() {
        for op in (3..=7).chain(0xB..=0xF) {
            let mut dec = Dec::new(limits());
            // Decided from the first byte alone.
            assert!(protocol(dec.feed(&fin(op, b"x")[..1])), "opcode {op:#x}");
        }
    }

    #[test]
    fn control_frames_must_be_final() {
        for op in [8, 9, 0xA] {
            assert!(
                protocol(Dec::new(limits()).feed(&part(op, b""))),
                "opcode {op}"
            );
        }
    }

    #[test]
    fn control_payload_limited_to_125_bytes() {
        let ok = fin(9, &[1; 125]);
        assert_eq!(
            decode(limits(), &ok),
            vec![Ok(Item::Ping(Bytes::from(vec![1; 125])))]
        );
        for op in [8, 9, 0xA] {
            let r = Dec::new(limits()).feed(&fin(op, &[1; 126]));
            assert!(protocol(r), "opcode {op}");
            // Even a short payload in the 16-bit length form is too long a field.
            let r = Dec::new(limits()).feed(&frame_with(true, 0, op, b"", Len::Ext16, MASK));
            assert!(protocol(r), "opcode {op}");
        }
    }

    #[test]
    fn continuation_without_message_rejected() {
        assert!(protocol(Dec::new(limits()).feed(&fin(0, b"x"))));
        // Also after a message has completed.
        let data = cat(&[fin(1, b"a"), fin(0, b"b")]);
        let items = decode(limits(), &data);
        assert_eq!(items[0], text("a"));
        assert!(protocol(items[1].clone()));
    }

    #[test]
    fn data_frame_during_message_rejected() {
        for op in [1, 2] {
            let data = cat(&[part(2, b"a"), fin(op, b"b")]);
            assert!(protocol(decode(limits(), &data)[0].clone()), "opcode {op}");
        }
    }

    #[test]
    fn length_forms_126_and_127() {
        let medium: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let large: Vec<u8> = (0..70_000u32).map(|i| (i * 31) as u8).collect();
        let data = cat(&[fin(2, &medium), fin(2, &large)]);
        assert_eq!(
            decode(limits(), &data),
            vec![binary(&medium), binary(&large)]
        );
        assert_eq!(data[1] & 0x7F, 126);
        assert_eq!(data[2 + 2 + 4 + 300 + 1] & 0x7F, 127);
        // Non-minimal encodings are accepted.
        let data = cat(&[
            frame_with(true, 0, 1, b"short", Len::Ext16, MASK),
            frame_with(true, 0, 1, b"shorter", Len::Ext64, MASK),
            frame_with(true, 0, 9, b"p", Len::Minimal, MASK),
        ]);
        assert_eq!(
            decode(limits(), &data),
            vec![
                text("short"),
                text("shorter"),
                Ok(Item::Ping(Bytes::from_static(b"p")))
            ]
        );
    }

    #[test]
    fn length_with_most_significant_bit_rejected() {
        let data = header(true, 0, 2, 1 << 63, Len::Ext64, Some(MASK));
        let unlimited = Limits {
            max_frame_size: usize::MAX,
            max_message_size: usize::MAX,
            allow_rsv1: false,
        };
        // Decided once the length field is complete, before the mask.
        assert!(protocol(Dec::new(unlimited).feed(&data[..10])));
    }

    #[test]
    fn frame_size_limit_checked_from_header() {
        let tight = Limits {
            max_frame_size: 1000,
            ..limits()
        };
        let mut dec = Dec::new(tight);
        assert_eq!(
            dec.feed(&header(true, 0, 2, 1000, Len::Minimal, Some(MASK))),
            Ok((8, None))
        );
        let mut dec = Dec::new(tight);
        let h = header(true, 0, 2, 1001, Len::Minimal, Some(MASK));
        assert_eq!(
            dec.feed(&h),
            Err(DecodeError::MessageTooLarge {
                size: 1001,
                max: 1000
            })
        );
        // Huge declared lengths, too (beyond usize on 32-bit targets).
        let mut dec = Dec::new(tight);
        let h = header(true, 0, 2, u64::MAX >> 1, Len::Minimal, Some(MASK));
        assert_eq!(
            dec.feed(&h),
            Err(DecodeError::MessageTooLarge {
                size: u64::MAX >> 1,
                max: 1000
            })
        );
    }

    #[test]
    fn message_size_limit_checked_from_header() {
        let tight = Limits {
            max_frame_size: 1000,
            max_message_size: 1500,
            allow_rsv1: false,
        };
        let mut dec = Dec::new(tight);
        dec.feed(&part(2, &[0; 800])).unwrap();
        dec.feed(&fin(9, b"")).unwrap();
        let h = header(true, 0, 0, 701, Len::Minimal, Some(MASK));
        assert_eq!(
            dec.feed(&h),
            Err(DecodeError::MessageTooLarge {
                size: 1501,
                max: 1500
            })
        );
        let mut dec = Dec::new(tight);
        dec.feed(&part(2, &[0; 800])).unwrap();
        let (_, item) = dec.feed(&fin(0, &[0; 700])).unwrap();
        assert_eq!(Ok(item.unwrap()), binary(&[0; 1500]));
    }

    #[test]
    fn close_frames() {
        let close = |payload: &[u8]| decode(limits(), &fin(8, payload));
        assert_eq!(close(b""), vec![Ok(Item::Close(None))]);
        assert!(protocol(close(b"\x03")[0].clone()));
        let mut reason = 1000u16.to_be_bytes().to_vec();
        reason.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(
            close(&reason),
            vec![Ok(Item::Close(Some(CloseFrame {
                code: CloseCode::NORMAL,
                reason: "bye ✓".into(),
            })))]
        );
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.extend_from_slice(b"\xCE\xBA\xE1\xBD");
        assert_eq!(close(&bad), vec![Err(DecodeError::InvalidUtf8)]);
    }

    #[test]
    fn close_codes() {
        for code in 0..=u16::MAX {
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            let items = decode(limits(), &fin(8, &code.to_be_bytes()));
            if valid {
                let frame = CloseFrame {
                    code: CloseCode(code),
                    reason: String::new(),
                };
                assert_eq!(items, vec![Ok(Item::Close(Some(frame)))], "code {code}");
            } else {
                assert!(protocol(items[0].clone()), "code {code}");
            }
        }
    }

    #[test]
    fn input_after_close_discarded() {
        let close = fin(8, &1001u16.to_be_bytes());
        let data = cat(&[
            part(1, b"abc"),
            close.clone(),
            fin(1, b"ignored"),
            vec![0xFF; 9],
        ]);
        let mut dec = Dec::new(limits());
        let (used, item) = dec.feed(&data).unwrap();
        assert_eq!(used, 2 + 4 + 3 + close.len());
        assert!(matches!(item, Some(Item::Close(Some(_)))));
        assert!(!dec.in_message() && dec.buffered() == 0);
        let rest = &data[used..];
        assert_eq!(dec.feed(rest), Ok((rest.len(), None)));
        assert_eq!(dec.feed(b"\x00\x00"), Ok((2, None)));
    }

    #[test]
    fn poisoned_after_error() {
        let mut dec = Dec::new(limits());
        dec.feed(&part(1, b"partial")).unwrap();
        let err = dec.feed(&fin(1, b"x")).unwrap_err();
        assert!(matches!(err, DecodeError::Protocol(_)));
        assert!(!dec.in_message() && dec.buffered() == 0);
        assert_eq!(dec.feed(&fin(0, b"valid continuation")), Err(err.clone()));
        assert_eq!(dec.feed(&[]), Err(err));
    }

    #[test]
    fn buffered_follows_arrived_bytes_not_declared_length() {
        let payload = vec![b'x'; 60_000];
        let data = fin(1, &payload);
        let hdr = 2 + 2 + 4;
        let mut dec = Dec::new(limits());
        assert_eq!(dec.feed(&data[..hdr + 100]), Ok((hdr + 100, None)));
        assert_eq!(dec.message_len(), 100);
        assert!(
            dec.buffered() >= 100 && dec.buffered() < 1000,
            "{}",
            dec.buffered()
        );
        // Many small chunks: capacity stays under twice what arrived.
        let mut pos = hdr + 100;
        while pos < data.len() - 1 {
            let end = (pos + 1500).min(data.len() - 1);
            assert_eq!(dec.feed(&data[pos..end]), Ok((end - pos, None)));
            pos = end;
            assert!(dec.buffered() <= 2 * dec.message_len());
        }
        let (_, item) = dec.feed(&data[pos..]).unwrap();
        assert_eq!(
            Ok(item.unwrap()),
            text(std::str::from_utf8(&payload).unwrap())
        );
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.message_len(), 0);
        assert!(!dec.in_message());
    }

    #[test]
    fn many_tiny_fragments_stay_amortised() {
        let mut data = part(2, b"a");
        for _ in 0..20_000 {
            data.extend_from_slice(&part(0, b"b"));
        }
        data.extend_from_slice(&fin(0, b""));
        let mut dec = Dec::new(limits());
        let mut pos = 0;
        let mut reallocs = 0;
        let mut cap = 0;
        let mut out = None;
        while pos < data.len() {
            let (used, item) = dec.feed(&data[pos..]).unwrap();
            pos += used;
            if dec.buffered() != cap {
                reallocs += 1;
                cap = dec.buffered();
            }
            out = out.or(item);
        }
        assert!(reallocs < 40, "{reallocs} reallocations");
        let Some(Item::Message(Message::Binary(b))) = out else {
            panic!("{out:?}")
        };
        assert_eq!(b.len(), 20_001);
    }

    #[test]
    fn in_message_from_first_header_byte() {
        let mut dec = Dec::new(limits());
        assert!(!dec.in_message());
        let ping = fin(9, b"p");
        dec.feed(&ping[..1]).unwrap();
        assert!(!dec.in_message(), "control frames do not count");
        dec.feed(&ping[1..]).unwrap();
        let first = part(1, b"ab");
        dec.feed(&first[..1]).unwrap();
        assert!(dec.in_message());
        assert_eq!(dec.buffered(), 0);
        dec.feed(&first[1..]).unwrap();
        assert!(dec.in_message());
        dec.feed(&fin(0xA, b"")).unwrap();
        assert!(dec.in_message());
        let (_, item) = dec.feed(&fin(0, b"c")).unwrap();
        assert_eq!(Ok(item.unwrap()), text("abc"));
        assert!(!dec.in_message());
    }

    #[test]
    fn empty_frames_and_fragments() {
        let data = cat(&[
            fin(1, b""),
            fin(2, b""),
            part(1, b""),
            part(0, b""),
            fin(9, b""),
            part(0, b"x"),
            fin(0, b""),
        ]);
        assert_eq!(
            decode(limits(), &data),
            vec![
                text(""),
                binary(b""),
                Ok(Item::Ping(Bytes::new())),
                text("x")
            ]
        );
        let mut dec = Dec::new(limits());
        let (_, item) = dec.feed(&fin(1, b"")).unwrap();
        assert_eq!(Ok(item.unwrap()), text(""));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn unmask_matches_naive_at_every_offset_and_length() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 13 + 5) as u8).collect();
        for offset in 0..8 {
            for len in 0..src.len() {
                let mut out = vec![9u8];
                unmask_extend(&mut out, &src[..len], MASK, offset);
                let naive: Vec<u8> = std::iter::once(9)
                    .chain((0..len).map(|i| src[i] ^ MASK[(i + offset) % 4]))
                    .collect();
                assert_eq!(out, naive, "offset {offset} len {len}");
            }
        }
    }

    /// Streams covering every rule, valid and invalid.
    fn streams() -> Vec<Vec<u8>> {
        let long: Vec<u8> = "żółw 😀 ".bytes().cycle().take(5000).collect();
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"done");
        vec![
            cat(&[
                fin(1, b"hi"),
                fin(2, &[1, 2, 3]),
                fin(9, b"p"),
                fin(0xA, b""),
            ]),
            cat(&[
                part(1, &long[..1001]),
                fin(9, b"x"),
                part(0, &long[1001..3333]),
                fin(0, &long[3333..]),
            ]),
            cat(&[
                frame_with(true, 0, 2, &long, Len::Ext64, [1, 2, 3, 4]),
                fin(8, &close),
                fin(1, b"after"),
            ]),
            cat(&[
                frame(false, RSV1, 1, b"\xFF", MASK),
                fin(0, &[0; 70]),
                fin(1, b"ok"),
            ]),
            cat(&[fin(1, b"ok"), part(1, b"a\xED\xA0\x80"), fin(0, b"b")]),
            cat(&[fin(2, &[0; 90]), part(2, &[0; 60]), fin(0, &[0; 50])]),
            cat(&[fin(1, b"x"), frame(true, RSV2, 1, b"y", MASK)]),
            cat(&[
                fin(1, b""),
                header(true, 0, 1, 3, Len::Minimal, None),
                b"abc".to_vec(),
            ]),
            cat(&[part(2, b"a"), part(9, b"b")]),
            cat(&[fin(9, &[0; 125]), fin(8, b"\x03\xE8\xFF")]),
            cat(&[
                fin(1, b"a"),
                header(true, 0, 2, 1 << 63, Len::Ext64, Some(MASK)),
            ]),
            cat(&[part(1, "€".as_bytes()), fin(0, b"\xE2\x82")]),
        ]
    }

    #[test]
    fn chunking_invariance_on_known_streams() {
        for (i, data) in streams().iter().enumerate() {
            let whole = decode_chunked(with_rsv1(), data, &mut || usize::MAX);
            assert!(!whole.items.is_empty(), "stream {i}");
            check_chunking_invariance(data);
        }
        // Two streams whose outcomes differ with the tight limits of the check.
        let whole = decode(with_rsv1(), &streams()[3]);
        assert!(matches!(whole[0], Ok(Item::Compressed { .. })));
    }

    #[test]
    fn chunking_invariance_on_pseudo_random_input() {
        let mut seed = 0x1234_5678_9ABC_DEF1_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = streams();
        for round in 0..300 {
            // Mutate a valid stream a little, or build one from random frames.
            let mut data = valid[(next() % valid.len() as u64) as usize].clone();
            if round % 2 == 0 {
                for _ in 0..(next() % 4) {
                    let i = (next() % data.len() as u64) as usize;
                    data[i] ^= 1 << (next() % 8);
                }
            } else {
                data.clear();
                for _ in 0..(next() % 6) {
                    let op = [0, 1, 2, 8, 9, 0xA][(next() % 6) as usize];
                    let len = (next() % 140) as usize;
                    let payload: Vec<u8> = (0..len)
                        .map(|_| [b'a', 0xC3, 0xA9, 0xFF][(next() % 4) as usize])
                        .collect();
                    let mask = (next() as u32).to_ne_bytes();
                    data.extend(frame(
                        next() % 3 != 0,
                        (next() % 16 == 0) as u8 * RSV1,
                        op,
                        &payload,
                        mask,
                    ));
                }
            }
            check_chunking_invariance(&data);
        }
        check_chunking_invariance(&[]);
        check_chunking_invariance(&[0x81]);
    }
}

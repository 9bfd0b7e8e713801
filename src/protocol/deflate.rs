//! permessage-deflate (RFC 7692), the server's side: which offer to accept, compressing a
//! message, and inflating a client's message within a size limit.
//!
//! The server always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`, so neither side carries an LZ77 window from one message to
//! the next. That is what keeps compression affordable for a server with many connections:
//! no zlib state lives per connection (a compressor is a few hundred KiB, an inflater tens
//! of KiB), one compressor and one inflater per thread serve every connection, and a
//! message compressed once is valid for every client that agreed the same window.
//!
//! The offers are whatever a client wrote, so they are parsed in one pass without
//! backtracking, and bounded ([`MAX_LINE`] bytes a line, [`MAX_ITEMS`] extensions and
//! parameters in all). A client's compressed message is inflated against a limit checked as
//! the output grows, never trusting how much it claims to hold.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Longest `Sec-WebSocket-Extensions` line read; with a longer one [`negotiate`] declines.
pub(crate) const MAX_LINE: usize = 4096;

/// Most extensions and parameters read over all the lines; past this [`negotiate`]
/// declines. Browsers offer one extension with at most a few parameters.
pub(crate) const MAX_ITEMS: usize = 64;

/// The extension's name in the offers and in the answer.
const EXTENSION: &[u8] = b"permessage-deflate";

/// Smallest window zlib deflates with (it cannot deflate with 8 bits, which RFC 7692 allows).
const MIN_DEFLATE_BITS: u8 = 9;

/// Largest window DEFLATE has (32 KiB), and the default of both sides.
const MAX_BITS: u8 = 15;

/// What a sync flush ends with: the sender drops it (RFC 7692 section 7.2.1) and the
/// receiver puts it back (section 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An empty stored block with BFINAL set. Fed after the tail, it ends the stream only if the
/// message ended on a block boundary, which is how a truncated message is told apart.
const END_PROBE: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];

/// Compressors kept per thread, one for each (level, window bits) in use; servers use one
/// or two, so a few are enough and the oldest is dropped past that.
const CACHED_COMPRESSORS: usize = 4;

/// Where the inflated output starts: small, as most client messages are.
const FIRST_STEP: usize = 4096;

thread_local! {
    /// This thread's compressors, most recently used last.
    static COMPRESSORS: RefCell<Vec<(u32, u8, Compress)>> = const { RefCell::new(Vec::new()) };
    /// This thread's inflater, made on first use.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// How this server compresses: what it offers in negotiation and uses for its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateSettings {
    /// zlib's compression level, 0 (stored, no compression) to 9 (smallest, slowest); above
    /// 9 reads as 9. Default 3: most of level 6's gain on text at well under its cost.
    pub level: u32,
    /// The largest window the server compresses with, 9 to 15 bits (512 bytes to 32 KiB);
    /// values outside read as the nearest end. Default 15. A smaller window lets clients
    /// inflate with less memory and compresses a little worse.
    pub window_bits: u8,
    /// Messages shorter than this many bytes go uncompressed: deflate gains little on them
    /// and costs a call. Default 256.
    pub threshold: usize,
}

impl Default for DeflateSettings {
    fn default() -> Self {
        Self {
            level: 3,
            window_bits: MAX_BITS,
            threshold: 256,
        }
    }
}

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The largest window, 8 to 15 bits, that the server may compress this client's
    /// messages with.
    pub server_window_bits: u8,
    /// Whether the server compresses messages to this client at all. `false` when the
    /// client demanded an 8-bit window, which zlib cannot deflate with: the offer is still
    /// accepted, so the client's own messages can be compressed, and the server sends it
    /// only uncompressed messages, which RFC 7692 always allows.
    pub compress: bool,
}

/// Chooses the first `permessage-deflate` offer that can be accepted, and the value of the
/// `Sec-WebSocket-Extensions` response header that accepts it.
///
/// `offers` are the values of each `Sec-WebSocket-Extensions` line of the request, each a
/// comma-separated list of `name; param; param=value` (RFC 6455 section 9.1), values
/// tokens or quoted strings. Other extensions are skipped; an offer with an unknown,
/// duplicated or invalid parameter is declined and the next one tried (RFC 7692 section
/// 5). `None` when nothing is accepted, and also when the header does not parse or is over
/// the bounds: the handshake then goes on without compression, never failing for it.
///
/// The answer always asks for no context takeover on both sides, and names
/// `server_max_window_bits` when the client offered it or the server's window is below 15
/// bits. It never names `client_max_window_bits`: the server inflates with a 15-bit window,
/// which reads whatever window the client compresses with.
pub fn negotiate<'a>(
    offers: impl Iterator<Item = &'a [u8]>,
    settings: &DeflateSettings,
) -> Option<(Agreed, String)> {
    let mut items = 0usize;
    let mut chosen = None;
    for line in offers {
        if line.len() > MAX_LINE {
            return None;
        }
        let mut cursor = Cursor {
            bytes: line,
            pos: 0,
        };
        // Each turn reads one list element: an extension and its parameters, or nothing
        // (HTTP lists may have empty elements). Every step moves forward or ends, so the
        // whole pass is linear in the line's length.
        loop {
            cursor.skip_whitespace();
            match cursor.peek() {
                None => break,
                Some(b',') => {
                    cursor.pos += 1;
                    continue;
                }
                Some(_) => {}
            }
            let name = cursor.token()?;
            items += 1;
            if items > MAX_ITEMS {
                return None;
            }
            let mut offer = Offer::default();
            loop {
                cursor.skip_whitespace();
                match cursor.peek() {
                    None => break,
                    Some(b',') => {
                        cursor.pos += 1;
                        break;
                    }
                    Some(b';') => {
                        cursor.pos += 1;
                        cursor.skip_whitespace();
                        let param = cursor.token()?;
                        items += 1;
                        if items > MAX_ITEMS {
                            return None;
                        }
                        cursor.skip_whitespace();
                        let value = if cursor.peek() == Some(b'=') {
                            cursor.pos += 1;
                            cursor.skip_whitespace();
                            Some(cursor.value()?)
                        } else {
                            None
                        };
                        offer.add(param, value);
                    }
                    Some(_) => return None,
                }
            }
            // Later elements are still read: a syntax error anywhere voids the header.
            if chosen.is_none() && name.eq_ignore_ascii_case(EXTENSION) {
                chosen = offer.accept(settings);
            }
        }
    }
    let (agreed, name_bits) = chosen?;
    let mut answer =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if name_bits {
        answer.push_str("; server_max_window_bits=");
        answer.push_str(&agreed.server_window_bits.to_string());
    }
    Some((agreed, answer))
}

/// Reads one header line, byte by byte.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    /// Skips optional whitespace (spaces and tabs).
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// A token, or `None` (a syntax error) when there is none here.
    fn token(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        let token = self.bytes.get(start..self.pos)?;
        (!token.is_empty()).then_some(token)
    }

    /// A parameter's value, a token or a quoted string; `None` for a syntax error.
    fn value(&mut self) -> Option<Value> {
        if self.peek() != Some(b'"') {
            return self.token().map(Value::of);
        }
        self.pos += 1;
        let mut value = Value::default();
        loop {
            match self.bump()? {
                b'"' => break,
                b'\\' => {
                    let escaped = self.bump()?;
                    if is_control(escaped) {
                        return None;
                    }
                    value.push(escaped);
                }
                byte if is_control(byte) => return None,
                byte => value.push(byte),
            }
        }
        // RFC 6455 section 9.1: unquoted, the value must be a token, so not empty.
        (value.len > 0).then_some(value)
    }
}

/// A token character (RFC 9110 section 5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A byte that may not stand in a quoted string, even escaped: controls other than tab.
fn is_control(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t') || byte == 0x7f
}

/// An unquoted parameter value, kept only as far as window bits need it: its first two
/// bytes and its length.
#[derive(Default)]
struct Value {
    head: [u8; 2],
    len: usize,
}

impl Value {
    fn of(token: &[u8]) -> Self {
        let mut value = Value::default();
        for &byte in token.iter().take(3) {
            value.push(byte);
        }
        value
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.head.get_mut(self.len) {
            *slot = byte;
        }
        self.len = self.len.saturating_add(1);
    }

    /// The value as window bits: a decimal 8 to 15 without leading zeros (RFC 7692
    /// section 7.1.2.1), else `None`.
    fn window_bits(&self) -> Option<u8> {
        let digits = self.head.get(..self.len)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits[0] == b'0' {
            return None;
        }
        let bits = digits.iter().fold(0u8, |n, d| n * 10 + (d - b'0'));
        (8..=MAX_BITS).contains(&bits).then_some(bits)
    }
}

/// The parameters of one `permessage-deflate` offer, as read so far.
#[derive(Default)]
struct Offer {
    /// The parameters seen, one bit each, to catch duplicates.
    seen: u8,
    /// An unknown, duplicated or invalid parameter: the offer is declined.
    declined: bool,
    /// The client's `server_max_window_bits`.
    server_bits: Option<u8>,
}

impl Offer {
    fn add(&mut self, name: &[u8], value: Option<Value>) {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        let (bit, valid) = if is("server_no_context_takeover") {
            (1, value.is_none())
        } else if is("client_no_context_takeover") {
            (2, value.is_none())
        } else if is("server_max_window_bits") {
            // The value is required.
            self.server_bits = value.and_then(|v| v.window_bits());
            (4, self.server_bits.is_some())
        } else if is("client_max_window_bits") {
            // The value is optional: without it the client only says it could honour one.
            (8, value.is_none_or(|v| v.window_bits().is_some()))
        } else {
            (0, false)
        };
        if !valid || self.seen & bit != 0 {
            self.declined = true;
        }
        self.seen |= bit;
    }

    /// What is agreed if this offer is accepted, and whether the answer names the server's
    /// window bits.
    fn accept(&self, settings: &DeflateSettings) -> Option<(Agreed, bool)> {
        if self.declined {
            return None;
        }
        let ours = settings.window_bits.clamp(MIN_DEFLATE_BITS, MAX_BITS);
        let agreed = match self.server_bits {
            Some(8) => Agreed {
                server_window_bits: 8,
                compress: false,
            },
            Some(theirs) => Agreed {
                server_window_bits: theirs.min(ours),
                compress: true,
            },
            None => Agreed {
                server_window_bits: ours,
                compress: true,
            },
        };
        // RFC 7692 section 7.1.2.1 lets the server name its window even unasked.
        let name_bits = self.server_bits.is_some() || agreed.server_window_bits < MAX_BITS;
        Some((agreed, name_bits))
    }
}

/// The server could not compress a message; it can send the message uncompressed instead,
/// which RFC 7692 always allows.
#[derive(thiserror::Error, Debug)]
pub enum CompressError {
    /// zlib deflates with 9 to 15 window bits only.
    #[error("cannot deflate with a {0}-bit window (9 to 15 bits only)")]
    WindowBits(u8),
    /// The compressor failed; not expected with valid settings.
    #[error("deflate failed: {0}")]
    Failed(String),
}

/// The payload of a compressed message (a frame with RSV1 set): raw deflate of `payload`
/// with a sync flush, its trailing `00 00 ff ff` dropped (RFC 7692 section 7.2.1).
///
/// No context is taken over, so the output depends only on the payload, `level` (0 to 9,
/// above reads as 9) and `window_bits` (9 to 15; 8 is an error, see
/// [`Agreed::compress`]): one compression of a broadcast serves every client that agreed a
/// window of at least `window_bits`. The compressor is this thread's, one per level and
/// window, reset for each message.
pub fn compress(payload: &[u8], level: u32, window_bits: u8) -> Result<Vec<u8>, CompressError> {
    if !(MIN_DEFLATE_BITS..=MAX_BITS).contains(&window_bits) {
        return Err(CompressError::WindowBits(window_bits));
    }
    if payload.is_empty() {
        // An empty stored block without its length fields (RFC 7692 section 7.2.3.6).
        return Ok(vec![0x00]);
    }
    let level = level.min(9);
    let fresh = || Compress::new_with_window_bits(Compression::new(level), false, window_bits);
    let cached = COMPRESSORS.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return deflate_sync(&mut fresh(), payload);
        };
        let entry = match cache
            .iter()
            .position(|(l, b, _)| (*l, *b) == (level, window_bits))
        {
            Some(at) => cache.remove(at),
            None => {
                if cache.len() >= CACHED_COMPRESSORS {
                    cache.remove(0);
                }
                (level, window_bits, fresh())
            }
        };
        cache.push(entry);
        match cache.last_mut() {
            Some((_, _, compressor)) => deflate_sync(compressor, payload),
            None => deflate_sync(&mut fresh(), payload),
        }
    });
    // The thread is exiting and its cache is gone: a compressor for this message alone.
    cached.unwrap_or_else(|_| deflate_sync(&mut fresh(), payload))
}

/// Deflates `payload` from a fresh state, sync-flushed, without the flush's tail.
fn deflate_sync(compressor: &mut Compress, payload: &[u8]) -> Result<Vec<u8>, CompressError> {
    compressor.reset();
    // zlib asks for more than 6 bytes of room on each flushing call, or it may emit the
    // flush marker twice.
    const ROOM: usize = 64;
    let mut out = Vec::with_capacity(payload.len() / 2 + ROOM);
    let start = compressor.total_in();
    loop {
        if out.capacity() - out.len() < ROOM {
            out.reserve(out.capacity().max(ROOM));
        }
        let read_before = compressor.total_in();
        let out_before = out.len();
        let read = usize::try_from(read_before - start).unwrap_or(usize::MAX);
        let rest = payload.get(read..).unwrap_or_default();
        compressor
            .compress_vec(rest, &mut out, FlushCompress::Sync)
            .map_err(|e| CompressError::Failed(e.to_string()))?;
        let read = usize::try_from(compressor.total_in() - start).unwrap_or(usize::MAX);
        // The flush is complete once all input is in and the output was not filled.
        if read >= payload.len() && out.len() < out.capacity() {
            break;
        }
        if compressor.total_in() == read_before && out.len() == out_before {
            return Err(CompressError::Failed("deflate made no progress".into()));
        }
    }
    if !out.ends_with(&TAIL) {
        return Err(CompressError::Failed(
            "the sync flush did not end with an empty stored block".into(),
        ));
    }
    out.truncate(out.len() - TAIL.len());
    if out.capacity() - out.len() > 1024 {
        // Broadcast payloads wait in many queues: hold no spare room.
        out.shrink_to_fit();
    }
    Ok(out)
}

/// A client's compressed message could not be inflated.
#[derive(thiserror::Error, Debug)]
pub enum InflateError {
    /// The message inflates to more than the limit; inflation stopped there.
    #[error("inflated message exceeds {limit} bytes")]
    TooBig {
        /// The limit it was inflated against.
        limit: usize,
    },
    /// Not valid deflate data for a message: a bad block, data after a final block, or a
    /// message that stops inside a block.
    #[error("corrupt deflate data: {0}")]
    Corrupt(String),
}

/// The message a client compressed: `compressed` is the payload of a frame (or of a
/// fragmented message's frames, put together) with RSV1 set.
///
/// The `00 00 ff ff` the sender dropped is put back (RFC 7692 section 7.2.2); a message
/// ending with a final block (section 7.2.3.3) needs none. The output grows in steps and
/// inflation stops as soon as it would pass `max_len`, so a small message that inflates to
/// gigabytes costs at most `max_len` and one byte. The inflater is this thread's, reset for
/// each message (the client agreed to no context takeover) and 15-bit, which reads any
/// window the client used.
///
/// An empty payload is read as an empty message, as zlib-based receivers do, though a
/// compressor writes at least one byte for one.
pub fn inflate(compressed: &[u8], max_len: usize) -> Result<Vec<u8>, InflateError> {
    let run = |inflater: &mut Decompress| inflate_message(inflater, compressed, max_len);
    let fresh = || Decompress::new(false);
    INFLATER
        .try_with(|slot| match slot.try_borrow_mut() {
            Ok(mut slot) => run(slot.get_or_insert_with(fresh)),
            Err(_) => run(&mut fresh()),
        })
        // The thread is exiting and its inflater is gone: one for this message alone.
        .unwrap_or_else(|_| run(&mut fresh()))
}

/// Inflates one message from a fresh state.
fn inflate_message(
    inflater: &mut Decompress,
    compressed: &[u8],
    max_len: usize,
) -> Result<Vec<u8>, InflateError> {
    inflater.reset(false);
    let mut out = Vec::new();
    if compressed.is_empty() {
        return Ok(out);
    }
    if inflate_part(inflater, compressed, &mut out, max_len, false)? {
        return Ok(out);
    }
    if inflate_part(inflater, &TAIL, &mut out, max_len, true)? {
        // The tail's bytes completed a final block: what that decodes to is the message.
        return Ok(out);
    }
    // After the tail the stream must stand on a block boundary: an empty final block then
    // ends it at once, without output. Anything else means the message stopped inside a
    // block, its last bytes missing.
    let mut probe_out = Vec::with_capacity(END_PROBE.len());
    let before = inflater.total_in();
    let status = inflater
        .decompress_vec(&END_PROBE, &mut probe_out, FlushDecompress::Sync)
        .map_err(|e| InflateError::Corrupt(e.to_string()))?;
    let read = inflater.total_in() - before;
    if status == Status::StreamEnd && probe_out.is_empty() && read == END_PROBE.len() as u64 {
        Ok(out)
    } else {
        Err(InflateError::Corrupt(
            "the message ends inside a deflate block".into(),
        ))
    }
}

/// Feeds `input` to the inflater, appending to `out` up to `max_len` bytes; whether the
/// stream ended (a final block). Input left after a final block is corrupt unless it is
/// the appended tail (`leftover_ok`).
fn inflate_part(
    inflater: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    max_len: usize,
    leftover_ok: bool,
) -> Result<bool, InflateError> {
    // Room for one byte past the limit: that byte is how an over-long message shows itself.
    let cap = max_len.saturating_add(1);
    let start = inflater.total_in();
    loop {
        if out.len() == out.capacity() {
            let step = out.len().max(FIRST_STEP).min(cap - out.len());
            out.reserve_exact(step);
        }
        let read_before = inflater.total_in();
        let out_before = out.len();
        let status = inflater
            .decompress_vec(
                input
                    .get(consumed(inflater, start, input)..)
                    .unwrap_or_default(),
                out,
                FlushDecompress::Sync,
            )
            .map_err(|e| InflateError::Corrupt(e.to_string()))?;
        if out.len() > max_len {
            return Err(InflateError::TooBig { limit: max_len });
        }
        let read = consumed(inflater, start, input);
        match status {
            Status::StreamEnd => {
                if read < input.len() && !leftover_ok {
                    return Err(InflateError::Corrupt(
                        "data after the final deflate block".into(),
                    ));
                }
                return Ok(true);
            }
            Status::Ok | Status::BufError => {
                let room = out.len() < out.capacity();
                if read == input.len() && room {
                    return Ok(false);
                }
                if room && inflater.total_in() == read_before && out.len() == out_before {
                    // Input and room, and still no progress: not a stream zlib can read.
                    return Err(InflateError::Corrupt("inflate made no progress".into()));
                }
            }
        }
    }
}

/// How much of `input` the inflater has read since `start`, at most all of it.
fn consumed(inflater: &Decompress, start: u64, input: &[u8]) -> usize {
    usize::try_from(inflater.total_in() - start)
        .unwrap_or(usize::MAX)
        .min(input.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    fn offer(lines: &[&str]) -> Option<(Agreed, String)> {
        offer_with(lines, &DeflateSettings::default())
    }

    fn offer_with(lines: &[&str], settings: &DeflateSettings) -> Option<(Agreed, String)> {
        negotiate(lines.iter().map(|l| l.as_bytes()), settings)
    }

    fn agreed(bits: u8) -> Agreed {
        Agreed {
            server_window_bits: bits,
            compress: true,
        }
    }

    fn with_bits(bits: u8) -> String {
        format!("{BASE}; server_max_window_bits={bits}")
    }

    #[test]
    fn chrome_and_firefox_offers() {
        let chrome = offer(&["permessage-deflate; client_max_window_bits"]);
        assert_eq!(chrome, Some((agreed(15), BASE.to_string())));
        let firefox = offer(&["permessage-deflate"]);
        assert_eq!(firefox, Some((agreed(15), BASE.to_string())));
    }

    #[test]
    fn server_window_bits() {
        let ten = offer(&["permessage-deflate; server_max_window_bits=10"]);
        assert_eq!(ten, Some((agreed(10), with_bits(10))));
        let fifteen = offer(&["permessage-deflate; server_max_window_bits=15"]);
        assert_eq!(fifteen, Some((agreed(15), with_bits(15))));
        let eight = offer(&["permessage-deflate; server_max_window_bits=8"]);
        let eight_agreed = Agreed {
            server_window_bits: 8,
            compress: false,
        };
        assert_eq!(eight, Some((eight_agreed, with_bits(8))));
    }

    #[test]
    fn a_smaller_server_window_is_named_unasked() {
        let settings = DeflateSettings {
            window_bits: 12,
            ..DeflateSettings::default()
        };
        let bare = offer_with(&["permessage-deflate"], &settings);
        assert_eq!(bare, Some((agreed(12), with_bits(12))));
        let larger = offer_with(
            &["permessage-deflate; server_max_window_bits=14"],
            &settings,
        );
        assert_eq!(larger, Some((agreed(12), with_bits(12))));
        let smaller = offer_with(
            &["permessage-deflate; server_max_window_bits=10"],
            &settings,
        );
        assert_eq!(smaller, Some((agreed(10), with_bits(10))));
        // Out-of-range settings read as the nearest end.
        let tiny = DeflateSettings {
            window_bits: 3,
            ..DeflateSettings::default()
        };
        assert_eq!(
            offer_with(&["permessage-deflate"], &tiny),
            Some((agreed(9), with_bits(9)))
        );
        let huge = DeflateSettings {
            window_bits: 200,
            ..DeflateSettings::default()
        };
        assert_eq!(
            offer_with(&["permessage-deflate"], &huge),
            Some((agreed(15), BASE.to_string()))
        );
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        let duplicated = offer(&[
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover, \
             permessage-deflate; server_max_window_bits=11",
        ]);
        assert_eq!(duplicated, Some((agreed(11), with_bits(11))));
        let both_good = offer(&[
            "permessage-deflate; server_max_window_bits=10, permessage-deflate; server_max_window_bits=12",
        ]);
        assert_eq!(both_good, Some((agreed(10), with_bits(10))));
        let other_first =
            offer(&["x-webkit-deflate-frame; no_context_takeover, permessage-deflate"]);
        assert_eq!(other_first, Some((agreed(15), BASE.to_string())));
    }

    #[test]
    fn bad_parameters_decline_the_offer() {
        for line in [
            "permessage-deflate; foo",
            "permessage-deflate; foo=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=0",
            "permessage-deflate; server_max_window_bits=100",
            "permessage-deflate; server_max_window_bits=1x",
            "permessage-deflate; server_max_window_bits=\"\\31\\32 \"",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(&[line]), None, "{line}");
        }
        // A declined offer lets the next one through.
        assert_eq!(
            offer(&["permessage-deflate; foo, permessage-deflate"]),
            Some((agreed(15), BASE.to_string()))
        );
    }

    #[test]
    fn quoted_values() {
        let quoted = offer(&["permessage-deflate; client_max_window_bits=\"10\""]);
        assert_eq!(quoted, Some((agreed(15), BASE.to_string())));
        let escaped = offer(&["permessage-deflate; server_max_window_bits=\"1\\2\""]);
        assert_eq!(escaped, Some((agreed(12), with_bits(12))));
        // Commas and semicolons inside quotes are the value's, not separators.
        let odd = offer(&["foo; bar=\"a, b; c\", permessage-deflate"]);
        assert_eq!(odd, Some((agreed(15), BASE.to_string())));
    }

    #[test]
    fn whitespace_case_and_empty_elements() {
        let spaced = offer(&["  PerMessage-Deflate ;\tServer_Max_Window_Bits = 13 , "]);
        assert_eq!(spaced, Some((agreed(13), with_bits(13))));
        let empties = offer(&[", ,permessage-deflate,,"]);
        assert_eq!(empties, Some((agreed(15), BASE.to_string())));
        assert_eq!(offer(&[""]), None);
        assert_eq!(offer(&[]), None);
    }

    #[test]
    fn bad_syntax_voids_the_header() {
        for line in [
            "permessage-deflate;",
            "permessage-deflate; ; server_no_context_takeover",
            "permessage-deflate; =10",
            "permessage-deflate x",
            "permessage-deflate; server_max_window_bits=",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate; client_max_window_bits=\"1\u{1}\"",
            "permessage-deflate; client_max_window_bits=10 11",
            "\"permessage-deflate\"",
            "permessage-deflate, ;",
            "permessage-deflate; a=b=c",
        ] {
            assert_eq!(offer(&[line]), None, "{line}");
        }
        // Even after an acceptable offer, and on another line.
        assert_eq!(offer(&["permessage-deflate, foo bar"]), None);
        assert_eq!(offer(&["permessage-deflate", "permessage-deflate;;"]), None);
    }

    #[test]
    fn several_lines() {
        let lines = offer(&[
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate",
        ]);
        assert_eq!(lines, Some((agreed(9), with_bits(9))));
    }

    #[test]
    fn bounded_and_linear() {
        let started = Instant::now();
        let semicolons = ";".repeat(MAX_LINE);
        assert_eq!(offer(&[&semicolons]), None);
        let commas = ",".repeat(MAX_LINE);
        assert_eq!(offer(&[&commas]), None);
        let spaces = format!("permessage-deflate{}", " ".repeat(MAX_LINE - 18));
        assert_eq!(offer(&[&spaces]), Some((agreed(15), BASE.to_string())));
        let quote = format!("permessage-deflate; a=\"{}", "\\a".repeat(2000));
        assert_eq!(offer(&[&quote]), None);
        let too_long = format!("permessage-deflate{}", " ".repeat(MAX_LINE));
        assert_eq!(offer(&[&too_long]), None);
        // Past MAX_ITEMS extensions and parameters the header is declined.
        let many = format!("permessage-deflate{}", "; foo".repeat(MAX_ITEMS));
        assert!(many.len() <= MAX_LINE);
        assert_eq!(offer(&[&many]), None);
        let lines: Vec<String> = (0..MAX_ITEMS).map(|_| "x".to_string()).collect();
        let mut lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        lines.push("permessage-deflate");
        assert_eq!(offer(&lines), None);
        let mut fits = vec!["x"; MAX_ITEMS - 1];
        fits.push("permessage-deflate");
        assert_eq!(offer(&fits), Some((agreed(15), BASE.to_string())));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A few pseudo-random bytes (xorshift), the same every run.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn round_trip(payload: &[u8], level: u32, bits: u8) {
        let compressed = compress(payload, level, bits).expect("compress");
        assert!(!compressed.ends_with(&TAIL) || payload.is_empty());
        let inflated = inflate(&compressed, payload.len()).expect("inflate");
        assert!(
            inflated == payload,
            "{} bytes, level {level}, {bits} bits",
            payload.len()
        );
    }

    #[test]
    fn round_trips() {
        let repetitive: Vec<u8> = b"{\"user\":\"ana\",\"text\":\"hello\"}"
            .iter()
            .copied()
            .cycle()
            .take(100_000)
            .collect();
        let payloads: [&[u8]; 5] = [b"", b"a", b"Hello", &noise(64 * 1024), &repetitive];
        for payload in payloads {
            for level in [0, 1, 3, 9, 42] {
                for bits in [9, 12, 15] {
                    round_trip(payload, level, bits);
                }
            }
        }
        assert_eq!(compress(b"", 3, 15).expect("empty"), [0x00]);
        let small = compress(&repetitive, 3, 15).expect("repetitive");
        assert!(small.len() < repetitive.len() / 20, "{}", small.len());
    }

    #[test]
    fn the_window_is_honoured_after_a_reset() {
        // 600 random bytes twice: the repeat is reachable with 15 bits, not with 9.
        let half = noise(600);
        let twice = [half.as_slice(), half.as_slice()].concat();
        for _ in 0..2 {
            let wide = compress(&twice, 6, 15).expect("15 bits");
            let narrow = compress(&twice, 6, 9).expect("9 bits");
            assert!(wide.len() < 700, "{}", wide.len());
            assert!(narrow.len() > 1100, "{}", narrow.len());
        }
    }

    #[test]
    fn window_bits_zlib_cannot_deflate_with() {
        assert!(matches!(
            compress(b"x", 3, 8),
            Err(CompressError::WindowBits(8))
        ));
        assert!(matches!(
            compress(b"x", 3, 16),
            Err(CompressError::WindowBits(16))
        ));
    }

    #[test]
    fn rfc_7692_examples() {
        // Section 7.2.3.1: "Hello" in one compressed block, BFINAL 0.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&hello, 5).expect("hello"), b"Hello");
        // Section 7.2.3.3: the same with BFINAL 1; no tail needed.
        let last = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&last, 5).expect("final"), b"Hello");
        // Section 7.2.3.4: a stored block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(&stored, 5).expect("stored"), b"Hello");
        // Section 7.2.3.6: an empty message; and an empty payload read leniently.
        assert_eq!(inflate(&[0x00], 0).expect("empty"), b"");
        assert_eq!(inflate(&[], 0).expect("nothing"), b"");
        // One byte over the limit.
        assert!(matches!(
            inflate(&hello, 4),
            Err(InflateError::TooBig { limit: 4 })
        ));
    }

    #[test]
    fn corrupt_data() {
        for data in [
            &[0xff; 16][..],
            // A final block, then garbage.
            &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x01, 0x02],
            // Stored block lengths that do not match.
            &[0x00, 0x05, 0x00, 0xfb, 0xff, 0x48, 0x65],
            // "Hello" cut short: the message ends inside its block.
            &[0xf2, 0x48, 0xcd],
            &[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65],
        ] {
            assert!(
                matches!(inflate(data, 1 << 20), Err(InflateError::Corrupt(_))),
                "{data:02x?}"
            );
        }
        // A stored block of 255 bytes with 2 sent: the tail is read as its content, and
        // only the probe after it tells the message stopped short.
        let short = inflate(&[0x00, 0xff, 0x00, 0x00, 0xff, 0x41, 0x42], 1 << 20);
        assert!(
            matches!(&short, Err(InflateError::Corrupt(why)) if why.contains("inside")),
            "{short:?}"
        );
        // The thread's inflater is fine afterwards.
        assert_eq!(
            inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 5).expect("hello"),
            b"Hello"
        );
    }

    /// `times` × 64 KiB of zeros as one message: separately compressed pieces, each ending
    /// on a block boundary, put together.
    fn zeros_bomb(times: usize) -> Vec<u8> {
        let mut piece = compress(&vec![0; 64 * 1024], 9, 15).expect("zeros");
        piece.extend_from_slice(&TAIL);
        let mut bomb = piece.repeat(times);
        bomb.truncate(bomb.len() - TAIL.len());
        bomb
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let bomb = zeros_bomb(160);
        assert!(bomb.len() < 100 * 1024, "{}", bomb.len());
        let started = Instant::now();
        let result = inflate(&bomb, 1 << 20);
        assert!(matches!(result, Err(InflateError::TooBig { limit }) if limit == 1 << 20));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Within a large enough limit the whole message comes back.
        let whole = inflate(&bomb, 10 << 20).expect("10 MiB");
        assert_eq!(whole.len(), 10 << 20);
        assert!(whole.iter().all(|&b| b == 0));
        assert!(whole.capacity() <= (10 << 20) + 1);
    }
}

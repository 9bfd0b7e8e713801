//! permessage-deflate (RFC 7692), the server's side: which offer to accept.
//!
//! The server always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`, so neither side carries an LZ77 window from one message to
//! the next. That is what keeps compression affordable for a server with many connections:
//! no zlib state lives per connection, and a message compressed once is valid for every
//! client that agreed the same window.
//!
//! The offers are whatever a client wrote, so they are parsed in one pass without
//! backtracking, and bounded ([`MAX_LINE`] bytes a line, [`MAX_ITEMS`] extensions and
//! parameters in all).

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

/// How this server compresses: what it offers in negotiation and uses for its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

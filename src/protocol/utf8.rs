//! Incremental, fail-fast UTF-8 validation across arbitrary chunk boundaries.
//!
//! The bulk of each chunk is checked by `std::str::from_utf8` (SIMD-accelerated);
//! only a code point split across a boundary is handled here, and at most its
//! first three bytes are kept as state.

/// The bytes fed so far can never become valid UTF-8, whatever follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub(crate) struct Utf8Invalid;

/// How a byte sequence starting with a lead byte relates to one UTF-8 code point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    /// Exactly one whole, valid code point.
    Complete,
    /// A proper prefix of some valid code point: more bytes are needed.
    Incomplete,
    /// Not a prefix of any valid code point.
    Invalid,
}

/// Classifies `seq`, which starts at a code point boundary, against the table of
/// well-formed byte sequences (Unicode table 3-7). The second-byte ranges are what
/// exclude overlongs, surrogates and code points above U+10FFFF as early as possible.
fn classify(seq: &[u8]) -> Prefix {
    let Some((&lead, rest)) = seq.split_first() else {
        return Prefix::Incomplete;
    };
    let (need, lo, hi) = match lead {
        0x00..=0x7F => (1, 0x80, 0xBF),
        0xC2..=0xDF => (2, 0x80, 0xBF),
        0xE0 => (3, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80, 0xBF),
        0xED => (3, 0x80, 0x9F),
        0xF0 => (4, 0x90, 0xBF),
        0xF1..=0xF3 => (4, 0x80, 0xBF),
        0xF4 => (4, 0x80, 0x8F),
        _ => return Prefix::Invalid,
    };
    if seq.len() > need {
        return Prefix::Invalid;
    }
    for (i, &b) in rest.iter().enumerate() {
        let (lo, hi) = if i == 0 { (lo, hi) } else { (0x80, 0xBF) };
        if !(lo..=hi).contains(&b) {
            return Prefix::Invalid;
        }
    }
    if seq.len() == need {
        Prefix::Complete
    } else {
        Prefix::Incomplete
    }
}

/// Validates a byte stream as UTF-8 piece by piece.
///
/// After `feed` has returned an error the state is meaningless: the message is refused.
#[derive(Debug, Clone, Default)]
pub(crate) struct Utf8Validator {
    /// The leading bytes of a code point that the last piece ended inside.
    pending: [u8; 3],
    /// How many bytes of `pending` are in use (0..=3).
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at a code point boundary.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece of the stream; fails as soon as the bytes seen so far
    /// cannot be the start of valid UTF-8.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Utf8Invalid> {
        if self.pending_len > 0 {
            // Finish the split code point one byte at a time (at most three bytes).
            let [a, b, c] = self.pending;
            let mut seq = [a, b, c, 0];
            let mut len = usize::from(self.pending_len);
            loop {
                let Some((&b, rest)) = bytes.split_first() else {
                    self.store(seq.get(..len).unwrap_or_default());
                    return Ok(());
                };
                bytes = rest;
                let Some(slot) = seq.get_mut(len) else {
                    return Err(Utf8Invalid);
                };
                *slot = b;
                len += 1;
                match classify(seq.get(..len).unwrap_or_default()) {
                    Prefix::Complete => break,
                    Prefix::Incomplete => {}
                    Prefix::Invalid => return Err(Utf8Invalid),
                }
            }
            self.pending_len = 0;
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            // A definite error inside the piece.
            Err(e) if e.error_len().is_some() => Err(Utf8Invalid),
            Err(e) => {
                // The piece ends inside a code point: keep it only if it can still
                // become valid (e.g. 0xF4 0x90 or 0xED 0xA0 cannot).
                let tail = bytes.get(e.valid_up_to()..).unwrap_or_default();
                if classify(tail) == Prefix::Incomplete {
                    self.store(tail);
                    Ok(())
                } else {
                    Err(Utf8Invalid)
                }
            }
        }
    }

    /// Succeeds if the stream so far ends at a code point boundary.
    pub(crate) fn finish(&self) -> Result<(), Utf8Invalid> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(Utf8Invalid)
        }
    }

    /// Remembers an incomplete code point (at most three bytes, by construction).
    fn store(&mut self, tail: &[u8]) {
        let n = tail.len().min(self.pending.len());
        for (d, s) in self.pending.iter_mut().zip(tail) {
            *d = *s;
        }
        // n <= 3, so the cast is lossless.
        self.pending_len = n as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small xorshift generator so tests need no external crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    /// Bytes that sit on the boundaries of the UTF-8 tables.
    const EDGE: &[u8] = &[
        0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1,
        0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF,
    ];

    /// Valid code points of every length, including the edges.
    const CHARS: &[char] = &[
        'a',
        '\u{7F}',
        '\u{80}',
        'é',
        '\u{7FF}',
        '\u{800}',
        '€',
        '\u{D7FF}',
        '\u{E000}',
        '\u{FFFF}',
        '\u{10000}',
        '😀',
        '\u{10FFFF}',
    ];

    /// Generated inputs: mostly valid text with occasional edge bytes spliced in.
    fn samples() -> Vec<Vec<u8>> {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut out = Vec::new();
        for round in 0..3000 {
            let len = (rng.next() % 12) as usize;
            let mut s = Vec::new();
            for _ in 0..len {
                let r = rng.next();
                if round % 3 == 0 || !r.is_multiple_of(5) {
                    let c = CHARS[(r >> 8) as usize % CHARS.len()];
                    let mut buf = [0u8; 4];
                    s.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                } else {
                    s.push(EDGE[(r >> 8) as usize % EDGE.len()]);
                }
            }
            out.push(s);
        }
        // Every one- and two-byte string of edge bytes, and all three-byte ones from
        // the lead bytes whose second-byte range is special.
        for &a in EDGE {
            out.push(vec![a]);
            for &b in EDGE {
                out.push(vec![a, b]);
                for &c in EDGE {
                    out.push(vec![a, b, c]);
                    out.push(vec![a, b, c, 0x80]);
                }
            }
        }
        out
    }

    /// Validates `parts` in order and returns whether the whole stream was valid.
    fn validate(parts: &[&[u8]]) -> bool {
        let mut v = Utf8Validator::new();
        parts.iter().all(|p| v.feed(p).is_ok()) && v.finish().is_ok()
    }

    /// Independent oracle: can `prefix` be extended into valid UTF-8?
    fn completable(prefix: &[u8]) -> bool {
        let tail = match std::str::from_utf8(prefix) {
            Ok(_) => return true,
            Err(e) => &prefix[e.valid_up_to()..],
        };
        if tail.len() > 3 {
            return false;
        }
        const CONT: &[u8] = &[0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF];
        let mut suffixes: Vec<Vec<u8>> = vec![vec![]];
        for _ in 0..3 {
            let mut next = Vec::new();
            for s in &suffixes {
                for &c in CONT {
                    let mut t = s.clone();
                    t.push(c);
                    let mut all = tail.to_vec();
                    all.extend_from_slice(&t);
                    if std::str::from_utf8(&all).is_ok() {
                        return true;
                    }
                    next.push(t);
                }
            }
            suffixes = next;
        }
        false
    }

    #[test]
    fn matches_std_at_every_split() {
        for s in samples() {
            let expected = std::str::from_utf8(&s).is_ok();
            assert_eq!(validate(&[&s]), expected, "{s:02X?}");
            for i in 0..=s.len() {
                let (a, b) = s.split_at(i);
                assert_eq!(validate(&[a, b]), expected, "{s:02X?} split at {i}");
                for j in i..=s.len() {
                    let parts = [&s[..i], &s[i..j], &s[j..]];
                    assert_eq!(validate(&parts), expected, "{s:02X?} at {i},{j}");
                }
            }
            let bytes: Vec<&[u8]> = s.chunks(1).collect();
            assert_eq!(validate(&bytes), expected, "{s:02X?} byte by byte");
        }
    }

    #[test]
    fn fails_at_the_first_byte_that_cannot_be_completed() {
        for s in samples() {
            let mut v = Utf8Validator::new();
            let first_fail = s.iter().position(|&b| v.feed(&[b]).is_err());
            let expected = (1..=s.len())
                .find(|&n| !completable(&s[..n]))
                .map(|n| n - 1);
            assert_eq!(first_fail, expected, "{s:02X?}");
            // Whole-piece feeding must fail exactly when some prefix is uncompletable.
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&s).is_err(), expected.is_some(), "{s:02X?}");
        }
    }

    #[test]
    fn rejects_out_of_range_and_surrogate_prefixes_immediately() {
        for tail in [
            &[0xF4, 0x90][..],
            &[0xED, 0xA0],
            &[0xE0, 0x80],
            &[0xF0, 0x80],
            &[0xC0],
        ] {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(tail), Err(Utf8Invalid), "{tail:02X?}");
            // Split across pieces, too.
            let mut v = Utf8Validator::new();
            let mut r = v.feed(&tail[..1]);
            if r.is_ok() {
                r = v.feed(&tail[1..]);
            }
            assert_eq!(r, Err(Utf8Invalid), "{tail:02X?} split");
        }
    }

    #[test]
    fn incomplete_tail_fails_only_at_finish() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ok\xF0\x9F\x98").is_ok());
        assert_eq!(v.finish(), Err(Utf8Invalid));
        assert!(v.feed(b"\x80").is_ok());
        assert!(v.finish().is_ok());
        v = Utf8Validator::new();
        assert!(v.finish().is_ok());
        assert!(v.feed(b"abc").is_ok());
    }
}

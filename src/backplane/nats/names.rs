//! What NATS names after a topic: its stream, and the subjects its messages go to.
//!
//! Topic `chat` with prefix `app` is the stream `app-chat`, holding the subjects `app.chat.>`:
//! a collection's messages go to `app.chat.all`, a room's to `app.chat.room.ROOM`. One
//! stream per topic, read by one consumer per process whatever the number of rooms; a
//! room's own subject lets a resume read that room's messages alone.
//!
//! Topic and room names may hold anything; NATS names may not (no `.`, `*`, `>`, spaces,
//! slashes). A name is written as itself where it is made of letters, digits and `-`, and
//! every other byte as `_` and two hex digits, so two names never share a token. A name
//! that would be long ends in `_h` and a 64-bit hash of the whole name instead: two rooms
//! could then share a subject (one in 2^64), which costs a resume of one of them reading
//! the other's messages too, never delivering them (the envelope names its room).

/// Longest token written out in full; longer ones are shortened and hashed.
const MAX_TOKEN: usize = 64;

/// Whether `prefix` can start stream names and subjects: letters, digits, `-`, `_`.
pub(super) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `name` as one NATS subject token, also usable in a stream name.
pub(super) fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    // Where the whole pieces within the first 32 characters end: a long name keeps those.
    let mut short = None;
    for byte in name.bytes() {
        let before = out.len();
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02X}"));
        }
        if short.is_none() && out.len() > 32 {
            short = Some(before);
        }
    }
    if out.len() <= MAX_TOKEN {
        return out;
    }
    out.truncate(short.unwrap_or(out.len()));
    out.push_str(&format!("_h{:016x}", fnv1a(name.as_bytes())));
    out
}

/// FNV-1a, 64 bits: the same in every process and every build, unlike std's hashers.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The names of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TopicNames {
    /// The stream.
    pub(super) stream: String,
    /// The subjects' common start, `prefix.topic`.
    base: String,
}

impl TopicNames {
    pub(super) fn new(prefix: &str, topic: &str) -> Self {
        let topic = token(topic);
        TopicNames {
            stream: format!("{prefix}-{topic}"),
            base: format!("{prefix}.{topic}"),
        }
    }

    /// What the stream holds: every subject of the topic.
    pub(super) fn wildcard(&self) -> String {
        format!("{}.>", self.base)
    }

    /// Where a message goes: its room's subject, or the collection's.
    pub(super) fn subject(&self, room: Option<&[u8]>) -> String {
        match room {
            Some(room) => format!(
                "{}.room.{}",
                self.base,
                token(&String::from_utf8_lossy(room))
            ),
            None => format!("{}.all", self.base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_nats_names_and_distinct() {
        let names = TopicNames::new("app", "chat");
        assert_eq!(names.stream, "app-chat");
        assert_eq!(names.wildcard(), "app.chat.>");
        assert_eq!(names.subject(None), "app.chat.all");
        assert_eq!(names.subject(Some(b"lobby")), "app.chat.room.lobby");
        assert_eq!(token("a.b c*>/_"), "a_2Eb_20c_2A_3E_2F_5F");
        assert_ne!(
            token("a_2E"),
            token("a."),
            "an escape is never a name's own text"
        );
        assert_eq!(token("é"), "_C3_A9");
        for name in [
            "x".repeat(65),
            "é".repeat(40),
            format!("{}.", "y".repeat(63)),
        ] {
            let long = token(&name);
            assert!(long.len() <= MAX_TOKEN, "{long}");
            assert!(long.contains("_h"), "{long}");
            assert!(
                long.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{long}"
            );
        }
        assert_ne!(token(&"x".repeat(65)), token(&"x".repeat(66)));
        assert_eq!(token(&"x".repeat(64)), "x".repeat(64), "64 is written out");
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("websocket-handler"));
        assert!(valid_prefix("A_1"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a.b"));
        assert!(!valid_prefix("a b"));
    }
}

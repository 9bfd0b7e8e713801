//! The records of SignalR's JSON hub protocol (`HubProtocol.md` in dotnet/aspnetcore's
//! `src/SignalR/docs/specs/`): what a client sends, parsed, and what the server sends,
//! encoded. Plain functions over bytes, no tokio.
//!
//! Every record is one JSON object followed by the record separator 0x1E; a WebSocket text
//! message holds one or more whole records (the clients never split one across messages).
//! Parsing is serde_json's, which is linear in the input, bounded in depth (128) and never
//! panics; arguments, items and results stay raw JSON borrowed from the message, decoded
//! later into the hub method's own types.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The record separator that ends every record.
pub(crate) const SEPARATOR: u8 = 0x1e;

/// The longest invocation id or method name accepted: the spec lets a server limit them.
pub(crate) const MAX_NAME_BYTES: usize = 256;

/// The message types (HubProtocol.md, "JSON Encoding").
pub(crate) mod kind {
    pub(crate) const INVOCATION: u64 = 1;
    pub(crate) const STREAM_ITEM: u64 = 2;
    pub(crate) const COMPLETION: u64 = 3;
    pub(crate) const STREAM_INVOCATION: u64 = 4;
    pub(crate) const CANCEL_INVOCATION: u64 = 5;
    pub(crate) const PING: u64 = 6;
    pub(crate) const CLOSE: u64 = 7;
    pub(crate) const ACK: u64 = 8;
    pub(crate) const SEQUENCE: u64 = 9;
}

/// One record a client sent.
#[derive(Debug)]
pub(crate) enum Inbound<'a> {
    /// Type 1 (`streaming` false) or 4 (`streaming` true): call a hub method. Without an id
    /// (type 1 only) the caller wants no answer.
    Invocation {
        id: Option<Cow<'a, str>>,
        target: Cow<'a, str>,
        /// A JSON array.
        arguments: &'a RawValue,
        streaming: bool,
        /// The call names streams from the client (upload streaming).
        uploads: bool,
    },
    /// Type 2: an item of a stream from the client.
    StreamItem { id: Cow<'a, str> },
    /// Type 3: the answer to an invocation of ours (a client result).
    Completion {
        id: Cow<'a, str>,
        /// `None` for no result (or `null`).
        result: Option<&'a RawValue>,
        error: Option<Cow<'a, str>>,
    },
    /// Type 5: stop a stream (or an invocation) of this id.
    Cancel { id: Cow<'a, str> },
    /// Type 6.
    Ping,
    /// Type 7: the client is closing.
    Close { error: Option<Cow<'a, str>> },
    /// Type 8 (stateful reconnect): the client has what we sent up to this sequence id.
    Ack { sequence_id: u64 },
    /// Type 9 (stateful reconnect): the id of the next record the client sends.
    Sequence { sequence_id: u64 },
}

impl Inbound<'_> {
    /// Whether the record counts in stateful reconnect's sequence ids (types 1 to 5).
    pub(crate) fn is_tracked(&self) -> bool {
        !matches!(
            self,
            Inbound::Ping | Inbound::Close { .. } | Inbound::Ack { .. } | Inbound::Sequence { .. }
        )
    }
}

/// Why a record was refused: a protocol error, after which the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// The text is not a JSON object of the expected shape.
    #[error("not a hub protocol record: {0}")]
    Json(String),
    /// A required field is absent.
    #[error("a record of type {kind} has no `{field}`")]
    Missing { kind: u64, field: &'static str },
    /// A type this server does not know.
    #[error("unknown record type {0}")]
    UnknownType(u64),
    /// `arguments` is not an array.
    #[error("`arguments` is not an array")]
    ArgumentsNotArray,
    /// A Completion with both a result and an error.
    #[error("a Completion has both `result` and `error`")]
    ResultAndError,
    /// An id or a method name longer than [`MAX_NAME_BYTES`].
    #[error("`{0}` is longer than {MAX_NAME_BYTES} bytes")]
    TooLong(&'static str),
    /// The message does not end with the record separator: a record split across
    /// messages, which the clients never send.
    #[error("the message does not end with the record separator 0x1E")]
    Unterminated,
    /// A handshake that is not `{"protocol": ..., "version": ...}`.
    #[error("bad handshake: {0}")]
    Handshake(String),
}

/// The fields any record may have; which are required depends on its type.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type")]
    kind: u64,
    #[serde(rename = "invocationId", borrow, default)]
    invocation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    target: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(rename = "streamIds", borrow, default)]
    stream_ids: Option<&'a RawValue>,
    #[serde(rename = "sequenceId", default)]
    sequence_id: Option<u64>,
    // `headers`, `item`, `allowReconnect` and anything else: read past, not kept (the spec
    // asks that unknown headers be disregarded; `item` is an upload's, not supported).
}

/// Splits a text message into its records, each without its separator. The message must
/// end with a separator; empty records (two separators in a row) are skipped.
pub(crate) fn split(message: &[u8]) -> Result<impl Iterator<Item = &[u8]>, RecordError> {
    if message.last() != Some(&SEPARATOR) {
        return Err(RecordError::Unterminated);
    }
    let body = &message[..message.len() - 1];
    Ok(body
        .split(|&byte| byte == SEPARATOR)
        .filter(|record| !record.is_empty()))
}

/// Parses one record (without its separator).
pub(crate) fn parse(record: &[u8]) -> Result<Inbound<'_>, RecordError> {
    // serde would take an array for the struct's fields in order: a record is an object.
    if record.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(RecordError::Json("a record is a JSON object".to_owned()));
    }
    let fields: Fields<'_> =
        serde_json::from_slice(record).map_err(|error| RecordError::Json(error.to_string()))?;
    let kind = fields.kind;
    if fields
        .invocation_id
        .as_ref()
        .is_some_and(|id| id.len() > MAX_NAME_BYTES)
    {
        return Err(RecordError::TooLong("invocationId"));
    }
    let id = fields.invocation_id;
    let required_id = move || {
        id.clone().ok_or(RecordError::Missing {
            kind,
            field: "invocationId",
        })
    };
    Ok(match kind {
        kind::INVOCATION | kind::STREAM_INVOCATION => {
            let streaming = kind == kind::STREAM_INVOCATION;
            let target = fields.target.ok_or(RecordError::Missing {
                kind,
                field: "target",
            })?;
            if target.len() > MAX_NAME_BYTES {
                return Err(RecordError::TooLong("target"));
            }
            let arguments = fields.arguments.ok_or(RecordError::Missing {
                kind,
                field: "arguments",
            })?;
            if !arguments.get().starts_with('[') {
                return Err(RecordError::ArgumentsNotArray);
            }
            if streaming && required_id().is_err() {
                return Err(RecordError::Missing {
                    kind,
                    field: "invocationId",
                });
            }
            let uploads = fields
                .stream_ids
                .is_some_and(|ids| ids.get() != "[]" && ids.get() != "null");
            Inbound::Invocation {
                id: required_id().ok(),
                target,
                arguments,
                streaming,
                uploads,
            }
        }
        kind::STREAM_ITEM => Inbound::StreamItem { id: required_id()? },
        kind::COMPLETION => {
            if fields.result.is_some() && fields.error.is_some() {
                return Err(RecordError::ResultAndError);
            }
            Inbound::Completion {
                id: required_id()?,
                result: fields.result,
                error: fields.error,
            }
        }
        kind::CANCEL_INVOCATION => Inbound::Cancel { id: required_id()? },
        kind::PING => Inbound::Ping,
        kind::CLOSE => Inbound::Close {
            error: fields.error,
        },
        kind::ACK | kind::SEQUENCE => {
            let sequence_id = fields.sequence_id.ok_or(RecordError::Missing {
                kind,
                field: "sequenceId",
            })?;
            if kind == kind::ACK {
                Inbound::Ack { sequence_id }
            } else {
                Inbound::Sequence { sequence_id }
            }
        }
        other => return Err(RecordError::UnknownType(other)),
    })
}

/// The handshake a client sends first: `{"protocol":"json","version":1}` (2 from clients
/// that do stateful reconnect).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Handshake<'a> {
    pub(crate) protocol: Cow<'a, str>,
    pub(crate) version: u64,
}

/// Splits the handshake off the start of the first message: the handshake, and the records
/// that followed it in the same message (possibly none). `Ok(None)` when the message
/// holds no separator yet.
pub(crate) fn parse_handshake(message: &[u8]) -> Result<(Handshake<'_>, &[u8]), RecordError> {
    #[derive(Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        protocol: Cow<'a, str>,
        version: u64,
    }
    let end = message
        .iter()
        .position(|&byte| byte == SEPARATOR)
        .ok_or(RecordError::Unterminated)?;
    let request: Request<'_> = serde_json::from_slice(&message[..end])
        .map_err(|error| RecordError::Handshake(error.to_string()))?;
    if request.protocol.len() > MAX_NAME_BYTES {
        return Err(RecordError::TooLong("protocol"));
    }
    Ok((
        Handshake {
            protocol: request.protocol,
            version: request.version,
        },
        &message[end + 1..],
    ))
}

/// `s` as a JSON string, quotes included.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The answer to a handshake: `{}` or the error, and the separator.
pub(crate) fn handshake_response(error: Option<&str>) -> String {
    let mut out = String::with_capacity(64);
    match error {
        None => out.push_str("{}"),
        Some(error) => {
            out.push_str("{\"error\":");
            push_str(&mut out, error);
            out.push('}');
        }
    }
    out.push(SEPARATOR as char);
    out
}

/// An Invocation of `target` with `arguments` (a JSON array), with an id if an answer is
/// wanted (a client result).
pub(crate) fn invocation(id: Option<&str>, target: &str, arguments: &str) -> String {
    let mut out = String::with_capacity(48 + target.len() + arguments.len());
    out.push_str("{\"type\":1,");
    if let Some(id) = id {
        out.push_str("\"invocationId\":");
        push_str(&mut out, id);
        out.push(',');
    }
    out.push_str("\"target\":");
    push_str(&mut out, target);
    out.push_str(",\"arguments\":");
    out.push_str(arguments);
    out.push('}');
    out.push(SEPARATOR as char);
    out
}

/// A StreamItem of the stream `id`, the item as JSON.
pub(crate) fn stream_item(id: &str, item: &str) -> String {
    let mut out = String::with_capacity(40 + id.len() + item.len());
    out.push_str("{\"type\":2,\"invocationId\":");
    push_str(&mut out, id);
    out.push_str(",\"item\":");
    out.push_str(item);
    out.push('}');
    out.push(SEPARATOR as char);
    out
}

/// A Completion of `id`: with a result (JSON), none, or an error.
pub(crate) fn completion(id: &str, outcome: Result<Option<&str>, &str>) -> String {
    let mut out = String::with_capacity(48 + id.len());
    out.push_str("{\"type\":3,\"invocationId\":");
    push_str(&mut out, id);
    match outcome {
        Ok(Some(result)) => {
            out.push_str(",\"result\":");
            out.push_str(result);
        }
        Ok(None) => {}
        Err(error) => {
            out.push_str(",\"error\":");
            push_str(&mut out, error);
        }
    }
    out.push('}');
    out.push(SEPARATOR as char);
    out
}

/// A Ping.
pub(crate) const PING: &str = "{\"type\":6}\u{1e}";

/// A Close, with an error if there is one, telling clients with automatic reconnect whether
/// to reconnect.
pub(crate) fn close(error: Option<&str>, allow_reconnect: bool) -> String {
    let mut out = String::from("{\"type\":7");
    if let Some(error) = error {
        out.push_str(",\"error\":");
        push_str(&mut out, error);
    }
    if allow_reconnect {
        out.push_str(",\"allowReconnect\":true");
    }
    out.push('}');
    out.push(SEPARATOR as char);
    out
}

/// An Ack of everything up to `sequence_id`.
pub(crate) fn ack(sequence_id: u64) -> String {
    format!("{{\"type\":8,\"sequenceId\":{sequence_id}}}\u{1e}")
}

/// A Sequence: the id of the next record we send.
pub(crate) fn sequence(sequence_id: u64) -> String {
    format!("{{\"type\":9,\"sequenceId\":{sequence_id}}}\u{1e}")
}

/// Checks a whole message as a client's and parses all it holds, for the fuzz target:
/// panics if a record that parsed does not hold what the text said.
#[cfg(any(test, fuzzing))]
pub(crate) fn check_message(message: &[u8]) {
    if let Ok((handshake, rest)) = parse_handshake(message) {
        assert!(handshake.protocol.len() <= MAX_NAME_BYTES);
        assert!(rest.len() < message.len());
    }
    let Ok(records) = split(message) else {
        assert_ne!(message.last(), Some(&SEPARATOR));
        return;
    };
    for record in records {
        assert!(!record.contains(&SEPARATOR));
        match parse(record) {
            Ok(Inbound::Invocation {
                id,
                target,
                arguments,
                ..
            }) => {
                assert!(target.len() <= MAX_NAME_BYTES);
                assert!(id.as_ref().is_none_or(|id| id.len() <= MAX_NAME_BYTES));
                assert!(arguments.get().starts_with('['));
                // What the server would send back parses as the same.
                let echoed = invocation(id.as_deref(), &target, arguments.get());
                let again = parse(&echoed.as_bytes()[..echoed.len() - 1]);
                match again {
                    Ok(Inbound::Invocation { target: again, .. }) => assert_eq!(again, target),
                    other => panic!("{echoed:?} parsed as {other:?}"),
                }
            }
            Ok(Inbound::Completion { id, result, error }) => {
                assert!(!(result.is_some() && error.is_some()));
                let error = error.as_deref();
                let encoded = completion(&id, error.map_or(Ok(result.map(RawValue::get)), Err));
                assert!(parse(&encoded.as_bytes()[..encoded.len() - 1]).is_ok());
            }
            Ok(_) | Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Inbound<'_> {
        let mut records = split(text.as_bytes()).expect("terminated");
        let record = records.next().expect("a record");
        parse(record).expect("parses")
    }

    #[test]
    fn what_the_javascript_client_sends_parses() {
        let Inbound::Invocation {
            id,
            target,
            arguments,
            streaming,
            uploads,
        } = one("{\"arguments\":[\"ana\",\"hi\"],\"invocationId\":\"0\",\"streamIds\":[],\"target\":\"SendMessage\",\"type\":1}\u{1e}")
        else {
            panic!("an invocation")
        };
        assert_eq!(id.as_deref(), Some("0"));
        assert_eq!(target, "SendMessage");
        assert_eq!(arguments.get(), "[\"ana\",\"hi\"]");
        assert!(!streaming && !uploads);
        assert!(matches!(one("{\"type\":6}\u{1e}"), Inbound::Ping));
        assert!(matches!(
            one("{\"type\":5,\"invocationId\":\"3\"}\u{1e}"),
            Inbound::Cancel { id } if id == "3"
        ));
        assert!(matches!(
            one("{\"type\":8,\"sequenceId\":1394}\u{1e}"),
            Inbound::Ack { sequence_id: 1394 }
        ));
        assert!(matches!(
            one("{\"type\":3,\"invocationId\":\"s1\",\"result\":{\"a\":[1]}}\u{1e}"),
            Inbound::Completion { result: Some(r), error: None, .. } if r.get() == "{\"a\":[1]}"
        ));
        let escaped = one("{\"type\":1,\"target\":\"Send\\u0041\",\"arguments\":[],\"headers\":{\"x\":\"y\"}}\u{1e}");
        assert!(
            matches!(escaped, Inbound::Invocation { target, id: None, .. } if target == "SendA")
        );
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let bad = |text: &str| parse(text.as_bytes()).expect_err(text);
        assert_eq!(
            bad("{\"type\":1,\"arguments\":[]}"),
            RecordError::Missing {
                kind: 1,
                field: "target"
            }
        );
        assert_eq!(
            bad("{\"type\":1,\"target\":\"x\",\"arguments\":{}}"),
            RecordError::ArgumentsNotArray
        );
        assert_eq!(
            bad("{\"type\":3,\"invocationId\":\"1\",\"result\":1,\"error\":\"e\"}"),
            RecordError::ResultAndError
        );
        assert_eq!(bad("{\"type\":42}"), RecordError::UnknownType(42));
        assert!(matches!(bad("{\"type\":1"), RecordError::Json(_)));
        assert!(matches!(bad("[6]"), RecordError::Json(_)));
        let long = format!(
            "{{\"type\":5,\"invocationId\":\"{}\"}}",
            "x".repeat(MAX_NAME_BYTES + 1)
        );
        assert_eq!(bad(&long), RecordError::TooLong("invocationId"));
        assert!(matches!(
            split(b"{\"type\":6}"),
            Err(RecordError::Unterminated)
        ));
    }

    #[test]
    fn several_records_in_one_message() {
        let text = "{\"type\":6}\u{1e}{\"type\":7,\"error\":\"bye\"}\u{1e}";
        let records: Vec<_> = split(text.as_bytes()).expect("terminated").collect();
        assert_eq!(records.len(), 2);
        assert!(matches!(
            parse(records[1]),
            Ok(Inbound::Close { error: Some(e) }) if e == "bye"
        ));
    }

    #[test]
    fn the_handshake_and_what_follows_it() {
        let (handshake, rest) =
            parse_handshake(b"{\"protocol\":\"json\",\"version\":2}\x1e{\"type\":6}\x1e")
                .expect("parses");
        assert_eq!(handshake.protocol, "json");
        assert_eq!(handshake.version, 2);
        assert_eq!(rest, b"{\"type\":6}\x1e");
        assert!(parse_handshake(b"{\"protocol\":\"json\"}\x1e").is_err());
        assert_eq!(handshake_response(None), "{}\u{1e}");
    }

    #[test]
    fn encoded_records_are_the_protocol_s() {
        assert_eq!(
            invocation(None, "ReceiveMessage", "[\"a\",\"b\\\"\"]"),
            "{\"type\":1,\"target\":\"ReceiveMessage\",\"arguments\":[\"a\",\"b\\\"\"]}\u{1e}"
        );
        assert_eq!(
            completion("7", Err("it \"failed\"\n")),
            "{\"type\":3,\"invocationId\":\"7\",\"error\":\"it \\\"failed\\\"\\n\"}\u{1e}"
        );
        assert_eq!(
            close(None, true),
            "{\"type\":7,\"allowReconnect\":true}\u{1e}"
        );
        assert_eq!(sequence(5), "{\"type\":9,\"sequenceId\":5}\u{1e}");
        // What the server writes parses back (the fuzz target checks the same on any input).
        check_message(completion("1", Ok(Some("[1,2]"))).as_bytes());
        check_message(invocation(Some("s\u{1}"), "T\u{7f}", "[]").as_bytes());
    }

    /// What the fuzz target checks, on every prefix and every one-byte change of a few
    /// messages: no panic, and what parses holds what its text said.
    #[test]
    fn cut_and_changed_messages_never_panic() {
        let seeds: [&[u8]; 3] = [
            b"{\"protocol\":\"json\",\"version\":2}\x1e{\"type\":6}\x1e",
            b"{\"arguments\":[\"a\\u0000\",[{}]],\"invocationId\":\"0\",\"target\":\"Send\",\"type\":4}\x1e",
            b"{\"type\":3,\"invocationId\":\"s0\",\"result\":{\"a\":[1]}}\x1e{\"type\":9,\"sequenceId\":4}\x1e",
        ];
        for seed in seeds {
            for end in 0..=seed.len() {
                check_message(&seed[..end]);
            }
            for at in 0..seed.len() {
                for byte in [0u8, b'"', b'[', b'{', b'}', 0x1e, b'\\', 0xff] {
                    let mut changed = seed.to_vec();
                    changed[at] = byte;
                    check_message(&changed);
                }
            }
        }
    }
}

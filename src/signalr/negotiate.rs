//! The negotiate endpoint (`TransportProtocols.md`): `POST {hub}/negotiate` answers a
//! connection id, the token that attaches the WebSocket (`GET {hub}?id=<token>`), and the
//! one transport served here, WebSockets, with Text and Binary.

use std::fmt::Write as _;

/// The negotiate versions served: 0 (the token is the connection id) and 1.
pub(crate) const MAX_VERSION: u64 = 1;

/// What a negotiate request asked for, from its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asked {
    /// `negotiateVersion`, at most [`MAX_VERSION`]; 0 when absent.
    pub(crate) version: u64,
    /// `useStatefulReconnect=true`.
    pub(crate) stateful: bool,
}

impl Asked {
    /// Reads the query of a negotiate request. Values that do not parse count as absent,
    /// as the .NET server does.
    pub(crate) fn from_query(query: &str) -> Asked {
        let param = |name: &str| {
            crate::protocol::query::query_param(query, name)
                .ok()
                .flatten()
        };
        let version = param("negotiateVersion")
            .and_then(|version| version.parse::<u64>().ok())
            .unwrap_or(0)
            .min(MAX_VERSION);
        let stateful = param("useStatefulReconnect").is_some_and(|value| value == "true");
        Asked { version, stateful }
    }
}

/// The JSON answer to a negotiate request. `useStatefulReconnect` is sent only when the
/// client asked for it and the hub allows it: a client that did not ask fails on it.
pub(crate) fn response(asked: Asked, connection_id: &str, token: &str, stateful: bool) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"connectionId\":\"");
    out.push_str(connection_id);
    out.push('"');
    if asked.version >= 1 {
        out.push_str(",\"connectionToken\":\"");
        out.push_str(token);
        out.push('"');
    }
    let _ = write!(out, ",\"negotiateVersion\":{}", asked.version);
    out.push_str(
        ",\"availableTransports\":[{\"transport\":\"WebSockets\",\
         \"transferFormats\":[\"Text\",\"Binary\"]}]",
    );
    if stateful {
        out.push_str(",\"useStatefulReconnect\":true");
    }
    out.push('}');
    out
}

/// A new random id: 16 bytes from the system's generator, as 22 characters of URL-safe
/// base64 (no escaping needed in JSON or in a query). `None` if the system has no
/// randomness to give.
pub(crate) fn random_id() -> Option<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    let mut bits = u128::from_le_bytes(bytes);
    let mut out = String::with_capacity(22);
    for _ in 0..22 {
        out.push(ALPHABET[(bits & 63) as usize] as char);
        bits >>= 6;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_says_the_version_and_whether_stateful() {
        assert_eq!(
            Asked::from_query("negotiateVersion=1&useStatefulReconnect=true"),
            Asked {
                version: 1,
                stateful: true
            }
        );
        assert_eq!(
            Asked::from_query(""),
            Asked {
                version: 0,
                stateful: false
            }
        );
        assert_eq!(Asked::from_query("negotiateVersion=7").version, 1);
    }

    #[test]
    fn the_answer_names_only_websockets_and_stateful_only_when_asked() {
        let asked = Asked {
            version: 1,
            stateful: false,
        };
        let answer: serde_json::Value =
            serde_json::from_str(&response(asked, "abc", "tok", false)).expect("JSON");
        assert_eq!(answer["connectionId"], "abc");
        assert_eq!(answer["connectionToken"], "tok");
        assert_eq!(answer["negotiateVersion"], 1);
        assert_eq!(answer["availableTransports"][0]["transport"], "WebSockets");
        assert!(answer.get("useStatefulReconnect").is_none());
        let v0: serde_json::Value = serde_json::from_str(&response(
            Asked {
                version: 0,
                stateful: false,
            },
            "abc",
            "tok",
            false,
        ))
        .expect("JSON");
        assert!(v0.get("connectionToken").is_none());
    }

    #[test]
    fn ids_are_random_and_url_safe() {
        let (a, b) = (random_id().expect("random"), random_id().expect("random"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}

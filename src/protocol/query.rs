//! Reading parameters from a URL query string.

/// Reads the parameter `name` from a query string (`a=1&b=two`, without the `?`),
/// percent-decoded, with `+` read as a space as HTML forms encode it.
///
/// Returns `Ok(None)` when the parameter is absent, the first value when it is repeated,
/// and an error when its decoded value is not UTF-8. Malformed `%` escapes are kept as
/// they are.
///
/// ```
/// use websocket_handler::query_param;
///
/// assert_eq!(query_param("username=Ana%20Mar%C3%ADa&x=1", "username").unwrap(),
///            Some("Ana María".to_string()));
/// assert_eq!(query_param("x=1", "username").unwrap(), None);
/// assert!(query_param("username=%FF", "username").is_err());
/// ```
pub fn query_param(query: &str, name: &str) -> Result<Option<String>, QueryError> {
    query_params(query, name).next().transpose()
}

/// Every value of the parameter `name` in a query string, in order (`tag=a&tag=b`), decoded
/// as [`query_param`] decodes one; a value that is not UTF-8 once decoded is an error in
/// its place.
///
/// ```
/// use websocket_handler::query_params;
///
/// let tags: Result<Vec<String>, _> = query_params("tag=rust&x=1&tag=web+sockets", "tag").collect();
/// assert_eq!(tags.unwrap(), ["rust", "web sockets"]);
/// assert_eq!(query_params("x=1", "tag").count(), 0);
/// ```
pub fn query_params<'a>(
    query: &'a str,
    name: &'a str,
) -> impl Iterator<Item = Result<String, QueryError>> + 'a {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key).as_deref() == Ok(name)).then(|| {
            decode(value).map_err(|_| QueryError::InvalidUtf8 {
                name: name.to_owned(),
            })
        })
    })
}

fn decode(component: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out)
}

fn hex(digit: &u8) -> Option<u8> {
    (*digit as char).to_digit(16).map(|value| value as u8)
}

/// A query parameter could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// After percent-decoding, the value is not valid UTF-8.
    #[error("query parameter `{name}` is not valid UTF-8")]
    InvalidUtf8 {
        /// The parameter's name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::query_param;

    #[test]
    fn decodes_plus_percent_and_keeps_malformed_escapes() {
        assert_eq!(
            query_param("q=a+b%2Bc", "q").unwrap().as_deref(),
            Some("a b+c")
        );
        assert_eq!(
            query_param("q=100%&r", "q").unwrap().as_deref(),
            Some("100%")
        );
        assert_eq!(
            query_param("q=%zz%4", "q").unwrap().as_deref(),
            Some("%zz%4")
        );
        assert_eq!(query_param("r&q", "q").unwrap().as_deref(), Some(""));
        assert_eq!(query_param("", "q").unwrap(), None);
        assert_eq!(query_param("q=1&q=2", "q").unwrap().as_deref(), Some("1"));
        let all: Vec<_> = super::query_params("q=1&r=0&q=%FF&q=3", "q").collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].as_deref(), Ok("1"));
        assert!(all[1].is_err());
        assert_eq!(all[2].as_deref(), Ok("3"));
        assert_eq!(
            query_param("na%6De=x", "name").unwrap().as_deref(),
            Some("x")
        );
    }
}

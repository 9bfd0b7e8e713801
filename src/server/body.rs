//! The body of the responses the server answers upgrade requests with.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body::{Frame, SizeHint};

use crate::protocol::handshake::HandshakeError;
use crate::server::address::RETRY_AFTER;

/// A whole response body in memory: empty for a `101 Switching Protocols`, a short text for
/// a refused upgrade. It implements [`http_body::Body`], so hyper serves it as it is, and
/// axum takes it with `axum::body::Body::new`. Applications may use it for their own small
/// responses too.
///
/// ```
/// use http_body::Body as _;
/// use websocket_handler::Body;
///
/// let body = Body::from("not found\n");
/// assert_eq!(body.size_hint().exact(), Some(10));
/// assert!(Body::empty().is_end_stream());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Body {
    data: Option<Bytes>,
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Body::default()
    }

    /// A body of these bytes.
    pub fn new(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Body {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl From<Bytes> for Body {
    fn from(data: Bytes) -> Self {
        Body::new(data)
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body::new(text)
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body::new(text)
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body::new(bytes)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
    }
}

impl HandshakeError {
    /// The plain-text HTTP response for this rejection, with the headers RFC 6455 and RFC 9110
    /// ask for (`Allow: GET` on 405, `Allow: CONNECT` over HTTP/2,
    /// `Sec-WebSocket-Version: 13` on 426, `Retry-After` on 429).
    pub fn to_response(&self) -> Response<Body> {
        let mut response = Response::new(Body::from(format!("{self}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            HandshakeError::MethodNotAllowed(_) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            HandshakeError::ConnectRequired(_) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("CONNECT"));
            }
            HandshakeError::UnsupportedVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            HandshakeError::AddressBusy { .. } | HandshakeError::AddressRateLimited { .. } => {
                let seconds = RETRY_AFTER.as_secs().to_string();
                if let Ok(value) = HeaderValue::from_str(&seconds) {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        response
    }
}

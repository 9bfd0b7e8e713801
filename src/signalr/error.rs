//! `HubError`: why a hub method failed, or why a send or a client result did not happen.

use std::time::Duration;

use crate::json::JsonError;

/// Why a hub method failed (the caller gets the text as its invocation's error, and the
/// connection stays open), or why a send to clients or a client result did not happen.
///
/// A method returns `Err(HubError::new("..."))` for an error of its own: that text is what
/// the client sees, so it should say what went wrong without saying too much.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A hub method's own error: its text goes to the caller.
    #[error("{0}")]
    Failed(String),
    /// Arguments or a result that are not the JSON expected.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// Arguments to send that do not encode as a JSON array: pass a tuple (`(a, b)`, `(a,)`)
    /// or `()` for none.
    #[error("the arguments are not a JSON array (pass a tuple: (a, b), (a,) or ())")]
    ArgumentsNotArray,
    /// No connection of this hub has that id (in this process).
    #[error("no connection {0}")]
    NotFound(String),
    /// The connection closed (or its queue refused the message).
    #[error("the connection is closed")]
    Closed,
    /// A client result did not arrive within the hub's client timeout.
    #[error("the client did not answer within {0:?}")]
    Timeout(Duration),
    /// The client answered an invocation with this error (it has no such method, or its
    /// handler threw).
    #[error("the client answered with an error: {0}")]
    Client(String),
    /// The client cancelled the stream.
    #[error("the client cancelled the stream")]
    Cancelled,
}

impl HubError {
    /// A method's own error, with the text the caller gets.
    pub fn new(message: impl Into<String>) -> Self {
        HubError::Failed(message.into())
    }
}

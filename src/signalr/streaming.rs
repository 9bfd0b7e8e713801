//! Server-to-client streaming: what a stream method sends its items with.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;

use crate::json::JsonError;
use crate::signalr::error::HubError;
use crate::signalr::records;
use crate::signalr::session::Session;

/// Where a stream method ([`HubBuilder::stream`](crate::signalr::HubBuilder::stream)) sends
/// its items, each as one StreamItem record to the caller.
///
/// When the client cancels the stream (or goes away), the method's future is dropped at its
/// next `.await` and the client gets the stream's Completion: there is nothing to check.
pub struct StreamItems<T> {
    session: Arc<Session>,
    id: Box<str>,
    items: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for StreamItems<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamItems")
            .field("invocation_id", &self.id)
            .finish()
    }
}

impl<T: Serialize> StreamItems<T> {
    pub(crate) fn new(session: Arc<Session>, id: &str) -> Self {
        StreamItems {
            session,
            id: id.into(),
            items: PhantomData,
        }
    }

    /// The stream's invocation id, as the client named it.
    pub fn invocation_id(&self) -> &str {
        &self.id
    }

    /// Sends one item, waiting while the client's queue is full (a stream goes as fast as
    /// its client reads, never dropped as a slow consumer). Fails with
    /// [`HubError::Closed`] once the connection is gone.
    pub async fn send(&self, item: &T) -> Result<(), HubError> {
        let item = serde_json::to_string(item)
            .map_err(|error| HubError::Json(JsonError::Encode(error.to_string())))?;
        self.session
            .send_wait(records::stream_item(&self.id, &item))
            .await
    }
}

//! The hub's methods, by name: each decodes its JSON arguments into the types its function
//! takes, and encodes what it returns.

use std::any::TypeId;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::json::JsonError;
use crate::signalr::call::Call;
use crate::signalr::error::HubError;
use crate::signalr::streaming::StreamItems;

/// What a call resolves to: its result as JSON (`None` for none), or its error.
pub(crate) type Outcome = Pin<Box<dyn Future<Output = Result<Option<String>, HubError>> + Send>>;

type Start = Box<dyn Fn(Call, &RawValue, &str) -> Result<Outcome, HubError> + Send + Sync>;

/// One method.
pub(crate) struct Method {
    /// Whether it streams its results (called with a StreamInvocation).
    pub(crate) streams: bool,
    /// Decodes the arguments and starts the call (the invocation id is a stream's).
    start: Start,
}

impl Method {
    /// A method that returns one result.
    pub(crate) fn unary<A, R, F, Fut>(function: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Call, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HubError>> + Send + 'static,
    {
        Method {
            streams: false,
            start: Box::new(move |call, arguments, _| {
                let arguments = decode::<A>(arguments)?;
                let running = function(call, arguments);
                Ok(Box::pin(async move {
                    let result = running.await?;
                    if TypeId::of::<R>() == TypeId::of::<()>() {
                        // A method with nothing to return: a Completion without a result.
                        return Ok(None);
                    }
                    serde_json::to_string(&result)
                        .map(Some)
                        .map_err(|error| HubError::Json(JsonError::Encode(error.to_string())))
                }))
            }),
        }
    }

    /// A method that streams items.
    pub(crate) fn stream<A, T, F, Fut>(function: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        T: Serialize + 'static,
        F: Fn(Call, A, StreamItems<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HubError>> + Send + 'static,
    {
        Method {
            streams: true,
            start: Box::new(move |call, arguments, id| {
                let arguments = decode::<A>(arguments)?;
                let items = StreamItems::new(call.session().clone(), id);
                let running = function(call, arguments, items);
                Ok(Box::pin(async move {
                    running.await?;
                    Ok(None)
                }))
            }),
        }
    }

    /// Decodes `arguments` and starts the call.
    pub(crate) fn start(
        &self,
        call: Call,
        arguments: &RawValue,
        id: &str,
    ) -> Result<Outcome, HubError> {
        (self.start)(call, arguments, id)
    }
}

/// A hook run when a connection has connected or disconnected.
pub(crate) type Hook = Box<dyn Fn(Call) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the application gave the hub to run: its methods by name (case-sensitive, as the
/// protocol says), and its hooks.
#[derive(Default)]
pub(crate) struct Handlers {
    pub(crate) methods: HashMap<String, Method>,
    pub(crate) connected: Option<Hook>,
    pub(crate) disconnected: Option<Hook>,
}

/// The arguments array as `A`: a tuple, a struct of as many fields, or `()` for none.
fn decode<A: DeserializeOwned>(arguments: &RawValue) -> Result<A, HubError> {
    match serde_json::from_str::<A>(arguments.get()) {
        Ok(decoded) => Ok(decoded),
        Err(error) => {
            // serde reads `()` from `null`, not `[]`: a method of no arguments.
            let empty = arguments
                .get()
                .bytes()
                .filter(|byte| !byte.is_ascii_whitespace())
                .eq(*b"[]");
            if empty {
                if let Ok(decoded) = serde_json::from_str::<A>("null") {
                    return Ok(decoded);
                }
            }
            Err(HubError::Json(JsonError::decoding(error)))
        }
    }
}

//! Channel providers: how an event appended on one gateway instance reaches
//! the streams of every instance.
//!
//! A channel is a best-effort broadcast; it is not the source of truth. The
//! hub repairs what a channel may do wrong (lose, duplicate or reorder
//! events) from storage, so a provider only has to keep two promises:
//! - when `subscribe` returns, the subscription is active: anything published
//!   after that reaches it, unless the connection breaks;
//! - when the connection breaks, the subscription's stream ends (or yields an
//!   error), so the hub knows to catch up from storage.

pub mod memory;
pub mod wasm;

use crate::model::{Error, Event, Result, Topic};
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::sync::Arc;

/// Events received by a subscription; ends when the subscription breaks.
pub type Subscription = BoxStream<'static, Result<Event>>;

#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The provider's name, for logs, metrics and `/readyz`.
    fn name(&self) -> &str;

    /// Broadcasts an event to the subscribers of its domain and type.
    async fn publish(&self, event: &Event) -> Result<()>;

    /// Receives events of a topic (`None` parts are wildcards).
    async fn subscribe(&self, topic: &Topic) -> Result<Subscription>;

    /// Cheap round trip to the backend, for `/readyz`.
    async fn ping(&self) -> Result<()>;
}

pub type DynChannel = Arc<dyn Channel>;

/// Connects the provider a `STATEGATE_CHANNEL_PROVIDER` object names; `None`
/// is `inmem`.
pub async fn open(spec: Option<&serde_json::Map<String, serde_json::Value>>) -> Result<DynChannel> {
    let name = spec.and_then(|s| s.get("name")).and_then(|n| n.as_str()).unwrap_or("inmem");
    match name {
        "inmem" | "memory" => Ok(Arc::new(memory::MemoryChannel::new())),
        "wasm" => Ok(Arc::new(wasm::WasmChannel::open(spec.expect("a named provider has a spec")).await?)),
        other => Err(Error::invalid(
            "name",
            format!("unknown channel provider {other:?}; known: inmem (memory), wasm"),
        )),
    }
}

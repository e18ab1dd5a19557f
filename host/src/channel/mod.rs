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
pub mod nats;
pub mod redis;
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
        "redis" => Ok(Arc::new(redis::RedisChannel::open(&redis::RedisConfig::from_spec(spec)?).await?)),
        "nats" => Ok(Arc::new(nats::NatsChannel::open(&nats::NatsConfig::from_spec(spec)?).await?)),
        "wasm" => Ok(Arc::new(wasm::WasmChannel::open(spec.expect("a named provider has a spec")).await?)),
        other => Err(Error::invalid(
            "name",
            format!("unknown channel provider {other:?}; known: inmem (memory), redis, nats, wasm"),
        )),
    }
}

/// The bytes of an event on a broker: its proto3 JSON form (`model::json`).
pub fn encode_event(event: &Event) -> Vec<u8> {
    serde_json::to_vec(&crate::model::json::event(event)).unwrap_or_default()
}

pub fn decode_event(bytes: &[u8]) -> Result<Event> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("a broker message is not an event: {e}")))?;
    crate::model::json::parse_event(&value)
}

/// Escapes a domain or type into a broker name token that holds only
/// `[A-Za-z0-9_-]` and `%XX` escapes: no separator (`.`, `:`), wildcard
/// (`*`, `>`, `?`, `[`) or white space of any broker syntax survives, and
/// distinct names stay distinct.
pub fn escape_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A string option of a provider object, `None` when absent.
fn option<'a>(spec: Option<&'a serde_json::Map<String, serde_json::Value>>, key: &str) -> Result<Option<&'a str>> {
    match spec.and_then(|s| s.get(key)) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::invalid(key, format!("must be a string, got {other}"))),
    }
}

fn flag(spec: Option<&serde_json::Map<String, serde_json::Value>>, key: &str) -> Result<bool> {
    match spec.and_then(|s| s.get(key)) {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::invalid(key, format!("must be true or false, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_tokens_are_safe_and_distinct() {
        let names = ["a.b", "a%2Eb", "a*", "a>", "a b", "a:b", "é", "a_b-C9"];
        let escaped: Vec<String> = names.iter().map(|n| escape_token(n)).collect();
        for e in &escaped {
            assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-%".contains(&b)), "{e}");
        }
        let unique: std::collections::HashSet<_> = escaped.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(escape_token("a_b-C9"), "a_b-C9");
    }
}

/// A subscription fed by an in-process broadcast of every event of the
/// channel: keeps those of `topic`, and ends after the first error (a
/// subscriber that lagged behind the buffer), as the trait promises.
pub(crate) fn broadcast_subscription(rx: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>, topic: Topic) -> Subscription {
    use futures::StreamExt;
    use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
    BroadcastStream::new(rx)
        .filter_map(move |item| {
            let out = match item {
                Ok(e) if topic.matches(&e.record) => Some(Ok(Event::clone(&e))),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Err(Error::ResourceExhausted(format!("subscriber lagged by {n} events"))))
                }
            };
            futures::future::ready(out)
        })
        .scan(false, |failed, item| {
            let out = if *failed { None } else { Some(item) };
            if matches!(out, Some(Err(_))) {
                *failed = true;
            }
            futures::future::ready(out)
        })
        .boxed()
}

//! `wasm`: a channel provider written as a wasm component of the
//! `channel-provider` world (see `wit/`), e.g.
//! `{"name":"wasm","path":"dir_channel.wasm","grants":{"dir":"/tmp/sg-bus"}}`.
//!
//! The host polls the guest from an opaque cursor (every `poll_ms`
//! milliseconds of the spec, default 10, while idle) on one task per
//! provider and fans events out to subscriptions, filtering by topic. Polls
//! never overlap (the cursor is held while polling); publishes run on the
//! provider's instances, side by side when the guest says they may
//! (`wasm::persistent`), in which case a cursor from one instance must mean
//! the same to every other.
//! `subscribe` drains what is already published before it registers, so a
//! subscription receives exactly what is published after it returns.

use super::{Channel, Subscription};
use crate::model::{Error, Event, Result, Topic};
use crate::wasm::bindings::storage::stategate::gateway::types as wt;
use crate::wasm::convert::{event_from_wit, event_to_wit};
use crate::wasm::{ChannelInstance, ChannelPre, Guest, GuestConfig, Persistent, WasmRuntime};
use async_trait::async_trait;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Mutex, broadcast};

const CAPACITY: usize = 16 * 1024;
const BATCH: u32 = 512;

/// `{"name":"wasm","path":…,"poll_ms":10,…}`: a guest object
/// ([`GuestConfig`]) plus how often an idle guest is polled.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmChannelConfig {
    pub guest: GuestConfig,
    /// Milliseconds between polls while nothing arrives (default 10).
    pub poll_ms: u64,
}

/// Reads `poll_ms`, then the rest as a guest object, so unknown keys are
/// still refused by `GuestConfig`.
impl<'de> serde::Deserialize<'de> for WasmChannelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut object = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let poll_ms = match object.remove("poll_ms") {
            None | Some(serde_json::Value::Null) => DEFAULT_POLL_MS,
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| D::Error::custom(format!("poll_ms must be a positive number of milliseconds, got {v}")))?,
        };
        let guest = GuestConfig::deserialize(serde_json::Value::Object(object))
            .map_err(|e| D::Error::custom(format!("{e} (a wasm channel also takes `poll_ms`)")))?;
        Ok(WasmChannelConfig { guest, poll_ms })
    }
}

const DEFAULT_POLL_MS: u64 = 10;

pub struct WasmChannel {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    guest: Persistent<ChannelPre>,
    tx: broadcast::Sender<Arc<Event>>,
    /// The poll position; held while polling so polls never overlap.
    cursor: Mutex<String>,
}

impl Inner {
    fn error(&self, e: wt::ProviderError) -> Error {
        crate::wasm::metrics::guest_error(self.guest.guest().name(), "channel");
        match e {
            wt::ProviderError::Unavailable(why) => Error::Unavailable(format!("{}: {why}", self.name)),
            other => Error::Internal(format!("{}: {other:?}", self.name)),
        }
    }

    /// Polls once from the cursor and broadcasts what arrived; returns how
    /// many events arrived.
    async fn poll(&self, cursor: &mut String) -> Result<usize> {
        let from = cursor.clone();
        let batch = self
            .guest
            .call("poll", move |s, g: &ChannelInstance| g.poll(s, &from, BATCH))
            .await?
            .map_err(|e| self.error(e))?;
        let n = batch.events.len();
        for e in batch.events {
            match event_from_wit(&self.name, e) {
                Ok(e) => {
                    let _ = self.tx.send(Arc::new(e));
                }
                Err(e) => tracing::warn!(channel = %self.name, "dropping a malformed event: {e}"),
            }
        }
        *cursor = batch.cursor;
        Ok(n)
    }
}

impl WasmChannel {
    pub async fn open(config: &WasmChannelConfig, runtime: &WasmRuntime) -> Result<WasmChannel> {
        let poll_every = Duration::from_millis(config.poll_ms.max(1));
        let spec = config.guest.spec(runtime.settings());
        let runtime = runtime.clone();
        let guest = tokio::task::spawn_blocking(move || Guest::load(&runtime, spec))
            .await
            .map_err(Error::internal)??;
        let guest = Persistent::new(guest);
        let name = format!("wasm:{}", guest.guest().name());
        let tail = guest
            .call("tail", |s, g: &ChannelInstance| g.tail(s))
            .await?
            .map_err(|e| Error::Unavailable(format!("{name}: {e:?}")))?;
        let inner = Arc::new(Inner {
            name,
            guest,
            tx: broadcast::channel(CAPACITY).0,
            cursor: Mutex::new(tail),
        });
        tokio::spawn(poller(Arc::downgrade(&inner), poll_every));
        Ok(WasmChannel { inner })
    }
}

async fn poller(inner: Weak<Inner>, every: Duration) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        // Polls even when nobody listens, so the cursor stays fresh.
        let got = {
            let mut cursor = inner.cursor.lock().await;
            inner.poll(&mut cursor).await
        };
        drop(inner);
        match got {
            Ok(n) if n as u32 >= BATCH => continue,
            Ok(_) => tokio::time::sleep(every).await,
            Err(e) => {
                tracing::warn!("wasm channel poll failed: {e}");
                tokio::time::sleep(every.max(Duration::from_millis(200))).await;
            }
        }
    }
}

#[async_trait]
impl Channel for WasmChannel {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        let e = event_to_wit(event);
        self.inner
            .guest
            .call("publish", move |s, g: &ChannelInstance| g.publish(s, &e))
            .await?
            .map_err(|e| self.inner.error(e))
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription> {
        let rx = {
            let mut cursor = self.inner.cursor.lock().await;
            // Drain everything published so far, then register: the new
            // subscription sees only what is published after this point.
            while self.inner.poll(&mut cursor).await? as u32 >= BATCH {}
            self.inner.tx.subscribe()
        };
        Ok(super::broadcast_subscription(rx, topic.clone()))
    }

    async fn ping(&self) -> Result<()> {
        self.inner
            .guest
            .call("ping", |s, g: &ChannelInstance| g.ping(s))
            .await?
            .map_err(|e| self.inner.error(e))
    }
}

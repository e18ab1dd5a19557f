//! The hub: in-process fan-out of events to this instance's streams.
//!
//! While any local stream is live, the hub holds one channel subscription
//! for every topic (`feed`): it repairs what the channel got wrong (order,
//! duplicates, gaps, lost broadcasts) once per event, and hands each event
//! to the bounded buffer (`ring`) of every watched topic it belongs to
//! (its domain/type, `*`/type, domain/`*`, `*`/`*`). A slow stream never
//! slows a writer or another stream: it only lags behind in its ring, and
//! once it falls out of it, it catches up from storage by itself (see
//! `gateway::stream`).
//!
//! What a watched topic costs is a map entry and an empty ring, which grows
//! only with deliveries some stream has not read yet: no task, no timer and
//! no storage read per topic (2,000 one-topic streams once held 385 MiB and
//! 29 % of a core while idle). A ring goes when its last stream leaves;
//! the feed, with its channel subscription and its storage sweep, goes
//! when no stream of any topic is left.
//!
//! When the channel subscription breaks, the feed ends and closes every
//! ring; streams then catch up from storage and subscribe again, which
//! starts a new feed.
//!
//! Every instance therefore receives each event once through the channel,
//! whichever topics its streams watch: the price of O(1) topics, and less
//! than before for overlapping ones (`*` and `d/t` received it twice).

mod feed;
mod filters;
mod last_versions;
mod ring;

pub use filters::SharedFilter;
pub use last_versions::LastVersions;
pub use ring::RecvError;

use crate::channel::DynChannel;
use crate::model::{Error, Event, EventFilter, Result, Topic};
use crate::storage::DynStorage;
use crate::telemetry::Metrics;
use feed::{FeedState, Rings};
use ring::Receiver;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Longest wait for a channel subscription to become active.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Deliveries a topic's ring keeps for its slowest stream; a stream
    /// further behind catches up from storage. Allocated as used.
    pub buffer: usize,
    /// How often the feed sweeps storage for events the channel lost.
    pub sweep_interval: Duration,
    /// How long an event may take to arrive through the channel before the
    /// sweep delivers it from storage instead.
    pub grace: Duration,
    /// Records whose last delivered version the feed remembers (to drop
    /// duplicates and see gaps); only recently written ones matter.
    pub remembered_records: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            buffer: 4096,
            sweep_interval: Duration::from_secs(1),
            grace: Duration::from_secs(2),
            remembered_records: 65_536,
        }
    }
}

/// One event handed to streams, with the hub's resume point.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: SharedEvent,
    pub watermark: u64,
}

/// An event shared by every stream that sends it unchanged. Its forms are
/// made once per event, by the first stream that needs them, not once per
/// subscriber: the protobuf encoding (`encoded`, kept by the gRPC adapter)
/// and the proto3 JSON a response policy reads (`json`).
#[derive(Debug, Clone)]
pub struct SharedEvent {
    event: Arc<Event>,
    forms: Arc<Forms>,
    /// Where the stream sending it resumes if it breaks after it
    /// (`Event.resume_after`): one stream's, so not part of the shared
    /// forms; the gRPC encoder appends it to the shared bytes.
    pub resume_after: Option<u64>,
}

#[derive(Debug, Default)]
struct Forms {
    wire: std::sync::OnceLock<bytes::Bytes>,
    json: std::sync::OnceLock<Arc<serde_json::Value>>,
}

impl SharedEvent {
    pub fn new(event: Event) -> Self {
        SharedEvent {
            event: Arc::new(event),
            forms: Arc::default(),
            resume_after: None,
        }
    }

    /// This event as one stream sends it, with its resume point.
    pub fn resuming_after(mut self, seq: u64) -> Self {
        self.resume_after = Some(seq);
        self
    }

    /// The event's protobuf encoding: `encode` runs for the first caller
    /// only; everyone else gets the same bytes.
    pub fn encoded(&self, encode: impl FnOnce(&Event) -> bytes::Bytes) -> bytes::Bytes {
        self.forms.wire.get_or_init(|| encode(&self.event)).clone()
    }

    /// The event as proto3 JSON (`model::json::event`), made once.
    pub fn json(&self) -> Arc<serde_json::Value> {
        self.forms.json.get_or_init(|| Arc::new(crate::model::json::event(&self.event))).clone()
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

pub struct Hub {
    storage: DynStorage,
    channel: DynChannel,
    config: HubConfig,
    metrics: Arc<Metrics>,
    /// The feed while any stream holds it.
    feed: Mutex<Weak<Feed>>,
    /// Stream filters, interned by canonical form.
    filters: filters::Filters,
}

/// The live channel subscription and its task, shared by every stream and
/// stopped when the last of them lets go.
struct Feed {
    rings: Arc<Rings>,
    task: JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream's place in the hub: its topic's ring, and the feed behind it.
pub struct HubSubscription {
    /// Always `Some` until dropped (taken in `drop`, so the ring can go).
    rx: Option<Receiver>,
    topic: Topic,
    feed: Arc<Feed>,
}

impl HubSubscription {
    /// The next delivery of the topic; `Lagged` when this stream fell out
    /// of the ring, `Closed` when the feed ended.
    pub async fn recv(&mut self) -> Result<Delivery, RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(RecvError::Closed),
        }
    }
}

impl Drop for HubSubscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.feed.rings.release(&self.topic);
    }
}

impl Hub {
    pub fn new(storage: DynStorage, channel: DynChannel, config: HubConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Hub {
            filters: filters::Filters::new(metrics.stream_filter_evaluations.clone(), metrics.hub_filters.clone()),
            storage,
            channel,
            config,
            metrics,
            feed: Mutex::new(Weak::new()),
        })
    }

    /// The shared form of a stream filter: the same for every stream whose
    /// filter has this canonical form, so they share its evaluations.
    pub fn filter(&self, filter: EventFilter) -> Arc<SharedFilter> {
        self.filters.intern(filter)
    }

    /// Subscribes to a topic's events that `filter` admits (every event,
    /// without one). When this returns, every such event appended from now
    /// on will be delivered (or the subscription closes, telling the
    /// stream to catch up). Fails with `Unavailable` when the channel is
    /// down.
    pub async fn subscribe(&self, topic: &Topic, filter: Option<&Arc<SharedFilter>>) -> Result<HubSubscription> {
        let feed = self.feed().await?;
        let (_, rx) = feed.rings.subscribe(topic, filter);
        Ok(HubSubscription {
            rx: Some(rx),
            topic: topic.clone(),
            feed,
        })
    }

    /// The live feed, started if there is none.
    async fn feed(&self) -> Result<Arc<Feed>> {
        // Held across the channel subscribe so concurrent first streams
        // share one feed, and none returns before it is active.
        let mut current = self.feed.lock().await;
        if let Some(feed) = current.upgrade().filter(|f| !f.task.is_finished()) {
            return Ok(feed);
        }
        let since = self.storage.head().await?;
        // Bounded: the lock is held here, and a channel that hangs must not
        // hold up every other stream.
        let sub = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.channel.subscribe(&Topic::ALL))
            .await
            .unwrap_or_else(|_| Err(Error::unavailable(format!("no answer within {SUBSCRIBE_TIMEOUT:?}"))))
            .map_err(|e| match e {
                Error::Unavailable(_) => e,
                other => Error::unavailable(format!("channel {}: {other}", self.channel.name())),
            })?;
        let rings = Rings::new(self.config.buffer, self.metrics.hub_topics.clone());
        let state = FeedState {
            rings: rings.clone(),
            storage: self.storage.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            since,
            watermark: since,
            last_version: LastVersions::new(self.config.remembered_records),
        };
        let feed = Arc::new(Feed {
            rings,
            task: tokio::spawn(state.run(sub)),
        });
        *current = Arc::downgrade(&feed);
        Ok(feed)
    }

    /// Topics with at least one live stream on this instance.
    pub async fn active_topics(&self) -> usize {
        self.feed.lock().await.upgrade().map_or(0, |f| f.rings.live())
    }
}

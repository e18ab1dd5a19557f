//! The hub: in-process fan-out of events to this instance's streams.
//!
//! For each topic (domain/type, possibly `*`) that local streams watch, the
//! hub keeps one channel subscription and one bounded broadcast buffer. A slow
//! stream never slows a writer or another stream: it only lags behind in the
//! buffer, and once it falls out of it, it catches up from storage by itself
//! (see `gateway::stream`). Memory stays bounded by the buffer size.
//!
//! A channel is best effort, so the hub makes what it passes on trustworthy:
//! - per record, events go out in version order exactly once: a duplicate is
//!   dropped, and a gap (an event that arrives before its predecessor, across
//!   instances whose broadcasts raced) is filled from storage first;
//! - every `sweep_interval` it reads the storage feed past its watermark and
//!   sends any event older than `grace` that the channel never brought (a
//!   publish that failed after the write was committed);
//! - each delivery carries the watermark: every event of the topic with a seq
//!   at or below it was sent before. Streams use it as a resume point.
//!
//! When the channel subscription breaks, the feed ends and closes its
//! buffer; streams then catch up from storage and subscribe again.

use crate::channel::DynChannel;
use crate::model::{Error, Event, FeedQuery, RecordRef, Result, Topic};
use crate::storage::{DynStorage, FEED_PAGE};
use crate::telemetry::Metrics;
use futures::StreamExt;
use lru::LruCache;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Mutex, broadcast};
use tokio::task::JoinHandle;

/// Longest wait for a channel subscription to become active.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Deliveries buffered per topic; a stream further behind catches up
    /// from storage.
    pub buffer: usize,
    /// How often each topic sweeps storage for events the channel lost.
    pub sweep_interval: Duration,
    /// How long an event may take to arrive through the channel before the
    /// sweep delivers it from storage instead.
    pub grace: Duration,
    /// Records whose last delivered version each topic remembers.
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

/// An event shared by every stream that sends it unchanged. The gRPC
/// adapter keeps its protobuf encoding in `wire`, so an event is converted
/// and encoded once per topic, not once per subscriber.
#[derive(Debug, Clone)]
pub struct SharedEvent {
    event: Arc<Event>,
    wire: Arc<std::sync::OnceLock<bytes::Bytes>>,
}

impl SharedEvent {
    pub fn new(event: Event) -> Self {
        SharedEvent {
            event: Arc::new(event),
            wire: Arc::default(),
        }
    }

    /// The event's protobuf encoding: `encode` runs for the first caller
    /// only; everyone else gets the same bytes.
    pub fn encoded(&self, encode: impl FnOnce(&Event) -> bytes::Bytes) -> bytes::Bytes {
        self.wire.get_or_init(|| encode(&self.event)).clone()
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// The last version handled of each of the most recently seen records, at
/// most `cap` records (the least recently seen is forgotten first), and with
/// it a payload `P` of the caller's (the hub keeps the version's seq, where
/// a gap fill starts reading; a stream keeps nothing, `()`, which takes no
/// room). It allocates as it fills: an `LruCache::new(cap)` reserves room
/// for `cap` entries up front, which, multiplied by thousands of idle
/// streams, was most of their memory.
pub struct LastVersions<P = ()> {
    map: LruCache<RecordRef, (u64, P)>,
    cap: usize,
}

impl<P: Copy> LastVersions<P> {
    pub fn new(cap: usize) -> Self {
        LastVersions {
            map: LruCache::unbounded(),
            cap: cap.max(1),
        }
    }

    /// The last version of `record`, marking it recently seen.
    pub fn get(&mut self, record: &RecordRef) -> Option<u64> {
        self.get_with(record).map(|(version, _)| version)
    }

    /// The last version of `record` and its payload, marking it recently seen.
    pub fn get_with(&mut self, record: &RecordRef) -> Option<(u64, P)> {
        self.map.get(record).copied()
    }

    /// The last version of `record`, leaving the order alone.
    pub fn peek(&self, record: &RecordRef) -> Option<u64> {
        self.map.peek(record).map(|(version, _)| *version)
    }

    /// Records `version` of `record`, with `payload`, if it is newer than
    /// the last one; returns whether it was. In place when the record is
    /// known (the usual case on a busy topic): no copy of its key.
    pub fn advance_with(&mut self, record: &RecordRef, version: u64, payload: P) -> bool {
        match self.map.get_mut(record) {
            Some((last, _)) if *last >= version => false,
            Some(last) => {
                *last = (version, payload);
                true
            }
            None => {
                self.map.put(record.clone(), (version, payload));
                if self.map.len() > self.cap {
                    self.map.pop_lru();
                }
                true
            }
        }
    }
}

impl LastVersions {
    /// Records `version` of `record` if it is newer than the last one;
    /// returns whether it was.
    pub fn advance(&mut self, record: &RecordRef, version: u64) -> bool {
        self.advance_with(record, version, ())
    }
}

pub struct Hub {
    storage: DynStorage,
    channel: DynChannel,
    config: HubConfig,
    metrics: Arc<Metrics>,
    topics: Mutex<HashMap<Topic, Weak<TopicFeed>>>,
}

/// A live channel subscription for one topic, shared by its streams and
/// stopped when the last of them drops it.
struct TopicFeed {
    /// Never read: new streams `resubscribe` from it at the current tail.
    template: std::sync::Mutex<broadcast::Receiver<Delivery>>,
    task: JoinHandle<()>,
}

impl Drop for TopicFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream's view of a topic feed.
pub struct HubSubscription {
    pub rx: broadcast::Receiver<Delivery>,
    _feed: Arc<TopicFeed>,
}

impl Hub {
    pub fn new(storage: DynStorage, channel: DynChannel, config: HubConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Hub {
            storage,
            channel,
            config,
            metrics,
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// Subscribes to a topic. When this returns, every event appended from
    /// now on will be delivered (or the subscription closes, telling the
    /// stream to catch up). Fails with `Unavailable` when the channel is down.
    pub async fn subscribe(&self, topic: &Topic) -> Result<HubSubscription> {
        // Held across the channel subscribe so concurrent streams of a new
        // topic share one feed, and none returns before it is active.
        let mut topics = self.topics.lock().await;
        if let Some(feed) = topics.get(topic).and_then(Weak::upgrade) {
            if !feed.task.is_finished() {
                let rx = feed.template.lock().unwrap_or_else(|p| p.into_inner()).resubscribe();
                return Ok(HubSubscription { rx, _feed: feed });
            }
        }
        topics.retain(|_, f| f.strong_count() > 0);

        let since = self.storage.head().await?;
        // Bounded: the topics lock is held here, and a channel that hangs
        // must not hold up every other stream.
        let sub = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.channel.subscribe(topic))
            .await
            .unwrap_or_else(|_| Err(Error::unavailable(format!("no answer within {SUBSCRIBE_TIMEOUT:?}"))))
            .map_err(|e| match e {
                Error::Unavailable(_) => e,
                other => Error::unavailable(format!("channel {}: {other}", self.channel.name())),
            })?;
        let (tx, template) = broadcast::channel(self.config.buffer);
        let rx = template.resubscribe();
        let state = FeedState {
            topic: topic.clone(),
            storage: self.storage.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            since,
            watermark: since,
            last_version: LastVersions::new(self.config.remembered_records),
            tx,
        };
        let task = tokio::spawn(state.run(sub));
        let feed = Arc::new(TopicFeed {
            template: std::sync::Mutex::new(template),
            task,
        });
        topics.insert(topic.clone(), Arc::downgrade(&feed));
        Ok(HubSubscription { rx, _feed: feed })
    }

    /// Topics with at least one live stream on this instance.
    pub async fn active_topics(&self) -> usize {
        self.topics.lock().await.values().filter(|f| f.strong_count() > 0).count()
    }
}

struct FeedState {
    topic: Topic,
    storage: DynStorage,
    config: HubConfig,
    metrics: Arc<Metrics>,
    /// Storage head when the channel subscription started: anything at or
    /// below it is history that streams replay themselves.
    since: u64,
    watermark: u64,
    /// Per record, the last version sent and its seq.
    last_version: LastVersions<u64>,
    tx: broadcast::Sender<Delivery>,
}

impl FeedState {
    async fn run(mut self, mut sub: crate::channel::Subscription) {
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = sub.next() => match item {
                    Some(Ok(event)) => self.on_event(event).await,
                    Some(Err(e)) => {
                        tracing::warn!(topic = %self.topic, error = %e, "channel subscription broke; streams will catch up from storage");
                        break;
                    }
                    None => {
                        tracing::warn!(topic = %self.topic, "channel subscription ended; streams will catch up from storage");
                        break;
                    }
                },
                _ = sweep.tick() => {
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(topic = %self.topic, error = %e, "storage sweep failed");
                    }
                }
            }
        }
        // Dropping `tx` closes every stream's receiver.
    }

    /// Passes an event on in per-record version order, filling gaps from
    /// storage and dropping duplicates.
    async fn on_event(&mut self, event: Event) {
        if event.seq <= self.since || !self.topic.matches(&event.record) {
            return;
        }
        let last = self.last_version.get_with(&event.record);
        match last.map(|(version, _)| version) {
            Some(l) if event.version <= l => {
                self.metrics.hub_duplicates.inc();
                return;
            }
            Some(l) if event.version == l + 1 => {}
            None if event.version == 1 => {}
            _ => self.fill_gap(&event, last).await,
        }
        self.emit(event);
    }

    /// Sends the events of `event`'s record between the last one sent
    /// (`last`: its version and seq) and it, read from storage after that
    /// last one (or after `since`), page by page: a storage caps what one
    /// read returns, and a long gap must still be filled whole.
    async fn fill_gap(&mut self, event: &Event, last: Option<(u64, u64)>) {
        let from_version = last.map_or(0, |(version, _)| version);
        let mut query = FeedQuery {
            topic: Topic {
                domain: Some(event.record.domain.clone()),
                ty: Some(event.record.ty.clone()),
            },
            key: Some(event.record.key.clone()),
            after_seq: last.map_or(self.since, |(_, seq)| seq.max(self.since)),
            from_time: None,
            limit: FEED_PAGE,
        };
        loop {
            let page = match self.storage.feed(&query).await {
                Ok(page) => page,
                // Delivering out of order beats not delivering: streams still
                // get the event, and the gap is logged.
                Err(e) => {
                    tracing::warn!(record = %event.record, error = %e, "could not fill an event gap from storage");
                    return;
                }
            };
            let full = page.len() == FEED_PAGE;
            for missed in page {
                // A record's versions grow with its seqs: past the event's
                // own version, the gap is behind us.
                if missed.version >= event.version {
                    return;
                }
                query.after_seq = missed.seq;
                if missed.version > from_version {
                    self.metrics.hub_gap_fills.inc();
                    self.emit(missed);
                }
            }
            if !full {
                return;
            }
        }
    }

    fn emit(&mut self, event: Event) {
        self.last_version.advance_with(&event.record, event.version, event.seq);
        // An error only means no stream is subscribed right now.
        let _ = self.tx.send(Delivery {
            event: SharedEvent::new(event),
            watermark: self.watermark,
        });
    }

    /// Delivers events the channel has not brought within `grace`, and
    /// advances the watermark past every event known to be delivered.
    async fn sweep(&mut self) -> Result<()> {
        let grace = self.config.grace.as_nanos() as i64;
        loop {
            let page = self
                .storage
                .feed(&FeedQuery {
                    topic: self.topic.clone(),
                    key: None,
                    after_seq: self.watermark,
                    from_time: None,
                    limit: FEED_PAGE,
                })
                .await?;
            let full = page.len() == FEED_PAGE;
            let now = crate::model::now_nanos();
            for event in page {
                let delivered = self.last_version.peek(&event.record).is_some_and(|v| v >= event.version);
                if !delivered {
                    if now - event.time < grace {
                        // It may still be on its way through the channel.
                        return Ok(());
                    }
                    self.metrics.hub_sweep_deliveries.inc();
                    let seq = event.seq;
                    self.on_event(event).await;
                    self.watermark = seq;
                } else {
                    self.watermark = event.seq;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

//! The hub's one feed: a single channel subscription to every topic, turned
//! into a trustworthy sequence of deliveries and handed to the rings of the
//! topics that local streams watch.
//!
//! Repairs happen here, once per event whatever the number of topics:
//! - per record, events go out in version order exactly once: a duplicate is
//!   dropped, and a gap (an event that arrives before its predecessor, across
//!   instances whose broadcasts raced) is filled from storage first;
//! - every `sweep_interval` it reads the storage feed past its watermark and
//!   sends any event older than `grace` that the channel never brought (a
//!   publish that failed after the write was committed);
//! - each delivery carries the watermark: every event with a seq at or below
//!   it was handed to the rings before. Streams use it as a resume point.
//!
//! A topic nobody watches has no ring, and a watched one costs a map entry
//! and an empty ring (one per distinct filter of its streams): no task, no
//! timer, no storage read of its own.

use super::filters::SharedFilter;
use super::last_versions::LastVersions;
use super::ring::{Receiver, Ring};
use super::{Delivery, HubConfig, SharedEvent};
use crate::model::{Event, FeedQuery, Result, Topic};
use crate::storage::{DynStorage, FEED_PAGE};
use crate::telemetry::Metrics;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The rings of the watched topics, shared by the feed task (which pushes)
/// and the hub (which adds rings for new streams). A topic has a ring for
/// its unfiltered streams and one per distinct filter of its filtered ones.
pub(super) struct Rings {
    buffer: usize,
    state: Mutex<RingsState>,
    /// `hub_topics`: watched topics, i.e. entries in `topics`.
    gauge: prometheus::IntGauge,
}

struct RingsState {
    /// Set when the feed ended: a ring asked for afterwards is born closed,
    /// so its stream goes back to the hub for a live feed.
    ended: bool,
    topics: HashMap<Topic, TopicRings>,
}

/// A watched topic's rings. Filters are interned (`filters`), so one
/// filter has one ring here however many streams use it.
#[derive(Default)]
struct TopicRings {
    all: Weak<Ring>,
    filtered: Vec<(Arc<SharedFilter>, Weak<Ring>)>,
}

impl TopicRings {
    fn ring(&self, filter: Option<&Arc<SharedFilter>>) -> Option<Arc<Ring>> {
        match filter {
            None => self.all.upgrade(),
            Some(f) => self.filtered.iter().find(|(g, _)| Arc::ptr_eq(f, g)).and_then(|(_, r)| r.upgrade()),
        }
    }

    fn set(&mut self, filter: Option<&Arc<SharedFilter>>, ring: &Arc<Ring>) {
        match filter {
            None => self.all = Arc::downgrade(ring),
            Some(f) => {
                self.filtered.retain(|(g, r)| r.strong_count() > 0 && !Arc::ptr_eq(f, g));
                self.filtered.push((f.clone(), Arc::downgrade(ring)));
            }
        }
    }

    /// Drops the rings nobody holds; whether none is left.
    fn prune(&mut self) -> bool {
        self.filtered.retain(|(_, r)| r.strong_count() > 0);
        self.all.strong_count() == 0 && self.filtered.is_empty()
    }
}

impl Rings {
    pub(super) fn new(buffer: usize, gauge: prometheus::IntGauge) -> Arc<Rings> {
        gauge.set(0);
        Arc::new(Rings {
            buffer,
            state: Mutex::new(RingsState {
                ended: false,
                topics: HashMap::new(),
            }),
            gauge,
        })
    }

    fn lock(&self) -> MutexGuard<'_, RingsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver on the ring of `topic` and `filter` (made when there is
    /// none), and the ring, which must be held as long as the receiver is
    /// used.
    pub(super) fn subscribe(&self, topic: &Topic, filter: Option<&Arc<SharedFilter>>) -> (Arc<Ring>, Receiver) {
        let mut state = self.lock();
        let found = state.topics.get(topic).and_then(|t| t.ring(filter));
        let ring = match found {
            Some(ring) => ring,
            None => {
                let ring = Ring::new(self.buffer);
                if state.ended {
                    ring.close();
                } else {
                    // Entries of topics nobody watches any more go when the
                    // map would otherwise grow.
                    if state.topics.len() == state.topics.capacity() {
                        state.topics.retain(|_, t| !t.prune());
                    }
                    state.topics.entry(topic.clone()).or_default().set(filter, &ring);
                    self.gauge.set(state.topics.len() as i64);
                }
                ring
            }
        };
        let rx = ring.subscribe();
        (ring, rx)
    }

    /// Forgets `topic`'s rings that nobody holds (their last stream left).
    pub(super) fn release(&self, topic: &Topic) {
        let mut state = self.lock();
        if state.topics.get_mut(topic).is_some_and(TopicRings::prune) {
            state.topics.remove(topic);
            self.gauge.set(state.topics.len() as i64);
            if state.topics.capacity() > 64 && state.topics.len() < state.topics.capacity() / 4 {
                state.topics.shrink_to_fit();
            }
        }
    }

    /// Topics with a live ring (a ring's entry goes with its last stream).
    pub(super) fn live(&self) -> usize {
        self.lock().topics.len()
    }

    /// Hands a delivery to the rings of every watched topic it belongs to
    /// (its domain and type, either one as `*`, or both): to the unfiltered
    /// ring, and to each filtered ring whose filter admits the event (one
    /// evaluation per filter, remembered by the filter for its other
    /// topics). Under the lock, so a ring's last stream cannot leave while
    /// it is being pushed to (a push holding it would keep `release` from
    /// forgetting it).
    fn push(&self, delivery: Delivery) {
        let state = self.lock();
        if state.topics.is_empty() {
            return;
        }
        let record = &delivery.event.record;
        let (d, t) = (Some(record.domain.clone()), Some(record.ty.clone()));
        for (domain, ty) in [(d.clone(), t.clone()), (d, None), (None, t), (None, None)] {
            let Some(rings) = state.topics.get(&Topic { domain, ty }) else { continue };
            if let Some(ring) = rings.all.upgrade() {
                ring.push(delivery.clone());
            }
            for (filter, ring) in &rings.filtered {
                if let Some(ring) = ring.upgrade()
                    && filter.admits(&delivery.event)
                {
                    ring.push(delivery.clone());
                }
            }
        }
    }

    /// Closes every ring, for good: streams catch up from storage and come
    /// back for a new feed.
    fn end(&self) {
        let rings: Vec<Arc<Ring>> = {
            let mut state = self.lock();
            state.ended = true;
            self.gauge.set(0);
            state
                .topics
                .drain()
                .flat_map(|(_, t)| std::iter::once(t.all).chain(t.filtered.into_iter().map(|(_, r)| r)))
                .filter_map(|r| r.upgrade())
                .collect()
        };
        for ring in rings {
            ring.close();
        }
    }
}

pub(super) struct FeedState {
    pub(super) rings: Arc<Rings>,
    pub(super) storage: DynStorage,
    pub(super) config: HubConfig,
    pub(super) metrics: Arc<Metrics>,
    /// Storage head when the channel subscription started: anything at or
    /// below it is history that streams replay themselves.
    pub(super) since: u64,
    pub(super) watermark: u64,
    /// Per record, the last version sent and its seq.
    pub(super) last_version: LastVersions<u64>,
}

impl FeedState {
    pub(super) async fn run(mut self, mut sub: crate::channel::Subscription) {
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = sub.next() => match item {
                    Some(Ok(event)) => self.on_event(event).await,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "channel subscription broke; streams will catch up from storage");
                        break;
                    }
                    None => {
                        tracing::warn!("channel subscription ended; streams will catch up from storage");
                        break;
                    }
                },
                _ = sweep.tick() => {
                    self.metrics.hub_sweeps.inc();
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "storage sweep failed");
                    }
                }
            }
        }
        self.rings.end();
    }

    /// Passes an event on in per-record version order, filling gaps from
    /// storage and dropping duplicates.
    async fn on_event(&mut self, event: Event) {
        if event.seq <= self.since {
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
        self.rings.push(Delivery {
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
                    topic: Topic::ALL,
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

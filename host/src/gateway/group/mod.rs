//! Consumer groups: a stream (`StreamOpts.group`) whose events are shared
//! out among the group's members instead of copied to each, acknowledged by
//! id (`EventService.Ack`), delivered again when unacknowledged past the
//! group's ack timeout, and parked after `max_deliveries` deliveries
//! (`EventService.Parked` lists and replays them).
//!
//! No leader: a group is one small versioned document in the storage
//! provider (`state::GroupState`, stored by `Storage::group_store`, a
//! compare-and-set on its version), so members on any instance share it and
//! it survives restarts. Each member's stream claims its own work: it reads
//! the document and the feed after the group's position, lets
//! `GroupState::claim` pick (due events first, then waiting ones, one per
//! record at a time), and stores the result expecting the version it read;
//! on a conflict it reads again. Only a stored claim is delivered, so two
//! members never both hold an event within one deadline. Acks, nacks, a
//! member leaving and replays are such writes too.
//!
//! A member learns that there may be work from the hub (a live event of its
//! topic), from acks (one member woken: an ack frees one record's next
//! event) and departures (all woken) on this instance (`Wakers`), and
//! otherwise by polling (`POLL`, or the next deadline if sooner): an ack
//! made on another instance frees a record within a poll. Members and
//! calls of one instance change a group's document in turns (`Local`), so
//! compare-and-set conflicts come only from other instances.
//!
//! Delivery is at least once: a delivered event stays in flight until
//! acknowledged; a member that dies (or whose instance does) loses only
//! time, its events go to another member at their deadline (at once when
//! its stream ends cleanly). docs/guarantees.md states it for clients.

pub mod state;

use super::{Gateway, methods};
use crate::auth::{Metadata, PolicyInput};
use crate::hub::{SharedEvent, SharedFilter};
use crate::model::{Error, Event, FeedQuery, Result, Topic, validate_name};
use crate::storage::{DynStorage, FEED_PAGE};
use state::{Candidate, GroupSpec, GroupState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

pub use super::request::{AckRequest, ParkedRequest, StreamRequest};

/// Longest a member waits before it looks at the group again by itself.
const POLL: Duration = Duration::from_millis(500);
/// Events of the subscription a claim looks at past the group's position:
/// the most that can be in flight or acknowledged ahead of the oldest one
/// still open.
const WINDOW: usize = 2048;
/// Bounds of the request fields.
const MAX_GROUP_NAME: usize = 256;
const DEFAULT_ACK_TIMEOUT_MS: i64 = 30_000;
const MAX_ACK_TIMEOUT_MS: i64 = 3_600_000;
const DEFAULT_MAX_DELIVERIES: i64 = 5;
const MAX_MAX_DELIVERIES: i64 = 1000;
const DEFAULT_MAX_IN_FLIGHT: i64 = 32;
const MAX_MAX_IN_FLIGHT: i64 = 1024;
/// Ids one `Ack` may name.
const MAX_ACK_IDS: usize = 4096;
/// Conflicting writes a change retries before it reports the contention.
const MAX_RETRIES: usize = 64;

/// What this instance's members of one group share: a wake-up, so an ack
/// or a departure here wakes them at once, and a turn, so they change the
/// group's document one at a time (their compare-and-set writes would
/// otherwise conflict with each other; only other instances' writes can).
#[derive(Default)]
pub struct Local {
    notify: Notify,
    turn: tokio::sync::Mutex<()>,
}

/// `Local` per group, while some member or call of this instance uses it.
#[derive(Default)]
pub struct Wakers(Mutex<HashMap<String, Weak<Local>>>);

impl Wakers {
    fn local(&self, group: &str) -> Arc<Local> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(group).and_then(Weak::upgrade) {
            return l;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(Local::default());
        map.insert(group.to_owned(), Arc::downgrade(&l));
        l
    }

    /// Wakes every waiting member (`all`), or one: an ack frees one
    /// record's next event, which one member takes (waking all of them
    /// would cost every member a claim per ack).
    fn wake(&self, group: &str, all: bool) {
        let l = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(group).and_then(Weak::upgrade);
        if let Some(l) = l {
            if all {
                l.notify.notify_waiters();
            } else {
                l.notify.notify_one();
            }
        }
    }
}

/// The stored name of a group: its domain, type and name (a group is named
/// within its domain and type, so tenants never share one by accident).
fn stored_name(domain: &str, ty: &str, group: &str) -> String {
    serde_json::json!([domain, ty, group]).to_string()
}

fn now_ms() -> i64 {
    crate::model::now_nanos() / 1_000_000
}

fn check_group(group: &str) -> Result<()> {
    validate_name("group", group)?;
    if group.len() > MAX_GROUP_NAME {
        return Err(Error::invalid("group", format!("longer than {MAX_GROUP_NAME} bytes")));
    }
    Ok(())
}

fn bounded(field: &str, v: i64, default: i64, max: i64) -> Result<i64> {
    match v {
        0 => Ok(default),
        v if (1..=max).contains(&v) => Ok(v),
        v => Err(Error::invalid(field, format!("must be between 1 and {max} (0: {default}), got {v}"))),
    }
}

/// The group's document and the version it was read at.
struct Loaded {
    version: u64,
    state: GroupState,
}

async fn load(storage: &DynStorage, name: &str) -> Result<Option<Loaded>> {
    let Some(doc) = storage.group_load(name).await? else { return Ok(None) };
    let state = serde_json::from_slice(&doc.bytes)
        .map_err(|e| Error::internal(format!("consumer group {name}: unreadable document: {e}")))?;
    Ok(Some(Loaded { version: doc.version, state }))
}

/// Applies `change` to the stored group until a write wins (or nothing
/// changes); `None` when there is no such group.
async fn update<T>(storage: &DynStorage, name: &str, mut change: impl FnMut(&mut GroupState) -> (T, bool)) -> Result<Option<T>> {
    for _ in 0..MAX_RETRIES {
        let Some(Loaded { version, mut state }) = load(storage, name).await? else { return Ok(None) };
        let (out, changed) = change(&mut state);
        if !changed {
            return Ok(Some(out));
        }
        let bytes = serde_json::to_vec(&state).map_err(Error::internal)?;
        match storage.group_store(name, version, &bytes).await {
            Ok(_) => return Ok(Some(out)),
            Err(Error::VersionConflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::unavailable(format!("consumer group {name}: too many concurrent changes; retry")))
}

impl GroupSpec {
    /// The stream request a group's spec stands for: what `Ack` and
    /// `Parked` are authorized as.
    fn as_stream(&self, group: &str) -> StreamRequest {
        StreamRequest {
            domain: self.domain.clone(),
            ty: self.ty.clone(),
            key: self.key.clone(),
            query_string: self.query_string.clone(),
            claims_query: self.claims_query.clone(),
            kinds: self.kinds.clone(),
            group: group.to_owned(),
            ..Default::default()
        }
    }

    /// The subscription part, for comparing a joining member's request.
    fn subscription(&self) -> (&str, &str, &str, &str, &str) {
        (&self.domain, &self.ty, &self.key, &self.query_string, &self.claims_query)
    }
}

impl Gateway {
    /// A member's stream of a consumer group, after `stream` admitted it
    /// and checked the topic, key and filter.
    pub(super) async fn group_stream(
        self: &Arc<Self>,
        input: PolicyInput,
        slot: super::limits::StreamSlot,
        req: StreamRequest,
        topic: Topic,
        filter: Option<Arc<SharedFilter>>,
    ) -> Result<super::EventStream> {
        check_group(&req.group)?;
        let member = if req.member.is_empty() { uuid::Uuid::now_v7().to_string() } else { req.member.clone() };
        validate_name("member", &member)?;
        if member.len() > MAX_GROUP_NAME {
            return Err(Error::invalid("member", format!("longer than {MAX_GROUP_NAME} bytes")));
        }
        if !req.after_event_id.is_empty() || req.from_time != 0 {
            return Err(Error::invalid(
                "group",
                "a group resumes at its stored position: after_event_id and from_time do not apply \
                 (after_sequence sets where a new group starts)",
            ));
        }
        let ack_timeout_ms = bounded("ack_timeout_ms", req.ack_timeout_ms, DEFAULT_ACK_TIMEOUT_MS, MAX_ACK_TIMEOUT_MS)?;
        let max_deliveries = bounded("max_deliveries", req.max_deliveries, DEFAULT_MAX_DELIVERIES, MAX_MAX_DELIVERIES)?;
        let max_in_flight = bounded("max_in_flight", req.max_in_flight, DEFAULT_MAX_IN_FLIGHT, MAX_MAX_IN_FLIGHT)?;
        let mut kinds = req.kinds.iter().map(|k| k.trim().to_ascii_uppercase()).collect::<Vec<_>>();
        kinds.sort();
        kinds.dedup();
        let spec = GroupSpec {
            domain: req.domain.clone(),
            ty: req.ty.clone(),
            key: req.key.clone(),
            query_string: req.query_string.clone(),
            claims_query: req.claims_query.clone(),
            kinds,
            ack_timeout_ms: ack_timeout_ms as u64,
            max_deliveries: max_deliveries as u32,
        };
        let name = stored_name(&req.domain, &req.ty, &req.group);
        let storage = self.storage.clone();
        // Subscribed before the group is read, so no wake-up is missed.
        let subscription = self.hub.subscribe(&topic, filter.as_ref()).await;
        let spec = match load(&storage, &name).await? {
            Some(found) => found.state.spec,
            None => {
                let head = storage.head().await?;
                let start = match req.after_sequence {
                    None => head,
                    Some(n) if n >= 0 && n as u64 <= head => n as u64,
                    Some(n) => {
                        return Err(Error::invalid(
                            "after_sequence",
                            format!("must be between 0 and the store's head ({head}), got {n}"),
                        ));
                    }
                };
                let bytes = serde_json::to_vec(&GroupState::new(spec.clone(), start)).map_err(Error::internal)?;
                match storage.group_store(&name, 0, &bytes).await {
                    Ok(_) => spec,
                    // Another member created it first: join that one.
                    Err(Error::VersionConflict { .. }) => {
                        load(&storage, &name).await?.ok_or_else(|| Error::unavailable("consumer group vanished"))?.state.spec
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if spec.subscription() != (&req.domain[..], &req.ty[..], &req.key[..], &req.query_string[..], &req.claims_query[..])
            || (req.ack_timeout_ms != 0 && req.ack_timeout_ms as u64 != spec.ack_timeout_ms)
            || (req.max_deliveries != 0 && req.max_deliveries as u32 != spec.max_deliveries)
            || !same_kinds(&req.kinds, &spec.kinds)
        {
            return Err(Error::invalid(
                "group",
                format!(
                    "group {:?} of {}/{} was created with other options ({}); join it with the same \
                     key, query_string, claims_query, kinds, ack_timeout_ms and max_deliveries, or name another group",
                    req.group,
                    req.domain,
                    req.ty,
                    serde_json::to_string(&spec).unwrap_or_default()
                ),
            ));
        }

        let (tx, rx) = mpsc::channel(self.limits.stream_buffer.max(max_in_flight as usize));
        let member = Member {
            gateway: self.clone(),
            local: self.groups.local(&name),
            input,
            name: name.clone(),
            member: member.clone(),
            topic,
            key: (!spec.key.is_empty()).then(|| spec.key.clone()),
            filter,
            room: max_in_flight as usize,
            tx,
            _slot: slot,
            _leave: Leave { storage, wakers: Arc::downgrade(&self.groups), name, member },
        };
        Ok(Box::pin(super::stream::Driven::new(Box::pin(member.run(subscription)), rx)))
    }

    /// Acknowledges (or, with `nack`, returns) events delivered by a group.
    /// Authorized as the group's stream: whoever may read it may ack it.
    pub async fn ack(&self, metadata: Metadata, req: AckRequest) -> Result<state::Acked> {
        let (name, spec) = self.admit_group(metadata, &req.domain, &req.ty, &req.group, &req).await?;
        if req.event_ids.is_empty() {
            return Err(Error::invalid("event_ids", "name at least one event id"));
        }
        if req.event_ids.len() > MAX_ACK_IDS {
            return Err(Error::invalid("event_ids", format!("at most {MAX_ACK_IDS} ids per call, got {}", req.event_ids.len())));
        }
        if let Some(bad) = req.event_ids.iter().find(|id| id.is_empty() || id.len() > 256) {
            return Err(Error::invalid("event_ids", format!("{bad:?} is not an event id")));
        }
        let _ = spec;
        let now = now_ms();
        let local = self.groups.local(&name);
        let turn = local.turn.lock().await;
        let out = update(&self.storage, &name, |s| {
            let out = s.ack(&req.event_ids, req.nack, now);
            let changed = !out.applied.is_empty();
            (out, changed)
        })
        .await?
        .ok_or_else(|| Error::NotFound(format!("consumer group {}", req.group)))?;
        drop(turn);
        self.groups.wake(&name, req.nack);
        Ok(out)
    }

    /// The group's parked events (after putting those the request names
    /// back into delivery), with the ids it replayed.
    pub async fn parked(&self, metadata: Metadata, req: ParkedRequest) -> Result<(Vec<(Event, u32)>, Vec<String>)> {
        let (name, _) = self.admit_group(metadata, &req.domain, &req.ty, &req.group, &req).await?;
        let mut replayed = vec![];
        if req.replay_all || !req.replay_ids.is_empty() {
            let ids = if req.replay_all { vec![] } else { req.replay_ids.clone() };
            // The records of the events to replay, read before the write.
            let listed = load(&self.storage, &name).await?.map(|l| l.state.parked).unwrap_or_default();
            let mut records = HashMap::new();
            for p in listed.values().filter(|p| ids.is_empty() || ids.contains(&p.id)) {
                if let Some(e) = self.storage.get_event(&p.id).await? {
                    records.insert(p.id.clone(), e.record.to_string());
                }
            }
            let now = now_ms();
            let local = self.groups.local(&name);
            let _turn = local.turn.lock().await;
            replayed = update(&self.storage, &name, |s| {
                let out = s.replay_parked(&ids, now, |id| records.get(id).cloned());
                let changed = !out.is_empty();
                (out, changed)
            })
            .await?
            .unwrap_or_default();
            self.groups.wake(&name, true);
        }
        let parked = load(&self.storage, &name).await?.map(|l| l.state.parked).unwrap_or_default();
        let mut out = Vec::with_capacity(parked.len());
        for p in parked.values() {
            if let Some(e) = self.storage.get_event(&p.id).await? {
                out.push((e, p.attempts));
            }
        }
        Ok((out, replayed))
    }

    /// Authenticates a call on a group and authorizes it as the group's
    /// stream. An unknown group is `NOT_FOUND` only after the caller was
    /// authorized for a stream of the named domain and type.
    async fn admit_group(
        &self,
        metadata: Metadata,
        domain: &str,
        ty: &str,
        group: &str,
        body: &impl serde::Serialize,
    ) -> Result<(String, GroupSpec)> {
        let caller = self.authenticate(methods::EVENT_STREAM, metadata, body, true).await?;
        for (field, v) in [("domain", domain), ("type", ty)] {
            if v != "*" {
                validate_name(field, v)?;
            }
        }
        check_group(group)?;
        let name = stored_name(domain, ty, group);
        let found = load(&self.storage, &name).await?;
        let stream = match &found {
            Some(l) => l.state.spec.as_stream(group),
            None => StreamRequest { domain: domain.to_owned(), ty: ty.to_owned(), group: group.to_owned(), ..Default::default() },
        };
        let mut caller = caller;
        if self.auth.inspects_bodies() {
            caller.input.body = Arc::new(serde_json::to_value(&stream).map_err(Error::internal)?);
        }
        self.authorize(caller, Some(domain)).await?;
        let spec = found.ok_or_else(|| Error::NotFound(format!("consumer group {group} of {domain}/{ty}")))?.state.spec;
        Ok((name, spec))
    }
}

fn same_kinds(asked: &[String], stored: &[String]) -> bool {
    let mut asked = asked.iter().map(|k| k.trim().to_ascii_uppercase()).collect::<Vec<_>>();
    asked.sort();
    asked.dedup();
    asked == stored
}

/// Hands a member's events back when its stream ends, however it ends
/// (the stream future is dropped when the client goes away).
struct Leave {
    storage: DynStorage,
    wakers: Weak<Wakers>,
    name: String,
    member: String,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (storage, wakers, name, member) =
            (self.storage.clone(), self.wakers.clone(), std::mem::take(&mut self.name), std::mem::take(&mut self.member));
        rt.spawn(async move {
            let now = now_ms();
            let local = wakers.upgrade().map(|w| w.local(&name));
            let turn = match &local {
                Some(l) => Some(l.turn.lock().await),
                None => None,
            };
            let released = update(&storage, &name, |s| ((), s.release(&member, now))).await;
            drop(turn);
            match released {
                Ok(_) => {
                    if let Some(w) = wakers.upgrade() {
                        w.wake(&name, true);
                    }
                }
                // Its events come back at their deadlines instead.
                Err(e) => tracing::debug!(group = %name, member, error = %e, "consumer group: could not hand back a member's events"),
            }
        });
    }
}

/// One member's stream: claims work and sends it.
struct Member {
    gateway: Arc<Gateway>,
    local: Arc<Local>,
    input: PolicyInput,
    name: String,
    member: String,
    topic: Topic,
    key: Option<String>,
    filter: Option<Arc<SharedFilter>>,
    room: usize,
    tx: mpsc::Sender<Result<SharedEvent>>,
    _slot: super::limits::StreamSlot,
    _leave: Leave,
}

impl Member {
    async fn run(self, first: Result<crate::hub::HubSubscription>) {
        let gateway = self.gateway.clone();
        gateway.metrics.live_streams.inc();
        let _guard = super::stream::LiveStreamGuard(gateway.clone());
        let tx = self.tx.clone();
        let expiry = super::stream::token_expiry(self.input.claims.get("exp").and_then(|v| v.as_f64()));
        let shutdown = gateway.shutdown.clone();
        let failed = tokio::select! {
            e = self.serve(first) => e,
            _ = tx.closed() => return,
            _ = expiry => Error::Unauthenticated {
                reason: crate::model::TokenRefusal::Expired,
                message: "the token has expired; reconnect with a fresh token to resume".into(),
            },
            _ = shutdown.cancelled() => Error::unavailable("the gateway is shutting down; reconnect to resume"),
        };
        let _ = tx.send(Err(failed)).await;
    }

    /// Claims and sends until something fails.
    async fn serve(&self, first: Result<crate::hub::HubSubscription>) -> Error {
        let mut sub = first.ok();
        loop {
            let notified = self.local.notify.notified();
            let next = match self.claim_and_send().await {
                Ok(next) => next,
                Err(e) => return e,
            };
            let Some(wait) = next else { continue };
            if sub.is_none() {
                sub = self.gateway.hub.subscribe(&self.topic, self.filter.as_ref()).await.ok();
            }
            let live = async {
                match sub.as_mut() {
                    Some(s) => s.recv().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                alive = live => if !alive { sub = None },
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One claim: stores what `GroupState::claim` picks and sends it.
    /// `None`: claim again at once (it filled this member's room); else how
    /// long to wait at most.
    async fn claim_and_send(&self) -> Result<Option<Duration>> {
        let storage = &self.gateway.storage;
        for _ in 0..MAX_RETRIES {
            let turn = self.local.turn.lock().await;
            let Some(Loaded { version, mut state }) = load(storage, &self.name).await? else {
                return Err(Error::NotFound("consumer group (it was removed)".into()));
            };
            let room = self.room.saturating_sub(state.held_by(&self.member));
            let (window, scanned_to) = if room > 0 { self.window(&state, room).await? } else { (vec![], state.position) };
            let candidates: Vec<Candidate> =
                window.iter().map(|e| Candidate { seq: e.seq, id: e.id.clone(), record: e.record.to_string() }).collect();
            let now = now_ms();
            let claimed = state.claim(&self.member, room, now, &candidates, scanned_to);
            if claimed.changed {
                let bytes = serde_json::to_vec(&state).map_err(Error::internal)?;
                match storage.group_store(&self.name, version, &bytes).await {
                    Ok(_) => {}
                    Err(Error::VersionConflict { .. }) => {
                        // A member on another instance won: a short
                        // random pause spreads the next attempts.
                        drop(turn);
                        tokio::time::sleep(Duration::from_millis(crate::model::now_nanos() as u64 % 5)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            drop(turn);
            for p in &claimed.parked {
                tracing::warn!(group = %self.name, event = %p.id, deliveries = p.attempts, "consumer group: event parked");
            }
            let full = claimed.assigned.len() >= room && room > 0;
            let mut by_seq: HashMap<u64, Event> = window.into_iter().map(|e| (e.seq, e)).collect();
            for a in claimed.assigned {
                let event = match by_seq.remove(&a.seq) {
                    Some(e) => e,
                    None => match storage.get_event(&a.id).await? {
                        Some(e) => e,
                        None => continue,
                    },
                };
                self.send(event).await?;
            }
            if full {
                return Ok(None);
            }
            let until_deadline = state.next_deadline(now).map(|d| Duration::from_millis((d - now) as u64));
            return Ok(Some(until_deadline.map_or(POLL, |d| d.min(POLL))));
        }
        Ok(Some(POLL))
    }

    /// Events of the subscription after the group's position, and the seq
    /// up to which the feed was read: every event of the subscription up
    /// to it is in the window. Pages are read until the window holds more
    /// events that are neither done nor in flight than `room` (a claim
    /// needs no more: the rest waits for a later one), or `WINDOW` events.
    async fn window(&self, state: &GroupState, room: usize) -> Result<(Vec<Event>, u64)> {
        let storage = &self.gateway.storage;
        // Read before the feed: every event up to it is visible to the feed.
        let head = storage.head().await?;
        // The first page fits what one claim takes; each next one is twice
        // as large, up to a feed page.
        let first = (2 * room + state.inflight.len() + state.done.len()).clamp(32, FEED_PAGE);
        let mut query =
            FeedQuery { topic: self.topic.clone(), key: self.key.clone(), after_seq: state.position, from_time: None, limit: first };
        let (mut out, mut open) = (vec![], 0);
        loop {
            let page = storage.feed(&query).await?;
            let full = page.len() == query.limit;
            query.limit = (query.limit * 2).min(FEED_PAGE);
            for e in page {
                query.after_seq = e.seq;
                if self.filter.as_ref().is_none_or(|f| f.admits(&e)) {
                    if !state.done.contains(&e.seq) && !state.inflight.contains_key(&e.seq) {
                        open += 1;
                    }
                    out.push(e);
                    if out.len() >= WINDOW {
                        return Ok((out, query.after_seq));
                    }
                }
            }
            if !full {
                return Ok((out, query.after_seq.max(head)));
            }
            if open > room {
                return Ok((out, query.after_seq));
            }
        }
    }

    /// Sends one event through the member's response authorization; one
    /// the policy withholds from this member is handed back (nack) for
    /// another member.
    async fn send(&self, event: Event) -> Result<()> {
        let id = event.id.clone();
        let Some(event) = self.gateway.authorize_event(&self.input, SharedEvent::new(event)).await? else {
            let now = now_ms();
            let _turn = self.local.turn.lock().await;
            update(&self.gateway.storage, &self.name, |s| {
                let out = s.ack(std::slice::from_ref(&id), true, now);
                ((), !out.applied.is_empty())
            })
            .await?;
            return Ok(());
        };
        self.tx.send(Ok(event)).await.map_err(|_| Error::unavailable("the member's stream ended"))
    }
}

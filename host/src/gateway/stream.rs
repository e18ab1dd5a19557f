//! `EventService.Stream`: history from a position, then live events, with no
//! gap and no duplicate at the switch.
//!
//! A stream keeps a cursor: a seq such that every matching event at or
//! below it has been handled. It runs one loop:
//! 1. subscribe to the hub's feed for its topic (from now on, new events
//!    arrive there);
//! 2. replay storage after the cursor until the end (storage promises that
//!    a visible seq implies all smaller seqs are visible, so the end of the
//!    replay is a correct cursor);
//! 3. pass on live deliveries, skipping anything at or below the cursor and
//!    any record version already sent, and advance the cursor to each
//!    delivery's watermark;
//! 4. when the feed closes (channel broke) or this stream falls out of its
//!    buffer (slow client), go back to 1. If the channel is down, the loop
//!    polls storage instead, so the stream degrades, never stops.
//!
//! `after_sequence` starts the cursor at a store position: the `sequence`
//! a state read (`Get`, `Search`) answered at. The read reflects every
//! event up to it and none after, and the stream delivers every event after
//! it, once: snapshot then watch, with no gap and no duplicate.
//!
//! A v0.5.0 stream (no start position) starts its cursor at the storage head,
//! read after subscribing and before the response begins: every write the
//! client makes after the stream opened is delivered.
//!
//! A filtered stream (`query_string`, `claims_query`, `kinds`) holds its
//! filter in the hub's interned form (`hub::SharedFilter`): it subscribes
//! to the ring of its topic and filter, which receives only the events the
//! filter admits, and asks the same filter about every replayed event. So
//! history and live events pass the same test, and streams sharing a
//! filter share its evaluations. The cursor still moves past the events
//! the filter refused, so they are not read again.

use super::{Gateway, StreamRequest, methods};
use crate::auth::{Metadata, PolicyInput};
use crate::hub::{HubSubscription, LastVersions, RecvError, SharedEvent, SharedFilter};
use crate::model::{Error, EventFilter, FeedQuery, Result, Topic, json, validate_name};
use crate::storage::FEED_PAGE;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A stream's events; an event sent unchanged is shared with the other
/// streams of its topic (see `SharedEvent`).
pub type EventStream = BoxStream<'static, Result<SharedEvent>>;

/// Records whose last sent version a stream remembers, to drop duplicates.
const SEEN_RECORDS: usize = 4096;
/// Poll interval while the channel is down.
const DEGRADED_POLL: Duration = Duration::from_millis(500);

impl Gateway {
    pub async fn stream(self: &Arc<Self>, metadata: Metadata, req: StreamRequest) -> Result<EventStream> {
        let caller = self.admit(methods::EVENT_STREAM, metadata, &req, true, &req.domain).await?;
        let slot = self.admission.caller_stream_slot(&caller.input.claims, &caller.input.metadata)?;
        let part = |field: &str, v: &str| -> Result<Option<String>> {
            if v == "*" {
                return Ok(None);
            }
            validate_name(field, v)?;
            Ok(Some(v.to_owned()))
        };
        let topic = Topic {
            domain: part("domain", &req.domain)?,
            ty: part("type", &req.ty)?,
        };
        let key = if req.key.is_empty() {
            None
        } else {
            validate_name("key", &req.key)?;
            Some(req.key.clone())
        };
        if req.from_time < 0 {
            return Err(Error::invalid("from_time", "must be >= 0 (Unix nanoseconds)"));
        }
        let filter = EventFilter::parse(&req.query_string, &req.claims_query, &req.kinds)?.map(|f| self.hub.filter(f));
        if !req.group.is_empty() {
            return self.group_stream(caller.input, slot, req, topic, filter).await;
        }
        if !req.member.is_empty() || req.ack_timeout_ms != 0 || req.max_deliveries != 0 || req.max_in_flight != 0 {
            return Err(Error::invalid("group", "member, ack_timeout_ms, max_deliveries and max_in_flight need a group"));
        }

        let storage = self.storage.clone();
        let subscription = self.hub.subscribe(&topic, filter.as_ref()).await;
        let after_sequence = match req.after_sequence {
            None => None,
            Some(n) => {
                let n = u64::try_from(n).map_err(|_| Error::invalid("after_sequence", format!("must be >= 0, got {n}")))?;
                let head = storage.head().await?;
                if n > head {
                    // Resuming there would skip the events up to it.
                    return Err(Error::invalid(
                        "after_sequence",
                        format!("{n} is past the store's head ({head}): the store has not reached that position"),
                    ));
                }
                Some(n)
            }
        };
        let (cursor, from_time) = if !req.after_event_id.is_empty() {
            // An event outside the stream's topic (maybe another tenant's)
            // is answered as an unknown id, so a stream cannot probe ids.
            let event = storage
                .get_event(&req.after_event_id)
                .await?
                .filter(|e| topic.matches(&e.record) && key.as_ref().is_none_or(|k| *k == e.record.key))
                .ok_or_else(|| Error::NotFound(format!("event {} (after_event_id)", req.after_event_id)))?;
            // With both (an SSE reconnect's Last-Event-ID on a URL that
            // names a sequence), the later position.
            (event.seq.max(after_sequence.unwrap_or(0)), None)
        } else if let Some(seq) = after_sequence {
            (seq, None)
        } else if req.from_time > 0 {
            (0, Some(req.from_time))
        } else {
            // Live only: the cursor must be read after the subscription is
            // active, so nothing between the two is lost. If the channel is
            // down we still start; the loop polls storage.
            (storage.head().await?, None)
        };

        let (tx, rx) = mpsc::channel(self.limits.stream_buffer);
        let state = StreamTask {
            gateway: self.clone(),
            input: caller.input,
            topic,
            key,
            filter,
            cursor,
            from_time,
            seen: LastVersions::new(SEEN_RECORDS),
            tx,
            _slot: slot,
        };
        Ok(Box::pin(Driven {
            task: Some(Box::pin(state.run(subscription))),
            rx,
        }))
    }
}

/// A stream's events, produced by its `StreamTask` driven from the
/// stream's own `poll_next` rather than a task of its own: a delivery then
/// wakes one task (the one sending the response), not two, which is most
/// of the per-subscriber cost of a fan-out. The task still writes into a
/// bounded channel, so it can run ahead of the reader by that much; when
/// the reader stops polling (the client does not read), the task stops too
/// and its hub subscription lags, as a slow stream's does. Dropping the
/// stream (the client went away) drops the task.
pub(super) struct Driven {
    task: Option<futures::future::BoxFuture<'static, ()>>,
    rx: mpsc::Receiver<Result<SharedEvent>>,
}

impl Driven {
    pub(super) fn new(task: futures::future::BoxFuture<'static, ()>, rx: mpsc::Receiver<Result<SharedEvent>>) -> Self {
        Driven { task: Some(task), rx }
    }
}

impl futures::Stream for Driven {
    type Item = Result<SharedEvent>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Poll::Ready(Some(item)) = self.rx.poll_recv(cx) {
            return Poll::Ready(Some(item));
        }
        if let Some(task) = self.task.as_mut()
            && futures::FutureExt::poll_unpin(task, cx).is_ready()
        {
            // The task ended (an error was queued, or the gateway stops):
            // its sender is gone, so `rx` ends after what is queued.
            self.task = None;
        }
        self.rx.poll_recv(cx)
    }
}

struct StreamTask {
    gateway: Arc<Gateway>,
    input: PolicyInput,
    topic: Topic,
    key: Option<String>,
    /// Only events it admits are sent (`None`: every event).
    filter: Option<Arc<SharedFilter>>,
    cursor: u64,
    from_time: Option<i64>,
    seen: LastVersions,
    tx: mpsc::Sender<Result<SharedEvent>>,
    /// This stream's place under the stream limits.
    _slot: super::limits::StreamSlot,
}

/// Why a stream stops.
enum Stop {
    ClientGone,
    Failed(Error),
}

/// Completes when the caller's token expires (its `exp` claim): a stream
/// outlives no credential. Never, without one (auth disabled).
pub(super) async fn token_expiry(exp: Option<f64>) {
    match exp {
        Some(exp) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            tokio::time::sleep(Duration::from_secs_f64((exp - now).clamp(0.0, 1e9))).await
        }
        None => std::future::pending().await,
    }
}

pub(super) struct LiveStreamGuard(pub(super) Arc<Gateway>);

impl Drop for LiveStreamGuard {
    fn drop(&mut self) {
        self.0.metrics.live_streams.dec();
    }
}


impl StreamTask {
    async fn run(mut self, first: Result<HubSubscription>) {
        self.gateway.metrics.live_streams.inc();
        let _guard = LiveStreamGuard(self.gateway.clone());
        let shutdown = self.gateway.shutdown.clone();
        let tx = self.tx.clone();
        let expiry = token_expiry(self.input.claims.get("exp").and_then(|v| v.as_f64()));
        let outcome = tokio::select! {
            stop = self.serve(first) => stop,
            _ = tx.closed() => Stop::ClientGone,
            _ = expiry => Stop::Failed(Error::Unauthenticated {
                reason: crate::model::TokenRefusal::Expired,
                message: "the token has expired; reconnect with a fresh token to resume".into(),
            }),
            _ = shutdown.cancelled() => Stop::Failed(Error::unavailable("the gateway is shutting down; reconnect to resume")),
        };
        if let Stop::Failed(e) = outcome {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn serve(&mut self, first: Result<HubSubscription>) -> Stop {
        let mut subscription = Some(first);
        loop {
            let sub = match subscription.take() {
                Some(s) => s,
                None => self.gateway.hub.subscribe(&self.topic, self.filter.as_ref()).await,
            };
            if let Err(stop) = self.replay().await {
                return stop;
            }
            self.from_time = None;
            match sub {
                Ok(sub) => {
                    if let Err(stop) = self.live(sub).await {
                        return stop;
                    }
                    self.gateway.metrics.stream_catchups.inc();
                }
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error = %e, "no live feed; polling storage");
                    tokio::time::sleep(DEGRADED_POLL).await;
                }
            }
        }
    }

    /// Sends stored events after the cursor, up to the end of the store.
    async fn replay(&mut self) -> Result<(), Stop> {
        loop {
            let page = self
                .gateway
                .storage
                .feed(&FeedQuery {
                    topic: self.topic.clone(),
                    key: self.key.clone(),
                    after_seq: self.cursor,
                    from_time: self.from_time,
                    limit: FEED_PAGE,
                })
                .await
                .map_err(Stop::Failed)?;
            let full = page.len() == FEED_PAGE;
            for event in page {
                let seq = event.seq;
                if self.filter.as_ref().is_none_or(|f| f.admits(&event)) {
                    // Replayed in seq order: everything up to it is sent.
                    self.send(SharedEvent::new(event), seq).await?;
                }
                self.cursor = seq;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Passes live deliveries on until the feed closes or this stream lags.
    /// The ring holds only what the stream's filter admits.
    async fn live(&mut self, mut sub: HubSubscription) -> Result<(), Stop> {
        loop {
            match sub.recv().await {
                Ok(delivery) => {
                    // Every event at or below the watermark reached the
                    // ring before this one, so this stream handled it.
                    let resume = self.cursor.max(delivery.watermark);
                    if delivery.event.seq > self.cursor {
                        self.send(delivery.event, resume).await?;
                    }
                    self.cursor = resume;
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(topic = %self.topic, missed = n, "stream fell behind; catching up from storage");
                    return Ok(());
                }
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }

    /// Sends one event unless it was sent already, is for another key, or the
    /// caller's response policy withholds it (on a `*` stream that is how a
    /// caller sees only what it may).
    /// `resume` is the stream's resume point once it was sent
    /// (`Event.resume_after`).
    async fn send(&mut self, event: SharedEvent, resume: u64) -> Result<(), Stop> {
        if self.key.as_ref().is_some_and(|k| *k != event.record.key) {
            return Ok(());
        }
        if !self.seen.advance(&event.record, event.version) {
            return Ok(());
        }

        let Some(event) = self.gateway.authorize_event(&self.input, event).await.map_err(Stop::Failed)? else {
            return Ok(());
        };
        self.tx.send(Ok(event.resuming_after(resume))).await.map_err(|_| Stop::ClientGone)
    }
}

impl Gateway {
    /// An event as the caller's response authorization lets it through:
    /// as it is, redacted, or `None` when withheld. Streams and consumer
    /// group members deliver through it. The event's JSON is shared by
    /// every subscriber, and a Rego policy is given only the parts it reads
    /// (`auth::input_scan`): what one more subscriber costs does not grow
    /// with the event's size.
    pub(crate) async fn authorize_event(&self, input: &PolicyInput, event: SharedEvent) -> Result<Option<SharedEvent>> {
        if !self.inspects_responses() {
            return Ok(Some(event));
        }
        let body = event.json();
        let mut input = input.clone();
        input.body = body.clone();
        input.response = Some(body);
        match self.authorize_response(&mut input, &event.record.domain).await {
            Ok(None) => Ok(Some(event)),
            Ok(Some(redacted)) => Ok(Some(SharedEvent::new(json::parse_event(&redacted)?))),
            Err(e @ Error::PermissionDenied { .. }) => {
                tracing::debug!(event = %event.id, reason = %e, "response policy withheld an event");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

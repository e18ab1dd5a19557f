//! The event pipeline: the one place where requests become reads, appends
//! and broadcasts. gRPC, REST and grpc-web all call these functions, so they
//! validate, authorize and fail the same way.
//!
//! A write: authenticate → request policy → validate → `storage.append`
//! (event + state, atomically, with the expected version and idempotency
//! key) → `channel.publish` → response policy. The write is acknowledged
//! once `append` returned; a failed publish is logged and the hub's sweep
//! delivers the event from storage instead.

mod catalog;
pub mod group;
mod limits;
pub mod request;
pub mod stats;
mod stream;

pub use request::*;
pub use limits::{Admission, Limits, PEER_HEADER};
pub use stream::EventStream;

use crate::auth::{Auth, Metadata, PolicyInput};
use crate::channel::DynChannel;
use crate::hub::Hub;
use crate::model::{
    AppendRequest, Appended, AtSeq, Change, Error, Event, EventKind, EventQuery, Expect, Filter, Idempotency, RecordRef,
    Result, Sort, EventSort, State, StateQuery, StoredState, json, now_nanos, validate_name,
};
use crate::storage::DynStorage;
use crate::telemetry::{Metrics, ProviderCalls};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The request headers the gateway reads itself, whatever auth does: the
/// idempotency key of a write and the peer address the server adds
/// (per-peer limits).
pub const OWN_HEADERS: &[&str] = &[IDEMPOTENCY_HEADER, PEER_HEADER];
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Full gRPC method paths: the `method` of policy input and of events.
pub mod methods {
    pub const STATE_SET: &str = "/stategate.StateService/Set";
    pub const STATE_GET: &str = "/stategate.StateService/Get";
    pub const STATE_DEL: &str = "/stategate.StateService/Del";
    pub const STATE_SEARCH: &str = "/stategate.StateService/Search";
    pub const STATE_EDIT: &str = "/stategate.StateService/Edit";
    pub const STATE_REVERT: &str = "/stategate.StateService/Revert";
    pub const EVENT_STREAM: &str = "/stategate.EventService/Stream";
    pub const EVENT_SEARCH: &str = "/stategate.EventService/Search";
    pub const EVENT_GET: &str = "/stategate.EventService/Get";
    pub const CATALOG_LIST: &str = "/stategate.CatalogService/List";
    pub const EVENT_ACK: &str = "/stategate.EventService/Ack";
    pub const EVENT_PARKED: &str = "/stategate.EventService/Parked";

    /// Every method of the stategate services.
    pub const ALL: [&str; 12] = [
        STATE_SET, STATE_GET, STATE_DEL, STATE_SEARCH, STATE_EDIT, STATE_REVERT, EVENT_STREAM, EVENT_SEARCH, EVENT_GET,
        CATALOG_LIST, EVENT_ACK, EVENT_PARKED,
    ];
}

pub struct Gateway {
    storage: DynStorage,
    channel: DynChannel,
    hub: Arc<Hub>,
    auth: Arc<dyn Auth>,
    metrics: Arc<Metrics>,
    /// The storage's and the channel's call timings, by operation.
    storage_calls: ProviderCalls,
    channel_calls: ProviderCalls,
    limits: Limits,
    admission: Admission,
    shutdown: CancellationToken,
    /// This instance's consumer-group members waiting for work.
    groups: Arc<group::Wakers>,
}

/// An admitted call: who made it and what they asked, for the response
/// policy and for the event's claims.
pub struct Caller {
    input: PolicyInput,
}

impl Caller {
    pub fn claims(&self) -> &crate::model::Claims {
        &self.input.claims
    }
}

impl Gateway {
    pub fn new(
        storage: DynStorage,
        channel: DynChannel,
        hub: Arc<Hub>,
        auth: Arc<dyn Auth>,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Self {
        Gateway {
            admission: Admission::new(&limits),
            storage_calls: ProviderCalls::new(storage.name()),
            channel_calls: ProviderCalls::new(channel.name()),
            storage,
            channel,
            hub,
            auth,
            metrics,
            limits,
            shutdown: CancellationToken::new(),
            groups: Arc::default(),
        }
    }

    pub fn storage(&self) -> &DynStorage {
        &self.storage
    }

    pub fn channel(&self) -> &DynChannel {
        &self.channel
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Topics with a live feed on this instance's hub.
    pub async fn active_topics(&self) -> usize {
        self.hub.active_topics().await
    }

    /// Ends every open stream with `UNAVAILABLE`; used at shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A slot of STATEGATE_MAX_STREAMS for a stream the gateway does not
    /// serve itself (gRPC health `Watch`, reflection), held while it is open.
    pub fn stream_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.admission.stream_slot()
    }

    /// Cancelled by [`Gateway::shutdown`]: streams served outside the
    /// gateway end on it too.
    pub fn shutting_down(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Verifies the caller's token from the headers alone, without
    /// policies: a transport refuses an unauthenticated call with it before
    /// it decodes the body (decoding costs memory an anonymous peer must not
    /// be able to spend; the call then authenticates again, from the
    /// verifier's cache), and STATEGATE_PUBLIC_METADATA=false guards the
    /// service descriptions with it. Counted in `auth_failures_total`.
    pub async fn verify_token(&self, method: &str, metadata: &Metadata) -> Result<crate::model::Claims> {
        self.auth.authenticate(method, metadata).await
    }

    /// Authenticates the caller and runs the request authorization (the
    /// whole chain: `auth`) for a call touching `domain`.
    async fn admit(&self, method: &str, metadata: Metadata, body: &impl Serialize, server_stream: bool, domain: &str) -> Result<Caller> {
        let caller = self.authenticate(method, metadata, body, server_stream).await?;
        self.authorize(caller, Some(domain)).await
    }

    /// The first half of `admit`: who is calling, and the policy input of
    /// their call (its body serialized only when a policy reads it).
    async fn authenticate(&self, method: &str, metadata: Metadata, body: &impl Serialize, server_stream: bool) -> Result<Caller> {
        let claims = self.auth.authenticate(method, &metadata).await?;
        self.admission.check_rate(&claims, &metadata)?;
        let body = if self.auth.inspects_bodies() {
            serde_json::to_value(body).map_err(Error::internal)?
        } else {
            Value::Null
        };
        let body = Arc::new(body);
        Ok(Caller {
            input: PolicyInput {
                claims,
                method: method.to_owned(),
                metadata,
                body,
                client_stream: false,
                server_stream,
                response: None,
                domain: None,
            },
        })
    }

    /// The second half of `admit`: the request authorization, with the
    /// hook of the tenant `domain` names (`None`: the default hook).
    async fn authorize(&self, mut caller: Caller, domain: Option<&str>) -> Result<Caller> {
        caller.input.domain = domain.map(str::to_owned);
        self.auth.authorize_request(&caller.input).await?;
        Ok(caller)
    }

    /// Whether auth reads request headers (see `Auth::reads_headers`).
    pub fn reads_headers(&self) -> bool {
        self.auth.reads_headers()
    }

    /// Whether `verify_token` can refuse a call (see `Auth::authenticates`).
    pub fn verifies_tokens(&self) -> bool {
        self.auth.authenticates()
    }

    /// Whether anything (a Rego response policy or a wasm hook) looks at
    /// responses; when nothing does, they are not turned into JSON.
    pub(crate) fn inspects_responses(&self) -> bool {
        self.auth.inspects_responses()
    }

    /// Runs the response authorization on `input.response`, with the hook
    /// of the tenant `domain` names: `Ok(None)`: unchanged; `Ok(Some(v))`:
    /// redacted to `v`.
    pub(crate) async fn authorize_response(&self, input: &mut PolicyInput, domain: &str) -> Result<Option<Value>> {
        if input.domain.as_deref() != Some(domain) {
            input.domain = Some(domain.to_owned());
        }
        self.auth.authorize_response(input).await
    }

    /// What the caller may see of a unary response touching `domain`: the
    /// response authorization runs with `body` the request (as in v0.5.0)
    /// and `response` the response. A policy may redact the response, which
    /// is then read back from its JSON.
    async fn authorized_response<T>(
        &self,
        caller: Caller,
        domain: &str,
        out: T,
        to_json: fn(&T) -> Value,
        from_json: fn(&Value) -> Result<T>,
    ) -> Result<T> {
        if !self.inspects_responses() {
            return Ok(out);
        }
        let mut input = caller.input;
        input.response = Some(Arc::new(to_json(&out)));
        match self.authorize_response(&mut input, domain).await? {
            None => Ok(out),
            Some(redacted) => from_json(&redacted),
        }
    }

    /// Times a provider call for `provider_call_duration_seconds`.
    async fn timed<T>(&self, calls: &ProviderCalls, op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let out = call.await;
        calls.ended(&self.metrics, op, start.elapsed(), out.is_err());
        out
    }

    // ---- writes ----

    pub async fn set(&self, metadata: Metadata, mut req: SetRequest) -> Result<Event> {
        let caller = self.admit(methods::STATE_SET, metadata, &req, false, &req.domain).await?;
        let record = RecordRef::parse(&req.domain, &req.ty, &req.key)?;
        let expect = Expect::from_wire("expected_version", req.expected_version)?;
        // The fingerprint covers the values: take it before they move out.
        let idem = self.idempotency(&caller, &record, &req.idempotency_key, &req);
        let values = req.values.take().ok_or_else(|| Error::invalid("values", "is required"))?;
        // Values that came as text were written by the api's `Struct`
        // reader, which reads no deeper than `MAX_DEPTH`: reading them as a
        // map to measure them again would undo what keeping them as text saves.
        if values.json_text().is_none() {
            json::check_depth("values", &values)?;
        }
        let event = self
            .append(&caller, record, Change::Put(values), expect, EventKind::Set, idem)
            .await?;
        self.authorized_response(caller, &req.domain, event, json::event, json::parse_event).await
    }

    pub async fn del(&self, metadata: Metadata, req: RefRequest) -> Result<Event> {
        let caller = self.admit(methods::STATE_DEL, metadata, &req, false, &req.domain).await?;
        let record = RecordRef::parse(&req.domain, &req.ty, &req.key)?;
        let expect = Expect::from_wire("expected_version", req.expected_version)?;
        let idem = self.idempotency(&caller, &record, &req.idempotency_key, &req);
        let event = self.append(&caller, record, Change::Delete, expect, EventKind::Del, idem).await?;
        self.authorized_response(caller, &req.domain, event, json::event, json::parse_event).await
    }

    pub async fn edit(&self, metadata: Metadata, mut req: EditRequest) -> Result<Event> {
        let caller = self.admit(methods::STATE_EDIT, metadata, &req, false, &req.domain).await?;
        let record = RecordRef::parse(&req.domain, &req.ty, &req.key)?;
        let wanted = Expect::from_wire("expected_version", req.expected_version)?;
        let idem = self.idempotency(&caller, &record, &req.idempotency_key, &req);
        let patch = req.patch.take().ok_or_else(|| Error::invalid("patch", "is required"))?;
        json::check_depth("patch", &patch)?;
        // Read, patch, and append expecting the version read. Without a
        // client expectation a concurrent write only means "read again".
        let mut attempts = 0;
        let event = loop {
            let current = self
                .timed(&self.storage_calls, "get", self.storage.get(&record))
                .await?
                .ok_or_else(|| Error::NotFound(format!("state {record}")))?;
            if !wanted.admits(Some(current.version)) {
                return Err(crate::storage::conflict_with(&record, wanted, Some(current.version)));
            }
            let mut values = current.values;
            json::merge_patch(&mut values, &patch);
            json::check_depth("patch", &values)?;
            let expect = Expect::Version(current.version);
            match self
                .append(&caller, record.clone(), Change::Put(values.into()), expect, EventKind::Edit, idem.clone())
                .await
            {
                Err(Error::VersionConflict { .. }) if wanted == Expect::Any && attempts < 16 => attempts += 1,
                other => break other?,
            }
        };
        self.authorized_response(caller, &req.domain, event, json::event, json::parse_event).await
    }

    pub async fn revert(&self, metadata: Metadata, req: RevertRequest) -> Result<Event> {
        let caller = self.admit(methods::STATE_REVERT, metadata, &req, false, &req.domain).await?;
        let record = RecordRef::parse(&req.domain, &req.ty, &req.key)?;
        if req.event_id.is_empty() {
            return Err(Error::invalid("event_id", "must not be empty"));
        }
        let expect = Expect::from_wire("expected_version", req.expected_version)?;
        let target = self
            .timed(&self.storage_calls, "get_event", self.storage.get_event(&req.event_id))
            .await?
            .ok_or_else(|| Error::NotFound(format!("event {}", req.event_id)))?;
        // Another record's event is answered as an unknown id: which record
        // an id belongs to (maybe another tenant's) is not the caller's to learn.
        if target.record != record {
            return Err(Error::NotFound(format!("event {} of {record}", req.event_id)));
        }
        let values = target.values.ok_or_else(|| {
            Error::invalid("event_id", format!("event {} is a deletion; there are no values to revert to", req.event_id))
        })?;
        let idem = self.idempotency(&caller, &record, &req.idempotency_key, &req);
        let event = self.append(&caller, record, Change::Put(values), expect, EventKind::Revert, idem).await?;
        self.authorized_response(caller, &req.domain, event, json::event, json::parse_event).await
    }

    /// The idempotency key of a write, from the request field or else the
    /// `idempotency-key` metadata, bound to a hash of the whole request.
    ///
    /// A key is scoped to the caller (token issuer and subject) and the
    /// record: two tenants who pick the same key do not collide, and a
    /// replay never hands one caller the event (and claims) another caller
    /// wrote. The stored key reads `<key> @<scope>`, so an error naming it
    /// still shows the client's key.
    fn idempotency(&self, caller: &Caller, record: &RecordRef, field: &str, req: &impl Serialize) -> Option<Idempotency> {
        let key = if field.is_empty() {
            caller.input.metadata.get(IDEMPOTENCY_HEADER)?.as_str()
        } else {
            field
        };
        if key.is_empty() {
            return None;
        }
        let claim = |name: &str| caller.input.claims.get(name).map(|v| v.to_string()).unwrap_or_default();
        let mut scope = Sha256::new();
        for part in [&claim("iss"), &claim("sub"), &record.domain, &record.ty, &record.key] {
            scope.update(part.as_bytes());
            scope.update([0]);
        }
        let scope = hex::encode(&scope.finalize()[..8]);
        let mut hash = Sha256::new();
        hash.update(caller.input.method.as_bytes());
        // The key itself is part of the request body: hash the rest.
        let mut body = serde_json::to_value(req).unwrap_or(Value::Null);
        if let Some(o) = body.as_object_mut() {
            o.remove("idempotencyKey");
        }
        hash.update(body.to_string().as_bytes());
        let window = self.limits.idempotency_window.as_nanos() as i64;
        Some(Idempotency {
            key: format!("{key} @{scope}"),
            fingerprint: hex::encode(hash.finalize()),
            not_before: now_nanos().saturating_sub(window),
        })
    }

    async fn append(
        &self,
        caller: &Caller,
        record: RecordRef,
        change: Change,
        expect: Expect,
        kind: EventKind,
        idempotency: Option<Idempotency>,
    ) -> Result<Event> {
        let req = AppendRequest {
            id: crate::model::new_event_id(),
            record,
            change,
            expect,
            kind,
            method: caller.input.method.clone(),
            claims: caller.input.claims.clone(),
            time: now_nanos(),
            idempotency,
        };
        let Appended { event, replayed } = self.timed(&self.storage_calls, "append", self.storage.append(req)).await?;
        if !replayed {
            self.metrics.appended(kind.as_str());
            self.publish(&event).await;
        }
        Ok(event)
    }

    /// Broadcasts a committed event. Failure does not fail the write: it is
    /// durable, and the hubs deliver it from storage.
    async fn publish(&self, event: &Event) {
        let channel = self.channel.name();
        let publish = self.timed(&self.channel_calls, "publish", self.channel.publish(event));
        let failed = match tokio::time::timeout(self.limits.publish_timeout, publish).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        self.metrics.publish_failures.inc();
        tracing::warn!(event = %event.id, record = %event.record, channel, error = %failed,
            "broadcast failed; subscribers will receive the event from storage");
    }

    // ---- reads ----

    /// A record's state, with the store position (`seq`) it was read at:
    /// now, or as of an earlier position (`req.as_of`). When nothing reads
    /// responses, the values may come as the stored JSON text
    /// (`StoredState`), which the transport passes on unparsed.
    pub async fn get(&self, metadata: Metadata, req: RefRequest) -> Result<AtSeq<StoredState>> {
        let caller = self.admit(methods::STATE_GET, metadata, &req, false, &req.domain).await?;
        let record = RecordRef::parse(&req.domain, &req.ty, &req.key)?;
        let at = self.read_position(&req.as_of, &record.domain, &record.ty).await?;
        let not_found = || match at {
            Some(at) => Error::NotFound(format!("state {record} at sequence {at}")),
            None => Error::NotFound(format!("state {record}")),
        };
        if !self.inspects_responses() {
            let AtSeq { value, seq } = self
                .timed(&self.storage_calls, "get", self.storage.get_text_at(&record, at))
                .await?;
            return Ok(AtSeq { value: value.ok_or_else(not_found)?, seq });
        }
        let AtSeq { value, seq } = self
            .timed(&self.storage_calls, "get", self.storage.get_at(&record, at))
            .await?;
        let state = value.ok_or_else(not_found)?;
        let value = self.authorized_response(caller, &req.domain, state, json::state, json::parse_state).await?;
        Ok(AtSeq { value: StoredState::Parsed(value), seq })
    }

    /// Current states matching a query, with the store position (`seq`)
    /// the answer reflects: every event up to it and none after. A stream
    /// started after it (`StreamOpts.after_sequence`) carries exactly the
    /// changes the answer does not hold. With `req.as_of`, the states as
    /// they were at an earlier position.
    pub async fn search_states(&self, metadata: Metadata, req: SearchStatesRequest) -> Result<AtSeq<Vec<State>>> {
        let caller = self.admit(methods::STATE_SEARCH, metadata, &req, false, &req.domain).await?;
        search_name("domain", &req.domain)?;
        search_name("type", &req.ty)?;
        let query = StateQuery {
            domain: req.domain.clone(),
            ty: req.ty.clone(),
            filter: Filter::parse("query_string", &req.query_string)?,
            sort: Sort::parse("sort_by", &req.sort_by, req.sort_descending)?,
            limit: self.limit(req.limit)?,
            offset: offset(req.offset)?,
        };
        let at = self.read_position(&req.as_of, &query.domain, &query.ty).await?;
        let AtSeq { value, seq } = self
            .timed(&self.storage_calls, "search_states", self.storage.search_states_at(&query, at))
            .await?;
        let value = self
            .authorized_response(caller, &req.domain, value, |s| list_json("stateValues", s, json::state), |v| parse_list("stateValues", v, json::parse_state))
            .await?;
        Ok(AtSeq { value, seq })
    }

    /// The store position a point-in-time read answers at (`None`: now).
    /// A sequence must exist already (at most the head): a position the
    /// store has not reached has no answer yet, and a stream resumed after
    /// it would skip the events up to it.
    async fn read_position(&self, as_of: &AsOf, domain: &str, ty: &str) -> Result<Option<u64>> {
        match (as_of.as_of_sequence, as_of.as_of_time) {
            (Some(_), t) if t != 0 => Err(Error::invalid("as_of_time", "give as_of_sequence or as_of_time, not both")),
            (Some(n), _) => {
                let n = u64::try_from(n).map_err(|_| Error::invalid("as_of_sequence", format!("must be >= 0, got {n}")))?;
                let head = self.timed(&self.storage_calls, "head", self.storage.head()).await?;
                if n > head {
                    return Err(Error::invalid(
                        "as_of_sequence",
                        format!("{n} is past the store's head ({head}): the store has not reached that position"),
                    ));
                }
                Ok(Some(n))
            }
            (None, 0) => Ok(None),
            (None, t) if t < 0 => Err(Error::invalid("as_of_time", format!("must be >= 0 (Unix nanoseconds), got {t}"))),
            (None, t) => Ok(Some(self.timed(&self.storage_calls, "seq_at_time", self.storage.seq_at_time(domain, ty, t)).await?)),
        }
    }

    pub async fn search_events(&self, metadata: Metadata, req: SearchEventsRequest) -> Result<Vec<Event>> {
        let caller = self.admit(methods::EVENT_SEARCH, metadata, &req, false, &req.domain).await?;
        search_name("domain", &req.domain)?;
        search_name("type", &req.ty)?;
        if !req.key.is_empty() {
            validate_name("key", &req.key)?;
        }
        let bound = |field: &str, v: i64| match v {
            0 => Ok(None),
            v if v > 0 => Ok(Some(v)),
            v => Err(Error::invalid(field, format!("must be >= 0 (Unix nanoseconds), got {v}"))),
        };
        let query = EventQuery {
            domain: req.domain.clone(),
            ty: req.ty.clone(),
            key: (!req.key.is_empty()).then(|| req.key.clone()),
            filter: Filter::parse("query_string", &req.query_string)?,
            claims_filter: Filter::parse("claims_query", &req.claims_query)?,
            min_time: bound("min", req.min)?,
            max_time: bound("max", req.max)?,
            limit: self.limit(req.limit)?,
            offset: offset(req.offset)?,
            sort: req.sort.as_ref().map(|s| EventSort::parse("sort.field", &s.field, s.reverse)).transpose()?,
            min_version: version_bound("min_version", req.min_version)?,
            max_version: version_bound("max_version", req.max_version)?,
        };
        let events = self
            .timed(&self.storage_calls, "search_events", self.storage.search_events(&query))
            .await?;
        self.authorized_response(caller, &req.domain, events, |e| list_json("events", e, json::event), |v| parse_list("events", v, json::parse_event))
            .await
    }

    pub async fn get_event(&self, metadata: Metadata, req: EventRefRequest) -> Result<Event> {
        // The request names no domain: authorize it once the event (and so
        // its tenant) is known, so the tenant's hook decides. An unknown id
        // is authorized too (with the default hook) before NOT_FOUND, so a
        // refused caller cannot probe which ids exist.
        let caller = self.authenticate(methods::EVENT_GET, metadata, &req, false).await?;
        if req.id.is_empty() {
            return Err(Error::invalid("id", "must not be empty"));
        }
        let event = self
            .timed(&self.storage_calls, "get_event", self.storage.get_event(&req.id))
            .await?;
        let caller = self.authorize(caller, event.as_ref().map(|e| e.record.domain.as_str())).await?;
        let event = event.ok_or_else(|| Error::NotFound(format!("event {}", req.id)))?;
        let domain = event.record.domain.clone();
        self.authorized_response(caller, &domain, event, json::event, json::parse_event).await
    }

    /// v0.5.0 required `limit > 0`; anything above the configured maximum is
    /// capped rather than refused, so old clients asking for "everything"
    /// still get an answer.
    fn limit(&self, limit: i64) -> Result<usize> {
        if limit <= 0 {
            return Err(Error::invalid("limit", format!("must be > 0, got {limit}")));
        }
        Ok((limit as u64).min(self.limits.max_search_limit as u64) as usize)
    }
}

/// A domain or type a search names. `*` means "every" in streams and the
/// catalog, but a search reads one domain and type (its page, sort and
/// response policy are per type), so there it is refused rather than read
/// as a literal name that never matches.
fn search_name(field: &str, value: &str) -> Result<()> {
    if value == "*" {
        return Err(Error::invalid(
            field,
            "\"*\" (every one) is not supported in searches, only in streams: name one domain and type \
             (CatalogService.List, GET /api/catalog, lists those you may read)",
        ));
    }
    validate_name(field, value)
}

/// `min_version`/`max_version` of an event search: 0 is unbounded.
fn version_bound(field: &str, v: i64) -> Result<Option<u64>> {
    match v {
        0 => Ok(None),
        v if v > 0 => Ok(Some(v as u64)),
        v => Err(Error::invalid(field, format!("must be >= 0, got {v}"))),
    }
}

fn offset(offset: i64) -> Result<usize> {
    usize::try_from(offset).map_err(|_| Error::invalid("offset", format!("must be >= 0, got {offset}")))
}

/// A list response as the policies see it: `{"stateValues": [...]}` or
/// `{"events": [...]}`, the proto3 JSON of the response message.
fn list_json<T>(field: &str, items: &[T], one: fn(&T) -> Value) -> Value {
    serde_json::json!({ field: items.iter().map(one).collect::<Vec<_>>() })
}

/// Reads a list response back from what a response policy returned.
fn parse_list<T>(field: &str, v: &Value, one: fn(&Value) -> Result<T>) -> Result<Vec<T>> {
    v.get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| Error::internal(format!("response policy returned no {field}")))?
        .iter()
        .map(one)
        .collect()
}


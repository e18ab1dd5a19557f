//! `mongo`: events and current states in MongoDB (or a server speaking its
//! wire protocol), through the official `mongodb` driver. Configured as in
//! v0.5.0: `{"name":"mongo","addr":"mongodb://…","database":"…"}`.
//!
//! Collections:
//! - `events`: one document per event, `_id` = its seq; unique indexes on
//!   the event id and on (domain, type, key, version);
//! - `states`: one document per record ever written (kept after deletion
//!   with `live: false`, so a recreated record continues its numbering);
//! - `counters`: the global seq counter, `{_id: "seq", n}`;
//! - `idempotency`: `{_id: key, fp, seq}`.
//!
//! **Atomicity.** `append` is one multi-document transaction: read the
//! idempotency entry and the state, check the expected version, `$inc` the
//! seq counter, insert the event, upsert the state and the idempotency entry,
//! commit. Two transactions touching the same record (or the counter, which
//! every append touches) conflict, and the loser is retried from the start,
//! so it re-reads the state and reports the version conflict properly.
//! Because every append increments the one counter, seqs are handed out in
//! commit order: a reader that sees seq N sees every smaller seq, the
//! promise catch-up streams rely on. The price is that appends are
//! serialized on the counter document; for the throughput a gateway needs
//! that is acceptable, and it is what makes the feed correct.
//!
//! **Standalone servers** have no multi-document transactions, so there
//! the event is the one atomic write and everything else is derived from it:
//! - the version check reads the record's latest *event* (the log is the
//!   truth) and the event is inserted under the unique (record, version)
//!   index: of two racing writers exactly one inserts version v+1, the
//!   other gets a duplicate key, re-reads and reports the conflict;
//! - the idempotency key and fingerprint live in the event document itself,
//!   so they are written in the same atomic step;
//! - `get` derives the state from the latest event, so it never disagrees
//!   with the history; the `states` collection (used by searches) is updated
//!   after the insert and *repaired on read*: before a search, every event
//!   past the repair watermark is applied to it (idempotently: a state only
//!   moves to a higher version), so an append that died between its two
//!   writes is made whole;
//! - seqs come from the counter but land out of order, so readers only see
//!   the *stable head*: the longest gap-free run of seqs. A seq whose writer
//!   lost its insert is filled at once with a `void` document; one whose
//!   writer vanished is voided by a reader after `VOID_AFTER` (a late insert
//!   then fails on the duplicate `_id` and retries with a new seq). So a
//!   reader that sees seq N still sees every smaller seq.
//!   Limits of this mode: two concurrent appends with the same new
//!   idempotency key may both be written, and searches pay for the repair.
//!   A replica set (one node is enough) avoids both.
//!
//! **Values.** JSON numbers, key names (`.` and `$`) and nesting do not all
//! map onto BSON faithfully, so the JSON text is the stored truth (`vals`,
//! `claims`) and a BSON copy (`doc`, `cdoc`) exists only to push equality
//! conditions of a query down to the server. A value the copy cannot
//! represent exactly is flagged `raw` and always passes the pushdown; the
//! query's shared matcher (`model::query`) decides in every case.
//!
//! **Faults.** The driver reconnects by itself. Every call is bounded
//! (server selection and connect timeouts, plus an overall deadline), so
//! while the server is down calls fail fast with `Unavailable`.

use super::{FEED_PAGE, Storage, conflict, idempotency_mismatch};
use crate::model::{
    Appended, AppendRequest, Arrival, Change, Error, Event, EventKind, EventQuery, FeedQuery, Filter, RecordRef,
    Result, Select, State, StateQuery, Values, query::Op,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, IndexOptions, ReadConcern, ReturnDocument, TransactionOptions, WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, IndexModel};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

/// How long the driver looks for a usable server before a call fails.
const SELECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a reader waits for an allocated seq's event before voiding it
/// (standalone servers only).
const VOID_AFTER: Duration = Duration::from_secs(5);
/// Longest an append waits for its turn among this instance's appends.
const TURN_WAIT: Duration = Duration::from_secs(1);
/// Longest any one storage call may take, retries included.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

pub struct MongoStorage {
    client: Client,
    /// Appends of this instance take turns: they would serialize on the
    /// counter document anyway, and queueing here instead of in the server
    /// spares them aborted transactions and retries. Other instances still
    /// contend through the server, which stays the arbiter.
    turn: tokio::sync::Mutex<()>,
    /// The server has no transactions: the scheme described above.
    standalone: bool,
    /// Standalone: the stable head found so far (it only grows).
    stable: AtomicU64,
    /// Standalone: events up to here are applied to `states`.
    repaired: AtomicU64,
    /// Standalone: the seq missing at the stable head, and since when.
    missing: std::sync::Mutex<Option<(u64, Instant)>>,
    events: Collection<Document>,
    states: Collection<Document>,
    counters: Collection<Document>,
    idempotency: Collection<Document>,
}

/// `{"name":"mongo","addr":"mongodb://…","database":"…"}`, v0.5.0's keys.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// A `mongodb://` (or `mongodb+srv://`) connection string.
    pub addr: String,
    #[serde(default = "default_database")]
    pub database: String,
}

fn default_database() -> String {
    "stategate".to_owned()
}

impl MongoConfig {
    pub async fn build(&self) -> Result<MongoStorage> {
        MongoStorage::open(&self.addr, &self.database).await
    }
}

/// What an append's transaction decided.
enum Outcome {
    Done(Appended),
    Refused(Error),
}

impl MongoStorage {
    /// Connects, checks that the server runs transactions, and creates the
    /// indexes. `addr` is a `mongodb://` connection string.
    pub async fn open(addr: &str, database: &str) -> Result<Self> {
        if database.is_empty() || database.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
            return Err(Error::invalid(
                "database",
                format!("{database:?} is not a valid MongoDB database name"),
            ));
        }
        let mut options = ClientOptions::parse(addr)
            .await
            .map_err(|e| Error::invalid("addr", format!("not a usable MongoDB connection string: {e}")))?;
        options.server_selection_timeout.get_or_insert(SELECTION_TIMEOUT);
        options.connect_timeout.get_or_insert(SELECTION_TIMEOUT);
        options.app_name.get_or_insert_with(|| "stategate".to_owned());
        let client = Client::with_options(options).map_err(|e| Error::invalid("addr", e.to_string()))?;
        let db = client.database(database);

        let hello = bounded(db.run_command(doc! {"hello": 1})).await?;
        let replica_set = hello.get_str("setName").is_ok();
        let sharded = hello.get_str("msg") == Ok("isdbgrid");
        let standalone = !replica_set && !sharded;
        if standalone {
            tracing::warn!(
                addr,
                "mongo: standalone server, no transactions: events are the atomic writes and states are \
                 repaired on read; run a replica set (one node is enough) for full transactions"
            );
        }

        let storage = MongoStorage {
            events: db.collection("events"),
            states: db.collection("states"),
            counters: db.collection("counters"),
            idempotency: db.collection("idempotency"),
            client,
            turn: tokio::sync::Mutex::new(()),
            standalone,
            stable: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            missing: std::sync::Mutex::new(None),
        };
        storage.create_indexes().await?;
        if standalone {
            let mark = bounded(storage.counters.find_one(doc! {"_id": "repaired"})).await?;
            let n = mark.and_then(|d| d.get_i64("n").ok()).unwrap_or(0);
            storage.repaired.store(n as u64, AtomicOrdering::SeqCst);
        }
        Ok(storage)
    }

    async fn create_indexes(&self) -> Result<()> {
        let unique = |keys: Document| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(true).build())
                .build()
        };
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        bounded(
            self.events
                .create_indexes([
                    unique(doc! {"id": 1}),
                    unique(doc! {"d": 1, "t": 1, "k": 1, "v": 1}),
                    plain(doc! {"d": 1, "t": 1, "_id": 1}),
                    plain(doc! {"d": 1, "t": 1, "time": 1}),
                ])
                ,
        )
        .await?;
        bounded(self.states.create_index(unique(doc! {"d": 1, "t": 1, "k": 1}))).await?;
        if self.standalone {
            let sparse = IndexModel::builder()
                .keys(doc! {"idem": 1, "_id": -1})
                .options(IndexOptions::builder().sparse(true).build())
                .build();
            bounded(self.events.create_index(sparse)).await?;
        }
        Ok(())
    }

    /// One attempt at an append, inside a transaction on `session`.
    async fn try_append(&self, s: &mut ClientSession, req: &AppendRequest) -> mongodb::error::Result<Outcome> {
        let r = &req.record;
        if let Some(idem) = &req.idempotency {
            if let Some(entry) = self.idempotency.find_one(doc! {"_id": &idem.key}).session(&mut *s).await? {
                let seq = entry.get_i64("seq").unwrap_or(0);
                if let Some(first) = self.events.find_one(doc! {"_id": seq}).session(&mut *s).await? {
                    let first = event_from_doc(&first).map_err(corrupt)?;
                    if first.time >= idem.not_before {
                        if entry.get_str("fp").unwrap_or("") != idem.fingerprint {
                            return Ok(Outcome::Refused(idempotency_mismatch(&idem.key)));
                        }
                        return Ok(Outcome::Done(Appended {
                            event: first,
                            replayed: true,
                        }));
                    }
                }
            }
        }
        let state = self
            .states
            .find_one(doc! {"d": &r.domain, "t": &r.ty, "k": &r.key})
            .session(&mut *s)
            .await?;
        let last = state.as_ref().and_then(|d| d.get_i64("v").ok()).unwrap_or(0) as u64;
        let live = state.as_ref().is_some_and(|d| d.get_bool("live").unwrap_or(false));
        let current = live.then_some(last);
        if !req.expect.admits(current) {
            return Ok(Outcome::Refused(conflict(req, current)));
        }
        if req.change == Change::Delete && current.is_none() {
            return Ok(Outcome::Refused(Error::NotFound(format!("state {r}"))));
        }
        let version = last + 1;
        let counter = self
            .counters
            .find_one_and_update(doc! {"_id": "seq"}, doc! {"$inc": {"n": 1_i64}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await?
            .ok_or_else(|| corrupt("the seq counter vanished"))?;
        let seq = counter.get_i64("n").map_err(corrupt)? as u64;
        let values = match &req.change {
            Change::Put(v) => Some(v.clone()),
            Change::Delete => None,
        };
        let event = Event {
            id: req.id.clone(),
            seq,
            record: r.clone(),
            values,
            claims: req.claims.clone(),
            time: req.time,
            version,
            kind: req.kind,
            method: req.method.clone(),
        };
        self.events.insert_one(event_to_doc(&event)).session(&mut *s).await?;
        self.states
            .update_one(doc! {"d": &r.domain, "t": &r.ty, "k": &r.key}, doc! {"$set": state_set(&event)})
            .upsert(true)
            .session(&mut *s)
            .await?;
        if let Some(idem) = &req.idempotency {
            self.idempotency
                .update_one(
                    doc! {"_id": &idem.key},
                    doc! {"$set": {"fp": &idem.fingerprint, "seq": seq as i64}},
                )
                .upsert(true)
                .session(&mut *s)
                .await?;
        }
        Ok(Outcome::Done(Appended {
            event,
            replayed: false,
        }))
    }

    /// Runs the append transaction, retrying it while the server says the
    /// failure was transient (write conflicts with a concurrent append).
    async fn append_with_retries(&self, req: &AppendRequest) -> Result<Appended> {
        let started = Instant::now();
        // Bounded, so a server that hangs cannot queue appends forever: past
        // the wait, contend without the turn.
        let _turn = tokio::time::timeout(TURN_WAIT, self.turn.lock()).await.ok();
        let mut session = self.client.start_session().await.map_err(db_error)?;
        let options = TransactionOptions::builder()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build())
            .build();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            session.start_transaction().with_options(options.clone()).await.map_err(db_error)?;
            let result = self.try_append(&mut session, req).await;
            let err = match result {
                Ok(Outcome::Refused(e)) => {
                    let _ = session.abort_transaction().await;
                    return Err(e);
                }
                Ok(Outcome::Done(appended)) if appended.replayed => {
                    let _ = session.abort_transaction().await;
                    return Ok(appended);
                }
                Ok(Outcome::Done(appended)) => match commit(&mut session).await {
                    Ok(()) => return Ok(appended),
                    Err(e) => e,
                },
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    e
                }
            };
            // A duplicate key inside the transaction means a concurrent
            // append created the same state or counter document first:
            // retrying re-reads it and decides properly.
            let retry = err.contains_label(TRANSIENT_TRANSACTION_ERROR) || is_duplicate_key(&err);
            if !retry || started.elapsed() > CALL_DEADLINE {
                return Err(db_error(err));
            }
            // Spread the retries of contending writers apart.
            let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
            let backoff = Duration::from_micros(jitter * u64::from(attempt.min(20)));
            tokio::time::sleep(backoff).await;
        }
    }

    /// Streams the documents of `cursor` into the query's page; stops
    /// reading once the page is full.
    async fn select<Q: Select>(
        query: &Q,
        arrival: Arrival,
        mut cursor: mongodb::Cursor<Document>,
        parse: impl Fn(&Document) -> Result<Q::Item>,
    ) -> Result<Vec<Q::Item>> {
        let mut page = query.page(arrival);
        while let Some(d) = cursor.try_next().await.map_err(db_error)? {
            if !page.offer(parse(&d)?) {
                break;
            }
        }
        Ok(page.finish())
    }
}

/// The standalone scheme (see the module comment).
impl MongoStorage {
    async fn latest_event(&self, r: &RecordRef) -> Result<Option<Event>> {
        let found = bounded(
            self.events
                .find_one(doc! {"d": &r.domain, "t": &r.ty, "k": &r.key})
                .sort(doc! {"v": -1}),
        )
        .await?;
        found.as_ref().map(event_from_doc).transpose()
    }

    async fn append_standalone(&self, req: &AppendRequest) -> Result<Appended> {
        let started = Instant::now();
        let _turn = tokio::time::timeout(TURN_WAIT, self.turn.lock()).await.ok();
        let r = &req.record;
        let mut attempt = 0u32;
        loop {
            if started.elapsed() > CALL_DEADLINE {
                return Err(Error::unavailable("mongo: append kept colliding with concurrent appends"));
            }
            if let Some(idem) = &req.idempotency {
                let first = bounded(self.events.find_one(doc! {"idem": &idem.key}).sort(doc! {"_id": -1})).await?;
                if let Some(first) = first {
                    let fingerprint = first.get_str("fp").unwrap_or("").to_owned();
                    let first = event_from_doc(&first)?;
                    if first.time >= idem.not_before {
                        if fingerprint != idem.fingerprint {
                            return Err(idempotency_mismatch(&idem.key));
                        }
                        return Ok(Appended {
                            event: first,
                            replayed: true,
                        });
                    }
                }
            }
            let latest = self.latest_event(r).await?;
            let last = latest.as_ref().map_or(0, |e| e.version);
            let current = latest.as_ref().filter(|e| e.values.is_some()).map(|e| e.version);
            if !req.expect.admits(current) {
                return Err(conflict(req, current));
            }
            if req.change == Change::Delete && current.is_none() {
                return Err(Error::NotFound(format!("state {r}")));
            }
            let counter = bounded(
                self.counters
                    .find_one_and_update(doc! {"_id": "seq"}, doc! {"$inc": {"n": 1_i64}})
                    .upsert(true)
                    .return_document(ReturnDocument::After),
            )
            .await?
            .ok_or_else(|| Error::internal("mongo: the seq counter vanished"))?;
            let seq = counter.get_i64("n").map_err(|e| Error::internal(format!("mongo: seq counter: {e}")))? as u64;
            let event = Event {
                id: req.id.clone(),
                seq,
                record: r.clone(),
                values: match &req.change {
                    Change::Put(v) => Some(v.clone()),
                    Change::Delete => None,
                },
                claims: req.claims.clone(),
                time: req.time,
                version: last + 1,
                kind: req.kind,
                method: req.method.clone(),
            };
            let mut d = event_to_doc(&event);
            if let Some(idem) = &req.idempotency {
                d.insert("idem", &idem.key);
                d.insert("fp", &idem.fingerprint);
            }
            match tokio::time::timeout(CALL_DEADLINE, self.events.insert_one(d).into_future()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if is_duplicate_key(&e) => {
                    tracing::debug!(seq, error = %e, "mongo: append collided");
                    // A concurrent append took this version (or a reader
                    // voided our seq): give the seq up and decide again,
                    // after a random pause so racing writers spread apart.
                    self.void(seq).await;
                    attempt += 1;
                    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
                    tokio::time::sleep(Duration::from_micros(jitter * u64::from(attempt.min(20)))).await;
                    continue;
                }
                // The outcome is unknown; if the event did not land, a
                // reader voids its seq after VOID_AFTER.
                Ok(Err(e)) => return Err(db_error(e)),
                Err(_) => return Err(Error::unavailable("mongo: append got no answer")),
            }
            if let Err(e) = self.apply_state(&event).await {
                tracing::warn!(error = %e, record = %r, "mongo: state update failed; repaired on the next search");
            }
            return Ok(Appended {
                event,
                replayed: false,
            });
        }
    }

    /// Fills a seq that will never hold an event, so the stable head can
    /// pass it. Losing the race to the real event is fine.
    async fn void(&self, seq: u64) {
        let marker = format!("void:{seq}");
        let d = doc! {"_id": seq as i64, "id": &marker, "d": "", "t": "", "k": &marker, "v": 0_i64, "void": true};
        if let Err(e) = bounded(self.events.insert_one(d)).await {
            tracing::debug!(seq, error = %e, "mongo: seq not voided");
        }
    }

    /// Moves a record's state to `event`, unless it already is at a later
    /// version. Idempotent.
    async fn apply_state(&self, event: &Event) -> Result<()> {
        let r = &event.record;
        let filter = doc! {"d": &r.domain, "t": &r.ty, "k": &r.key, "v": {"$lt": event.version as i64}};
        match tokio::time::timeout(
            CALL_DEADLINE,
            self.states.update_one(filter, doc! {"$set": state_set(event)}).upsert(true).into_future(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            // The state is already at this version or later: the upsert
            // found no match and its insert hit the unique index.
            Ok(Err(e)) if is_duplicate_key(&e) => Ok(()),
            Ok(Err(e)) => Err(db_error(e)),
            Err(_) => Err(Error::unavailable("mongo: state update got no answer")),
        }
    }

    /// The longest gap-free run of seqs from 1: what readers may see.
    async fn stable_head(&self) -> Result<u64> {
        let mut w = self.stable.load(AtomicOrdering::SeqCst);
        loop {
            let cursor = bounded(
                self.events
                    .find(doc! {"_id": {"$gt": w as i64}})
                    .sort(doc! {"_id": 1})
                    .projection(doc! {"_id": 1})
                    .limit(FEED_PAGE as i64),
            )
            .await?;
            let ids: Vec<Document> = bounded(cursor.try_collect::<Vec<_>>()).await?;
            let full = ids.len() == FEED_PAGE;
            let mut gap = false;
            for d in &ids {
                let id = d.get_i64("_id").unwrap_or(0) as u64;
                if id == w + 1 {
                    w = id;
                } else {
                    gap = true;
                    break;
                }
            }
            if full && !gap {
                continue;
            }
            // Is seq w+1 handed out but not written yet?
            let counter = bounded(self.counters.find_one(doc! {"_id": "seq"})).await?;
            let allocated = counter.and_then(|d| d.get_i64("n").ok()).unwrap_or(0) as u64;
            if allocated > w {
                let overdue = {
                    let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
                    match *missing {
                        Some((seq, since)) if seq == w + 1 => since.elapsed() > VOID_AFTER,
                        _ => {
                            *missing = Some((w + 1, Instant::now()));
                            false
                        }
                    }
                };
                if overdue {
                    tracing::warn!(seq = w + 1, "mongo: an append never wrote its event; voiding its seq");
                    self.void(w + 1).await;
                    continue;
                }
            }
            self.stable.fetch_max(w, AtomicOrdering::SeqCst);
            return Ok(w);
        }
    }

    /// Applies every stable event past the repair watermark to `states`.
    async fn repair(&self) -> Result<()> {
        let stable = self.stable_head().await?;
        let mut from = self.repaired.load(AtomicOrdering::SeqCst);
        while from < stable {
            let cursor = bounded(
                self.events
                    .find(doc! {"_id": {"$gt": from as i64, "$lte": stable as i64}, "void": {"$ne": true}})
                    .sort(doc! {"_id": 1})
                    .limit(FEED_PAGE as i64),
            )
            .await?;
            let docs: Vec<Document> = bounded(cursor.try_collect::<Vec<_>>()).await?;
            if docs.is_empty() {
                from = stable;
                break;
            }
            for d in &docs {
                let event = event_from_doc(d)?;
                self.apply_state(&event).await?;
                from = event.seq;
            }
        }
        if from > self.repaired.fetch_max(from, AtomicOrdering::SeqCst) {
            bounded(
                self.counters
                    .update_one(doc! {"_id": "repaired"}, doc! {"$max": {"n": from as i64}})
                    .upsert(true),
            )
            .await?;
        }
        Ok(())
    }
}

/// Commits, retrying while the outcome is unknown (the driver's advice for
/// `UnknownTransactionCommitResult`), within the call deadline.
async fn commit(session: &mut ClientSession) -> mongodb::error::Result<()> {
    let started = Instant::now();
    loop {
        match session.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && started.elapsed() < CALL_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

fn db_error(e: mongodb::error::Error) -> Error {
    Error::unavailable(format!("mongo: {e}"))
}

fn corrupt(e: impl std::fmt::Display) -> mongodb::error::Error {
    mongodb::error::Error::custom(format!("stored document is corrupt: {e}"))
}

/// Bounds a driver future by the call deadline.
async fn bounded<T>(f: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>) -> Result<T> {
    match tokio::time::timeout(CALL_DEADLINE, f.into_future()).await {
        Ok(r) => r.map_err(db_error),
        Err(_) => Err(Error::unavailable(format!("mongo: no answer within {CALL_DEADLINE:?}"))),
    }
}

fn json_text(v: &Values) -> String {
    // Serializing a map of JSON values cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// Stores the BSON copy of `v` under `field`, or flags it `raw` when BSON
/// cannot hold it exactly.
fn put_copy(d: &mut Document, field: &str, flag: &str, v: &Values) {
    match to_bson_doc(v) {
        Some(copy) => {
            d.insert(field, copy);
            d.insert(flag, false);
        }
        None => {
            d.insert(field, Bson::Null);
            d.insert(flag, true);
        }
    }
}

fn to_bson_doc(v: &Values) -> Option<Document> {
    let mut d = Document::new();
    for (k, val) in v {
        if k.is_empty() || k.contains('.') || k.starts_with('$') || k.contains('\0') {
            return None;
        }
        d.insert(k.clone(), to_bson(val)?);
    }
    Some(d)
}

fn to_bson(v: &Value) -> Option<Bson> {
    Some(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None if n.is_f64() => Bson::Double(n.as_f64()?),
            None => return None, // a u64 beyond i64: no exact BSON form
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect::<Option<_>>()?),
        Value::Object(m) => Bson::Document(to_bson_doc(m)?),
    })
}

/// The fields of a record's state document that an event sets: version,
/// liveness, the values as JSON text and their queryable BSON copy.
fn state_set(event: &Event) -> Document {
    let mut set = doc! {"v": event.version as i64, "live": event.values.is_some()};
    match &event.values {
        Some(v) => {
            set.insert("vals", json_text(v));
            put_copy(&mut set, "doc", "raw", v);
        }
        None => {
            set.insert("vals", Bson::Null);
            set.insert("doc", Bson::Null);
            set.insert("raw", false);
        }
    }
    set
}

fn event_to_doc(e: &Event) -> Document {
    let mut d = doc! {
        "_id": e.seq as i64,
        "id": &e.id,
        "d": &e.record.domain,
        "t": &e.record.ty,
        "k": &e.record.key,
        "v": e.version as i64,
        "kind": e.kind.as_str(),
        "m": &e.method,
        "time": e.time,
        "claims": json_text(&e.claims),
    };
    match &e.values {
        Some(v) => {
            d.insert("vals", json_text(v));
            put_copy(&mut d, "doc", "raw", v);
        }
        None => {
            d.insert("vals", Bson::Null);
        }
    }
    put_copy(&mut d, "cdoc", "craw", &e.claims);
    d
}

fn parse_json(field: &str, text: &str) -> Result<Values> {
    serde_json::from_str(text).map_err(|e| Error::internal(format!("mongo: stored {field} is corrupt: {e}")))
}

fn event_from_doc(d: &Document) -> Result<Event> {
    let bad = |what: &str| Error::internal(format!("mongo: stored event is corrupt: {what}"));
    let text = |k: &str| d.get_str(k).map(str::to_owned).map_err(|_| bad(k));
    let int = |k: &str| d.get_i64(k).map_err(|_| bad(k));
    let kind = text("kind")?;
    Ok(Event {
        id: text("id")?,
        seq: int("_id")? as u64,
        record: RecordRef {
            domain: text("d")?,
            ty: text("t")?,
            key: text("k")?,
        },
        values: match d.get("vals") {
            Some(Bson::String(s)) => Some(parse_json("values", s)?),
            _ => None,
        },
        claims: parse_json("claims", &text("claims")?)?,
        time: int("time")?,
        version: int("v")? as u64,
        kind: EventKind::parse(&kind).ok_or_else(|| bad("kind"))?,
        method: text("m")?,
    })
}

fn state_from_doc(d: &Document) -> Result<State> {
    let bad = |what: &str| Error::internal(format!("mongo: stored state is corrupt: {what}"));
    let text = |k: &str| d.get_str(k).map(str::to_owned).map_err(|_| bad(k));
    Ok(State {
        record: RecordRef {
            domain: text("d")?,
            ty: text("t")?,
            key: text("k")?,
        },
        values: parse_json("values", &text("vals")?)?,
        version: d.get_i64("v").map_err(|_| bad("v"))? as u64,
    })
}

/// Server-side conditions selecting a superset of what `filter` matches on
/// the BSON copy `field` (flagged `flag` when it could not be made). Only
/// equality on strings, booleans and numbers is pushed down; MongoDB's
/// equality then matches at least what the shared matcher does (it also
/// matches array elements and numbers across int/double), and the matcher
/// makes the final decision.
fn pushdown(field: &str, flag: &str, filter: &Filter, and: &mut Vec<Document>) {
    for c in &filter.conditions {
        let Op::Eq(q) = &c.op else { continue };
        let unsafe_key = |s: &str| s.is_empty() || s.starts_with('$') || s.chars().any(char::is_control);
        if c.path.iter().any(|s| unsafe_key(s) || s.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let value = match q {
            Value::String(s) => Bson::String(s.clone()),
            Value::Bool(b) => Bson::Boolean(*b),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Bson::Int64(i),
                (None, Some(f)) if n.is_f64() && f.is_finite() => Bson::Double(f),
                _ => continue,
            },
            _ => continue,
        };
        let path = format!("{field}.{}", c.path.join("."));
        let mut cond = Document::new();
        cond.insert(path, value);
        and.push(doc! {"$or": [{flag: true}, cond]});
    }
}

#[async_trait]
impl Storage for MongoStorage {
    fn name(&self) -> &str {
        "mongo"
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        if self.standalone {
            return self.append_standalone(&req).await;
        }
        match tokio::time::timeout(CALL_DEADLINE + SELECTION_TIMEOUT, self.append_with_retries(&req)).await {
            Ok(r) => r,
            Err(_) => Err(Error::unavailable(format!("mongo: append got no answer within {CALL_DEADLINE:?}"))),
        }
    }

    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        if self.standalone {
            // The latest event is the state: never out of step with history.
            return Ok(self.latest_event(record).await?.and_then(|e| {
                e.values.map(|values| State {
                    record: e.record,
                    values,
                    version: e.version,
                })
            }));
        }
        let found = bounded(
            self.states
                .find_one(doc! {"d": &record.domain, "t": &record.ty, "k": &record.key, "live": true})
                ,
        )
        .await?;
        found.as_ref().map(state_from_doc).transpose()
    }

    async fn search_states(&self, q: &StateQuery) -> Result<Vec<State>> {
        if self.standalone {
            self.repair().await?;
        }
        let mut and = vec![doc! {"d": &q.domain, "t": &q.ty, "live": true}];
        pushdown("doc", "raw", &q.filter, &mut and);
        let cursor = bounded(self.states.find(doc! {"$and": and}).sort(doc! {"k": 1})).await?;
        // Documents come by key (the unique index's order). A field sort is
        // not pushed to the server: MongoDB orders arrays by their least or
        // greatest element and objects field by field, and values without
        // an exact BSON copy not at all, unlike `query::compare_values`, the
        // one order every provider answers in. So the page keeps the top
        // offset + limit states as they stream past, never the whole type.
        let arrival = if q.sort.is_some() { Arrival::AnyOrder } else { Arrival::InOrder };
        let run = Self::select(q, arrival, cursor, state_from_doc);
        tokio::time::timeout(CALL_DEADLINE, run)
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("mongo: search took too long")))
    }

    async fn search_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let mut first = doc! {"d": &q.domain, "t": &q.ty};
        if let Some(k) = &q.key {
            first.insert("k", k);
        }
        let mut time = Document::new();
        if let Some(t) = q.min_time {
            time.insert("$gte", t);
        }
        if let Some(t) = q.max_time {
            time.insert("$lte", t);
        }
        if !time.is_empty() {
            first.insert("time", time);
        }
        // Equality pushed down never matches a deletion (no `doc`), and
        // neither does the matcher: a deletion's values are `{}`.
        let mut and = vec![first];
        pushdown("doc", "raw", &q.filter, &mut and);
        pushdown("cdoc", "craw", &q.claims_filter, &mut and);
        let cursor = bounded(self.events.find(doc! {"$and": and}).sort(doc! {"_id": 1})).await?;
        tokio::time::timeout(CALL_DEADLINE, Self::select(q, Arrival::InOrder, cursor, event_from_doc))
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("mongo: search took too long")))
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        let found = bounded(self.events.find_one(doc! {"id": id, "void": {"$ne": true}})).await?;
        found.as_ref().map(event_from_doc).transpose()
    }

    async fn feed(&self, q: &FeedQuery) -> Result<Vec<Event>> {
        let mut filter = doc! {"_id": {"$gt": q.after_seq as i64}, "void": {"$ne": true}};
        if self.standalone {
            filter.insert("_id", doc! {"$gt": q.after_seq as i64, "$lte": self.stable_head().await? as i64});
        }
        if let Some(d) = &q.topic.domain {
            filter.insert("d", d);
        }
        if let Some(t) = &q.topic.ty {
            filter.insert("t", t);
        }
        if let Some(k) = &q.key {
            filter.insert("k", k);
        }
        if let Some(t) = q.from_time {
            filter.insert("time", doc! {"$gte": t});
        }
        let limit = q.limit.min(FEED_PAGE * 16) as i64;
        if limit == 0 {
            return Ok(vec![]);
        }
        let run = async {
            let cursor = self
                .events
                .find(filter)
                .sort(doc! {"_id": 1})
                .limit(limit)
                .await
                .map_err(db_error)?;
            let docs: Vec<Document> = cursor.try_collect().await.map_err(db_error)?;
            docs.iter().map(event_from_doc).collect()
        };
        tokio::time::timeout(CALL_DEADLINE, run)
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("mongo: feed read took too long")))
    }

    async fn head(&self) -> Result<u64> {
        if self.standalone {
            return self.stable_head().await;
        }
        let counter = bounded(self.counters.find_one(doc! {"_id": "seq"})).await?;
        Ok(counter.and_then(|d| d.get_i64("n").ok()).unwrap_or(0) as u64)
    }

    async fn ping(&self) -> Result<()> {
        bounded(self.client.database("admin").run_command(doc! {"ping": 1}))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bson_copy_is_exact_or_absent() {
        let ok = json!({"a": 1, "b": [1.5, "x", null, {"c": true}]});
        assert!(to_bson_doc(ok.as_object().unwrap()).is_some());
        for bad in [json!({"a.b": 1}), json!({"$x": 1}), json!({"n": u64::MAX}), json!({"o": {"": 1}})] {
            assert!(to_bson_doc(bad.as_object().unwrap()).is_none(), "{bad}");
        }
    }

    #[test]
    fn events_round_trip_through_documents() {
        let e = Event {
            id: "id-1".into(),
            seq: 7,
            record: RecordRef::parse("d", "t", "k").unwrap(),
            values: Some(json!({"n": u64::MAX, "a.b": 1}).as_object().unwrap().clone()),
            claims: json!({"sub": "x"}).as_object().unwrap().clone(),
            time: 123,
            version: 3,
            kind: EventKind::Edit,
            method: "/m".into(),
        };
        let d = event_to_doc(&e);
        assert_eq!(d.get_bool("raw"), Ok(true));
        assert_eq!(event_from_doc(&d).unwrap(), e);
        let _ = mongodb::bson::to_vec(&d).unwrap();
    }
}

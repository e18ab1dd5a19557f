//! `mongo`: events and current states in MongoDB (or a server speaking its
//! wire protocol), through the official `mongodb` driver. Configured as in
//! v0.5.0: `{"name":"mongo","addr":"mongodb://…","database":"…"}`, plus
//! v0.5.0's `client_cert_file` + `client_key_file` (a client certificate,
//! PEM; implies TLS) and `tls_cert` / `tls_key`, which it loaded as that
//! certificate (`model::spec::client_certificate`). TLS otherwise comes
//! from the connection string (`tls=true`, `tlsCAFile=…`).
//!
//! Collections:
//! - `events`: one document per event, `_id` = its seq; unique indexes on
//!   the event id and on (domain, type, key, version);
//! - `states`: one document per record ever written (kept after deletion
//!   with `live: false`, so a recreated record continues its numbering);
//! - `counters`: the global seq counter, `{_id: "seq", n}`;
//! - `idempotency`: `{_id: key, fp, seq}`;
//! - `groups`: consumer-group documents, `{_id: name, v, doc}`; each store
//!   is one single-document write (an insert, or an update matching the
//!   expected `v`), atomic on a standalone server too.
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
//!
//! Files, one idea each: `transaction` (the append on a replica set),
//! `standalone` (the append without transactions), `repair` (the stable
//! head and states repaired from events, standalone only), `codec` (events
//! and states as BSON documents), `read_at` (reads at a store position,
//! from the events), `query` (searches and the feed as server
//! filters, and their pages), `v050` (reading v0.5.0's collections for
//! `stategate migrate v050`).

mod codec;
mod query;
mod read_at;
mod repair;
mod standalone;
mod transaction;
pub mod v050;

use super::{FEED_PAGE, GroupDoc, Storage};
use crate::model::{
    AtSeq, Appended, AppendRequest, Arrival, CatalogEntry, Error, Event, EventQuery, FeedQuery, RecordRef, Result, State, StateQuery,
};
use async_trait::async_trait;
use codec::{event_from_doc, state_from_doc};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
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
    groups: Collection<Document>,
}

/// `{"name":"mongo","addr":"mongodb://…","database":"…"}`, v0.5.0's keys.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// A `mongodb://` (or `mongodb+srv://`) connection string.
    pub addr: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default)]
    pub client_cert_file: Option<String>,
    #[serde(default)]
    pub client_key_file: Option<String>,
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
}

fn default_database() -> String {
    "stategate".to_owned()
}

impl MongoConfig {
    /// `{"name":"mongo","addr":…}` with the default database and no
    /// certificate.
    pub fn at(addr: &str, database: &str) -> Self {
        MongoConfig {
            addr: addr.to_owned(),
            database: database.to_owned(),
            client_cert_file: None,
            client_key_file: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    /// The client certificate and key files, if any.
    pub fn client_certificate(&self) -> Result<Option<(String, String)>> {
        crate::model::spec::client_certificate(&self.client_cert_file, &self.client_key_file, &self.tls_cert, &self.tls_key)
    }

    pub async fn build(&self) -> Result<MongoStorage> {
        MongoStorage::connect(&self.addr, &self.database, self.client_certificate()?).await
    }

    /// A client of the server (for the v0.5.0 importer, which reads its
    /// collections).
    pub async fn client(&self) -> Result<Client> {
        client(&self.addr, self.client_certificate()?).await
    }
}

/// A client for `addr`, with a client certificate when given. The driver
/// takes the certificate and key as one PEM file, read when the client is
/// made: the two files are joined into a private temporary file that is
/// removed right after.
async fn client(addr: &str, cert: Option<(String, String)>) -> Result<Client> {
    let mut options = ClientOptions::parse(addr)
        .await
        .map_err(|e| Error::invalid("addr", format!("not a usable MongoDB connection string: {e}")))?;
    options.server_selection_timeout.get_or_insert(SELECTION_TIMEOUT);
    options.connect_timeout.get_or_insert(SELECTION_TIMEOUT);
    options.app_name.get_or_insert_with(|| "stategate".to_owned());
    let Some((cert, key)) = cert else {
        return Client::with_options(options).map_err(|e| Error::invalid("addr", e.to_string()));
    };
    let read = |field: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| Error::invalid(field, format!("{path}: {e}")))
    };
    let mut pem = read("client_cert_file", &cert)?;
    pem.push(b'\n');
    pem.extend(read("client_key_file", &key)?);
    let joined = std::env::temp_dir().join(format!("stategate-mongo-{}.pem", uuid::Uuid::new_v4()));
    write_private(&joined, &pem).map_err(|e| Error::invalid("client_cert_file", format!("{}: {e}", joined.display())))?;
    let mut tls = match options.tls.take() {
        Some(mongodb::options::Tls::Enabled(t)) => t,
        _ => mongodb::options::TlsOptions::default(),
    };
    tls.cert_key_file_path = Some(joined.clone());
    options.tls = Some(mongodb::options::Tls::Enabled(tls));
    let made = Client::with_options(options).map_err(|e| Error::invalid("client_cert_file", e.to_string()));
    let _ = std::fs::remove_file(&joined);
    made
}

/// Creates `path` readable by this user only and writes `bytes` to it.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    open.open(path)?.write_all(bytes)
}

impl MongoStorage {
    /// Connects, checks that the server runs transactions, and creates the
    /// indexes. `addr` is a `mongodb://` connection string.
    pub async fn open(addr: &str, database: &str) -> Result<Self> {
        Self::connect(addr, database, None).await
    }

    async fn connect(addr: &str, database: &str, cert: Option<(String, String)>) -> Result<Self> {
        if database.is_empty() || database.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
            return Err(Error::invalid(
                "database",
                format!("{database:?} is not a valid MongoDB database name"),
            ));
        }
        let client = client(addr, cert).await?;
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
            groups: db.collection("groups"),
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
                    // A record's last event up to a seq (`read_at`).
                    plain(doc! {"d": 1, "t": 1, "k": 1, "_id": 1}),
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
                    values: values.into_values(),
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
        let cursor = bounded(self.states.find(query::states(q)).sort(doc! {"k": 1})).await?;
        // Documents come by key (the unique index's order). A field sort is
        // not pushed to the server: MongoDB orders arrays by their least or
        // greatest element and objects field by field, and values without
        // an exact BSON copy not at all, unlike `model::query::compare_values`,
        // the one order every provider answers in. So the page keeps the top
        // offset + limit states as they stream past, never the whole type.
        let arrival = if q.sort.is_some() { Arrival::AnyOrder } else { Arrival::InOrder };
        let run = query::select(q, arrival, cursor, state_from_doc);
        tokio::time::timeout(CALL_DEADLINE, run)
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("mongo: search took too long")))
    }

    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        self.get_at_seq(record, at).await
    }

    async fn search_states_at(&self, q: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        self.search_at_seq(q, at).await
    }

    async fn seq_at_time(&self, domain: &str, ty: &str, time: i64) -> Result<u64> {
        self.seq_at(domain, ty, time).await
    }

    async fn search_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let cursor = bounded(self.events.find(query::events(q)).sort(doc! {"_id": 1})).await?;
        tokio::time::timeout(CALL_DEADLINE, query::select(q, q.seq_arrival(), cursor, event_from_doc))
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("mongo: search took too long")))
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        let found = bounded(self.events.find_one(doc! {"id": id, "void": {"$ne": true}})).await?;
        found.as_ref().map(event_from_doc).transpose()
    }

    async fn feed(&self, q: &FeedQuery) -> Result<Vec<Event>> {
        let stable = match self.standalone {
            true => Some(self.stable_head().await?),
            false => None,
        };
        let limit = q.limit.min(FEED_PAGE * 16) as i64;
        if limit == 0 {
            return Ok(vec![]);
        }
        let run = async {
            let cursor = self
                .events
                .find(query::feed(q, stable))
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

    async fn catalog(&self, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
        let mut events = doc! {"void": {"$ne": true}};
        let mut states = doc! {"live": true};
        if let Some(d) = domain {
            events.insert("d", d);
            states.insert("d", d);
        }
        if self.standalone {
            // Only what readers may see (the stable head), with the states
            // made whole up to it, as a search would.
            self.repair().await?;
            events.insert("_id", doc! {"$lte": self.stable_head().await? as i64});
        }
        let by_events = vec![
            doc! {"$match": events},
            doc! {"$group": {"_id": {"d": "$d", "t": "$t"}, "n": {"$sum": 1}, "last": {"$max": "$time"}}},
        ];
        let by_states = vec![
            doc! {"$match": states},
            doc! {"$group": {"_id": {"d": "$d", "t": "$t"}, "n": {"$sum": 1}}},
        ];
        let run = async {
            let events: Vec<Document> = self.events.aggregate(by_events).await?.try_collect().await?;
            let states: Vec<Document> = self.states.aggregate(by_states).await?.try_collect().await?;
            Ok::<_, mongodb::error::Error>((events, states))
        };
        let (events, states) = tokio::time::timeout(CALL_DEADLINE, run)
            .await
            .unwrap_or_else(|_| Err(mongodb::error::Error::custom("the catalog took too long")))
            .map_err(db_error)?;
        let name = |d: &Document| -> Result<(String, String)> {
            let id = d.get_document("_id").map_err(|e| db_error(corrupt(e)))?;
            let text = |k: &str| id.get_str(k).map(str::to_owned).map_err(|e| db_error(corrupt(e)));
            Ok((text("d")?, text("t")?))
        };
        let int = |d: &Document, k: &str| match d.get(k) {
            Some(mongodb::bson::Bson::Int32(n)) => Ok(i64::from(*n)),
            Some(mongodb::bson::Bson::Int64(n)) => Ok(*n),
            other => Err(db_error(corrupt(format!("{k}: {other:?}")))),
        };
        let mut records = std::collections::HashMap::new();
        for d in &states {
            records.insert(name(d)?, int(d, "n")? as u64);
        }
        let mut entries = events
            .iter()
            .map(|d| {
                let (domain, ty) = name(d)?;
                Ok(CatalogEntry {
                    records: records.get(&(domain.clone(), ty.clone())).copied().unwrap_or(0),
                    domain,
                    ty,
                    events: int(d, "n")? as u64,
                    last_event_time: int(d, "last")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        crate::model::catalog::sort(&mut entries);
        Ok(entries)
    }

    async fn group_load(&self, name: &str) -> Result<Option<GroupDoc>> {
        let Some(d) = bounded(self.groups.find_one(doc! {"_id": name})).await? else { return Ok(None) };
        let version = d.get_i64("v").map_err(|e| db_error(corrupt(e)))? as u64;
        let bytes = d.get_binary_generic("doc").map_err(|e| db_error(corrupt(e)))?.clone();
        Ok(Some(GroupDoc { version, bytes }))
    }

    async fn group_store(&self, name: &str, expected: u64, bytes: &[u8]) -> Result<u64> {
        let data = mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: bytes.to_vec() };
        if expected == 0 {
            match tokio::time::timeout(CALL_DEADLINE, self.groups.insert_one(doc! {"_id": name, "v": 1i64, "doc": data}).into_future()).await {
                Ok(Ok(_)) => return Ok(1),
                Ok(Err(e)) if is_duplicate_key(&e) => {}
                Ok(Err(e)) => return Err(db_error(e)),
                Err(_) => return Err(Error::unavailable(format!("mongo: no answer within {CALL_DEADLINE:?}"))),
            }
        } else {
            let done = bounded(
                self.groups
                    .update_one(doc! {"_id": name, "v": expected as i64}, doc! {"$set": {"doc": data}, "$inc": {"v": 1i64}}),
            )
            .await?;
            if done.matched_count == 1 {
                return Ok(expected + 1);
            }
        }
        let current = self.group_load(name).await?.map(|g| g.version);
        Err(super::group_conflict(name, expected, current))
    }

    async fn ping(&self) -> Result<()> {
        bounded(self.client.database("admin").run_command(doc! {"ping": 1}))
            .await
            .map(|_| ())
    }
}

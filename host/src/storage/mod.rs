//! Storage providers: where events and current states live.
//!
//! The event log is the source of truth. `append` writes one event and the
//! resulting current state (or its removal) as one atomic step, after
//! checking the expected version and the idempotency key in the same step, or
//! fails having written nothing. It returns only once the write is durable,
//! because the gateway acknowledges a write as soon as `append` returns.
//!
//! Every event gets a `seq`, its position in the store's total order. Catch-up
//! streams rely on one more promise: **if an event with seq N is visible to a
//! reader, so is every event with a smaller seq.** (Assign seqs in commit
//! order: one writer, or a counter updated inside the transaction.)
//!
//! **Reads at a position.** `get_at` and `search_states_at` answer with the
//! store position (`seq`) their answer reflects: every event with a seq up
//! to it, and none after. Read now (`at = None`), that is what makes
//! snapshot-then-watch exact: a stream resuming after that seq delivers
//! exactly the changes the answer does not hold (none missed, none twice).
//! A provider reads the head and the data in one snapshot (one transaction,
//! one lock); one that cannot gets `history`'s bracketed read: the head read
//! before and after the data, equal only if nothing was committed in
//! between, else the answer is rebuilt from history at the later head.
//! Read at a past seq (`at = Some(s)`, point-in-time reads), the answer is
//! each record as its latest event with seq <= s left it (absent if that
//! event deleted it), found through an index on (record, seq), so the cost
//! grows with the number of records read, and with a record's history only
//! logarithmically. `s` never exceeds the head (the gateway checks).
//! `seq_at_time` turns a time into such a seq for one domain and type.
//!
//! Searches mean the same on every provider because none decides them
//! alone: a provider translates a query exactly or reads a superset from its
//! backend and lets the query choose (`model::query`: `matches`, and
//! `Select` for the page, which holds at most offset + limit items).
//!
//! **Consumer-group documents.** `group_load` / `group_store` keep one
//! small versioned document per consumer group (`gateway::group` owns what
//! is in it): a store succeeds only if the stored version is the one the
//! writer read (0: none yet), atomically, and then the version is one more;
//! otherwise it is `VersionConflict` and nothing changed. Instances share a
//! group through these compare-and-set writes alone, with no leader. The
//! documents live apart from events: never in a feed, a search, a stream or
//! the catalog.
//!
//! Each provider lives in its own module (a file, or a folder for mongo);
//! `conformance` (in the integration tests) holds the one test suite every
//! provider must pass.

pub mod file_lock;
pub mod history;
pub mod memory;
#[cfg(feature = "mongo")]
pub mod mongo;
#[cfg(feature = "sql")]
pub mod mysql;
#[cfg(feature = "sql")]
pub mod postgres;
#[cfg(feature = "sql")]
pub mod sql;
pub mod sqlite;
#[cfg(feature = "wasm")]
pub mod wasm;
pub mod writer_queue;

use crate::model::{
    AtSeq, Appended, AppendRequest, CatalogEntry, Error, Expect, Event, EventQuery, FeedQuery, RecordRef, Result, State, StateQuery, StoredState, Topic,
};
use crate::wasm::WasmRuntime;
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The provider's name, for logs, metrics and `/readyz`.
    fn name(&self) -> &str;

    /// Appends an event and updates the current state, atomically.
    /// `VersionConflict` when `req.expect` does not hold; an idempotent retry
    /// returns the first append's event with `replayed = true`.
    async fn append(&self, req: AppendRequest) -> Result<Appended>;

    /// The current state of a record, if it has one.
    async fn get(&self, record: &RecordRef) -> Result<Option<State>>;

    /// Current states of one domain and type matching the query, in the
    /// query's sort order (by key when it has none), after offset, up to limit.
    async fn search_states(&self, query: &StateQuery) -> Result<Vec<State>>;

    /// A record's state at a store position: now (`at = None`) with the seq
    /// the answer reflects, or as the record was after event `at` (from
    /// history). `at` is at most the head. See the module comment.
    ///
    /// The default reads now by `history::bracketed` and the past by
    /// replaying the record's type from the feed (`history::replay_get`),
    /// whose cost grows with that history: every provider here answers
    /// from an index instead (a wasm guest built against WIT 0.3.0 too;
    /// older guests get the replay).
    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        match at {
            None => history::bracketed_get(self, record).await,
            Some(seq) => Ok(AtSeq { value: history::replay_get(self, record, seq).await?, seq }),
        }
    }

    /// `get_at` for a caller that passes the values on without reading
    /// them: a provider that holds them as JSON text may answer
    /// `StoredState::Text`, unparsed (sqlite, postgres and mysql do); the
    /// default answers `get_at`'s parsed state. See `model::StoredState`.
    async fn get_text_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<StoredState>>> {
        Ok(parsed_answer(self.get_at(record, at).await?))
    }

    /// `search_states` at a store position, like `get_at`.
    async fn search_states_at(&self, query: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        match at {
            None => history::bracketed_search(self, query).await,
            Some(seq) => Ok(AtSeq { value: history::replay_search(self, query, seq).await?, seq }),
        }
    }

    /// The seq a point-in-time read at `time` answers at, for one domain and
    /// type: that of its last event stamped at or before `time` (by time,
    /// then seq), 0 when there is none. The default asks `search_events`.
    async fn seq_at_time(&self, domain: &str, ty: &str, time: i64) -> Result<u64> {
        history::seq_at_time_by_search(self, domain, ty, time).await
    }

    /// Events matching the query, oldest (lowest seq) first.
    async fn search_events(&self, query: &EventQuery) -> Result<Vec<Event>>;

    async fn get_event(&self, id: &str) -> Result<Option<Event>>;

    /// Events after a position, lowest seq first: the catch-up feed.
    async fn feed(&self, query: &FeedQuery) -> Result<Vec<Event>>;

    /// The highest seq appended so far (0 when empty).
    async fn head(&self) -> Result<u64>;

    /// The domains and types that hold events (only `domain`'s when set),
    /// with their counts, in catalog order (`model::catalog`).
    ///
    /// The default reads the whole feed (of `domain`, when set), every
    /// event once in pages of `FEED_PAGE`, keeping one flag per record: its
    /// cost grows with the history, not with the number of types. A wasm
    /// provider gets this (WIT 0.1.0 has no such call); the native
    /// providers answer from their indexes instead.
    async fn catalog(&self, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
        catalog_from_feed(self, domain).await
    }

    /// A consumer group's document and its version (see the module
    /// comment), if one was stored.
    ///
    /// The default refuses; every provider here keeps them (a wasm
    /// provider in a reserved record, `storage::wasm`).
    async fn group_load(&self, name: &str) -> Result<Option<GroupDoc>> {
        let _ = name;
        Err(groups_unsupported(self.name()))
    }

    /// Stores `doc` as group `name`'s document if its version is `expected`
    /// (0: no document yet); returns the new version (`expected + 1`).
    /// `VersionConflict` (writing nothing) when the version is another.
    async fn group_store(&self, name: &str, expected: u64, doc: &[u8]) -> Result<u64> {
        let _ = (name, expected, doc);
        Err(groups_unsupported(self.name()))
    }

    /// Cheap round trip to the backend, for `/readyz`.
    async fn ping(&self) -> Result<()>;

    /// Flushes and releases the backend at shutdown.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

pub type DynStorage = Arc<dyn Storage>;

/// A stored consumer-group document (`Storage::group_load`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDoc {
    /// 1 after the first store, +1 on every store.
    pub version: u64,
    pub bytes: Vec<u8>,
}

/// The refusal of a provider that keeps no consumer groups.
pub fn groups_unsupported(provider: &str) -> Error {
    Error::invalid(
        "group",
        format!("the storage provider {provider} keeps no consumer groups"),
    )
}

/// The conflict of a group store whose expected version did not hold.
pub fn group_conflict(name: &str, expected: u64, current: Option<u64>) -> Error {
    Error::VersionConflict {
        record: format!("consumer group {name}"),
        expected: if expected == 0 { "no document".to_owned() } else { format!("version {expected}") },
        current: current.map_or_else(|| "no document".to_owned(), |v| format!("version {v}")),
    }
}

crate::provider_spec! {
    /// `STATEGATE_STORAGE_PROVIDER`, parsed once when the configuration is read:
    /// one variant per provider, each with its own typed options, unknown keys
    /// refused (naming the key and listing the known ones). Each options struct
    /// builds its provider, so adding a provider is a variant here, a file, and
    /// nothing else.
    #[derive(Debug, Clone, PartialEq)]
    pub enum StorageSpec {
        /// The embedded durable default.
        Sqlite(sqlite::SqliteConfig) = "sqlite",
        Inmem(memory::MemoryConfig) = "inmem" | "memory",
        Mongo(mongo::MongoConfig) = "mongo" if feature = "mongo",
        Postgres(postgres::PostgresConfig) = "postgres" | "postgresql" if feature = "sql",
        Mysql(mysql::MysqlConfig) = "mysql" | "mariadb" if feature = "sql",
        Wasm(crate::wasm::GuestConfig) = "wasm" if feature = "wasm",
    }
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec::Sqlite(sqlite::SqliteConfig::default())
    }
}

/// Storage providers v0.5.0 listed that are not built in, and why.
const NOT_BUILT_IN: &[(&str, &str)] = &[(
    "cassandra",
    "no CQL server can be installed where this gateway is built and tested, so it ships no Cassandra provider; \
     reach Cassandra through a wasm storage provider ({\"name\":\"wasm\",\"path\":…}, see docs/wasm.md)",
)];

impl StorageSpec {
    /// Parses the JSON object of `STATEGATE_STORAGE_PROVIDER`.
    pub fn parse(text: &str) -> Result<StorageSpec> {
        let spec: StorageSpec = crate::model::spec::parse("STATEGATE_STORAGE_PROVIDER", text, NOT_BUILT_IN)?;
        #[cfg(feature = "mongo")]
        if let StorageSpec::Mongo(c) = &spec {
            c.client_certificate()
                .map_err(|e| Error::invalid("STATEGATE_STORAGE_PROVIDER", format!("mongo: {e}")))?;
        }
        if let StorageSpec::Sqlite(c) = &spec {
            c.validate()?;
        }
        Ok(spec)
    }

    /// Where the provider keeps the data, for the start-up summary
    /// (passwords in addresses replaced by `***`).
    #[cfg_attr(not(all(feature = "mongo", feature = "sql")), allow(unused_variables))]
    pub fn location(&self, data_dir: &Path) -> String {
        let addr = crate::model::spec::redacted_address;
        match self {
            StorageSpec::Sqlite(c) => c.file(data_dir).display().to_string(),
            StorageSpec::Inmem(_) => "process memory (lost at exit)".to_owned(),
            #[cfg(feature = "mongo")]
            StorageSpec::Mongo(c) => format!("{} database {}", addr(&c.addr), c.database),
            #[cfg(feature = "sql")]
            StorageSpec::Postgres(c) => format!("{} schema {}", addr(&c.addr), c.schema),
            #[cfg(feature = "sql")]
            StorageSpec::Mysql(c) => addr(&c.addr),
            #[cfg(feature = "wasm")]
            StorageSpec::Wasm(c) => c.path.display().to_string(),
        }
    }

    /// Opens the provider; `data_dir` holds the default sqlite file, `wasm`
    /// runs a wasm provider.
    #[cfg_attr(not(feature = "wasm"), allow(unused_variables))]
    pub async fn open(&self, data_dir: &Path, wasm: &WasmRuntime) -> Result<DynStorage> {
        Ok(match self {
            StorageSpec::Sqlite(c) => Arc::new(c.build(data_dir)?),
            StorageSpec::Inmem(_) => Arc::new(memory::MemoryStorage::new()),
            #[cfg(feature = "mongo")]
            StorageSpec::Mongo(c) => Arc::new(c.build().await?),
            #[cfg(feature = "sql")]
            StorageSpec::Postgres(c) => Arc::new(c.build().await?),
            #[cfg(feature = "sql")]
            StorageSpec::Mysql(c) => Arc::new(c.build().await?),
            #[cfg(feature = "wasm")]
            StorageSpec::Wasm(c) => Arc::new(wasm::WasmStorage::open(c, wasm).await?),
        })
    }
}

/// `get_at`'s answer as `get_text_at`'s: the values already parsed (the
/// trait's default, and a provider's reads in the past).
pub fn parsed_answer(read: AtSeq<Option<State>>) -> AtSeq<Option<StoredState>> {
    read.map(|found| found.map(StoredState::Parsed))
}

/// A provider's version and stored JSON text of `record` as `get_text_at`'s
/// answer, unparsed.
pub fn text_answer(record: &RecordRef, read: AtSeq<Option<(u64, String)>>) -> AtSeq<Option<StoredState>> {
    read.map(|found| found.map(|(version, values)| StoredState::Text { record: record.clone(), version, values }))
}

/// The error for a failed expected-version check, shared by all providers.
pub fn conflict(req: &AppendRequest, current: Option<u64>) -> Error {
    conflict_with(&req.record, req.expect, current)
}

pub fn conflict_with(record: &RecordRef, expect: Expect, current: Option<u64>) -> Error {
    Error::VersionConflict {
        record: record.to_string(),
        expected: expect.describe(),
        current: current.map_or_else(|| "no state".to_owned(), |v| format!("version {v}")),
    }
}

pub fn idempotency_mismatch(key: &str) -> Error {
    Error::invalid(
        "idempotency_key",
        format!("{key:?} was already used for a different request"),
    )
}

/// The catalog computed from the feed (see `Storage::catalog`).
pub async fn catalog_from_feed<S: Storage + ?Sized>(storage: &S, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
    let mut tally = crate::model::catalog::Tally::default();
    let mut query = FeedQuery {
        topic: Topic {
            domain: domain.map(str::to_owned),
            ty: None,
        },
        key: None,
        after_seq: 0,
        from_time: None,
        limit: FEED_PAGE,
    };
    loop {
        let page = storage.feed(&query).await?;
        let Some(last) = page.last() else { break };
        query.after_seq = last.seq;
        page.iter().for_each(|e| tally.add(e));
    }
    Ok(tally.finish())
}

/// Page size of catch-up reads.
pub const FEED_PAGE: usize = 512;

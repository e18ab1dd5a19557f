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
//! Each provider lives in its own file; `conformance` (in the integration
//! tests) holds the one test suite every provider must pass.

pub mod memory;
pub mod mongo;
pub mod sqlite;
pub mod wasm;

use crate::model::{Appended, AppendRequest, Error, Expect, Event, EventQuery, FeedQuery, RecordRef, Result, State, StateQuery};
use async_trait::async_trait;
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

    /// Events matching the query, oldest (lowest seq) first.
    async fn search_events(&self, query: &EventQuery) -> Result<Vec<Event>>;

    async fn get_event(&self, id: &str) -> Result<Option<Event>>;

    /// Events after a position, lowest seq first: the catch-up feed.
    async fn feed(&self, query: &FeedQuery) -> Result<Vec<Event>>;

    /// The highest seq appended so far (0 when empty).
    async fn head(&self) -> Result<u64>;

    /// Cheap round trip to the backend, for `/readyz`.
    async fn ping(&self) -> Result<()>;

    /// Flushes and releases the backend at shutdown.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

pub type DynStorage = Arc<dyn Storage>;

/// Opens the provider a `STATEGATE_STORAGE_PROVIDER` object names; `None`
/// is the embedded default, sqlite under `data_dir`.
pub async fn open(spec: Option<&serde_json::Map<String, serde_json::Value>>, data_dir: &std::path::Path) -> Result<DynStorage> {
    let name = spec.and_then(|s| s.get("name")).and_then(|n| n.as_str()).unwrap_or("sqlite");
    let text = |key: &str| spec.and_then(|s| s.get(key)).and_then(|v| v.as_str());
    match name {
        "sqlite" => {
            let path = text("path")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| data_dir.join("stategate.db"));
            Ok(Arc::new(sqlite::SqliteStorage::open(path)?))
        }
        "inmem" | "memory" => Ok(Arc::new(memory::MemoryStorage::new())),
        "mongo" => {
            let addr = text("addr").ok_or_else(|| Error::invalid("addr", "the mongo provider needs \"addr\": \"mongodb://host:port\""))?;
            let database = text("database").unwrap_or("stategate");
            Ok(Arc::new(mongo::MongoStorage::open(addr, database).await?))
        }
        "wasm" => Ok(Arc::new(wasm::WasmStorage::open(spec.expect("a named provider has a spec")).await?)),
        other => Err(Error::invalid(
            "name",
            format!("unknown storage provider {other:?}; known: sqlite, inmem (memory), mongo, wasm"),
        )),
    }
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

/// Page size of catch-up reads.
pub const FEED_PAGE: usize = 512;

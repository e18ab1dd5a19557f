//! What the PostgreSQL and MySQL/MariaDB providers share: the connection
//! settings, a small connection pool, the group-commit writer and the
//! decisions it makes for a batch of appends, and the gathering of
//! concurrent point reads into one statement (`point_reads`).
//!
//! **Group commit.** Each gateway has one writer task. It takes every append
//! waiting in its queue (up to a count and a byte budget) and runs them as
//! one transaction: lock the batch's records (and idempotency keys), decide
//! every append in Rust against what it read ([`batch::plan`]), write the
//! events and the new states, commit once. A refused append (version
//! conflict, idempotency mismatch) simply writes nothing, so no savepoints
//! are needed; concurrent appends share the round trips and the commit's
//! flush.
//!
//! **One order across gateways.** The batch takes its seqs from a one-row
//! counter (`seq_counter`) in the same transaction, after everything else is
//! locked and just before it inserts the events. The row lock on the
//! counter is held until the commit, so transactions that take seqs
//! serialize on it: whoever takes seqs after a batch does so after that
//! batch committed (or rolled back, taking its counter update with it).
//! Seqs are therefore handed out in commit order and without gaps, and a
//! reader that sees seq N sees every smaller seq. A `bigserial` would not
//! do: sequence values are taken at insert time and commit out of order.
//!
//! **Locks.** Record rows are locked in one statement in a fixed order (by
//! record hash and key), idempotency keys likewise, the counter last, so
//! two gateways' batches cannot wait on each other in a cycle in the common
//! case; when the database still reports a deadlock or a serialization
//! failure, the whole batch is retried (it wrote nothing).

pub mod batch;
pub mod options;
pub mod point_reads;
pub mod pool;
pub mod writer;

use crate::model::{Arrival, Error, Select, Values};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The 16-byte key of a (domain, type): tables are keyed by it and the
/// record key, so index entries stay small however long the names are
/// (names may be 1 KiB each; three of them would exceed an index entry).
/// Length-prefixed, so no two (domain, type) pairs hash the same input.
pub fn type_hash(domain: &str, ty: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update((domain.len() as u64).to_be_bytes());
    h.update(domain.as_bytes());
    h.update(ty.as_bytes());
    h.finalize()[..16].to_vec()
}

/// The stored key of an idempotency key (any length) in the table.
pub fn idempotency_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Whether a JSON object holds the NUL character in a key or a string
/// anywhere (PostgreSQL's `jsonb` and `text` cannot store it).
pub fn values_have_nul(v: &Values) -> bool {
    v.iter().any(|(k, v)| k.contains('\0') || value_has_nul(v))
}

pub fn value_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(value_has_nul),
        Value::Object(map) => values_have_nul(map),
        _ => false,
    }
}

/// The largest integer magnitude below which every JSON number compares the
/// same as an SQL number as it does in `query::compare_values` (which falls
/// back to f64 when an integer meets a float): 2^53.
pub const EXACT_NUMBERS: f64 = 9_007_199_254_740_992.0;

/// Whether every number in a query value is below [`EXACT_NUMBERS`].
pub fn numbers_exact(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|f| f.abs() < EXACT_NUMBERS),
        Value::Array(items) => items.iter().all(numbers_exact),
        Value::Object(map) => map.values().all(numbers_exact),
        _ => true,
    }
}

/// Whether a failed call may be retried on a fresh connection: the
/// connection itself failed (the server went away, a restart), as opposed
/// to the database refusing the statement.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// The error of a stored row that does not decode.
pub fn corrupt(provider: &str, what: impl std::fmt::Display) -> Error {
    Error::internal(format!("{provider}: stored data is corrupt: {what}"))
}

/// Parses a stored JSON object.
pub fn parse_values(provider: &str, text: &str) -> Result<Values, Error> {
    serde_json::from_str(text).map_err(|e| corrupt(provider, format!("JSON: {e}")))
}

/// Who wrote a schema version, as recorded in `schema_version`.
pub fn gateway_version() -> String {
    format!("stategate {}", env!("CARGO_PKG_VERSION"))
}

/// The refusal to run on a database a newer gateway migrated.
pub fn newer_schema(place: &str, found: i64, writer: &str, latest: i64) -> Error {
    Error::unavailable(format!(
        "{place} is at schema version {found} (written by {writer}), newer than this gateway's {latest} ({}): \
         upgrade the gateway, or point it at another database",
        gateway_version()
    ))
}

/// Reads the rows of a search into its page. When the SQL did everything
/// (`exact`: filter, order, offset and limit), the rows are the page, and
/// each is still checked by the query: one it rejects means the pushdown
/// and the shared matcher disagree, a bug, logged and left out. Otherwise
/// the rows are candidates (a superset, arriving as `arrival` says) from
/// which the query picks its page, reading no further than it needs.
pub async fn select<Q: Select, R>(
    provider: &str,
    mut rows: impl futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    decode: impl Fn(&R) -> Result<Q::Item, sqlx::Error>,
    query: &Q,
    exact: bool,
    arrival: Arrival,
) -> Result<Vec<Q::Item>, sqlx::Error> {
    use futures::TryStreamExt;
    if exact {
        let mut out = vec![];
        while let Some(row) = rows.try_next().await? {
            let item = decode(&row)?;
            if query.keeps(&item) {
                out.push(item);
            } else {
                tracing::error!(provider, "a pushed-down query selected a row the shared matcher rejects");
            }
        }
        return Ok(out);
    }
    let mut page = query.page(arrival);
    while let Some(row) = rows.try_next().await? {
        if !page.offer(decode(&row)?) {
            break;
        }
    }
    Ok(page.finish())
}

/// A decoding failure of a stored row, as a driver error.
pub fn decode_error(e: Error) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

//! The PostgreSQL schema and its versioned migrations.
//!
//! Every gateway runs `migrate` at start, in one transaction holding a
//! transaction-level advisory lock named after the schema: gateways starting
//! together take turns, and since PostgreSQL's DDL is transactional, a
//! migration is applied whole or not at all. `schema_version` records the
//! version reached; a database at a version this gateway does not know was
//! migrated by a newer gateway, and this one refuses to start on it rather
//! than write rows the newer schema does not expect.
//!
//! Tables (in the configured schema, reached through `search_path`):
//! - `events`: one row per event, `seq` its primary key; `vals` and `claims`
//!   are the JSON text as written (the truth, returned to clients: key order
//!   and number spelling kept), `doc` and `cdoc` their `jsonb` copies that
//!   queries run on. `dt` is the hash of (domain, type) (`sql::type_hash`).
//! - `states`: one row per record ever written; `vals` NULL once deleted,
//!   the row kept so a recreated record continues its numbering.
//! - `idempotency`: per SHA-256 of an idempotency key, its request
//!   fingerprint and the event it wrote.
//! - `seq_counter`: the one row every append batch increments (see
//!   `storage::sql`).
//! - `groups` (version 3): one versioned document per consumer group.

use crate::model::{Error, Result};
use crate::storage::sql::{gateway_version, newer_schema};
use sqlx::{Connection, PgConnection, Row};

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
CREATE TABLE events (
    seq     bigint PRIMARY KEY,
    id      text NOT NULL UNIQUE,
    dt      bytea NOT NULL,
    domain  text COLLATE "C" NOT NULL,
    type    text COLLATE "C" NOT NULL,
    key     text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    kind    text NOT NULL,
    method  text NOT NULL,
    time    bigint NOT NULL,
    vals    text,
    doc     jsonb,
    claims  text NOT NULL,
    cdoc    jsonb NOT NULL,
    UNIQUE (dt, key, version)
);
CREATE INDEX events_by_type_seq ON events (dt, seq);
CREATE INDEX events_by_type_time ON events (dt, time);
CREATE INDEX events_by_domain_seq ON events (domain, seq);
CREATE TABLE states (
    dt      bytea NOT NULL,
    key     text COLLATE "C" NOT NULL,
    domain  text COLLATE "C" NOT NULL,
    type    text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    vals    text,
    doc     jsonb,
    PRIMARY KEY (dt, key)
);
CREATE TABLE idempotency (
    h           bytea PRIMARY KEY,
    fingerprint text,
    event_id    text
);
CREATE TABLE seq_counter (
    id int PRIMARY KEY CHECK (id = 1),
    n  bigint NOT NULL
);
INSERT INTO seq_counter VALUES (1, 0);
"#,
    // 2: a record's events by seq, for reads as of a past seq (one descent
    // per record instead of a replay of the type's history).
    "CREATE INDEX events_by_record_seq ON events (dt, key, seq);",
    // 3: consumer-group documents (`Storage::group_store`).
    r#"
CREATE TABLE groups (
    name    text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    doc     bytea NOT NULL
);
"#,
];

/// The schema version this gateway writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Whether `name` may name the schema: a plain lower-case identifier, so it
/// needs no quoting in `search_path` or DDL.
pub fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
        && !name.starts_with("pg_")
}

/// Creates the schema and applies the migrations it lacks (see the module
/// comment). `schema` was checked by [`valid_schema_name`].
pub async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<()> {
    let e = super::db_error;
    let mut tx = conn.begin().await.map_err(e)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('stategate-migrate:' || $1, 0))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path = {schema};
         CREATE TABLE IF NOT EXISTS schema_version (
             id      int PRIMARY KEY CHECK (id = 1),
             version bigint NOT NULL,
             gateway text NOT NULL
         );"
    )))
    .execute(&mut *tx)
    .await
    .map_err(e)?;
    let found: Option<(i64, String)> = sqlx::query("SELECT version, gateway FROM schema_version WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await
        .map_err(e)?
        .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
        .map_err(e)?;
    let (current, writer) = found.unwrap_or((0, String::new()));
    if current > LATEST {
        return Err(newer_schema(&format!("schema {schema}"), current, &writer, LATEST));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*migration)).execute(&mut *tx).await.map_err(|err| {
            Error::unavailable(format!("postgres: migration {} of schema {schema} failed: {err}", i + 1))
        })?;
    }
    if current < LATEST {
        sqlx::query(
            "INSERT INTO schema_version (id, version, gateway) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, gateway = excluded.gateway",
        )
        .bind(LATEST)
        .bind(gateway_version())
        .execute(&mut *tx)
        .await
        .map_err(e)?;
        tracing::info!(schema, from = current, to = LATEST, "postgres: schema migrated");
    }
    tx.commit().await.map_err(e)
}

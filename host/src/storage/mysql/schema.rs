//! The MySQL/MariaDB schema and its versioned migrations.
//!
//! Every gateway runs `migrate` at start holding a named lock
//! (`GET_LOCK('stategate-migrate:<md5 of the database>')`), so gateways
//! starting together take turns. MySQL's DDL is not transactional, so each
//! migration is written to be re-runnable (`IF NOT EXISTS`, `INSERT
//! IGNORE`): one interrupted half-way is completed by the next start.
//! `schema_version` records the version reached; a database at a version
//! this gateway does not know was migrated by a newer gateway and is refused.
//!
//! Tables (as in the PostgreSQL schema, see `postgres::schema`): `events`,
//! `states`, `idempotency`, `seq_counter`. Names are `VARBINARY` (compared
//! and ordered byte for byte, like Rust strings, and never padded); values
//! and claims are the JSON text as written (`LONGTEXT`), which the JSON
//! functions of both servers read. `key` and `type` are reserved words, so
//! the columns are `rkey` and `rtype`.

use crate::model::{Error, Result};
use crate::storage::sql::{gateway_version, newer_schema};
use sqlx::{MySqlConnection, Row};

/// Migration `i` takes the schema from version `i` to `i + 1`; each is a
/// list of statements.
const MIGRATIONS: &[&[&str]] = &[
    // 1: the initial schema.
    &[
        "CREATE TABLE IF NOT EXISTS events (
            seq     BIGINT NOT NULL PRIMARY KEY,
            id      VARBINARY(255) NOT NULL,
            dt      BINARY(16) NOT NULL,
            domain  VARBINARY(1024) NOT NULL,
            rtype   VARBINARY(1024) NOT NULL,
            rkey    VARBINARY(1024) NOT NULL,
            version BIGINT NOT NULL,
            kind    VARCHAR(8) NOT NULL,
            method  VARBINARY(2048) NOT NULL,
            time    BIGINT NOT NULL,
            vals    LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            claims  LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            UNIQUE KEY events_by_id (id),
            UNIQUE KEY events_by_record (dt, rkey, version),
            KEY events_by_type_seq (dt, seq),
            KEY events_by_type_time (dt, time),
            KEY events_by_domain_seq (domain, seq)
        ) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS states (
            dt      BINARY(16) NOT NULL,
            rkey    VARBINARY(1024) NOT NULL,
            domain  VARBINARY(1024) NOT NULL,
            rtype   VARBINARY(1024) NOT NULL,
            version BIGINT NOT NULL,
            vals    LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            PRIMARY KEY (dt, rkey)
        ) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS idempotency (
            h           BINARY(32) NOT NULL PRIMARY KEY,
            fingerprint VARBINARY(128) NULL,
            event_id    VARBINARY(255) NULL
        ) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS seq_counter (
            id INT NOT NULL PRIMARY KEY,
            n  BIGINT NOT NULL
        ) ENGINE = InnoDB",
        "INSERT IGNORE INTO seq_counter VALUES (1, 0)",
    ],
    // 2: a record's events by seq, for reads as of a past seq (one descent
    // per record instead of a replay of the type's history).
    &["CREATE INDEX events_by_record_seq ON events (dt, rkey, seq)"],
    // 3: consumer-group documents (`Storage::group_store`).
    &[
        "CREATE TABLE IF NOT EXISTS consumer_groups (
            name    VARBINARY(1024) NOT NULL PRIMARY KEY,
            version BIGINT NOT NULL,
            doc     LONGBLOB NOT NULL
        ) ENGINE = InnoDB",
    ],
];

/// The schema version this gateway writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Applies the migrations the database lacks (see the module comment).
pub async fn migrate(conn: &mut MySqlConnection) -> Result<()> {
    let e = super::db_error;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT('stategate-migrate:', MD5(DATABASE())), 60)")
        .fetch_one(&mut *conn)
        .await
        .map_err(e)?;
    if got != Some(1) {
        return Err(Error::unavailable("mysql: another gateway held the migration lock for 60 s"));
    }
    let result = migrate_locked(conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT('stategate-migrate:', MD5(DATABASE())))").execute(&mut *conn).await;
    result
}

async fn migrate_locked(conn: &mut MySqlConnection) -> Result<()> {
    let e = super::db_error;
    let database: Option<String> = sqlx::query_scalar("SELECT DATABASE()").fetch_one(&mut *conn).await.map_err(e)?;
    let Some(database) = database else {
        return Err(Error::invalid("addr", "names no database: use mysql://user@host:3306/<database>"));
    };
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_version (
            id      INT NOT NULL PRIMARY KEY,
            version BIGINT NOT NULL,
            gateway VARCHAR(255) NOT NULL
        ) ENGINE = InnoDB",
    )
    .execute(&mut *conn)
    .await
    .map_err(e)?;
    let found = sqlx::query("SELECT version, gateway FROM schema_version WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(e)?;
    let (current, writer) = match found {
        Some(row) => (row.try_get::<i64, _>(0).map_err(e)?, row.try_get::<String, _>(1).map_err(e)?),
        None => (0, String::new()),
    };
    if current > LATEST {
        return Err(newer_schema(&format!("database {database}"), current, &writer, LATEST));
    }
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        for statement in *statements {
            // MySQL 8 has no `CREATE INDEX IF NOT EXISTS`: an index a
            // half-done run already made is skipped here instead.
            if let Some(name) = created_index(statement)
                && index_exists(conn, name).await?
            {
                continue;
            }
            sqlx::query(*statement).execute(&mut *conn).await.map_err(|err| {
                Error::unavailable(format!("mysql: migration {} of database {database} failed: {err}", i + 1))
            })?;
        }
    }
    if current < LATEST {
        sqlx::query(
            "INSERT INTO schema_version (id, version, gateway) VALUES (1, ?, ?)
             ON DUPLICATE KEY UPDATE version = VALUES(version), gateway = VALUES(gateway)",
        )
        .bind(LATEST)
        .bind(gateway_version())
        .execute(&mut *conn)
        .await
        .map_err(e)?;
        tracing::info!(database, from = current, to = LATEST, "mysql: schema migrated");
    }
    Ok(())
}

/// The index a `CREATE INDEX <name> ON …` statement makes.
fn created_index(statement: &str) -> Option<&str> {
    statement.strip_prefix("CREATE INDEX ")?.split_whitespace().next()
}

async fn index_exists(conn: &mut MySqlConnection, name: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() AND index_name = ?",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await
    .map_err(super::db_error)?;
    Ok(n > 0)
}

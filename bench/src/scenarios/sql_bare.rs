//! The database side of the `postgres` and `mysql` scenarios: the admin
//! connection that makes and drops the run's own schema (PostgreSQL) or
//! database (MySQL/MariaDB), the provider spec pointing a gateway at it, and
//! the "bare database" ceiling: a plain sqlx client, one connection per
//! client, in a closed loop like `load::drive`.
//!
//! What the bare client issues, and why it is a fair ceiling:
//! - for `Set`, what the provider writes for one: an event insert and a
//!   state upsert in one transaction, into `bare_events` / `bare_states`,
//!   copies of the provider's `events` / `states` (same columns, types,
//!   collations and indexes: `LIKE … INCLUDING ALL` / `LIKE`), with the
//!   values a gateway `Set` stores (1 KiB JSON, on PostgreSQL also its
//!   `jsonb` copy, a new key per call as `requests::set_request` does). It
//!   takes seqs from a counter in this process and skips the provider's
//!   record lock and counter row (it needs no order across gateways), so
//!   the ceiling is, if anything, high; the gateway's group commit may still
//!   beat it by sharing one commit among many `Set`s;
//! - for `Get`, the provider's own point read of a seeded state (same
//!   statement, same `states` table, same keys as `requests::get_request`).

use crate::load::{Rng, closed_loop};
use crate::measure::Measured;
use crate::requests::{DOMAIN, Op, RECORD_TYPE, json_values, record_key};
use anyhow::{Context, Result, bail};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, MySqlConnection, PgConnection, Row};
use stategate::storage::sql::type_hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Which server a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Db {
    Postgres,
    Mysql,
}

impl Db {
    pub fn name(self) -> &'static str {
        match self {
            Db::Postgres => "postgres",
            Db::Mysql => "mysql",
        }
    }
}

/// The type of the records a gateway `Set` writes (`requests::set_request`).
const SET_TYPE: &str = "set";
const SET_METHOD: &str = "/stategate.StateService/Set";

/// A connection to the server, as the run's admin or as one bare client.
pub enum Conn {
    Pg(PgConnection),
    My(MySqlConnection),
}

/// Where the run's data lives on one server: the server's URL and the
/// schema (PostgreSQL) or database (MySQL) made for this run.
#[derive(Clone)]
pub struct Place {
    pub db: Db,
    pub url: String,
    /// `bench_<12 hex>`: a plain identifier, no quoting needed.
    pub name: String,
}

impl Place {
    pub fn new(db: Db, url: &str) -> Place {
        Place { db, url: url.to_owned(), name: format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]) }
    }

    /// `STATEGATE_STORAGE_PROVIDER` of a gateway on this place (default
    /// pool size and timeouts: the gateway as deployed).
    pub fn spec(&self) -> Result<serde_json::Value> {
        Ok(match self.db {
            Db::Postgres => serde_json::json!({"name": "postgres", "addr": self.url, "schema": self.name}),
            Db::Mysql => serde_json::json!({"name": "mysql", "addr": with_database(&self.url, &self.name)?}),
        })
    }

    /// A connection to the server; `inside` = into the run's schema or
    /// database (the bare clients), else the URL's own (the admin).
    pub async fn connect(&self, inside: bool) -> Result<Conn> {
        Ok(match self.db {
            Db::Postgres => {
                let mut o: PgConnectOptions = self.url.parse().context("--postgres-url")?;
                o = o.application_name("stategate-bench");
                if inside {
                    o = o.options([("search_path", self.name.as_str())]);
                }
                Conn::Pg(PgConnection::connect_with(&o).await?)
            }
            Db::Mysql => {
                let mut o: MySqlConnectOptions = self.url.parse().context("--mysql-url")?;
                o = o.charset("utf8mb4");
                if inside {
                    o = o.database(&self.name);
                }
                let mut c = MySqlConnection::connect_with(&o).await?;
                // As the provider's connections (see storage::mysql).
                sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut c).await?;
                Conn::My(c)
            }
        })
    }
}

/// `url` with its path (the database) replaced by `db`, query kept.
fn with_database(url: &str, db: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("--mysql-url: expected mysql://user@host:port/db")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let query = rest[end..].find('?').map_or("", |i| &rest[end + i..]);
    Ok(format!("{scheme}://{}/{db}{query}", &rest[..end]))
}

impl Conn {
    /// The server's version and where it keeps its data, for the notes.
    pub async fn describe(&mut self) -> (String, Option<String>) {
        match self {
            Conn::Pg(c) => (
                sqlx::query_scalar::<_, String>("SHOW server_version").fetch_one(&mut *c).await.unwrap_or_default(),
                sqlx::query_scalar::<_, String>("SHOW data_directory").fetch_one(&mut *c).await.ok(),
            ),
            Conn::My(c) => (
                sqlx::query_scalar::<_, String>("SELECT VERSION()").fetch_one(&mut *c).await.unwrap_or_default(),
                sqlx::query_scalar::<_, String>("SELECT @@datadir").fetch_one(&mut *c).await.ok(),
            ),
        }
    }

    /// Makes the MySQL database of `place` (the PostgreSQL provider makes
    /// its schema itself).
    pub async fn create(&mut self, place: &Place) -> Result<()> {
        if let Conn::My(c) = self {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", place.name))).execute(c).await?;
        }
        Ok(())
    }

    /// Drops the schema or database of `place` with everything in it.
    pub async fn drop_place(&mut self, place: &Place) -> Result<()> {
        match self {
            Conn::Pg(c) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {} CASCADE", place.name))).execute(c).await?;
            }
            Conn::My(c) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {}", place.name))).execute(c).await?;
            }
        }
        Ok(())
    }

    /// Creates the bare tables as copies of the provider's (run on a
    /// connection inside the place, after a gateway migrated it).
    pub async fn create_bare_tables(&mut self) -> Result<()> {
        match self {
            Conn::Pg(c) => {
                sqlx::raw_sql(
                    "CREATE TABLE bare_events (LIKE events INCLUDING ALL);
                     CREATE TABLE bare_states (LIKE states INCLUDING ALL);",
                )
                .execute(c)
                .await?;
            }
            Conn::My(c) => {
                sqlx::query("CREATE TABLE bare_events LIKE events").execute(&mut *c).await?;
                sqlx::query("CREATE TABLE bare_states LIKE states").execute(&mut *c).await?;
            }
        }
        Ok(())
    }

    /// Refreshes the planner's statistics of the provider's tables, as an
    /// operator does after a bulk load (autovacuum would within a minute or
    /// so): seeded right before the steps, the tables would otherwise be
    /// planned as the empty tables they were when the gateway created them
    /// (a 10k-event search sorting the whole type: 100 ms instead of 0.3).
    pub async fn analyze(&mut self) -> Result<()> {
        match self {
            Conn::Pg(c) => {
                sqlx::raw_sql("ANALYZE events; ANALYZE states;").execute(c).await?;
            }
            Conn::My(c) => {
                sqlx::query("ANALYZE TABLE events, states").execute(&mut *c).await?;
            }
        }
        Ok(())
    }

    /// One `Set`'s transaction: the event (version = seq: unique per
    /// event, as `(dt, key, version)` must be, even when a later step
    /// writes the same keys again) and the state upsert.
    async fn set(&mut self, seq: i64, client: usize, i: u64) -> Result<(), sqlx::Error> {
        let key = format!("c{client}k{i}");
        let dt = type_hash(DOMAIN, SET_TYPE);
        let vals = serde_json::to_string(&json_values(i, 960)).expect("JSON values serialize");
        let id = uuid::Uuid::now_v7().to_string();
        let time = stategate::model::now_nanos();
        match self {
            Conn::Pg(c) => {
                let mut tx = c.begin().await?;
                sqlx::query(
                    "INSERT INTO bare_events (seq, id, dt, domain, type, key, version, kind, method, time, vals, doc, claims, cdoc)
                     VALUES ($1, $2, $3, $4, $5, $6, $1, 'set', $7, $8, $9, $9::jsonb, '{}', '{}'::jsonb)",
                )
                .bind(seq)
                .bind(&id)
                .bind(&dt)
                .bind(DOMAIN)
                .bind(SET_TYPE)
                .bind(&key)
                .bind(SET_METHOD)
                .bind(time)
                .bind(&vals)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO bare_states (dt, key, domain, type, version, vals, doc) VALUES ($1, $2, $3, $4, $5, $6, $6::jsonb)
                     ON CONFLICT (dt, key) DO UPDATE SET version = excluded.version, vals = excluded.vals, doc = excluded.doc",
                )
                .bind(&dt)
                .bind(&key)
                .bind(DOMAIN)
                .bind(SET_TYPE)
                .bind(seq)
                .bind(&vals)
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
            Conn::My(c) => {
                let mut tx = c.begin().await?;
                sqlx::query(
                    "INSERT INTO bare_events (seq, id, dt, domain, rtype, rkey, version, kind, method, time, vals, claims)
                     VALUES (?, ?, ?, ?, ?, ?, ?, 'set', ?, ?, ?, '{}')",
                )
                .bind(seq)
                .bind(id.as_bytes())
                .bind(&dt)
                .bind(DOMAIN.as_bytes())
                .bind(SET_TYPE.as_bytes())
                .bind(key.as_bytes())
                .bind(seq)
                .bind(SET_METHOD.as_bytes())
                .bind(time)
                .bind(&vals)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO bare_states (dt, rkey, domain, rtype, version, vals) VALUES (?, ?, ?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE version = VALUES(version), vals = VALUES(vals)",
                )
                .bind(&dt)
                .bind(key.as_bytes())
                .bind(DOMAIN.as_bytes())
                .bind(SET_TYPE.as_bytes())
                .bind(seq)
                .bind(&vals)
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
        }
    }

    /// The provider's point read of seeded record `i` (its values read as
    /// text, as the provider reads them before parsing).
    async fn get(&mut self, i: usize) -> Result<(), String> {
        let key = record_key(i);
        let dt = type_hash(DOMAIN, RECORD_TYPE);
        let found = match self {
            Conn::Pg(c) => sqlx::query(stategate::storage::postgres::statements::GET)
                .bind(&dt)
                .bind(&key)
                .bind(DOMAIN)
                .bind(RECORD_TYPE)
                .fetch_optional(c)
                .await
                .and_then(|row| row.map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?))).transpose()),
            Conn::My(c) => sqlx::query(
                "SELECT version, vals FROM states WHERE dt = ? AND rkey = ? AND domain = ? AND rtype = ? AND vals IS NOT NULL",
            )
            .bind(&dt)
            .bind(key.as_bytes())
            .bind(DOMAIN.as_bytes())
            .bind(RECORD_TYPE.as_bytes())
            .fetch_optional(c)
            .await
            .and_then(|row| {
                row.map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>(0)?, r.try_get_unchecked::<String, _>(1)?))).transpose()
            }),
        };
        match found {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("seeded record {key} not found")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The bare clients of one place; seqs of `bare_events` continue across
/// steps.
pub struct Bare {
    pub place: Place,
    seq: Arc<AtomicI64>,
}

impl Bare {
    pub fn new(place: Place) -> Bare {
        Bare { place, seq: Arc::new(AtomicI64::new(0)) }
    }

    /// Runs `clients` closed-loop bare clients (one connection each) of
    /// `op` (`Set` or `Get` of one of `records` seeded records) for
    /// warm-up + measured time, as `load::drive` does over gRPC.
    pub async fn drive(&self, op: Op, clients: usize, warmup: f64, secs: f64, records: usize) -> Result<Measured> {
        if !matches!(op, Op::Set | Op::Get) {
            bail!("the bare database client runs Set and Get only, not {}", op.label());
        }
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            conns.push(self.place.connect(true).await.with_context(|| format!("bare {} client", self.place.db.name()))?);
        }
        let records = records.max(1);
        let seq = self.seq.clone();
        closed_loop(conns, warmup, secs, move |conn: &mut Conn, c, i, rng: &mut Rng| {
            let seq = seq.clone();
            Box::pin(async move {
                match op {
                    Op::Set => conn.set(seq.fetch_add(1, Ordering::Relaxed) + 1, c, i).await.map_err(|e| e.to_string()),
                    _ => conn.get(rng.below(records)).await,
                }
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_mysql_url_gets_the_runs_database() {
        assert_eq!(with_database("mysql://root@127.0.0.1:3306/test", "bench_x").unwrap(), "mysql://root@127.0.0.1:3306/bench_x");
        assert_eq!(with_database("mysql://u:p@h/test?ssl-mode=DISABLED", "b").unwrap(), "mysql://u:p@h/b?ssl-mode=DISABLED");
        assert_eq!(with_database("mysql://u@h:1", "b").unwrap(), "mysql://u@h:1/b");
        assert_eq!(with_database("mysql://u@h:1?x=1", "b").unwrap(), "mysql://u@h:1/b?x=1");
        assert!(with_database("h:1/test", "b").is_err());
    }
}

//! `postgres`: events and current states in PostgreSQL, shared by any number
//! of gateways. `{"name":"postgres","addr":"postgres://user@host:5432/db"}`.
//!
//! Appends go through this gateway's group-commit writer (`storage::sql`):
//! one transaction per batch locks the batch's records (creating their rows
//! if new), decides every append in Rust, then writes the events, states
//! and idempotency entries and bumps the seq counter in one statement, and
//! commits. The counter row, locked until the commit, makes seqs follow
//! commit order across all gateways: a reader that sees seq N sees every
//! smaller seq. With `synchronous_commit = on` (the default; the provider
//! warns at start if it is off) a commit is durable before `append`
//! returns.
//!
//! Reads run on a pool of connections (`sql::pool`). Searches push filters,
//! sort, offset and limit down as SQL over `jsonb` (`query`); a query the
//! SQL cannot express exactly is narrowed in SQL and finished by the shared
//! matcher, which re-checks every row in any case.
//!
//! PostgreSQL's `jsonb` and `text` cannot hold the NUL character, so an
//! append whose names or values contain `\u0000` is refused as invalid
//! (a read for such a name finds nothing).

mod commit;
pub mod query;
pub mod schema;
pub mod statements;

use super::sql::options::{Settings, SslMode, checked_ca_file, without_credentials};
use super::sql::point_reads::{BatchRead, Hit, Lookup, PointReads};
use super::sql::pool::Pool;
use super::sql::writer;
use super::sql::{select, corrupt, decode_error, parse_values, type_hash, values_have_nul};
use super::{GroupDoc, Storage};
use crate::model::{
    AppendRequest, Arrival, AtSeq, Appended, CatalogEntry, Change, Error, Event, EventKind, EventQuery, FeedQuery, RecordRef, Result, State,
    StateQuery, StoredState,
};
use async_trait::async_trait;
use commit::PgCommitter;
use sqlx::postgres::{PgConnectOptions, PgRow, PgSslMode};
use sqlx::{Connection, PgConnection, Row};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const NAME: &str = "postgres";

/// `{"name":"postgres","addr":"postgres://…", …}`; see docs/backends.md.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A `postgres://user[:password]@host[:port]/database[?sslmode=…]` URL.
    pub addr: String,
    /// The schema holding the tables (created if missing).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Pooled read connections (default 16); the writer has one more.
    pub pool_size: Option<u32>,
    /// Writer connections (default 1): with more, one batch locks its
    /// records while the one before it commits.
    pub writers: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
    /// Longest one storage call may take (default 10 s).
    pub call_timeout_ms: Option<u64>,
    /// Overrides the URL's `sslmode`.
    pub sslmode: Option<SslMode>,
    /// CA certificate (PEM) to verify the server with.
    pub ca_file: Option<PathBuf>,
    /// File holding the password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
}

fn default_schema() -> String {
    "stategate".to_owned()
}

impl PostgresConfig {
    pub async fn build(&self) -> Result<PostgresStorage> {
        PostgresStorage::open(self).await
    }

    fn connect_options(&self, settings: &Settings) -> Result<PgConnectOptions> {
        // The URL may hold a password: never echo it.
        let mut options: PgConnectOptions = self
            .addr
            .parse()
            .map_err(|e| Error::invalid("addr", format!("not a usable postgres:// URL: {}", without_credentials(&e))))?;
        if !schema::valid_schema_name(&self.schema) {
            return Err(Error::invalid(
                "schema",
                format!("{:?} must be a lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes, not pg_…)", self.schema),
            ));
        }
        options = options
            .application_name("stategate")
            .options([("search_path", self.schema.as_str())]);
        if let Some(p) = &settings.password {
            options = options.password(p);
        }
        if let Some(mode) = self.sslmode {
            options = options.ssl_mode(match mode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                SslMode::Require => PgSslMode::Require,
                SslMode::VerifyCa => PgSslMode::VerifyCa,
                SslMode::VerifyFull => PgSslMode::VerifyFull,
            });
        }
        if let Some(ca) = &self.ca_file {
            options = options.ssl_root_cert(checked_ca_file(ca)?);
        }
        Ok(options)
    }
}

pub struct PostgresStorage {
    reads: Arc<Pool<PgConnection>>,
    /// Gets, gathered into shared statements on `reads`.
    points: PointReads,
    writer: writer::Queue,
    call_timeout: Duration,
}

impl PostgresStorage {
    pub async fn open(config: &PostgresConfig) -> Result<Self> {
        let settings = Settings::resolve(
            config.pool_size,
            config.writers,
            config.connect_timeout_ms,
            config.call_timeout_ms,
            config.password_file.as_ref(),
            config.password_env.as_deref(),
        )?;
        let options = config.connect_options(&settings)?;
        let connect: super::sql::pool::Connector<PgConnection> = {
            let options = options.clone();
            Box::new(move || {
                let options = options.clone();
                Box::pin(async move { PgConnection::connect_with(&options).await })
            })
        };
        let reads = Arc::new(Pool::new(settings.pool_size, settings.connect_timeout, connect));
        let mut conn = reads.open().await.map_err(db_error)?;
        schema::migrate(&mut conn, &config.schema).await?;
        warn_if_not_durable(&mut conn).await;
        drop(conn);
        let committer = Arc::new(PgCommitter { options, connect_timeout: settings.connect_timeout });
        let writer = writer::spawn(committer, settings.writers, settings.call_timeout, NAME);
        let points = PointReads::spawn(reads.clone(), settings.pool_size, point_read(), settings.call_timeout, db_error, NAME);
        Ok(PostgresStorage { reads, points, writer, call_timeout: settings.call_timeout })
    }

}

/// Runs `$body` (an expression using the connection `$c`, awaiting inside)
/// on a pooled read connection, again on a new connection if the pooled
/// one turned out dead (`sql::pool`), bounded by the call timeout.
macro_rules! read {
    ($self:ident, |$c:ident| $body:expr) => {{
        let call = async {
            let mut lease = $self.reads.lease().await?;
            loop {
                let $c = lease.conn();
                let result: std::result::Result<_, sqlx::Error> = async { $body }.await;
                if !lease.settle(&result).await? {
                    break result;
                }
            }
        };
        match tokio::time::timeout($self.call_timeout, call).await {
            Ok(result) => result.map_err(db_error),
            Err(_) => Err(Error::unavailable(format!("{NAME}: no answer within {:?}", $self.call_timeout))),
        }
    }};
}

/// A read-only REPEATABLE READ transaction: every statement in it sees one
/// snapshot, taken at its first statement.
async fn snapshot(c: &mut PgConnection) -> std::result::Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    let mut tx = c.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    Ok(tx)
}

/// A row of a state search (`key`, `version`, `vals`) as a state of the
/// query's type.
fn search_row(q: &StateQuery) -> impl Fn(&PgRow) -> std::result::Result<State, sqlx::Error> + Copy + '_ {
    move |row| {
        Ok(State {
            record: RecordRef { domain: q.domain.clone(), ty: q.ty.clone(), key: row.try_get(0)? },
            version: row.try_get::<i64, _>(1)? as u64,
            values: parse_values(NAME, row.try_get(2)?).map_err(decode_error)?,
        })
    }
}

/// The statement of a batch of gets (`sql::point_reads`): the lookups as
/// arrays, unnested with their positions and joined to `states` on its
/// primary key, one index probe each.
fn point_read() -> BatchRead<PgConnection> {
    Arc::new(|conn: &mut PgConnection, batch: &[Lookup]| {
        let column = |f: fn(&Lookup) -> &str| batch.iter().map(&f).collect::<Vec<&str>>();
        let dts: Vec<&[u8]> = batch.iter().map(|l| l.dt.as_slice()).collect();
        let (keys, domains, types) = (column(|l| &l.key), column(|l| &l.domain), column(|l| &l.ty));
        Box::pin(async move {
            let rows = sqlx::query(statements::GET_MANY)
                .bind(dts)
                .bind(keys)
                .bind(domains)
                .bind(types)
                .fetch_all(conn)
                .await?;
            let (mut hits, mut head) = (Vec::with_capacity(rows.len()), 0);
            for row in &rows {
                match row.try_get::<i64, _>(0)? {
                    0 => head = row.try_get::<i64, _>(1)? as u64,
                    i => hits.push(Hit { index: i as usize - 1, version: row.try_get(1)?, vals: row.try_get(2)? }),
                }
            }
            Ok((hits, head))
        })
    })
}

async fn warn_if_not_durable(conn: &mut PgConnection) {
    let setting = sqlx::query_scalar::<_, String>("SHOW synchronous_commit").fetch_one(&mut *conn).await;
    if let Ok(s) = setting
        && s == "off"
    {
        tracing::warn!(
            "postgres: synchronous_commit is off: a write acknowledged just before a server crash can be lost"
        );
    }
}

/// A driver error as the gateway's error. Errors in our own statements
/// (class 42: syntax, undefined objects) are internal; everything else
/// means the database cannot serve the call now.
pub(crate) fn db_error(e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &e
        && db.code().is_some_and(|c| c.starts_with("42") || c.starts_with("XX"))
    {
        return Error::internal(format!("{NAME}: {e}"));
    }
    Error::unavailable(format!("{NAME}: {e}"))
}

/// Whether a failed batch may simply run again: a deadlock, a serialization
/// failure, or a unique violation (two gateways creating the same row).
fn transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| matches!(&*c, "40P01" | "40001" | "23505")))
}


fn event_from_row(row: &PgRow) -> std::result::Result<Event, sqlx::Error> {
    let kind: &str = row.try_get(6)?;
    Ok(Event {
        seq: row.try_get::<i64, _>(0)? as u64,
        id: row.try_get(1)?,
        record: RecordRef { domain: row.try_get(2)?, ty: row.try_get(3)?, key: row.try_get(4)? },
        version: row.try_get::<i64, _>(5)? as u64,
        kind: EventKind::parse(kind).ok_or_else(|| decode_error(corrupt(NAME, format!("event kind {kind:?}"))))?,
        method: row.try_get(7)?,
        time: row.try_get(8)?,
        values: row.try_get::<Option<&str>, _>(9)?.map(|t| parse_values(NAME, t)).transpose().map_err(decode_error)?.map(Into::into),
        claims: parse_values(NAME, row.try_get(10)?).map_err(decode_error)?,
    })
}

/// Whether any name holds a NUL character: nothing stored can match it.
fn has_nul(names: &[&str]) -> bool {
    names.iter().any(|n| n.contains('\0'))
}

/// The first part of an append that holds a NUL character, which no text
/// or `jsonb` column of PostgreSQL can store, named as the client sent it:
/// refused as the client's mistake before the transaction, where the
/// server would fail it as an internal error.
fn nul_field(req: &AppendRequest) -> Option<&'static str> {
    let r = &req.record;
    [
        ("domain", r.domain.contains('\0')),
        ("type", r.ty.contains('\0')),
        ("key", r.key.contains('\0')),
        ("values", matches!(&req.change, Change::Put(v) if values_have_nul(v))),
        ("claims", values_have_nul(&req.claims)),
        ("idempotency_key", req.idempotency.as_ref().is_some_and(|i| i.key.contains('\0'))),
        ("method", req.method.contains('\0')),
    ]
    .into_iter()
    .find_map(|(field, nul)| nul.then_some(field))
}

#[async_trait]
impl Storage for PostgresStorage {
    fn name(&self) -> &str {
        NAME
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        if let Some(field) = nul_field(&req) {
            return Err(Error::invalid(field, "PostgreSQL cannot store the NUL character (\\u0000)"));
        }
        self.writer.append(req).await
    }

    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        Ok(self.get_at(record, None).await?.value)
    }

    async fn get_text_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<StoredState>>> {
        // Reads now, the hot path, keep the text; a read in the past (or of
        // a name no row can hold) is `get_at`'s.
        if at.is_some() || has_nul(&[&record.domain, &record.ty, &record.key]) {
            return Ok(super::parsed_answer(self.get_at(record, at).await?));
        }
        self.points.get_stored(record).await
    }

    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        if at.is_none() {
            // A point read now: gathered with the others waiting into one
            // statement, which also reads the head (`point_reads`).
            if has_nul(&[&record.domain, &record.ty, &record.key]) {
                return Ok(AtSeq { value: None, seq: self.head().await? });
            }
            return self.points.get_state(record).await;
        }
        let seq = at.unwrap_or_default();
        if has_nul(&[&record.domain, &record.ty, &record.key]) {
            return Ok(AtSeq { value: None, seq });
        }
        // The record's last event up to `seq` (`events_by_record_seq`).
        let r = record.clone();
        let found = read!(self, |c| {
            sqlx::query(statements::GET_PAST)
            .bind(type_hash(&r.domain, &r.ty))
            .bind(&r.key)
            .bind(seq as i64)
            .fetch_optional(c)
            .await?
            .map(|row| Ok::<_, sqlx::Error>((row.try_get::<i64, _>(0)?, row.try_get::<Option<String>, _>(1)?)))
            .transpose()
        })?;
        let value = match found {
            Some((version, Some(vals))) => Some(State { record: r, version: version as u64, values: parse_values(NAME, &vals)? }),
            _ => None,
        };
        Ok(AtSeq { value, seq })
    }

    async fn search_states_at(&self, q: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        if has_nul(&[&q.domain, &q.ty]) || q.limit == 0 {
            let seq = match at {
                Some(seq) => seq,
                None => self.head().await?,
            };
            return Ok(AtSeq { value: vec![], seq });
        }
        let state = search_row(q);
        let Some(seq) = at else {
            // The search and the head in one REPEATABLE READ snapshot.
            let statements::StateSearch { sql, exact_filter: _, exact_sort, in_sql } = statements::search_states(q);
            let arrival = if exact_sort { Arrival::InOrder } else { Arrival::AnyOrder };
            return read!(self, |c| {
                let mut tx = snapshot(c).await?;
                let seq = sqlx::query_scalar::<_, i64>("SELECT n FROM seq_counter WHERE id = 1").fetch_one(&mut *tx).await?;
                let value = {
                    let rows = sql.bind(sqlx::query(sqlx::AssertSqlSafe(sql.text.as_str()))).fetch(&mut *tx);
                    select(NAME, rows, state, q, in_sql, arrival).await?
                };
                tx.commit().await?;
                Ok(AtSeq { value, seq: seq as u64 })
            });
        };
        // The past: what the events up to `seq` left; those never change,
        // so no snapshot is needed.
        let statements::StateSearch { sql, exact_filter: _, exact_sort, in_sql } = statements::search_states_past(q, seq);
        let arrival = if exact_sort { Arrival::InOrder } else { Arrival::AnyOrder };
        let value = read!(self, |c| {
            let rows = sql.bind(sqlx::query(sqlx::AssertSqlSafe(sql.text.as_str()))).fetch(c);
            select(NAME, rows, state, q, in_sql, arrival).await
        })?;
        Ok(AtSeq { value, seq })
    }

    async fn search_states(&self, q: &StateQuery) -> Result<Vec<State>> {
        if has_nul(&[&q.domain, &q.ty]) || q.limit == 0 {
            return Ok(vec![]);
        }
        let statements::StateSearch { sql, exact_filter: _, exact_sort, in_sql } = statements::search_states(q);
        let state = search_row(q);
        let arrival = if exact_sort { Arrival::InOrder } else { Arrival::AnyOrder };
        read!(self, |c| {
            let rows = sql.bind(sqlx::query(sqlx::AssertSqlSafe(sql.text.as_str()))).fetch(c);
            select(NAME, rows, state, q, in_sql, arrival).await
        })
    }

    async fn search_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        if has_nul(&[&q.domain, &q.ty]) || q.key.as_deref().is_some_and(|k| k.contains('\0')) || q.limit == 0 {
            return Ok(vec![]);
        }
        let (sql, exact) = statements::search_events(q);
        // By a values field: read in seq order, the page chooses.
        let arrival = if q.sorted_by_field() { Arrival::AnyOrder } else { Arrival::InOrder };
        read!(self, |c| {
            let rows = sql.bind(sqlx::query(sqlx::AssertSqlSafe(sql.text.as_str()))).fetch(c);
            select(NAME, rows, event_from_row, q, exact, arrival).await
        })
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        if id.contains('\0') {
            return Ok(None);
        }
        read!(self, |c| {
            let row = sqlx::query(statements::GET_EVENT)
                .bind(id)
                .fetch_optional(c)
                .await?;
            row.as_ref().map(event_from_row).transpose()
        })
    }

    async fn feed(&self, q: &FeedQuery) -> Result<Vec<Event>> {
        let names = [q.topic.domain.as_deref(), q.topic.ty.as_deref(), q.key.as_deref()];
        if names.iter().flatten().any(|n| n.contains('\0')) || q.limit == 0 {
            return Ok(vec![]);
        }
        let sql = statements::feed(q);
        read!(self, |c| {
            let rows = sql.bind(sqlx::query(sqlx::AssertSqlSafe(sql.text.as_str()))).fetch_all(c).await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    async fn catalog(&self, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
        if domain.is_some_and(|d| d.contains('\0')) {
            return Ok(vec![]);
        }
        // Grouped by the type key `dt` (one per domain and type); each
        // type's records are a range of the states' primary key (dt, key).
        let sql = format!(
            "SELECT e.domain, e.type, e.n, e.last, s.n FROM \
               (SELECT dt, min(domain) AS domain, min(type) AS type, count(*) AS n, max(time) AS last \
                FROM events {} GROUP BY dt) e \
             CROSS JOIN LATERAL (SELECT count(*) AS n FROM states WHERE dt = e.dt AND vals IS NOT NULL) s",
            if domain.is_some() { "WHERE domain = $1" } else { "" }
        );
        let mut entries = read!(self, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            if let Some(d) = domain {
                q = q.bind(d);
            }
            let rows = q.fetch_all(c).await?;
            rows.iter()
                .map(|row| {
                    Ok(CatalogEntry {
                        domain: row.try_get(0)?,
                        ty: row.try_get(1)?,
                        events: row.try_get::<i64, _>(2)? as u64,
                        last_event_time: row.try_get(3)?,
                        records: row.try_get::<i64, _>(4)? as u64,
                    })
                })
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        })?;
        crate::model::catalog::sort(&mut entries);
        Ok(entries)
    }

    async fn head(&self) -> Result<u64> {
        // The counter is the highest committed seq (seqs have no gaps).
        let n = read!(self, |c| sqlx::query_scalar::<_, i64>("SELECT n FROM seq_counter WHERE id = 1").fetch_one(c).await)?;
        Ok(n as u64)
    }

    async fn group_load(&self, name: &str) -> Result<Option<GroupDoc>> {
        if name.contains('\0') {
            return Ok(None);
        }
        read!(self, |c| {
            let row = sqlx::query("SELECT version, doc FROM groups WHERE name = $1").bind(name).fetch_optional(c).await?;
            row.map(|r| Ok(GroupDoc { version: r.try_get::<i64, _>(0)? as u64, bytes: r.try_get(1)? })).transpose()
        })
    }

    async fn group_store(&self, name: &str, expected: u64, doc: &[u8]) -> Result<u64> {
        if name.contains('\0') {
            return Err(Error::invalid("group", "must not contain NUL"));
        }
        // One statement: the version check and the write are atomic. A
        // retry after a lost connection may find its own write done and
        // answer a conflict; the caller then reads again.
        let changed = read!(self, |c| {
            let q = if expected == 0 {
                sqlx::query("INSERT INTO groups (name, version, doc) VALUES ($1, 1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .bind(doc)
            } else {
                sqlx::query("UPDATE groups SET version = version + 1, doc = $2 WHERE name = $1 AND version = $3")
                    .bind(name)
                    .bind(doc)
                    .bind(expected as i64)
            };
            q.execute(c).await.map(|r| r.rows_affected())
        })?;
        if changed == 1 {
            return Ok(expected + 1);
        }
        let current = self.group_load(name).await?.map(|g| g.version);
        Err(super::group_conflict(name, expected, current))
    }

    async fn ping(&self) -> Result<()> {
        read!(self, |c| sqlx::query("SELECT 1").execute(c).await.map(|_| ()))
    }

    async fn close(&self) -> Result<()> {
        // The writer finishes what is queued and stops once its queue closes.
        self.writer.close();
        Ok(())
    }
}

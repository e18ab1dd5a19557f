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

pub mod query;
pub mod schema;
pub mod statements;

use super::sql::batch::{self, Current, Remembered};
use super::sql::options::{Settings, SslMode, checked_ca_file, without_credentials};
use super::sql::pool::Pool;
use super::sql::writer::{self, Committer, Failure, Job};
use super::sql::{select, corrupt, decode_error, idempotency_hash, is_connection_error, parse_values, type_hash, values_have_nul};
use super::Storage;
use crate::model::{
    AppendRequest, Arrival, Appended, Change, Error, Event, EventKind, EventQuery, FeedQuery, RecordRef, Result, State,
    StateQuery,
};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgRow, PgSslMode};
use sqlx::{Connection, PgConnection, Row};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
    writer: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Job>>>,
    call_timeout: Duration,
}

impl PostgresStorage {
    pub async fn open(config: &PostgresConfig) -> Result<Self> {
        let settings = Settings::resolve(
            config.pool_size,
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
        let writer = writer::spawn(committer, settings.call_timeout, NAME);
        Ok(PostgresStorage { reads, writer: Mutex::new(Some(writer)), call_timeout: settings.call_timeout })
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

use statements::EVENT_COLUMNS;

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
        values: row.try_get::<Option<&str>, _>(9)?.map(|t| parse_values(NAME, t)).transpose().map_err(decode_error)?,
        claims: parse_values(NAME, row.try_get(10)?).map_err(decode_error)?,
    })
}

/// Whether any name holds a NUL character: nothing stored can match it.
fn has_nul(names: &[&str]) -> bool {
    names.iter().any(|n| n.contains('\0'))
}

#[async_trait]
impl Storage for PostgresStorage {
    fn name(&self) -> &str {
        NAME
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        let r = &req.record;
        let values_nul = matches!(&req.change, Change::Put(v) if values_have_nul(v));
        if values_nul
            || values_have_nul(&req.claims)
            || has_nul(&[&r.domain, &r.ty, &r.key, &req.method])
            || req.idempotency.as_ref().is_some_and(|i| i.key.contains('\0'))
        {
            return Err(Error::invalid(
                "values",
                "PostgreSQL cannot store the NUL character (\\u0000) in names, values or claims",
            ));
        }
        // Serialized here, in parallel on the callers' tasks.
        let vals = match &req.change {
            Change::Put(v) => Some(serde_json::to_string(v).map_err(Error::internal)?),
            Change::Delete => None,
        };
        let claims = serde_json::to_string(&req.claims).map_err(Error::internal)?;
        let (reply, done) = tokio::sync::oneshot::channel();
        let sender = self.writer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(sender) = sender else {
            return Err(Error::unavailable("postgres: storage is closed"));
        };
        sender
            .send(Job { req, vals, claims, reply })
            .map_err(|_| Error::unavailable("postgres: writer stopped"))?;
        done.await.map_err(|_| Error::unavailable("postgres: writer stopped"))?
    }

    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        if has_nul(&[&record.domain, &record.ty, &record.key]) {
            return Ok(None);
        }
        let dt = type_hash(&record.domain, &record.ty);
        let found = read!(self, |c| {
                sqlx::query(statements::GET)
                .bind(&dt)
                .bind(&record.key)
                .bind(&record.domain)
                .bind(&record.ty)
                .fetch_optional(c)
                .await?
                .map(|row| Ok::<_, sqlx::Error>((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?)))
                .transpose()
            })?;
        found
            .map(|(version, vals)| {
                Ok(State { record: record.clone(), version: version as u64, values: parse_values(NAME, &vals)? })
            })
            .transpose()
    }

    async fn search_states(&self, q: &StateQuery) -> Result<Vec<State>> {
        if has_nul(&[&q.domain, &q.ty]) || q.limit == 0 {
            return Ok(vec![]);
        }
        let statements::StateSearch { sql, exact_filter: _, exact_sort, in_sql } = statements::search_states(q);
        let state = |row: &PgRow| -> std::result::Result<State, sqlx::Error> {
            Ok(State {
                record: RecordRef { domain: q.domain.clone(), ty: q.ty.clone(), key: row.try_get(0)? },
                version: row.try_get::<i64, _>(1)? as u64,
                values: parse_values(NAME, row.try_get(2)?).map_err(decode_error)?,
            })
        };
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

    async fn head(&self) -> Result<u64> {
        // The counter is the highest committed seq (seqs have no gaps).
        let n = read!(self, |c| sqlx::query_scalar::<_, i64>("SELECT n FROM seq_counter WHERE id = 1").fetch_one(c).await)?;
        Ok(n as u64)
    }

    async fn ping(&self) -> Result<()> {
        read!(self, |c| sqlx::query("SELECT 1").execute(c).await.map(|_| ()))
    }

    async fn close(&self) -> Result<()> {
        // The writer finishes what is queued and stops once its queue closes.
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }
}

/// Runs a batch of appends as one transaction (see `storage::sql`).
struct PgCommitter {
    options: PgConnectOptions,
    connect_timeout: Duration,
}

/// Locks the batch's records, inserting a placeholder row (version 0, no
/// state) for new ones; returns each record's row. Rows another gateway
/// inserted after this statement's snapshot are missing from the answer.
const LOCK_RECORDS: &str = "
WITH wanted AS (
    SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[]) AS w(dt, key, domain, type)
),
ins AS (
    INSERT INTO states (dt, key, domain, type, version)
    SELECT dt, key, domain, type, 0 FROM wanted ORDER BY dt, key
    ON CONFLICT (dt, key) DO NOTHING
    RETURNING dt, key
),
locked AS (
    SELECT s.dt, s.key, s.version, s.vals IS NOT NULL AS live
    FROM states s JOIN wanted w ON s.dt = w.dt AND s.key = w.key
    ORDER BY s.dt, s.key
    FOR UPDATE OF s
)
SELECT dt, key, version, live FROM locked
UNION ALL
SELECT dt, key, 0, false FROM ins";

/// The same for idempotency keys (by hash), with each entry's event id.
const LOCK_KEYS: &str = "
WITH wanted AS (SELECT unnest($1::bytea[]) AS h),
ins AS (
    INSERT INTO idempotency (h) SELECT h FROM wanted ORDER BY h
    ON CONFLICT (h) DO NOTHING
    RETURNING h
),
locked AS (
    SELECT i.h, i.fingerprint, i.event_id FROM idempotency i JOIN wanted w ON i.h = w.h
    ORDER BY i.h
    FOR UPDATE OF i
)
SELECT h, fingerprint, event_id FROM locked
UNION ALL
SELECT h, NULL, NULL FROM ins";

/// Takes `$1` seqs from the counter and writes the events, the new states
/// and the idempotency entries; returns the counter's new value.
const WRITE: &str = "
WITH c AS (UPDATE seq_counter SET n = n + $1 WHERE id = 1 RETURNING n),
ev AS (
    INSERT INTO events (seq, id, dt, domain, type, key, version, kind, method, time, vals, doc, claims, cdoc)
    SELECT (SELECT n FROM c) - $1 + u.ord, u.id, u.dt, u.domain, u.type, u.key, u.version, u.kind, u.method,
           u.time, u.vals, u.vals::jsonb, u.claims, u.claims::jsonb
    FROM unnest($2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::text[], $9::text[],
                $10::int8[], $11::text[], $12::text[])
         WITH ORDINALITY AS u(id, dt, domain, type, key, version, kind, method, time, vals, claims, ord)
),
st AS (
    UPDATE states s SET version = v.version, vals = v.vals, doc = v.vals::jsonb
    FROM unnest($13::bytea[], $14::text[], $15::int8[], $16::text[]) AS v(dt, key, version, vals)
    WHERE s.dt = v.dt AND s.key = v.key
),
idem AS (
    UPDATE idempotency i SET fingerprint = k.fingerprint, event_id = k.event_id
    FROM unnest($17::bytea[], $18::text[], $19::text[]) AS k(h, fingerprint, event_id)
    WHERE i.h = k.h
)
SELECT n FROM c";

#[async_trait]
impl Committer for PgCommitter {
    type Conn = PgConnection;

    async fn connect(&self) -> Result<PgConnection> {
        match tokio::time::timeout(self.connect_timeout, PgConnection::connect_with(&self.options)).await {
            Ok(result) => result.map_err(db_error),
            Err(_) => Err(Error::unavailable(format!("{NAME}: no connection within {:?}", self.connect_timeout))),
        }
    }

    async fn commit(&self, conn: &mut PgConnection, jobs: &[Job]) -> std::result::Result<Vec<Result<Appended>>, Failure> {
        // Before the commit is sent, a connection error means nothing was
        // written.
        let before_commit = |e: sqlx::Error| {
            if transient(&e) {
                Failure::Transient(db_error(e))
            } else if is_connection_error(&e) {
                Failure::Reconnect(db_error(e))
            } else {
                Failure::Fatal { error: db_error(e), connection_lost: false }
            }
        };
        let mut tx = conn.begin().await.map_err(before_commit)?;

        // Records, sorted and distinct, so every gateway locks in one order.
        let mut records: Vec<(Vec<u8>, &RecordRef)> =
            jobs.iter().map(|j| (type_hash(&j.req.record.domain, &j.req.record.ty), &j.req.record)).collect();
        records.sort_by(|a, b| (&a.0, &a.1.key).cmp(&(&b.0, &b.1.key)));
        records.dedup_by(|a, b| a.0 == b.0 && a.1.key == b.1.key);
        let rows = sqlx::query(LOCK_RECORDS)
            .bind(records.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
            .bind(records.iter().map(|r| r.1.key.clone()).collect::<Vec<_>>())
            .bind(records.iter().map(|r| r.1.domain.clone()).collect::<Vec<_>>())
            .bind(records.iter().map(|r| r.1.ty.clone()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(before_commit)?;
        let mut by_hash: HashMap<(Vec<u8>, String), Current> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let current = Current { version: row.try_get::<i64, _>(2).map_err(before_commit)? as u64, live: row.try_get(3).map_err(before_commit)? };
            by_hash.insert((row.try_get(0).map_err(before_commit)?, row.try_get(1).map_err(before_commit)?), current);
        }
        let mut current = HashMap::with_capacity(records.len());
        for (dt, r) in &records {
            match by_hash.get(&(dt.clone(), r.key.clone())) {
                Some(c) => current.insert((*r).clone(), *c),
                // Created by another gateway after this statement began:
                // run the batch again (it now sees the row).
                None => return Err(Failure::Transient(Error::unavailable("postgres: a record was created concurrently"))),
            };
        }

        let Some(remembered) = self.lock_keys(&mut tx, jobs).await.map_err(before_commit)? else {
            return Err(Failure::Transient(Error::unavailable("postgres: an idempotency key was created concurrently")));
        };
        let reqs: Vec<&AppendRequest> = jobs.iter().map(|j| &j.req).collect();
        let plan = batch::plan(&reqs, current, &remembered);
        let new = plan.new_events.len() as i64;
        let mut first_seq = 0;
        if new > 0 {
            let events = &plan.new_events;
            let job = |i: &usize| &jobs[*i];
            let decided_version = |i: usize| match plan.decisions[i] {
                batch::Decision::New { version, .. } => version as i64,
                _ => unreachable!("only new events are written"),
            };
            let n: i64 = sqlx::query_scalar(WRITE)
                .bind(new)
                .bind(events.iter().map(|i| job(i).req.id.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| type_hash(&job(i).req.record.domain, &job(i).req.record.ty)).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.record.domain.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.record.ty.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.record.key.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| decided_version(*i)).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.kind.as_str().to_owned()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.method.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.time).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).vals.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).claims.clone()).collect::<Vec<_>>())
                .bind(plan.states.iter().map(|i| type_hash(&job(i).req.record.domain, &job(i).req.record.ty)).collect::<Vec<_>>())
                .bind(plan.states.iter().map(|i| job(i).req.record.key.clone()).collect::<Vec<_>>())
                .bind(plan.states.iter().map(|i| decided_version(*i)).collect::<Vec<_>>())
                .bind(plan.states.iter().map(|i| job(i).vals.clone()).collect::<Vec<_>>())
                .bind(plan.idempotency.iter().map(|i| idempotency_hash(&idem_key(job(i)))).collect::<Vec<_>>())
                .bind(plan.idempotency.iter().map(|i| job(i).req.idempotency.as_ref().map(|k| k.fingerprint.clone()).unwrap_or_default()).collect::<Vec<_>>())
                .bind(plan.idempotency.iter().map(|i| job(i).req.id.clone()).collect::<Vec<_>>())
                .fetch_one(&mut *tx)
                .await
                .map_err(before_commit)?;
            first_seq = (n - new + 1) as u64;
            if let Err(e) = tx.commit().await {
                // The commit may or may not have happened.
                let lost = is_connection_error(&e);
                return Err(if transient(&e) {
                    Failure::Transient(db_error(e))
                } else {
                    Failure::Fatal { error: db_error(e), connection_lost: lost }
                });
            }
        } else {
            // Nothing to write: drop the placeholder rows and the locks.
            tx.rollback().await.map_err(before_commit)?;
        }
        let reqs = jobs.iter().map(|j| j.req.clone()).collect();
        Ok(batch::outcomes(reqs, plan.decisions, first_seq))
    }
}

fn idem_key(job: &Job) -> String {
    job.req.idempotency.as_ref().map(|k| k.key.clone()).unwrap_or_default()
}

impl PgCommitter {
    /// Locks the batch's idempotency keys and reads their entries; `None`
    /// when a key was inserted by another gateway after the statement began.
    async fn lock_keys(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        jobs: &[Job],
    ) -> std::result::Result<Option<HashMap<String, Remembered>>, sqlx::Error> {
        let mut keys: Vec<(Vec<u8>, &str)> = jobs
            .iter()
            .filter_map(|j| j.req.idempotency.as_ref())
            .map(|i| (idempotency_hash(&i.key), i.key.as_str()))
            .collect();
        if keys.is_empty() {
            return Ok(Some(HashMap::new()));
        }
        keys.sort();
        keys.dedup();
        let rows = sqlx::query(LOCK_KEYS)
            .bind(keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>())
            .fetch_all(&mut **tx)
            .await?;
        let mut entries: Vec<(Vec<u8>, String, String)> = vec![];
        let mut seen = 0;
        for row in &rows {
            seen += 1;
            let fingerprint: Option<String> = row.try_get(1)?;
            let event_id: Option<String> = row.try_get(2)?;
            if let (Some(f), Some(id)) = (fingerprint, event_id) {
                entries.push((row.try_get(0)?, f, id));
            }
        }
        if seen < keys.len() {
            return Ok(None);
        }
        let mut remembered = HashMap::new();
        if entries.is_empty() {
            return Ok(Some(remembered));
        }
        let ids: Vec<String> = entries.iter().map(|e| e.2.clone()).collect();
        let events = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY($1)")))
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
        let events: HashMap<String, Event> =
            events.iter().map(event_from_row).map(|e| e.map(|e| (e.id.clone(), e))).collect::<std::result::Result<_, _>>()?;
        let key_of: HashMap<&[u8], &str> = keys.iter().map(|(h, k)| (h.as_slice(), *k)).collect();
        for (h, fingerprint, id) in entries {
            if let (Some(key), Some(first)) = (key_of.get(h.as_slice()), events.get(&id)) {
                remembered.insert((*key).to_owned(), Remembered { fingerprint, first: first.clone() });
            }
        }
        Ok(Some(remembered))
    }
}

//! `mysql` (also `mariadb`): events and current states in MySQL 8 or
//! MariaDB 10.11+, shared by any number of gateways.
//! `{"name":"mysql","addr":"mysql://user@host:3306/db"}`.
//!
//! The same design as `postgres` (see `storage::sql`): one group-commit
//! writer per gateway runs each batch as one InnoDB transaction (READ
//! COMMITTED): `INSERT … ON DUPLICATE KEY UPDATE` creates and locks the
//! batch's record rows in key order, `SELECT … FOR UPDATE` reads them, the
//! batch is decided in Rust, states and idempotency entries are written,
//! the seq counter row is bumped (`LAST_INSERT_ID(n + k)` hands back the new
//! value) and the events inserted, then one commit. The counter row lock,
//! held to the commit, makes seqs follow commit order across gateways.
//! With `innodb_flush_log_at_trx_commit = 1` (the default; the provider
//! warns at start otherwise) a commit is durable before `append` returns.
//!
//! Statements that list a batch's rows have one shape per batch size; the
//! lock statements are padded to a power of two (repeating the last row)
//! and the writer's connection caches many prepared statements, so a busy
//! writer prepares each shape once.

mod commit;
pub mod query;
pub mod schema;

use super::sql::options::{Settings, SslMode, checked_ca_file, without_credentials};
use super::sql::point_reads::{BatchRead, Hit, Lookup, PointReads};
use super::sql::pool::Pool;
use super::sql::writer;
use super::sql::{select, corrupt, decode_error, parse_values, type_hash};
use super::{FEED_PAGE, GroupDoc, Storage};
use crate::model::{
    AppendRequest, Arrival, AtSeq, Appended, CatalogEntry, Error, Event, EventKind, EventOrder, EventQuery, EventSort, FeedQuery,
    RecordRef, Result, State, StateQuery, StoredState,
};
use async_trait::async_trait;
use commit::MyCommitter;
use query::{Arg, Sql};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlRow, MySqlSslMode};
use sqlx::{Connection, MySqlConnection, Row};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const NAME: &str = "mysql";

/// Which state a search reads.
#[derive(Clone, Copy)]
enum Read {
    /// Now, without the position.
    Now,
    /// Now, with the head read in the same read view.
    NowWithHead,
    /// As event `seq` (at most the head) left it.
    Past(u64),
}

/// Prepared statements the writer's connection keeps (one per batch shape).
const WRITER_STATEMENTS: usize = 2048;

/// `{"name":"mysql","addr":"mysql://…", …}`; see docs/backends.md.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// A `mysql://user[:password]@host[:port]/database[?ssl-mode=…]` URL.
    pub addr: String,
    /// Pooled read connections (default 16); the writer has one more.
    pub pool_size: Option<u32>,
    /// Writer connections (default 1): with more, one batch locks its
    /// records while the one before it commits.
    pub writers: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
    /// Longest one storage call may take (default 10 s).
    pub call_timeout_ms: Option<u64>,
    /// Overrides the URL's `ssl-mode` (PostgreSQL's names, see docs).
    pub sslmode: Option<SslMode>,
    /// CA certificate (PEM) to verify the server with.
    pub ca_file: Option<PathBuf>,
    /// File holding the password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
}

impl MysqlConfig {
    pub async fn build(&self) -> Result<MysqlStorage> {
        MysqlStorage::open(self).await
    }

    fn connect_options(&self, settings: &Settings) -> Result<MySqlConnectOptions> {
        let mut options: MySqlConnectOptions = self
            .addr
            .parse()
            .map_err(|e| Error::invalid("addr", format!("not a usable mysql:// URL: {}", without_credentials(&e))))?;
        options = options.charset("utf8mb4");
        if let Some(p) = &settings.password {
            options = options.password(p);
        }
        if let Some(mode) = self.sslmode {
            options = options.ssl_mode(match mode {
                SslMode::Disable => MySqlSslMode::Disabled,
                SslMode::Prefer => MySqlSslMode::Preferred,
                SslMode::Require => MySqlSslMode::Required,
                SslMode::VerifyCa => MySqlSslMode::VerifyCa,
                SslMode::VerifyFull => MySqlSslMode::VerifyIdentity,
            });
        }
        if let Some(ca) = &self.ca_file {
            options = options.ssl_ca(checked_ca_file(ca)?);
        }
        Ok(options)
    }
}

/// Connects and sets the session up: READ COMMITTED, so locking reads and
/// plain reads both see the latest commits and InnoDB takes no gap locks.
async fn connect(options: &MySqlConnectOptions) -> std::result::Result<MySqlConnection, sqlx::Error> {
    let mut conn = MySqlConnection::connect_with(options).await?;
    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut conn).await?;
    Ok(conn)
}

pub struct MysqlStorage {
    reads: Arc<Pool<MySqlConnection>>,
    /// Gets, gathered into shared statements on `reads`.
    points: PointReads,
    writer: writer::Queue,
    call_timeout: Duration,
    /// MariaDB (rather than MySQL): sorts objects with `JSON_COMPACT`.
    mariadb: bool,
}

impl MysqlStorage {
    pub async fn open(config: &MysqlConfig) -> Result<Self> {
        let settings = Settings::resolve(
            config.pool_size,
            config.writers,
            config.connect_timeout_ms,
            config.call_timeout_ms,
            config.password_file.as_ref(),
            config.password_env.as_deref(),
        )?;
        let options = config.connect_options(&settings)?;
        let pool_connect: super::sql::pool::Connector<MySqlConnection> = {
            let options = options.clone();
            Box::new(move || {
                let options = options.clone();
                Box::pin(async move { connect(&options).await })
            })
        };
        let reads = Arc::new(Pool::new(settings.pool_size, settings.connect_timeout, pool_connect));
        let mut conn = reads.open().await.map_err(db_error)?;
        schema::migrate(&mut conn).await?;
        let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut conn).await.map_err(db_error)?;
        let mariadb = version.contains("MariaDB");
        let flush: Option<i64> = sqlx::query_scalar("SELECT @@innodb_flush_log_at_trx_commit")
            .fetch_one(&mut conn)
            .await
            .ok();
        if flush.is_some_and(|f| f != 1) {
            tracing::warn!("mysql: innodb_flush_log_at_trx_commit is not 1: a write acknowledged just before a crash can be lost");
        }
        drop(conn);
        let committer = Arc::new(MyCommitter {
            options: options.statement_cache_capacity(WRITER_STATEMENTS),
            connect_timeout: settings.connect_timeout,
        });
        let writer = writer::spawn(committer, settings.writers, settings.call_timeout, NAME);
        let points = PointReads::spawn(reads.clone(), settings.pool_size, point_read(), settings.call_timeout, db_error, NAME);
        Ok(MysqlStorage { reads, points, writer, call_timeout: settings.call_timeout, mariadb })
    }
}

/// The statement of a batch of gets (`sql::point_reads`): one primary-key
/// probe per distinct record, `(dt = ? AND rkey = ?) OR …`, padded to a
/// power of two (repeating the last record) so the statement comes in few
/// shapes, each prepared once per connection. Rows carry their names, and
/// each is matched back to the lookups it answers (names included: `dt` is
/// a hash).
fn point_read() -> BatchRead<MySqlConnection> {
    Arc::new(|conn: &mut MySqlConnection, batch: &[Lookup]| {
        Box::pin(async move {
            let padded = batch.len().next_power_of_two();
            let sql = format!(
                // The last row (dt NULL) holds the seq counter: the head this
                // statement's read view saw (`point_reads`).
                "SELECT dt, rkey, domain, rtype, version, vals FROM states WHERE ({}) AND vals IS NOT NULL \
                 UNION ALL SELECT NULL, NULL, NULL, NULL, n, NULL FROM seq_counter WHERE id = 1",
                vec!["(dt = ? AND rkey = ?)"; padded].join(" OR ")
            );
            let last = batch.last().expect("a batch holds a lookup");
            // Only the count of placeholders varies: the text is ours.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for l in batch.iter().chain(std::iter::repeat_n(last, padded - batch.len())) {
                query = query.bind(l.dt.as_slice()).bind(l.key.as_bytes());
            }
            let rows = query.fetch_all(conn).await?;
            let (mut hits, mut head) = (Vec::with_capacity(rows.len()), 0);
            for row in &rows {
                let version: i64 = row.try_get(4)?;
                let Some(dt) = row.try_get::<Option<&[u8]>, _>(0)? else {
                    head = version as u64;
                    continue;
                };
                let (key, domain, ty): (&[u8], &[u8], &[u8]) = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
                for (index, l) in batch.iter().enumerate() {
                    if l.dt == dt && l.key.as_bytes() == key && l.domain.as_bytes() == domain && l.ty.as_bytes() == ty {
                        hits.push(Hit { index, version, vals: text(row, 5)? });
                    }
                }
            }
            Ok((hits, head))
        })
    })
}

/// Runs `$body` on a pooled read connection `$c`; see `postgres`'s `read!`.
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

/// A driver error as the gateway's error: errors in our own statements
/// (syntax, unknown column or table) are internal, everything else means
/// the database cannot serve the call now.
pub(crate) fn db_error(e: sqlx::Error) -> Error {
    if let Some(n) = error_number(&e)
        && matches!(n, 1054 | 1064 | 1146 | 1149)
    {
        return Error::internal(format!("{NAME}: {e}"));
    }
    Error::unavailable(format!("{NAME}: {e}"))
}

fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db.try_downcast_ref::<MySqlDatabaseError>().map(|m| m.number()),
        _ => None,
    }
}

/// A deadlock, a lock wait timeout or a duplicate key: the batch rolled
/// back and may run again.
fn transient(e: &sqlx::Error) -> bool {
    matches!(error_number(e), Some(1213 | 1205 | 1062))
}

const EVENT_COLUMNS: &str = "seq, id, domain, rtype, rkey, version, kind, method, time, vals, claims";

/// A name column (`VARBINARY`, holding UTF-8 the gateway wrote).
fn text(row: &MySqlRow, i: usize) -> std::result::Result<String, sqlx::Error> {
    row.try_get_unchecked::<String, _>(i)
}

fn event_from_row(row: &MySqlRow) -> std::result::Result<Event, sqlx::Error> {
    let kind = text(row, 6)?;
    Ok(Event {
        seq: row.try_get::<i64, _>(0)? as u64,
        id: text(row, 1)?,
        record: RecordRef { domain: text(row, 2)?, ty: text(row, 3)?, key: text(row, 4)? },
        version: row.try_get::<i64, _>(5)? as u64,
        kind: EventKind::parse(&kind).ok_or_else(|| decode_error(corrupt(NAME, format!("event kind {kind:?}"))))?,
        method: text(row, 7)?,
        time: row.try_get(8)?,
        values: row
            .try_get_unchecked::<Option<String>, _>(9)?
            .map(|t| parse_values(NAME, &t))
            .transpose()
            .map_err(decode_error)?
            .map(Into::into),
        claims: parse_values(NAME, &text(row, 10)?).map_err(decode_error)?,
    })
}

fn limit_arg(n: usize) -> Arg {
    Arg::I64(n.min(i64::MAX as usize) as i64)
}

impl MysqlStorage {
    /// A state search; `with_head`: with the seq it reflects, read in the
    /// same snapshot (else the seq is 0).
    /// A state search: now (`Read::Now`, `Read::NowWithHead`: with the
    /// head, in one read view) or as of event `seq` (`Read::Past`).
    async fn search_states_read(&self, q: &StateQuery, read: Read) -> Result<AtSeq<Vec<State>>> {
        if q.limit == 0 {
            return Ok(AtSeq { value: vec![], seq: match read { Read::Past(seq) => seq, Read::Now => 0, Read::NowWithHead => self.head().await? } });
        }
        let mut sql;
        if let Read::Past(seq) = read {
            // The type's records (each keeps its `states` row once written)
            // as their last event up to `seq` left them: one descent of
            // `events_by_record_seq` per record, so the cost grows with the
            // type's records, not their history. The derived table has the
            // columns the filter and sort name (`rkey`, `version`, `vals`).
            sql = Sql::new(
                "SELECT rkey, version, vals FROM (SELECT s.rkey, e.version, e.vals FROM states s JOIN events e ON e.seq = \
                   (SELECT MAX(x.seq) FROM events x FORCE INDEX (events_by_record_seq) \
                    WHERE x.dt = s.dt AND x.rkey = s.rkey AND x.seq <= ",
            );
            let at = sql.arg(Arg::I64(seq.min(i64::MAX as u64) as i64));
            sql.push(&format!("{at}) WHERE s.dt = "));
            let dt = sql.arg(Arg::Bytes(type_hash(&q.domain, &q.ty)));
            let d = sql.arg(Arg::Bytes(q.domain.as_bytes().to_vec()));
            let t = sql.arg(Arg::Bytes(q.ty.as_bytes().to_vec()));
            sql.push(&format!("{dt} AND s.domain = {d} AND s.rtype = {t}) p WHERE vals IS NOT NULL"));
        } else {
            sql = Sql::new("SELECT rkey, version, vals FROM states WHERE dt = ");
            let dt = sql.arg(Arg::Bytes(type_hash(&q.domain, &q.ty)));
            let d = sql.arg(Arg::Bytes(q.domain.as_bytes().to_vec()));
            let t = sql.arg(Arg::Bytes(q.ty.as_bytes().to_vec()));
            sql.push(&format!("{dt} AND domain = {d} AND rtype = {t} AND vals IS NOT NULL"));
        }
        let exact_filter = query::filter(&mut sql, "vals", &q.filter);
        let exact_sort = query::order_by(&mut sql, q.sort.as_ref(), self.mariadb);
        let in_sql = exact_filter && exact_sort;
        if in_sql {
            let l = sql.arg(limit_arg(q.limit));
            let o = sql.arg(limit_arg(q.offset));
            sql.push(&format!(" LIMIT {l} OFFSET {o}"));
        }
        let (text_sql, args) = sql.finish();
        let decode = |row: &MySqlRow| -> std::result::Result<State, sqlx::Error> {
            Ok(State {
                record: RecordRef { domain: q.domain.clone(), ty: q.ty.clone(), key: text(row, 0)? },
                version: row.try_get::<i64, _>(1)? as u64,
                values: parse_values(NAME, &text(row, 2)?).map_err(decode_error)?,
            })
        };
        let arrival = if exact_sort { Arrival::InOrder } else { Arrival::AnyOrder };
        read!(self, |c| {
            if let Read::Now | Read::Past(_) = read {
                // The past never changes (`seq` is at most the head): no
                // read view needed.
                let seq = match read { Read::Past(seq) => seq, _ => 0 };
                let rows = query::bind(sqlx::query(sqlx::AssertSqlSafe(text_sql.as_str())), &args).fetch(c);
                return select(NAME, rows, decode, q, in_sql, arrival).await.map(|value| AtSeq { value, seq });
            }
            // The head and the search in one InnoDB read view: REPEATABLE
            // READ fixes it at the first read, and the counter commits with
            // the events it counts. (SET TRANSACTION applies to the next
            // transaction only, so it comes before BEGIN.)
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *c).await?;
            let mut tx = c.begin().await?;
            let seq = sqlx::query_scalar::<_, i64>("SELECT n FROM seq_counter WHERE id = 1").fetch_one(&mut *tx).await?;
            let value = {
                let rows = query::bind(sqlx::query(sqlx::AssertSqlSafe(text_sql.as_str())), &args).fetch(&mut *tx);
                select(NAME, rows, decode, q, in_sql, arrival).await?
            };
            tx.commit().await?;
            Ok(AtSeq { value, seq: seq as u64 })
        })
    }
}

#[async_trait]
impl Storage for MysqlStorage {
    fn name(&self) -> &str {
        NAME
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        self.writer.append(req).await
    }

    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        Ok(self.get_at(record, None).await?.value)
    }

    async fn get_text_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<StoredState>>> {
        // Reads now, the hot path, keep the text; a read in the past is
        // `get_at`'s.
        if at.is_some() {
            return Ok(super::parsed_answer(self.get_at(record, at).await?));
        }
        self.points.get_stored(record).await
    }

    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        if let Some(seq) = at {
            // The record's last event up to `seq`: one descent of
            // `events_by_record_seq` (named: MariaDB otherwise may walk
            // (dt, rkey, version) and sort).
            let r = record.clone();
            let found = read!(self, |c| {
                sqlx::query(
                    "SELECT version, vals FROM events FORCE INDEX (events_by_record_seq) \
                     WHERE dt = ? AND rkey = ? AND domain = ? AND rtype = ? AND seq <= ? ORDER BY seq DESC LIMIT 1",
                )
                .bind(type_hash(&r.domain, &r.ty))
                .bind(r.key.as_bytes())
                .bind(r.domain.as_bytes())
                .bind(r.ty.as_bytes())
                .bind(seq.min(i64::MAX as u64) as i64)
                .fetch_optional(c)
                .await?
                .map(|row| Ok::<_, sqlx::Error>((row.try_get::<i64, _>(0)?, row.try_get::<Option<String>, _>(1)?)))
                .transpose()
            })?;
            let value = match found {
                Some((version, Some(vals))) => Some(State { record: r, version: version as u64, values: parse_values(NAME, &vals)? }),
                _ => None,
            };
            return Ok(AtSeq { value, seq });
        }
        // A point read now: gathered with the others waiting into one
        // statement, which also reads the head (`point_reads`).
        self.points.get_state(record).await
    }

    async fn search_states(&self, q: &StateQuery) -> Result<Vec<State>> {
        Ok(self.search_states_read(q, Read::Now).await?.value)
    }

    async fn search_states_at(&self, q: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        match at {
            // The past: the trait's replay of the type's feed.
            Some(seq) => self.search_states_read(q, Read::Past(seq)).await,
            None => self.search_states_read(q, Read::NowWithHead).await,
        }
    }

    async fn search_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        if q.limit == 0 {
            return Ok(vec![]);
        }
        // A type's events in seq order come from its (dt, seq) index. Left
        // to itself, MariaDB walks the whole log by the primary key and
        // filters, which for a type written after another reads every older
        // event (9 ms instead of 0.3 ms past 10k events). With a time range
        // the optimizer chooses between the seq and time indexes itself.
        let by_seq = q.key.is_none()
            && q.min_time.is_none()
            && q.max_time.is_none()
            && !matches!(q.sort, Some(EventSort { by: EventOrder::Time, .. }));
        let hint = if by_seq { " FORCE INDEX (events_by_type_seq)" } else { "" };
        let mut sql = Sql::new(format!("SELECT {EVENT_COLUMNS} FROM events{hint} WHERE dt = "));
        let dt = sql.arg(Arg::Bytes(type_hash(&q.domain, &q.ty)));
        let d = sql.arg(Arg::Bytes(q.domain.as_bytes().to_vec()));
        let t = sql.arg(Arg::Bytes(q.ty.as_bytes().to_vec()));
        sql.push(&format!("{dt} AND domain = {d} AND rtype = {t}"));
        if let Some(key) = &q.key {
            let k = sql.arg(Arg::Bytes(key.as_bytes().to_vec()));
            sql.push(&format!(" AND rkey = {k}"));
        }
        if let Some(min) = q.min_time {
            let m = sql.arg(Arg::I64(min));
            sql.push(&format!(" AND time >= {m}"));
        }
        if let Some(max) = q.max_time {
            let m = sql.arg(Arg::I64(max));
            sql.push(&format!(" AND time <= {m}"));
        }
        for (cond, bound) in [(">=", q.min_version), ("<=", q.max_version)] {
            if let Some(v) = bound {
                let m = sql.arg(Arg::I64(v as i64));
                sql.push(&format!(" AND version {cond} {m}"));
            }
        }
        // A deletion has no values; filters see it as the empty object.
        let exact = query::filter(&mut sql, "COALESCE(vals, '{}')", &q.filter)
            & query::filter(&mut sql, "claims", &q.claims_filter);
        match &q.sort {
            Some(EventSort { by: EventOrder::Time, descending }) => {
                let dir = if *descending { "DESC" } else { "ASC" };
                sql.push(&format!(" ORDER BY time {dir}, seq {dir}"));
            }
            _ => sql.push(if q.key.is_some() { " ORDER BY version" } else { " ORDER BY seq" }),
        }
        // By a values field: read in seq order, the page chooses.
        let exact = exact && !q.sorted_by_field();
        let arrival = if q.sorted_by_field() { Arrival::AnyOrder } else { Arrival::InOrder };
        if exact {
            let l = sql.arg(limit_arg(q.limit));
            let o = sql.arg(limit_arg(q.offset));
            sql.push(&format!(" LIMIT {l} OFFSET {o}"));
        }
        let (text_sql, args) = sql.finish();
        read!(self, |c| {
            let rows = query::bind(sqlx::query(sqlx::AssertSqlSafe(text_sql.as_str())), &args).fetch(c);
            select(NAME, rows, event_from_row, q, exact, arrival).await
        })
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        read!(self, |c| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?")))
                .bind(id.as_bytes())
                .fetch_optional(c)
                .await?;
            row.as_ref().map(event_from_row).transpose()
        })
    }

    async fn feed(&self, q: &FeedQuery) -> Result<Vec<Event>> {
        if q.limit == 0 {
            return Ok(vec![]);
        }
        let mut sql = Sql::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > "));
        let after = sql.arg(Arg::I64(q.after_seq.min(i64::MAX as u64) as i64));
        sql.push(&after);
        match (&q.topic.domain, &q.topic.ty) {
            (Some(d), Some(t)) => {
                let dt = sql.arg(Arg::Bytes(type_hash(d, t)));
                let d = sql.arg(Arg::Bytes(d.as_bytes().to_vec()));
                let t = sql.arg(Arg::Bytes(t.as_bytes().to_vec()));
                sql.push(&format!(" AND dt = {dt} AND domain = {d} AND rtype = {t}"));
            }
            (domain, ty) => {
                if let Some(d) = domain {
                    let d = sql.arg(Arg::Bytes(d.as_bytes().to_vec()));
                    sql.push(&format!(" AND domain = {d}"));
                }
                if let Some(t) = ty {
                    let t = sql.arg(Arg::Bytes(t.as_bytes().to_vec()));
                    sql.push(&format!(" AND rtype = {t}"));
                }
            }
        }
        if let Some(key) = &q.key {
            let k = sql.arg(Arg::Bytes(key.as_bytes().to_vec()));
            sql.push(&format!(" AND rkey = {k}"));
        }
        if let Some(from) = q.from_time {
            let f = sql.arg(Arg::I64(from));
            sql.push(&format!(" AND time >= {f}"));
        }
        let l = sql.arg(limit_arg(q.limit.min(FEED_PAGE * 16)));
        sql.push(&format!(" ORDER BY seq LIMIT {l}"));
        let (text_sql, args) = sql.finish();
        read!(self, |c| {
            let rows = query::bind(sqlx::query(sqlx::AssertSqlSafe(text_sql.as_str())), &args).fetch_all(c).await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    async fn catalog(&self, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
        // Grouped by the type key `dt` (one per domain and type); each
        // type's records are a range of the states' primary key (dt, rkey).
        let sql = format!(
            "SELECT e.domain, e.rtype, e.n, e.last, \
               (SELECT COUNT(*) FROM states s WHERE s.dt = e.dt AND s.vals IS NOT NULL) \
             FROM (SELECT dt, MIN(domain) AS domain, MIN(rtype) AS rtype, COUNT(*) AS n, MAX(time) AS last \
                   FROM events {} GROUP BY dt) e",
            if domain.is_some() { "WHERE domain = ?" } else { "" }
        );
        let mut entries = read!(self, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            if let Some(d) = domain {
                q = q.bind(d.as_bytes());
            }
            let rows = q.fetch_all(c).await?;
            rows.iter()
                .map(|row| {
                    Ok(CatalogEntry {
                        domain: text(row, 0)?,
                        ty: text(row, 1)?,
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
        let n = read!(self, |c| sqlx::query_scalar::<_, i64>("SELECT n FROM seq_counter WHERE id = 1").fetch_one(c).await)?;
        Ok(n as u64)
    }

    async fn group_load(&self, name: &str) -> Result<Option<GroupDoc>> {
        read!(self, |c| {
            let row = sqlx::query("SELECT version, doc FROM consumer_groups WHERE name = ?")
                .bind(name.as_bytes())
                .fetch_optional(c)
                .await?;
            row.map(|r| Ok(GroupDoc { version: r.try_get::<i64, _>(0)? as u64, bytes: r.try_get(1)? })).transpose()
        })
    }

    async fn group_store(&self, name: &str, expected: u64, doc: &[u8]) -> Result<u64> {
        // One statement: the version check and the write are atomic (the
        // version always changes, so a matched row is a changed row).
        let changed = read!(self, |c| {
            let q = if expected == 0 {
                sqlx::query("INSERT IGNORE INTO consumer_groups (name, version, doc) VALUES (?, 1, ?)")
                    .bind(name.as_bytes())
                    .bind(doc)
            } else {
                sqlx::query("UPDATE consumer_groups SET version = version + 1, doc = ? WHERE name = ? AND version = ?")
                    .bind(doc)
                    .bind(name.as_bytes())
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
        self.writer.close();
        Ok(())
    }
}

//! `sqlite`: the embedded durable default. One file in WAL mode, no service
//! to run.
//!
//! Writes go through one writer thread that owns the only write connection:
//! it takes every append waiting in its queue, runs them in one transaction
//! (an append its checks refuse writes nothing, so the others go on; see
//! `commit_batch` for a failure in the middle of a write) and commits once. Concurrent writers thus share one fsync (group
//! commit) and seqs are assigned in commit order, which is what catch-up
//! streams need. `synchronous=FULL` makes a commit durable before `append`
//! returns. Values are serialized on the caller's task, not on the writer
//! thread, and every statement is prepared once per connection.
//!
//! Reads use a pool of connections that WAL lets run alongside the writer:
//! a semaphore admits as many reads as there are pooled connections (a few
//! per core), so a burst of reads waits for a connection instead of opening
//! new ones; the file is memory-mapped. A point read (`get`, `get_event`)
//! that finds a connection free runs right on the calling task: an indexed
//! lookup in mapped pages takes microseconds, less than the hop to the
//! blocking pool and back.
//!
//! Checkpoints (copying the WAL back into the database file) run on their
//! own thread and connection, not inside a commit, so a writer never waits
//! for one.
//!
//! Over 500 lines on purpose: the writer, the read pool and the checkpoint
//! thread share the connection setup and the row codecs, and each is only
//! correct together with the others (the WAL and checkpoint rules above).

use super::{FEED_PAGE, GroupDoc, Storage, conflict, group_conflict, idempotency_mismatch};
use crate::model::{
    AtSeq, Appended, AppendRequest, Arrival, CatalogEntry, Change, Error, Event, EventKind, EventQuery, FeedQuery, Filter, RecordRef,
    Result, Select, State, StateQuery, Values,
    query::Op,
};
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params, params_from_iter, types::Value as SqlValue};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Most equality conditions of one filter pushed down into SQL (the rest are
/// checked in Rust only).
const MAX_PUSHDOWN: usize = 32;
/// Most appends committed in one transaction.
const MAX_BATCH: usize = 512;
/// Read connections per core (reads block on I/O now and then).
const READERS_PER_CORE: usize = 2;
/// Page size of a new database file. A `states` row (a WITHOUT ROWID
/// table) larger than about a quarter of a page spills into an overflow
/// page of its own, which every read and write of the record then touches
/// too: with 4 KiB pages that happens from ~1 KiB of values, with 8 KiB
/// pages from ~2 KiB. Measured on 1 KiB records: 8 KiB pages cut the CPU per
/// `Get` and per `Set` by about 15 % against 4 KiB (BENCHMARKS.md, round 5).
const PAGE_BYTES: u32 = 8192;
/// Bytes of the database file each connection memory-maps.
const MMAP_BYTES: u64 = 1 << 30;
/// How often the checkpoint thread looks at how much was written.
const CHECKPOINT_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// Appends after which it folds the WAL back into the database (about what
/// sqlite's default of 1000 WAL pages holds) while writes go on. When
/// writes pause (no append for one poll) it checkpoints what is left, and
/// retries at every poll until a checkpoint copies the whole WAL: a PASSIVE
/// checkpoint stops short of pages a reader still needs, and with nothing
/// written afterwards nothing else would finish the job. Once the WAL is
/// all copied back, reads come straight from the memory-mapped file.
const CHECKPOINT_APPENDS: u64 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    id      TEXT NOT NULL UNIQUE,
    domain  TEXT NOT NULL,
    type    TEXT NOT NULL,
    key     TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    method  TEXT NOT NULL,
    time    INTEGER NOT NULL,
    vals    TEXT,
    claims  TEXT NOT NULL,
    UNIQUE (domain, type, key, version)
);
CREATE INDEX IF NOT EXISTS events_by_type_seq ON events (domain, type, seq);
CREATE INDEX IF NOT EXISTS events_by_type_time ON events (domain, type, time);
-- Point-in-time reads: a record's last event up to a seq is one descent.
CREATE INDEX IF NOT EXISTS events_by_record_seq ON events (domain, type, key, seq);
-- One row per record ever written; vals is NULL once deleted, and the row
-- keeps the last version so a recreated record continues its numbering.
CREATE TABLE IF NOT EXISTS states (
    domain  TEXT NOT NULL,
    type    TEXT NOT NULL,
    key     TEXT NOT NULL,
    version INTEGER NOT NULL,
    vals    TEXT,
    PRIMARY KEY (domain, type, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    event_seq   INTEGER NOT NULL
) WITHOUT ROWID;
-- Consumer-group documents (`Storage::group_store`), apart from events.
CREATE TABLE IF NOT EXISTS groups (
    name    TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    doc     BLOB NOT NULL
) WITHOUT ROWID;
";

/// An append with its JSON columns already serialized.
struct Job {
    req: AppendRequest,
    vals: Option<String>,
    claims: String,
    reply: oneshot::Sender<Result<Appended>>,
}

/// `{"name":"sqlite","path":"data/stategate.db"}`; without `path` the file
/// is `stategate.db` in `STATEGATE_DATA_DIR`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    pub path: Option<PathBuf>,
}

impl SqliteConfig {
    pub fn build(&self, data_dir: &Path) -> Result<SqliteStorage> {
        SqliteStorage::open(self.file(data_dir))
    }

    /// The database file: `path`, else `stategate.db` in the data dir.
    pub fn file(&self, data_dir: &Path) -> PathBuf {
        self.path.clone().unwrap_or_else(|| data_dir.join("stategate.db"))
    }
}

pub struct SqliteStorage {
    path: PathBuf,
    /// This process's claim on the file (`file_lock`), released at close.
    lock: Mutex<Option<Arc<super::file_lock::FileLock>>>,
    writer: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the checkpoint thread.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per pooled read connection.
    read_permits: Arc<tokio::sync::Semaphore>,
    /// The connection consumer-group stores write on, opened on first use:
    /// each store is one statement, so it needs no place in the append
    /// batches; WAL lets it take turns with the writer (`busy_timeout`).
    groups: Arc<Mutex<Option<Connection>>>,
}

impl SqliteStorage {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::unavailable(format!("sqlite: cannot create {}: {e}", dir.display())))?;
        }
        let lock = super::file_lock::lock(&path)?;
        let conn = Connection::open(&path).map_err(|e| db_error(&e))?;
        // page_size only takes effect on a new file, so it comes first;
        // an existing file keeps the page size it was created with.
        // temp_store = MEMORY keeps the sub-journal of the per-append
        // savepoints (a batch retried after a failed write, `commit_batch`)
        // in memory: by default it spills to a temp file on disk past 64 KiB.
        conn.execute_batch(&format!(
            "PRAGMA page_size = {PAGE_BYTES}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA busy_timeout = 5000; PRAGMA mmap_size = {MMAP_BYTES}; PRAGMA cache_size = -32768; \
             PRAGMA temp_store = MEMORY;"
        ))
        .map_err(|e| db_error(&e))?;
        conn.execute_batch(SCHEMA).map_err(|e| db_error(&e))?;
        // Checkpoints happen on the checkpoint thread, not in commits.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;").map_err(|e| db_error(&e))?;
        let checkpoint_conn = Connection::open(&path).map_err(|e| db_error(&e))?;
        checkpoint_conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| db_error(&e))?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        let appended = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let written = appended.clone();
        let checkpoint_thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Appends counted at the previous poll, and whether the last
                // checkpoint left frames behind.
                let (mut seen, mut unfinished) = (0, false);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_POLL) {
                    let pending = written.load(std::sync::atomic::Ordering::Relaxed);
                    let paused = pending == seen;
                    seen = pending;
                    if !(pending >= CHECKPOINT_APPENDS || (paused && (pending > 0 || unfinished))) {
                        continue;
                    }
                    written.fetch_sub(pending, std::sync::atomic::Ordering::Relaxed);
                    seen = 0;
                    // PASSIVE: copies what it can without blocking the writer
                    // or readers; what a reader still needed is copied on the
                    // next poll.
                    let frames = checkpoint_conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    unfinished = match frames {
                        Ok((in_wal, copied)) => copied < in_wal,
                        Err(e) => {
                            tracing::debug!(error = %e, "sqlite checkpoint failed; retrying");
                            true
                        }
                    };
                }
            })
            .map_err(Error::internal)?;

        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, appended))
            .map_err(Error::internal)?;
        Ok(SqliteStorage {
            path,
            lock: Mutex::new(Some(lock)),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some((stop_checkpoints, checkpoint_thread))),
            readers: Arc::new(Mutex::new(Vec::new())),
            read_permits: Arc::new(tokio::sync::Semaphore::new(
                READERS_PER_CORE * std::thread::available_parallelism().map_or(2, |n| n.get()).max(2),
            )),
            groups: Arc::new(Mutex::new(None)),
        })
    }

    /// Runs `f` on a pooled read connection in the blocking thread pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        // A permit guarantees a pooled connection (or the right to open one
        // that is then kept), so the pool never grows past the permits.
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::unavailable("sqlite: storage is closed"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(c) => c,
                None => open_reader(&path)?,
            };
            let out = f(&conn).map_err(|e| db_error(&e));
            pool.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            out
        })
        .await
        .map_err(Error::internal)?
    }

    /// `read` for point lookups: runs on the calling task when a connection
    /// is free right now, else waits its turn like `read`.
    async fn read_point<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let Ok(_permit) = self.read_permits.try_acquire() else {
            return self.read(f).await;
        };
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = f(&conn).map_err(|e| db_error(&e));
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        out
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| db_error(&e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| db_error(&e))?;
    conn.execute_batch(&format!("PRAGMA mmap_size = {MMAP_BYTES}; PRAGMA cache_size = -16384;"))
        .map_err(|e| db_error(&e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn db_error(e: &rusqlite::Error) -> Error {
    Error::unavailable(format!("sqlite: {e}"))
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Job>, appended: Arc<std::sync::atomic::AtomicU64>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = rx.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut conn, &batch);
        appended.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (Job { req, reply, .. }, result) in batch.drain(..).zip(results) {
            let _ = reply.send(result.map(|written| written.into_appended(req)));
        }
    }
    // Every sender is gone: shutdown. Fold the WAL back into the main file so
    // the database is one self-contained file at rest.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "sqlite checkpoint at shutdown failed");
    }
}

/// What one append did inside its transaction.
#[derive(Debug)]
enum Written {
    /// A new event with this seq and version.
    New { seq: u64, version: u64 },
    /// The idempotency key's earlier event, returned again.
    Replayed(Event),
}

impl Written {
    /// The append's outcome; the new event takes the request's values
    /// rather than a copy of them.
    fn into_appended(self, req: AppendRequest) -> Appended {
        match self {
            Written::Replayed(event) => Appended { event, replayed: true },
            Written::New { seq, version } => Appended {
                event: req.into_event(seq, version),
                replayed: false,
            },
        }
    }
}

/// Runs a batch of appends in one transaction; returns one result each. If
/// the commit itself fails, every append of the batch fails.
///
/// An append refused by its checks (version, idempotency, a delete of
/// nothing) is refused before it writes anything, so the batch needs no
/// savepoints: a savepoint per append cost a statement parse and a copy of
/// every page it touched into the statement journal. Only a failure in the
/// middle of an append's writes (the disk, a constraint) could leave half of
/// it in the transaction; then the whole transaction is rolled back and the
/// batch runs again with one savepoint per append, so that failure stays
/// that append's own.
fn commit_batch(conn: &mut Connection, jobs: &[Job]) -> Vec<Result<Written>> {
    match commit_without_savepoints(conn, jobs) {
        Some(results) => results,
        None => commit_with_savepoints(conn, jobs),
    }
}

/// `None`: an append failed in the middle of its writes and the transaction
/// was rolled back.
fn commit_without_savepoints(conn: &mut Connection, jobs: &[Job]) -> Option<Vec<Result<Written>>> {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return Some(jobs.iter().map(|_| Err(db_error(&e))).collect()),
    };
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        match append_one(&tx, job) {
            Ok(out) => results.push(Ok(out)),
            Err(Failed::Refused(e)) => results.push(Err(e)),
            // Dropping `tx` rolls it back.
            Err(Failed::Writing(_)) if jobs.len() > 1 => return None,
            Err(Failed::Writing(e)) => return Some(vec![Err(e)]),
        }
    }
    Some(finish(tx, results))
}

fn commit_with_savepoints(conn: &mut Connection, jobs: &[Job]) -> Vec<Result<Written>> {
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return jobs.iter().map(|_| Err(db_error(&e))).collect(),
    };
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let result = (|| {
            let sp = tx.savepoint().map_err(|e| db_error(&e))?;
            let out = append_one(&sp, job).map_err(Failed::into_error)?;
            sp.commit().map_err(|e| db_error(&e))?;
            Ok(out)
        })();
        results.push(result);
    }
    finish(tx, results)
}

fn finish(tx: rusqlite::Transaction<'_>, results: Vec<Result<Written>>) -> Vec<Result<Written>> {
    if let Err(e) = tx.commit() {
        let err = db_error(&e);
        return results.into_iter().map(|_| Err(err.clone())).collect();
    }
    results
}

/// Why an append did not happen.
enum Failed {
    /// Its checks refused it; it wrote nothing.
    Refused(Error),
    /// A statement failed, possibly after some of its writes.
    Writing(Error),
}

impl Failed {
    fn into_error(self) -> Error {
        match self {
            Failed::Refused(e) | Failed::Writing(e) => e,
        }
    }
}

fn append_one(tx: &Connection, job: &Job) -> std::result::Result<Written, Failed> {
    let req = &job.req;
    // Reads and checks come first and fail as `Refused` (nothing written);
    // from the first write on, a failure is `Writing`.
    let e = |e: rusqlite::Error| Failed::Refused(db_error(&e));
    if let Some(idem) = &req.idempotency {
        let found: Option<(String, i64)> = tx
            .prepare_cached("SELECT fingerprint, event_seq FROM idempotency WHERE key = ?1")
            .map_err(e)?
            .query_row([&idem.key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(e)?;
        if let Some((fingerprint, seq)) = found {
            let first = tx
                .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"))
                .map_err(e)?
                .query_row([seq], event_from_row)
                .map_err(e)?;
            if first.time >= idem.not_before {
                if fingerprint != idem.fingerprint {
                    return Err(Failed::Refused(idempotency_mismatch(&idem.key)));
                }
                return Ok(Written::Replayed(first));
            }
        }
    }
    let r = &req.record;
    let row: Option<(u64, bool)> = tx
        .prepare_cached("SELECT version, vals IS NOT NULL FROM states WHERE domain = ?1 AND type = ?2 AND key = ?3")
        .map_err(e)?
        .query_row(params![r.domain, r.ty, r.key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map_err(e)?;
    let current = row.filter(|(_, live)| *live).map(|(v, _)| v);
    if !req.expect.admits(current) {
        return Err(Failed::Refused(conflict(req, current)));
    }
    if req.change == Change::Delete && current.is_none() {
        return Err(Failed::Refused(Error::NotFound(format!("state {r}"))));
    }
    let version = row.map_or(0, |(v, _)| v) + 1;
    let (vals, claims) = (&job.vals, &job.claims);
    let e = |e: rusqlite::Error| Failed::Writing(db_error(&e));
    tx.prepare_cached(
        "INSERT INTO events (id, domain, type, key, version, kind, method, time, vals, claims)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .map_err(e)?
    .execute(params![req.id, r.domain, r.ty, r.key, version, req.kind.as_str(), req.method, req.time, vals, claims])
    .map_err(e)?;
    let seq = tx.last_insert_rowid() as u64;
    tx.prepare_cached(
        "INSERT INTO states (domain, type, key, version, vals) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (domain, type, key) DO UPDATE SET version = excluded.version, vals = excluded.vals",
    )
    .map_err(e)?
    .execute(params![r.domain, r.ty, r.key, version, vals])
    .map_err(e)?;
    if let Some(idem) = &req.idempotency {
        tx.prepare_cached("INSERT OR REPLACE INTO idempotency (key, fingerprint, event_seq) VALUES (?1, ?2, ?3)")
            .map_err(e)?
            .execute(params![idem.key, idem.fingerprint, seq])
            .map_err(e)?;
    }
    Ok(Written::New { seq, version })
}

/// Runs `read` in one read transaction, with the head it sees: in WAL mode
/// the transaction's snapshot is fixed at its first read, so the head and
/// the answer reflect exactly the same commits.
///
/// Every statement here is a cached one: `Get` runs this on each call, and
/// parsing `BEGIN`, the head query and `COMMIT` anew cost more than the
/// lookup itself (callgrind: about 30k instructions per `Get`).
fn snapshot<T>(c: &Connection, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<AtSeq<T>> {
    c.prepare_cached("BEGIN")?.execute([])?;
    let out = (|| -> rusqlite::Result<AtSeq<T>> {
        let seq = c.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")?.query_row([], |r| r.get(0))?;
        Ok(AtSeq { value: read(c)?, seq })
    })();
    // A read transaction: ending it either way only releases its snapshot.
    let end = c.prepare_cached(if out.is_ok() { "COMMIT" } else { "ROLLBACK" })?.execute([]);
    let out = out?;
    end?;
    Ok(out)
}

fn get_now(c: &Connection, r: RecordRef) -> rusqlite::Result<Option<State>> {
    c.prepare_cached("SELECT version, vals FROM states WHERE domain = ?1 AND type = ?2 AND key = ?3 AND vals IS NOT NULL")?
        .query_row(params![r.domain, r.ty, r.key], |row| Ok((row.get(0)?, json_column(row, 1)?)))
        .optional()
        .map(|found| found.map(|(version, values)| State { record: r, version, values }))
}

fn search_states_now(c: &Connection, q: &StateQuery) -> rusqlite::Result<Vec<State>> {
    let mut sql = String::from("SELECT key, version, vals FROM states WHERE domain = ?1 AND type = ?2 AND vals IS NOT NULL");
    let mut args = vec![SqlValue::Text(q.domain.clone()), SqlValue::Text(q.ty.clone())];
    pushdown("vals", &q.filter, &mut sql, &mut args);
    sql.push_str(" ORDER BY key");
    select_states(c, q, &sql, args)
}

/// The states of the query's type after event `seq`: every record the type
/// ever had (the `states` rows, deleted ones included) with its last event
/// up to `seq`, found by one descent of events_by_record_seq each.
fn search_states_past(c: &Connection, q: &StateQuery, seq: u64) -> rusqlite::Result<Vec<State>> {
    let mut sql = String::from(
        "SELECT s.key, e.version, e.vals FROM states s JOIN events e ON e.seq = \
           (SELECT x.seq FROM events x WHERE x.domain = s.domain AND x.type = s.type AND x.key = s.key AND x.seq <= ?3 \
            ORDER BY x.seq DESC LIMIT 1) \
         WHERE s.domain = ?1 AND s.type = ?2 AND e.vals IS NOT NULL",
    );
    let mut args = vec![SqlValue::Text(q.domain.clone()), SqlValue::Text(q.ty.clone()), SqlValue::Integer(seq as i64)];
    pushdown("e.vals", &q.filter, &mut sql, &mut args);
    sql.push_str(" ORDER BY s.key");
    select_states(c, q, &sql, args)
}

/// Runs a states query whose rows are (key, version, vals) in key order and
/// picks the page.
fn select_states(c: &Connection, q: &StateQuery, sql: &str, args: Vec<SqlValue>) -> rusqlite::Result<Vec<State>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params_from_iter(args), |row| {
        Ok(State {
            record: RecordRef {
                domain: q.domain.clone(),
                ty: q.ty.clone(),
                key: row.get(0)?,
            },
            version: row.get(1)?,
            values: json_column(row, 2)?,
        })
    })?;
    // Rows come by key (the primary key's order). A field sort is not
    // pushed into SQL: ORDER BY json_extract orders mixed kinds, arrays and
    // objects otherwise than `query::compare_values`, the one order every
    // provider answers in. So the page keeps the top offset + limit rows as
    // they stream past, never the whole type.
    let arrival = if q.sort.is_some() { Arrival::AnyOrder } else { Arrival::InOrder };
    q.try_select(arrival, rows)
}

const EVENT_COLUMNS: &str = "seq, id, domain, type, key, version, kind, method, time, vals, claims";

/// A JSON column parsed straight from sqlite's buffer (no copy of the text).
fn json_column(row: &Row<'_>, i: usize) -> rusqlite::Result<Values> {
    let text = row.get_ref(i)?.as_str()?;
    parse_values(text).map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into()))
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    let bad = |i: usize, e: String| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into());
    let kind = row.get_ref(6)?.as_str()?;
    Ok(Event {
        seq: row.get(0)?,
        id: row.get(1)?,
        record: RecordRef {
            domain: row.get(2)?,
            ty: row.get(3)?,
            key: row.get(4)?,
        },
        version: row.get(5)?,
        kind: EventKind::parse(kind).ok_or_else(|| bad(6, format!("unknown kind {kind}")))?,
        method: row.get(7)?,
        time: row.get(8)?,
        values: match row.get_ref(9)? {
            rusqlite::types::ValueRef::Null => None,
            _ => Some(json_column(row, 9)?),
        },
        claims: json_column(row, 10)?,
    })
}

fn parse_values(text: &str) -> std::result::Result<Values, String> {
    serde_json::from_str(text).map_err(|e| format!("stored JSON is corrupt: {e}"))
}

/// SQL conditions that select a superset of the rows `filter` matches on the
/// JSON column `column`; the query's shared matcher then decides. Only
/// equality on strings, numbers and booleans is pushed down, which is what
/// keeps searches on large tables fast; everything else is checked in Rust.
///
/// Any filter the parser accepted must run: paths are bound as parameters,
/// never pasted into the SQL; a segment sqlite's JSON path syntax cannot
/// quote (a `"` or `\`, a control character) or would read as an array
/// index (all digits) is not pushed down; and at most `MAX_PUSHDOWN`
/// conditions are, so the expression stays far below sqlite's depth limit
/// (`SQLITE_MAX_EXPR_DEPTH`, 1000) and bound-parameter count.
fn pushdown(column: &str, filter: &Filter, sql: &mut String, args: &mut Vec<SqlValue>) {
    let mut pushed = 0;
    // Only conditions every match satisfies, on one-segment paths: a longer
    // path may lead through arrays, which `json_extract` does not traverse
    // as the matcher does.
    for c in filter.required() {
        let Op::Eq(q) = &c.op else { continue };
        if c.path.len() != 1 {
            continue;
        }
        // The JSON types a stored value equal to `q` can have (an array may
        // hold it as an element), and the value json_extract must equal.
        let (types, value) = match q {
            Value::String(s) => ("'text'", Some(SqlValue::Text(s.clone()))),
            Value::Number(n) => (
                "'integer', 'real'",
                Some(match n.as_i64() {
                    Some(i) => SqlValue::Integer(i),
                    None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
                }),
            ),
            Value::Bool(true) => ("'true'", None),
            Value::Bool(false) => ("'false'", None),
            _ => continue,
        };
        let unquotable = |s: &str| s.contains(['"', '\\']) || s.chars().any(char::is_control);
        if pushed == MAX_PUSHDOWN || c.path.iter().any(|s| unquotable(s) || s.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        pushed += 1;
        let path = format!("$.{}", c.path.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join("."));
        args.push(SqlValue::Text(path));
        let (p, ty) = (args.len(), format!("json_type({column}, ?{})", args.len()));
        match value {
            Some(v) => {
                args.push(v);
                sql.push_str(&format!(
                    " AND (({ty} IN ({types}) AND json_extract({column}, ?{p}) = ?{}) OR {ty} = 'array')",
                    args.len()
                ));
            }
            None => sql.push_str(&format!(" AND {ty} IN ({types}, 'array')")),
        }
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    fn name(&self) -> &str {
        "sqlite"
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        // Serialized here, in parallel on the callers' tasks, so the one
        // writer thread only runs SQL.
        let vals = match &req.change {
            Change::Put(v) => Some(serde_json::to_string(v).map_err(Error::internal)?),
            Change::Delete => None,
        };
        let claims = serde_json::to_string(&req.claims).map_err(Error::internal)?;
        let (reply, done) = oneshot::channel();
        let sender = self.writer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(sender) = sender else {
            return Err(Error::unavailable("sqlite: storage is closed"));
        };
        sender
            .send(Job { req, vals, claims, reply })
            .map_err(|_| Error::unavailable("sqlite: writer stopped"))?;
        done.await.map_err(|_| Error::unavailable("sqlite: writer stopped"))?
    }

    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        let r = record.clone();
        self.read_point(move |c| get_now(c, r)).await
    }

    async fn search_states(&self, q: &StateQuery) -> Result<Vec<State>> {
        let q = q.clone();
        self.read(move |c| search_states_now(c, &q)).await
    }

    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        let r = record.clone();
        self.read_point(move |c| {
            let Some(seq) = at else {
                // One read transaction: the head and the state are one
                // WAL snapshot.
                return snapshot(c, |c| get_now(c, r));
            };
            let found = c
                .prepare_cached(
                    "SELECT version, vals FROM events WHERE domain = ?1 AND type = ?2 AND key = ?3 AND seq <= ?4 \
                     ORDER BY seq DESC LIMIT 1",
                )?
                .query_row(params![r.domain, r.ty, r.key, seq], |row| {
                    Ok(match row.get_ref(1)? {
                        rusqlite::types::ValueRef::Null => None,
                        _ => Some((row.get(0)?, json_column(row, 1)?)),
                    })
                })
                .optional()?
                .flatten();
            Ok(AtSeq {
                value: found.map(|(version, values)| State { record: r, version, values }),
                seq,
            })
        })
        .await
    }

    async fn search_states_at(&self, q: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        let q = q.clone();
        self.read(move |c| match at {
            None => snapshot(c, |c| search_states_now(c, &q)),
            Some(seq) => Ok(AtSeq { value: search_states_past(c, &q, seq)?, seq }),
        })
        .await
    }

    async fn seq_at_time(&self, domain: &str, ty: &str, time: i64) -> Result<u64> {
        let (domain, ty) = (domain.to_owned(), ty.to_owned());
        self.read_point(move |c| {
            // One descent of events_by_type_time (whose entries end in seq).
            c.prepare_cached(
                "SELECT seq FROM events WHERE domain = ?1 AND type = ?2 AND time <= ?3 ORDER BY time DESC, seq DESC LIMIT 1",
            )?
            .query_row(params![domain, ty, time], |row| row.get(0))
            .optional()
            .map(|seq| seq.unwrap_or(0))
        })
        .await
    }

    async fn search_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let q = q.clone();
        self.read(move |c| {
            let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE domain = ?1 AND type = ?2");
            let mut args = vec![SqlValue::Text(q.domain.clone()), SqlValue::Text(q.ty.clone())];
            for (cond, value) in [
                (" AND key = ?", q.key.clone().map(SqlValue::Text)),
                (" AND time >= ?", q.min_time.map(SqlValue::Integer)),
                (" AND time <= ?", q.max_time.map(SqlValue::Integer)),
                (" AND version >= ?", q.min_version.map(|v| SqlValue::Integer(v as i64))),
                (" AND version <= ?", q.max_version.map(|v| SqlValue::Integer(v as i64))),
            ] {
                if let Some(v) = value {
                    args.push(v);
                    sql.push_str(&format!("{cond}{}", args.len()));
                }
            }
            pushdown("vals", &q.filter, &mut sql, &mut args);
            pushdown("claims", &q.claims_filter, &mut sql, &mut args);
            sql.push_str(" ORDER BY seq");
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(args), event_from_row)?;
            // A sorted search keeps the top offset + limit as rows stream
            // past in seq order.
            q.try_select(q.seq_arrival(), rows)
        })
        .await
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        let id = id.to_owned();
        self.read_point(move |c| {
            c.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))?
                .query_row([id], event_from_row)
                .optional()
        })
        .await
    }

    async fn feed(&self, q: &FeedQuery) -> Result<Vec<Event>> {
        let q = q.clone();
        self.read(move |c| {
            let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1");
            let mut args = vec![SqlValue::Integer(q.after_seq as i64)];
            for (cond, value) in [
                (" AND domain = ?", q.topic.domain.clone().map(SqlValue::Text)),
                (" AND type = ?", q.topic.ty.clone().map(SqlValue::Text)),
                (" AND key = ?", q.key.clone().map(SqlValue::Text)),
                (" AND time >= ?", q.from_time.map(SqlValue::Integer)),
            ] {
                if let Some(v) = value {
                    args.push(v);
                    sql.push_str(&format!("{cond}{}", args.len()));
                }
            }
            args.push(SqlValue::Integer(q.limit.min(FEED_PAGE * 16) as i64));
            sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", args.len()));
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(args), event_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn head(&self) -> Result<u64> {
        self.read(|c| c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0)))
            .await
    }

    async fn catalog(&self, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
        let domain = domain.map(str::to_owned);
        self.read(move |c| {
            // The grouping is a scan of the index events_by_type_time
            // (domain, type, time), which covers it; each type's records are
            // a range of the states' primary key.
            let sql = format!(
                "SELECT e.domain, e.type, e.n, e.last, \
                   (SELECT COUNT(*) FROM states s WHERE s.domain = e.domain AND s.type = e.type AND s.vals IS NOT NULL) \
                 FROM (SELECT domain, type, COUNT(*) AS n, MAX(time) AS last FROM events {} GROUP BY domain, type) e \
                 ORDER BY e.domain, e.type",
                if domain.is_some() { "WHERE domain = ?1" } else { "" }
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(domain.iter()), |row| {
                Ok(CatalogEntry {
                    domain: row.get(0)?,
                    ty: row.get(1)?,
                    events: row.get(2)?,
                    last_event_time: row.get(3)?,
                    records: row.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn group_load(&self, name: &str) -> Result<Option<GroupDoc>> {
        let name = name.to_owned();
        self.read_point(move |c| {
            c.prepare_cached("SELECT version, doc FROM groups WHERE name = ?1")?
                .query_row([name], |r| Ok(GroupDoc { version: r.get::<_, i64>(0)? as u64, bytes: r.get(1)? }))
                .optional()
        })
        .await
    }

    async fn group_store(&self, name: &str, expected: u64, doc: &[u8]) -> Result<u64> {
        let (name, doc, conn, path) = (name.to_owned(), doc.to_vec(), self.groups.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut slot = conn.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                let c = Connection::open(&path).map_err(|e| db_error(&e))?;
                c.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;").map_err(|e| db_error(&e))?;
                *slot = Some(c);
            }
            let c = slot.as_ref().expect("opened above");
            // One statement each: the version check and the write are atomic.
            let changed = if expected == 0 {
                c.prepare_cached("INSERT INTO groups (name, version, doc) VALUES (?1, 1, ?2) ON CONFLICT (name) DO NOTHING")
                    .and_then(|mut st| st.execute(params![name, doc]))
            } else {
                c.prepare_cached("UPDATE groups SET version = version + 1, doc = ?3 WHERE name = ?1 AND version = ?2")
                    .and_then(|mut st| st.execute(params![name, expected as i64, doc]))
            }
            .map_err(|e| db_error(&e))?;
            if changed == 1 {
                return Ok(expected + 1);
            }
            let current = c
                .query_row("SELECT version FROM groups WHERE name = ?1", [&name], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(|e| db_error(&e))?;
            Err(group_conflict(&name, expected, current.map(|v| v as u64)))
        })
        .await
        .map_err(Error::internal)?
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    async fn close(&self) -> Result<()> {
        // Stop background checkpoints first: the writer's final one must
        // not find another checkpointer busy.
        let checkpointer = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((stop, thread)) = checkpointer {
            drop(stop);
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(Error::internal)?
                .map_err(|_| Error::internal("sqlite checkpoint thread panicked"))?;
        }
        // Dropping the last sender lets the writer finish its queue, checkpoint
        // and exit; wait for it so the file is complete when we return.
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.writer_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(Error::internal)?
                .map_err(|_| Error::internal("sqlite writer panicked"))?;
        }
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Expect;

    fn job(key: &str, id: &str, expect: Expect) -> Job {
        let mut values = Values::new();
        values.insert("k".into(), key.into());
        Job {
            req: AppendRequest {
                id: id.into(),
                record: RecordRef { domain: "d".into(), ty: "t".into(), key: key.into() },
                change: Change::Put(values),
                expect,
                kind: EventKind::Set,
                method: "test".into(),
                claims: Default::default(),
                time: 1,
                idempotency: None,
            },
            vals: Some(format!(r#"{{"k":"{key}"}}"#)),
            claims: "{}".into(),
            reply: oneshot::channel().0,
        }
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        (dir, conn)
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_refused_append_leaves_the_rest_of_its_batch() {
        let (_dir, mut conn) = db();
        let jobs = [job("a", "1", Expect::Any), job("b", "2", Expect::Version(7)), job("c", "3", Expect::Absent)];
        let results = commit_batch(&mut conn, &jobs);
        assert!(matches!(results[0], Ok(Written::New { version: 1, .. })));
        assert!(matches!(results[1], Err(Error::VersionConflict { .. })), "{:?}", results[1].as_ref().err());
        assert!(matches!(results[2], Ok(Written::New { version: 1, .. })));
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 2);
        assert_eq!(count(&conn, "SELECT count(*) FROM states WHERE key = 'b'"), 0);
    }

    /// A failure after an append's first write (here its state row, after
    /// its event row) must take back that append's event too, and only it.
    #[test]
    fn a_write_failing_halfway_takes_back_only_its_own_append() {
        let (_dir, mut conn) = db();
        conn.execute_batch(
            "CREATE TRIGGER fail_b BEFORE INSERT ON states WHEN NEW.key = 'b' BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
        let jobs = [job("a", "1", Expect::Any), job("b", "2", Expect::Any), job("c", "3", Expect::Any)];
        let results = commit_batch(&mut conn, &jobs);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let err = results[1].as_ref().err().expect("b fails").to_string();
        assert!(err.contains("injected"), "{err}");
        assert_eq!(count(&conn, "SELECT count(*) FROM events WHERE key = 'b'"), 0, "b's event row was left behind");
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 2);
        // Alone in its batch, the same failure takes back its own event.
        let results = commit_batch(&mut conn, &[job("b", "4", Expect::Any)]);
        assert!(results[0].is_err());
        assert_eq!(count(&conn, "SELECT count(*) FROM events WHERE key = 'b'"), 0);
    }
}

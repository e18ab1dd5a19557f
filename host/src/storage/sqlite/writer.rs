//! The writer thread: the one connection that writes, and group commit.
//!
//! It takes every append waiting in its queue, runs them in one transaction
//! and commits once, so concurrent writers share one fsync; seqs are
//! assigned in commit order. An append its checks refuse writes nothing and
//! the others go on (`commit_batch` for a failure in the middle of a write).
//!
//! Its statements ([`Writer`]) are prepared when the thread starts
//! and kept for its life, not taken from rusqlite's statement cache: the
//! cache hashes a statement's SQL text on every use and re-files it on every
//! return, about 2.8k instructions a statement, on this one thread that
//! every write waits for; holding them took a `Set` from 179.2k to 174.3k
//! instructions (callgrind, BENCHMARKS.md session 17). Holding the statements means the transaction is
//! driven by statements too (`BEGIN IMMEDIATE`, `COMMIT`, savepoints),
//! since rusqlite's `Transaction` needs the connection exclusively while a
//! statement borrows it; every path that leaves a transaction open after a
//! failure rolls it back here.
//!
//! An append checks the record's current version first. The writer keeps
//! the versions of the records it rewrote last ([`Versions`]), so writing a
//! record again soon (a counter, a session, an aggregate under load) skips
//! reading its `states` row. This holds because this thread is the only
//! writer of `states` (one process per file, `file_lock`; every other
//! connection of the process is a reader), and it forgets everything
//! whenever a transaction or a savepoint is rolled back: what it remembers
//! is what the table holds.

use super::in_place::{Binder, InPlace};
use super::point_cache::PointCache;
use super::{EVENT_COLUMNS, FieldIndexes, db_error, event_from_row};
use crate::model::{Appended, AppendRequest, Change, Error, RecordRef, Result};
use crate::storage::{conflict, idempotency_mismatch};
use rusqlite::{Connection, OptionalExtension, Statement, params};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// The batch's records by reference (`Pending::last`), hashed with
/// foldhash: seeded at random as std's SipHash is, so a caller cannot pick
/// keys that collide, and about 150 instructions a record against
/// SipHash's 370, on the writer thread (callgrind, BENCHMARKS.md session 30).
type Records<'j, V> = HashMap<&'j RecordRef, V, foldhash::fast::RandomState>;

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 512;

/// An append with its JSON columns ready: serialized on the caller's task,
/// so the one writer thread only runs SQL.
pub(super) struct Job {
    pub req: AppendRequest,
    /// The values' JSON text when they came as a map. Values that hold
    /// their text already (as a `Set` through the API's reader) are bound
    /// from `req` itself: a copy of that text cost an allocation and a
    /// copy per append, and its free on this thread, of memory the
    /// caller's thread allocated.
    serialized: Option<String>,
    /// The claims' JSON text; `None` for none (auth off), bound as `{}`:
    /// the text `{}` cost an allocation on the caller's thread and its
    /// free on this one per append.
    claims: Option<String>,
    pub reply: oneshot::Sender<Result<Appended>>,
}

impl Job {
    pub(super) fn new(req: AppendRequest, reply: oneshot::Sender<Result<Appended>>) -> Result<Job> {
        let serialized = match &req.change {
            Change::Put(v) if v.json_text().is_none() => Some(v.to_json_string()),
            _ => None,
        };
        let claims = if req.claims.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&req.claims).map_err(Error::internal)?)
        };
        Ok(Job { req, serialized, claims, reply })
    }

    /// The `claims` column.
    fn claims(&self) -> &str {
        self.claims.as_deref().unwrap_or("{}")
    }

    /// The `vals` column: the values' JSON text, `None` for a deletion.
    pub(super) fn vals(&self) -> Option<&str> {
        match &self.req.change {
            Change::Put(v) => v.json_text().or(self.serialized.as_deref()),
            Change::Delete => None,
        }
    }
}

/// What the writer thread does: appends (batched), or an index to build
/// between two batches (`field_index.rs`).
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every Work is an Append: boxing the Job would cost an allocation per write to shrink the rare Index"
)]
pub(super) enum Work {
    Append(Job),
    Index(String),
}

/// The writer's connection's state: every statement it runs, prepared once,
/// and the versions it remembers.
pub(super) struct Writer<'c> {
    begin: Statement<'c>,
    commit: Statement<'c>,
    rollback: Statement<'c>,
    savepoint: Statement<'c>,
    release: Statement<'c>,
    rollback_to: Statement<'c>,
    idempotency_get: Statement<'c>,
    event_at_seq: Statement<'c>,
    state_get: Statement<'c>,
    idempotency_put: Statement<'c>,
    events: RowWriter<'c>,
    states: RowWriter<'c>,
    versions: Versions,
}

/// Most rows one statement writes.
const MAX_ROWS: usize = 64;
/// Statements of 1, 2, 4, ... `MAX_ROWS` rows.
const ROW_SIZES: usize = MAX_ROWS.trailing_zeros() as usize + 1;

/// An `INSERT` of any number of rows: its head, its columns per row, what
/// follows the rows, and how an append binds its row.
///
/// `OR FAIL`: a statement that fails keeps the rows it wrote before, where
/// the default (`ABORT`) takes them back, for which sqlite copies every
/// page a statement of many rows changes into a statement journal first
/// (about 8k instructions of a `Set`, callgrind). The writer never commits
/// after a failed write: it rolls the whole transaction back and runs the
/// batch again with a savepoint per append (`commit_batch`), so what a
/// failed statement left is never kept.
struct RowsSql {
    head: &'static str,
    columns: usize,
    tail: &'static str,
    /// Binds an append's row, as this version of its record, after the
    /// statement's first `before` parameters; its texts are read in place.
    bind: for<'j> fn(binder: &mut Binder<'_, 'j>, before: usize, job: &'j Job, version: u64) -> rusqlite::Result<()>,
}

impl RowsSql {
    fn sql(&self, rows: usize) -> String {
        let row = format!("({})", vec!["?"; self.columns].join(", "));
        format!("{} VALUES {}{}", self.head, vec![row; rows].join(", "), self.tail)
    }
}

const EVENT_ROWS: RowsSql = RowsSql {
    head: "INSERT OR FAIL INTO events (id, domain, type, key, version, kind, method, time, vals, claims)",
    columns: 10,
    tail: "",
    bind: bind_event,
};

const STATE_ROWS: RowsSql = RowsSql {
    head: "INSERT OR FAIL INTO states (domain, type, key, version, vals)",
    columns: 5,
    tail: " ON CONFLICT (domain, type, key) DO UPDATE SET version = excluded.version, vals = excluded.vals",
    bind: bind_state,
};

/// One table's statements of 1, 2, 4, ... `MAX_ROWS` rows: the one-row
/// statement prepared at start (a connection that cannot prepare it fails
/// there), the others on first use, all held. They bind the appends' texts
/// in place (`in_place.rs`): an event row's ten parameters were a tenth of
/// the writer's work per `Set` while rusqlite copied each text.
struct RowWriter<'c> {
    conn: &'c Connection,
    sql: &'static RowsSql,
    /// `held[k]` writes 2^k rows.
    held: [Option<InPlace<'c>>; ROW_SIZES],
}

impl<'c> RowWriter<'c> {
    fn prepare(conn: &'c Connection, sql: &'static RowsSql) -> rusqlite::Result<Self> {
        let mut held = [const { None }; ROW_SIZES];
        held[0] = Some(InPlace::prepare(conn, &sql.sql(1))?);
        Ok(RowWriter { conn, sql, held })
    }

    /// Writes `rows` (an append's place in `jobs`, and its version) in
    /// their order, with one statement per bit of their count; `written`
    /// hears each statement's rows and the rowid of its last row.
    fn write(
        &mut self,
        jobs: &[Job],
        rows: &[(usize, u64)],
        mut written: impl FnMut(&[(usize, u64)], i64),
    ) -> rusqlite::Result<()> {
        let (bind, columns) = (self.sql.bind, self.sql.columns);
        let mut done = 0;
        while done < rows.len() {
            let chunk = &rows[done..done + next_rows(rows.len() - done)];
            let slot = &mut self.held[chunk.len().trailing_zeros() as usize];
            if slot.is_none() {
                *slot = Some(InPlace::prepare(self.conn, &self.sql.sql(chunk.len()))?);
            }
            let stmt = slot.as_mut().expect("prepared above");
            stmt.execute(|binder| {
                for (k, &(at, version)) in chunk.iter().enumerate() {
                    bind(binder, k * columns, &jobs[at], version)?;
                }
                Ok(())
            })?;
            written(chunk, self.conn.last_insert_rowid());
            done += chunk.len();
        }
        Ok(())
    }
}

/// How many of `remaining` rows the next statement writes: the most a
/// held statement writes, so a batch takes one statement per bit of its size.
fn next_rows(remaining: usize) -> usize {
    let most = remaining.min(MAX_ROWS);
    1 << most.ilog2()
}

/// Records the writer remembers, at most.
const REMEMBERED_RECORDS: usize = 4096;

/// The last version the writer wrote of each of the records it rewrote
/// last (a record enters on its second write), and whether that version is
/// live (not a deletion): what `states` holds for them, within the
/// transaction in progress too. Bounded, least recently written forgotten
/// first; a record not here is read from `states`.
struct Versions(lru::LruCache<RecordRef, (u64, bool)>);

impl Versions {
    fn new() -> Self {
        Versions(lru::LruCache::new(std::num::NonZeroUsize::new(REMEMBERED_RECORDS).expect("non-zero")))
    }

    fn get(&mut self, record: &RecordRef) -> Option<(u64, bool)> {
        self.0.get(record).copied()
    }

    fn wrote(&mut self, record: &RecordRef, version: u64, live: bool) {
        match self.0.get_mut(record) {
            Some(row) => *row = (version, live),
            None => {
                self.0.put(record.clone(), (version, live));
            }
        }
    }

    fn forget_all(&mut self) {
        self.0.clear();
    }
}

/// Lookaside slots of the writer's connection: small allocations of a
/// statement's run (cursors, string cells) come from a per-connection
/// pool of these instead of `malloc`, but prepared statements keep slots
/// for their life, and sqlite's default pool (40 of 1200 bytes) is used up
/// by the statements held here; every allocation then falls through to
/// `malloc` and `free`, about 10k instructions of a `Set` (callgrind,
/// BENCHMARKS.md session 17). 240 KiB, once, for the one writer.
const LOOKASIDE_SLOTS: i32 = 200;
const LOOKASIDE_SLOT_BYTES: i32 = 1200;

/// Gives the writer's connection a lookaside pool its held statements
/// leave room in. Must run before the connection's first statement
/// (sqlite refuses while any lookaside memory is in use); if it is refused
/// the writer works as before, with the default pool.
pub(super) fn widen_lookaside(conn: &Connection) {
    // SAFETY: the handle is the live connection's; a null buffer asks
    // sqlite to allocate the pool itself, and the variadic arguments are
    // the (void*, int, int) that SQLITE_DBCONFIG_LOOKASIDE takes.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            LOOKASIDE_SLOT_BYTES,
            LOOKASIDE_SLOTS,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "sqlite: the writer's lookaside pool stays at its default size");
    }
}

impl<'c> Writer<'c> {
    pub(super) fn prepare(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Writer {
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            rollback: conn.prepare("ROLLBACK")?,
            savepoint: conn.prepare("SAVEPOINT append")?,
            release: conn.prepare("RELEASE append")?,
            rollback_to: conn.prepare("ROLLBACK TO append")?,
            idempotency_get: conn.prepare("SELECT fingerprint, event_seq FROM idempotency WHERE key = ?1")?,
            event_at_seq: conn.prepare(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"))?,
            state_get: conn.prepare("SELECT version, vals IS NOT NULL FROM states WHERE domain = ?1 AND type = ?2 AND key = ?3")?,
            idempotency_put: conn
                .prepare("INSERT OR REPLACE INTO idempotency (key, fingerprint, event_seq) VALUES (?1, ?2, ?3)")?,
            events: RowWriter::prepare(conn, &EVENT_ROWS)?,
            states: RowWriter::prepare(conn, &STATE_ROWS)?,
            versions: Versions::new(),
        })
    }

    /// Ends a transaction that failed; its own failure changes nothing for
    /// the appends (they fail already), and sqlite has then rolled back.
    fn roll_back(&mut self) {
        self.versions.forget_all();
        if let Err(e) = self.rollback.execute([]) {
            tracing::debug!(error = %e, "sqlite: rollback after a failed batch failed");
        }
    }

    /// Notes the version an append writes. A record's first write does not
    /// enter the cache, so a stream of new records (an import, keys that
    /// are never rewritten) costs one failed lookup each; written before,
    /// it is likely to be written again.
    fn remember(&mut self, job: &Job, version: u64, existed: bool) {
        if existed {
            self.versions.wrote(&job.req.record, version, job.vals().is_some());
        }
    }

    /// Rolls back a batch whose write failed halfway: `None` to run it
    /// again with a savepoint per append, unless the append that failed was
    /// the batch's only one.
    fn abandon(&mut self, jobs: &[Job], e: Error) -> Option<Vec<Result<Written>>> {
        self.roll_back();
        if jobs.len() > 1 { None } else { Some(vec![Err(e)]) }
    }

    /// Takes back the writes of the append in the open savepoint and ends it.
    fn roll_back_append(&mut self) -> rusqlite::Result<()> {
        self.versions.forget_all();
        self.rollback_to.execute([])?;
        self.release.execute([])?;
        Ok(())
    }
}

pub(super) fn writer_loop(
    conn: Connection,
    mut rx: mpsc::UnboundedReceiver<Work>,
    appended: Arc<AtomicU64>,
    wal_restart: &WalRestart,
    fields: &FieldIndexes,
    cache: Option<&PointCache>,
) {
    // The statements borrow `conn`: they end with this block, before the
    // checkpoint at shutdown.
    {
        // `open_with` prepared the same statements on this connection
        // before starting the thread, so this does not fail short of the
        // connection itself failing; then every append says why.
        let mut writer = Writer::prepare(&conn);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Work taken from the queue while filling a batch that is not an append.
        let mut held = None;
        while let Some(work) = held.take().or_else(|| rx.blocking_recv()) {
            let job = match work {
                Work::Append(job) => job,
                Work::Index(field) => {
                    if let Err(e) = fields.create(&conn, &field) {
                        tracing::warn!(field, error = %e, "sqlite: indexing a field failed; searches naming it scan instead");
                    }
                    continue;
                }
            };
            batch.push(job);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Work::Append(job)) => batch.push(job),
                    Ok(other) => {
                        held = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(cache) = cache {
                cache.writing(batch.iter().map(|job| &job.req.record));
            }
            let results = match &mut writer {
                Ok(writer) => commit_batch(writer, &batch),
                Err(e) => batch.iter().map(|_| Err(db_error(e))).collect(),
            };
            appended.fetch_add(batch.len() as u64, Ordering::Relaxed);
            // Before any answer: an acknowledged write is never read back
            // older from the cache (`point_cache.rs`, invariant 1).
            if let Some(cache) = cache {
                let new_seqs = results.iter().filter_map(|r| match r {
                    Ok(Written::New { seq, .. }) => Some(*seq),
                    _ => None,
                });
                cache.written(new_seqs.max());
            }
            for (Job { req, reply, .. }, result) in batch.drain(..).zip(results) {
                let _ = reply.send(result.map(|written| written.into_appended(req)));
            }
            match wal_restart.take() {
                Some(WalAsk::Full) => restart_wal(&conn),
                Some(WalAsk::CaughtUp) => finish_checkpoint(&conn),
                None => {}
            }
        }
    }
    // Every sender is gone: shutdown. Fold the WAL back into the main file so
    // the database is one self-contained file at rest.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "sqlite checkpoint at shutdown failed");
    }
}

/// What the checkpoint thread asks of the writer after a checkpoint, done
/// between two batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum WalAsk {
    /// That checkpoint copied the whole WAL as it stood, which is larger
    /// than `WAL_CAUGHT_UP_BYTES`: copy what was committed since, so the
    /// next batch starts the WAL over ([`finish_checkpoint`]).
    CaughtUp = 1,
    /// The WAL is past `WAL_LIMIT_BYTES`: restart it, waiting for readers
    /// ([`restart_wal`]).
    Full = 2,
}

/// The stronger of the checkpoint thread's asks since the writer last looked.
#[derive(Default)]
pub(super) struct WalRestart(AtomicU8);

impl WalRestart {
    pub(super) fn ask(&self, what: WalAsk) {
        self.0.fetch_max(what as u8, Ordering::Relaxed);
    }

    /// The ask waiting, if any, and forgets it.
    fn take(&self) -> Option<WalAsk> {
        // A load first: nearly every batch finds nothing asked, and a swap
        // would write the shared line after every one.
        if self.0.load(Ordering::Relaxed) == 0 {
            return None;
        }
        match self.0.swap(0, Ordering::Relaxed) {
            1 => Some(WalAsk::CaughtUp),
            2 => Some(WalAsk::Full),
            _ => None,
        }
    }
}

/// Copies the frames committed since the checkpoint thread's last
/// checkpoint, which copied all the others (see `WAL_CAUGHT_UP_BYTES`).
/// With every frame copied, the next batch starts the WAL over unless a
/// reader is still on one of its frames; then the WAL goes on growing and
/// the next checkpoint asks again. `PASSIVE` waits for no reader.
fn finish_checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::debug!(error = %e, "sqlite: the writer's checkpoint failed; the checkpoint thread goes on");
    }
}

/// Copies the whole WAL back and lets the next batch start it over (see
/// `WAL_LIMIT_BYTES`). A reader still on old frames after
/// `WAL_RESTART_WAIT` leaves it for the checkpoint thread to ask again.
fn restart_wal(conn: &Connection) {
    let restarted = conn
        .busy_timeout(super::WAL_RESTART_WAIT)
        .and_then(|()| conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)));
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    match restarted {
        Ok(0) => tracing::debug!("sqlite: WAL restarted after passing its size limit"),
        Ok(_) => tracing::debug!("sqlite: WAL restart waited on a reader; trying again later"),
        Err(e) => tracing::warn!(error = %e, "sqlite: restarting the WAL failed; trying again later"),
    }
}

/// What one append did inside its transaction.
#[derive(Debug)]
pub(super) enum Written {
    /// A new event with this seq and version.
    New { seq: u64, version: u64 },
    /// The idempotency key's earlier event, returned again (boxed: a
    /// replay is rare, and every batch's results hold one `Written` each).
    Replayed(Box<crate::model::Event>),
}

impl Written {
    /// The append's outcome; the new event takes the request's values
    /// rather than a copy of them.
    fn into_appended(self, req: AppendRequest) -> Appended {
        match self {
            Written::Replayed(event) => Appended { event: *event, replayed: true },
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
pub(super) fn commit_batch(s: &mut Writer<'_>, jobs: &[Job]) -> Vec<Result<Written>> {
    match commit_without_savepoints(s, jobs) {
        Some(results) => results,
        None => commit_with_savepoints(s, jobs),
    }
}

/// `None`: an append failed in the middle of its writes and the transaction
/// was rolled back.
///
/// The batch's appends are checked one by one and written together: their
/// events with a statement for many rows, then one state row per record,
/// its last version of the batch (`Pending`). An append with an
/// idempotency key is written on its own, after what is pending, so the
/// next append with its key finds it.
fn commit_without_savepoints(s: &mut Writer<'_>, jobs: &[Job]) -> Option<Vec<Result<Written>>> {
    if let Err(e) = s.begin.execute([]) {
        return Some(jobs.iter().map(|_| Err(db_error(&e))).collect());
    }
    let mut results = Vec::with_capacity(jobs.len());
    let mut pending = Pending::default();
    for (i, job) in jobs.iter().enumerate() {
        let outcome = if job.req.idempotency.is_some() {
            write_pending(s, jobs, &mut pending, &mut results).and_then(|()| append_one(s, job))
        } else {
            check(s, job, &pending.last).map(|checked| match checked {
                Checked::Replayed(first) => Written::Replayed(first),
                Checked::Write { version, existed } => pending.add(s, i, job, version, existed),
            })
        };
        match outcome {
            Ok(out) => results.push(Ok(out)),
            Err(Failed::Refused(e)) => results.push(Err(e)),
            Err(Failed::Writing(e)) => return s.abandon(jobs, e),
        }
    }
    if let Err(e) = write_pending(s, jobs, &mut pending, &mut results) {
        return s.abandon(jobs, e.into_error());
    }
    Some(finish(s, results))
}

fn commit_with_savepoints(s: &mut Writer<'_>, jobs: &[Job]) -> Vec<Result<Written>> {
    if let Err(e) = s.begin.execute([]) {
        return jobs.iter().map(|_| Err(db_error(&e))).collect();
    }
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Err(e) = s.savepoint.execute([]) {
            results.push(Err(db_error(&e)));
            continue;
        }
        let result = append_one(s, job)
            .map_err(Failed::into_error)
            .and_then(|out| s.release.execute([]).map(|_| out).map_err(|e| db_error(&e)));
        if result.is_err()
            && let Err(e) = s.roll_back_append()
        {
            // This append's writes may still be in the transaction: none of
            // the batch may commit.
            s.roll_back();
            return jobs.iter().map(|_| Err(db_error(&e))).collect();
        }
        results.push(result);
    }
    finish(s, results)
}

fn finish(s: &mut Writer<'_>, results: Vec<Result<Written>>) -> Vec<Result<Written>> {
    if let Err(e) = s.commit.execute([]) {
        // A failed COMMIT can leave the transaction open (a busy lock).
        s.roll_back();
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

/// Checks and writes one append, on its own.
fn append_one(s: &mut Writer<'_>, job: &Job) -> std::result::Result<Written, Failed> {
    let (version, existed) = match check(s, job, &Records::default())? {
        Checked::Replayed(first) => return Ok(Written::Replayed(first)),
        Checked::Write { version, existed } => (version, existed),
    };
    let e = |e: rusqlite::Error| Failed::Writing(db_error(&e));
    let (one, row) = (std::slice::from_ref(job), [(0, version)]);
    let mut seq = 0;
    s.events.write(one, &row, |_, last| seq = last as u64).map_err(e)?;
    s.states.write(one, &row, |_, _| {}).map_err(e)?;
    if let Some(idem) = &job.req.idempotency {
        s.idempotency_put.execute(params![idem.key, idem.fingerprint, seq]).map_err(e)?;
    }
    s.remember(job, version, existed);
    Ok(Written::New { seq, version })
}

/// What an append's checks found.
enum Checked {
    /// Its idempotency key's earlier event, to answer with again.
    Replayed(Box<crate::model::Event>),
    /// To write as this version of its record; `existed`: the record had
    /// been written before (see `Writer::remember`).
    Write { version: u64, existed: bool },
}

/// An append's checks: its idempotency key, then the version its record
/// is at (`pending` first: what the batch wrote of it and has not yet
/// written to the tables). They only read, and fail as `Refused`.
fn check(s: &mut Writer<'_>, job: &Job, pending: &Records<'_, Last>) -> std::result::Result<Checked, Failed> {
    let req = &job.req;
    let e = |e: rusqlite::Error| Failed::Refused(db_error(&e));
    if let Some(idem) = &req.idempotency {
        let found: Option<(String, i64)> = s
            .idempotency_get
            .query_row([&idem.key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(e)?;
        if let Some((fingerprint, seq)) = found {
            let first = s.event_at_seq.query_row([seq], event_from_row).map_err(e)?;
            if first.time >= idem.not_before {
                if fingerprint != idem.fingerprint {
                    return Err(Failed::Refused(idempotency_mismatch(&idem.key)));
                }
                return Ok(Checked::Replayed(Box::new(first)));
            }
        }
    }
    let r = &req.record;
    let row: Option<(u64, bool)> = match pending.get(r) {
        Some(last) => Some((last.version, last.live)),
        None => match s.versions.get(r) {
            Some(row) => Some(row),
            None => s
                .state_get
                .query_row(params![r.domain, r.ty, r.key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
                .map_err(e)?,
        },
    };
    let current = row.filter(|(_, live)| *live).map(|(v, _)| v);
    if !req.expect.admits(current) {
        return Err(Failed::Refused(conflict(req, current)));
    }
    if req.change == Change::Delete && current.is_none() {
        return Err(Failed::Refused(Error::NotFound(format!("state {r}"))));
    }
    let version = row.map_or(0, |(v, _)| v) + 1;
    Ok(Checked::Write { version, existed: row.is_some() })
}

/// The appends of a batch checked and not yet written, in the batch's
/// order, and each record's last version among them.
///
/// Written together, a batch's events take one statement per bit of their
/// count instead of one each: a statement's start and end (cursors
/// opened, the VDBE halted) are paid once, and an index whose new keys
/// follow one another (a record's events, a type's events, ids ordered by
/// time) finds each next place from where its cursor stands instead of
/// descending from the root. Its states take one row per record, the last
/// version: a record written many times in a batch (a counter, a hot
/// aggregate) rewrites its state row once.
#[derive(Default)]
struct Pending<'j> {
    /// (the append's place in the batch, its version).
    rows: Vec<(usize, u64)>,
    last: Records<'j, Last>,
}

/// A record's last version in `Pending`.
struct Last {
    version: u64,
    live: bool,
    /// Its place in `Pending::rows`.
    row: usize,
}

impl<'j> Pending<'j> {
    /// Holds a checked append to be written; it answers `Written::New`
    /// with its seq still to come (`write_pending`).
    fn add(&mut self, s: &mut Writer<'_>, at: usize, job: &'j Job, version: u64, existed: bool) -> Written {
        let live = job.vals().is_some();
        self.last.insert(&job.req.record, Last { version, live, row: self.rows.len() });
        self.rows.push((at, version));
        s.remember(job, version, existed);
        Written::New { seq: 0, version }
    }
}

/// Writes what is pending: the events in the batch's order (their seqs
/// are given in that order, each the table's largest plus one, so a
/// statement's rows end at `last_insert_rowid` one after another), then
/// each record's last state.
fn write_pending(
    s: &mut Writer<'_>,
    jobs: &[Job],
    pending: &mut Pending<'_>,
    results: &mut [Result<Written>],
) -> std::result::Result<(), Failed> {
    let e = |e: rusqlite::Error| Failed::Writing(db_error(&e));
    let rows = &pending.rows;
    s.events
        .write(jobs, rows, |chunk, last| {
            for (k, &(at, _)) in chunk.iter().enumerate() {
                if let Ok(Written::New { seq, .. }) = &mut results[at] {
                    *seq = (last - (chunk.len() - 1 - k) as i64) as u64;
                }
            }
        })
        .map_err(e)?;
    let mut states: Vec<(usize, u64)> = pending.last.values().map(|last| rows[last.row]).collect();
    states.sort_unstable();
    s.states.write(jobs, &states, |_, _| {}).map_err(e)?;
    pending.rows.clear();
    pending.last.clear();
    Ok(())
}

/// `RowsSql::bind` of an event row.
fn bind_event<'j>(b: &mut Binder<'_, 'j>, before: usize, job: &'j Job, version: u64) -> rusqlite::Result<()> {
    let (req, r) = (&job.req, &job.req.record);
    b.text(before + 1, &req.id)?;
    b.text(before + 2, &r.domain)?;
    b.text(before + 3, &r.ty)?;
    b.text(before + 4, &r.key)?;
    b.integer(before + 5, version)?;
    b.text(before + 6, req.kind.as_str())?;
    b.text(before + 7, &req.method)?;
    b.integer(before + 8, req.time)?;
    b.text_or_null(before + 9, job.vals())?;
    b.text(before + 10, job.claims())
}

/// `RowsSql::bind` of a state row.
fn bind_state<'j>(b: &mut Binder<'_, 'j>, before: usize, job: &'j Job, version: u64) -> rusqlite::Result<()> {
    let r = &job.req.record;
    b.text(before + 1, &r.domain)?;
    b.text(before + 2, &r.ty)?;
    b.text(before + 3, &r.key)?;
    b.integer(before + 4, version)?;
    b.text_or_null(before + 5, job.vals())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, db, put};
    use super::*;
    use crate::model::{Expect, Values};

    fn job(key: &str, id: &str, expect: Expect) -> Job {
        let mut values = Values::new();
        values.insert("k".into(), key.into());
        Job::new(AppendRequest { expect, ..put(id.into(), "t", key.into(), values) }, oneshot::channel().0).unwrap()
    }

    fn delete(key: &str, id: &str) -> Job {
        let mut job = job(key, id, Expect::Any);
        job.req.change = Change::Delete;
        job
    }

    fn with_key(mut job: Job, key: &str) -> Job {
        job.req.idempotency = Some(crate::model::Idempotency { key: key.into(), fingerprint: "f".into(), not_before: 0 });
        job
    }

    fn stored(conn: &Connection, id: &str) -> (i64, i64) {
        conn.query_row("SELECT seq, version FROM events WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
    }

    /// A batch whose size is no power of two is written with several
    /// statements; every append answers with the seq and version its row
    /// holds, seqs in the batch's order, and each record's state row holds
    /// its last version.
    #[test]
    fn a_batch_written_together_answers_each_append_with_its_own_row() {
        let (_dir, conn) = db();
        let mut writer = Writer::prepare(&conn).unwrap();
        let first = commit_batch(&mut writer, &[job("a", "0", Expect::Any)]);
        assert!(matches!(first[0], Ok(Written::New { seq: 1, version: 1 })), "{first:?}");
        let jobs: Vec<Job> = (1..=101).map(|i| job(["a", "b", "c"][i % 3], &i.to_string(), Expect::Any)).collect();
        let results = commit_batch(&mut writer, &jobs);
        let mut last_seq = 1;
        let mut versions = std::collections::HashMap::from([("a", 1)]);
        for (i, result) in results.iter().enumerate() {
            let Ok(Written::New { seq, version }) = result else { panic!("append {i}: {result:?}") };
            let key = ["a", "b", "c"][(i + 1) % 3];
            let expected = versions.entry(key).or_insert(0);
            *expected += 1;
            assert_eq!(*version, *expected, "append {i} of {key}");
            assert!(*seq > last_seq, "seqs in the batch's order");
            last_seq = *seq;
            assert_eq!(stored(&conn, &(i + 1).to_string()), (*seq as i64, *version as i64), "append {i}");
        }
        for (key, version) in &versions {
            assert_eq!(count(&conn, &format!("SELECT version FROM states WHERE key = '{key}'")), *version as i64);
        }
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 102);
        // The versions the batch wrote are the ones the next batch builds on.
        let a = versions["a"];
        let results = commit_batch(&mut writer, &[job("a", "x", Expect::Version(a)), job("d", "y", Expect::Absent)]);
        assert!(matches!(results[0], Ok(Written::New { version, .. }) if version == a + 1), "{results:?}");
        assert!(matches!(results[1], Ok(Written::New { version: 1, .. })), "{results:?}");
    }

    /// Within one batch, an append checks against what the appends before
    /// it wrote, though not yet on the table: a delete, a write expecting
    /// the record absent after it, one expecting a version.
    #[test]
    fn an_append_checks_against_the_earlier_appends_of_its_batch() {
        let (_dir, conn) = db();
        let mut writer = Writer::prepare(&conn).unwrap();
        let jobs = [
            job("a", "1", Expect::Absent),
            job("a", "2", Expect::Absent),
            delete("a", "3"),
            delete("a", "4"),
            job("a", "5", Expect::Absent),
            job("a", "6", Expect::Version(4)),
            job("a", "7", Expect::Version(3)),
        ];
        let results = commit_batch(&mut writer, &jobs);
        assert!(matches!(results[0], Ok(Written::New { version: 1, .. })), "{results:?}");
        assert!(matches!(results[1], Err(Error::VersionConflict { .. })), "{results:?}");
        assert!(matches!(results[2], Ok(Written::New { version: 2, .. })), "{results:?}");
        assert!(matches!(results[3], Err(Error::NotFound(_))), "{results:?}");
        assert!(matches!(results[4], Ok(Written::New { version: 3, .. })), "{results:?}");
        assert!(matches!(results[5], Err(Error::VersionConflict { .. })), "{results:?}");
        assert!(matches!(results[6], Ok(Written::New { version: 4, .. })), "{results:?}");
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 4);
        assert_eq!(count(&conn, "SELECT version FROM states WHERE key = 'a' AND vals IS NOT NULL"), 4);
    }

    /// An append with an idempotency key is written after what is pending,
    /// so a second append with its key in the same batch is answered with
    /// the first one's event, and appends after it see its version.
    #[test]
    fn an_idempotency_key_written_in_a_batch_is_found_by_the_same_batch() {
        let (_dir, conn) = db();
        let mut writer = Writer::prepare(&conn).unwrap();
        let jobs = [
            job("a", "1", Expect::Any),
            with_key(job("a", "2", Expect::Any), "k"),
            with_key(job("a", "3", Expect::Any), "k"),
            job("a", "4", Expect::Version(2)),
        ];
        let results = commit_batch(&mut writer, &jobs);
        let Ok(Written::New { seq, version: 2 }) = results[1] else { panic!("{results:?}") };
        match &results[2] {
            Ok(Written::Replayed(event)) => assert_eq!((event.id.as_str(), event.seq), ("2", seq)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(results[3], Ok(Written::New { version: 3, .. })), "{results:?}");
        assert_eq!(stored(&conn, "1").1, 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 3);
    }

    #[test]
    fn a_refused_append_leaves_the_rest_of_its_batch() {
        let (_dir, conn) = db();
        let jobs = [job("a", "1", Expect::Any), job("b", "2", Expect::Version(7)), job("c", "3", Expect::Absent)];
        let results = commit_batch(&mut Writer::prepare(&conn).unwrap(), &jobs);
        assert!(matches!(results[0], Ok(Written::New { version: 1, .. })));
        assert!(matches!(results[1], Err(Error::VersionConflict { .. })), "{:?}", results[1].as_ref().err());
        assert!(matches!(results[2], Ok(Written::New { version: 1, .. })));
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 2);
        assert_eq!(count(&conn, "SELECT count(*) FROM states WHERE key = 'b'"), 0);
    }

    /// A record written again is remembered (`Versions`); a batch rolled
    /// back must not leave the version it wrote remembered, or the retry
    /// (and every later write of the record) would number from it.
    #[test]
    fn a_rolled_back_batch_leaves_no_remembered_version() {
        let (_dir, conn) = db();
        let mut writer = Writer::prepare(&conn).unwrap();
        for (id, expect) in [("1", Expect::Absent), ("2", Expect::Version(1))] {
            let results = commit_batch(&mut writer, &[job("a", id, expect)]);
            assert!(results[0].is_ok(), "{results:?}");
        }
        conn.execute_batch(
            "CREATE TRIGGER fail_b BEFORE INSERT ON states WHEN NEW.key = 'b' BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
        // The first pass writes a's version 3, then b fails: rolled back,
        // and run again with savepoints.
        let results = commit_batch(&mut writer, &[job("a", "3", Expect::Version(2)), job("b", "4", Expect::Any)]);
        assert!(matches!(results[0], Ok(Written::New { version: 3, .. })), "{results:?}");
        assert!(results[1].is_err());
        let results = commit_batch(&mut writer, &[job("a", "5", Expect::Version(3))]);
        assert!(matches!(results[0], Ok(Written::New { version: 4, .. })), "{results:?}");
        assert_eq!(count(&conn, "SELECT version FROM states WHERE key = 'a'"), 4);
        assert_eq!(count(&conn, "SELECT count(*) FROM events WHERE key = 'a'"), 4);
    }

    /// A failure after an append's first write (here its state row, after
    /// its event row) must take back that append's event too, and only it;
    /// and every batch must leave the connection out of its transaction.
    #[test]
    fn a_write_failing_halfway_takes_back_only_its_own_append() {
        let (_dir, conn) = db();
        conn.execute_batch(
            "CREATE TRIGGER fail_b BEFORE INSERT ON states WHEN NEW.key = 'b' BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
        let mut writer = Writer::prepare(&conn).unwrap();
        let jobs = [job("a", "1", Expect::Any), job("b", "2", Expect::Any), job("c", "3", Expect::Any)];
        let results = commit_batch(&mut writer, &jobs);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let err = results[1].as_ref().expect_err("b fails").to_string();
        assert!(err.contains("injected"), "{err}");
        assert!(conn.is_autocommit(), "the batch left its transaction open");
        assert_eq!(count(&conn, "SELECT count(*) FROM events WHERE key = 'b'"), 0, "b's event row was left behind");
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 2);
        // Alone in its batch, the same failure takes back its own event.
        let results = commit_batch(&mut writer, &[job("b", "4", Expect::Any)]);
        assert!(results[0].is_err());
        assert!(conn.is_autocommit(), "the failed batch left its transaction open");
        assert_eq!(count(&conn, "SELECT count(*) FROM events WHERE key = 'b'"), 0);
        // And the writer goes on: the next batch commits.
        let results = commit_batch(&mut writer, &[job("a", "5", Expect::Version(1))]);
        assert!(matches!(results[0], Ok(Written::New { version: 2, .. })), "{results:?}");
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 3);
    }
}

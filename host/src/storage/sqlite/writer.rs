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

use super::{EVENT_COLUMNS, FieldIndexes, db_error, event_from_row};
use crate::model::{Appended, AppendRequest, Change, Error, RecordRef, Result};
use crate::storage::{conflict, idempotency_mismatch};
use rusqlite::{Connection, OptionalExtension, Statement, params};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 512;

/// An append with its JSON columns already serialized.
pub(super) struct Job {
    pub req: AppendRequest,
    pub vals: Option<String>,
    pub claims: String,
    pub reply: oneshot::Sender<Result<Appended>>,
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
    conn: &'c Connection,
    begin: Statement<'c>,
    commit: Statement<'c>,
    rollback: Statement<'c>,
    savepoint: Statement<'c>,
    release: Statement<'c>,
    rollback_to: Statement<'c>,
    idempotency_get: Statement<'c>,
    event_at_seq: Statement<'c>,
    state_get: Statement<'c>,
    event_insert: Statement<'c>,
    state_upsert: Statement<'c>,
    idempotency_put: Statement<'c>,
    versions: Versions,
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
            conn,
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            rollback: conn.prepare("ROLLBACK")?,
            savepoint: conn.prepare("SAVEPOINT append")?,
            release: conn.prepare("RELEASE append")?,
            rollback_to: conn.prepare("ROLLBACK TO append")?,
            idempotency_get: conn.prepare("SELECT fingerprint, event_seq FROM idempotency WHERE key = ?1")?,
            event_at_seq: conn.prepare(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"))?,
            state_get: conn.prepare("SELECT version, vals IS NOT NULL FROM states WHERE domain = ?1 AND type = ?2 AND key = ?3")?,
            event_insert: conn.prepare(
                "INSERT INTO events (id, domain, type, key, version, kind, method, time, vals, claims)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?,
            state_upsert: conn.prepare(
                "INSERT INTO states (domain, type, key, version, vals) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (domain, type, key) DO UPDATE SET version = excluded.version, vals = excluded.vals",
            )?,
            idempotency_put: conn
                .prepare("INSERT OR REPLACE INTO idempotency (key, fingerprint, event_seq) VALUES (?1, ?2, ?3)")?,
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
    wal_full: &AtomicBool,
    fields: &FieldIndexes,
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
            let results = match &mut writer {
                Ok(writer) => commit_batch(writer, &batch),
                Err(e) => batch.iter().map(|_| Err(db_error(e))).collect(),
            };
            appended.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (Job { req, reply, .. }, result) in batch.drain(..).zip(results) {
                let _ = reply.send(result.map(|written| written.into_appended(req)));
            }
            if wal_full.swap(false, Ordering::Relaxed) {
                restart_wal(&conn);
            }
        }
    }
    // Every sender is gone: shutdown. Fold the WAL back into the main file so
    // the database is one self-contained file at rest.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "sqlite checkpoint at shutdown failed");
    }
}

/// Copies the whole WAL back and lets the next batch start it over (see
/// `WAL_LIMIT_BYTES`). A reader still on old frames after
/// `WAL_RESTART_WAIT` leaves it for the checkpoint thread to flag again.
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
fn commit_without_savepoints(s: &mut Writer<'_>, jobs: &[Job]) -> Option<Vec<Result<Written>>> {
    if let Err(e) = s.begin.execute([]) {
        return Some(jobs.iter().map(|_| Err(db_error(&e))).collect());
    }
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        match append_one(s, job) {
            Ok(out) => results.push(Ok(out)),
            Err(Failed::Refused(e)) => results.push(Err(e)),
            Err(Failed::Writing(e)) => {
                s.roll_back();
                return if jobs.len() > 1 { None } else { Some(vec![Err(e)]) };
            }
        }
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

fn append_one(s: &mut Writer<'_>, job: &Job) -> std::result::Result<Written, Failed> {
    let req = &job.req;
    // Reads and checks come first and fail as `Refused` (nothing written);
    // from the first write on, a failure is `Writing`.
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
                return Ok(Written::Replayed(Box::new(first)));
            }
        }
    }
    let r = &req.record;
    let row: Option<(u64, bool)> = match s.versions.get(r) {
        Some(row) => Some(row),
        None => s
            .state_get
            .query_row(params![r.domain, r.ty, r.key], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
            .map_err(e)?,
    };
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
    s.event_insert
        .execute(params![req.id, r.domain, r.ty, r.key, version, req.kind.as_str(), req.method, req.time, vals, claims])
        .map_err(e)?;
    let seq = s.conn.last_insert_rowid() as u64;
    s.state_upsert.execute(params![r.domain, r.ty, r.key, version, vals]).map_err(e)?;
    if let Some(idem) = &req.idempotency {
        s.idempotency_put.execute(params![idem.key, idem.fingerprint, seq]).map_err(e)?;
    }
    if row.is_some() {
        // Written before: likely to be written again. A record's first write
        // does not enter the cache, so a stream of new records (an import,
        // keys that are never rewritten) costs one failed lookup each.
        s.versions.wrote(r, version, vals.is_some());
    }
    Ok(Written::New { seq, version })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, db, put};
    use super::*;
    use crate::model::{Expect, Values};

    fn job(key: &str, id: &str, expect: Expect) -> Job {
        let mut values = Values::new();
        values.insert("k".into(), key.into());
        Job {
            req: AppendRequest { expect, ..put(id.into(), "t", key.into(), values) },
            vals: Some(format!(r#"{{"k":"{key}"}}"#)),
            claims: "{}".into(),
            reply: oneshot::channel().0,
        }
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
        let err = results[1].as_ref().err().expect("b fails").to_string();
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

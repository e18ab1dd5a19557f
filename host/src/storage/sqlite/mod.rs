//! `sqlite`: the embedded durable default. One file in WAL mode, no service
//! to run.
//!
//! Writes go through one writer thread that owns the only write connection
//! (`writer.rs`): it takes every append waiting in its queue, runs them in
//! one transaction (an append its checks refuse writes nothing, so the
//! others go on) and commits once. Concurrent writers thus share one fsync
//! (group commit) and seqs are assigned in commit order, which is what
//! catch-up streams need. `synchronous=FULL` makes a commit durable before
//! `append` returns. Values are serialized on the caller's task, not on the
//! writer thread, and every statement is prepared once per connection.
//!
//! Reads use a pool of connections that WAL lets run alongside the writer
//! (`read_pool.rs`): a semaphore admits as many reads as there are pooled
//! connections (a few per core), so a burst of reads waits for a connection
//! instead of opening new ones, and each connection goes back to the CPU it
//! was last used on; the file is memory-mapped. A point read (`get`,
//! `get_event`) that finds a connection free runs right on the calling
//! task: an indexed lookup in mapped pages takes microseconds, less than
//! the hop to the blocking pool and back.
//!
//! Checkpoints (copying the WAL back into the database file) run on their
//! own thread and connection, not inside a commit, so a commit never waits
//! for one. Under writes that never pause, the writer copies the frames
//! committed since that thread's last checkpoint itself, between two
//! batches, so that the WAL starts over (`WalRestart`, `WAL_CAUGHT_UP_BYTES`).
//!
//! Every connection goes through sqlite's `unix-excl` VFS (`open_connection`,
//! by way of `wal_writes.rs`, which only gathers the WAL's writes into a
//! few `pwrite`s per commit):
//! the process takes one exclusive lock on the file when it first reads it
//! and keeps the WAL index in its heap instead of a shared-memory `-shm`
//! file. sqlite still locks between this process's connections, in memory;
//! what goes is the `fcntl` on the file and on the WAL index that each read
//! transaction otherwise makes (1.3 syscalls per `Get` under load,
//! BENCHMARKS.md session 14). It fits `file_lock`'s rule of one process per
//! file, and it holds only if every connection to the file in this process
//! uses the same VFS, opened read-write: a handle opened read-only, or
//! through the default VFS, would take its own POSIX locks, which replace
//! the process's exclusive one (POSIX locks belong to the process, not the
//! handle), and would map a separate WAL index. Readers are therefore
//! read-write handles with `PRAGMA query_only`. No other process (not even
//! the `sqlite3` shell) can open the file while the gateway has it open.
//!
//! Over 500 lines on purpose: the read pool and the checkpoint thread share
//! the connection setup and the row codecs with the writer, and each is only
//! correct together with the others (the WAL and checkpoint rules above).

mod field_index;
mod in_place;
mod point_cache;
mod process_config;
mod pushdown;
mod read_pool;
mod wal_writes;
mod writer;

use super::writer_queue::WriterQueue;
use super::{FEED_PAGE, GroupDoc, Storage, group_conflict};
use crate::model::{
    AtSeq, Appended, AppendRequest, Arrival, CatalogEntry, Error, Event, EventKind, EventQuery, FeedQuery, RecordRef, Result,
    Select, State, StateQuery, StoredState, Values,
};
use async_trait::async_trait;
use field_index::FieldIndexes;
use read_pool::ReadPool;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, StatementStatus, params, params_from_iter, types::Value as SqlValue};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use point_cache::PointCache;
use writer::{Job, WalAsk, WalRestart, Work, writer_loop};

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
/// WAL size past which the writer itself restarts the WAL between two
/// batches. Checkpoints on their own thread copy frames back, but sqlite
/// starts the WAL over only when a write begins with every frame copied and
/// no reader on one: under writes that never pause, each batch adds frames
/// after the last checkpoint, so that moment never comes and the file grows
/// without bound (measured: 13 GB in a minute of seeding). The writer's
/// `RESTART` checkpoint copies the rest with no batch in between and waits
/// briefly for the readers, so the next batch starts the file over; and
/// `journal_size_limit` gives the disk back down to this size. Writes wait
/// for that checkpoint: this is the backpressure that keeps the disk from
/// filling up.
const WAL_LIMIT_BYTES: i64 = 64 << 20;
/// WAL size past which the writer finishes a background checkpoint that
/// copied the whole WAL as it stood (`WalAsk::CaughtUp`). Under writes
/// that never pause, the frames a commit adds while the checkpoint thread
/// copies are all that stands between the WAL and its start over, so the
/// writer copies them itself (a `PASSIVE` checkpoint between two batches: a
/// few milliseconds of frames, and it waits for no reader) and the next
/// batch starts the file over. The WAL then stays near what two polls
/// write, overwritten in place, instead of growing to `WAL_LIMIT_BYTES`
/// each time (blocks allocated, then cut back by `journal_size_limit`) and
/// being restarted behind a copy of up to a poll's frames while writes
/// wait: 2-4 % more `Set`s a second from outside (BENCHMARKS.md, session
/// 43). Below this size the WAL starts over by itself once writes pause.
const WAL_CAUGHT_UP_BYTES: i64 = 4 << 20;
/// How long the writer's `RESTART` checkpoint waits for readers still on
/// old frames before giving up until the next batch (a long search can hold
/// a snapshot; writes should not stall behind it).
const WAL_RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The tables and indexes; `IF NOT EXISTS` keeps an existing file's.
///
/// A record's versions are unique without a constraint saying so: the one
/// writer reads the record's version from `states` and writes the next one
/// in the same transaction. Files created by earlier builds also carry
/// `UNIQUE (domain, type, key, version)` on `events`; it holds as before
/// there, but every append paid for a second index of each record's events
/// beside `events_by_record_seq` (a B-tree seek and insert, and a page in
/// every commit: about 7k of a `Set`'s 187k instructions), so new files go
/// without it. No query reads it.
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
    claims  TEXT NOT NULL
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

/// `{"name":"sqlite","path":"data/stategate.db"}`; without `path` the file
/// is `stategate.db` in `STATEGATE_DATA_DIR`. `index_fields` names fields
/// of the values to index at start; `auto_index: false` stops indexing the
/// fields searches name often (`field_index.rs`). `read_cache_mib` bounds
/// the memory of records kept for `Get` (`point_cache.rs`; 0 turns it off).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub index_fields: Vec<String>,
    pub auto_index: Option<bool>,
    pub read_cache_mib: Option<u64>,
}

/// `read_cache_mib` when unset.
const READ_CACHE_MIB: u64 = 16;

impl SqliteConfig {
    pub fn build(&self, data_dir: &Path) -> Result<SqliteStorage> {
        self.validate()?;
        SqliteStorage::open_with(self.file(data_dir), self)
    }

    /// Refuses a field name that cannot be indexed, naming it.
    pub fn validate(&self) -> Result<()> {
        match self.index_fields.iter().find(|f| !field_index::indexable(f)) {
            None => Ok(()),
            Some(f) => Err(Error::invalid(
                "STATEGATE_STORAGE_PROVIDER",
                format!(
                    "sqlite: index_fields: {f:?} cannot be indexed: a top-level field name of 1 to 64 ASCII letters, \
                     digits, '_' or '-', not all digits"
                ),
            )),
        }
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
    writer: WriterQueue<Work>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the checkpoint thread.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// Read connections (`read_pool.rs`).
    readers: Arc<ReadPool>,
    /// The connection consumer-group stores write on, opened on first use:
    /// each store is one statement, so it needs no place in the append
    /// batches; WAL lets it take turns with the writer (`busy_timeout`).
    groups: Arc<Mutex<Option<Connection>>>,
    /// Indexes on fields of the values (`field_index.rs`).
    fields: Arc<FieldIndexes>,
    /// Records recently read, for `Get` (`point_cache.rs`); `None` when off.
    cache: Option<Arc<PointCache>>,
}

impl SqliteStorage {
    /// Opens (creating if needed) the database file and its schema, with
    /// the default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &SqliteConfig::default())
    }

    /// Opens with `config`'s index options (its `path` is not read).
    pub fn open_with(path: impl AsRef<Path>, config: &SqliteConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::unavailable(format!("sqlite: cannot create {}: {e}", dir.display())))?;
        }
        let lock = super::file_lock::lock(&path)?;
        let conn = open_connection(&path)?;
        writer::widen_lookaside(&conn);
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
        // The head before the writer starts: the point cache's first (`point_cache.rs`).
        let head: u64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| db_error(&e))?;
        let cache_bytes = config.read_cache_mib.unwrap_or(READ_CACHE_MIB).saturating_mul(1 << 20);
        let cache = PointCache::new(head, usize::try_from(cache_bytes).unwrap_or(usize::MAX));
        let fields = Arc::new(FieldIndexes::new(config.auto_index.unwrap_or(true)));
        fields.load(&conn).map_err(|e| db_error(&e))?;
        for field in &config.index_fields {
            fields.create(&conn, field).map_err(|e| db_error(&e))?;
        }
        // Checkpoints happen on the checkpoint thread, not in commits, and
        // the writer's between two batches when that thread asks (`WalRestart`).
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {WAL_LIMIT_BYTES};"))
            .map_err(|e| db_error(&e))?;
        let page_bytes: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(|e| db_error(&e))?;
        let wal_limit_frames = WAL_LIMIT_BYTES / page_bytes.max(512);
        let wal_caught_up_frames = WAL_CAUGHT_UP_BYTES / page_bytes.max(512);
        let wal_restart = Arc::new(WalRestart::default());
        let wal_restart_seen = wal_restart.clone();
        let checkpoint_conn = open_connection(&path)?;
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
                        Ok((in_wal, copied)) => {
                            if in_wal > wal_limit_frames {
                                wal_restart_seen.ask(WalAsk::Full);
                            } else if copied == in_wal && in_wal > wal_caught_up_frames {
                                wal_restart_seen.ask(WalAsk::CaughtUp);
                            }
                            copied < in_wal
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "sqlite checkpoint failed; retrying");
                            true
                        }
                    };
                }
            })
            .map_err(Error::internal)?;

        // The writer prepares its statements again on its thread; preparing
        // them here first makes a file they cannot run on fail the start.
        drop(writer::Writer::prepare(&conn).map_err(|e| db_error(&e))?);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_fields = fields.clone();
        let writer_cache = cache.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, appended, &wal_restart, &writer_fields, writer_cache.as_deref()))
            .map_err(Error::internal)?;
        Ok(SqliteStorage {
            lock: Mutex::new(Some(lock)),
            writer: WriterQueue::new(tx, "sqlite"),
            writer_thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some((stop_checkpoints, checkpoint_thread))),
            readers: ReadPool::new(path.clone(), READERS_PER_CORE),
            path,
            groups: Arc::new(Mutex::new(None)),
            fields,
            cache,
        })
    }

    /// A state search's page, once it has been counted towards the field
    /// indexes: an expensive one asks the writer for those that became due.
    fn noted(&self, searched: Searched) -> Vec<State> {
        if searched.steps >= field_index::EXPENSIVE_STEPS {
            self.ask_for_indexes(&searched.named);
        }
        searched.states
    }

    fn ask_for_indexes(&self, fields: &[String]) {
        let due = self.fields.note_expensive(fields);
        if due.is_empty() {
            return;
        }
        // A closed store builds no indexes.
        for field in due {
            let _ = self.writer.send(Work::Index(field));
        }
    }

    /// `state_text_at` on a point-read connection; now (`at = None`), from
    /// the point cache when it holds the record, else read and offered to it.
    async fn state_text_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<(u64, String)>>> {
        let Some(cache) = self.cache.as_ref().filter(|_| at.is_none()) else {
            let r = record.clone();
            return self.readers.read_point(move |c| state_text_at(c, &r, at)).await;
        };
        if let Some(hit) = cache.get(record) {
            return Ok(AtSeq { value: Some((hit.version, hit.text)), seq: hit.seq });
        }
        let (r, cache) = (record.clone(), cache.clone());
        self.readers
            .read_point(move |c| {
                let read = state_text_at(c, &r, None)?;
                if let Some((version, text)) = &read.value {
                    cache.offer(&r, read.seq, *version, text);
                }
                Ok(read)
            })
            .await
    }
}

/// Opens (creating if needed) a connection to the database file through
/// the `unix-excl` VFS (wrapped by `wal_writes`), read-write: see the
/// module doc for why every connection must be opened this way. `NO_MUTEX`
/// because each connection is used by one thread at a time (the pools hand
/// them out whole).
fn open_connection(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    wal_writes::register().map_err(|e| Error::unavailable(format!("sqlite: {e}")))?;
    Connection::open_with_flags_and_vfs(path, flags, wal_writes::VFS_NAME).map_err(|e| db_error(&e))
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = open_connection(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| db_error(&e))?;
    conn.execute_batch(&format!(
        "PRAGMA query_only = 1; PRAGMA mmap_size = {MMAP_BYTES}; PRAGMA cache_size = -16384;"
    ))
    .map_err(|e| db_error(&e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn db_error(e: &rusqlite::Error) -> Error {
    Error::unavailable(format!("sqlite: {e}"))
}

/// Runs `read` in one read transaction, with the head it sees: in WAL mode
/// the transaction's snapshot is fixed at its first read, so the head and
/// the answer reflect exactly the same commits.
///
/// Every statement here is a cached one: parsing `BEGIN`, the head query
/// and `COMMIT` anew costs more than a point lookup (callgrind: about 30k
/// instructions), which is why `Get` uses `state_text_at` instead.
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

const GET_NOW_AT_HEAD: &str = "SELECT (SELECT COALESCE(MAX(seq), 0) FROM events), s.version, s.vals FROM (SELECT 1) \
     LEFT JOIN states s ON s.domain = ?1 AND s.type = ?2 AND s.key = ?3 AND s.vals IS NOT NULL";

/// A record's version and values (their stored JSON text) at a store
/// position, with the seq the answer reflects.
///
/// Now (`at = None`), the state and the head in one statement: one
/// statement reads one WAL snapshot, so this is `snapshot(get_now)`
/// without the `BEGIN` and `COMMIT` around it, which cost as much as the
/// lookup (`Get` runs this on every call). The `(SELECT 1)` keeps a row,
/// and with it the head, when the record does not exist. In the past, the
/// record's last event up to `at` (`events_by_record_seq`).
fn state_text_at(c: &Connection, r: &RecordRef, at: Option<u64>) -> rusqlite::Result<AtSeq<Option<(u64, String)>>> {
    fn found(row: &Row<'_>, version: usize, vals: usize) -> rusqlite::Result<Option<(u64, String)>> {
        Ok(match row.get_ref(vals)? {
            rusqlite::types::ValueRef::Null => None,
            _ => Some((row.get(version)?, row.get(vals)?)),
        })
    }
    let Some(seq) = at else {
        let (seq, value) = c
            .prepare_cached(GET_NOW_AT_HEAD)?
            .query_row(params![r.domain, r.ty, r.key], |row| Ok((row.get(0)?, found(row, 1, 2)?)))?;
        return Ok(AtSeq { value, seq });
    };
    let value = c
        .prepare_cached(
            "SELECT version, vals FROM events WHERE domain = ?1 AND type = ?2 AND key = ?3 AND seq <= ?4 \
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![r.domain, r.ty, r.key, seq], |row| found(row, 0, 1))
        .optional()?
        .flatten();
    Ok(AtSeq { value, seq })
}

/// A state search's page, and what decides the next field index: the
/// statement's VM steps and the indexable fields the query named.
struct Searched {
    states: Vec<State>,
    steps: i32,
    named: Vec<String>,
}

fn search_states_now(c: &Connection, q: &StateQuery, fields: &FieldIndexes) -> rusqlite::Result<Searched> {
    let choice = choose_index(c, q, fields)?;
    let StatesNow { sql, args, order, named } = states_now(q, &choice);
    let (states, steps) = select_states(c, q, &sql, args, order)?;
    Ok(Searched { states, steps, named })
}

/// Index entries a filter condition may match for a search to go through
/// its index rather than read in key (or sort) order until the page fills.
const SELECTIVE: i64 = 1000;
/// Most filter conditions probed for one search.
const MAX_PROBES: usize = 4;

/// How a state search reads the type.
#[derive(Debug)]
enum Choice {
    /// In key order (the primary key).
    Keys,
    /// The union of one condition's searches of its field's index.
    Filter(pushdown::IndexCondition),
    /// The sort field's index, in the sort's order.
    Sort(String),
}

/// Which of the field indexes `ready` a state search goes through, if any.
/// sqlite's planner knows neither how many rows a condition keeps (no
/// statistics are gathered) nor that reading stops once the page is full:
/// left alone it scans the type for a selective condition, and could sort
/// every match of a common one. So the choice is made here, and the
/// statement names its index (`INDEXED BY`):
/// - a condition whose index finds fewer than `SELECTIVE` rows (a probe
///   counts at most that many index entries) → that index;
/// - else a sort by an indexed field → its index, read in order;
/// - else, without a sort, an equality whose field has fewer than
///   `SELECTIVE` array values → its index, merged in key order
///   (`IndexCondition::in_key_order`): the page's entries and rows, where
///   the key order reads rows (and their JSON) until the page fills, ten
///   times the page for a value one record in ten has;
/// - else, without a sort, the key order, read until the page fills;
/// - else (a sort no index gives) a condition's index: every match is read
///   anyway.
fn choose_index(c: &Connection, q: &StateQuery, fields: &FieldIndexes) -> rusqlite::Result<Choice> {
    let ready = fields.ready();
    let mut conditions = pushdown::index_conditions(&q.filter, &ready);
    let sort_field = match q.sort.as_ref().map(|s| s.path.as_slice()) {
        Some([field]) if ready.contains(field) => Some(field.clone()),
        _ => None,
    };
    if conditions.is_empty() {
        return Ok(sort_field.map_or(Choice::Keys, Choice::Sort));
    }
    if q.sort.is_some() && sort_field.is_none() {
        return Ok(Choice::Filter(conditions.swap_remove(0)));
    }
    conditions.truncate(MAX_PROBES);
    let mut best: Option<(i64, usize)> = None;
    for (i, condition) in conditions.iter().enumerate() {
        let found = probe(c, q, fields, condition)?;
        if found < SELECTIVE && best.is_none_or(|(least, _)| found < least) {
            best = Some((found, i));
        }
    }
    if let Some((_, i)) = best {
        return Ok(Choice::Filter(conditions.swap_remove(i)));
    }
    if let Some(field) = sort_field {
        return Ok(Choice::Sort(field));
    }
    for (i, condition) in conditions.iter().enumerate() {
        if condition.in_key_order && probe(c, q, fields, &condition.arrays())? < SELECTIVE {
            return Ok(Choice::Filter(conditions.swap_remove(i)));
        }
    }
    Ok(Choice::Keys)
}

/// How many index entries `condition` finds in the query's type, counted
/// up to `SELECTIVE`; a count is reused for `field_index::PROBE_TTL`.
fn probe(c: &Connection, q: &StateQuery, fields: &FieldIndexes, condition: &pushdown::IndexCondition) -> rusqlite::Result<i64> {
    let count = format!("SELECT count(*) FROM ({} LIMIT {SELECTIVE})", union(condition, "SELECT 1", ""));
    let args: Vec<SqlValue> = type_args(q).into_iter().chain(condition.args.iter().cloned()).collect();
    let key = format!("{count}\0{args:?}");
    if let Some(found) = fields.probed(&key) {
        return Ok(found);
    }
    let found: i64 = c.prepare_cached(&count)?.query_row(params_from_iter(&args), |r| r.get(0))?;
    fields.remember_probe(key, found);
    Ok(found)
}

/// `select` over the union of `condition`'s index searches within the
/// query's type, each with `filters` (more conditions) after it. Every
/// branch names a kind, which a deleted record (`vals` NULL, kind 0) has
/// not: no `vals IS NOT NULL`, so a probe reads the index alone.
fn union(condition: &pushdown::IndexCondition, select: &str, filters: &str) -> String {
    let index = field_index::index_name(&condition.field);
    condition
        .branches
        .iter()
        .map(|branch| {
            format!(
                "{select} FROM states INDEXED BY \"{index}\" WHERE domain = ?1 AND type = ?2 AND {branch}{filters}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// `?1` and `?2` of a state search: its domain and type.
fn type_args(q: &StateQuery) -> Vec<SqlValue> {
    vec![SqlValue::Text(q.domain.clone()), SqlValue::Text(q.ty.clone())]
}

/// The statement of a state search now.
struct StatesNow<'q> {
    sql: String,
    args: Vec<SqlValue>,
    order: Order<'q>,
    /// The indexable fields the filter's pushed-down conditions or the sort name.
    named: Vec<String>,
}

/// The statement of a state search now, read as `choice` says.
fn states_now<'q>(q: &'q StateQuery, choice: &Choice) -> StatesNow<'q> {
    const COLUMNS: &str = "SELECT key, version, vals";
    let mut args = type_args(q);
    if let Choice::Filter(condition) = choice {
        args.extend(condition.args.iter().cloned());
    }
    // The equality filters, numbered after the index condition's arguments.
    let mut filters = String::new();
    let mut named = pushdown::conditions("vals", &q.filter, &mut filters, &mut args);
    if let Some(sort) = &q.sort
        && let [field] = sort.path.as_slice()
        && field_index::indexable(field)
        && !named.contains(field)
    {
        named.push(field.clone());
    }
    let (mut sql, by_index) = match (choice, &q.sort) {
        (Choice::Filter(condition), _) => (union(condition, COLUMNS, &filters), None),
        (Choice::Sort(field), Some(sort)) => (
            format!(
                "{COLUMNS} FROM states INDEXED BY \"{}\" WHERE domain = ?1 AND type = ?2 AND vals IS NOT NULL{filters}",
                field_index::index_name(field)
            ),
            pushdown::order_by(sort).map(|order_by| (sort, order_by)),
        ),
        _ => (format!("{COLUMNS} FROM states WHERE domain = ?1 AND type = ?2 AND vals IS NOT NULL{filters}"), None),
    };
    let order = match (&q.sort, by_index) {
        (None, _) => {
            sql.push_str(" ORDER BY key");
            Order::ByKey
        }
        (Some(_), Some((sort, order_by))) => {
            sql.push_str(&order_by);
            Order::ByIndex(sort)
        }
        (Some(_), None) => Order::Unordered,
    };
    StatesNow { sql, args, order, named }
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
    // The field indexes are on the states of now, not on past events.
    pushdown::conditions("e.vals", &q.filter, &mut sql, &mut args);
    sql.push_str(" ORDER BY s.key");
    let order = if q.sort.is_some() { Order::Unordered } else { Order::ByKey };
    Ok(select_states(c, q, &sql, args, order)?.0)
}

/// The order a states statement returns its rows in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Order<'q> {
    /// By key: the query's own order when it has no sort.
    ByKey,
    /// By a field index in the sort's direction (`pushdown::order_by`).
    ByIndex(&'q crate::model::Sort),
    /// Not the query's order.
    Unordered,
}

/// Runs a states query whose rows are (key, version, vals) and picks the
/// page; also returns the statement's VM steps.
fn select_states(c: &Connection, q: &StateQuery, sql: &str, args: Vec<SqlValue>, order: Order<'_>) -> rusqlite::Result<(Vec<State>, i32)> {
    let mut stmt = c.prepare_cached(sql)?;
    stmt.reset_status(StatementStatus::VmStep);
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
    // A field sort without an index is not pushed into SQL: ORDER BY
    // json_extract orders objects, arrays and huge integers otherwise than
    // `query::compare_values`, the one order every provider answers in. So
    // the page keeps the top offset + limit rows as they stream past, never
    // the whole type. With the field's index the rows come in nearly that
    // order, and reading stops once no later row can enter the page.
    let page = match order {
        Order::ByKey => q.try_select(Arrival::InOrder, rows)?,
        Order::Unordered => q.try_select(Arrival::AnyOrder, rows)?,
        Order::ByIndex(sort) => {
            let mut page = q.page::<State>(Arrival::AnyOrder);
            for row in rows {
                let state = row?;
                if page.worst().is_some_and(|worst| sort.sorted_past(&worst.values, &state.values)) || !page.offer(state) {
                    break;
                }
            }
            page.finish()
        }
    };
    Ok((page, stmt.get_status(StatementStatus::VmStep)))
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
            _ => Some(json_column(row, 9)?.into()),
        },
        claims: json_column(row, 10)?,
    })
}

fn parse_values(text: &str) -> std::result::Result<Values, String> {
    serde_json::from_str(text).map_err(|e| format!("stored JSON is corrupt: {e}"))
}

#[async_trait]
impl Storage for SqliteStorage {
    fn name(&self) -> &str {
        "sqlite"
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        let (reply, done) = oneshot::channel();
        let job = Job::new(req, reply)?;
        self.writer.call(Work::Append(job), done).await
    }

    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        let r = record.clone();
        self.readers.read_point(move |c| get_now(c, r)).await
    }

    async fn search_states(&self, q: &StateQuery) -> Result<Vec<State>> {
        let (q, fields) = (q.clone(), self.fields.clone());
        let searched = self.readers.read(move |c| search_states_now(c, &q, &fields)).await?;
        Ok(self.noted(searched))
    }

    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        let AtSeq { value, seq } = self.state_text_at(record, at).await?;
        let value = match value {
            Some((version, text)) => {
                let values = parse_values(&text).map_err(|e| Error::internal(format!("sqlite: {record}: {e}")))?;
                Some(State { record: record.clone(), version, values })
            }
            None => None,
        };
        Ok(AtSeq { value, seq })
    }

    async fn get_text_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<StoredState>>> {
        Ok(super::text_answer(record, self.state_text_at(record, at).await?))
    }

    async fn search_states_at(&self, q: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        let q = q.clone();
        let Some(seq) = at else {
            let fields = self.fields.clone();
            let searched = self.readers.read(move |c| snapshot(c, |c| search_states_now(c, &q, &fields))).await?;
            return Ok(AtSeq { seq: searched.seq, value: self.noted(searched.value) });
        };
        self.readers.read(move |c| Ok(AtSeq { value: search_states_past(c, &q, seq)?, seq })).await
    }

    async fn seq_at_time(&self, domain: &str, ty: &str, time: i64) -> Result<u64> {
        let (domain, ty) = (domain.to_owned(), ty.to_owned());
        self.readers.read_point(move |c| {
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
        self.readers.read(move |c| {
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
            // No field indexes on events: their JSON paths stay bound.
            pushdown::conditions("vals", &q.filter, &mut sql, &mut args);
            pushdown::conditions("claims", &q.claims_filter, &mut sql, &mut args);
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
        self.readers.read_point(move |c| {
            c.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))?
                .query_row([id], event_from_row)
                .optional()
        })
        .await
    }

    async fn feed(&self, q: &FeedQuery) -> Result<Vec<Event>> {
        let q = q.clone();
        self.readers.read(move |c| {
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
        self.readers.read(|c| c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0)))
            .await
    }

    async fn catalog(&self, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
        let domain = domain.map(str::to_owned);
        self.readers.read(move |c| {
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
        self.readers.read_point(move |c| {
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
                let c = open_connection(&path)?;
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
        self.readers.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
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
        self.writer.close();
        let thread = self.writer_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(Error::internal)?
                .map_err(|_| Error::internal("sqlite writer panicked"))?;
        }
        self.readers.close();
        if let Some(cache) = &self.cache {
            cache.close();
        }
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, Expect};

    /// A `Set` of `values` on `d/<ty>/<key>` with event id `id`, whatever
    /// the record's version.
    pub(super) fn put(id: String, ty: &str, key: String, values: Values) -> AppendRequest {
        AppendRequest {
            id,
            record: RecordRef { domain: "d".into(), ty: ty.into(), key },
            change: Change::Put(values.into()),
            expect: Expect::Any,
            kind: EventKind::Set,
            method: "test".into(),
            claims: Default::default(),
            time: 1,
            idempotency: None,
        }
    }

    pub(super) fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        (dir, conn)
    }

    pub(super) fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// `n` records of type d/t: `status` "rare" for one in 100, else
    /// "common"; `price` counting down from n, one in 100 an array.
    fn typed_db(n: usize) -> (tempfile::TempDir, Connection) {
        let (dir, conn) = db();
        let mut insert = conn.prepare("INSERT INTO states (domain, type, key, version, vals) VALUES ('d', 't', ?1, 1, ?2)").unwrap();
        for i in 0..n {
            let status = if i % 100 == 7 { "rare" } else { "common" };
            let price = if i % 100 == 3 { serde_json::json!([n - i, 0]) } else { serde_json::json!(n - i) };
            let vals = serde_json::json!({"status": status, "price": price, "i": i});
            insert.execute(params![format!("k{i:05}"), vals.to_string()]).unwrap();
        }
        drop(insert);
        (dir, conn)
    }

    fn query(filter: &str, sort: Option<(&str, bool)>, limit: usize) -> StateQuery {
        StateQuery {
            domain: "d".into(),
            ty: "t".into(),
            filter: crate::model::Filter::parse("query_string", filter).unwrap(),
            sort: sort.map(|(path, desc)| crate::model::Sort::parse("sort_by", path, desc).unwrap().unwrap()),
            limit,
            offset: 0,
        }
    }

    fn plan(conn: &Connection, q: &StateQuery, choice: &Choice) -> String {
        let s = states_now(q, choice);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", s.sql)).unwrap();
        let rows = stmt.query_map(params_from_iter(s.args), |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    fn run(conn: &Connection, q: &StateQuery, fields: &FieldIndexes) -> (Vec<String>, i32) {
        let s = search_states_now(conn, q, fields).unwrap();
        (s.states.into_iter().map(|s| s.record.key).collect(), s.steps)
    }

    fn indexes(conn: &Connection, fields: &[&str]) -> FieldIndexes {
        let ix = FieldIndexes::new(false);
        for f in fields {
            ix.create(conn, f).unwrap();
        }
        ix
    }

    /// With an index on the field, a search naming it is an index search
    /// (sqlite's own plan says so), and a sort by it reads the index in
    /// order instead of sorting.
    #[test]
    fn a_search_naming_an_indexed_field_searches_its_index() {
        let (_dir, conn) = typed_db(3000);
        let ready = indexes(&conn, &["status", "price"]);
        for (filter, field, kinds) in [
            (r#"{"status": "rare"}"#, "status", 1),
            (r#"{"status": {"$in": ["rare", "gone", 3, true]}}"#, "status", 3),
            (r#"{"price": {"$lt": 5}}"#, "price", 1),
            (r#"{"price": {"$gte": 2995}, "i": {"$exists": true}, "status": "common"}"#, "price", 1),
        ] {
            let q = query(filter, None, 10);
            let choice = choose_index(&conn, &q, &ready).unwrap();
            assert!(matches!(&choice, Choice::Filter(c) if c.field == field), "{filter}: {choice:?}");
            let with = plan(&conn, &q, &choice);
            // One search on the index's columns per kind, one for arrays.
            let search = format!("INDEX {} (domain=? AND type=? AND <expr>=?", field_index::index_name(field));
            assert_eq!(with.matches(&search).count(), kinds + 1, "{filter}: {with}");
            assert!(!with.contains("SCAN") && !with.contains("PRIMARY KEY"), "{filter}: {with}");
            let without = plan(&conn, &q, &Choice::Keys);
            assert!(!without.contains("states_by_field_"), "{filter}: {without}");
        }
        // A common value of an equality: its index, merged in key order
        // with the arrays' search (the only one sorted).
        let common = query(r#"{"status": "common"}"#, None, 10);
        let choice = choose_index(&conn, &common, &ready).unwrap();
        assert!(matches!(&choice, Choice::Filter(c) if c.field == "status"), "{choice:?}");
        let merged = plan(&conn, &common, &choice);
        assert!(merged.starts_with("MERGE (UNION ALL); LEFT; SEARCH states USING INDEX states_by_field_"), "{merged}");
        assert_eq!(merged.matches("TEMP B-TREE").count(), 1, "{merged}");
        // A common range's entries are in value order: the key order fills
        // the page soonest.
        let range = query(r#"{"price": {"$gte": 0}}"#, None, 10);
        assert!(matches!(choose_index(&conn, &range, &ready).unwrap(), Choice::Keys));
        for desc in [false, true] {
            let q = query(r#"{"status": "common"}"#, Some(("price", desc)), 10);
            let choice = choose_index(&conn, &q, &ready).unwrap();
            assert!(matches!(&choice, Choice::Sort(f) if f == "price"), "{choice:?}");
            let with = plan(&conn, &q, &choice);
            assert!(with.contains("INDEX states_by_field_") && !with.contains("TEMP B-TREE"), "{with}");
        }
        // A name that cannot be pasted into SQL never reaches an index.
        let hostile = "a'); DROP TABLE states; --";
        let q = query(&format!(r#"{{"{hostile}": "x"}}"#), Some((hostile, false)), 10);
        let choice = choose_index(&conn, &q, &ready).unwrap();
        assert!(matches!(choice, Choice::Keys), "{choice:?}");
        assert!(!plan(&conn, &q, &choice).contains("states_by_field_"));
    }

    /// The same pages with and without the indexes, for a fraction of the
    /// work: a selective filter reads about the rows it returns, and a
    /// sorted page stops after its last row.
    #[test]
    fn an_index_gives_the_same_page_for_a_fraction_of_the_steps() {
        let (_dir, conn) = typed_db(3000);
        let none = FieldIndexes::new(false);
        let indexed = indexes(&conn, &["status", "price"]);
        for (filter, sort, limit) in [
            (r#"{"status": "rare"}"#, None, 100),
            (r#"{"price": {"$lte": 20}}"#, None, 100),
            ("{}", Some(("price", false)), 10),
            ("{}", Some(("price", true)), 10),
            (r#"{"status": "common"}"#, Some(("price", false)), 5),
        ] {
            let q = query(filter, sort, limit);
            let (scan, scan_steps) = run(&conn, &q, &none);
            let (by_index, index_steps) = run(&conn, &q, &indexed);
            assert!(!scan.is_empty());
            assert_eq!(by_index, scan, "{filter} {sort:?}");
            assert!(index_steps * 10 < scan_steps, "{filter} {sort:?}: {index_steps} steps with the index, {scan_steps} without");
        }
    }

    /// The first page of a value one record in ten has, without a sort:
    /// through the index, the page's entries and rows; in key order, ten
    /// times the page. Unless the field holds many arrays, whose search is
    /// read whole: then the key order.
    #[test]
    fn a_common_value_is_merged_in_key_order_unless_its_field_holds_many_arrays() {
        let (_dir, conn) = db();
        let mut insert = conn.prepare("INSERT INTO states (domain, type, key, version, vals) VALUES ('d', 't', ?1, 1, ?2)").unwrap();
        for i in 0..(10 * SELECTIVE as usize) {
            // `group`: one of ten; `tags`: an array in two of three records.
            let tags = if i % 3 == 0 { serde_json::json!("g3") } else { serde_json::json!(["g3", "x"]) };
            let vals = serde_json::json!({"group": format!("g{}", i % 10), "tags": tags, "i": i});
            insert.execute(params![format!("k{i:05}"), vals.to_string()]).unwrap();
        }
        drop(insert);
        let none = FieldIndexes::new(false);
        let indexed = indexes(&conn, &["group", "tags"]);
        let q = query(r#"{"group": "g3"}"#, None, 10);
        assert!(matches!(choose_index(&conn, &q, &indexed).unwrap(), Choice::Filter(_)));
        let (scan, scan_steps) = run(&conn, &q, &none);
        let (merged, merged_steps) = run(&conn, &q, &indexed);
        assert_eq!(scan.len(), 10);
        assert_eq!(merged, scan);
        assert!(merged_steps * 3 < scan_steps, "{merged_steps} steps merged, {scan_steps} in key order");
        let q = query(r#"{"tags": "g3"}"#, None, 10);
        assert!(matches!(choose_index(&conn, &q, &indexed).unwrap(), Choice::Keys));
        assert_eq!(run(&conn, &q, &indexed).0, run(&conn, &q, &none).0);
    }

    #[test]
    fn a_field_that_cannot_be_indexed_stops_the_start_naming_it() {
        let ok = crate::storage::StorageSpec::parse(r#"{"name":"sqlite","index_fields":["status","price-eur"],"auto_index":false}"#);
        assert!(ok.is_ok(), "{ok:?}");
        let err = crate::storage::StorageSpec::parse(r#"{"name":"sqlite","index_fields":["status","a.b"]}"#).unwrap_err().to_string();
        assert!(err.contains("\"a.b\" cannot be indexed"), "{err}");
        let err = crate::storage::StorageSpec::parse(r#"{"name":"sqlite","auto_index":"yes"}"#).unwrap_err().to_string();
        assert!(err.contains("auto_index"), "{err}");
    }

    /// Integers beyond i64 are one real to sqlite, so the index returns
    /// 2^63 + 1, 2^63 + 2 and 2^63 tied, in key order; the page must
    /// still be the smallest by value, not the first to arrive.
    #[test]
    fn a_sorted_read_does_not_stop_inside_a_rounded_tie() {
        let (_dir, conn) = db();
        for (key, n) in [("k1", "9223372036854775809"), ("k2", "9223372036854775810"), ("k3", "9223372036854775808")] {
            conn.execute(
                "INSERT INTO states (domain, type, key, version, vals) VALUES ('d', 't', ?1, 1, ?2)",
                params![key, format!(r#"{{"n":{n}}}"#)],
            )
            .unwrap();
        }
        let ready = indexes(&conn, &["n"]);
        let q = query("{}", Some(("n", false)), 1);
        assert!(matches!(choose_index(&conn, &q, &ready).unwrap(), Choice::Sort(_)));
        assert_eq!(run(&conn, &q, &ready).0, ["k3"]);
        let q = query("{}", Some(("n", true)), 1);
        assert_eq!(run(&conn, &q, &ready).0, ["k2"]);
    }

    /// `Get`'s one statement looks the state up by its key and the head up
    /// at the end of the seq order: no scan of either table.
    #[test]
    fn a_get_reads_by_key_and_the_head_at_the_end_of_the_seq_order() {
        let (_dir, conn) = typed_db(300);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {GET_NOW_AT_HEAD}")).unwrap();
        let plan = stmt
            .query_map(params!["d", "t", "k00001"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .join("; ");
        assert!(plan.contains("SEARCH s USING PRIMARY KEY (domain=? AND type=? AND key=?)"), "{plan}");
        assert!(!plan.contains("SCAN events") && !plan.contains("SCAN s"), "{plan}");
    }

    /// A `Get` reports the head with the state, and a missing record still
    /// reports it (the conformance suite's read-at check holds the two to
    /// one snapshot under concurrent writers).
    #[tokio::test]
    async fn a_get_reports_the_head_with_the_state_or_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path().join("a.db")).unwrap();
        let record = |key: &str| RecordRef { domain: "d".into(), ty: "t".into(), key: key.into() };
        let empty = storage.get_at(&record("k0"), None).await.unwrap();
        assert_eq!((empty.value, empty.seq), (None, 0));
        for i in 0..3 {
            storage.append(put_i(format!("k{i}"), i, None)).await.unwrap();
        }
        let found = storage.get_at(&record("k1"), None).await.unwrap();
        assert_eq!((found.value.map(|s| (s.record.key, s.version)), found.seq), (Some(("k1".into(), 1)), 3));
        let missing = storage.get_at(&record("k9"), None).await.unwrap();
        assert_eq!((missing.value, missing.seq), (None, 3));
        storage.close().await.unwrap();
    }

    /// A file created by an earlier build keeps `events`' former constraint
    /// (`SCHEMA`'s doc) and works as before: writes, reads now and in the
    /// past, and a repeated version still refused by the constraint.
    #[tokio::test]
    async fn a_file_with_the_former_events_constraint_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let former = SCHEMA.replacen("claims  TEXT NOT NULL\n", "claims  TEXT NOT NULL,\n    UNIQUE (domain, type, key, version)\n", 1);
        assert_ne!(former, SCHEMA, "the former constraint was put back");
        Connection::open(&path).unwrap().execute_batch(&former).unwrap();
        let storage = SqliteStorage::open(&path).unwrap();
        let record = RecordRef { domain: "d".into(), ty: "t".into(), key: "k".into() };
        for i in 0..3 {
            storage.append(put_i("k".into(), i, None)).await.unwrap();
        }
        let now = storage.get_at(&record, None).await.unwrap();
        assert_eq!((now.value.map(|s| s.version), now.seq), (Some(3), 3));
        let past = storage.get_at(&record, Some(2)).await.unwrap();
        assert_eq!(past.value.map(|s| s.version), Some(2));
        storage.close().await.unwrap();
        let conn = Connection::open(&path).unwrap();
        let repeated = conn.execute(
            "INSERT INTO events (id, domain, type, key, version, kind, method, time, vals, claims) \
             VALUES ('x', 'd', 't', 'k', 3, 'set', 'm', 1, '{}', '{}')",
            [],
        );
        assert!(repeated.unwrap_err().to_string().contains("UNIQUE"), "the former file lost its constraint");
    }

    /// Every connection goes through `unix-excl`: the WAL index is in the
    /// process's heap, so no `-shm` file appears beside the database
    /// (through the default VFS, the first read creates one).
    #[tokio::test]
    async fn the_wal_index_is_kept_in_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let storage = SqliteStorage::open(&path).unwrap();
        let record = RecordRef { domain: "d".into(), ty: "t".into(), key: "k".into() };
        storage.append(put_i("k".into(), 0, None)).await.unwrap();
        assert!(storage.get_at(&record, None).await.unwrap().value.is_some());
        assert!(!dir.path().join("a.db-shm").exists(), "a -shm file: a connection uses shared memory");
        assert!(dir.path().join("a.db-wal").exists(), "in WAL mode");
        storage.close().await.unwrap();
    }

    /// Writes that never pause (rounds of 256 appends of 8 KiB values, back
    /// to back: about 300 MB of WAL frames) keep the WAL file near its limit:
    /// without the writer's restart it grows by every frame written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_never_pause_keep_the_wal_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path().join("a.db")).unwrap();
        let wal = dir.path().join("a.db-wal");
        let big = "x".repeat(8 << 10);
        let mut largest = 0;
        for round in 0..30 {
            let writes = (0..256).map(|i| storage.append(put_i(format!("k{i}"), round * 256 + i, Some(&big))));
            for written in futures::future::join_all(writes).await {
                written.unwrap();
            }
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        let limit = WAL_LIMIT_BYTES as u64;
        assert!(largest < 2 * limit, "the WAL reached {largest} bytes; its limit is {limit}");
        storage.close().await.unwrap();
    }

    /// Writes that never pause start the WAL over long before its limit:
    /// once the checkpoint thread has copied the WAL as it stood, the writer
    /// copies the frames committed since and the next batch starts the file
    /// over (`WAL_CAUGHT_UP_BYTES`). The WAL header's checkpoint sequence
    /// number (bytes 12..16) goes up at every start over; without the
    /// writer's part, a WAL under writes that never pause starts over only
    /// past `WAL_LIMIT_BYTES`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_never_pause_start_the_wal_over_before_its_limit() {
        use std::io::Read;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(dir.path().join("a.db")).unwrap());
        let wal = dir.path().join("a.db-wal");
        let checkpoint_seq = || {
            let mut header = [0; 16];
            std::fs::File::open(&wal).and_then(|mut f| f.read_exact(&mut header)).ok()?;
            Some(u32::from_be_bytes([header[12], header[13], header[14], header[15]]))
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..32)
            .map(|w| {
                let (storage, stop, written) = (storage.clone(), stop.clone(), written.clone());
                tokio::spawn(async move {
                    let big = "x".repeat(2 << 10);
                    while !stop.load(Ordering::Relaxed) {
                        let i = written.fetch_add(1, Ordering::Relaxed);
                        storage.append(put_i(format!("k{w}"), i, Some(&big))).await.unwrap();
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while written.load(Ordering::Relaxed) < 2000 {
            assert!(Instant::now() < deadline, "2,000 appends took over 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = checkpoint_seq();
        let mut largest = 0;
        let started_over = loop {
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            if checkpoint_seq() != first {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        let appends = written.load(Ordering::Relaxed);
        assert!(started_over, "the WAL did not start over within 60 s ({appends} appends); it reached {largest} bytes");
        let limit = WAL_LIMIT_BYTES as u64;
        assert!(largest < limit, "the WAL reached {largest} bytes before it started over; its limit is {limit}");
        Arc::into_inner(storage).expect("the writers are done").close().await.unwrap();
    }

    /// Event `e<i>` setting `{"i": i}` (and `"big"` when given) on `d/t/<key>`.
    fn put_i(key: String, i: usize, big: Option<&str>) -> AppendRequest {
        let mut values = Values::new();
        values.insert("i".into(), (i as u64).into());
        if let Some(big) = big {
            values.insert("big".into(), big.into());
        }
        put(format!("e{i}"), "t", key, values)
    }

    /// Expensive searches naming a field get it an index, built by the
    /// writer while appends go on; a cheap type never does.
    #[tokio::test]
    async fn expensive_searches_get_their_field_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path().join("a.db")).unwrap();
        let status = |ty: &str, i: usize| {
            let mut values = Values::new();
            values.insert("status".into(), (if i % 100 == 7 { "rare" } else { "common" }).into());
            put(format!("{ty}-{i}"), ty, format!("k{i:05}"), values)
        };
        let writes = (0..3000).map(|i| storage.append(status("big", i))).chain((0..20).map(|i| storage.append(status("small", i))));
        for written in futures::future::join_all(writes).await {
            written.unwrap();
        }
        let rare = |ty: &str| StateQuery { ty: ty.into(), ..query(r#"{"status": "rare"}"#, None, 100) };
        for _ in 0..10 {
            storage.search_states(&rare("small")).await.unwrap();
        }
        assert!(storage.fields.ready().is_empty(), "searches of 20 records are not expensive");
        let before = storage.search_states(&rare("big")).await.unwrap();
        for _ in 1..field_index::AUTO_AFTER {
            storage.search_states(&rare("big")).await.unwrap();
        }
        // The index is built between append batches: one more append
        // returns after it.
        storage.append(status("big", 3000)).await.unwrap();
        assert!(storage.fields.ready().contains("status"));
        assert_eq!(storage.search_states(&rare("big")).await.unwrap(), before);
        storage.close().await.unwrap();
        // Found again at open.
        let storage = SqliteStorage::open(dir.path().join("a.db")).unwrap();
        assert!(storage.fields.ready().contains("status"));
        storage.close().await.unwrap();
    }

    /// Gets racing appends of the same records, with the point cache on
    /// (`point_cache.rs`): every answer is the record as its history holds
    /// it at the answer's seq, and a Get after an acknowledged append reads
    /// that append.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cached_gets_racing_appends_answer_the_record_at_their_seq() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(dir.path().join("a.db")).unwrap());
        assert!(storage.cache.is_some(), "the point cache is on by default");
        let record = |k: &str| RecordRef { domain: "d".into(), ty: "t".into(), key: k.into() };
        const KEYS: [&str; 3] = ["a", "b", "c"];
        const WRITES: usize = 300;
        let writers = KEYS.map(|k| {
            let storage = storage.clone();
            tokio::spawn(async move {
                for i in 0..WRITES {
                    let mut req = put_i(k.into(), i, None);
                    req.id = format!("{k}-{i}");
                    let appended = storage.append(req).await.unwrap();
                    let read = storage.get_at(&record(k), None).await.unwrap().value.unwrap();
                    assert_eq!(read.version, appended.event.version, "{k}: a Get after append {i} read an older version");
                    assert!(storage.get_at(&record(k), None).await.unwrap().seq >= appended.event.seq);
                }
            })
        });
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers = (0..4).map(|_| {
            let (storage, done) = (storage.clone(), done.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for k in KEYS {
                        let AtSeq { value, seq } = storage.get_at(&record(k), None).await.unwrap();
                        answers.push((k, seq, value.map(|s| (s.version, s.values))));
                    }
                    tokio::task::yield_now().await;
                }
                answers
            })
        });
        let readers: Vec<_> = readers.collect();
        for w in writers {
            w.await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut checked = 0;
        for r in readers {
            for (k, seq, answer) in r.await.unwrap() {
                let then = storage.get_at(&record(k), Some(seq)).await.unwrap().value.map(|s| (s.version, s.values));
                assert_eq!(answer, then, "{k} at seq {seq}: the Get's answer is not the record as of its seq");
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} racing reads: the test proves little");
        // A quiet record read again is kept (the doorkeeper wants a second
        // read on the same CPU), and answers from the cache as from the file.
        let first = storage.get_at(&record("a"), None).await.unwrap();
        for _ in 0..20 {
            storage.get_at(&record("a"), None).await.unwrap();
        }
        assert!(storage.cache.as_ref().unwrap().holds(&record("a")), "reads were not kept");
        let again = storage.get_at(&record("a"), None).await.unwrap();
        assert_eq!((first.seq, first.value.map(|s| s.version)), (again.seq, again.value.map(|s| s.version)));
        storage.close().await.unwrap();
    }

    #[tokio::test]
    async fn read_cache_mib_0_turns_the_point_cache_off() {
        let dir = tempfile::tempdir().unwrap();
        let config: SqliteConfig = serde_json::from_value(serde_json::json!({"read_cache_mib": 0})).unwrap();
        let storage = SqliteStorage::open_with(dir.path().join("a.db"), &config).unwrap();
        assert!(storage.cache.is_none());
        storage.append(put_i("k".into(), 0, None)).await.unwrap();
        let record = RecordRef { domain: "d".into(), ty: "t".into(), key: "k".into() };
        assert_eq!(storage.get_at(&record, None).await.unwrap().value.unwrap().version, 1);
        storage.close().await.unwrap();
    }
}

//! The WAL's writes gathered: a few `pwrite`s per commit, not one per frame
//! header and one per page.
//!
//! sqlite appends a commit to the WAL a frame at a time, and each frame as
//! two writes: its 24-byte header, then the page. A commit of the writer
//! thread's group commit holds 15 to 20 frames (the events rows, the leaf
//! of each of their indexes, the states row, page 1), so 30 to 40 `pwrite`
//! calls, each of which walks the page cache and marks its blocks dirty
//! again (a header and the page after it share a block): 6.4 % of the
//! gateway's CPU under `Set`, on the one thread every write waits for.
//! Gathered, a commit is two or three calls and the writer thread spends
//! a tenth less CPU per `Set` (BENCHMARKS.md, session 19).
//!
//! This VFS (`stategate-unix-excl`) is `unix-excl` with the WAL file's writes
//! held in a buffer while they run on from one another, and written in
//! pieces of 64 KiB (a commit here: two or three) before anything that must
//! see them on the file: a sync, a read, a truncation, a size, a file
//! control, a write elsewhere, the file's close, or the buffer reaching
//! [`MAX_HELD`]. Every other file (the database, a journal) is
//! `unix-excl`'s own, untouched.
//!
//! Why this keeps sqlite's guarantees:
//! - **Durability.** sqlite syncs the WAL before it counts a commit
//!   (`synchronous=FULL`); the sync writes the held bytes first, so a commit
//!   is on disk before `COMMIT` returns, as before. A failed write fails the
//!   sync, so the commit fails and sqlite rolls it back.
//! - **Readers.** Other connections read a frame only once the WAL index
//!   lists it, and sqlite adds a commit's frames to the index after that
//!   sync; frames of a transaction still open are read back only by the
//!   writer's own connection, through this file, whose reads write the held
//!   bytes first.
//! - **A crash.** Bytes not yet written are a commit not yet synced: WAL
//!   recovery stops at the last frame whose checksum holds, as it does after
//!   a crash between two `pwrite`s.
//!
//! The base VFS is found and this one registered once per process; the
//! files opened through it are `unix-excl` files (its `xOpen` is called with
//! the `unix-excl` VFS itself, which is how that VFS knows to lock
//! exclusively), so everything the module doc of `sqlite/mod.rs` says about
//! `unix-excl` holds for them.

use rusqlite::ffi;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

/// The name connections open with.
pub(super) const VFS_NAME: &CStr = c"stategate-unix-excl";
const BASE_NAME: &CStr = c"unix-excl";

/// Bytes held before they are written anyway: a large transaction (a batch
/// of big records, an index build) goes out in pieces of this size.
const MAX_HELD: usize = 1 << 20;
/// The most one call of the base's `xWrite` takes: `unix` writes less than
/// 128 KiB at once (it masks the length with `0x1ffff`), so held bytes go
/// out in pieces of this size.
const MAX_WRITE: usize = 1 << 16;

/// A WAL file: our methods first (sqlite's `sqlite3_file` layout), then the
/// held bytes, then the base VFS's own file object (`base`, `szOsFile`
/// bytes of it, allocated by sqlite behind this struct).
#[repr(C)]
struct WalFile {
    methods: *const ffi::sqlite3_io_methods,
    base: *mut ffi::sqlite3_file,
    /// Offset in the file of `held[0]`.
    at: i64,
    held: Vec<u8>,
}

struct Registered {
    base: *mut ffi::sqlite3_vfs,
    methods: ffi::sqlite3_io_methods,
}

// SAFETY: both are written once, before any use, and only read after;
// sqlite's VFS objects are meant to be shared between threads.
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Result<Registered, String>> = OnceLock::new();

/// Registers the VFS (once); an error names why sqlite refused it.
pub(super) fn register() -> Result<(), String> {
    REGISTERED.get_or_init(|| unsafe { register_once() }).as_ref().map(|_| ()).map_err(Clone::clone)
}

unsafe fn register_once() -> Result<Registered, String> {
    // Before sqlite initializes, which sqlite3_vfs_find below does.
    super::process_config::apply();
    // SAFETY: sqlite3_vfs_find takes a NUL-terminated name and returns a
    // pointer to a VFS that lives for the process, or null.
    let base = unsafe { ffi::sqlite3_vfs_find(BASE_NAME.as_ptr()) };
    if base.is_null() {
        return Err("sqlite has no unix-excl VFS".into());
    }
    // SAFETY: base is a live VFS; it is copied, not changed.
    let mut vfs: ffi::sqlite3_vfs = unsafe { std::ptr::read(base) };
    vfs.zName = VFS_NAME.as_ptr();
    vfs.pNext = std::ptr::null_mut();
    vfs.szOsFile = std::mem::size_of::<WalFile>() as c_int + unsafe { (*base).szOsFile };
    vfs.xOpen = Some(open);
    let methods = ffi::sqlite3_io_methods {
        iVersion: 3,
        xClose: Some(close),
        xRead: Some(read),
        xWrite: Some(write),
        xTruncate: Some(truncate),
        xSync: Some(sync),
        xFileSize: Some(file_size),
        xLock: Some(lock),
        xUnlock: Some(unlock),
        xCheckReservedLock: Some(check_reserved_lock),
        xFileControl: Some(file_control),
        xSectorSize: Some(sector_size),
        xDeviceCharacteristics: Some(device_characteristics),
        xShmMap: Some(shm_map),
        xShmLock: Some(shm_lock),
        xShmBarrier: Some(shm_barrier),
        xShmUnmap: Some(shm_unmap),
        xFetch: Some(fetch),
        xUnfetch: Some(unfetch),
    };
    let registered = Registered { base, methods };
    // The VFS must outlive every connection: it is never unregistered.
    let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
    // SAFETY: vfs is a complete, leaked (so 'static) VFS object.
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite refused to register the {VFS_NAME:?} VFS (code {rc})"));
    }
    Ok(registered)
}

/// Opens through `unix-excl`; a WAL file gets this module's methods in
/// front of it, every other file is the base's file as it is.
unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // Only a registered VFS is opened through, so neither is missing; no
    // panic may cross back into sqlite, so each says so as a failed open.
    let Some(Ok(r)) = REGISTERED.get() else { return ffi::SQLITE_CANTOPEN };
    // SAFETY (all of this function): sqlite allocated `file` with this VFS's
    // szOsFile bytes, which leaves room for a WalFile and the base's file
    // after it; xOpen of the base is called as sqlite itself would.
    unsafe {
        let Some(x_open) = (*r.base).xOpen else { return ffi::SQLITE_CANTOPEN };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return x_open(r.base, name, file, flags, out_flags);
        }
        let wal = file.cast::<WalFile>();
        let base = file.cast::<u8>().add(std::mem::size_of::<WalFile>()).cast::<ffi::sqlite3_file>();
        let rc = x_open(r.base, name, base, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // sqlite closes a file whose open failed only if its methods
            // are set: the base's file is closed here instead, if it must be.
            if let Some(close) = (*base).pMethods.as_ref().and_then(|m| m.xClose) {
                close(base);
            }
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        std::ptr::write(wal, WalFile { methods: &r.methods, base, at: 0, held: Vec::new() });
        rc
    }
}

/// The WalFile behind a file sqlite hands back.
///
/// # Safety
/// `file` must be a file this VFS opened as a WAL (its methods are ours).
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    unsafe { &mut *file.cast::<WalFile>() }
}

impl WalFile {
    fn base_methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: the base file was opened successfully, so its methods are set.
        unsafe { &*(*self.base).pMethods }
    }

    /// Writes what is held; the bytes stay held if the write fails.
    fn write_held(&mut self) -> c_int {
        if self.held.is_empty() {
            return ffi::SQLITE_OK;
        }
        let Some(x_write) = self.base_methods().xWrite else { return ffi::SQLITE_IOERR_WRITE };
        let mut done = 0;
        while done < self.held.len() {
            let n = (self.held.len() - done).min(MAX_WRITE);
            // SAFETY: the base file is open; the pointer and length are within `held`.
            let rc = unsafe { x_write(self.base, self.held[done..].as_ptr().cast(), n as c_int, self.at + done as i64) };
            if rc != ffi::SQLITE_OK {
                // What was written stays written; the rest is retried by the next flush.
                self.held.drain(..done);
                self.at += done as i64;
                return rc;
            }
            done += n;
        }
        self.held.clear();
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    // SAFETY: sqlite calls this on a file of ours with `amount` readable bytes at `data`.
    let f = unsafe { wal(file) };
    let Ok(n) = usize::try_from(amount) else { return ffi::SQLITE_IOERR_WRITE };
    let continues = !f.held.is_empty() && offset == f.at + f.held.len() as i64;
    if !continues || f.held.len() + n > MAX_HELD {
        let rc = f.write_held();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        f.at = offset;
    }
    // SAFETY: `data` holds `amount` bytes (sqlite's xWrite contract).
    f.held.extend_from_slice(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), n) });
    if f.held.len() > MAX_HELD { f.write_held() } else { ffi::SQLITE_OK }
}

/// Defines a method that writes what is held, then calls the base's.
macro_rules! after_held {
    ($name:ident, $method:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: sqlite calls this on a file of ours, with the base's arguments.
            let f = unsafe { wal(file) };
            let rc = f.write_held();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            match f.base_methods().$method {
                Some(m) => unsafe { m(f.base $(, $arg)*) },
                None => ffi::SQLITE_IOERR,
            }
        }
    };
}

/// Defines a method that only calls the base's (nothing held matters to it).
macro_rules! passed_on {
    ($name:ident, $method:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty, $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
            // SAFETY: sqlite calls this on a file of ours, with the base's arguments.
            let f = unsafe { wal(file) };
            match f.base_methods().$method {
                Some(m) => unsafe { m(f.base $(, $arg)*) },
                None => $missing,
            }
        }
    };
}

after_held!(read, xRead(buf: *mut c_void, amount: c_int, offset: i64));
after_held!(truncate, xTruncate(size: i64));
after_held!(sync, xSync(flags: c_int));
after_held!(file_size, xFileSize(size: *mut i64));
after_held!(file_control, xFileControl(op: c_int, arg: *mut c_void));
passed_on!(lock, xLock(level: c_int) -> c_int, ffi::SQLITE_IOERR);
passed_on!(unlock, xUnlock(level: c_int) -> c_int, ffi::SQLITE_IOERR);
passed_on!(check_reserved_lock, xCheckReservedLock(out: *mut c_int) -> c_int, ffi::SQLITE_IOERR);
passed_on!(sector_size, xSectorSize() -> c_int, 4096);
passed_on!(device_characteristics, xDeviceCharacteristics() -> c_int, 0);
passed_on!(shm_map, xShmMap(page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_IOERR);
passed_on!(shm_lock, xShmLock(offset: c_int, n: c_int, flags: c_int) -> c_int, ffi::SQLITE_IOERR);
passed_on!(shm_unmap, xShmUnmap(delete: c_int) -> c_int, ffi::SQLITE_IOERR);
passed_on!(fetch, xFetch(offset: i64, amount: c_int, out: *mut *mut c_void) -> c_int, {
    // No mapping: sqlite reads instead.
    unsafe { *out = std::ptr::null_mut() };
    ffi::SQLITE_OK
});
passed_on!(unfetch, xUnfetch(offset: i64, page: *mut c_void) -> c_int, ffi::SQLITE_OK);

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: sqlite calls this on a file of ours.
    let f = unsafe { wal(file) };
    if let Some(m) = f.base_methods().xShmBarrier {
        unsafe { m(f.base) }
    }
}

/// Writes what is held, closes the base's file and frees the buffer; the
/// write's failure is the close's.
unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: sqlite closes a file once; after this it does not touch it.
    let f = unsafe { wal(file) };
    let written = f.write_held();
    let closed = match f.base_methods().xClose {
        Some(m) => unsafe { m(f.base) },
        None => ffi::SQLITE_OK,
    };
    // SAFETY: the WalFile was written by `open` and is dropped once, here.
    unsafe { std::ptr::drop_in_place(file.cast::<WalFile>()) };
    if written != ffi::SQLITE_OK { written } else { closed }
}

#[cfg(test)]
mod tests {
    use super::super::open_connection;
    use rusqlite::Connection;
    use std::path::Path;

    /// A connection as the writer's: through this VFS, WAL, a sync per commit.
    fn writer(dir: &Path, cache_pages: i64) -> Connection {
        let conn = open_connection(&dir.join("db")).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA page_size = 8192; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = {cache_pages};
             CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT NOT NULL);"
        ))
        .expect("set up");
        conn
    }

    /// What a crash would leave: the files as they are now, copied while the
    /// writer's connection is still open, opened by plain sqlite (which
    /// recovers the WAL from its frames' checksums).
    fn after_a_crash(dir: &Path) -> (tempfile::TempDir, Connection) {
        let copy = tempfile::tempdir().expect("tempdir");
        for name in ["db", "db-wal"] {
            std::fs::copy(dir.join(name), copy.path().join(name)).expect("copy");
        }
        let conn = Connection::open(copy.path().join("db")).expect("open the copy");
        (copy, conn)
    }

    /// The first connection turns sqlite's memory statistics off, so its
    /// allocations take no process-wide lock: sqlite then counts none of
    /// them. (Each test runs in a process of its own, as nextest runs
    /// them, so this one's connection is the process's first.)
    #[test]
    fn sqlite_counts_no_allocations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = writer(dir.path(), 100);
        conn.execute("INSERT INTO t (n, body) VALUES (1, ?1)", [&"x".repeat(10_000)]).expect("insert");
        let (mut now, mut highest) = (-1i64, -1i64);
        // SAFETY: two valid out-pointers; no reset.
        let rc = unsafe { rusqlite::ffi::sqlite3_status64(rusqlite::ffi::SQLITE_STATUS_MALLOC_COUNT, &mut now, &mut highest, 0) };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        assert_eq!((now, highest), (0, 0), "sqlite counted its allocations: the statistics are on");
    }

    fn rows(conn: &Connection) -> (i64, i64, i64) {
        conn.query_row("SELECT count(*), coalesce(sum(n), 0), coalesce(sum(length(body)), 0) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("count")
    }

    #[test]
    fn every_commit_is_on_the_file_when_commit_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = writer(dir.path(), -32768);
        let body = "x".repeat(300);
        for commit in 0..10i64 {
            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            for i in 0..40 {
                conn.execute("INSERT INTO t (n, body) VALUES (?1, ?2)", rusqlite::params![commit * 40 + i, body])
                    .expect("insert");
            }
            conn.execute_batch("COMMIT").expect("commit");
            let (_copy, crashed) = after_a_crash(dir.path());
            assert_eq!(rows(&crashed), rows(&conn), "commit {commit} is not all on the file");
            assert_eq!(rows(&conn).0, (commit + 1) * 40);
        }
    }

    #[test]
    fn a_transaction_larger_than_what_is_held_is_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A cache of 16 pages: the transaction spills frames into the WAL
        // and reads them back before it commits.
        let conn = writer(dir.path(), 16);
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        for n in 0..3000i64 {
            let body: String = (0..1000).map(|i| char::from(b'a' + ((n * 7 + i) % 26) as u8)).collect();
            conn.execute("INSERT INTO t (n, body) VALUES (?1, ?2)", rusqlite::params![n, body]).expect("insert");
        }
        let inside = rows(&conn);
        assert_eq!(inside, (3000, 3000 * 2999 / 2, 3000 * 1000));
        conn.execute_batch("COMMIT").expect("commit");
        assert!(std::fs::metadata(dir.path().join("db-wal")).expect("wal").len() > 2 * super::MAX_HELD as u64);
        let (_copy, crashed) = after_a_crash(dir.path());
        assert_eq!(rows(&crashed), inside);
        let sample: String = crashed.query_row("SELECT body FROM t WHERE n = 2999", [], |r| r.get(0)).expect("row");
        assert_eq!(sample, (0..1000).map(|i| char::from(b'a' + ((2999 * 7 + i) % 26) as u8)).collect::<String>());
    }
}

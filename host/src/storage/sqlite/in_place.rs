//! Statements that bind their text in place: sqlite reads the caller's
//! bytes while the statement runs, instead of a copy made first.
//!
//! rusqlite binds every text with `SQLITE_TRANSIENT`: sqlite allocates a
//! copy of each string when it is bound and frees it when the parameter is
//! bound again. The writer thread binds ten parameters of each event row it
//! inserts (eight of them text, the values' JSON among them) and five of
//! each state row, on the one thread every write waits for: 3.4k of its
//! 29.5k instructions a `Set` went to binding (callgrind, BENCHMARKS.md
//! session 30). Bound `SQLITE_STATIC`, a text is read where it is.
//!
//! That is sound only while the text lives, so the texts are borrowed for
//! one [`InPlace::execute`]: it binds them, runs the statement, then
//! resets it and clears every binding before it returns, so no pointer to
//! a caller's bytes stays in the statement (not even one sqlite would only
//! overwrite at the next bind).

use rusqlite::{Connection, ffi};
use std::ffi::{CStr, c_int};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// A prepared statement that writes (it returns no rows), run with
/// [`InPlace::execute`].
pub(super) struct InPlace<'c> {
    raw: NonNull<ffi::sqlite3_stmt>,
    /// The statement is finalized before its connection closes.
    conn: &'c Connection,
}

/// Binds one run's parameters; texts must live for `'t`, the run's borrow.
pub(super) struct Binder<'s, 't> {
    raw: NonNull<ffi::sqlite3_stmt>,
    conn: &'s Connection,
    texts: PhantomData<&'t str>,
}

impl<'c> InPlace<'c> {
    /// Prepares `sql` to be kept for the connection's life
    /// (`SQLITE_PREPARE_PERSISTENT`, as rusqlite's own `prepare` does not
    /// say to sqlite).
    pub(super) fn prepare(conn: &'c Connection, sql: &str) -> rusqlite::Result<Self> {
        let len = c_int::try_from(sql.len()).map_err(|_| failure(ffi::SQLITE_TOOBIG, "statement text too long".into()))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: the handle is the live connection's; sql is `len` bytes
        // (it need not end in a NUL when its length is given).
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                conn.handle(),
                sql.as_ptr().cast(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT as _,
                &mut raw,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(last_error(conn, rc));
        }
        let raw = NonNull::new(raw).ok_or_else(|| failure(ffi::SQLITE_MISUSE, format!("no statement in {sql:?}")))?;
        Ok(InPlace { raw, conn })
    }

    /// Binds the parameters with `bind`, runs the statement once, and
    /// leaves it reset with no parameter bound, whatever happened.
    pub(super) fn execute<'t>(
        &mut self,
        bind: impl FnOnce(&mut Binder<'_, 't>) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        let mut binder = Binder { raw: self.raw, conn: self.conn, texts: PhantomData };
        let result = bind(&mut binder).and_then(|()| self.step());
        // SAFETY: the statement is live; reset and clear_bindings only
        // return an earlier step's error again, which `step` reported.
        unsafe {
            ffi::sqlite3_reset(self.raw.as_ptr());
            ffi::sqlite3_clear_bindings(self.raw.as_ptr());
        }
        result
    }

    fn step(&mut self) -> rusqlite::Result<()> {
        // SAFETY: the statement is live and every parameter it reads is
        // bound to memory the running `execute` borrows.
        match unsafe { ffi::sqlite3_step(self.raw.as_ptr()) } {
            ffi::SQLITE_DONE => Ok(()),
            ffi::SQLITE_ROW => Err(rusqlite::Error::ExecuteReturnedResults),
            rc => Err(last_error(self.conn, rc)),
        }
    }
}

impl Drop for InPlace<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and dropped only here.
        unsafe { ffi::sqlite3_finalize(self.raw.as_ptr()) };
    }
}

impl<'t> Binder<'_, 't> {
    /// Binds parameter `index` (from 1) to `text`, read in place.
    pub(super) fn text(&mut self, index: usize, text: &'t str) -> rusqlite::Result<()> {
        let len = c_int::try_from(text.len()).map_err(|_| failure(ffi::SQLITE_TOOBIG, "text too long to bind".into()))?;
        // SAFETY: the statement is live; `text` outlives the run, after which
        // `execute` clears the binding (the module doc).
        let rc = unsafe {
            ffi::sqlite3_bind_text(self.raw.as_ptr(), index as c_int, text.as_ptr().cast(), len, ffi::SQLITE_STATIC())
        };
        self.check(rc)
    }

    /// Binds parameter `index` to `text`, or to NULL for `None`.
    pub(super) fn text_or_null(&mut self, index: usize, text: Option<&'t str>) -> rusqlite::Result<()> {
        match text {
            Some(text) => self.text(index, text),
            // SAFETY: the statement is live.
            None => self.check(unsafe { ffi::sqlite3_bind_null(self.raw.as_ptr(), index as c_int) }),
        }
    }

    /// Binds parameter `index` to an integer; one past `i64` is refused,
    /// as rusqlite refuses it.
    pub(super) fn integer(&mut self, index: usize, value: impl TryInto<i64, Error: std::error::Error + Send + Sync + 'static>) -> rusqlite::Result<()> {
        let value = value.try_into().map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        // SAFETY: the statement is live.
        self.check(unsafe { ffi::sqlite3_bind_int64(self.raw.as_ptr(), index as c_int, value) })
    }

    fn check(&self, rc: c_int) -> rusqlite::Result<()> {
        if rc == ffi::SQLITE_OK { Ok(()) } else { Err(last_error(self.conn, rc)) }
    }
}

/// The connection's message for the call that just returned `rc`.
fn last_error(conn: &Connection, rc: c_int) -> rusqlite::Error {
    // SAFETY: the handle is live; sqlite3_errmsg returns a NUL-terminated
    // string it owns until the next call on the connection, copied here.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(conn.handle())) }.to_string_lossy().into_owned();
    failure(rc, message)
}

fn failure(rc: c_int, message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER, c TEXT NOT NULL)").unwrap();
        conn
    }

    /// What a run bound is what the row holds, though the texts are gone
    /// by the next run; and a run leaves no parameter bound, so a run
    /// that binds less finds NULL where the last one's texts were.
    #[test]
    fn a_run_writes_what_it_bound_and_leaves_nothing_bound() {
        let conn = table();
        let mut insert = InPlace::prepare(&conn, "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3)").unwrap();
        for i in 0..3u64 {
            let a = format!("text {i}");
            let c = "c".repeat(1000 + i as usize);
            insert.execute(|b| b.text(1, &a).and(b.integer(2, i)).and(b.text(3, &c))).unwrap();
        }
        let rows: Vec<(String, i64, usize)> = conn
            .prepare("SELECT a, b, length(c) FROM t ORDER BY b")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [("text 0".into(), 0, 1000), ("text 1".into(), 1, 1001), ("text 2".into(), 2, 1002)]);
        // Only ?1 bound: ?3 is NULL again, which its constraint refuses.
        let err = insert.execute(|b| b.text_or_null(1, None)).unwrap_err();
        assert!(err.to_string().contains("NOT NULL constraint failed: t.c"), "{err}");
        // And the statement runs again after a failure.
        insert.execute(|b| b.text(1, "x").and(b.integer(2, 9)).and(b.text(3, ""))).unwrap();
        assert_eq!(conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap(), 4);
    }

    #[test]
    fn what_cannot_be_bound_or_prepared_says_why() {
        let conn = table();
        let err = InPlace::prepare(&conn, "INSERT INTO nowhere VALUES (?1)").err().unwrap();
        assert!(err.to_string().contains("no such table: nowhere"), "{err}");
        let mut insert = InPlace::prepare(&conn, "INSERT INTO t (b, c) VALUES (?1, 'c')").unwrap();
        let err = insert.execute(|b| b.integer(1, u64::MAX)).unwrap_err();
        assert!(matches!(err, rusqlite::Error::ToSqlConversionFailure(_)), "{err:?}");
        let err = insert.execute(|b| b.integer(2, 1)).unwrap_err();
        assert!(err.to_string().contains("column index out of range"), "{err}");
        let mut select = InPlace::prepare(&conn, "SELECT 1").unwrap();
        assert!(matches!(select.execute(|_| Ok(())), Err(rusqlite::Error::ExecuteReturnedResults)));
    }
}

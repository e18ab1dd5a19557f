//! sqlite's process-wide settings, made once before sqlite initializes:
//! no memory statistics, and mimalloc as its allocator.
//!
//! Both must come before sqlite's first initialization, after which
//! `sqlite3_config` refuses them (`SQLITE_MISUSE`), harmlessly: sqlite then
//! keeps its defaults. `wal_writes::register` calls [`apply`] first, inside
//! its `OnceLock`, before `sqlite3_vfs_find` initializes sqlite; every
//! connection of this module passes there first, so no other thread of
//! ours is in sqlite meanwhile.

use rusqlite::ffi;
use std::ffi::{c_int, c_void};

/// Applies both settings; a refusal is logged and leaves sqlite's default.
pub(super) fn apply() {
    count_no_memory();
    allocate_with_mimalloc();
}

/// Turns off sqlite's memory statistics, which nothing here reads: with
/// them on (its default), every `sqlite3_malloc` and `sqlite3_free` takes
/// a process-wide mutex to count, about 9 lock and unlock pairs per `Set`
/// on the writer thread (callgrind, BENCHMARKS.md session 24).
fn count_no_memory() {
    // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int argument; sqlite checks
    // whether it is initialized before it changes anything.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) };
    if rc != ffi::SQLITE_OK {
        tracing::debug!(rc, "sqlite: memory statistics stay on (sqlite was initialized first)");
    }
}

/// Gives sqlite mimalloc, the allocator the rest of the process uses
/// (`crate::allocator`), instead of the C library's `malloc`. glibc serves
/// each thread from an arena it grows and shrinks with `mprotect` and
/// returns pages of to the kernel as blocks are freed; on the writer
/// thread, through which every write passes, that came to 0.056
/// `mprotect` calls and 0.14 page faults per `Set` (BENCHMARKS.md session
/// 29). mimalloc keeps freed pages for the thread's next allocations.
///
/// Every mimalloc block is aligned to 8 bytes at least, which is what
/// sqlite asks of an allocator; sqlite copies the methods before
/// `sqlite3_config` returns.
fn allocate_with_mimalloc() {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a sqlite3_mem_methods,
    // read before the call returns; every method is set.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods as *const ffi::sqlite3_mem_methods) };
    if rc != ffi::SQLITE_OK {
        tracing::debug!(rc, "sqlite: allocates with malloc (sqlite was initialized first)");
    }
}

/// sqlite asks for sizes as a non-negative `int` (it checks before calling).
fn bytes(n: c_int) -> usize {
    usize::try_from(n).unwrap_or(0)
}

unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
    // SAFETY: mi_malloc takes any size and returns null when out of memory,
    // as sqlite expects.
    unsafe { libmimalloc_sys::mi_malloc(bytes(n)) }
}

unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: sqlite frees only what `malloc` or `realloc` gave it.
    unsafe { libmimalloc_sys::mi_free(p) }
}

unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: as `free`; on failure the block stays valid, as sqlite expects.
    unsafe { libmimalloc_sys::mi_realloc(p, bytes(n)) }
}

unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    // SAFETY: as `free`; mimalloc reports a null pointer as 0 bytes.
    let usable = unsafe { libmimalloc_sys::mi_usable_size(p) };
    c_int::try_from(usable).unwrap_or(c_int::MAX)
}

/// The size `malloc` would really give for `n`: sqlite uses the slack
/// (a page cache line, a string buffer) rather than ask again.
unsafe extern "C" fn roundup(n: c_int) -> c_int {
    // SAFETY: mi_good_size only computes.
    let good = unsafe { libmimalloc_sys::mi_good_size(bytes(n)) };
    c_int::try_from(good).unwrap_or(c_int::MAX).max(n)
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// sqlite's allocations in this process come from mimalloc: a block
    /// sqlite hands out is one mimalloc knows (its usable size is at
    /// least what was asked), and sqlite reports the size mimalloc gives.
    #[test]
    fn sqlite_allocates_from_mimalloc() {
        super::super::wal_writes::register().expect("the VFS registers");
        // SAFETY: sqlite3_malloc64 and sqlite3_free are sqlite's own pair.
        unsafe {
            let p = ffi::sqlite3_malloc64(100);
            assert!(!p.is_null());
            assert!(libmimalloc_sys::mi_is_in_heap_region(p), "sqlite's block is not mimalloc's");
            assert_eq!(ffi::sqlite3_msize(p) as usize, libmimalloc_sys::mi_usable_size(p));
            ffi::sqlite3_free(p);
        }
    }
}

//! A counting allocator: live heap bytes allocated by the server runtime's
//! threads (gateway and bare server), so memory scenarios can tell the
//! gateway's share from the clients' in one process. (sqlite allocates
//! with libc malloc directly and is not counted; idle streams do not touch it.)
//! Underneath it is the binary's allocator (`stategate::allocator`), so
//! the in-process rows run the gateway on the allocator users run.

use stategate::allocator::MiMalloc as Inner;
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};

struct Counting;

static SERVER_BYTES: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn count(delta: i64) {
    if SERVER_THREAD.try_with(Cell::get).unwrap_or(false) {
        SERVER_BYTES.fetch_add(delta, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        unsafe { Inner.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64));
        unsafe { Inner.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        unsafe { Inner.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        unsafe { Inner.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Marks the calling thread as a server thread (runtime `on_thread_start`).
pub fn mark_server_thread() {
    SERVER_THREAD.with(|c| c.set(true));
}

/// Net bytes the server threads allocated so far, MiB (memory freed on a
/// client thread is not subtracted: compare deltas over quiet intervals).
pub fn server_heap_mib() -> f64 {
    SERVER_BYTES.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

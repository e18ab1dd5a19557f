//! The allocator the binary installs (`host/src/main.rs`) and the bench
//! runs beneath its counting: mimalloc, asked the way it is fastest.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every allocation to
//! `mi_malloc_aligned`, whatever its alignment. That path tries a free
//! block of the size class and checks its address, and for anything over
//! 1 KiB (h2's read buffers, futures boxed by the tower layers) falls to a
//! second, generic function before reaching the plain allocation. Those
//! checks came to about 2.2k of a health check's 75k instructions, and as
//! much of a `Get`'s or a `Set`'s (callgrind, BENCHMARKS.md session 29). Every mimalloc block is aligned
//! to at least 16 bytes, or to its own size below that, so an alignment no
//! larger than that and no larger than the size needs none of it: those
//! go to `mi_malloc` as std's `System` allocator sends them to `malloc`.
//! Only the rest (tokio's task cells, aligned to 128) take the aligned
//! path. Blocks are freed by `mi_free` either way.
//!
//! The gateway also keeps its heap in 4 KiB pages
//! ([`keep_heap_in_small_pages`]): mimalloc asks the kernel for 2 MiB pages
//! under its arenas, which keeps a mostly empty 2 MiB region resident
//! whole for a few live blocks.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// What mimalloc aligns every block to (`MI_MAX_ALIGN_SIZE`), when the
/// block is at least that large.
const PLAIN_ALIGN: usize = 16;

/// mimalloc behind `GlobalAlloc`, aligned calls only where needed.
pub struct MiMalloc;

/// Whether a plain allocation of `size` bytes is already aligned to `align`.
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

/// A block for `layout` from mimalloc's plain function of a pair (`mi_malloc`,
/// `mi_zalloc`) where [`plain`] allows, else from its aligned one.
#[inline(always)]
unsafe fn allocate(
    layout: Layout,
    plain_fn: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned_fn: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: mimalloc's allocation functions take any size and any
    // power-of-two alignment, which `Layout` guarantees.
    unsafe {
        if plain(layout.align(), layout.size()) {
            plain_fn(layout.size()).cast()
        } else {
            aligned_fn(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every pointer comes from mimalloc and goes back to it; a plain
// allocation is used only where mimalloc's own alignment meets `Layout`'s
// (above), otherwise the aligned functions are.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `allocate` with mimalloc's allocation pair.
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `allocate` with mimalloc's zeroing pair.
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; mimalloc's reallocation
        // keeps the contents up to the smaller size.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// The variable by which mimalloc's own option says whether transparent
/// huge pages are allowed; when it is set, its word stands.
pub const THP_VARIABLE: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process, unless `choice` (the
/// value of [`THP_VARIABLE`]) was given: returns whether it did.
///
/// mimalloc advises the kernel to back its arenas with 2 MiB pages
/// (`MADV_HUGEPAGE`, which the common `madvise` setting of
/// `transparent_hugepage` honours). A 2 MiB page is resident whole as soon
/// as one block in it is, so memory that is allocated and freed in small
/// pieces spread over many of them (a stream's buffers, a connection's
/// state) keeps far more resident than it holds: 1,000 idle streams grew
/// the gateway's RSS by 42–48 MiB for about 16 MiB of heap, and by 19–20
/// MiB with huge pages off. The gateway's CPU per health check, `Get` and
/// `Set` did not move beyond the noise of five or more alternating rounds
/// (BENCHMARKS.md, session 34). `PR_SET_THP_DISABLE` is the kernel's
/// per-process switch: it applies to every later page fault, of memory
/// mapped before it too, and child processes inherit it.
pub fn keep_heap_in_small_pages(choice: Option<std::ffi::OsString>) -> std::io::Result<bool> {
    if choice.is_some() {
        return Ok(false);
    }
    disable_huge_pages()
}

#[cfg(target_os = "linux")]
fn disable_huge_pages() -> std::io::Result<bool> {
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument (1: disable)
    // and zeros for the rest; it changes only this process's page faults.
    match unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } {
        0 => Ok(true),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_huge_pages() -> std::io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's word on whether this process may have huge pages
    /// (`THP_enabled` in its status, Linux 5.0 and later).
    #[cfg(target_os = "linux")]
    fn huge_pages_enabled() -> Option<bool> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("THP_enabled:"))?;
        Some(line.trim() == "1")
    }

    /// A value of the variable leaves the process as it is; without one,
    /// the kernel reports huge pages off for the process afterwards.
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_go_off_unless_the_variable_says() {
        let before = huge_pages_enabled();
        assert!(!keep_heap_in_small_pages(Some("1".into())).unwrap(), "a set variable is left to mimalloc");
        assert_eq!(huge_pages_enabled(), before, "nothing changed while the variable was set");
        assert!(keep_heap_in_small_pages(None).unwrap(), "no variable: switched off");
        if before.is_some() {
            assert_eq!(huge_pages_enabled(), Some(false), "the kernel reports huge pages off");
        }
    }

    /// Every layout gets a block aligned as it asks, plain or not, and
    /// reallocation keeps the bytes and the alignment.
    #[test]
    fn blocks_are_aligned_as_their_layouts_ask_and_keep_their_bytes() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 8, 15, 16, 17, 100, 1024, 1025, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: the layout has a nonzero size; each block is freed once.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null() && (p as usize).is_multiple_of(align), "alloc {size} aligned {align}");
                    p.write_bytes(0xa5, size);
                    let grown = a.realloc(p, layout, size * 3);
                    assert!(!grown.is_null() && (grown as usize).is_multiple_of(align), "realloc {size} aligned {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xa5), "realloc {size} kept its bytes");
                    a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null() && (z as usize).is_multiple_of(align), "alloc_zeroed {size} aligned {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0), "alloc_zeroed {size} is zeroed");
                    a.dealloc(z, layout);
                }
            }
        }
    }
}

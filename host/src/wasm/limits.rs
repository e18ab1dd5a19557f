//! The sandbox caps of one store (one instance of a guest), as a wasmtime
//! [`ResourceLimiter`] that records which cap refused a growth, so a call
//! that traps because of it is reported from that record, not from the
//! trap's text.
//!
//! The caps are totals over the whole instance, however the component is
//! built (a component may instantiate several core modules, each with its
//! own memories and tables; multi-memory is on):
//! - linear memory: the bytes of all memories together, at most the
//!   guest's memory cap (`STATEGATE_WASM_MEMORY_MB`, `limits.memory_mb`);
//! - table elements: all tables together, at most [`TABLE_ELEMENTS`]
//!   (each costs the host a pointer or two, outside linear memory);
//! - counts: at most [`MEMORIES`] memories, [`TABLES`] tables and
//!   [`INSTANCES`] core instances. wasmtime checks these when it
//!   instantiates, before any guest code runs, so a component over them
//!   never starts: the guest's first call fails, naming the count.
//!
//! Invariants:
//! - A refused growth traps (it does not return -1 to the guest): a guest
//!   that cannot get memory is failing, and its call should say so.
//! - [`Limiter::refused`] is set before the trap it causes, and cleared as
//!   each call starts, so after a failed call it says whether a cap was
//!   the reason.
//! - The totals count what wasmtime allocated: a growth that was allowed
//!   but then failed is taken back out.

use wasmtime::ResourceLimiter;

/// Table elements of one instance, all tables together. The guests built
/// here start with at most about 7,700 (a JavaScript guest); this leaves
/// room to grow a hundredfold while bounding the host memory a guest can
/// take through tables to a few MiB.
pub const TABLE_ELEMENTS: usize = 1 << 20;
/// Linear memories of one instance (every guest built here has one).
pub const MEMORIES: usize = 8;
/// Tables of one instance (every guest built here has two).
pub const TABLES: usize = 32;
/// Core module instances of one component instance.
pub const INSTANCES: usize = 100;

/// Which cap refused a growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Linear memory, all memories together.
    Memory,
    /// Table elements, all tables together.
    TableElements,
}

/// The caps of one store, and what it has allocated so far.
pub struct Limiter {
    memory_bytes: usize,
    memory_used: usize,
    /// The last growth allowed, taken back out if it then fails.
    memory_pending: usize,
    table_used: usize,
    table_pending: usize,
    refused: Option<Cap>,
}

/// The error a refused growth traps with (the call's error is built from
/// [`Limiter::refused`], not from this).
#[derive(Debug, thiserror::Error)]
#[error("wasm sandbox: {0:?} cap reached")]
struct Refused(Cap);

impl Limiter {
    pub fn new(memory_bytes: usize) -> Limiter {
        Limiter {
            memory_bytes,
            memory_used: 0,
            memory_pending: 0,
            table_used: 0,
            table_pending: 0,
            refused: None,
        }
    }

    /// The cap that refused a growth since the current call started.
    pub fn refused(&self) -> Option<Cap> {
        self.refused
    }

    /// Clears the record as a call starts.
    pub fn start_call(&mut self) {
        self.refused = None;
    }

    /// Linear memory bytes allocated, all memories together.
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }

    fn refuse(&mut self, cap: Cap) -> wasmtime::Result<bool> {
        self.refused = Some(cap);
        Err(wasmtime::Error::new(Refused(cap)))
    }
}

impl ResourceLimiter for Limiter {
    // Called for every memory of the instance: with `current` 0 when it is
    // created, then at every `memory.grow`.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        match self.memory_used.checked_add(more) {
            Some(total) if total <= self.memory_bytes => {
                self.memory_used = total;
                self.memory_pending = more;
                Ok(true)
            }
            _ => self.refuse(Cap::Memory),
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_used -= std::mem::take(&mut self.memory_pending);
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        match self.table_used.checked_add(more) {
            Some(total) if total <= TABLE_ELEMENTS => {
                self.table_used = total;
                self.table_pending = more;
                Ok(true)
            }
            _ => self.refuse(Cap::TableElements),
        }
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_used -= std::mem::take(&mut self.table_pending);
        Ok(())
    }

    fn instances(&self) -> usize {
        INSTANCES
    }

    fn tables(&self) -> usize {
        TABLES
    }

    fn memories(&self) -> usize {
        MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_memory_cap_is_a_total_over_every_memory() {
        let mut l = Limiter::new(10 << 20);
        // Three memories created at 4 MiB each: the third goes over.
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(l.memory_growing(0, 4 << 20, None).is_err());
        assert_eq!(l.refused(), Some(Cap::Memory));
        assert_eq!(l.memory_used(), 8 << 20);
        // A growth allowed but then failed is not counted.
        l.start_call();
        assert!(l.memory_growing(4 << 20, 6 << 20, None).unwrap());
        l.memory_grow_failed(wasmtime::Error::msg("mmap failed")).unwrap();
        assert_eq!(l.memory_used(), 8 << 20);
        assert_eq!(l.refused(), None);
        assert!(l.memory_growing(4 << 20, 6 << 20, None).unwrap());
        assert!(l.memory_growing(0, 1, None).is_err(), "10 MiB in all now");
    }

    #[test]
    fn wasm_table_elements_are_a_total_over_every_table() {
        let mut l = Limiter::new(1 << 20);
        assert!(l.table_growing(0, TABLE_ELEMENTS / 2, None).unwrap());
        assert!(l.table_growing(0, TABLE_ELEMENTS / 2, None).unwrap());
        assert!(l.table_growing(TABLE_ELEMENTS / 2, TABLE_ELEMENTS / 2 + 1, None).is_err());
        assert_eq!(l.refused(), Some(Cap::TableElements));
    }
}

//! The sandbox caps of one store, as a wasmtime [`ResourceLimiter`] that
//! records which cap refused a growth, so a call that traps because of it
//! is reported as "exceeded its memory limit" from that record, not from
//! the trap's text.
//!
//! Invariants:
//! - A refused growth traps (it does not return -1 to the guest): a guest
//!   that cannot get memory is failing, and its call should say so.
//! - [`Limiter::refused`] is set before the trap it causes, and cleared as
//!   each call starts, so after a failed call it says whether a cap was
//!   the reason.

use wasmtime::ResourceLimiter;

/// Which cap refused a growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Linear memory.
    Memory,
}

/// The caps of one store.
pub struct Limiter {
    memory_bytes: usize,
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

    fn refuse(&mut self, cap: Cap) -> wasmtime::Result<bool> {
        self.refused = Some(cap);
        Err(wasmtime::Error::new(Refused(cap)))
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return self.refuse(Cap::Memory);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

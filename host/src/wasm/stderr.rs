//! A guest's stderr: its lines go to the gateway's log (at `warn`, with the
//! guest's name), within a byte budget per call, instead of straight to the
//! process's stderr, where a guest could write without bound.
//!
//! Invariants:
//! - At most [`BYTES_PER_CALL`] bytes of one call's output are logged (a
//!   line shorter than 64 bytes counts as 64, so at most 256 lines), in
//!   lines of at most [`LINE_BYTES`] bytes (a longer line is cut, and says
//!   so); the rest of the call's output is counted and dropped, and one
//!   line says how much was dropped.
//! - Writing never blocks and never fails: a guest that logs too much loses
//!   log lines, not its call.
//! - Stdout is not connected (WASI's default: writes to it are discarded).

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Logged bytes of one call's stderr.
pub const BYTES_PER_CALL: usize = 16 * 1024;
/// Longest line logged as is.
pub const LINE_BYTES: usize = 1024;

/// The stderr of one store; cloned into each stream the guest opens.
#[derive(Clone)]
pub struct GuestStderr {
    inner: Arc<Mutex<State>>,
}

struct State {
    guest: String,
    /// The line being written (at most `LINE_BYTES`).
    line: Vec<u8>,
    /// The current line was cut at `LINE_BYTES`.
    cut: bool,
    /// Logged in this call so far.
    logged: usize,
    /// Dropped in this call so far.
    dropped: usize,
}

impl GuestStderr {
    pub fn new(guest: &str) -> GuestStderr {
        GuestStderr {
            inner: Arc::new(Mutex::new(State {
                guest: guest.to_owned(),
                line: Vec::new(),
                cut: false,
                logged: 0,
                dropped: 0,
            })),
        }
    }

    /// Ends the budget of a call: logs what is left of its last line and
    /// how much was dropped, and starts a new budget.
    pub fn start_call(&self) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.end_line();
        if s.dropped > 0 {
            tracing::warn!(guest = %s.guest, dropped = s.dropped, "wasm guest wrote more than {BYTES_PER_CALL} bytes to stderr in one call; the rest was dropped");
        }
        s.logged = 0;
        s.dropped = 0;
    }

    fn write(&self, bytes: &[u8]) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for &b in bytes {
            if b == b'\n' {
                s.end_line();
            } else if s.line.len() < LINE_BYTES {
                s.line.push(b);
            } else {
                s.cut = true;
                s.dropped += 1;
            }
        }
    }
}

impl State {
    fn end_line(&mut self) {
        if self.line.is_empty() && !self.cut {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let cut = std::mem::replace(&mut self.cut, false);
        // Short lines cost as much as a 64-byte one: the budget bounds the
        // number of log lines too.
        let cost = line.len().max(64);
        if self.logged + cost > BYTES_PER_CALL {
            self.dropped += line.len();
            return;
        }
        self.logged += cost;
        let text = String::from_utf8_lossy(&line);
        let more = if cut { " [line cut]" } else { "" };
        tracing::warn!(guest = %self.guest, "wasm guest stderr: {text}{more}");
    }
}

impl Drop for State {
    /// The instance is gone: what is left of its output is logged.
    fn drop(&mut self) {
        self.end_line();
        if self.dropped > 0 {
            tracing::warn!(guest = %self.guest, dropped = self.dropped, "wasm guest wrote more than {BYTES_PER_CALL} bytes to stderr in one call; the rest was dropped");
        }
    }
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    /// WASI 0.3 is not linked; should it be, its writes are discarded
    /// rather than reaching the process's stderr.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStderr {
    async fn ready(&mut self) {}
}

#[async_trait::async_trait]
impl OutputStream for GuestStderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestStderr::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

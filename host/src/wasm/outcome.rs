//! How a guest call's outcome becomes the gateway's error model, and the
//! per-guest call metrics.
//!
//! Invariants:
//! - A call that used a capability it was not granted is `PERMISSION_DENIED`
//!   whatever the guest made of the refusal; one whose time ran out (in the
//!   guest or in a wait in the host) is "exceeded its time limit"; one that
//!   hit a sandbox cap says which; anything else that failed in wasmtime is
//!   a trap. All but denials are `UNAVAILABLE`, and every message names the
//!   guest.
//! - The reason is decided from what the store recorded during the call,
//!   never by reading an error's text.

use super::GuestSpec;
use super::metrics;
use super::limits::Cap;
use super::store::Ctx;
use crate::model::{Denial, Error, Result};
use std::time::Instant;
use wasmtime::Trap;

/// Turns a call's outcome into the gateway's error model and records
/// metrics. `Err` from wasmtime is a trap, a deadline or a cap.
pub(super) fn finish<T>(spec: &GuestSpec, op: &'static str, ctx: &Ctx, started: Instant, r: wasmtime::Result<T>) -> Result<T> {
    let name = &spec.name;
    let denied = ctx.denied.take();
    let out = match (denied, r) {
        (Some(what), _) => Err((
            "denied",
            Error::denied(Denial::NotGranted, format!("wasm guest {name:?}: {op} used {what}, which is not granted")),
        )),
        (None, _) if ctx.expired() => Err(("deadline", out_of_time(spec, op))),
        (None, Ok(v)) => Ok(v),
        (None, Err(e)) => Err(classify(spec, op, ctx, &e)),
    };
    metrics::call(name, op, started.elapsed(), out.as_ref().err().map(|(reason, _)| *reason));
    out.map_err(|(_, e)| e)
}

/// A call the host gave up on at its deadline (the guest was blocked in
/// the host, or never came back): counted, and reported as out of time.
pub(super) fn abandoned(spec: &GuestSpec, op: &'static str, started: Instant) -> Error {
    metrics::call(&spec.name, op, started.elapsed(), Some("deadline"));
    out_of_time(spec, op)
}

/// Which bound a call found full.
pub(super) enum Busy {
    /// The guest's own share, of this many.
    Guest(usize),
    /// The runtime's bound, of this many.
    Runtime(usize),
}

/// A call that found no place within its time limit.
pub(super) fn busy(spec: &GuestSpec, op: &'static str, started: Instant, full: Busy) -> Error {
    metrics::call(&spec.name, op, started.elapsed(), Some("busy"));
    let (name, ms) = (&spec.name, spec.call_timeout.as_millis());
    let which = match full {
        Busy::Guest(n) => format!("all {n} of its instances (STATEGATE_WASM_MAX_INSTANCES_PER_GUEST) stayed busy"),
        Busy::Runtime(n) => format!("all {n} wasm instances (STATEGATE_WASM_MAX_INSTANCES) stayed busy"),
    };
    Error::Unavailable(format!("wasm guest {name:?}: {op} found no free instance: {which} for {ms} ms"))
}

pub(super) fn out_of_time(spec: &GuestSpec, op: &str) -> Error {
    let (name, ms) = (&spec.name, spec.call_timeout.as_millis());
    Error::Unavailable(format!("wasm guest {name:?}: {op} exceeded its time limit of {ms} ms"))
}

fn classify(spec: &GuestSpec, op: &str, ctx: &Ctx, e: &wasmtime::Error) -> (&'static str, Error) {
    let name = &spec.name;
    match ctx.refused() {
        Some(Cap::Memory) => {
            let mb = spec.memory_bytes >> 20;
            return ("memory", Error::Unavailable(format!("wasm guest {name:?}: {op} exceeded its memory limit of {mb} MiB")));
        }
        Some(Cap::TableElements) => {
            let n = super::limits::TABLE_ELEMENTS;
            return ("table", Error::Unavailable(format!("wasm guest {name:?}: {op} exceeded its limit of {n} table elements")));
        }
        None => {}
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return ("deadline", out_of_time(spec, op));
    }
    let text = format!("{e:?}");
    tracing::warn!(guest = %name, op, "wasm guest trapped: {text}");
    ("trap", Error::Unavailable(format!("wasm guest {name:?}: {op} trapped: {}", first_line(&text))))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::{GuestConfig, Settings, WasmRuntime};
    use std::sync::Arc;
    use wasmtime::ResourceLimiter;

    /// The reason comes from what the store recorded: a trap whose text
    /// talks about growing memory is a trap, a refused growth is the
    /// memory cap whatever the error says.
    #[test]
    fn wasm_a_cap_is_named_from_the_limiter_record_not_the_text() {
        let runtime = WasmRuntime::new(Settings::default()).unwrap();
        let spec = GuestConfig::at("x.wasm", "g").spec(runtime.settings());
        let info = Arc::new(crate::wasm::store::GuestInfo {
            name: "g".into(),
            config: Default::default(),
        });
        let mut store = crate::wasm::store::new_store(runtime.engine(), &spec, &info, &Arc::default()).unwrap();
        let lookalike = || Err::<(), _>(wasmtime::Error::msg("forcing trap when growing memory to 1 bytes"));
        let err = finish(&spec, "op", store.data(), Instant::now(), lookalike()).unwrap_err().to_string();
        assert!(err.contains("trapped") && !err.contains("memory limit"), "{err}");

        let refused = store.data_mut().limits.memory_growing(0, spec.memory_bytes + 1, None);
        let err = finish(&spec, "op", store.data(), Instant::now(), refused).unwrap_err().to_string();
        assert!(err.contains("exceeded its memory limit of 256 MiB"), "{err}");

        store.data_mut().start_call(Instant::now());
        let err = finish(&spec, "op", store.data(), Instant::now(), lookalike()).unwrap_err().to_string();
        assert!(err.contains("trapped"), "a new call starts with a clean record: {err}");
    }
}

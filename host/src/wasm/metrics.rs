//! Per-guest metrics, shared by every gateway in the process and registered
//! into each gateway's registry (`/metrics`).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::OnceLock;
use std::time::Duration;

struct M {
    calls: IntCounterVec,
    errors: IntCounterVec,
    traps: IntCounterVec,
    seconds: HistogramVec,
    reloads: IntCounterVec,
}

fn m() -> &'static M {
    static M_: OnceLock<M> = OnceLock::new();
    M_.get_or_init(|| M {
        calls: IntCounterVec::new(Opts::new("wasm_guest_calls_total", "Calls into wasm guests"), &["guest", "op"]).unwrap(),
        errors: IntCounterVec::new(
            Opts::new("wasm_guest_errors_total", "Failed wasm guest calls by reason (trap, deadline, memory, table, disk, denied, busy)"),
            &["guest", "op", "reason"],
        )
        .unwrap(),
        traps: IntCounterVec::new(Opts::new("wasm_guest_traps_total", "Wasm guest traps (incl. deadline and memory cap)"), &["guest"])
            .unwrap(),
        seconds: HistogramVec::new(
            HistogramOpts::new("wasm_guest_call_duration_seconds", "Time in wasm guest calls").buckets(vec![
                0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            &["guest", "op"],
        )
        .unwrap(),
        reloads: IntCounterVec::new(
            Opts::new("wasm_guest_loads_total", "Wasm guest loads by outcome (loaded, swapped, refused)"),
            &["guest", "outcome"],
        )
        .unwrap(),
    })
}

/// Adds the wasm metrics to a gateway's registry.
pub fn register(registry: &Registry) {
    let m = m();
    let _ = registry.register(Box::new(m.calls.clone()));
    let _ = registry.register(Box::new(m.errors.clone()));
    let _ = registry.register(Box::new(m.traps.clone()));
    let _ = registry.register(Box::new(m.seconds.clone()));
    let _ = registry.register(Box::new(m.reloads.clone()));
}

pub(crate) fn call(guest: &str, op: &str, took: Duration, error: Option<&str>) {
    let m = m();
    m.calls.with_label_values(&[guest, op]).inc();
    m.seconds.with_label_values(&[guest, op]).observe(took.as_secs_f64());
    if let Some(reason) = error {
        m.errors.with_label_values(&[guest, op, reason]).inc();
        if !matches!(reason, "denied" | "busy" | "disk") {
            m.traps.with_label_values(&[guest]).inc();
        }
    }
}

/// Counts guest-reported errors (not traps), e.g. a provider's `unavailable`.
pub fn guest_error(guest: &str, op: &str) {
    m().errors.with_label_values(&[guest, op, "guest_error"]).inc();
}

pub(crate) fn reloaded(guest: &str, outcome: &str) {
    m().reloads.with_label_values(&[guest, outcome]).inc();
}

/// Calls counted so far for a guest (all ops), for tests and the bench.
pub fn calls(guest: &str) -> u64 {
    counted(guest, None)
}

/// Calls of one op (the WIT function, e.g. `feed`) counted so far for a
/// guest, for tests.
pub fn calls_of(guest: &str, op: &str) -> u64 {
    counted(guest, Some(op))
}

fn counted(guest: &str, op: Option<&str>) -> u64 {
    let m = m();
    let mut n = 0;
    for fam in prometheus::core::Collector::collect(&m.calls) {
        for metric in fam.get_metric() {
            let labels = metric.get_label();
            let is = |name: &str, value: &str| labels.iter().any(|l| l.name() == name && l.value() == value);
            if is("guest", guest) && op.is_none_or(|op| is("op", op)) {
                n += metric.get_counter().value() as u64;
            }
        }
    }
    n
}

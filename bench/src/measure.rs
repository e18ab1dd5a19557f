//! Measurement: call latency (HDR histograms, µs), CPU time of the whole
//! process per call, and the process's memory (RSS, its peak, anonymous RSS).

use hdrhistogram::Histogram;
use std::time::Instant;

/// What one load step measured.
#[derive(Clone)]
pub struct Measured {
    pub ops: u64,
    pub errors: u64,
    pub secs: f64,
    pub hist: Histogram<u64>,
    pub first_error: Option<String>,
    /// CPU seconds the whole bench process used in the measured window.
    pub cpu_secs: f64,
    /// Fan-out: the latency of the writer's own `Set` calls, µs.
    pub writes: Option<Histogram<u64>>,
}

impl Measured {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    /// CPU microseconds per call, server, storage and clients together. On a
    /// shared machine this moves less than ops/s: time the neighbours take
    /// is not counted.
    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu_secs * 1e6 / self.ops as f64
    }
    pub fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    /// A quantile of the fan-out writer's call latency, ms ("–" if none).
    pub fn write_p(&self, q: f64) -> String {
        self.writes.as_ref().map_or("–".into(), |h| format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0))
    }
}

pub fn histogram() -> Histogram<u64> {
    // Microseconds, up to 100 s.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// CPU time (user + system) of this process so far, seconds: fields 14 and
/// 15 of /proc/self/stat, in USER_HZ ticks (100 per second on Linux).
pub fn process_cpu_secs() -> f64 {
    cpu_secs_of("/proc/self/stat")
}

/// The same of another process (the `external` scenario's gateway).
pub fn cpu_secs_of_pid(pid: u32) -> f64 {
    cpu_secs_of(&format!("/proc/{pid}/stat"))
}

fn cpu_secs_of(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // The command name (field 2) may hold spaces: count from after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// Microseconds since `epoch`: the one clock of the fan-out's writes and
/// deliveries.
pub fn now_us(epoch: Instant) -> f64 {
    epoch.elapsed().as_micros() as f64
}

// ---- memory ----

/// (VmRSS, VmHWM) of this process, MiB.
pub fn rss_mib() -> (f64, f64) {
    status_rss_mib("/proc/self/status")
}

/// VmRSS of process `pid`, MiB (NaN when it cannot be read).
pub fn process_rss_mib(pid: u32) -> f64 {
    status_rss_mib(&format!("/proc/{pid}/status")).0
}

/// VmRSS and VmHWM from a `/proc/<pid>/status`, MiB.
fn status_rss_mib(path: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// RssAnon of this process, MiB.
pub fn anon_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets VmHWM to the current RSS so the next reading is this scenario's peak.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

//! The `open-loop` scenario (issue 22): latency at fixed request rates, as
//! a service sees it when its callers do not wait for each other. The
//! release binary runs as its own process with its data on disk (as in
//! `external`). The generator first measures the closed-loop maximum of
//! `Get` and `Set` itself (its connections, 16 calls in flight on each);
//! then requests are sent at 25%, 50% and 75% of that maximum on a fixed
//! schedule, each in its own task whatever the others are doing, and each
//! latency counts from when the request was due, not from when it went out
//! (so a stall shows in every request it delayed: no coordinated
//! omission).
//!
//! The maximum comes from the same generator, not from h2load (the
//! `external` rows have h2load's), so a step's rate is a fraction of what
//! the same client over the same connections reached, and the row's
//! ceiling columns give that run's latency and CPU per call beside the
//! step's. The two maxima agree within the noise (BENCHMARKS.md, session
//! 28). A fraction of the maximum is not a fraction of the machine: calls
//! that arrive one at a time cost both processes more CPU each than calls
//! that queue behind each other (at 25 % a Set cost the gateway 3–4 times
//! its closed-loop CPU, the generator 4 times), so at 75 % the two cores
//! are nearly full and a burst can leave a queue that takes seconds to
//! drain (the rows' p99).
//!
//! The generator shares the two cores with the gateway, so it must cost
//! little per call: the calls go out through bare HTTP/2 connections
//! (`h2call.rs`), and the schedule, the connections and the calls all run
//! on one thread of their own (a current-thread runtime) that sleeps to
//! each due time on a `timerfd` (the runtime's timer wheel ticks by the
//! millisecond), so no call wakes another thread. A sleeping thread that
//! handed each call to the bench's multi-thread runtime cost 57–132 µs of
//! the generator's CPU per call on a slow machine, against 37–83 µs so.
//!
//! The fan-out's delivery latency is measured the same way by the `fanout`
//! scenario (a writer at a fixed rate, latency from when a write was due).

use super::external::{External, GET, SET, bucket_quantile, gateway_binary, latency_buckets, record, record_state, values_300b};
use crate::bench::Bench;
use crate::h2call::{H2Caller, grpc_body};
use crate::measure::{cpu_secs_of_pid, histogram};
use crate::report::Row;
use anyhow::Result;
use bytes::Bytes;
use stategate::proto as pb;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// Fractions of the closed-loop maximum the schedule runs at.
const LOADS: [f64; 3] = [0.25, 0.5, 0.75];

/// Latencies of one fixed-rate run.
struct Scheduled {
    sent: u64,
    ok: u64,
    errors: u64,
    secs: f64,
    cpu_secs: f64,
    /// CPU of this process (the load generator) over the measured part.
    own_cpu_secs: f64,
    hist: hdrhistogram::Histogram<u64>,
    /// How late the generator's thread started each call after it was due
    /// (µs): the generator's own backlog, which a latency from the due
    /// time includes. Empty in closed loop, where nothing is due.
    late: hdrhistogram::Histogram<u64>,
    first_error: Option<String>,
}

impl Scheduled {
    fn new(secs: f64) -> Scheduled {
        Scheduled {
            sent: 0,
            ok: 0,
            errors: 0,
            secs,
            cpu_secs: 0.0,
            own_cpu_secs: 0.0,
            hist: histogram(),
            late: histogram(),
            first_error: None,
        }
    }

    /// Calls answered per second of the measured part.
    fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// The gateway's CPU per call answered, µs.
    fn gateway_cpu_us(&self) -> f64 {
        self.cpu_secs * 1e6 / self.ok.max(1) as f64
    }

    /// The generator's own CPU per call sent, µs.
    fn generator_cpu_us(&self) -> f64 {
        self.own_cpu_secs * 1e6 / self.sent.max(1) as f64
    }

    /// Quantile `p` of the latencies, ms.
    fn latency_ms(&self, p: f64) -> f64 {
        self.hist.value_at_quantile(p) as f64 / 1000.0
    }

    fn answered(&mut self, latency: Duration, result: Result<()>) {
        self.sent += 1;
        match result {
            Ok(()) => {
                self.ok += 1;
                self.hist.record(latency.as_micros().max(1) as u64).ok();
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
}

impl Bench {
    pub(super) async fn open_loop(&mut self) -> Result<Vec<Row>> {
        let bin = match gateway_binary(self.args.gateway_bin.as_deref()) {
            Ok(b) => b,
            Err(why) => {
                eprintln!("   open-loop: skipped: {why}");
                return Ok(vec![Row { scenario: "open-loop".into(), note: format!("skipped: {why}"), ..Row::default() }]);
            }
        };
        let disk = self.args.external_disk_dir.clone();
        let gw = External::start(&bin, &disk).await?;
        let result = self.open_loop_rows(&gw).await;
        gw.stop();
        result
    }

    async fn open_loop_rows(&self, gw: &External) -> Result<Vec<Row>> {
        let (conns, streams) = (self.args.h2load_conns, self.args.h2load_streams);
        let (warmup, secs) = (self.args.warmup.max(0.5), self.args.secs);
        gw.seed().await?;
        let mut rows = Vec::new();
        for (name, path) in [("get", GET), ("set", SET)] {
            let body = match name {
                "get" => grpc_body(&record("get", "r1")),
                _ => grpc_body(&pb::State { values: Some(values_300b()), ..record_state("set", "w1") }),
            };
            let plan = |rate| Plan { addr: gw.addr, conns, path, body: body.clone(), rate, warmup, secs, pid: gw.child.id() };
            let closed = plan(0.0);
            let max = tokio::task::spawn_blocking(move || closed.run_closed_loop(streams)).await??;
            let (max_rate, max_cpu_us) = (max.ops_per_sec(), max.gateway_cpu_us());
            let max_q = |p: f64| max.latency_ms(p);
            eprintln!(
                "   open-loop {name}: closed-loop maximum {max_rate:.0}/s (p50 {:.2} ms, p99 {:.2} ms; gateway {max_cpu_us:.1} µs \
                 CPU/call, load generator {:.1})",
                max_q(0.5),
                max_q(0.99),
                max.generator_cpu_us(),
            );
            if max.ok == 0 {
                anyhow::bail!("open-loop {name}: no call succeeded in closed loop ({})", max.first_error.as_deref().unwrap_or("no error"));
            }
            for load in LOADS {
                let rate = max_rate * load;
                let scheduled = plan(rate);
                let timed_before = latency_buckets(gw.ops, path)?;
                let m = tokio::task::spawn_blocking(move || scheduled.run()).await??;
                let timed = latency_buckets(gw.ops, path)?;
                let own = |q| own_timing(&timed_before, &timed, q);
                let q = |p: f64| m.latency_ms(p);
                let (ops_per_sec, gateway_cpu_us, generator_cpu_us) = (m.ops_per_sec(), m.gateway_cpu_us(), m.generator_cpu_us());
                let late = |p: f64| m.late.value_at_quantile(p) as f64 / 1000.0;
                eprintln!(
                    "   open-loop {name} at {:.0}%: {ops_per_sec:.0}/s, p50 {:.2} ms, p99 {:.2} ms (the gateway's own: p50 {}, p99 {}; \
                     calls started late by the generator: p99 {:.2} ms); gateway {gateway_cpu_us:.1} µs CPU/call, load generator \
                     {generator_cpu_us:.1}",
                    load * 100.0,
                    q(0.5),
                    q(0.99),
                    own(0.5),
                    own(0.99),
                    late(0.99),
                );
                rows.push(Row {
                    scenario: format!("open-loop-{name}-{:.0}%", load * 100.0),
                    clients: None,
                    ops_per_sec: Some(ops_per_sec),
                    p50_ms: Some(q(0.5)),
                    p99_ms: Some(q(0.99)),
                    p999_ms: Some(q(0.999)),
                    ceiling_ops_per_sec: Some(max_rate),
                    ceiling_p50_ms: Some(max_q(0.5)),
                    ceiling_p99_ms: Some(max_q(0.99)),
                    ratio: Some(ops_per_sec / max_rate),
                    cpu_us_per_op: Some(gateway_cpu_us),
                    ceiling_cpu_us_per_op: Some(max_cpu_us),
                    errors: m.errors,
                    note: format!(
                        "max {:.2} ms; {rate:.0} requests/s on a fixed schedule ({} sent), each latency from when it \
                         was due (no coordinated omission), over {conns} HTTP/2 connections (a bare h2 caller, {generator_cpu_us:.1} \
                         µs of its own CPU per call); release binary, sqlite on disk ({}); \"ceiling\" = the same method closed-loop \
                         from the same generator ({conns} connections x {streams} calls in flight), whose rate the schedule \
                         is a fraction of; the gateway's own timing of the step's calls, warm-up included (its \
                         request_duration_seconds buckets): p50 {}, p99 {}; how late the generator's thread started a call \
                         after it was due (its own backlog, inside every latency): p99 {:.2} ms, max {:.2} ms{}",
                        m.hist.max() as f64 / 1000.0,
                        m.sent,
                        self.args.external_disk_dir.display(),
                        own(0.5),
                        own(0.99),
                        late(0.99),
                        m.late.max() as f64 / 1000.0,
                        m.first_error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default(),
                    ),
                    ..Row::default()
                });
            }
        }
        Ok(rows)
    }
}

/// Quantile `q` of the gateway's own timing of the calls between two
/// readings of its histogram, as the bound of its bucket ("≤ 2.5 ms"), or
/// "> 5000 ms" past the last finite bound.
fn own_timing(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> String {
    let ms = |s: f64| format!("{:.3}", s * 1e3).trim_end_matches('0').trim_end_matches('.').to_owned();
    match bucket_quantile(before, after, q) {
        None => "–".into(),
        Some(s) if s.is_finite() => format!("≤ {} ms", ms(s)),
        Some(_) => {
            let last = after.iter().rev().map(|&(le, _)| le).find(|le| le.is_finite()).unwrap_or(0.0);
            format!("> {} ms", ms(last))
        }
    }
}

/// One fixed-rate run: `path` called with `body` at `rate` per second for
/// `warmup` then `secs` seconds, round-robin over `conns` new connections
/// to `addr`; `pid` is the gateway's, whose CPU the run reads.
struct Plan {
    addr: SocketAddr,
    conns: usize,
    path: &'static str,
    body: Bytes,
    rate: f64,
    warmup: f64,
    secs: f64,
    pid: u32,
}

impl Plan {
    /// Runs on the calling thread, which it keeps until the last call has
    /// answered; the latencies of the measured part, each from its due time.
    fn run(self) -> Result<Scheduled> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(self.calls())
    }

    /// The closed-loop maximum, on one thread and as many new connections
    /// as [`Plan::run`] uses (`rate` unused): `streams` calls in flight on each
    /// connection, each sent when the one before it answered. The measured
    /// part counts the calls that answered in it, each latency from when
    /// it went out. A loop that gets an error stops there, so a lost
    /// connection does not spin.
    fn run_closed_loop(self, streams: usize) -> Result<Scheduled> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(self.saturate(streams))
    }

    async fn connect(&self) -> Result<Vec<H2Caller>> {
        let mut callers = Vec::with_capacity(self.conns);
        for _ in 0..self.conns.max(1) {
            callers.push(H2Caller::connect(self.addr).await?);
        }
        Ok(callers)
    }

    async fn saturate(self, streams: usize) -> Result<Scheduled> {
        let callers = self.connect().await?;
        let measure_from = tokio::time::Instant::now() + Duration::from_secs_f64(self.warmup);
        let end = measure_from + Duration::from_secs_f64(self.secs);
        let out = Arc::new(Mutex::new(Scheduled::new(self.secs)));
        let mut loops = tokio::task::JoinSet::new();
        for i in 0..callers.len() * streams.max(1) {
            let caller = callers[i % callers.len()].clone();
            let (body, out, path) = (self.body.clone(), out.clone(), self.path);
            loops.spawn(async move {
                loop {
                    let sent = tokio::time::Instant::now();
                    if sent >= end {
                        return;
                    }
                    let result = caller.call(path, body.clone()).await;
                    let done = tokio::time::Instant::now();
                    let failed = result.is_err();
                    if done >= measure_from && done <= end {
                        out.lock().unwrap_or_else(|p| p.into_inner()).answered(done - sent, result);
                    }
                    if failed {
                        return;
                    }
                }
            });
        }
        tokio::time::sleep_until(measure_from).await;
        let (cpu0, own0) = (cpu_secs_of_pid(self.pid), cpu_secs_of_pid(std::process::id()));
        tokio::time::sleep_until(end).await;
        let (cpu1, own1) = (cpu_secs_of_pid(self.pid), cpu_secs_of_pid(std::process::id()));
        while loops.join_next().await.is_some() {}
        let mut m = std::mem::replace(&mut *out.lock().unwrap_or_else(|p| p.into_inner()), Scheduled::new(self.secs));
        m.cpu_secs = cpu1 - cpu0;
        m.own_cpu_secs = own1 - own0;
        Ok(m)
    }

    async fn calls(self) -> Result<Scheduled> {
        let callers = self.connect().await?;
        let timer = Timer::new()?;
        let period = Duration::from_secs_f64(1.0 / self.rate.max(1.0));
        let start = Instant::now() + Duration::from_millis(50);
        let measure_from = start + Duration::from_secs_f64(self.warmup);
        let end = measure_from + Duration::from_secs_f64(self.secs);
        let out = Arc::new(Mutex::new(Scheduled::new(self.secs)));
        let mut calls = tokio::task::JoinSet::new();
        let mut window: Option<(f64, f64)> = None;
        let (mut due, mut i) = (start, 0usize);
        while due < end {
            if due >= measure_from && window.is_none() {
                window = Some((cpu_secs_of_pid(self.pid), cpu_secs_of_pid(std::process::id())));
            }
            timer.sleep_until(due).await?;
            // Every call due by now goes out before the next sleep.
            let now = Instant::now();
            while due <= now && due < end {
                let caller = callers[i % callers.len()].clone();
                let (body, out, path) = (self.body.clone(), out.clone(), self.path);
                let measured = due >= measure_from;
                let was_due = due;
                calls.spawn(async move {
                    let late = was_due.elapsed();
                    let result = caller.call(path, body).await;
                    if measured {
                        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                        out.late.record(late.as_micros().max(1) as u64).ok();
                        out.answered(was_due.elapsed(), result);
                    }
                });
                i += 1;
                due += period;
            }
            // Answers already in are collected as we go, not all at the end.
            while calls.try_join_next().is_some() {}
        }
        let (cpu1, own1) = (cpu_secs_of_pid(self.pid), cpu_secs_of_pid(std::process::id()));
        while calls.join_next().await.is_some() {}
        let mut m = std::mem::replace(&mut *out.lock().unwrap_or_else(|p| p.into_inner()), Scheduled::new(self.secs));
        let (cpu0, own0) = window.unwrap_or((cpu1, own1));
        m.cpu_secs = cpu1 - cpu0;
        m.own_cpu_secs = own1 - own0;
        Ok(m)
    }
}


/// A sleep to the microsecond on the current runtime: a `timerfd` the
/// runtime's poller watches.
struct Timer {
    fd: AsyncFd<OwnedFd>,
}

impl Timer {
    fn new() -> Result<Timer> {
        // SAFETY: timerfd_create takes two flags and returns a new
        // descriptor or -1; the descriptor is owned from here on.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns; the `OwnedFd`
        // keeps it open, and it is this same descriptor, for the `AsyncFd`'s
        // life.
        let fd = unsafe { AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), tokio::io::Interest::READABLE) };
        Ok(Timer { fd: fd.map_err(|e| anyhow::anyhow!("registering the timerfd: {e}"))? })
    }

    async fn sleep_until(&self, at: Instant) -> Result<()> {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long },
        };
        // SAFETY: a valid descriptor and a valid itimerspec; the old value
        // is not asked for.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            match ready.try_io(|fd| match unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) } {
                n if n >= 0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }) {
                Ok(read) => return read.map_err(Into::into),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed loop counts every call that answered in its window, with
    /// a latency each; a loop whose call fails stops there instead of
    /// sending again, so a method that always fails gives one error per
    /// loop, not as many as the window holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_closed_loop_counts_its_window_and_stops_a_loop_at_its_first_error() {
        let (gateway, _data) = crate::h2call::test_gateway().await;
        let caller = H2Caller::connect(gateway.addr).await.unwrap();
        let state = pb::State { values: Some(values_300b()), ..record_state("get", "r1") };
        caller.call(SET, grpc_body(&state)).await.unwrap();
        let plan = |path, warmup| Plan {
            addr: gateway.addr,
            conns: 2,
            path,
            body: grpc_body(&record("get", "r1")),
            rate: 0.0,
            warmup,
            secs: 0.3,
            pid: std::process::id(),
        };
        let ok = plan(GET, 0.1);
        let m = tokio::task::spawn_blocking(move || ok.run_closed_loop(4)).await.unwrap().unwrap();
        assert!(m.ok > 0 && m.errors == 0, "{} answered, {} failed: {:?}", m.ok, m.errors, m.first_error);
        assert_eq!(m.hist.len(), m.ok, "a latency for every call counted");
        assert!(m.cpu_secs > 0.0, "the gateway's CPU over the window is read");
        let failing = plan("/stategate.StateService/Nothing", 0.0);
        let m = tokio::task::spawn_blocking(move || failing.run_closed_loop(4)).await.unwrap().unwrap();
        assert_eq!((m.ok, m.errors), (0, 8), "one error per loop (2 connections x 4): {:?}", m.first_error);
        gateway.shutdown().await;
    }

    /// A sleep never ends before its time, whether it is ahead, now or
    /// past, and the timer can be set again after it fired.
    #[test]
    fn the_gateway_timing_reads_as_its_bucket_bound() {
        let before = [(0.00025, 0), (0.0025, 0), (5.0, 0), (f64::INFINITY, 0)];
        let after = [(0.00025, 10), (0.0025, 98), (5.0, 99), (f64::INFINITY, 100)];
        assert_eq!(own_timing(&before, &after, 0.05), "≤ 0.25 ms");
        assert_eq!(own_timing(&before, &after, 0.5), "≤ 2.5 ms");
        assert_eq!(own_timing(&before, &after, 0.99), "≤ 5000 ms");
        assert_eq!(own_timing(&before, &after, 0.999), "> 5000 ms");
        assert_eq!(own_timing(&after, &after, 0.5), "–");
    }

    #[test]
    fn the_timer_wakes_at_its_time_not_before() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let timer = Timer::new().unwrap();
            for ahead_us in [300, 0, 1500, 50] {
                let at = Instant::now() + Duration::from_micros(ahead_us);
                timer.sleep_until(at).await.unwrap();
                assert!(Instant::now() >= at, "woke before a sleep of {ahead_us} µs ended");
            }
            let past = Instant::now() - Duration::from_millis(5);
            timer.sleep_until(past).await.unwrap();
        });
    }
}

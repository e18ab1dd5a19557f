//! The `open-loop` scenario (issue 22): latency at fixed request rates, as
//! a service sees it when its callers do not wait for each other. The
//! release binary runs as its own process with its data on disk (as in
//! `external`); h2load measures its closed-loop maximum for `Get` and `Set`;
//! then requests are sent at 25%, 50% and 75% of that maximum on a fixed
//! schedule, each in its own task whatever the others are doing, and each
//! latency counts from when the request was due, not from when it went out
//! (so a stall shows in every request it delayed: no coordinated
//! omission). The schedule runs on a thread of its own sleeping to each
//! due time (the runtime's timer wheel ticks by the millisecond).
//!
//! The fan-out's delivery latency is measured the same way by the `fanout`
//! scenario (a writer at a fixed rate, latency from when a write was due).

use super::external::{External, GET, H2load, SET, gateway_binary, record, record_state, values_300b, write_body};
use crate::bench::Bench;
use crate::measure::{cpu_secs_of_pid, histogram};
use crate::report::Row;
use anyhow::Result;
use stategate::proto as pb;
use stategate::proto::state_service_client::StateServiceClient;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Fractions of the closed-loop maximum the schedule runs at.
const LOADS: [f64; 3] = [0.25, 0.5, 0.75];

/// Latencies of one fixed-rate run.
struct Scheduled {
    sent: u64,
    ok: u64,
    errors: u64,
    secs: f64,
    cpu_secs: f64,
    hist: hdrhistogram::Histogram<u64>,
    first_error: Option<String>,
}

impl Scheduled {
    fn new(secs: f64) -> Scheduled {
        Scheduled { sent: 0, ok: 0, errors: 0, secs, cpu_secs: 0.0, hist: histogram(), first_error: None }
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
        let bodies = gw.dir.path();
        let mut channels = Vec::new();
        for _ in 0..conns {
            channels.push(crate::load::connect(gw.addr).await?);
        }
        let mut rows = Vec::new();
        for (name, path) in [("get", GET), ("set", SET)] {
            let body = match name {
                "get" => write_body(bodies, "get", &record("get", "r1"))?,
                _ => write_body(bodies, "set", &pb::State { values: Some(values_300b()), ..record_state("set", "w1") })?,
            };
            let max = H2load { addr: gw.addr, path, body, conns, streams, pid: gw.child.id() }.measure(gw, warmup, secs)?;
            eprintln!("   open-loop {name}: closed-loop maximum {:.0}/s", max.ops_per_sec());
            for load in LOADS {
                let rate = max.ops_per_sec() * load;
                let m = scheduled(&channels, name, rate, warmup, secs, gw.child.id()).await;
                let q = |p: f64| m.hist.value_at_quantile(p) as f64 / 1000.0;
                rows.push(Row {
                    scenario: format!("open-loop-{name}-{:.0}%", load * 100.0),
                    clients: None,
                    ops_per_sec: Some(m.ok as f64 / m.secs),
                    p50_ms: Some(q(0.5)),
                    p99_ms: Some(q(0.99)),
                    ceiling_ops_per_sec: Some(max.ops_per_sec()),
                    ceiling_p50_ms: Some(max.p(0.5)),
                    ceiling_p99_ms: Some(max.p(0.99)),
                    ratio: Some(m.ok as f64 / m.secs / max.ops_per_sec()),
                    cpu_us_per_op: Some(m.cpu_secs * 1e6 / m.ok.max(1) as f64),
                    ceiling_cpu_us_per_op: Some(max.cpu_us_per_call()),
                    errors: m.errors,
                    note: format!(
                        "p999 {:.2} ms, max {:.2} ms; {rate:.0} requests/s on a fixed schedule ({} sent), each latency from when it \
                         was due (no coordinated omission), over {conns} connections; release binary, sqlite on disk ({}); \
                         \"ceiling\" = the same method closed-loop under h2load ({conns} x {streams}), whose rate the schedule is a \
                         fraction of{}",
                        q(0.999),
                        m.hist.max() as f64 / 1000.0,
                        m.sent,
                        self.args.external_disk_dir.display(),
                        m.first_error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default(),
                    ),
                    ..Row::default()
                });
            }
        }
        Ok(rows)
    }
}

/// Sends `Get` or `Set` calls at `rate` per second on a fixed schedule for
/// `warmup` then `secs` seconds, round-robin over `channels`; the latencies
/// of the measured part, each from its due time.
async fn scheduled(channels: &[Channel], method: &'static str, rate: f64, warmup: f64, secs: f64, pid: u32) -> Scheduled {
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let out = Arc::new(Mutex::new(Scheduled::new(secs)));
    let clients: Vec<StateServiceClient<Channel>> = channels.iter().cloned().map(StateServiceClient::new).collect();
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let out_sched = out.clone();
    std::thread::spawn(move || {
        let mut tasks = Vec::new();
        let mut due = start;
        let mut i = 0usize;
        while due < end {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let mut client = clients[i % clients.len()].clone();
            let out = out_sched.clone();
            let measured = due >= measure_from;
            tasks.push(runtime.spawn(async move {
                let result = match method {
                    "get" => client.get(pb::StateRef { domain: "external".into(), r#type: "get".into(), key: "r1".into(), ..Default::default() }).await.map(drop),
                    _ => client.set(pb::State { values: Some(values_300b()), ..record_state("set", "w1") }).await.map(drop),
                };
                if !measured {
                    return;
                }
                let latency = due.elapsed();
                let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                o.sent += 1;
                match result {
                    Ok(()) => {
                        o.ok += 1;
                        o.hist.record(latency.as_micros().max(1) as u64).ok();
                    }
                    Err(e) => {
                        o.errors += 1;
                        o.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }));
            i += 1;
            due += period;
        }
        let _ = done_tx.send(tasks);
    });
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = cpu_secs_of_pid(pid);
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = cpu_secs_of_pid(pid);
    if let Ok(tasks) = done_rx.await {
        for t in tasks {
            let _ = t.await;
        }
    }
    let mut m = std::mem::replace(&mut *out.lock().unwrap_or_else(|p| p.into_inner()), Scheduled::new(secs));
    m.cpu_secs = cpu1 - cpu0;
    m
}

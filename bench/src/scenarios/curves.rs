//! The `curves` scenario (issue 22): how a call's cost grows with the
//! store's size and with the number of open streams. One gateway (embedded
//! sqlite, data on disk: `--external-disk-dir`) is grown step by step to
//! each of `--curve-sizes` events (a tenth of them records of ~1 KiB, the
//! rest events of ~100 B over 10,000 keys); at each size 16 closed-loop
//! clients measure Get, Set, a selective state Search (one record matches),
//! a non-selective one (one in ten match, first page of 10) and an event
//! Search, and one stream replays the last 10,000 events (catch-up). Then,
//! at the largest size, Set with 0, 1,000 and 10,000 idle streams open.
//! CPU µs per call is the bench process's (gateway and clients). The
//! scenario draws both curves as SVG (`bench/plots/`), which BENCHMARKS.md
//! shows.

use crate::bench::Bench;
use crate::load::{Clients, Load, closed_loop, connect, drive, open_streams};
use crate::measure::{Measured, process_cpu_secs};
use crate::report::Row;
use crate::requests::{DOMAIN, EVENT_KEYS, EVENT_TYPE, Op, RECORD_TYPE};
use anyhow::{Context, Result};
use stategate::proto as pb;
use std::path::Path;
use std::time::Instant;

/// Clients of every closed-loop step.
const CLIENTS: usize = 16;
/// Events the catch-up step replays.
const REPLAY: usize = 10_000;
/// Idle stream counts of the stream curve.
const STREAMS: [usize; 3] = [0, 1_000, 10_000];

impl Bench {
    pub(super) async fn curves(&mut self) -> Result<Vec<Row>> {
        let base = self.args.external_disk_dir.clone();
        let data = tempfile::Builder::new().prefix("stategate-bench-curves").tempdir_in(&base)?;
        let mut config = self.config.clone();
        config.data_dir = data.path().to_path_buf();
        let gw = self.server_rt.spawn(stategate::server::start(config)).await?.context("starting the curves gateway")?;
        let result = self.curve_steps(&gw, &base).await;
        self.server_rt.spawn(gw.shutdown()).await?;
        result
    }

    async fn curve_steps(&mut self, gw: &stategate::server::Running, base: &Path) -> Result<Vec<Row>> {
        let storage = gw.gateway.storage().clone();
        let (warmup, secs) = (self.args.warmup, self.args.secs);
        let mut rows = Vec::new();
        let (mut records, mut events) = (0usize, 0usize);
        // (size, op, CPU µs per call) for the plot.
        let mut points: Vec<(usize, &'static str, f64)> = Vec::new();
        let mut sizes = self.args.curve_sizes.clone();
        sizes.sort_unstable();
        for &size in &sizes {
            let (r, e) = (size / 10, size - size / 10);
            for line in [
                self.seed_range(&storage, RECORD_TYPE, records..r.max(records), usize::MAX, 950).await?,
                self.seed_range(&storage, EVENT_TYPE, events..e.max(events), EVENT_KEYS, 100).await?,
            ] {
                eprintln!("   curves {size}: {line}");
            }
            (records, events) = (r.max(records), e.max(events));
            // Catch-up first, while the log's tail is the event type's.
            let replay = self.replay_tail(gw.addr, &storage, REPLAY.min(events)).await?;
            let mut step = vec![("replay", replay)];
            for (name, op) in [("get", Op::Get), ("set", Op::Set), ("search-nonselective", Op::Search), ("event-search", Op::EventSearch)] {
                step.push((name, drive(gw.addr, CLIENTS, warmup, secs, Load::new(op, records)).await?));
            }
            step.push(("search-selective", self.selective_search(gw.addr, records, warmup, secs).await?));
            for (name, m) in step {
                points.push((size, name, m.cpu_us_per_op()));
                rows.push(curve_row(format!("curve-{name}-{size}"), if name == "replay" { 1 } else { CLIENTS }, &m, &format!(
                    "store of {size} events ({records} records of ~1 KiB, {events} events of ~100 B), embedded sqlite on disk ({}); {}",
                    base.display(),
                    match name {
                        "replay" => format!("one Stream replaying the last {} events of a type after their seq; ops/s = events/s, CPU per event", REPLAY.min(events)),
                        "search-selective" => "state Search whose filter matches one record".into(),
                        "search-nonselective" => "state Search whose filter matches one record in ten, first page of 10".into(),
                        _ => format!("{CLIENTS} closed-loop clients"),
                    }
                )));
            }
        }
        // Open streams: Set with idle streams of another type open.
        let largest = sizes.last().copied().unwrap_or(0);
        let mut stream_points = Vec::new();
        for n in STREAMS {
            let streams = open_streams(gw.addr, n, "curve-idle").await?;
            let m = drive(gw.addr, CLIENTS, warmup, secs, Load::new(Op::Set, records)).await?;
            drop(streams);
            stream_points.push((n.max(1), "set", m.cpu_us_per_op()));
            rows.push(curve_row(format!("curve-streams-set-{n}"), CLIENTS, &m, &format!(
                "Set ({CLIENTS} clients) with {n} idle Streams of another type open, store of {largest} events, sqlite on disk"
            )));
        }
        let dir = self.args.out.parent().unwrap_or(Path::new(".")).join("plots");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cost-by-store-size.svg"), svg("CPU µs per call by store size (events)", &points))?;
        std::fs::write(dir.join("cost-by-open-streams.svg"), svg("CPU µs per Set by idle streams open (0 drawn at 1)", &stream_points))?;
        eprintln!("   curves: plots in {}", dir.display());
        Ok(rows)
    }

    /// One stream replaying the last `n` events of the event type (the
    /// log's tail right after seeding): events per second and CPU per event.
    async fn replay_tail(&self, addr: std::net::SocketAddr, storage: &stategate::storage::DynStorage, n: usize) -> Result<Measured> {
        let head = storage.head().await.map_err(|e| anyhow::anyhow!("head: {e}"))?;
        let mut client = Clients::new(connect(addr).await?);
        let (cpu0, t0) = (process_cpu_secs(), Instant::now());
        let mut stream = client
            .events
            .stream(pb::StreamOpts {
                domain: DOMAIN.into(),
                r#type: EVENT_TYPE.into(),
                after_sequence: Some(head.saturating_sub(n as u64) as i64),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut got = 0;
        while got < n {
            match tokio::time::timeout(std::time::Duration::from_secs(60), stream.message()).await {
                Ok(Ok(Some(_))) => got += 1,
                Ok(Ok(None)) => anyhow::bail!("the replay stream ended after {got} of {n} events"),
                Ok(Err(s)) => anyhow::bail!("the replay stream failed after {got} events: {s}"),
                Err(_) => anyhow::bail!("the replay stream stalled after {got} of {n} events"),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok(Measured {
            ops: got as u64,
            errors: 0,
            secs,
            hist: crate::measure::histogram(),
            first_error: None,
            cpu_secs: process_cpu_secs() - cpu0,
            writes: None,
        })
    }

    /// State Search whose filter (`n` = a random record's number) matches
    /// exactly one record.
    async fn selective_search(&self, addr: std::net::SocketAddr, records: usize, warmup: f64, secs: f64) -> Result<Measured> {
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            conns.push(Clients::new(connect(addr).await?));
        }
        closed_loop(conns, warmup, secs, move |cl, _c, _i, rng| {
            Box::pin(async move {
                let n = rng.below(records);
                let opts = pb::SearchStateOpts {
                    domain: DOMAIN.into(),
                    r#type: RECORD_TYPE.into(),
                    query_string: format!(r#"{{"n":{n}}}"#),
                    limit: 10,
                    ..Default::default()
                };
                let found = cl.state.search(cl.req(opts)).await.map_err(|s| s.to_string())?.into_inner();
                match found.state_values.len() {
                    1 => Ok(()),
                    n => Err(format!("a selective search returned {n} states, not 1")),
                }
            })
        })
        .await
    }
}

fn curve_row(scenario: String, clients: usize, m: &Measured, note: &str) -> Row {
    Row {
        scenario,
        clients: Some(clients),
        ops_per_sec: Some(m.ops_per_sec()),
        p50_ms: (!m.hist.is_empty()).then(|| m.p(0.5)),
        p99_ms: (!m.hist.is_empty()).then(|| m.p(0.99)),
        p999_ms: (!m.hist.is_empty()).then(|| m.p(0.999)),
        cpu_us_per_op: Some(m.cpu_us_per_op()),
        errors: m.errors,
        note: format!("{note}; CPU µs/op = the bench process's (gateway and clients){}", m.first_error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default()),
        ..Row::default()
    }
}

/// A line chart of (x, series, y) points, both axes on a log scale (costs
/// span several orders of magnitude), one line per series.
fn svg(title: &str, points: &[(usize, &str, f64)]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 170.0, 40.0, 50.0);
    let xs: Vec<f64> = points.iter().map(|p| (p.0.max(1) as f64).log10()).collect();
    let (x0, x1) = (xs.iter().cloned().fold(f64::INFINITY, f64::min), xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
    // y: decades from 1 to the first power of ten above the largest value.
    let decades = points.iter().map(|p| p.2.max(1.0).log10()).fold(0.0, f64::max).floor() as i32 + 1;
    let px = |x: f64| left + if x1 > x0 { (x - x0) / (x1 - x0) } else { 0.5 } * (w - left - right);
    let py = |y: f64| top + (1.0 - y.max(1.0).log10() / decades as f64) * (h - top - bottom);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];
    let mut series: Vec<&str> = Vec::new();
    for p in points {
        if !series.contains(&p.1) {
            series.push(p.1);
        }
    }
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="14">{}</text>"#,
        escape(title)
    );
    for i in 0..=decades {
        let y = 10f64.powi(i);
        out += &format!(
            r##"<line x1="{left}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{y:.0}</text>"##,
            w - right,
            left - 6.0,
            py(y) + 4.0,
            py = py(y)
        );
    }
    let mut ticks: Vec<usize> = points.iter().map(|p| p.0).collect();
    ticks.sort_unstable();
    ticks.dedup();
    for t in ticks {
        let x = px((t.max(1) as f64).log10());
        out += &format!(r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{t}</text>"##, h - bottom, h - bottom + 16.0);
    }
    for (i, name) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = points.iter().filter(|p| p.1 == *name).map(|p| format!("{:.1},{:.1}", px((p.0.max(1) as f64).log10()), py(p.2))).collect();
        out += &format!(r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            out += &format!(r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
        }
        let ly = top + 16.0 * i as f64;
        out += &format!(r#"<rect x="{}" y="{}" width="12" height="3" fill="{c}"/><text x="{}" y="{}">{}</text>"#, w - right + 12.0, ly + 4.0, w - right + 30.0, ly + 9.0, escape(name));
    }
    out += "</svg>\n";
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn plots_every_series_with_its_points() {
        let svg = super::svg("t <x>", &[(10, "get", 5.0), (100, "get", 6.0), (10, "set", 9.0), (100, "set", 12.0)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("t &lt;x&gt;") && svg.ends_with("</svg>\n"));
    }
}

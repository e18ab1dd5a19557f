//! The `external` scenario (issue 22): the gateway as users run it and as
//! an outside client loads it. The release binary runs as its own process
//! with its data directory on disk (and, as an extra labelled row, on
//! tmpfs); `h2load` (Debian's `nghttp2-client`), an independent HTTP/2
//! load generator speaking stock gRPC framing, drives `--h2load-conns`
//! connections × `--h2load-streams` concurrent streams of one call. The
//! ceiling is the same process's own `grpc.health.v1.Health/Check`: the
//! transport's limit on this machine, so the ratio is what the gateway's
//! own work costs. CPU per call is the gateway process's alone (its
//! /proc/<pid>/stat over the measured window), so the load generator's
//! share of the two cores is not counted in it.
//!
//! h2load sends one request body, so `Get` reads one seeded record and
//! `Set` writes one record again and again (each call a new version, on
//! disk before it is acknowledged: the provider's durability, unchanged).
//! h2load counts HTTP statuses only; a gRPC error travels in trailers, so
//! the row's errors come from the gateway's own `requests_total` by code.

use crate::bench::Bench;
use crate::measure::{Measured, cpu_secs_of_pid, histogram};
use crate::report::Row;
use anyhow::{Context, Result, bail};
use prost::Message;
use stategate::proto as pb;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(super) const GET: &str = "/stategate.StateService/Get";
pub(super) const SET: &str = "/stategate.StateService/Set";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

/// Where the data directory lives: the disk row first (what users run),
/// then tmpfs as a labelled extra, then the disk again with sqlite's point
/// cache off: h2load's one `Get` body reads one record, which the cache
/// answers after the first call, so this row is what a `Get` costs when it
/// reads the file (a record not read lately, or just written).
struct Placement {
    label: &'static str,
    base: PathBuf,
    /// The filesystem the row names.
    on: &'static str,
    /// STATEGATE_STORAGE_PROVIDER, when not the default.
    storage: Option<&'static str>,
}

/// The uncached placement's storage.
const UNCACHED: &str = r#"{"name":"sqlite","read_cache_mib":0}"#;

impl Bench {
    pub(super) async fn external(&mut self) -> Result<Vec<Row>> {
        let skipped = |why: String| {
            eprintln!("   external: skipped: {why}");
            Ok(vec![Row { scenario: "external".into(), note: format!("skipped: {why}"), ..Row::default() }])
        };
        let bin = match gateway_binary(self.args.gateway_bin.as_deref()) {
            Ok(b) => b,
            Err(why) => return skipped(why),
        };
        if Command::new("h2load").arg("--version").output().is_err() {
            return skipped("h2load not found (Debian package nghttp2-client)".into());
        }
        let disk = self.args.external_disk_dir.clone();
        let mut placements = vec![Placement { label: "disk", base: disk.clone(), on: "disk", storage: None }];
        if Path::new("/dev/shm").is_dir() {
            placements.push(Placement { label: "tmpfs", base: "/dev/shm".into(), on: "tmpfs", storage: None });
        }
        placements.push(Placement { label: "uncached", base: disk, on: "disk", storage: Some(UNCACHED) });
        let mut rows = Vec::new();
        for p in placements {
            let env: Vec<_> = p.storage.map(|s| ("STATEGATE_STORAGE_PROVIDER", s)).into_iter().collect();
            let gw = External::start_with(&bin, &p.base, &env).await.with_context(|| format!("starting {} with data under {}", bin.display(), p.base.display()))?;
            let result = self.external_rows(&gw, &p).await;
            gw.stop();
            rows.extend(result?);
        }
        Ok(rows)
    }

    async fn external_rows(&self, gw: &External, p: &Placement) -> Result<Vec<Row>> {
        let (conns, streams) = (self.args.h2load_conns, self.args.h2load_streams);
        let bodies = gw.dir.path();
        let health = write_body(bodies, "health", &pb_health_check())?;
        let get = write_body(bodies, "get", &record("get", "r1"))?;
        let set = write_body(bodies, "set", &pb::State { values: Some(values_300b()), ..record_state("set", "w1") })?;
        gw.seed().await?;
        let fs = filesystem_of(&p.base);
        let run = |path: &'static str, body: PathBuf| H2load { addr: gw.addr, path, body, conns, streams, pid: gw.child.id() };
        let (warmup, secs) = (self.args.warmup.max(0.5), self.args.secs);
        // Neighbours on a shared machine move a 3 s run by ±10 %, more than
        // a change under test. The disk rows therefore run in rounds, each
        // measuring health, Get and Set back to back, so a ratio compares
        // runs seconds apart; a row reports its median round, and its note
        // every round's ratio.
        let rounds = if p.label == "disk" { self.args.external_rounds as usize } else { 1 };
        let mut ops = vec![("get", GET, get, 0.7), ("set", SET, set, 0.5)];
        if p.storage.is_some() {
            ops.truncate(1);
        }
        let mut measured: Vec<(Measured, Vec<Measured>)> = Vec::with_capacity(rounds);
        for round in 0..rounds {
            // The first round warms each call up; later ones follow it.
            let warmup = if round == 0 { warmup } else { 0.0 };
            let ceiling = run(HEALTH, health.clone()).measure(gw, warmup, secs)?;
            let mut calls = Vec::with_capacity(ops.len());
            for (_, path, body, _) in &ops {
                calls.push(run(path, body.clone()).measure(gw, warmup, secs)?);
            }
            let rates: Vec<String> = ops.iter().zip(&calls).map(|((name, ..), m)| format!("{name} {:.0}/s", m.ops_per_sec())).collect();
            eprintln!(
                "   external {} round {}/{rounds}: health {:.0}/s ({:.1} µs CPU/call), {}",
                p.label,
                round + 1,
                ceiling.ops_per_sec(),
                ceiling.cpu_us_per_op(),
                rates.join(", ")
            );
            measured.push((ceiling, calls));
        }
        let mut rows = Vec::new();
        for (i, &(name, _, _, target)) in ops.iter().enumerate() {
            let ratios: Vec<f64> = measured.iter().map(|(c, calls)| calls[i].ops_per_sec() / c.ops_per_sec()).collect();
            let median = median_index(&ratios);
            let (ceiling, calls) = &measured[median];
            let m = &calls[i];
            let ratio = ratios[median];
            // The row shows one round but owns up to failures in any.
            let errors: u64 = measured.iter().map(|(_, calls)| calls[i].errors).sum();
            let first_error = measured.iter().find_map(|(_, calls)| calls[i].first_error.as_deref());
            let rounds_note = rounds_note(&ratios, "health, Get, Set");
            let suffix = if p.label == "disk" { String::new() } else { format!("-{}", p.label) };
            rows.push(Row {
                scenario: format!("external-{name}{suffix}"),
                clients: Some(conns * streams),
                target: (p.label == "disk").then(|| format!("ratio >= {target}")),
                meets_target: (p.label == "disk").then_some(ratio >= target && errors == 0),
                errors,
                note: format!(
                    "release binary {} as its own process, data dir on {} ({fs}){}, inmem channel, auth off; load: h2load, {conns} \
                     connections x {streams} streams, one request body ({}); \"ceiling\" = grpc.health.v1.Health/Check on the same \
                     process; CPU µs/op = the gateway process's CPU per call (not the load generator's){}",
                    gw.bin.display(),
                    p.on,
                    p.storage.map(|s| format!(", storage {s}: sqlite's point cache off, every Get reads the file")).unwrap_or_default(),
                    if name == "get" { "Get of one seeded record of ~300 B" } else { "Set of one record, ~300 B values, a new version per call, durable before the answer" },
                    first_error.map(|e| format!("; first error: {e}")).unwrap_or_default(),
                ) + &rounds_note,
                ..Row::compared(m, ceiling)
            });
        }
        Ok(rows)
    }
}

/// The index of the median of `values` (the lower middle one of an even
/// count).
pub(super) fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[(values.len() - 1) / 2]
}

/// A row's note on its rounds, `each` naming what ran back to back in
/// each: empty for a single round.
pub(super) fn rounds_note(ratios: &[f64], each: &str) -> String {
    if ratios.len() < 2 {
        return String::new();
    }
    let all: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    format!("; the median of {} rounds ({each} back to back in each), ratios {}", ratios.len(), all.join(", "))
}

/// The gateway binary: `--gateway-bin`, else `stategate` beside this
/// bench's own executable (both land in target/release).
pub(super) fn gateway_binary(given: Option<&Path>) -> std::result::Result<PathBuf, String> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("stategate"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "gateway binary {} not found (build it: cargo build --release -p stategate, or pass --gateway-bin)",
            path.display()
        ))
    }
}

/// The gateway process of one placement.
pub(super) struct External {
    pub(super) bin: PathBuf,
    pub(super) child: Child,
    pub(super) addr: SocketAddr,
    pub(super) ops: SocketAddr,
    pub(super) dir: tempfile::TempDir,
}

impl External {
    pub(super) async fn start(bin: &Path, base: &Path) -> Result<External> {
        Self::start_with(bin, base, &[]).await
    }

    /// `start` with these STATEGATE_* variables set too.
    pub(super) async fn start_with(bin: &Path, base: &Path, env: &[(&str, &str)]) -> Result<External> {
        let dir = tempfile::Builder::new().prefix("stategate-bench-external").tempdir_in(base)?;
        let (port, ops_port) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.path().join("gateway.log"))?;
        let mut cmd = Command::new(bin);
        // The bench's own environment may hold STATEGATE_* settings (a test
        // run's, a user's): the gateway gets only these.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("STATEGATE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .current_dir(dir.path()) // no stray .env is read
            .env("STATEGATE_BIND", "127.0.0.1")
            .env("STATEGATE_PORT", port.to_string())
            .env("STATEGATE_OPS_PORT", ops_port.to_string())
            .env("STATEGATE_DATA_DIR", dir.path().join("data"))
            .env("STATEGATE_AUTH_DISABLED", "true")
            .env("STATEGATE_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut gw = External { bin: bin.to_path_buf(), child, addr: ([127, 0, 0, 1], port).into(), ops: ([127, 0, 0, 1], ops_port).into(), dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = gw.child.try_wait()? {
                let log = std::fs::read_to_string(gw.dir.path().join("gateway.log")).unwrap_or_default();
                bail!("the gateway exited ({status}) before it listened: {}", log.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
            }
            if crate::load::connect(gw.addr).await.is_ok() && metrics(gw.ops).is_ok() {
                return Ok(gw);
            }
            if Instant::now() > deadline {
                gw.child.kill().ok();
                bail!("the gateway did not listen on {} within 60 s", gw.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The record `Get` reads, written once through the API.
    pub(super) async fn seed(&self) -> Result<()> {
        let mut client = pb::state_service_client::StateServiceClient::new(crate::load::connect(self.addr).await?);
        client
            .set(pb::State { values: Some(values_300b()), ..record_state("get", "r1") })
            .await
            .context("seeding the record Get reads")?;
        Ok(())
    }

    pub(super) fn stop(mut self) {
        // SIGTERM would be the graceful way, but the process holds nothing
        // the run needs: an acknowledged write is already on disk.
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn record_state(ty: &str, key: &str) -> pb::State {
    pb::State { domain: "external".into(), r#type: ty.into(), key: key.into(), ..Default::default() }
}

pub(super) fn record(ty: &str, key: &str) -> pb::StateRef {
    pb::StateRef { domain: "external".into(), r#type: ty.into(), key: key.into(), ..Default::default() }
}

fn pb_health_check() -> tonic_health::pb::HealthCheckRequest {
    tonic_health::pb::HealthCheckRequest { service: String::new() }
}

/// A few hundred bytes of values of the shapes records hold: strings, a
/// number, a bool, a nested object and a list.
pub(super) fn values_300b() -> prost_types::Struct {
    let v: serde_json::Value = serde_json::json!({
        "name": "Ada Lovelace", "email": "ada@example.com", "age": 36, "active": true,
        "address": {"street": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH"},
        "tags": ["math", "engines", "poetry"],
        "notes": "First to publish an algorithm meant for a machine; wrote about what engines might compose.",
    });
    stategate::api::convert::json_to_struct(v.as_object().expect("an object").clone())
}

/// One gRPC request body as h2load sends it: the 5-byte length prefix
/// (uncompressed) and the message.
pub(super) fn write_body(dir: &Path, name: &str, msg: &impl Message) -> Result<PathBuf> {
    write_framed(dir, name, &crate::h2call::grpc_body(msg))
}

/// A request body already framed (`h2call::grpc_body`), written where
/// h2load reads it.
pub(super) fn write_framed(dir: &Path, name: &str, body: &[u8]) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.grpc"));
    std::fs::write(&path, body)?;
    Ok(path)
}

pub(super) fn filesystem_of(p: &Path) -> String {
    Command::new("df")
        .args(["--output=fstype"])
        .arg(p)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "filesystem unknown".into())
}

/// One h2load run against one method.
pub(super) struct H2load {
    pub(super) addr: SocketAddr,
    pub(super) path: &'static str,
    pub(super) body: PathBuf,
    pub(super) conns: usize,
    pub(super) streams: usize,
    pub(super) pid: u32,
}

impl H2load {
    fn command(&self, secs: f64, log: Option<&Path>) -> Command {
        let mut c = Command::new("h2load");
        c.args(["-c", &self.conns.to_string(), "-m", &self.streams.to_string(), "-t", "1"])
            .args(["-D", &format!("{}", secs.ceil().max(1.0) as u64)])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg("-d")
            .arg(&self.body);
        if let Some(log) = log {
            c.arg("--log-file").arg(log);
        }
        c.arg(format!("http://{}{}", self.addr, self.path));
        c
    }

    /// A warm-up run (none when `warmup` is 0), then the measured one; the
    /// gateway's CPU and its count of failed calls are read around the
    /// measured run only.
    pub(super) fn measure(&self, gw: &External, warmup: f64, secs: f64) -> Result<Measured> {
        if warmup > 0.0 {
            let out = self.command(warmup, None).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
            if !out.success() {
                bail!("h2load (warm-up of {}) failed: {out}", self.path);
            }
        }
        let log = gw.dir.path().join(format!("h2load{}.log", self.path.replace('/', "_")));
        let failed_before = failed_calls(gw.ops, self.path)?;
        let cpu0 = cpu_secs_of_pid(self.pid);
        let out = self.command(secs, Some(&log)).output()?;
        let cpu1 = cpu_secs_of_pid(self.pid);
        let failed = failed_calls(gw.ops, self.path)? - failed_before;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("h2load against {} failed ({}): {}", self.path, out.status, String::from_utf8_lossy(&out.stderr));
        }
        let summary = parse_summary(&text).with_context(|| format!("reading h2load's output: {text}"))?;
        let mut hist = histogram();
        for line in std::fs::read_to_string(&log)?.lines() {
            // start time (µs since the epoch), HTTP status, µs to the end of the response
            if let Some(us) = line.split('\t').nth(2).and_then(|f| f.trim().parse::<u64>().ok()) {
                hist.record(us.max(1)).ok();
            }
        }
        let not_ok = summary.failed + summary.non_2xx;
        Ok(Measured {
            ops: summary.succeeded.saturating_sub(summary.non_2xx),
            errors: failed + not_ok,
            secs: summary.secs,
            // The gateway process's CPU, not the load generator's.
            cpu_secs: cpu1 - cpu0,
            hist,
            first_error: (failed + not_ok > 0)
                .then(|| format!("{failed} calls failed in the gateway's requests_total, {not_ok} failed or non-2xx in h2load")),
            writes: None,
        })
    }
}

struct Summary {
    secs: f64,
    succeeded: u64,
    failed: u64,
    non_2xx: u64,
}

/// h2load's summary lines: "finished in 5.00s, 31234.40 req/s, …",
/// "requests: N total, N started, N done, N succeeded, N failed, …" and
/// "status codes: N 2xx, N 3xx, N 4xx, N 5xx".
fn parse_summary(text: &str) -> Result<Summary> {
    let secs = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|rest| rest.split(',').next())
        .map(str::trim)
        .and_then(duration_secs)
        .context("no \"finished in\" line")?;
    let count = |line: &str, label: &str| -> Option<u64> {
        line.split(',').map(str::trim).find_map(|part| {
            let (n, what) = part.split_once(' ')?;
            (what == label).then(|| n.parse().ok()).flatten()
        })
    };
    let requests = text.lines().find_map(|l| l.strip_prefix("requests: ")).context("no \"requests:\" line")?;
    let codes = text.lines().find_map(|l| l.strip_prefix("status codes: ")).context("no \"status codes:\" line")?;
    let code = |label| count(codes, label).unwrap_or(0);
    Ok(Summary {
        secs,
        succeeded: count(requests, "succeeded").context("no succeeded count")?,
        failed: count(requests, "failed").unwrap_or(0) + count(requests, "errored").unwrap_or(0) + count(requests, "timeout").unwrap_or(0),
        non_2xx: code("3xx") + code("4xx") + code("5xx"),
    })
}

/// "5.00s", "812.33ms", "1m3.2s" as h2load prints durations.
fn duration_secs(d: &str) -> Option<f64> {
    if let Some(ms) = d.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    if let Some(us) = d.strip_suffix("us") {
        return us.parse::<f64>().ok().map(|v| v / 1e6);
    }
    let d = d.strip_suffix('s')?;
    match d.split_once('m') {
        Some((m, s)) => Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?),
        None => d.parse().ok(),
    }
}

/// The gateway's `requests_total` of `method` with a code other than OK.
fn failed_calls(ops: SocketAddr, method: &str) -> Result<u64> {
    let text = metrics(ops)?;
    let needle = format!("method=\"{method}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("stategate_requests_total{") && l.contains(&needle) && !l.contains("code=\"OK\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// The gateway's own timing of `method`: the cumulative buckets of its
/// `request_duration_seconds` histogram, as (upper bound in seconds,
/// calls), in order of the bound.
pub(super) fn latency_buckets(ops: SocketAddr, method: &str) -> Result<Vec<(f64, u64)>> {
    let text = metrics(ops)?;
    let needle = format!("method=\"{method}\"");
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter(|l| l.starts_with("stategate_request_duration_seconds_bucket{") && l.contains(&needle))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse::<f64>().ok()? as u64))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(buckets)
}

/// The upper bound (seconds) of the bucket that holds quantile `q` of the
/// calls counted between two readings of [`latency_buckets`]; `None` when
/// none were. A histogram's buckets give no more than that bound: "p99 ≤
/// 5 ms", not "p99 = 3.2 ms".
pub(super) fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let since = |le: f64, n: u64| n - before.iter().find(|(b, _)| *b == le).map_or(0, |(_, m)| *m).min(n);
    let total = after.last().map(|&(le, n)| since(le, n)).filter(|&t| t > 0)?;
    let want = ((q * total as f64).ceil() as u64).max(1);
    after.iter().find(|&&(le, n)| since(le, n) >= want).map(|&(le, _)| le)
}

fn metrics(ops: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&ops, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP response from /metrics")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("/metrics answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_index_picks_the_middle_value_wherever_it_stands() {
        assert_eq!(median_index(&[0.49, 0.43, 0.53]), 0);
        assert_eq!(median_index(&[0.53, 0.49, 0.43]), 1);
        assert_eq!(median_index(&[0.7]), 0);
        // An even count takes the lower middle one.
        assert_eq!(median_index(&[0.4, 0.1, 0.3, 0.2]), 3);
    }

    #[test]
    fn rounds_note_lists_every_round_and_is_empty_for_one() {
        assert_eq!(rounds_note(&[0.5], "health, Get, Set"), "");
        assert_eq!(
            rounds_note(&[0.49, 0.514, 0.54], "health, Get, Set"),
            "; the median of 3 rounds (health, Get, Set back to back in each), ratios 0.49, 0.51, 0.54"
        );
    }

    /// The bound of the bucket a quantile falls in, counting only the
    /// calls between the two readings.
    #[test]
    fn a_quantile_is_the_bound_of_its_bucket_over_the_calls_between_two_readings() {
        let inf = f64::INFINITY;
        let before = [(0.001, 50), (0.005, 90), (0.05, 100), (inf, 100)];
        // 100 calls since: 60 under 1 ms, 35 more under 5 ms, 4 under 50 ms, 1 over.
        let after = [(0.001, 110), (0.005, 185), (0.05, 199), (inf, 200)];
        assert_eq!(bucket_quantile(&before, &after, 0.5), Some(0.001));
        assert_eq!(bucket_quantile(&before, &after, 0.95), Some(0.005));
        assert_eq!(bucket_quantile(&before, &after, 0.99), Some(0.05));
        assert_eq!(bucket_quantile(&before, &after, 0.999), Some(inf));
        assert_eq!(bucket_quantile(&after, &after, 0.5), None, "no calls between the readings");
        // 60 of the 100 calls since were under 1 ms, 110 of all 200 were.
        assert_eq!(bucket_quantile(&before, &after, 0.6), Some(0.001));
        assert_eq!(bucket_quantile(&[], &after, 0.6), Some(0.005), "a first reading of nothing counts every call");
    }

    #[test]
    fn reads_h2load_summary() {
        let text = "finished in 5.00s, 31234.40 req/s, 3.05MB/s\nrequests: 156172 total, 156172 started, 156172 done, 156170 succeeded, 2 failed, 0 errored, 0 timeout\nstatus codes: 156170 2xx, 0 3xx, 1 4xx, 0 5xx\n";
        let s = parse_summary(text).unwrap();
        assert_eq!((s.succeeded, s.failed, s.non_2xx), (156170, 2, 1));
        assert!((s.secs - 5.0).abs() < 1e-9);
        assert_eq!(duration_secs("812.5ms"), Some(0.8125));
        assert_eq!(duration_secs("1m3s"), Some(63.0));
        assert!(parse_summary("nothing").is_err());
    }
}

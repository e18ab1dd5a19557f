//! stategate-bench: how fast the gateway is, as a fraction of what a bare
//! tonic server does on the same machine with the same client and messages.
//!
//! One process: the gateway (started in-process through
//! `stategate::server::start`, embedded sqlite in a temp dir, `inmem`
//! channel, auth off) and a bare tonic server run on one tokio runtime, the
//! load-generating gRPC clients on another; all traffic is loopback.
//! See docs/bench.md.

mod alloc;
mod bare;
mod report;
mod wasm;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use prost_types::{Struct, Value as PbValue, value::Kind};
use serde::Serialize;
use stategate::config::Config;
use stategate::model::{AppendRequest, Change, EventKind, Expect, RecordRef};
use stategate::proto as pb;
use stategate::proto::{event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Parser)]
#[command(name = "stategate-bench", about = "Benchmarks stategate against a bare tonic server (see docs/bench.md)")]
pub struct Args {
    /// Machine-readable results.
    #[arg(long, default_value = "bench/results.json")]
    pub out: PathBuf,
    /// Also write the Markdown report here (e.g. BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Measured seconds per load step (after the warm-up).
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Warm-up seconds per load step (not measured).
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Concurrent clients of the unary scenarios.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Records seeded for state Search (and read by Get).
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Events seeded for event Search.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Subscriber counts of the fan-out scenario.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub subscribers: Vec<usize>,
    /// Events delivered per second in total by the fan-out writer
    /// (writes/s = this / subscribers).
    #[arg(long, default_value_t = 20_000.0)]
    pub fanout_deliveries: f64,
    /// Idle streams held open for the memory scenario.
    #[arg(long, default_value_t = 1000)]
    pub idle_streams: usize,
    /// Run only scenarios whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where the gateway's sqlite database lives (a fresh temp dir inside
    /// it). Default: /dev/shm (tmpfs), so the run measures the gateway and
    /// not the disk of a shared machine; give a disk path to include fsync.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Soak mode instead of the scenarios: steady writes and streams for this
    /// long (e.g. 10m, 90s), RSS sampled every 10 s, slope reported.
    #[arg(long, value_parser = parse_duration)]
    pub soak: Option<Duration>,
    /// Client counts of the auth (JWT + Rego) scenario.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub auth_clients: Vec<usize>,
    /// What the second gateway of the auth scenario checks: `jwt-rego` (the
    /// scenario), `jwt` (token only, no policy) or `none` (auth off: a
    /// control for the cost of a second gateway on the same storage).
    #[arg(long, default_value = "jwt-rego", value_parser = ["jwt-rego", "jwt", "none"])]
    pub auth_mode: String,
    /// Redis server of the cross-instance scenario (skipped if unreachable).
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis_addr: String,
    /// NATS server of the cross-instance scenario (skipped if unreachable).
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats_addr: String,
    /// Subscribers (on instance B) of the cross-instance scenarios.
    #[arg(long, default_value_t = 100)]
    pub cross_subscribers: usize,
    /// Directory holding the wasm guests of the `wasm-provider` scenario
    /// (fs_storage.wasm, tenant_isolation.wasm). Default: run
    /// scripts/build-guests and use ${CARGO_TARGET_DIR:-target}/guests/out.
    #[arg(long)]
    pub guests: Option<PathBuf>,
    /// Records seeded into each storage of the wasm storage comparison.
    #[arg(long, default_value_t = 10_000)]
    pub wasm_records: usize,
    /// Client counts of the `wasm-provider` scenario.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub wasm_clients: Vec<usize>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: expected e.g. 10m, 90s, 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// One line of the results: a scenario at one load level.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Row {
    pub scenario: String,
    /// Concurrent clients (unary) or subscribers (fan-out / idle streams).
    pub clients: Option<usize>,
    pub ops_per_sec: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub ceiling_ops_per_sec: Option<f64>,
    pub ceiling_p50_ms: Option<f64>,
    pub ceiling_p99_ms: Option<f64>,
    /// ops_per_sec / ceiling_ops_per_sec.
    pub ratio: Option<f64>,
    /// CPU microseconds per call of the whole process (gateway or bare
    /// server, and the clients) in the measured window (unary scenarios).
    pub cpu_us_per_op: Option<f64>,
    pub ceiling_cpu_us_per_op: Option<f64>,
    pub target: Option<String>,
    pub meets_target: Option<bool>,
    /// Peak RSS of the bench process during the scenario (VmHWM, reset
    /// before it), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Anonymous RSS (heap, stacks; without the memory-mapped database
    /// pages that VmHWM includes) right after the gateway step, MiB.
    pub anon_rss_mib: Option<f64>,
    /// RSS growth over the scenario, MiB (memory scenarios).
    pub rss_delta_mib: Option<f64>,
    /// Growth of the heap allocated by the server threads (gateway or bare
    /// server), MiB (memory scenarios).
    pub server_heap_delta_mib: Option<f64>,
    pub errors: u64,
    pub note: String,
}

/// The scenario table. A scenario whose feature this build lacks has no
/// runner and prints as "not available in this build"; adding one is a new
/// entry whose runner configures the gateway through `Config` (the same
/// fields as its STATEGATE_* variables) and reuses `unary_scenario` or
/// `fanout`.
struct Scenario {
    name: &'static str,
    what: &'static str,
    run: Option<Runner>,
}

type Runner = for<'a> fn(&'a mut Bench) -> futures::future::BoxFuture<'a, Result<Vec<Row>>>;

fn scenarios() -> Vec<Scenario> {
    vec![
        // First, while the process is small and quiet: its RSS delta means something.
        Scenario { name: "idle-streams", what: "memory of N open, idle streams", run: Some(|b| Box::pin(b.idle_streams())) },
        Scenario { name: "set", what: "StateService/Set, 1 KiB values, a new key per call", run: Some(|b| Box::pin(b.unary(Op::Set))) },
        Scenario { name: "get", what: "StateService/Get of a random seeded record (1 KiB)", run: Some(|b| Box::pin(b.unary(Op::Get))) },
        Scenario { name: "search", what: "StateService/Search over the seeded records, equality filter, limit 10", run: Some(|b| Box::pin(b.unary(Op::Search))) },
        Scenario { name: "event-search", what: "EventService/Search over the seeded events, equality filter, limit 10", run: Some(|b| Box::pin(b.unary(Op::EventSearch))) },
        Scenario { name: "fanout", what: "one writer, N Stream subscribers of its topic", run: Some(|b| Box::pin(b.fanout_all())) },
        Scenario { name: "auth-jwt-rego", what: "Get/Set with JWT HS256 verification and a Rego request policy (examples/policies/read_only_role.rego), relative to auth off", run: Some(|b| Box::pin(b.auth_all())) },
        Scenario { name: "wasm-provider", what: "Get/Set on the wasm storage provider guest (fs-storage) relative to embedded sqlite, and Get with the wasm policy hook tenant-isolation relative to none", run: Some(|b| Box::pin(b.wasm_provider())) },
        Scenario { name: "redis-cross-instance", what: "two gateways on the Redis channel sharing one storage: writer on A, N Stream subscribers on B, relative to one instance with the inmem channel", run: Some(|b| Box::pin(b.cross_instance("redis"))) },
        Scenario { name: "nats-cross-instance", what: "two gateways on the NATS channel sharing one storage: writer on A, N Stream subscribers on B, relative to one instance with the inmem channel", run: Some(|b| Box::pin(b.cross_instance("nats"))) },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Set,
    Get,
    Search,
    EventSearch,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Get => "get",
            Op::Search => "search",
            Op::EventSearch => "event-search",
        }
    }
    fn target(self) -> Option<f64> {
        match self {
            Op::Set => Some(0.5),
            Op::Get => Some(0.7),
            _ => None,
        }
    }
}

const DOMAIN: &str = "bench";
const RECORD_TYPE: &str = "rec";
const EVENT_TYPE: &str = "ev";
/// Keys the seeded events are spread over.
const EVENT_KEYS: usize = 10_000;
/// Distinct values of the filtered field (`group`): a filter matches 1 in 10.
const GROUPS: usize = 10;
/// Streams per client connection in the fan-out and idle-stream scenarios.
const STREAMS_PER_CONNECTION: usize = 125;

pub struct Bench {
    args: Args,
    /// Where the first gateway's data dir was made (tmpfs by default).
    data_base: PathBuf,
    server_rt: tokio::runtime::Runtime,
    gateway: stategate::server::Running,
    gateway_addr: SocketAddr,
    /// The gateway's config, for the extra gateways of some scenarios.
    config: Config,
    bare: bare::Bare,
    bare_addr: SocketAddr,
    _data: tempfile::TempDir,
    epoch: Instant,
    pub seeding: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("server")
        .on_thread_start(alloc::mark_server_thread)
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("client")
        .enable_all()
        .build()?;
    client_rt.block_on(run(args, server_rt))
}

async fn run(args: Args, server_rt: tokio::runtime::Runtime) -> Result<()> {
    let started = Instant::now();
    let base = args.data_dir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() { shm } else { std::env::temp_dir() }
    });
    let data = tempfile::Builder::new().prefix("stategate-bench").tempdir_in(&base)?;
    let mut config = Config::defaults();
    config.auth.auth_disabled = true;
    config.bind = "127.0.0.1".into();
    config.port = 0;
    config.ops_port = Some(0);
    config.data_dir = data.path().to_path_buf();
    config.log_format = "text".into();
    let gateway = server_rt
        .spawn(stategate::server::start(config.clone()))
        .await?
        .context("starting the gateway")?;
    let gateway_addr = gateway.addr;
    let bare = bare::Bare::default();
    let bare_addr = server_rt.spawn(bare.clone().serve()).await??;
    eprintln!("gateway on {gateway_addr}, bare tonic on {bare_addr}, data in {}", data.path().display());

    let mut bench = Bench {
        args: args.clone(),
        data_base: base,
        server_rt,
        gateway,
        gateway_addr,
        config,
        bare,
        bare_addr,
        _data: data,
        epoch: Instant::now(),
        seeding: Vec::new(),
    };

    if let Some(duration) = args.soak {
        let soak = bench.soak(duration).await?;
        let out = serde_json::json!({ "machine": report::machine(), "soak": soak });
        std::fs::write(&args.out, serde_json::to_string_pretty(&out)?)?;
        eprintln!("wrote {}", args.out.display());
        return bench.stop().await;
    }

    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()));
    let table = scenarios();
    let mut seeded = false;
    let mut rows = Vec::new();
    let mut described = Vec::new();
    for s in &table {
        if !wanted(s.name) {
            continue;
        }
        if !seeded && matches!(s.name, "get" | "search" | "event-search" | "auth-jwt-rego" | "wasm-provider") {
            bench.seed().await?;
            seeded = true;
        }
        described.push((s.name, s.what, s.run.is_some()));
        match s.run {
            Some(run) => {
                eprintln!("== {} ({:.0}s elapsed)", s.name, started.elapsed().as_secs_f64());
                let out = run(&mut bench).await.with_context(|| format!("scenario {}", s.name))?;
                for r in &out {
                    eprintln!("   {}", report::line(r));
                }
                rows.extend(out);
            }
            None => rows.push(Row {
                scenario: s.name.into(),
                note: "not available in this build".into(),
                ..Row::default()
            }),
        }
    }
    let total = started.elapsed();
    let machine = report::machine();
    let out = serde_json::json!({
        "machine": machine,
        "total_seconds": total.as_secs_f64(),
        "settings": {
            "secs_per_step": args.secs, "warmup_secs": args.warmup, "records": args.records,
            "events": args.events, "fanout_deliveries_per_sec": args.fanout_deliveries,
        },
        "seeding": bench.seeding,
        "scenarios": described.iter().map(|(n, w, a)| serde_json::json!({"name": n, "what": w, "available": a})).collect::<Vec<_>>(),
        "rows": rows,
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)?)?;
    let md = report::markdown(&machine, &rows, &described, &bench.seeding, &args, total);
    println!("{md}");
    if let Some(path) = &args.markdown {
        report::write_markdown(path, &md)?;
        eprintln!("wrote {} and {}", args.out.display(), path.display());
    }
    bench.stop().await
}

// ---- payloads ----

fn pb_str(s: impl Into<String>) -> PbValue {
    PbValue { kind: Some(Kind::StringValue(s.into())) }
}

fn pb_num(n: f64) -> PbValue {
    PbValue { kind: Some(Kind::NumberValue(n)) }
}

/// About 1 KiB of values: a group (the searched field), a number and filler.
fn values_1k(i: u64, extra: &[(&str, f64)]) -> Struct {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("group".to_owned(), pb_str(format!("g{}", i % GROUPS as u64)));
    fields.insert("n".to_owned(), pb_num(i as f64));
    fields.insert("payload".to_owned(), pb_str("x".repeat(960)));
    for (k, v) in extra {
        fields.insert((*k).to_owned(), pb_num(*v));
    }
    Struct { fields }
}

fn json_values(i: u64, filler: usize) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("group".into(), format!("g{}", i % GROUPS as u64).into());
    m.insert("n".into(), i.into());
    m.insert("payload".into(), "x".repeat(filler).into());
    m
}

/// A small fast PRNG (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// CPU time (user + system) of this process so far, seconds: fields 14 and
/// 15 of /proc/self/stat, in USER_HZ ticks (100 per second on Linux).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces: count from after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<f64>().ok()).sum();
    ticks / 100.0
}

// ---- memory ----

/// (VmRSS, VmHWM) of this process, MiB.
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
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
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

// ---- load ----

struct Measured {
    ops: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    first_error: Option<String>,
    /// CPU seconds the whole bench process used in the measured window.
    cpu_secs: f64,
    /// Fan-out: the latency of the writer's own `Set` calls, µs.
    writes: Option<Histogram<u64>>,
}

impl Measured {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    /// CPU microseconds per call, server, storage and clients together. On a
    /// shared machine this moves less than ops/s: time the neighbours take
    /// is not counted.
    fn cpu_us_per_op(&self) -> f64 {
        self.cpu_secs * 1e6 / self.ops as f64
    }
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    /// A quantile of the fan-out writer's call latency, ms ("–" if none).
    fn write_p(&self, q: f64) -> String {
        self.writes.as_ref().map_or("–".into(), |h| format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0))
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to 100 s.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

async fn connect(addr: SocketAddr) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

#[derive(Clone)]
struct Clients {
    state: StateServiceClient<Channel>,
    events: EventServiceClient<Channel>,
    /// `authorization` header value sent with every call, if any.
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Clients {
    fn new(ch: Channel) -> Self {
        Clients {
            state: StateServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            events: EventServiceClient::new(ch).max_decoding_message_size(64 << 20),
            auth: None,
        }
    }
    fn with_token(mut self, token: Option<&str>) -> Self {
        self.auth = token.map(|t| format!("Bearer {t}").parse().expect("a token is ASCII"));
        self
    }
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }
}

/// What the closed-loop clients of a step call, and as whom.
#[derive(Clone, Copy)]
pub struct Load<'a> {
    pub op: Op,
    /// Records seeded under `bench/rec` (keys `record_key(0..records)`):
    /// `Get` picks one of them at random.
    pub records: usize,
    /// Bearer token sent with every call.
    pub token: Option<&'a str>,
}

impl Load<'_> {
    fn new(op: Op, records: usize) -> Load<'static> {
        Load { op, records: records.max(1), token: None }
    }
}

/// Runs `clients` closed-loop clients (one connection each) for warm-up +
/// measured time; latencies of the measured part only.
async fn drive(addr: SocketAddr, clients: usize, warmup: f64, secs: f64, load: Load<'_>) -> Result<Measured> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Clients::new(connect(addr).await?).with_token(load.token));
    }
    let (op, records) = (load.op, load.records);
    let start = Instant::now() + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut cl)| {
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
                let mut rng = Rng::new(c as u64 + 1);
                let mut i = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let result = call(&mut cl, op, records, c, i, &mut rng).await;
                    i += 1;
                    if t0 >= start {
                        match result {
                            Ok(()) => {
                                ops += 1;
                                let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                            }
                            Err(e) => {
                                errors += 1;
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                }
                (hist, ops, errors, first_error)
            })
        })
        .collect();
    tokio::time::sleep_until(start.into()).await;
    let cpu_start = process_cpu_secs();
    tokio::time::sleep_until(end.into()).await;
    let cpu_secs = process_cpu_secs() - cpu_start;
    let mut m = Measured { ops: 0, errors: 0, secs, hist: histogram(), first_error: None, cpu_secs, writes: None };
    for t in tasks {
        let (h, ops, errors, first_error) = t.await?;
        m.hist.add(&h)?;
        m.ops += ops;
        m.errors += errors;
        if m.first_error.is_none() {
            m.first_error = first_error;
        }
    }
    Ok(m)
}

// ---- requests (the same shapes for the gateway, the bare server's
// templates and every scenario) ----

/// `Set` of a new key per call, 1 KiB of values.
fn set_request(client: usize, i: u64) -> pb::State {
    pb::State {
        domain: DOMAIN.into(),
        r#type: "set".into(),
        key: format!("c{client}k{i}"),
        values: Some(values_1k(i, &[])),
        ..Default::default()
    }
}

/// `Get` of seeded record `i`.
fn get_request(i: usize) -> pb::StateRef {
    pb::StateRef {
        domain: DOMAIN.into(),
        r#type: RECORD_TYPE.into(),
        key: record_key(i),
        ..Default::default()
    }
}

/// The filter of both searches: one of GROUPS values (matches 1 in 10),
/// first 10 results.
const SEARCH_LIMIT: usize = 10;

fn group_filter(group: usize) -> String {
    format!(r#"{{"group":"g{group}"}}"#)
}

fn state_search_request(group: usize) -> pb::SearchStateOpts {
    pb::SearchStateOpts {
        domain: DOMAIN.into(),
        r#type: RECORD_TYPE.into(),
        query_string: group_filter(group),
        limit: SEARCH_LIMIT as i64,
        ..Default::default()
    }
}

fn event_search_request(group: usize) -> pb::SearchEventOpts {
    pb::SearchEventOpts {
        domain: DOMAIN.into(),
        r#type: EVENT_TYPE.into(),
        query_string: group_filter(group),
        limit: SEARCH_LIMIT as i64,
        ..Default::default()
    }
}

/// A search must return a full page: the seeded data has 10k+ matches.
fn full_page(what: &str, n: usize) -> Result<(), String> {
    if n == SEARCH_LIMIT { Ok(()) } else { Err(format!("{what} returned {n} results, not {SEARCH_LIMIT}")) }
}

async fn call(cl: &mut Clients, op: Op, records: usize, client: usize, i: u64, rng: &mut Rng) -> Result<(), String> {
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match op {
        Op::Set => {
            let r = cl.req(set_request(client, i));
            cl.state.set(r).await.map_err(status)?;
        }
        Op::Get => {
            let r = cl.req(get_request(rng.below(records)));
            cl.state.get(r).await.map_err(status)?;
        }
        Op::Search => {
            let r = cl.req(state_search_request(rng.below(GROUPS)));
            let n = cl.state.search(r).await.map_err(status)?.into_inner().state_values.len();
            full_page("search", n)?;
        }
        Op::EventSearch => {
            let r = cl.req(event_search_request(rng.below(GROUPS)));
            let n = cl.events.search(r).await.map_err(status)?.into_inner().events.len();
            full_page("event search", n)?;
        }
    }
    Ok(())
}

fn record_key(i: usize) -> String {
    format!("r{i:07}")
}

/// A row comparing two gateways in the same run: `on` (the feature) is
/// reported against `off` (the "ceiling" columns); target: on/off >= `target`.
/// The same load driven against a baseline gateway (`off`) and then the
/// variant (`on`), back to back, as a row of `on` relative to `off`.
struct Relative<'a> {
    scenario: String,
    clients: usize,
    off: (SocketAddr, Load<'a>),
    on: (SocketAddr, Load<'a>),
    target: f64,
    note: String,
}

impl Bench {
    async fn relative(&self, r: Relative<'_>) -> Result<Row> {
        reset_peak();
        let (warmup, secs) = (self.args.warmup, self.args.secs);
        let off = drive(r.off.0, r.clients, warmup, secs, r.off.1).await?;
        let on = drive(r.on.0, r.clients, warmup, secs, r.on.1).await?;
        Ok(relative_row(r.scenario, r.clients, on, off, r.target, &r.note))
    }
}

fn relative_row(scenario: String, clients: usize, on: Measured, off: Measured, target: f64, note: &str) -> Row {
    let (peak, anon) = (rss_mib().1, anon_rss_mib());
    let ratio = on.ops_per_sec() / off.ops_per_sec();
    Row {
        scenario,
        clients: Some(clients),
        ops_per_sec: Some(on.ops_per_sec()),
        p50_ms: Some(on.p(0.5)),
        p99_ms: Some(on.p(0.99)),
        ceiling_ops_per_sec: Some(off.ops_per_sec()),
        ceiling_p50_ms: Some(off.p(0.5)),
        ceiling_p99_ms: Some(off.p(0.99)),
        ratio: Some(ratio),
        cpu_us_per_op: Some(on.cpu_us_per_op()),
        ceiling_cpu_us_per_op: Some(off.cpu_us_per_op()),
        target: Some(format!("ratio >= {target}")),
        meets_target: Some(ratio >= target && on.errors == 0),
        peak_rss_mib: Some(peak),
        anon_rss_mib: Some(anon),
        errors: on.errors + off.errors,
        note: format!(
            "{note}{}",
            on.first_error.or(off.first_error).map(|e| format!("; first error: {e}")).unwrap_or_default()
        ),
        ..Row::default()
    }
}

/// A fresh random HMAC secret for a gateway started by a scenario.
fn hmac_secret() -> String {
    format!("bench-{}-{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// An HS256 token with these claims, valid for an hour.
fn hs256_token(secret: &str, mut claims: serde_json::Value) -> Result<String> {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600;
    claims["exp"] = exp.into();
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

fn now_us(epoch: Instant) -> f64 {
    epoch.elapsed().as_micros() as f64
}

impl Bench {
    /// Seeds records and events straight through the Storage API (not over
    /// gRPC), many appends in flight so the writer commits them in batches.
    async fn seed(&mut self) -> Result<()> {
        let storage = self.gateway.gateway.storage().clone();
        let plan = [
            (RECORD_TYPE, self.args.records, self.args.records.max(1), 950usize),
            (EVENT_TYPE, self.args.events, EVENT_KEYS, 100usize),
        ];
        for (ty, count, keys, filler) in plan {
            if count == 0 {
                continue;
            }
            let line = self.seed_into(&storage, ty, count, keys, filler).await?;
            eprintln!("   {line}");
            self.seeding.push(line);
        }
        Ok(())
    }

    /// Appends `count` events of `bench/<ty>` over `keys` keys
    /// (`record_key`), `filler` bytes of payload each, 2048 in flight.
    async fn seed_into(&self, storage: &stategate::storage::DynStorage, ty: &str, count: usize, keys: usize, filler: usize) -> Result<String> {
        let t0 = Instant::now();
        let mut appends = futures::stream::iter(0..count)
            .map(|i| {
                let storage = storage.clone();
                let req = AppendRequest {
                    id: uuid::Uuid::now_v7().to_string(),
                    record: RecordRef {
                        domain: DOMAIN.into(),
                        ty: ty.into(),
                        key: record_key(i % keys.max(1)),
                    },
                    change: Change::Put(json_values(i as u64, filler)),
                    expect: Expect::Any,
                    kind: EventKind::Set,
                    method: "/stategate.StateService/Set".into(),
                    claims: Default::default(),
                    time: stategate::model::now_nanos(),
                    idempotency: None,
                };
                // Spawned on the server runtime: seeding is not client load.
                self.server_rt.spawn(async move { storage.append(req).await })
            })
            .buffer_unordered(2048);
        while let Some(r) = appends.next().await {
            r?.map_err(|e| anyhow::anyhow!("seeding {}: {e}", storage.name()))?;
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok(format!(
            "{count} {} appended through the Storage API of {} (2048 in flight{}) in {secs:.1} s ({:.0}/s)",
            if ty == EVENT_TYPE { "events" } else { "records" },
            storage.name(),
            if storage.name() == "sqlite" { ", group commit" } else { "" },
            count as f64 / secs
        ))
    }

    /// One unary scenario at each client count: gateway, then the bare
    /// server answering with the gateway's own response message.
    async fn unary(&mut self, op: Op) -> Result<Vec<Row>> {
        // Template: one real gateway answer, so the bare server sends the
        // same bytes.
        let mut cl = Clients::new(connect(self.gateway_addr).await?);
        let mut rng = Rng::new(99);
        self.bare.learn(op, self.args.records, &mut cl, &mut rng).await?;
        let mut rows = Vec::new();
        for &clients in &self.args.clients.clone() {
            reset_peak();
            let load = Load::new(op, self.args.records);
            let g = drive(self.gateway_addr, clients, self.args.warmup, self.args.secs, load).await?;
            let (peak, anon) = (rss_mib().1, anon_rss_mib());
            let b = drive(self.bare_addr, clients, self.args.warmup, self.args.secs, load).await?;
            if b.errors > 0 {
                bail!("bare server failed: {:?}", b.first_error);
            }
            let ratio = g.ops_per_sec() / b.ops_per_sec();
            let target = op.target().filter(|_| clients == 64);
            rows.push(Row {
                scenario: op.label().into(),
                clients: Some(clients),
                ops_per_sec: Some(g.ops_per_sec()),
                p50_ms: Some(g.p(0.5)),
                p99_ms: Some(g.p(0.99)),
                ceiling_ops_per_sec: Some(b.ops_per_sec()),
                ceiling_p50_ms: Some(b.p(0.5)),
                ceiling_p99_ms: Some(b.p(0.99)),
                ratio: Some(ratio),
                cpu_us_per_op: Some(g.cpu_us_per_op()),
                ceiling_cpu_us_per_op: Some(b.cpu_us_per_op()),
                target: target.map(|t| format!("ratio >= {t}")),
                meets_target: target.map(|t| ratio >= t),
                peak_rss_mib: Some(peak),
                anon_rss_mib: Some(anon),
                errors: g.errors,
                note: g.first_error.map(|e| format!("first error: {e}")).unwrap_or_default(),
                ..Row::default()
            });
        }
        Ok(rows)
    }

    async fn fanout_all(&mut self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for &subs in &self.args.subscribers.clone() {
            let rate = (self.args.fanout_deliveries / subs as f64).max(1.0);
            reset_peak();
            let g = self.fanout(self.gateway_addr, self.gateway_addr, subs, rate).await?;
            let (peak, anon) = (rss_mib().1, anon_rss_mib());
            let b = self.fanout(self.bare_addr, self.bare_addr, subs, rate).await?;
            let target = (subs >= 1000).then_some(50.0);
            rows.push(Row {
                scenario: "fanout".into(),
                clients: Some(subs),
                ops_per_sec: Some(g.ops_per_sec()),
                p50_ms: Some(g.p(0.5)),
                p99_ms: Some(g.p(0.99)),
                ceiling_ops_per_sec: Some(b.ops_per_sec()),
                ceiling_p50_ms: Some(b.p(0.5)),
                ceiling_p99_ms: Some(b.p(0.99)),
                ratio: Some(g.ops_per_sec() / b.ops_per_sec()),
                cpu_us_per_op: Some(g.cpu_us_per_op()),
                ceiling_cpu_us_per_op: Some(b.cpu_us_per_op()),
                target: target.map(|t| format!("p99 < {t} ms")),
                meets_target: target.map(|t| g.p(0.99) < t && g.errors == 0),
                peak_rss_mib: Some(peak),
                anon_rss_mib: Some(anon),
                errors: g.errors,
                note: format!(
                    "{rate:.0} writes/s x {subs} subscribers; ops/s = delivered events/s; latency = write call start to delivery; \
                     the writer's Set calls took p50 {} / p99 {} ms (bare: {} / {}); CPU µs/op = per delivery{}",
                    g.write_p(0.5), g.write_p(0.99), b.write_p(0.5), b.write_p(0.99),
                    g.first_error.map(|e| format!("; {e}")).unwrap_or_default()
                ),
                ..Row::default()
            });
        }
        Ok(rows)
    }

    /// Opens `subs` streams of one topic, writes at `rate`/s for the
    /// warm-up and the measured time, and measures the latency of each
    /// delivery of a write made after the warm-up, from the start of its
    /// write call. `errors` counts events not delivered.
    /// The writer writes to `addr`, the subscribers read from `sub_addr`.
    async fn fanout(&self, addr: SocketAddr, sub_addr: SocketAddr, subs: usize, rate: f64) -> Result<Measured> {
        let ty = format!("fan{}", uuid::Uuid::new_v4().simple());
        let streams = open_streams(sub_addr, subs, &ty).await?;
        let epoch = self.epoch;
        let delivered = Arc::new(AtomicU64::new(0));
        // Writes sent before this (µs since the epoch) are the warm-up: they
        // are delivered and counted, but their latency is not recorded.
        let measure_from = Arc::new(AtomicU64::new(u64::MAX));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let delivered = delivered.clone();
                let measure_from = measure_from.clone();
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    let mut hist = histogram();
                    let mut err = None;
                    loop {
                        let msg = tokio::select! {
                            m = s.message() => m,
                            _ = stop.changed() => break,
                        };
                        match msg {
                            Ok(Some(ev)) => {
                                let now = now_us(epoch);
                                let sent = ev
                                    .state
                                    .and_then(|st| st.values)
                                    .and_then(|v| v.fields.get("sent_us").cloned())
                                    .and_then(|v| match v.kind {
                                        Some(Kind::NumberValue(n)) => Some(n),
                                        _ => None,
                                    });
                                if let Some(sent) = sent {
                                    if sent >= measure_from.load(Ordering::Relaxed) as f64 {
                                        let _ = hist.record((now - sent).max(1.0) as u64);
                                    }
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                if e.code() != tonic::Code::Cancelled {
                                    err = Some(format!("{:?}: {}", e.code(), e.message()));
                                }
                                break;
                            }
                        }
                    }
                    (hist, err)
                })
            })
            .collect();

        if sub_addr != addr {
            // Another instance: let its channel subscription settle.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The writer: open loop at `rate`, one call in flight at a time at most
        // per tick (a slow write delays the next one, which shows as latency).
        let mut writer = Clients::new(connect(addr).await?);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let t0 = Instant::now();
        let measured_from = now_us(epoch) + self.args.warmup * 1e6;
        measure_from.store(measured_from as u64, Ordering::Relaxed);
        let cpu_start = process_cpu_secs();
        let end = t0 + Duration::from_secs_f64(self.args.secs + self.args.warmup);
        let mut writes = 0u64;
        let mut write_errors = 0u64;
        let mut write_hist = histogram();
        while Instant::now() < end {
            tick.tick().await;
            let sent = now_us(epoch);
            let r = writer
                .state
                .set(pb::State {
                    domain: DOMAIN.into(),
                    r#type: ty.clone(),
                    key: format!("k{}", writes % 64),
                    values: Some(values_1k(writes, &[("sent_us", sent)])),
                    ..Default::default()
                })
                .await;
            // The same warm-up rule as the deliveries', on the same clock.
            if sent >= measured_from {
                let _ = write_hist.record((now_us(epoch) - sent).max(1.0) as u64);
            }
            writes += 1;
            if r.is_err() {
                write_errors += 1;
            }
        }
        let expected = (writes - write_errors) * subs as u64;
        let drain_until = Instant::now() + Duration::from_secs(10);
        while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu_secs = process_cpu_secs() - cpu_start;
        let _ = stop_tx.send(true);
        let mut m = Measured { ops: 0, errors: 0, secs, hist: histogram(), first_error: None, cpu_secs, writes: Some(write_hist) };
        for t in tasks {
            if let Ok((h, err)) = t.await {
                m.hist.add(&h)?;
                if m.first_error.is_none() {
                    m.first_error = err;
                }
            }
        }
        let got = delivered.load(Ordering::Relaxed);
        m.ops = got;
        m.errors = expected.saturating_sub(got) + write_errors;
        if write_errors > 0 {
            m.first_error.get_or_insert(format!("{write_errors} writes failed"));
        }
        Ok(m)
    }

    /// Get and Set with auth on (JWT HS256 + the Rego request policy
    /// examples/policies/read_only_role.rego: a "reader" token for Get, a
    /// "writer" token for Set) on a second gateway sharing the first one's
    /// storage, relative to the first gateway (auth off) in the same run.
    async fn auth_all(&mut self) -> Result<Vec<Row>> {
        let dir = tempfile::tempdir()?;
        let policy = dir.path().join("read_only_role.rego");
        std::fs::write(&policy, include_str!("../../examples/policies/read_only_role.rego"))?;
        let secret = hmac_secret();
        let mut config = self.config.clone();
        config.auth.auth_disabled = self.args.auth_mode == "none";
        config.auth.jwt_hmac_secret = Some(secret.clone());
        if self.args.auth_mode == "jwt-rego" {
            config.auth.request_policy_path = vec![policy];
        }
        let storage = self.gateway.gateway.storage().clone();
        let gw = self
            .server_rt
            .spawn(stategate::server::start_with_storage(config, Some(storage)))
            .await?
            .context("starting the gateway with auth on")?;
        let token = |role: &str| hs256_token(&secret, serde_json::json!({"sub": "bench", "roles": [role]}));
        let mut rows = Vec::new();
        for (op, role) in [(Op::Get, "reader"), (Op::Set, "writer")] {
            let tok = token(role)?;
            for &clients in &self.args.auth_clients.clone() {
                let off = Load::new(op, self.args.records);
                let on = Load { token: Some(&tok), ..off };
                rows.push(
                    self.relative(Relative {
                        scenario: format!("auth-{}", op.label()),
                        clients,
                        off: (self.gateway_addr, off),
                        on: (gw.addr, on),
                        target: 0.8,
                        note: format!(
                            "\"ceiling\" = the same calls on the gateway with auth off (same storage, same run); HS256 token with roles [{role}], \
                             request policy read_only_role.rego"
                        ),
                    })
                    .await?,
                );
            }
        }
        self.server_rt.spawn(gw.shutdown()).await?;
        Ok(rows)
    }

    /// Two more gateways (A and B) on the `channel` (redis or nats) sharing
    /// the first gateway's storage (one `DynStorage` in this process): one
    /// writer on A, N subscribers on B; compared with the same load on the
    /// first gateway alone (inmem channel).
    async fn cross_instance(&mut self, channel: &'static str) -> Result<Vec<Row>> {
        let name = format!("{channel}-cross-instance");
        let subs = self.args.cross_subscribers;
        let addr = if channel == "redis" { self.args.redis_addr.clone() } else { self.args.nats_addr.clone() };
        let skipped = |why: String| {
            eprintln!("   {name}: skipped: {why}");
            Ok(vec![Row { scenario: name.clone(), clients: Some(subs), note: format!("skipped: {why}"), ..Row::default() }])
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
        {
            return skipped(format!("{channel} at {addr} not reachable: {e}"));
        }
        let prefix = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut config = self.config.clone();
        config.channel_provider = Some(stategate::channel::ChannelSpec::parse(
            &serde_json::json!({"name": channel, "addr": addr, "prefix": prefix}).to_string(),
        )?);
        let storage = self.gateway.gateway.storage().clone();
        let mut started = Vec::new();
        for _ in 0..2 {
            let start = stategate::server::start_with_storage(config.clone(), Some(storage.clone()));
            match self.server_rt.spawn(tokio::time::timeout(Duration::from_secs(10), start)).await? {
                Ok(Ok(g)) => started.push(g),
                Ok(Err(e)) => return skipped(format!("starting a gateway on {channel} at {addr}: {e:#}")),
                Err(_) => return skipped(format!("starting a gateway on {channel} at {addr} timed out")),
            }
        }
        let rate = (self.args.fanout_deliveries / subs as f64).max(1.0);
        reset_peak();
        let x = self.fanout(started[0].addr, started[1].addr, subs, rate).await?;
        let (peak, anon) = (rss_mib().1, anon_rss_mib());
        let one = self.fanout(self.gateway_addr, self.gateway_addr, subs, rate).await?;
        for g in started {
            self.server_rt.spawn(g.shutdown()).await?;
        }
        Ok(vec![Row {
            scenario: name,
            clients: Some(subs),
            ops_per_sec: Some(x.ops_per_sec()),
            p50_ms: Some(x.p(0.5)),
            p99_ms: Some(x.p(0.99)),
            ceiling_ops_per_sec: Some(one.ops_per_sec()),
            ceiling_p50_ms: Some(one.p(0.5)),
            ceiling_p99_ms: Some(one.p(0.99)),
            ratio: Some(x.ops_per_sec() / one.ops_per_sec()),
            peak_rss_mib: Some(peak),
            anon_rss_mib: Some(anon),
            errors: x.errors,
            note: format!(
                "{rate:.0} writes/s on instance A x {subs} subscribers on instance B ({channel} at {addr}, prefix {prefix}; A and B share one \
                 sqlite storage in this process); ops/s = delivered events/s; latency = write call start on A to delivery from B; \
                 \"ceiling\" = the same load on one instance with the inmem channel{}",
                x.first_error.map(|e| format!("; {e}")).unwrap_or_default()
            ),
            ..Row::default()
        }])
    }

    /// RSS growth of holding N idle streams open, on the gateway and (for
    /// the client side and transport alone) on the bare server.
    async fn idle_streams(&mut self) -> Result<Vec<Row>> {
        let n = self.args.idle_streams;
        let measure = async |addr: SocketAddr| -> Result<(f64, f64, f64)> {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reset_peak();
            let before = rss_mib().0;
            let heap_before = alloc::server_heap_mib();
            let streams = open_streams(addr, n, "idle").await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (after, peak) = rss_mib();
            let heap = alloc::server_heap_mib() - heap_before;
            drop(streams);
            Ok((after - before, heap, peak))
        };
        let (g, g_heap, peak) = measure(self.gateway_addr).await?;
        let (b, b_heap, _) = measure(self.bare_addr).await?;
        Ok(vec![Row {
            scenario: "idle-streams".into(),
            clients: Some(n),
            rss_delta_mib: Some(g),
            server_heap_delta_mib: Some(g_heap),
            peak_rss_mib: Some(peak),
            target: Some("< 50 MiB".into()),
            meets_target: Some(g < 50.0 && g_heap < 50.0),
            note: format!(
                "gateway heap (bytes allocated and not freed by the server runtime's threads) grew by {g_heap:.1} MiB; \
                 RSS of the whole process (gateway + the {n} client streams) by {g:.1} MiB. \
                 The same streams on the bare tonic server: heap {b_heap:.1} MiB, RSS {b:.1} MiB"
            ),
            ..Row::default()
        }])
    }

    /// Steady writes and streams; RSS every 10 s; least-squares slope.
    async fn soak(&mut self, duration: Duration) -> Result<serde_json::Value> {
        let subs = 100;
        let rate = 200.0;
        let streams = open_streams(self.gateway_addr, subs, "soak").await?;
        let delivered = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let d = delivered.clone();
                tokio::spawn(async move {
                    while let Ok(Some(_)) = s.message().await {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut writer = Clients::new(connect(self.gateway_addr).await?);
        let t0 = Instant::now();
        let mut samples: Vec<(f64, f64)> = vec![(0.0, rss_mib().0)];
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut next_sample = t0 + Duration::from_secs(10);
        let (mut writes, mut errors) = (0u64, 0u64);
        eprintln!("soak: {subs} streams, {rate} writes/s (1 KiB, 10k keys) for {duration:?}");
        while t0.elapsed() < duration {
            tick.tick().await;
            let r = writer
                .state
                .set(pb::State {
                    domain: DOMAIN.into(),
                    r#type: "soak".into(),
                    key: format!("k{}", writes % 10_000),
                    values: Some(values_1k(writes, &[])),
                    ..Default::default()
                })
                .await;
            writes += 1;
            errors += r.is_err() as u64;
            if Instant::now() >= next_sample {
                let s = (t0.elapsed().as_secs_f64(), rss_mib().0);
                eprintln!("   t={:>5.0}s rss={:.1} MiB writes={writes} delivered={}", s.0, s.1, delivered.load(Ordering::Relaxed));
                samples.push(s);
                next_sample += Duration::from_secs(10);
            }
        }
        for r in readers {
            r.abort();
        }
        // Slope over the second half (after warm-up growth), MiB per minute.
        let half: Vec<_> = samples.iter().filter(|(t, _)| *t >= duration.as_secs_f64() / 2.0).copied().collect();
        let slope = |pts: &[(f64, f64)]| {
            let n = pts.len() as f64;
            if n < 2.0 {
                return f64::NAN;
            }
            let (mt, mr) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
            let num: f64 = pts.iter().map(|(t, r)| (t - mt) * (r - mr)).sum();
            let den: f64 = pts.iter().map(|(t, _)| (t - mt).powi(2)).sum();
            num / den * 60.0
        };
        let (all, second) = (slope(&samples), slope(&half));
        eprintln!("soak: RSS slope {all:.3} MiB/min overall, {second:.3} MiB/min over the second half; {writes} writes, {errors} failed, {} delivered", delivered.load(Ordering::Relaxed));
        Ok(serde_json::json!({
            "duration_secs": duration.as_secs_f64(), "subscribers": subs, "writes_per_sec": rate,
            "writes": writes, "write_errors": errors, "delivered": delivered.load(Ordering::Relaxed),
            "rss_samples_mib": samples, "slope_mib_per_min": all, "slope_second_half_mib_per_min": second,
        }))
    }

    async fn stop(self) -> Result<()> {
        let Bench { server_rt, gateway, .. } = self;
        server_rt.spawn(gateway.shutdown()).await?;
        server_rt.shutdown_background();
        Ok(())
    }
}

/// Opens `n` streams of `bench/<ty>`, STREAMS_PER_CONNECTION per connection;
/// returns once every one has its response headers (is subscribed).
async fn open_streams(addr: SocketAddr, n: usize, ty: &str) -> Result<Vec<tonic::Streaming<pb::Event>>> {
    let mut conns = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_CONNECTION) {
        conns.push(Clients::new(connect(addr).await?));
    }
    let opens = (0..n).map(|i| {
        let mut c = conns[i / STREAMS_PER_CONNECTION].clone();
        let ty = ty.to_owned();
        async move {
            c.events
                .stream(pb::StreamOpts {
                    domain: DOMAIN.into(),
                    r#type: ty,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    });
    let streams: Vec<_> = futures::stream::iter(opens).buffer_unordered(256).collect().await;
    streams
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|s| anyhow::anyhow!("opening a stream: {:?}: {}", s.code(), s.message()))
}

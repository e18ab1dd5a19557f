//! The scenarios: the table `main` runs (one file per scenario below), and
//! the comparison of two gateways under the same load that several of them
//! report.

mod auth;
mod consumer_group;
mod cross_instance;
mod curves;
mod external;
mod fanout;
mod idle_streams;
mod open_loop;
mod peers;
mod search_index;
mod sql;
mod sql_bare;
mod unary;
mod wasm;
mod wasm_channel;
mod wasm_pool;
mod wasm_search;

use crate::bench::Bench;
use crate::load::{Load, drive};
use crate::measure::{Measured, anon_rss_mib, reset_peak, rss_mib};
use crate::report::{self, Row};
use crate::requests::Op;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::time::Instant;

/// What a run of the table produced: the rows, each scenario that was
/// selected (name, description, whether this build has it), and the
/// seconds each step of the run took (the seeding, then each scenario that
/// ran), so the report shows where the run's time budget goes.
pub struct Ran {
    pub rows: Vec<Row>,
    pub described: Vec<(&'static str, &'static str, bool)>,
    pub seconds: Vec<(&'static str, f64)>,
}

/// Runs the scenarios `--only` selects (all by default) in table order,
/// seeding the data first if one of them reads it.
pub async fn run(bench: &mut Bench, started: Instant) -> Result<Ran> {
    let only = bench.args.only.clone();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    let mut seeded = false;
    let mut ran = Ran { rows: Vec::new(), described: Vec::new(), seconds: Vec::new() };
    for s in table() {
        if !wanted(s.name) {
            continue;
        }
        if !seeded && needs_seed(s.name) {
            let seeding = Instant::now();
            bench.seed().await?;
            ran.seconds.push(("seeding", seeding.elapsed().as_secs_f64()));
            seeded = true;
        }
        ran.described.push((s.name, s.what, s.run.is_some()));
        match s.run {
            Some(run) => {
                eprintln!("== {} ({:.0}s elapsed)", s.name, started.elapsed().as_secs_f64());
                let scenario = Instant::now();
                let out = run(bench).await.with_context(|| format!("scenario {}", s.name))?;
                ran.seconds.push((s.name, scenario.elapsed().as_secs_f64()));
                for r in &out {
                    eprintln!("   {}", report::line(r));
                }
                ran.rows.extend(out);
            }
            None => ran.rows.push(Row {
                scenario: s.name.into(),
                note: report::NOT_AVAILABLE.into(),
                ..Row::default()
            }),
        }
    }
    Ok(ran)
}

/// Scenarios whose steps read the seeded records or events: the data is
/// seeded once, before the first of them runs.
fn needs_seed(name: &str) -> bool {
    matches!(name, "get" | "search" | "event-search" | "auth-jwt-rego" | "wasm-provider")
}

/// The scenario table. A scenario whose feature this build lacks has no
/// runner and prints as "not available in this build"; adding one is a new
/// entry whose runner configures the gateway through `Config` (the same
/// fields as its STATEGATE_* variables) and reuses `unary`, `fanout` or
/// `relative`.
struct Scenario {
    name: &'static str,
    what: &'static str,
    run: Option<Runner>,
}

type Runner = for<'a> fn(&'a mut Bench) -> futures::future::BoxFuture<'a, Result<Vec<Row>>>;

fn table() -> Vec<Scenario> {
    vec![
        // First, while the process is small and quiet: its RSS delta means something.
        Scenario { name: "idle-streams", what: "memory of N open, idle streams", run: Some(|b| Box::pin(b.idle_streams())) },
        Scenario { name: "external", what: "Get and Set on the release binary as its own process (data on disk, then tmpfs, then Get on disk with sqlite's point cache off), loaded by h2load (4 connections x 16 streams, stock gRPC framing), relative to the same process's grpc.health.v1.Health/Check", run: Some(|b| Box::pin(b.external())) },
        Scenario { name: "curves", what: "Get, Set, selective and non-selective state Search, event Search and catch-up replay as the store grows (--curve-sizes events, sqlite on disk), and Set with 0, 1,000 and 10,000 idle streams open; CPU per call, plotted in bench/plots/", run: Some(|b| Box::pin(b.curves())) },
        Scenario { name: "open-loop", what: "Get and Set latency (p50/p99/p999) on the release binary (sqlite on disk) at 25%, 50% and 75% of its closed-loop maximum, requests on a fixed schedule, each latency from when it was due (no coordinated omission)", run: Some(|b| Box::pin(b.open_loop())) },
        Scenario { name: "peers", what: "Set and Get of the release binary (embedded sqlite on disk, h2load) beside Redis (MULTI XADD HSET EXEC / HGET, appendfsync always) and NATS JetStream KV (put / get, file storage), each a private server process on the same disk, same values and concurrency", run: Some(|b| Box::pin(b.peers())) },
        Scenario { name: "set", what: "StateService/Set, 1 KiB values, a new key per call", run: Some(|b| Box::pin(b.unary(Op::Set))) },
        Scenario { name: "get", what: "StateService/Get of a random seeded record (1 KiB)", run: Some(|b| Box::pin(b.unary(Op::Get))) },
        Scenario { name: "search", what: "StateService/Search over the seeded records, equality filter, limit 10", run: Some(|b| Box::pin(b.unary(Op::Search))) },
        Scenario { name: "search-index", what: "selective, non-selective and sorted state Search on embedded sqlite (on disk) with indexes on the fields they name relative to without, at --search-index-records records (default 1k, 100k, 1M)", run: Some(|b| Box::pin(b.search_index())) },
        Scenario { name: "event-search", what: "EventService/Search over the seeded events, equality filter, limit 10", run: Some(|b| Box::pin(b.unary(Op::EventSearch))) },
        Scenario { name: "fanout", what: "one writer, N Stream subscribers of its topic", run: Some(|b| Box::pin(b.fanout_all())) },
        Scenario { name: "consumer-group", what: "a consumer group draining a backlog with 1, 4 and 16 members (one Ack per event), and nack-to-redelivery latency", run: Some(|b| Box::pin(b.consumer_group())) },
        Scenario { name: "auth-jwt-rego", what: "Get/Set with JWT HS256 verification and a Rego request policy (examples/policies/read_only_role.rego), relative to auth off", run: Some(|b| Box::pin(b.auth_all())) },
        Scenario { name: "wasm-provider", what: "Get/Set on the wasm storage provider guest (fs-storage) relative to embedded sqlite, and Get with the wasm policy hook tenant-isolation relative to none", run: Some(|b| Box::pin(b.wasm_provider())) },
        Scenario { name: "wasm-search", what: "state Search (equality filter, limit 10) on the fs-storage guest with search pushdown (WIT 0.2.0) relative to the same guest built against 0.1.0 (no pushdown), at 10,000 and 100,000 records", run: Some(|b| Box::pin(b.wasm_search())) },
        Scenario { name: "wasm-channel", what: "Set on a gateway whose channel is the Python directory-channel guest (py-channel, componentize-py) relative to the same with the Rust one (dir-channel)", run: Some(|b| Box::pin(b.wasm_channel())) },
        Scenario { name: "wasm-pool", what: "Get on a storage guest whose calls wait 2 ms in the host, on a pool of 8 instances relative to one instance (calls one at a time)", run: Some(|b| Box::pin(b.wasm_pool())) },
        Scenario { name: "redis-cross-instance", what: "two gateways on the Redis channel sharing one storage: writer on A, N Stream subscribers on B, relative to one instance with the inmem channel", run: Some(|b| Box::pin(b.cross_instance("redis"))) },
        Scenario { name: "nats-cross-instance", what: "two gateways on the NATS channel sharing one storage: writer on A, N Stream subscribers on B, relative to one instance with the inmem channel", run: Some(|b| Box::pin(b.cross_instance("nats"))) },
        Scenario { name: "nats-jetstream-cross-instance", what: "the same on the NATS channel's durable mode (JetStream, a stream in memory)", run: Some(|b| Box::pin(b.cross_instance("nats-jetstream"))) },
        Scenario { name: "stan-cross-instance", what: "the same on the stan channel (served over NATS, JetStream when the server has it)", run: Some(|b| Box::pin(b.cross_instance("stan"))) },
        Scenario { name: "kafka-cross-instance", what: "the same on the Kafka channel (a fresh topic, one partition)", run: Some(|b| Box::pin(b.cross_instance("kafka"))) },
        Scenario { name: "rabbitmq-cross-instance", what: "the same on the RabbitMQ channel (topic exchange stategate-bench)", run: Some(|b| Box::pin(b.cross_instance("rabbitmq"))) },
        Scenario { name: "postgres", what: "Set/Get/Search/event Search on a gateway with the postgres storage provider (a schema of its own), Set/Get relative to a bare sqlx client issuing the same transaction and point read, searches relative to embedded sqlite on disk", run: Some(|b| Box::pin(b.sql(sql_bare::Db::Postgres))) },
        Scenario { name: "mysql", what: "the same on the mysql storage provider (MariaDB or MySQL; a database of its own)", run: Some(|b| Box::pin(b.sql(sql_bare::Db::Mysql))) },
    ]
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
        target: Some(format!("ratio >= {target}")),
        meets_target: Some(ratio >= target && on.errors == 0),
        peak_rss_mib: Some(peak),
        anon_rss_mib: Some(anon),
        errors: on.errors + off.errors,
        note: format!(
            "{note}{}",
            on.first_error.as_ref().or(off.first_error.as_ref()).map(|e| format!("; first error: {e}")).unwrap_or_default()
        ),
        ..Row::compared(&on, &off)
    }
}

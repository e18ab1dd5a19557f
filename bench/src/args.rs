//! The command line (see docs/bench.md for what each option changes).

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

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
    /// scenario), `jwt` (token and the allow-all policy: auth on without
    /// any policy refuses everything) or `none` (auth off: a
    /// control for the cost of a second gateway on the same storage).
    #[arg(long, default_value = "jwt-rego", value_parser = ["jwt-rego", "jwt", "none"])]
    pub auth_mode: String,
    /// Redis server of the cross-instance scenario (skipped if unreachable).
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis_addr: String,
    /// NATS server of the cross-instance scenario (skipped if unreachable).
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats_addr: String,
    /// Kafka broker (bootstrap `host:port`) of the kafka cross-instance
    /// scenario (skipped if unreachable).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka_addr: String,
    /// RabbitMQ URL of the rabbitmq cross-instance scenario (skipped if
    /// unreachable).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_addr: String,
    /// Subscribers (on instance B) of the cross-instance scenarios.
    #[arg(long, default_value_t = 100)]
    pub cross_subscribers: usize,
    /// Directory holding the wasm guests of the `wasm-*` scenarios
    /// (fs_storage.wasm, tenant_isolation.wasm, fs_storage_0_1_0.wasm,
    /// stall_storage.wasm, dir_channel.wasm, py_channel.wasm). Default: run
    /// scripts/build-guests and use ${CARGO_TARGET_DIR:-target}/guests/out.
    #[arg(long)]
    pub guests: Option<PathBuf>,
    /// Records seeded into each storage of the wasm storage comparison.
    #[arg(long, default_value_t = 10_000)]
    pub wasm_records: usize,
    /// Store sizes (events) the `curves` scenario grows its store through.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub curve_sizes: Vec<usize>,
    /// Backlog each member count of the `consumer-group` scenario drains.
    #[arg(long, default_value_t = 2000)]
    pub group_events: usize,
    /// Client counts of the `wasm-provider`, `wasm-channel` and `wasm-pool` scenarios.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub wasm_clients: Vec<usize>,
    /// Record counts of the `search-index` scenario (one store each).
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    pub search_index_records: Vec<usize>,
    /// Record counts of the `wasm-search` scenario (one store each).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub wasm_search_records: Vec<usize>,
    /// Client counts of the `wasm-search` scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub wasm_search_clients: Vec<usize>,
    /// Milliseconds every call of the `wasm-pool` scenario's guest waits
    /// in the host (a backend's round trip).
    #[arg(long, default_value_t = 2)]
    pub wasm_pool_wait_ms: u64,
    /// Instances the `wasm-pool` scenario's guest asks for.
    #[arg(long, default_value_t = 8)]
    pub wasm_pool_instances: usize,
    /// PostgreSQL server of the `postgres` scenario (skipped if
    /// unreachable); the run uses a schema of its own there and drops it.
    #[arg(long, env = "STATEGATE_TEST_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres_url: String,
    /// MySQL/MariaDB server of the `mysql` scenario (skipped if
    /// unreachable); the run creates a database of its own there and drops it.
    #[arg(long, env = "STATEGATE_TEST_MYSQL_URL", default_value = "mysql://root@127.0.0.1:3306/test")]
    pub mysql_url: String,
    /// Records seeded into each storage of the `postgres` and `mysql`
    /// scenarios (and into their embedded sqlite comparison).
    #[arg(long, default_value_t = 10_000)]
    pub sql_records: usize,
    /// Events seeded likewise, for event Search.
    #[arg(long, default_value_t = 50_000)]
    pub sql_events: usize,
    /// Client counts of the `postgres` and `mysql` scenarios. Their targets
    /// are at 64; a count of 1 adds about 35 s per server to the run.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub sql_clients: Vec<usize>,
    /// The SQL providers' `writers` option (writer connections per
    /// gateway); the provider's default when not given.
    #[arg(long)]
    pub sql_writers: Option<u32>,
    /// The gateway binary of the `external` scenario; default: `stategate`
    /// beside this executable (target/release/stategate).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Where the `external` scenario's disk row keeps its data dir (not
    /// tmpfs: the row is what users run, fsync included).
    #[arg(long, default_value = "/var/tmp")]
    pub external_disk_dir: PathBuf,
    /// h2load connections of the `external` scenario.
    #[arg(long, default_value_t = 4)]
    pub h2load_conns: usize,
    /// h2load concurrent streams per connection of the `external` scenario.
    #[arg(long, default_value_t = 16)]
    pub h2load_streams: usize,
    /// Rounds of the `external` scenario's disk rows: each round measures
    /// the health check, `Get` and `Set` in turn, and a row reports the
    /// round with the median ratio (the tmpfs extras run one round).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub external_rounds: u32,
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

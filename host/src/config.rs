//! Configuration: the v0.5.0 environment variables, newer `STATEGATE_*`
//! variables, and a command-line flag for each (`stategate --help`).
//! Everything is checked at start; a bad value stops the start with a
//! message naming the variable. Before the flags are parsed, `env::prepare`
//! reads `.env` and drops empty variables, and booleans take Go's
//! spellings, as v0.5.0 read its environment.

use crate::auth::AuthConfig;
use crate::channel::ChannelSpec;
use crate::storage::StorageSpec;
use clap::Parser;
use std::path::PathBuf;

pub mod env;
use crate::model::flags::GoBool;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(name = "stategate", version, about = "Application state gateway: event-sourced state with live subscriptions over gRPC, REST and grpc-web")]
pub struct Config {
    /// Port for gRPC, REST and grpc-web; the ops endpoints (metrics, health)
    /// listen on port+1 unless --ops-port says otherwise.
    #[arg(long, env = "STATEGATE_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Port for /metrics, /healthz and /readyz (default: port+1).
    #[arg(long, env = "STATEGATE_OPS_PORT")]
    pub ops_port: Option<u16>,

    /// Address to listen on.
    #[arg(long, env = "STATEGATE_BIND", default_value = "0.0.0.0")]
    pub bind: String,

    /// Development mode: authentication off and listening on loopback only.
    #[arg(long, env = "STATEGATE_DEV", value_parser = GoBool)]
    pub dev: bool,

    /// Debug logs.
    #[arg(long, env = "STATEGATE_DEBUG", value_parser = GoBool)]
    pub debug: bool,

    /// Log format: auto (text on a terminal, JSON otherwise), json or text.
    #[arg(long, env = "STATEGATE_LOG_FORMAT", default_value = "auto", value_parser = ["auto", "json", "text"])]
    pub log_format: String,

    /// TLS certificate chain (PEM), for both ports.
    #[arg(long, env = "STATEGATE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "STATEGATE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Channel provider as JSON: {"name":"inmem"} (default),
    /// {"name":"redis","addr":"localhost:6379"}, {"name":"nats","addr":"localhost:4222"},
    /// {"name":"wasm","path":"x.wasm"}. Unknown keys are refused.
    #[arg(long, env = "STATEGATE_CHANNEL_PROVIDER", value_name = "JSON", value_parser = parse_channel_spec)]
    pub channel_provider: Option<ChannelSpec>,

    /// Storage provider as JSON: {"name":"sqlite","path":"data/stategate.db"}
    /// (default), {"name":"inmem"},
    /// {"name":"mongo","addr":"mongodb://localhost:27017","database":"stategate"},
    /// {"name":"wasm","path":"x.wasm"}. Unknown keys are refused.
    #[arg(long, env = "STATEGATE_STORAGE_PROVIDER", value_name = "JSON", value_parser = parse_storage_spec)]
    pub storage_provider: Option<StorageSpec>,

    /// Directory of the default sqlite database.
    #[arg(long, env = "STATEGATE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Largest request or response message, in bytes.
    #[arg(long, env = "STATEGATE_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Largest `limit` a search returns; larger requests are capped.
    #[arg(long, env = "STATEGATE_MAX_SEARCH_LIMIT", default_value_t = 1000)]
    pub max_search_limit: usize,

    /// How long an idempotency key guards against a repeated write, seconds.
    #[arg(long, env = "STATEGATE_IDEMPOTENCY_WINDOW_SECS", default_value_t = 86_400)]
    pub idempotency_window_secs: u64,

    /// Concurrent streams (calls) per HTTP/2 connection.
    #[arg(long, env = "STATEGATE_MAX_STREAMS_PER_CONNECTION", default_value_t = 1024)]
    pub max_streams_per_connection: u32,

    /// Origins allowed to call from a browser (comma-separated); empty
    /// allows any origin.
    #[arg(long, env = "STATEGATE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// How long shutdown waits for in-flight calls, seconds.
    #[arg(long, env = "STATEGATE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Concurrent event streams one instance serves.
    #[arg(long, env = "STATEGATE_MAX_STREAMS", default_value_t = 100_000)]
    pub max_streams: usize,

    /// Concurrent event streams of one client (token `sub`, else peer
    /// address) on one instance; 0 is unlimited.
    #[arg(long, env = "STATEGATE_MAX_STREAMS_PER_CALLER", default_value_t = 1_000)]
    pub max_streams_per_caller: usize,

    /// Requests per second per client (token `sub`, else peer address);
    /// 0 is unlimited.
    #[arg(long, env = "STATEGATE_RATE_LIMIT", default_value_t = 0.0)]
    pub rate_limit: f64,

    /// Requests a client may send at once above its rate (default: one
    /// second's worth).
    #[arg(long, env = "STATEGATE_RATE_BURST")]
    pub rate_burst: Option<f64>,

    /// Serve the web console at /console/ on the API port (its calls go
    /// through the API with the user's token); false leaves it out.
    #[arg(long, env = "STATEGATE_CONSOLE", default_value_t = true, action = clap::ArgAction::Set, value_parser = GoBool)]
    pub console: bool,

    /// A `.env` file read before the variables (default: `./.env` when it
    /// exists); variables already set win (`config::env`).
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,

    /// Authentication and authorization (`auth::AuthConfig`).
    #[command(flatten)]
    pub auth: AuthConfig,

    /// How often live streams check storage for events a broadcast lost, ms.
    #[arg(long, env = "STATEGATE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,

    // --- wasm ---
    /// Time limit of one wasm guest call, ms (a guest may set limits.timeout_ms).
    #[arg(long, env = "STATEGATE_WASM_CALL_TIMEOUT_MS", default_value_t = 2000)]
    pub wasm_call_timeout_ms: u64,

    /// Memory cap of one wasm guest instance (all its linear memories together),
    /// MiB (a guest may set limits.memory_mb).
    #[arg(long, env = "STATEGATE_WASM_MEMORY_MB", default_value_t = 256)]
    pub wasm_memory_mb: usize,

    /// Byte quota of a wasm guest's grants.dir, MiB (a guest may set
    /// limits.disk_mb).
    #[arg(long, env = "STATEGATE_WASM_DISK_MB", default_value_t = 1024)]
    pub wasm_disk_mb: u64,

    /// Wasm guest calls running at once, all guests together.
    #[arg(long, env = "STATEGATE_WASM_MAX_INSTANCES", default_value_t = 32)]
    pub wasm_max_instances: usize,

    /// Wasm guest calls running at once for one guest; 0 = a quarter of
    /// STATEGATE_WASM_MAX_INSTANCES (at least 1).
    #[arg(long, env = "STATEGATE_WASM_MAX_INSTANCES_PER_GUEST", default_value_t = 0)]
    pub wasm_max_instances_per_guest: usize,

    /// Cache of compiled wasm components (default: <data dir>/wasm-cache).
    #[arg(long, env = "STATEGATE_WASM_CACHE_DIR")]
    pub wasm_cache_dir: Option<PathBuf>,

    /// How often wasm guest files are checked for replacement, ms; 0 = never.
    #[arg(long, env = "STATEGATE_WASM_RELOAD_MS", default_value_t = 1000)]
    pub wasm_reload_ms: u64,

    // --- connections and exposure (docs/security.md) ---
    /// Address the ops port listens on (metrics, health, profiles):
    /// loopback unless set (in dev mode always loopback).
    #[arg(long, env = "STATEGATE_OPS_BIND", default_value = "127.0.0.1")]
    pub ops_bind: String,

    /// Bearer token required on /metrics and /debug/pprof of the ops port
    /// (/healthz and /readyz stay open); at least 16 characters.
    #[arg(long, env = "STATEGATE_OPS_TOKEN", hide_env_values = true)]
    pub ops_token: Option<String>,

    /// File holding the ops token (instead of STATEGATE_OPS_TOKEN).
    #[arg(long, env = "STATEGATE_OPS_TOKEN_FILE")]
    pub ops_token_file: Option<PathBuf>,

    /// Connections the API port holds at once; more are closed on accept
    /// (default: from the open-file limit, at most 10000).
    #[arg(long, env = "STATEGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Connections one peer address holds on the API port at once
    /// (default: a quarter of the connection limit).
    #[arg(long, env = "STATEGATE_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,

    /// Connections the ops port holds at once.
    #[arg(long, env = "STATEGATE_OPS_MAX_CONNECTIONS", default_value_t = 32)]
    pub ops_max_connections: usize,

    /// Time a new connection has to finish its TLS handshake and start
    /// talking HTTP (a whole request or the HTTP/2 preface), ms.
    #[arg(long, env = "STATEGATE_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// A connection with no call open for this long is closed (HTTP/2:
    /// GOAWAY), seconds; 0 = never.
    #[arg(long, env = "STATEGATE_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,

    /// How often an HTTP/2 connection is pinged, seconds; 0 = never.
    #[arg(long, env = "STATEGATE_HTTP2_KEEPALIVE_INTERVAL_SECS", default_value_t = 30)]
    pub http2_keepalive_interval_secs: u64,

    /// A ping not answered within this closes the connection, seconds.
    #[arg(long, env = "STATEGATE_HTTP2_KEEPALIVE_TIMEOUT_SECS", default_value_t = 20)]
    pub http2_keepalive_timeout_secs: u64,

    /// Streams that need no token (gRPC health Watch, reflection) open at
    /// once; they also count against STATEGATE_MAX_STREAMS.
    #[arg(long, env = "STATEGATE_MAX_PUBLIC_STREAMS", default_value_t = 1024)]
    pub max_public_streams: usize,

    /// Whether reflection and /openapi.json answer without a token (health
    /// always does); false requires a valid token for them.
    #[arg(long, env = "STATEGATE_PUBLIC_METADATA", default_value_t = true, action = clap::ArgAction::Set, value_parser = GoBool)]
    pub public_metadata: bool,

    /// Host names accepted besides loopback ones when authentication is off
    /// on a loopback address (the DNS-rebinding guard), comma-separated.
    #[arg(long, env = "STATEGATE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    // --- end connections and exposure ---
}

/// A configuration value that cannot work, named by its variable (defined
/// in `model` so that the sections `auth` and the providers read can use it
/// without importing this module).
pub use crate::model::ConfigError;

impl Config {
    /// A configuration with every default, as if no flag or variable was
    /// set (for tests and embedding).
    pub fn defaults() -> Self {
        Config::parse_from(["stategate"])
    }

    pub fn auth_enabled(&self) -> bool {
        !(self.auth.auth_disabled || self.dev)
    }

    /// The address to bind: loopback only in development mode.
    pub fn bind_host(&self) -> &str {
        if self.dev { "127.0.0.1" } else { &self.bind }
    }

    pub fn ops_port(&self) -> u16 {
        match self.ops_port {
            Some(p) => p,
            None if self.port == 0 => 0,
            None => self.port.saturating_add(1),
        }
    }

    /// The ops port's address: loopback in development mode.
    pub fn ops_bind_host(&self) -> &str {
        if self.dev { "127.0.0.1" } else { &self.ops_bind }
    }

    /// Whether the API listens on a loopback address only.
    pub fn binds_loopback(&self) -> bool {
        self.bind_host().parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
    }

    /// Checks what can be checked without I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes < 1024 {
            return Err(ConfigError::new("STATEGATE_MAX_MESSAGE_BYTES", "must be at least 1024"));
        }
        if self.max_search_limit == 0 {
            return Err(ConfigError::new("STATEGATE_MAX_SEARCH_LIMIT", "must be at least 1"));
        }
        if self.max_streams == 0 {
            return Err(ConfigError::new("STATEGATE_MAX_STREAMS", "must be at least 1"));
        }
        if !(self.rate_limit.is_finite() && self.rate_limit >= 0.0) {
            return Err(ConfigError::new("STATEGATE_RATE_LIMIT", "must be a number >= 0 (0 = unlimited)"));
        }
        if self.rate_burst.is_some_and(|b| !(b.is_finite() && b >= 1.0)) {
            return Err(ConfigError::new("STATEGATE_RATE_BURST", "must be a number >= 1"));
        }
        if self.port != 0 && self.ops_port() == self.port {
            return Err(ConfigError::new("STATEGATE_OPS_PORT", "must differ from STATEGATE_PORT"));
        }
        self.bind_host()
            .parse::<std::net::IpAddr>()
            .map_err(|e| ConfigError::new("STATEGATE_BIND", format!("{:?} is not an IP address: {e}", self.bind)))?;
        self.validate_exposure()?;
        Ok(())
    }

    /// The storage provider configured, or the embedded default.
    pub fn storage_spec(&self) -> StorageSpec {
        self.storage_provider.clone().unwrap_or_default()
    }

    /// The channel provider configured, or the in-process default.
    pub fn channel_spec(&self) -> ChannelSpec {
        self.channel_provider.clone().unwrap_or_default()
    }

    /// The wasm sandbox settings (`STATEGATE_WASM_*`).
    pub fn wasm_settings(&self) -> crate::wasm::Settings {
        crate::wasm::Settings {
            call_timeout: Duration::from_millis(self.wasm_call_timeout_ms.max(1)),
            memory_bytes: self.wasm_memory_mb.max(1) << 20,
            disk_bytes: self.wasm_disk_mb.max(1) << 20,
            max_instances: self.wasm_max_instances.max(1),
            max_instances_per_guest: match self.wasm_max_instances_per_guest {
                0 => self.wasm_max_instances.div_ceil(4).max(1),
                n => n.min(self.wasm_max_instances.max(1)),
            },
            cache_dir: Some(self.wasm_cache_dir.clone().unwrap_or_else(|| self.data_dir.join("wasm-cache"))),
            reload_interval: Duration::from_millis(self.wasm_reload_ms),
        }
    }
}

/// Ends the process on a command-line error as clap does, adding the
/// environment variable of the flag the error is about: clap names only
/// the flag, even for a value that came from the variable.
pub fn exit_on_flag_error(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue};
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.split_whitespace().next().map(str::to_owned),
        _ => None,
    };
    let Some((flag, variable)) = arg.and_then(|flag| variable_of(&flag).map(|v| (flag, v))) else { e.exit() };
    let _ = e.print();
    eprintln!("note: {flag} is also set by the environment variable {variable}");
    std::process::exit(e.exit_code())
}

/// The variable that sets `--flag`, if any (any subcommand's).
fn variable_of(flag: &str) -> Option<String> {
    use clap::CommandFactory;
    fn find(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|c| find(c, long)))
    }
    find(&crate::cli::Cli::command(), flag.strip_prefix("--")?)
}

/// Provider objects are parsed as the flags are read: a bad one stops the
/// start with clap's message, which names the flag, and ours, which names
/// the variable and the offending key.
fn parse_storage_spec(text: &str) -> Result<StorageSpec, String> {
    StorageSpec::parse(text).map_err(|e| e.to_string())
}

fn parse_channel_spec(text: &str) -> Result<ChannelSpec, String> {
    ChannelSpec::parse(text).map_err(|e| e.to_string())
}

// --- connections and exposure ---
impl Config {
    fn validate_exposure(&self) -> Result<(), ConfigError> {
        self.ops_bind_host()
            .parse::<std::net::IpAddr>()
            .map_err(|e| ConfigError::new("STATEGATE_OPS_BIND", format!("{:?} is not an IP address: {e}", self.ops_bind)))?;
        if self.ops_token.is_some() && self.ops_token_file.is_some() {
            return Err(ConfigError::new("STATEGATE_OPS_TOKEN_FILE", "set either STATEGATE_OPS_TOKEN or STATEGATE_OPS_TOKEN_FILE, not both"));
        }
        if let Some(token) = &self.ops_token {
            check_ops_token("STATEGATE_OPS_TOKEN", token)?;
        }
        for (variable, value) in [
            ("STATEGATE_MAX_CONNECTIONS", self.max_connections),
            ("STATEGATE_MAX_CONNECTIONS_PER_PEER", self.max_connections_per_peer),
            ("STATEGATE_OPS_MAX_CONNECTIONS", Some(self.ops_max_connections)),
            ("STATEGATE_MAX_PUBLIC_STREAMS", Some(self.max_public_streams)),
        ] {
            if value == Some(0) {
                return Err(ConfigError::new(variable, "must be at least 1"));
            }
        }
        if self.handshake_timeout_ms == 0 {
            return Err(ConfigError::new("STATEGATE_HANDSHAKE_TIMEOUT_MS", "must be at least 1"));
        }
        if self.http2_keepalive_interval_secs > 0 && self.http2_keepalive_timeout_secs == 0 {
            return Err(ConfigError::new("STATEGATE_HTTP2_KEEPALIVE_TIMEOUT_SECS", "must be at least 1 while pings are on"));
        }
        for host in &self.allowed_hosts {
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                return Err(ConfigError::new("STATEGATE_ALLOWED_HOSTS", format!("{host:?} is not a host name")));
            }
        }
        Ok(())
    }

    /// The ops token from STATEGATE_OPS_TOKEN or the file
    /// STATEGATE_OPS_TOKEN_FILE names (one trailing newline dropped).
    pub fn ops_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(token) = &self.ops_token {
            return Ok(Some(token.clone()));
        }
        let Some(path) = &self.ops_token_file else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("STATEGATE_OPS_TOKEN_FILE", format!("{}: {e}", path.display())))?;
        let token = text.strip_suffix('\n').unwrap_or(&text);
        let token = token.strip_suffix('\r').unwrap_or(token);
        check_ops_token("STATEGATE_OPS_TOKEN_FILE", token)?;
        Ok(Some(token.to_owned()))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// `None`: idle connections stay open.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }
}

/// A token short enough to guess, or one that cannot travel in a header, is
/// refused rather than mistaken for protection.
fn check_ops_token(variable: &'static str, token: &str) -> Result<(), ConfigError> {
    if token.len() < 16 {
        return Err(ConfigError::new(variable, "must be at least 16 characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(variable, "must be printable ASCII without spaces"));
    }
    Ok(())
}
// --- end connections and exposure ---

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(args: &[&str]) -> String {
        let mut argv = vec!["stategate"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap_err().to_string()
    }

    #[cfg(all(feature = "mongo", feature = "redis", feature = "nats", feature = "wasm"))]
    #[test]
    fn bad_provider_objects_name_their_variable_and_the_key() {
        let e = refusal(&["--storage-provider", r#"{"nam":1}"#]);
        assert!(e.contains("--storage-provider") && e.contains("STATEGATE_STORAGE_PROVIDER") && e.contains("\"name\""), "{e}");
        let e = refusal(&["--channel-provider", "redis"]);
        assert!(e.contains("STATEGATE_CHANNEL_PROVIDER") && e.contains("not valid JSON"), "{e}");
        // A typo'd key stops the start, naming it and the known ones (it
        // used to connect to localhost silently).
        let e = refusal(&["--channel-provider", r#"{"name":"redis","adr":"db:6379"}"#]);
        assert!(e.contains("unknown field `adr`") && e.contains("`addr`") && e.contains("`prefix`"), "{e}");
        let e = refusal(&["--storage-provider", r#"{"name":"mongo","addr":"mongodb://x","databse":"d"}"#]);
        assert!(e.contains("unknown field `databse`") && e.contains("`database`"), "{e}");
        let e = refusal(&["--storage-provider", r#"{"name":"sqlite","pth":"x.db"}"#]);
        assert!(e.contains("unknown field `pth`") && e.contains("`path`"), "{e}");
        let e = refusal(&["--storage-provider", r#"{"name":"inmem","path":"x"}"#]);
        assert!(e.contains("unknown field `path`"), "{e}");
        let e = refusal(&["--storage-provider", r#"{"name":"wasm","path":"x.wasm","grant":{}}"#]);
        assert!(e.contains("unknown field `grant`") && e.contains("`grants`"), "{e}");
        let e = refusal(&["--channel-provider", r#"{"name":"wasm","path":"x.wasm","poll":5}"#]);
        assert!(e.contains("unknown field `poll`") && e.contains("poll_ms"), "{e}");
        let e = refusal(&["--channel-provider", r#"{"name":"nats","user":"u"}"#]);
        assert!(e.contains("\"user\" and \"password\" go together"), "{e}");
        let e = refusal(&["--channel-provider", r#"{"name":"kafkaa"}"#]);
        assert!(e.contains("unknown provider \"kafkaa\"") && e.contains("redis"), "{e}");
        let e = refusal(&["--storage-provider", r#"{"name":"cassandra","addr":"x"}"#]);
        assert!(e.contains("not built in") && e.contains("wasm storage provider"), "{e}");
    }

    #[cfg(all(feature = "mongo", feature = "redis", feature = "nats", feature = "wasm"))]
    #[test]
    fn provider_objects_take_v050_keys_and_aliases() {
        let c = Config::parse_from([
            "stategate",
            "--channel-provider",
            r#"{"name":"redis","addr":"r:6379","user":"u","password":"p"}"#,
            "--storage-provider",
            r#"{"name":"memory"}"#,
        ]);
        match c.channel_spec() {
            ChannelSpec::Redis(r) => assert_eq!((r.addr.as_str(), r.username.as_deref()), ("r:6379", Some("u"))),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.storage_spec().name(), "inmem");
        let c = Config::parse_from([
            "stategate",
            "--channel-provider",
            r#"{"name":"nats","addr":"n:4222","client_cert_file":"c.pem","client_key_file":"k.pem"}"#,
        ]);
        match c.channel_spec() {
            ChannelSpec::Nats(n) => assert_eq!(n.cert_file.as_deref(), Some("c.pem")),
            other => panic!("{other:?}"),
        }
        assert_eq!(Config::defaults().storage_spec().name(), "sqlite");
    }

    /// Every key v0.5.0's providers read is accepted with its meaning (its
    /// provider map held strings only); a key it did not read is refused.
    #[cfg(all(feature = "mongo", feature = "redis", feature = "nats", feature = "wasm"))]
    #[test]
    fn every_v050_provider_key_is_accepted() {
        let channel = |json: &str| Config::parse_from(["stategate", "--channel-provider", json]).channel_spec();
        let storage = |json: &str| Config::parse_from(["stategate", "--storage-provider", json]).storage_spec();
        match channel(r#"{"name":"redis","addr":"r:6379","user":"u","password":"p","client_cert_file":"c.pem","client_key_file":"k.pem","tls_cert":"c.pem","tls_key":"k.pem"}"#) {
            ChannelSpec::Redis(r) => {
                assert_eq!((r.username.as_deref(), r.password.as_deref()), (Some("u"), Some("p")));
                assert_eq!(r.client_certificate().unwrap(), Some(("c.pem".into(), "k.pem".into())));
            }
            other => panic!("{other:?}"),
        }
        match channel(r#"{"name":"nats","addr":"n:4222","cluster":"test-cluster","client_cert_file":"c.pem","client_key_file":"k.pem"}"#) {
            ChannelSpec::Nats(n) => assert_eq!(n.client_certificate().unwrap(), Some(("c.pem".into(), "k.pem".into()))),
            other => panic!("{other:?}"),
        }
        match storage(r#"{"name":"mongo","database":"testing","addr":"mongodb://mongo:27017/testing","client_cert_file":"c.pem","client_key_file":"k.pem"}"#) {
            StorageSpec::Mongo(m) => assert_eq!((m.addr.as_str(), m.database.as_str(), m.client_cert_file.as_deref()), ("mongodb://mongo:27017/testing", "testing", Some("c.pem"))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(channel(r#"{"name":"inmem"}"#), ChannelSpec::Inmem(_)));

        let e = refusal(&["--channel-provider", r#"{"name":"redis","addr":"r:1","usr":"u"}"#]);
        assert!(e.contains("unknown field `usr`"), "{e}");
        let e = refusal(&["--channel-provider", r#"{"name":"redis","addr":"r:1","client_cert_file":"c.pem"}"#]);
        assert!(e.contains("go together"), "{e}");
        let e = refusal(&["--channel-provider", r#"{"name":"nats","client_cert_file":"a.pem","client_key_file":"k.pem","tls_cert":"b.pem","tls_key":"k.pem"}"#]);
        assert!(e.contains("tls_cert") && e.contains("same files"), "{e}");
        let e = refusal(&["--storage-provider", r#"{"name":"mongo","addr":"mongodb://x","client_key_file":"k.pem"}"#]);
        assert!(e.contains("go together"), "{e}");
        let e = refusal(&["--storage-provider", r#"{"name":"mongo","addr":"mongodb://x","cluster":"c"}"#]);
        assert!(e.contains("unknown field `cluster`"), "{e}");
    }

    /// A lean build (`--no-default-features`) refuses a provider it left
    /// out at start, naming the feature that builds it in.
    #[cfg(not(feature = "mongo"))]
    #[test]
    fn a_provider_left_out_names_its_feature() {
        let e = refusal(&["--storage-provider", r#"{"name":"mongo","addr":"mongodb://x","database":"d"}"#]);
        assert!(e.contains("STATEGATE_STORAGE_PROVIDER") && e.contains("rebuild with `--features mongo`"), "{e}");
    }

    #[test]
    fn booleans_take_go_spellings_and_flags_still_work() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            let c = Config::try_parse_from(["stategate", "--public-metadata", t]).unwrap();
            assert!(c.public_metadata, "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            let c = Config::try_parse_from(["stategate", "--public-metadata", f]).unwrap();
            assert!(!c.public_metadata, "{f}");
        }
        let e = refusal(&["--public-metadata", "yes"]);
        assert!(e.contains("STATEGATE_PUBLIC_METADATA") && e.contains("\"yes\" is not a boolean"), "{e}");
        let c = Config::parse_from(["stategate", "--dev", "--debug", "--auth-disabled"]);
        assert!(c.dev && c.debug && c.auth.auth_disabled);
        let c = Config::defaults();
        assert!(!c.dev && !c.debug && !c.auth.auth_disabled && c.public_metadata);
    }

    #[test]
    fn flags_lead_to_their_variables() {
        assert_eq!(variable_of("--port").as_deref(), Some("STATEGATE_PORT"));
        assert_eq!(variable_of("--addr").as_deref(), Some("STATEGATE_ADDR"));
        assert_eq!(variable_of("--env-file"), None);
    }

    #[test]
    fn bad_values_name_their_variable_and_flag() {
        let mut c = Config::defaults();
        c.bind = "localhost:1".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.variable, "STATEGATE_BIND");
        assert!(e.to_string().starts_with("STATEGATE_BIND (--bind): "), "{e}");
    }

    /// `ConfigError` names a variable's flag by the naming rule; every
    /// setting (the CLI's too) must follow it.
    #[test]
    fn every_flag_is_its_variable_renamed() {
        use clap::CommandFactory;
        fn check(cmd: &clap::Command, wrong: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                    let env = env.to_str().unwrap();
                    if crate::model::flag_of(env) != format!("--{long}") {
                        wrong.push(format!("{env} is --{long}"));
                    }
                }
            }
            cmd.get_subcommands().for_each(|c| check(c, wrong));
        }
        let mut wrong = vec![];
        check(&crate::cli::Cli::command(), &mut wrong);
        assert!(wrong.is_empty(), "add to model::error::FLAG_EXCEPTIONS: {wrong:?}");
    }

    #[test]
    fn connection_and_exposure_settings_are_checked() {
        let refused = |args: &[&str]| Config::parse_from([&["stategate"], args].concat()).validate().unwrap_err().variable;
        assert_eq!(refused(&["--ops-bind", "localhost"]), "STATEGATE_OPS_BIND");
        assert_eq!(refused(&["--ops-token", "short"]), "STATEGATE_OPS_TOKEN");
        assert_eq!(refused(&["--ops-token", "has a space in it, sixteen+"]), "STATEGATE_OPS_TOKEN");
        assert_eq!(refused(&["--ops-token", "0123456789abcdef", "--ops-token-file", "/x"]), "STATEGATE_OPS_TOKEN_FILE");
        assert_eq!(refused(&["--max-connections", "0"]), "STATEGATE_MAX_CONNECTIONS");
        assert_eq!(refused(&["--max-connections-per-peer", "0"]), "STATEGATE_MAX_CONNECTIONS_PER_PEER");
        assert_eq!(refused(&["--max-public-streams", "0"]), "STATEGATE_MAX_PUBLIC_STREAMS");
        assert_eq!(refused(&["--handshake-timeout-ms", "0"]), "STATEGATE_HANDSHAKE_TIMEOUT_MS");
        assert_eq!(refused(&["--allowed-hosts", "a/b"]), "STATEGATE_ALLOWED_HOSTS");

        let c = Config::defaults();
        assert_eq!(c.ops_bind_host(), "127.0.0.1", "the ops port is loopback unless set");
        assert!(c.public_metadata);
        assert_eq!(c.idle_timeout(), Some(Duration::from_secs(300)));
        let c = Config::parse_from(["stategate", "--dev", "--ops-bind", "0.0.0.0", "--public-metadata", "false", "--idle-timeout-secs", "0"]);
        assert_eq!(c.ops_bind_host(), "127.0.0.1", "dev mode keeps the ops port on loopback");
        assert!(!c.public_metadata);
        assert_eq!(c.idle_timeout(), None);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef-ops\n").unwrap();
        let c = Config::parse_from(["stategate", "--ops-token-file", file.to_str().unwrap()]);
        assert_eq!(c.ops_token().unwrap().as_deref(), Some("0123456789abcdef-ops"));
        std::fs::write(&file, "short\n").unwrap();
        assert_eq!(c.ops_token().unwrap_err().variable, "STATEGATE_OPS_TOKEN_FILE");
    }

    #[test]
    fn dev_mode_is_loopback_without_auth() {
        let c = Config::parse_from(["stategate", "--dev"]);
        assert!(!c.auth_enabled());
        assert_eq!(c.bind_host(), "127.0.0.1");
        assert_eq!(c.ops_port(), 8081);
    }
}

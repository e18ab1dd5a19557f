//! Configuration: the v0.5.0 environment variables, newer `STATEGATE_*`
//! variables, and a command-line flag for each (`stategate --help`).
//! Everything is checked at start; a bad value stops the start with a
//! message naming the variable.

use clap::Parser;
use std::path::PathBuf;
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
    #[arg(long, env = "STATEGATE_DEV")]
    pub dev: bool,

    /// Debug logs.
    #[arg(long, env = "STATEGATE_DEBUG")]
    pub debug: bool,

    /// Log format: json or text.
    #[arg(long, env = "STATEGATE_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,

    /// Disable authentication and authorization.
    #[arg(long, env = "STATEGATE_AUTH_DISABLED")]
    pub auth_disabled: bool,

    /// TLS certificate chain (PEM), for both ports.
    #[arg(long, env = "STATEGATE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "STATEGATE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Remote JSON Web Key Set used to verify JWT signatures.
    #[arg(long, env = "STATEGATE_JWKS_URI")]
    pub jwks_uri: Option<String>,

    /// Request policy: a base64-encoded Rego module (v0.5.0).
    #[arg(long, env = "STATEGATE_REQUEST_POLICY")]
    pub request_policy: Option<String>,

    /// Response policy: a base64-encoded Rego module (v0.5.0).
    #[arg(long, env = "STATEGATE_RESPONSE_POLICY")]
    pub response_policy: Option<String>,

    /// Channel provider as JSON: {"name":"inmem"} (default),
    /// {"name":"redis","addr":"localhost:6379"}, {"name":"nats","addr":"localhost:4222"}.
    #[arg(long, env = "STATEGATE_CHANNEL_PROVIDER")]
    pub channel_provider: Option<String>,

    /// Storage provider as JSON: {"name":"sqlite","path":"data/stategate.db"}
    /// (default), {"name":"inmem"},
    /// {"name":"mongo","addr":"mongodb://localhost:27017","database":"stategate"}.
    #[arg(long, env = "STATEGATE_STORAGE_PROVIDER")]
    pub storage_provider: Option<String>,

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

    /// Requests per second per client (token `sub`, else peer address);
    /// 0 is unlimited.
    #[arg(long, env = "STATEGATE_RATE_LIMIT", default_value_t = 0.0)]
    pub rate_limit: f64,

    /// Requests a client may send at once above its rate (default: one
    /// second's worth).
    #[arg(long, env = "STATEGATE_RATE_BURST")]
    pub rate_burst: Option<f64>,

    // --- auth ---
    /// Local JSON Web Key Set file whose keys verify JWT signatures.
    #[arg(long, env = "STATEGATE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// PEM public key files (RSA, EC P-256/P-384, Ed25519) that verify JWT
    /// signatures, comma-separated.
    #[arg(long, env = "STATEGATE_JWT_PUBLIC_KEY_FILES", value_delimiter = ',')]
    pub jwt_public_key_files: Vec<PathBuf>,

    /// HMAC secret (at least 32 bytes) for HS256/384/512 tokens; without it
    /// HS* tokens are refused.
    #[arg(long, env = "STATEGATE_JWT_HMAC_SECRET", hide_env_values = true)]
    pub jwt_hmac_secret: Option<String>,

    /// File holding the HMAC secret (instead of STATEGATE_JWT_HMAC_SECRET).
    #[arg(long, env = "STATEGATE_JWT_HMAC_SECRET_FILE")]
    pub jwt_hmac_secret_file: Option<PathBuf>,

    /// Accepted token issuers (`iss`), comma-separated; unset accepts any.
    #[arg(long, env = "STATEGATE_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuers: Vec<String>,

    /// Accepted token audiences (`aud`), comma-separated; unset accepts any.
    #[arg(long, env = "STATEGATE_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audiences: Vec<String>,

    /// Clock skew tolerated when checking `exp` and `nbf`, seconds.
    #[arg(long, env = "STATEGATE_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,

    /// Verified tokens remembered until they expire (0: verify every call).
    #[arg(long, env = "STATEGATE_JWT_CACHE_SIZE", default_value_t = 10_000)]
    pub jwt_cache_size: usize,

    /// How often the remote JWKS is fetched again, seconds.
    #[arg(long, env = "STATEGATE_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwks_refresh_secs: u64,

    /// Least time between two JWKS fetches triggered by tokens naming an
    /// unknown `kid`, seconds.
    #[arg(long, env = "STATEGATE_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    pub jwks_min_refresh_secs: u64,

    /// Request policy files or directories of `.rego` files, comma-separated
    /// (reloaded when they change).
    #[arg(long, env = "STATEGATE_REQUEST_POLICY_PATH", value_delimiter = ',')]
    pub request_policy_path: Vec<PathBuf>,

    /// Response policy files or directories of `.rego` files, comma-separated
    /// (reloaded when they change).
    #[arg(long, env = "STATEGATE_RESPONSE_POLICY_PATH", value_delimiter = ',')]
    pub response_policy_path: Vec<PathBuf>,

    /// How often policy files and local key files (JWKS, PEM) are checked
    /// for changes, milliseconds.
    #[arg(long, env = "STATEGATE_POLICY_RELOAD_MS", default_value_t = 1000)]
    pub policy_reload_ms: u64,
    // --- end auth ---

    /// How often live streams check storage for events a broadcast lost, ms.
    #[arg(long, env = "STATEGATE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,

    // --- wasm ---
    /// Per-tenant wasm policy hooks, run after the Rego policies: a JSON
    /// object {"<domain>"|"*": "hook.wasm" | {"path":…,"config":{…},"grants":{…}}}
    /// or a directory of <domain>.wasm files (_default.wasm for the rest).
    #[arg(long, env = "STATEGATE_POLICY_HOOKS")]
    pub policy_hooks: Option<String>,

    /// Time limit of one wasm guest call, ms (a guest may set limits.timeout_ms).
    #[arg(long, env = "STATEGATE_WASM_CALL_TIMEOUT_MS", default_value_t = 2000)]
    pub wasm_call_timeout_ms: u64,

    /// Memory cap of one wasm guest instance, MiB (a guest may set limits.memory_mb).
    #[arg(long, env = "STATEGATE_WASM_MEMORY_MB", default_value_t = 256)]
    pub wasm_memory_mb: usize,

    /// Wasm guest calls running at once, all guests together.
    #[arg(long, env = "STATEGATE_WASM_MAX_INSTANCES", default_value_t = 32)]
    pub wasm_max_instances: usize,

    /// Cache of compiled wasm components (default: <data dir>/wasm-cache).
    #[arg(long, env = "STATEGATE_WASM_CACHE_DIR")]
    pub wasm_cache_dir: Option<PathBuf>,

    /// How often wasm guest files are checked for replacement, ms; 0 = never.
    #[arg(long, env = "STATEGATE_WASM_RELOAD_MS", default_value_t = 1000)]
    pub wasm_reload_ms: u64,
}

/// A configuration value that cannot work, named by its variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            variable,
            problem: problem.into(),
        }
    }
}

impl Config {
    /// A configuration with every default, as if no flag or variable was
    /// set (for tests and embedding).
    pub fn defaults() -> Self {
        Config::parse_from(["stategate"])
    }

    pub fn auth_enabled(&self) -> bool {
        !(self.auth_disabled || self.dev)
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
        for (variable, value) in [
            ("STATEGATE_STORAGE_PROVIDER", &self.storage_provider),
            ("STATEGATE_CHANNEL_PROVIDER", &self.channel_provider),
        ] {
            if let Some(text) = value {
                provider_spec(variable, text)?;
            }
        }
        Ok(())
    }
}

/// Parses a provider JSON object and checks it names a provider.
pub fn provider_spec(variable: &'static str, text: &str) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ConfigError::new(variable, format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ConfigError::new(variable, "must be a JSON object such as {\"name\":\"inmem\"}"));
    };
    match map.get("name") {
        Some(serde_json::Value::String(n)) if !n.is_empty() => Ok(map),
        _ => Err(ConfigError::new(variable, "needs a \"name\" field naming the provider")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_variable() {
        let mut c = Config::defaults();
        c.storage_provider = Some("{\"nam\":1}".into());
        assert_eq!(c.validate().unwrap_err().variable, "STATEGATE_STORAGE_PROVIDER");
        let mut c = Config::defaults();
        c.channel_provider = Some("redis".into());
        assert_eq!(c.validate().unwrap_err().variable, "STATEGATE_CHANNEL_PROVIDER");
        let mut c = Config::defaults();
        c.bind = "localhost:1".into();
        assert_eq!(c.validate().unwrap_err().variable, "STATEGATE_BIND");
    }

    #[test]
    fn dev_mode_is_loopback_without_auth() {
        let c = Config::parse_from(["stategate", "--dev"]);
        assert!(!c.auth_enabled());
        assert_eq!(c.bind_host(), "127.0.0.1");
        assert_eq!(c.ops_port(), 8081);
    }
}

//! The authentication and authorization section of the configuration: the
//! v0.5.0 variables and the newer `STATEGATE_JWT_*` / policy ones, flattened
//! into the gateway's `Config`. `stack::build` reads only this.

use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Disable authentication and authorization.
    #[arg(long, env = "STATEGATE_AUTH_DISABLED", value_parser = crate::model::flags::GoBool)]
    pub auth_disabled: bool,

    /// Remote JSON Web Key Set used to verify JWT signatures.
    #[arg(long, env = "STATEGATE_JWKS_URI")]
    pub jwks_uri: Option<String>,

    /// Request policy: a base64-encoded Rego module (v0.5.0).
    #[arg(long, env = "STATEGATE_REQUEST_POLICY")]
    pub request_policy: Option<String>,

    /// Response policy: a base64-encoded Rego module (v0.5.0).
    #[arg(long, env = "STATEGATE_RESPONSE_POLICY")]
    pub response_policy: Option<String>,

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
    /// Per-tenant wasm policy hooks, run after the Rego policies: a JSON
    /// object {"<domain>"|"*": "hook.wasm" | {"path":…,"config":{…},"grants":{…}}}
    /// or a directory of <domain>.wasm files (_default.wasm for the rest).
    #[arg(long, env = "STATEGATE_POLICY_HOOKS")]
    pub policy_hooks: Option<String>,

}

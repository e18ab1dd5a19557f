//! The start-up summary: one log event, once both ports listen, saying
//! what this gateway is and where it keeps things: version, storage and
//! channel (addresses without passwords), authentication (off, or which
//! keys verify tokens), the policies and hooks loaded, both addresses and
//! the data dir. In text logs it reads as a paragraph; in JSON logs each
//! part is a field (`storage`, `auth`, `request_policy`, …), so a log
//! search or a test finds it without parsing prose.

use crate::auth::AuthConfig;
use crate::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What the summary names, each part as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub version: &'static str,
    pub storage: String,
    pub channel: String,
    pub auth: String,
    pub request_policy: String,
    pub response_policy: String,
    pub policy_hooks: String,
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub data_dir: String,
}

impl Summary {
    pub fn new(config: &Config, addr: SocketAddr, ops_addr: SocketAddr) -> Self {
        let storage = config.storage_spec();
        let channel = config.channel_spec();
        let enabled = config.auth_enabled();
        let policy = |inline: &Option<String>, paths: &[PathBuf], variable: &str, none: &str| {
            if !enabled {
                return "not applied (authentication is off)".to_owned();
            }
            let mut parts: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            if inline.is_some() {
                parts.push(format!("{variable} (inline)"));
            }
            if parts.is_empty() { none.to_owned() } else { parts.join(", ") }
        };
        let a = &config.auth;
        let hooks = a.policy_hooks.as_deref().map(str::trim).filter(|h| !h.is_empty());
        let refused = if hooks.is_some() { "none (the policy hooks decide)" } else { "none: every request is refused" };
        Summary {
            version: env!("CARGO_PKG_VERSION"),
            storage: format!("{} at {}", storage.name(), storage.location(&config.data_dir)),
            channel: format!("{} at {}", channel.name(), channel.location()),
            auth: auth(config, a),
            request_policy: policy(&a.request_policy, &a.request_policy_path, "STATEGATE_REQUEST_POLICY", refused),
            response_policy: policy(&a.response_policy, &a.response_policy_path, "STATEGATE_RESPONSE_POLICY", "none: responses are sent as they are"),
            policy_hooks: hooks.map_or_else(|| "none".to_owned(), describe_hooks),
            addr,
            ops_addr,
            data_dir: config.data_dir.display().to_string(),
        }
    }

    /// Logs it, as one event.
    pub fn log(&self) {
        tracing::info!(
            version = self.version,
            addr = %self.addr,
            ops_addr = %self.ops_addr,
            storage = %self.storage,
            channel = %self.channel,
            auth = %self.auth,
            request_policy = %self.request_policy,
            response_policy = %self.response_policy,
            policy_hooks = %self.policy_hooks,
            data_dir = %self.data_dir,
            "stategate {} is serving gRPC, REST and grpc-web on {}; ops endpoints (/healthz, /readyz, /metrics) on {}",
            self.version,
            self.addr,
            self.ops_addr,
        );
    }
}

/// Off (and why), or which keys verify tokens.
fn auth(config: &Config, a: &AuthConfig) -> String {
    if config.dev {
        return "disabled (--dev)".to_owned();
    }
    if a.auth_disabled {
        return "disabled (STATEGATE_AUTH_DISABLED)".to_owned();
    }
    let mut keys = Vec::new();
    if let Some(uri) = &a.jwks_uri {
        keys.push(format!("JWKS URL {}", crate::model::spec::redacted_address(uri)));
    }
    if let Some(file) = &a.jwks_file {
        keys.push(format!("JWKS file {}", file.display()));
    }
    for file in &a.jwt_public_key_files {
        keys.push(format!("PEM key file {}", file.display()));
    }
    if a.jwt_hmac_secret.is_some() {
        keys.push("HMAC secret (STATEGATE_JWT_HMAC_SECRET)".to_owned());
    }
    if let Some(file) = &a.jwt_hmac_secret_file {
        keys.push(format!("HMAC secret file {}", file.display()));
    }
    let mut out = format!("JWT verified with {}", keys.join(", "));
    if !a.jwt_issuers.is_empty() {
        out.push_str(&format!("; issuers {}", a.jwt_issuers.join(", ")));
    }
    if !a.jwt_audiences.is_empty() {
        out.push_str(&format!("; audiences {}", a.jwt_audiences.join(", ")));
    }
    out
}

/// `STATEGATE_POLICY_HOOKS` as `domain: path` pairs, or its directory.
fn describe_hooks(text: &str) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else {
        return format!("directory {text}");
    };
    map.iter()
        .map(|(domain, hook)| {
            let path = hook.as_str().or_else(|| hook.get("path").and_then(|p| p.as_str())).unwrap_or("?");
            format!("{domain}: {path}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn summary(args: &[&str]) -> Summary {
        let config = Config::parse_from([&["stategate"], args].concat());
        Summary::new(&config, "0.0.0.0:8080".parse().unwrap(), "127.0.0.1:8081".parse().unwrap())
    }

    #[test]
    fn names_every_part_without_secrets() {
        let s = summary(&[
            "--storage-provider",
            r#"{"name":"postgres","addr":"postgres://app:hunter2@db:5432/x"}"#,
            "--channel-provider",
            r#"{"name":"nats","addr":"nats://n:4222"}"#,
            "--jwks-uri",
            "https://idp/.well-known/jwks.json",
            "--jwt-hmac-secret",
            "0123456789abcdef0123456789abcdef",
            "--request-policy-path",
            "policies/tenant.rego",
            "--policy-hooks",
            r#"{"acme":"hooks/acme.wasm","*":{"path":"hooks/redact.wasm"}}"#,
        ]);
        assert_eq!(s.storage, "postgres at postgres://app:***@db:5432/x schema stategate");
        assert_eq!(s.channel, "nats at nats://n:4222");
        assert!(s.auth.contains("JWKS URL https://idp/") && s.auth.contains("HMAC secret (STATEGATE_JWT_HMAC_SECRET)"), "{}", s.auth);
        assert!(!format!("{s:?}").contains("hunter2") && !format!("{s:?}").contains("0123456789abcdef"));
        assert_eq!(s.request_policy, "policies/tenant.rego");
        assert_eq!(s.response_policy, "none: responses are sent as they are");
        assert_eq!(s.policy_hooks, "acme: hooks/acme.wasm, *: hooks/redact.wasm");

        let s = summary(&["--auth-disabled", "--data-dir", "/srv/sg"]);
        assert_eq!(s.auth, "disabled (STATEGATE_AUTH_DISABLED)");
        assert_eq!(s.storage, "sqlite at /srv/sg/stategate.db");
        assert_eq!(s.channel, "inmem at in-process (this instance only)");
        assert_eq!(s.request_policy, "not applied (authentication is off)");
        assert_eq!(s.data_dir, "/srv/sg");
    }
}

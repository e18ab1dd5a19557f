//! The chain the configuration asks for, behind the gateway's `Auth`
//! trait: a JWT verifier (when auth is on), optional request and response
//! Rego policies (when auth is on), and optional per-tenant wasm hooks
//! (always: a hook may be the only authorization a deployment has). Every
//! refusal is counted here, by stage and by its typed reason, so the
//! gateway only asks and never interprets an error.
//!
//! **Deny by default.** With authentication on and neither a request policy
//! nor a policy hook, every request is refused (`PERMISSION_DENIED`, the
//! message naming the variables to set), and the start logs a warning:
//! a verified token says who is calling, not what they may do. This is the
//! default v0.5.0 installed (`default allow = false`).
//!
//! **Responses.** Without a response policy, what an allowed request
//! returns goes out as it is: the request policy (or hook) is the gate and
//! a response policy is a filter on top. v0.5.0 installed deny-all for
//! responses too, so a v0.5.0 deployment that answered anything set both
//! policies, and it keeps both here with the same effect; only the
//! configuration v0.5.0 could not serve at all (a request policy alone:
//! every response refused) now answers what its request policy allows.

use super::hooks::PolicyHooks;
use super::jwks::{KeyConfig, KeyStore};
use super::jwt::{Verifier, VerifyConfig};
use super::rego::{Policy, Source};
use super::{Auth, AuthConfig, Metadata, NoAuth, PolicyInput};
use crate::model::{Claims, ConfigError, Denial, Error, Result};
use crate::telemetry::Metrics;
use crate::wasm::WasmRuntime;
use async_trait::async_trait;
use base64::Engine;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub struct AuthStack {
    /// `None` when authentication is off: callers have no claims.
    verifier: Option<Verifier>,
    /// Authentication on with neither a request policy nor a hook: every
    /// request is refused.
    deny_all: bool,
    request: Option<Arc<Policy>>,
    response: Option<Arc<Policy>>,
    hooks: Option<Arc<PolicyHooks>>,
    metrics: Arc<Metrics>,
}

impl AuthStack {
    /// The request authorization: the Rego request policy, then the
    /// tenant's hook; a refusal names the stage that refused.
    async fn request_chain(&self, input: &PolicyInput) -> std::result::Result<(), (&'static str, Error)> {
        if self.deny_all {
            return Err(("request", Error::denied(Denial::Policy, NO_POLICY)));
        }
        if let Some(p) = &self.request {
            p.check(input).map_err(|e| ("request", e))?;
        }
        if let Some(h) = &self.hooks {
            h.authorize_request(input).await.map_err(|e| ("request_hook", e))?;
        }
        Ok(())
    }

    /// Counts a refusal of `stage` in `policy_denials_total`.
    fn denied(&self, stage: &str, input: &PolicyInput, e: &Error) {
        let reason = match e {
            Error::PermissionDenied { reason, .. } => reason.label(),
            other => other.kind(),
        };
        self.metrics.policy_denials.with_label_values(&[stage, reason, &input.method]).inc();
    }
}

#[async_trait]
impl Auth for AuthStack {
    async fn authenticate(&self, method: &str, metadata: &Metadata) -> Result<Claims> {
        let Some(verifier) = &self.verifier else {
            return Ok(Claims::new());
        };
        verifier.authenticate(metadata).await.inspect_err(|e| {
            let reason = match e {
                Error::Unauthenticated { reason, .. } => reason.label(),
                other => other.kind(),
            };
            self.metrics.auth_failures.with_label_values(&[reason, method]).inc();
        })
    }

    async fn authorize_request(&self, input: &PolicyInput) -> Result<()> {
        self.request_chain(input).await.map_err(|(stage, e)| {
            self.denied(stage, input, &e);
            e
        })
    }

    async fn permits(&self, input: &PolicyInput) -> Result<bool> {
        match self.request_chain(input).await {
            Ok(()) => Ok(true),
            Err((_, Error::PermissionDenied { .. })) => Ok(false),
            Err((_, e)) => Err(e),
        }
    }

    async fn authorize_response(&self, input: &PolicyInput) -> Result<Option<Value>> {
        if let Some(p) = &self.response {
            p.check(input).inspect_err(|e| self.denied("response", input, e))?;
        }
        match &self.hooks {
            Some(h) => h.authorize_response(input).await.inspect_err(|e| self.denied("response_hook", input, e)),
            None => Ok(None),
        }
    }

    fn inspects_bodies(&self) -> bool {
        self.hooks.is_some() || [&self.request, &self.response].into_iter().flatten().any(|p| p.reads_body())
    }

    fn inspects_responses(&self) -> bool {
        self.response.is_some() || self.hooks.is_some()
    }
}

/// The refusal of every request when no policy says what is allowed.
pub const NO_POLICY: &str = "no request policy is configured, so every request is refused (deny by default): \
     set STATEGATE_REQUEST_POLICY (a base64 Rego module) or STATEGATE_REQUEST_POLICY_PATH (.rego files), \
     or STATEGATE_POLICY_HOOKS";

/// Builds the chain from the auth section of the configuration; `enabled`
/// is false when auth is off (`STATEGATE_AUTH_DISABLED`, `--dev`); policy
/// hooks run in `wasm`. Any
/// problem stops the start with a message naming the variable.
pub async fn build(config: &AuthConfig, enabled: bool, metrics: Arc<Metrics>, wasm: &WasmRuntime) -> anyhow::Result<Arc<dyn Auth>> {
    let hooks = PolicyHooks::from_config(config.policy_hooks.as_deref().unwrap_or(""), wasm)
        .await
        .map_err(|e| ConfigError::new("STATEGATE_POLICY_HOOKS", e.to_string()))?;
    let request = policy_sources("STATEGATE_REQUEST_POLICY", &config.request_policy, &config.request_policy_path)?;
    let response = policy_sources("STATEGATE_RESPONSE_POLICY", &config.response_policy, &config.response_policy_path)?;
    if !enabled {
        if !request.is_empty() || !response.is_empty() {
            tracing::warn!("authentication and authorization are disabled: the configured policies are not applied");
        }
        return Ok(match hooks {
            None => Arc::new(NoAuth),
            Some(hooks) => Arc::new(AuthStack {
                verifier: None,
                deny_all: false,
                request: None,
                response: None,
                hooks: Some(hooks),
                metrics,
            }),
        });
    }
    let hmac_secret = match (&config.jwt_hmac_secret, &config.jwt_hmac_secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "STATEGATE_JWT_HMAC_SECRET",
                "set either STATEGATE_JWT_HMAC_SECRET or STATEGATE_JWT_HMAC_SECRET_FILE, not both",
            )
            .into());
        }
        (Some(s), None) => Some(s.as_bytes().to_vec()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("STATEGATE_JWT_HMAC_SECRET_FILE", format!("cannot read {}: {e}", path.display()))
            })?;
            Some(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec())
        }
        (None, None) => None,
    };
    let keys = KeyConfig {
        jwks_uri: config.jwks_uri.clone().filter(|u| !u.is_empty()),
        jwks_file: config.jwks_file.clone(),
        public_key_files: config.jwt_public_key_files.clone(),
        hmac_secret,
        refresh: Duration::from_secs(config.jwks_refresh_secs),
        min_refresh: Duration::from_secs(config.jwks_min_refresh_secs),
        file_poll: Duration::from_millis(config.policy_reload_ms),
    };
    if keys.is_empty() {
        return Err(ConfigError::new(
            "STATEGATE_JWKS_URI",
            "authentication is enabled but no way to verify tokens is configured; set STATEGATE_JWKS_URI, \
             STATEGATE_JWKS_FILE, STATEGATE_JWT_PUBLIC_KEY_FILES or STATEGATE_JWT_HMAC_SECRET, \
             or set STATEGATE_AUTH_DISABLED=true (or run `stategate --dev`) for local development",
        )
        .into());
    }
    let store = KeyStore::open(&keys).await.map_err(|(var, e)| ConfigError::new(var, e))?;
    let verifier = Verifier::new(
        store,
        VerifyConfig {
            issuers: config.jwt_issuers.iter().filter(|s| !s.is_empty()).cloned().collect(),
            audiences: config.jwt_audiences.iter().filter(|s| !s.is_empty()).cloned().collect(),
            leeway_secs: config.jwt_leeway_secs,
            cache_size: config.jwt_cache_size,
        },
    );
    let reload = Duration::from_millis(config.policy_reload_ms);
    let open = |stage, var, sources: Vec<Source>| -> anyhow::Result<Option<Arc<Policy>>> {
        if sources.is_empty() {
            return Ok(None);
        }
        Policy::open(stage, sources, reload, metrics.clone())
            .map(Some)
            .map_err(|e| ConfigError::new(var, format!("the policy does not compile: {e}")).into())
    };
    let request = open("request", "STATEGATE_REQUEST_POLICY", request)?;
    let response = open("response", "STATEGATE_RESPONSE_POLICY", response)?;
    let deny_all = request.is_none() && hooks.is_none();
    if deny_all {
        tracing::warn!(
            "authentication is on but no request policy is configured: every request is refused \
             (PERMISSION_DENIED); set STATEGATE_REQUEST_POLICY or STATEGATE_REQUEST_POLICY_PATH \
             (examples/policies/ has some), or STATEGATE_POLICY_HOOKS"
        );
    } else if request.is_some() && response.is_none() {
        tracing::info!(
            "no response policy: what an allowed request returns is sent as it is \
             (set STATEGATE_RESPONSE_POLICY or STATEGATE_RESPONSE_POLICY_PATH to filter responses)"
        );
    }
    Ok(Arc::new(AuthStack {
        verifier: Some(verifier),
        deny_all,
        request,
        response,
        hooks,
        metrics,
    }))
}

/// The modules of one policy: the v0.5.0 base64 variable and the files.
fn policy_sources(var: &'static str, base64: &Option<String>, paths: &[std::path::PathBuf]) -> Result<Vec<Source>, ConfigError> {
    let mut out = Vec::new();
    if let Some(b64) = base64.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let bytes = engines
            .iter()
            .find_map(|e| e.decode(b64).ok())
            .ok_or_else(|| ConfigError::new(var, "is not valid base64 (it holds a base64-encoded Rego module)"))?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::new(var, "decodes to text that is not UTF-8"))?;
        out.push(Source::Inline {
            name: var.to_owned(),
            text,
        });
    }
    out.extend(paths.iter().cloned().map(Source::Path));
    Ok(out)
}

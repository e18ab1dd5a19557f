//! The authentication and policy stack the configuration asks for: a JWT
//! verifier (always, when auth is on) and optional request and response
//! Rego policies, behind the gateway's `Auth` trait.

use super::jwks::{KeyConfig, KeyStore};
use super::jwt::{Verifier, VerifyConfig};
use super::rego::{Policy, Source};
use super::{Auth, Metadata, NoAuth, PolicyInput};
use crate::config::{Config, ConfigError};
use crate::model::{Claims, Result};
use crate::telemetry::Metrics;
use async_trait::async_trait;
use base64::Engine;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub struct AuthStack {
    verifier: Verifier,
    request: Option<Arc<Policy>>,
    response: Option<Arc<Policy>>,
}

#[async_trait]
impl Auth for AuthStack {
    async fn authenticate(&self, metadata: &Metadata) -> Result<Claims> {
        self.verifier.authenticate(metadata).await
    }

    async fn authorize_request(&self, input: &PolicyInput) -> Result<()> {
        match &self.request {
            Some(p) => p.check(input),
            None => Ok(()),
        }
    }

    async fn authorize_response(&self, input: &PolicyInput) -> Result<Option<Value>> {
        match &self.response {
            Some(p) => p.check(input).map(|()| None),
            None => Ok(None),
        }
    }

    fn inspects_bodies(&self) -> bool {
        [&self.request, &self.response].into_iter().flatten().any(|p| p.reads_body())
    }

    fn inspects_responses(&self) -> bool {
        self.response.is_some()
    }
}

/// Builds the stack from the configuration; any problem stops the start
/// with a message naming the variable.
pub async fn build(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<dyn Auth>> {
    let request = policy_sources("STATEGATE_REQUEST_POLICY", &config.request_policy, &config.request_policy_path)?;
    let response = policy_sources("STATEGATE_RESPONSE_POLICY", &config.response_policy, &config.response_policy_path)?;
    if !config.auth_enabled() {
        if !request.is_empty() || !response.is_empty() {
            tracing::warn!("authentication and authorization are disabled: the configured policies are not applied");
        }
        return Ok(Arc::new(NoAuth));
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
    Ok(Arc::new(AuthStack {
        verifier,
        request,
        response,
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

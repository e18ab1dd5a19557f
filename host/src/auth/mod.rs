//! Authentication and authorization.
//!
//! The gateway asks an `Auth` three things for every call, whatever the
//! transport: who is calling (verify the token into claims), may they make
//! this request (request policies), and may they see this response (response
//! policies, once per message on a stream). Policies see the call as OPA
//! input (`PolicyInput`), exactly as stategate v0.5.0 built it.

pub mod jwks;
pub mod jwt;
pub mod reads;
pub mod rego;
pub mod stack;

use crate::model::{Claims, Error, Result};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Request headers (gRPC metadata), lower-case names, first value per name.
pub type Metadata = BTreeMap<String, String>;

/// The input document of a Rego policy (`input`), as v0.5.0 defined it, plus
/// `response` on response policies.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInput {
    pub claims: Claims,
    /// The full gRPC method path, e.g. `/stategate.StateService/Set`.
    pub method: String,
    pub metadata: Metadata,
    /// The request message as proto3 JSON (on a stream's response policy:
    /// the message being sent, as v0.5.0 did).
    pub body: Value,
    pub client_stream: bool,
    pub server_stream: bool,
    /// On a response policy: the response message as proto3 JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

#[async_trait]
pub trait Auth: Send + Sync + 'static {
    /// Verifies the caller's credentials (the `authorization` metadata) and
    /// returns the token's claims; `Unauthenticated` otherwise.
    async fn authenticate(&self, metadata: &Metadata) -> Result<Claims>;

    /// Request policies: `PermissionDenied` to refuse the call.
    async fn authorize_request(&self, input: &PolicyInput) -> Result<()>;

    /// Response policies, with `input.response` set. `Ok(None)` lets the
    /// response through unchanged; `Ok(Some(v))` replaces it with `v` (a hook
    /// that redacted fields); `PermissionDenied` withholds it.
    async fn authorize_response(&self, input: &PolicyInput) -> Result<Option<Value>>;

    /// Whether request or response policies look at `body` (and the other
    /// input). When not, the gateway skips serializing request bodies.
    fn inspects_bodies(&self) -> bool {
        true
    }

    /// Whether `authorize_response` can do anything; when not, the gateway
    /// skips it and the JSON form of every response.
    fn inspects_responses(&self) -> bool {
        self.inspects_bodies()
    }
}

/// The `reason` label of `auth_failures_total` for a refused credential.
pub fn failure_reason(e: &Error) -> &'static str {
    jwt::Reason::of(e).map(jwt::Reason::label).unwrap_or_else(|| e.kind())
}

/// The `reason` label of `policy_denials_total` for a refusal.
pub fn denial_reason(e: &Error) -> &'static str {
    match e {
        Error::PermissionDenied(m) if m.contains("could not be evaluated") => "evaluation_error",
        Error::PermissionDenied(_) => "denied",
        other => other.kind(),
    }
}

/// Auth disabled (`STATEGATE_AUTH_DISABLED`, `--dev`): no claims, no policies.
pub struct NoAuth;

#[async_trait]
impl Auth for NoAuth {
    async fn authenticate(&self, _metadata: &Metadata) -> Result<Claims> {
        Ok(Claims::new())
    }

    async fn authorize_request(&self, _input: &PolicyInput) -> Result<()> {
        Ok(())
    }

    async fn authorize_response(&self, _input: &PolicyInput) -> Result<Option<Value>> {
        Ok(None)
    }

    fn inspects_bodies(&self) -> bool {
        false
    }
}

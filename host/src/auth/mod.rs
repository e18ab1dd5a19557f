//! Authentication and authorization: the whole chain, in one place.
//!
//! The gateway asks an `Auth` three things for every call, whatever the
//! transport: who is calling (verify the token into claims), may they make
//! this request, and may they see this response (once per message on a
//! stream). Behind those questions the chain runs, in order: the JWT
//! verifier (`jwt`, keys from `jwks`), the Rego request or response policy
//! (`rego`), then the wasm policy hook of the tenant the call touches
//! (`hooks`). `stack` builds the chain from `AuthConfig` and counts every
//! refusal by its typed reason. Policies see the call as OPA input
//! (`PolicyInput`), exactly as stategate v0.5.0 built it.

pub mod config;
#[cfg_attr(not(feature = "wasm"), path = "hooks_off.rs")]
pub mod hooks;
pub mod jwks;
pub mod jwt;
pub mod input_scan;
pub mod rego;
pub mod stack;

pub use config::AuthConfig;

use crate::model::{Claims, Result};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// the message being sent, as v0.5.0 did). Shared, not copied: a
    /// stream's event is one value for all of its subscribers.
    pub body: Arc<Value>,
    pub client_stream: bool,
    pub server_stream: bool,
    /// On a response policy: the response message as proto3 JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Arc<Value>>,
    /// The domain (tenant) the call touches, which picks its policy hook:
    /// the request's domain, or on a response the domain of what is
    /// returned. Not part of the policy document.
    #[serde(skip)]
    pub domain: Option<String>,
}

#[async_trait]
pub trait Auth: Send + Sync + 'static {
    /// Verifies the caller's credentials (the `authorization` metadata) of
    /// a call to `method` and returns the token's claims; `Unauthenticated`
    /// otherwise. Reads headers only, so it runs before a body is decoded.
    async fn authenticate(&self, method: &str, metadata: &Metadata) -> Result<Claims>;

    /// Request policies, then the tenant's hook: `PermissionDenied` to
    /// refuse the call.
    async fn authorize_request(&self, input: &PolicyInput) -> Result<()>;

    /// Whether `authorize_request` would let `input` through, without
    /// counting a refusal: for a listing that shows only what the caller
    /// may reach (`CatalogService.List`). A refusal is `Ok(false)`; other
    /// failures (a hook that cannot answer) are errors.
    async fn permits(&self, input: &PolicyInput) -> Result<bool> {
        match self.authorize_request(input).await {
            Ok(()) => Ok(true),
            Err(crate::model::Error::PermissionDenied { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Response policies, then the tenant's hook, with `input.response` set.
    /// `Ok(None)` lets the response through unchanged; `Ok(Some(v))`
    /// replaces it with `v` (a hook that redacted fields); `PermissionDenied`
    /// withholds it.
    async fn authorize_response(&self, input: &PolicyInput) -> Result<Option<Value>>;

    /// Whether request or response policies look at `body` (and the other
    /// input). When not, the gateway skips serializing request bodies.
    fn inspects_bodies(&self) -> bool {
        true
    }

    /// Whether anything here reads request headers (a token check, a
    /// policy, a hook); when not, the gateway keeps only those it reads
    /// itself (`gateway::OWN_HEADERS`).
    fn reads_headers(&self) -> bool {
        true
    }

    /// Whether `authenticate` can refuse a call; when it cannot, a caller
    /// may skip asking (it answers no claims).
    fn authenticates(&self) -> bool {
        true
    }

    /// Whether `authorize_response` can do anything; when not, the gateway
    /// skips it and the JSON form of every response.
    fn inspects_responses(&self) -> bool {
        self.inspects_bodies()
    }
}

/// Auth disabled (`STATEGATE_AUTH_DISABLED`, `--dev`) and no hooks: no
/// claims, no policies.
pub struct NoAuth;

#[async_trait]
impl Auth for NoAuth {
    async fn authenticate(&self, _method: &str, _metadata: &Metadata) -> Result<Claims> {
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

    fn authenticates(&self) -> bool {
        false
    }

    fn reads_headers(&self) -> bool {
        false
    }
}

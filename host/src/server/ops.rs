//! The ops port: `/healthz` (the process is alive) and `/readyz` (storage
//! and channel answer), open to anyone who can reach the port because
//! orchestrators probe them without credentials; `/metrics` and
//! `/debug/pprof/profile`, which describe the workload and cost CPU, need
//! `Authorization: Bearer <STATEGATE_OPS_TOKEN>` when a token is set.
//! The port listens on STATEGATE_OPS_BIND (loopback by default).

use crate::gateway::Gateway;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Router, routing::get};
use http::{StatusCode, header};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The ops routes; `token` guards the ones that are not health checks.
pub fn routes(gateway: Arc<Gateway>, token: Option<String>) -> Router {
    let metrics = gateway.clone();
    let mut guarded = Router::new()
        .route("/metrics", get(move || async move { metrics.metrics().render() }))
        .route("/debug/pprof/profile", get(crate::profiling::cpu_profile));
    if let Some(token) = token {
        let expected: Arc<[u8]> = Sha256::digest(token.as_bytes()).to_vec().into();
        guarded = guarded.route_layer(middleware::from_fn(move |req: Request, next: Next| {
            let expected = expected.clone();
            async move { bearer(&expected, req, next).await }
        }));
    }
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || readyz(gateway.clone())))
        .merge(guarded)
}

/// Lets the request through when it carries the ops token. Digests are
/// compared, so the time taken says nothing about the token's characters.
async fn bearer(expected: &[u8], req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let problem = match presented {
        None => "this endpoint needs the ops token: Authorization: Bearer <STATEGATE_OPS_TOKEN>",
        Some(t) if Sha256::digest(t.trim().as_bytes()).as_slice() != expected => "the ops token is not valid",
        Some(_) => return next.run(req).await,
    };
    let mut response = error(StatusCode::UNAUTHORIZED, problem);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    response
}

/// The ops port's error body: `{"error": "<message>"}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn readyz(gateway: Arc<Gateway>) -> Response {
    let readiness = gateway.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

//! The transports: thin adapters from the wire to `gateway`. Each turns its
//! wire format into a gateway request, calls the same gateway function, and
//! turns the result (or the error, through `status`) back. No logic of their
//! own lives here.

pub mod body_memo;
pub mod browser;
pub mod codec;
pub mod console;
pub mod convert;
pub mod deadline;
pub mod encode;
pub mod fallback;
pub mod grpc;
pub mod grpc_web;
pub mod public;
pub mod rest;
pub mod stats;
pub mod status;
pub mod transcode;
pub mod values_request;

use crate::auth::Metadata;
use crate::model::Result;
use crate::telemetry::Metrics;
use http::HeaderMap;
use std::convert::Infallible;
use std::future::Future;
use std::time::Instant;

/// A service of this API's layers: an axum request in, a response out,
/// never an error (a refusal is a response). Each layer on the gRPC
/// services (`grpc::authenticate_first`, `public::guard_grpc`, `deadline`,
/// `fallback::known_methods`) wraps one and is one, so a call goes through
/// them as plain function calls, with no boxed service or router between
/// them; an axum `Router` is one too.
pub trait HttpService:
    tower::Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> HttpService for T where
    T: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Request headers (or gRPC metadata) as policy input: lower-case names,
/// first value of each, text values only. When nothing but the gateway
/// itself reads them (`Gateway::reads_headers`: auth off, no hooks), only
/// the ones it reads (`gateway::OWN_HEADERS`): the whole map cost a `Get`
/// 2.5k instructions (a `String` pair and a tree node per header).
pub fn metadata(gateway: &crate::gateway::Gateway, headers: &HeaderMap) -> Metadata {
    let all = gateway.reads_headers();
    let mut out = Metadata::new();
    for (name, value) in headers {
        if name.as_str().ends_with("-bin") || (!all && !crate::gateway::OWN_HEADERS.contains(&name.as_str())) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            out.entry(name.as_str().to_owned()).or_insert_with(|| v.to_owned());
        }
    }
    out
}

/// Runs a gateway call, recording `requests_total` and its latency.
pub async fn measured<T>(metrics: &Metrics, method: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
    let start = Instant::now();
    let out = call.await;
    record(metrics, method, out.as_ref().map(|_| ()), start.elapsed());
    out
}

/// Counts one finished call in `requests_total` and its latency.
pub fn record(
    metrics: &Metrics,
    method: &'static str,
    outcome: std::result::Result<(), &crate::model::Error>,
    elapsed: std::time::Duration,
) {
    let code = match outcome {
        Ok(()) => "OK",
        Err(e) => status::grpc_code_name(e),
    };
    metrics.call_ended(method, code, elapsed);
    tracing::debug!(method, code, micros = elapsed.as_micros() as u64, "call");
}

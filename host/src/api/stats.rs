//! `GET /api/stats`: the gateway's snapshot of this instance (live streams,
//! provider health, events appended, calls, errors and latency by method;
//! `gateway::stats`) as JSON, for the console's overview and charts. Admitted
//! like every call, with the method name `/stategate.AdminService/Stats`.

use super::{measured, metadata, rest::error_response};
use crate::gateway::{Gateway, stats::STATS};
use axum::{Json, Router, extract::State, http::HeaderMap, response::IntoResponse, response::Response, routing::get};
use std::sync::Arc;

pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new().route("/api/stats", get(stats)).with_state(gateway)
}

async fn stats(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    match measured(gw.metrics(), STATS, gw.stats(metadata(&gw, &headers))).await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => error_response(&e),
    }
}

//! `/debug/pprof/profile` on the ops port: a CPU profile of the running
//! gateway in pprof's protobuf format, as v0.5.0 offered through Go's
//! `net/http/pprof`, so `go tool pprof http://host:port+1/debug/pprof/profile`
//! and other pprof viewers keep working.
//!
//! The profiler samples every thread with `SIGPROF` (pprof-rs) for the
//! requested time, at most a minute. Only one profile runs at a time: a
//! second request gets `409 Conflict` instead of waiting, so one caller can
//! hold the profiler for at most a minute. Errors are JSON
//! (`{"error": "..."}`). When no profile is being taken the profiler costs
//! nothing.

use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use std::time::Duration;

/// Go's default profile length.
const DEFAULT_SECONDS: u64 = 30;
/// Longest profile served: long enough to see a steady load, short enough
/// that one caller cannot keep the profiler (and its sampling cost) busy.
pub const MAX_SECONDS: u64 = 60;
/// Samples per second: 99 rather than 100 so sampling does not run in
/// lockstep with periodic work (Go's default is 100).
const FREQUENCY: i32 = 99;

/// Frames from these libraries are the signal handler's own; dropping them
/// keeps the sampler from unwinding through libc's internals.
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];

/// One profile at a time: pprof-rs has one process-wide profiler.
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Deserialize)]
pub struct ProfileParams {
    /// As in Go's handler: the length of the profile, in whole seconds.
    seconds: Option<String>,
}

/// `GET /debug/pprof/profile?seconds=N`.
pub async fn cpu_profile(Query(params): Query<ProfileParams>) -> Response {
    let seconds = match parse_seconds(params.seconds.as_deref()) {
        Ok(s) => s,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let Ok(_running) = RUNNING.try_lock() else {
        return error(StatusCode::CONFLICT, "a CPU profile is already being taken; try again when it is done");
    };
    // The profiler guard is not `Send`, and building the report resolves
    // symbols (CPU-bound): the whole profile runs on a blocking thread.
    let taken = tokio::task::spawn_blocking(move || take(Duration::from_secs(seconds))).await;
    match taken {
        Ok(Ok(body)) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"profile\""),
            );
            response
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "CPU profile failed");
            error(StatusCode::SERVICE_UNAVAILABLE, format!("the CPU profile could not be taken: {e}"))
        }
        Err(e) => {
            tracing::error!(error = %e, "CPU profile task failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "the CPU profile could not be taken")
        }
    }
}

fn parse_seconds(raw: Option<&str>) -> Result<u64, String> {
    let Some(raw) = raw else { return Ok(DEFAULT_SECONDS) };
    match raw.trim().parse::<u64>() {
        Ok(s) if (1..=MAX_SECONDS).contains(&s) => Ok(s),
        _ => Err(format!("seconds must be a whole number from 1 to {MAX_SECONDS}, got {raw:?}")),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Samples for `length`, then encodes the profile as pprof protobuf.
fn take(length: Duration) -> Result<Vec<u8>, String> {
    use pprof::protos::Message;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(length);
    let report = guard.report().build().map_err(|e| e.to_string())?;
    drop(guard);
    let profile = report.pprof().map_err(|e| e.to_string())?;
    profile.write_to_bytes().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_to_go_and_are_bounded() {
        assert_eq!(parse_seconds(None), Ok(30));
        assert_eq!(parse_seconds(Some("5")), Ok(5));
        assert_eq!(parse_seconds(Some("60")), Ok(60));
        for bad in ["0", "61", "301", "-1", "1.5", "ten", ""] {
            let e = parse_seconds(Some(bad)).unwrap_err();
            assert!(e.contains("seconds must be"), "{bad}: {e}");
        }
    }
}

//! Shared helpers of the wasm_* tests: where the built guests are, and the
//! shared compile cache (so each test process does not recompile them).

use std::path::PathBuf;

/// `<target dir>/guests`, derived from this test binary's path
/// (`<target>/debug/deps/it-…`) unless `STATEGATE_TEST_GUESTS_DIR` is set.
fn guests_root() -> PathBuf {
    if let Ok(d) = std::env::var("STATEGATE_TEST_GUESTS_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).expect("target dir above the test binary").join("guests")
}

/// A built guest component; fails (does not skip) when missing, because
/// `scripts/test` builds them with `scripts/build-guests`.
pub fn guest(name: &str) -> PathBuf {
    let p = guests_root().join("out").join(format!("{name}.wasm"));
    assert!(p.is_file(), "{} is missing: run scripts/build-guests", p.display());
    p
}

pub fn cache_dir() -> PathBuf {
    guests_root().join("cache")
}

/// Sandbox settings for tests: the shared cache, fast reload checks.
pub fn settings() -> stategate::wasm::Settings {
    stategate::wasm::Settings {
        cache_dir: Some(cache_dir()),
        reload_interval: std::time::Duration::from_millis(50),
        ..stategate::wasm::Settings::default()
    }
}

/// A wasm runtime with the test [`settings`].
pub fn runtime() -> stategate::wasm::WasmRuntime {
    stategate::wasm::WasmRuntime::new(settings()).expect("a wasm runtime")
}

/// A wasm provider object (`{"name":"wasm",…}`) granted `dir`.
pub fn spec(path: &std::path::Path, dir: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({"name": "wasm", "path": path, "grants": {"dir": dir}})
        .as_object()
        .unwrap()
        .clone()
}

/// The storage provider a `{"name":…}` object describes.
pub fn storage_spec(object: &serde_json::Map<String, serde_json::Value>) -> stategate::storage::StorageSpec {
    stategate::storage::StorageSpec::parse(&serde_json::Value::Object(object.clone()).to_string()).expect("a valid storage object")
}

/// The channel provider a `{"name":…}` object describes.
pub fn channel_spec(object: &serde_json::Map<String, serde_json::Value>) -> stategate::channel::ChannelSpec {
    stategate::channel::ChannelSpec::parse(&serde_json::Value::Object(object.clone()).to_string()).expect("a valid channel object")
}

/// What the test authorization service received (the JSON bodies).
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A tenant's HTTP authorization service for the `webhook` guest, on a free
/// local port: POST /authorize with a policy input allows it, except a
/// request for key "forbidden" (denied with a reason) and key "broken"
/// (answered with HTTP 500); without `authorization: Bearer t0k` it answers
/// 401. POST /slow never answers. Returns its `host:port` and the bodies
/// it received.
pub async fn auth_service() -> (String, Received) {
    use axum::{Json, Router, extract::State, http::HeaderMap, http::StatusCode, routing::post};
    use serde_json::{Value, json};
    async fn authorize(State(seen): State<Received>, headers: HeaderMap, Json(input): Json<Value>) -> (StatusCode, Json<Value>) {
        seen.lock().unwrap().push(input.clone());
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t0k") {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "who are you?"})));
        }
        match input.pointer("/body/key").and_then(Value::as_str) {
            Some("forbidden") => (StatusCode::OK, Json(json!({"allow": false, "reason": "key is forbidden"}))),
            Some("broken") => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "boom"}))),
            _ => (StatusCode::OK, Json(json!({"allow": true}))),
        }
    }
    let received = Received::default();
    async fn slow() {
        std::future::pending::<()>().await
    }
    let app = Router::new().route("/authorize", post(authorize)).route("/slow", post(slow)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr.to_string(), received)
}

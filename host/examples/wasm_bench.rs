//! Cost of the wasm extension points relative to their native counterparts,
//! measured in the same run (not a test):
//! - storage: the wasm `fs_storage` guest vs native sqlite (both durable),
//!   called through the `Storage` trait;
//! - policy: a gRPC `Get` through a gateway with no hook, with the Rust
//!   redaction hook, and with the Python policy.
//!
//! `scripts/build-guests && cargo run -p stategate --example wasm_bench [--release]`
//! Guests are read from `$STATEGATE_BENCH_GUESTS` (default
//! `${CARGO_TARGET_DIR:-target}/guests/out`).

use serde_json::json;
use stategate::model::*;
use stategate::proto::{State as PState, StateRef, state_service_client::StateServiceClient};
use stategate::storage::DynStorage;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn guests() -> PathBuf {
    std::env::var("STATEGATE_BENCH_GUESTS").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("guests/out")
    })
}

fn put(i: usize) -> AppendRequest {
    AppendRequest {
        id: uuid::Uuid::new_v4().to_string(),
        record: RecordRef::parse("bench", "t", &format!("k{}", i % 100)).unwrap(),
        change: Change::Put(json!({"n": i, "name": "x".repeat(64)}).as_object().unwrap().clone().into()),
        expect: Expect::Any,
        kind: EventKind::Set,
        method: "/stategate.StateService/Set".into(),
        claims: Default::default(),
        time: stategate::model::now_nanos(),
        idempotency: None,
    }
}

async fn per_op<F, Fut>(n: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..n {
        f(i).await;
    }
    start.elapsed() / n as u32
}

async fn storage_bench(name: &str, s: DynStorage) -> (Duration, Duration, Duration) {
    let append = per_op(300, |i| {
        let s = s.clone();
        async move {
            s.append(put(i)).await.unwrap();
        }
    })
    .await;
    let get = per_op(3000, |i| {
        let s = s.clone();
        async move {
            s.get(&RecordRef::parse("bench", "t", &format!("k{}", i % 100)).unwrap()).await.unwrap().unwrap();
        }
    })
    .await;
    let q = StateQuery {
        domain: "bench".into(),
        ty: "t".into(),
        filter: query::Filter::parse("q", r#"{"n": {"$gte": 250}}"#).unwrap(),
        sort: None,
        limit: 10,
        offset: 0,
    };
    let search = per_op(300, |_| {
        let (s, q) = (s.clone(), q.clone());
        async move {
            assert!(!s.search_states(&q).await.unwrap().is_empty());
        }
    })
    .await;
    println!("  {name:<14} append {append:>10.1?}   get {get:>10.1?}   search {search:>10.1?}");
    (append, get, search)
}

async fn gateway(hooks: Option<serde_json::Value>, dir: &std::path::Path) -> stategate::server::Running {
    let mut c = stategate::config::Config::defaults();
    c.dev = true;
    c.port = 0;
    c.ops_port = Some(0);
    c.data_dir = dir.to_path_buf();
    c.log_format = "text".into();
    c.wasm_cache_dir = Some(guests().join("../cache"));
    c.auth.policy_hooks = hooks.map(|h| h.to_string());
    stategate::server::start(c).await.unwrap()
}

async fn policy_bench(name: &str, hooks: Option<serde_json::Value>) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(hooks, dir.path()).await;
    let mut client = StateServiceClient::connect(format!("http://{}", gw.addr)).await.unwrap();
    let values = stategate::api::convert::json_to_struct(json!({"n": 1, "secret": "s"}).as_object().unwrap().clone());
    client
        .set(PState { domain: "bench".into(), r#type: "t".into(), key: "k".into(), values: Some(values), ..Default::default() })
        .await
        .unwrap();
    let r = StateRef { domain: "bench".into(), r#type: "t".into(), key: "k".into(), ..Default::default() };
    for _ in 0..20 {
        client.get(r.clone()).await.unwrap();
    }
    let t = per_op(1000, |_| {
        let (mut c, r) = (client.clone(), r.clone());
        async move {
            c.get(r).await.unwrap();
        }
    })
    .await;
    println!("  {name:<22} Get {t:>10.1?}");
    gw.shutdown().await;
    t
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let g = guests();
    let profile = if cfg!(debug_assertions) { "debug build (wasmtime/cranelift at opt-level 2)" } else { "release build" };
    println!("wasm_bench: {profile}, guests from {}", g.display());
    let runtime = stategate::wasm::WasmRuntime::new(stategate::wasm::Settings {
        cache_dir: Some(g.join("../cache")),
        ..Default::default()
    })
    .unwrap();

    println!("storage (per operation):");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = stategate::storage::StorageSpec::default().open(dir.path(), &runtime).await.unwrap();
    let native = storage_bench("sqlite", sqlite).await;
    let spec = json!({"name": "wasm", "path": g.join("fs_storage.wasm"), "grants": {"dir": dir.path().join("fs")}});
    let wasm = stategate::storage::StorageSpec::parse(&spec.to_string()).unwrap().open(dir.path(), &runtime).await.unwrap();
    let w = storage_bench("wasm fs_storage", wasm).await;
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "  ratio wasm/native: append {:.2}x, get {:.2}x, search {:.2}x",
        ratio(w.0, native.0),
        ratio(w.1, native.1),
        ratio(w.2, native.2)
    );

    println!("policy hook call alone (warm instances reused):");
    let input = stategate::auth::PolicyInput {
        claims: Default::default(),
        method: "/stategate.StateService/Get".into(),
        metadata: Default::default(),
        body: json!({"domain": "bench", "type": "t", "key": "k"}).into(),
        client_stream: false,
        server_stream: false,
        response: None,
        domain: Some("bench".into()),
    };
    for (name, file) in [("rust redact", "redact.wasm"), ("python", "python_readonly.wasm")] {
        let spec = json!({"*": {"path": g.join(file), "limits": {"timeout_ms": 30000}}});
        let hooks = stategate::auth::hooks::PolicyHooks::from_config(&spec.to_string(), &runtime).await.unwrap().unwrap();
        hooks.authorize_request(&input).await.unwrap();
        let t = per_op(300, |_| {
            let (h, i) = (hooks.clone(), input.clone());
            async move { h.authorize_request(&i).await.unwrap() }
        })
        .await;
        println!("  {name:<14} authorize-request {t:>10.1?}");
    }

    println!("policy (gRPC Get through a gateway, sequential):");
    let none = policy_bench("no hook", None).await;
    let rust = policy_bench("rust redact hook", Some(json!({"*": {"path": g.join("redact.wasm")}}))).await;
    let py = policy_bench("python policy hook", Some(json!({"*": {"path": g.join("python_readonly.wasm"), "config": {"writers": "*"}, "limits": {"timeout_ms": 30000}}}))).await;
    println!(
        "  ratio vs no hook: rust {:.2}x (+{:.1?}/call), python {:.2}x (+{:.1?}/call)",
        ratio(rust, none),
        rust.saturating_sub(none),
        ratio(py, none),
        py.saturating_sub(none)
    );
}

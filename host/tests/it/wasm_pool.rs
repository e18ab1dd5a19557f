//! A provider's calls run side by side only when the guest says they may
//! (`max-instances`, or the guest object's `instances`), on a pool bounded
//! by the per-guest instance limit; a guest that says nothing has one
//! instance and one call at a time.
//!
//! The test guest (guest-providers/testing/stall-storage) answers `get`
//! with the number of `get` calls its instance has served, and a `get` of
//! `/data/<gate>` marks `<gate>.in` and waits inside the guest until the
//! test creates `<gate>.go`: so a test can hold one call inside an instance and see whether another
//! call gets a second instance (it answers 1) or waits for the first one
//! (it answers 2).

use crate::wasm_support::{guest, runtime};
use serde_json::{Value, json};
use stategate::model::RecordRef;
use stategate::storage::Storage;
use stategate::storage::wasm::WasmStorage;
use stategate::wasm::GuestConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Long enough for nothing here to hit it.
const GUARD: Duration = Duration::from_secs(30);

async fn stall(dir: &Path, object: Value) -> WasmStorage {
    let mut object = object.as_object().unwrap().clone();
    object.insert("path".into(), json!(guest("stall_storage")));
    object.insert("grants".into(), json!({"dir": dir}));
    object.insert("limits".into(), json!({"timeout_ms": 60_000}));
    let config: GuestConfig = serde_json::from_value(Value::Object(object)).unwrap();
    WasmStorage::open(&config, &runtime()).await.expect("stall-storage opens")
}

/// The `calls` count a `get` of `key` answers.
async fn calls(s: &WasmStorage, key: &str) -> u64 {
    let r = RecordRef::parse("d", "t", key).unwrap();
    let state = tokio::time::timeout(GUARD, s.get(&r)).await.expect("get ends").unwrap().expect("a state");
    state.values["calls"].as_u64().unwrap()
}

/// A gate in the guest's directory: a `get` of its key waits inside the
/// instance until the test opens it.
struct Gate {
    host_path: PathBuf,
}

impl Gate {
    fn new(dir: &Path, name: &str) -> Gate {
        Gate { host_path: dir.join(name) }
    }

    fn key(&self) -> String {
        format!("/data/{}", self.host_path.file_name().unwrap().to_string_lossy())
    }

    /// Returns once a `get` of the key is inside the instance.
    async fn entered(&self) {
        let inside = self.host_path.with_extension("in");
        tokio::time::timeout(GUARD, async {
            while !inside.exists() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the call enters the guest");
    }

    /// Lets the held call finish.
    fn open(&self) {
        std::fs::write(self.host_path.with_extension("go"), b"").unwrap();
    }
}

async fn held_call_and_another(s: WasmStorage, dir: &Path) -> (u64, u64) {
    let s = std::sync::Arc::new(s);
    let gate = Gate::new(dir, "hold");
    let held = tokio::spawn({
        let (s, key) = (s.clone(), gate.key());
        async move { calls(&s, &key).await }
    });
    gate.entered().await;
    let other = tokio::spawn({
        let s = s.clone();
        async move { calls(&s, "other").await }
    });
    // With a pool, the other call is served while the first is held; one
    // instance cannot serve it before the first call is over.
    if s.instances() > 1 {
        let n = tokio::time::timeout(GUARD, other).await.expect("served meanwhile").unwrap();
        assert!(!held.is_finished(), "the first call is still held");
        gate.open();
        (held.await.unwrap(), n)
    } else {
        gate.open();
        let first = held.await.unwrap();
        (first, other.await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_says_nothing_runs_one_call_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = stall(dir.path(), json!({})).await;
    assert_eq!(s.instances(), 1);
    // The other call waited, then ran on the same instance.
    assert_eq!(held_call_and_another(s, dir.path()).await, (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_says_so_runs_calls_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let s = stall(dir.path(), json!({"config": {"max_instances": 4}})).await;
    assert_eq!(s.instances(), 4);
    // Each call ran on an instance of its own.
    assert_eq!(held_call_and_another(s, dir.path()).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_object_overrides_what_the_guest_says() {
    let dir = tempfile::tempdir().unwrap();
    let s = stall(dir.path(), json!({"instances": 3})).await;
    assert_eq!(s.instances(), 3);
    assert_eq!(held_call_and_another(s, dir.path()).await, (1, 1));
    let dir = tempfile::tempdir().unwrap();
    let s = stall(dir.path(), json!({"instances": 1, "config": {"max_instances": 4}})).await;
    assert_eq!(s.instances(), 1);
    assert_eq!(held_call_and_another(s, dir.path()).await, (1, 2));
}

/// The pool is bounded by the per-guest instance limit, whatever the guest
/// asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_bounded_by_the_per_guest_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = stall(dir.path(), json!({"config": {"max_instances": 1000}})).await;
    assert_eq!(s.instances(), stategate::wasm::Settings::default().max_instances_per_guest);
}

/// A policy hook takes no `instances` (its calls each lease an instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_refuses_instances() {
    let hooks = json!({"d": {"path": guest("redact"), "instances": 2}}).to_string();
    let err = match stategate::auth::hooks::PolicyHooks::from_config(&hooks, &runtime()).await {
        Ok(_) => panic!("instances on a hook is refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("`instances` is for providers"), "{err}");
}

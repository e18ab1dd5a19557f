//! The compile cache holds native code the host runs: a guest may not be
//! granted a directory that reaches it, two guests may not share a granted
//! directory, and an entry the cache did not write for that very file is
//! not loaded. Compiled or read from the cache, a component comes with its
//! memory images built.

use crate::wasm_support::{guest, settings};
use serde_json::json;
use stategate::auth::PolicyInput;
use stategate::auth::hooks::PolicyHooks;
use stategate::wasm::{Guest, GuestConfig, PolicyPre, Settings, WasmRuntime};

fn sha256(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

async fn hooks(runtime: &WasmRuntime, path: &std::path::Path) -> std::sync::Arc<PolicyHooks> {
    PolicyHooks::from_config(&json!({"*": path}).to_string(), runtime).await.unwrap().unwrap()
}

/// A guest able to write into the cache could plant native code under
/// another guest's hash. The plant here is the worst case short of the
/// key: another guest's own entry, compiled by this very cache (valid code
/// for this engine, signed with this cache's key), renamed to the
/// tenant-isolation hook's hash. Loaded again (a restart), the hook must
/// still be itself: the plant is refused and the file compiled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_cache_entry_is_not_loaded() {
    let cache = tempfile::tempdir().unwrap();
    let settings = Settings {
        cache_dir: Some(cache.path().to_owned()),
        ..settings()
    };
    // misbehave without a mode allows every request.
    let (allow_all, isolation) = (guest("misbehave"), guest("tenant_isolation"));
    hooks(&WasmRuntime::new(settings.clone()).unwrap(), &allow_all).await;
    let (from, to) = (sha256(&allow_all), sha256(&isolation));
    let mut planted = 0;
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(rest) = name.strip_prefix(&from) {
            std::fs::copy(cache.path().join(&name), cache.path().join(format!("{to}{rest}"))).unwrap();
            planted += 1;
        }
    }
    assert!(planted > 0, "the first load wrote a cache entry");

    let isolation = hooks(&WasmRuntime::new(settings).unwrap(), &isolation).await;
    let input = PolicyInput {
        claims: Default::default(),
        method: "/stategate.StateService/Set".into(),
        metadata: Default::default(),
        body: json!({"domain": "acme", "type": "t", "key": "k"}).into(),
        client_stream: false,
        server_stream: false,
        response: None,
        domain: Some("acme".into()),
    };
    let err = isolation.authorize_request(&input).await.expect_err("tenant isolation denies a caller without a tenant");
    assert!(err.to_string().contains("no tenant claim"), "the hook is itself, not the planted code: {err}");
}

/// A `grants.dir` that contains the cache directory or lies inside it, or
/// that overlaps another guest's, stops the start naming the problem.
/// With the default cache directory (`<data dir>/wasm-cache`), granting the
/// data directory itself is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_cannot_reach_the_cache_or_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let redact = guest("redact");
    let data = dir.path().join("data");
    for (hooks, cache_dir, says) in [
        (json!({"d": {"path": redact, "grants": {"dir": dir.path()}}}), Some(&cache), "contains the wasm compile cache"),
        (json!({"d": {"path": redact, "grants": {"dir": cache.join("x")}}}), Some(&cache), "lies inside the wasm compile cache"),
        (json!({"d": {"path": redact, "grants": {"dir": data}}}), None, "contains the wasm compile cache"),
        (
            json!({"a": {"path": redact, "grants": {"dir": dir.path().join("shared")}},
                   "b": {"path": redact, "grants": {"dir": dir.path().join("shared/b")}}}),
            Some(&cache),
            "guests may not share files",
        ),
    ] {
        let mut config = crate::harness::dev_config(&data);
        config.auth.policy_hooks = Some(hooks.to_string());
        config.wasm_cache_dir = cache_dir.cloned();
        let err = stategate::server::start(config).await.err().expect("start fails").to_string();
        assert!(err.contains("STATEGATE_POLICY_HOOKS") && err.contains(says), "{hooks}: {err}");
    }
}

/// The memfds wasmtime holds memory images in, open in this process (each
/// test runs in a process of its own).
fn memory_images() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|link| link.to_string_lossy().starts_with("/memfd:wasm-memory-image"))
        .count()
}

/// A guest's memory images are built when it loads, compiled or read from
/// the cache, and not by its first instance: building one can meet the
/// kernel's refusal to seal it, which `wasm::image` tries again, and only a
/// load does that.
#[test]
fn memory_images_are_built_at_load() {
    let cache = tempfile::tempdir().unwrap();
    let settings = Settings {
        cache_dir: Some(cache.path().to_owned()),
        ..settings()
    };
    for how in ["compiled", "read from the cache"] {
        let runtime = WasmRuntime::new(settings.clone()).unwrap();
        let before = memory_images();
        let spec = GuestConfig::at(guest("redact"), "redact").spec(runtime.settings());
        let loaded = Guest::<PolicyPre>::load(&runtime, spec).unwrap();
        assert!(memory_images() > before, "{how}: no memory image built at load");
        drop(loaded);
    }
}

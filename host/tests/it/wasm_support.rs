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
pub fn configure() {
    stategate::wasm::configure(stategate::wasm::Settings {
        cache_dir: Some(cache_dir()),
        reload_interval: std::time::Duration::from_millis(50),
        ..stategate::wasm::Settings::default()
    });
}

/// A provider spec object for `storage::open` / `channel::open`.
pub fn spec(path: &std::path::Path, dir: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({"name": "wasm", "path": path, "grants": {"dir": dir}})
        .as_object()
        .unwrap()
        .clone()
}

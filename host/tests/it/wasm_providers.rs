//! The storage and channel conformance suites against the wasm guest
//! providers (guest-providers/), plus durability across restarts and two
//! gateways sharing the directory channel.

use crate::wasm_support::{channel_spec, guest, runtime, spec, storage_spec};
use stategate::channel::DynChannel;
use stategate::storage::DynStorage;

async fn fs_storage(dir: &std::path::Path) -> DynStorage {
    storage_spec(&spec(&guest("fs_storage"), dir)).open(dir, &runtime()).await.expect("wasm storage opens")
}

async fn dir_channel(dir: &std::path::Path) -> DynChannel {
    channel_spec(&spec(&guest("dir_channel"), dir)).open(&runtime()).await.expect("wasm channel opens")
}

/// The Python channel guest (guest-providers/py-channel, componentize-py).
/// Its instance starts CPython, so its calls get a generous time limit.
async fn py_channel(dir: &std::path::Path) -> DynChannel {
    let mut provider = spec(&guest("py_channel"), dir);
    provider.insert("limits".into(), serde_json::json!({"timeout_ms": 30000}));
    channel_spec(&provider).open(&runtime()).await.expect("python wasm channel opens")
}

storage_conformance!(wasm_fs_storage, async {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(fs_storage(&dir).await)
});

channel_conformance!(wasm_dir_channel, async {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(dir_channel(&dir).await)
});

channel_conformance!(wasm_py_channel, async {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(py_channel(&dir).await)
});

/// The Rust and the Python directory channels write the same format: on
/// one directory, each receives what the other publishes, whole and in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_directory_channels_interoperate() {
    use crate::channel_conformance::event;
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let rust = dir_channel(dir.path()).await;
    // A second guest may not be granted the same directory in one runtime
    // (grants must not overlap), so the Python one gets a runtime of its
    // own, as a second gateway would.
    let python = py_channel(dir.path()).await;
    let d = crate::storage_conformance::unique_domain();
    let topic = stategate::model::Topic { domain: Some(d.clone()), ty: None };
    let mut at_rust = rust.subscribe(&topic).await.unwrap();
    let mut at_python = python.subscribe(&topic).await.unwrap();
    let from_rust: Vec<_> = (1..=3).map(|v| event(&d, "r", "k", v)).collect();
    let from_python: Vec<_> = (1..=3).map(|v| event(&d, "p", "k", v)).collect();
    for (a, b) in from_rust.iter().zip(&from_python) {
        rust.publish(a).await.unwrap();
        python.publish(b).await.unwrap();
    }
    let wait = std::time::Duration::from_secs(30);
    for (sub, who) in [(&mut at_rust, "rust"), (&mut at_python, "python")] {
        let mut got = Vec::new();
        while got.len() < 6 {
            let e = tokio::time::timeout(wait, sub.next()).await.unwrap_or_else(|_| panic!("{who}: an event in time")).unwrap().unwrap();
            got.push(e);
        }
        for sent in [&from_rust, &from_python] {
            let ty = &sent[0].record.ty;
            let seen: Vec<_> = got.iter().filter(|e| &e.record.ty == ty).cloned().collect();
            assert_eq!(&seen, sent, "{who} receives the events published on the {ty:?} side, whole and in order");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_storage_is_durable_across_restarts() {
    use crate::storage_conformance::{put, unique_domain};
    let dir = tempfile::tempdir().unwrap();
    let d = unique_domain();
    let r = stategate::model::RecordRef::parse(&d, "t", "k").unwrap();
    let first = {
        let s = fs_storage(dir.path()).await;
        s.append(put(&r, serde_json::json!({"n": 1}))).await.unwrap();
        s.append(put(&r, serde_json::json!({"n": 2}))).await.unwrap().event
    };
    // Simulate a crash mid-write: a torn line at the end of the log.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("events.jsonl")).unwrap();
    f.write_all(b"{\"id\":\"torn").unwrap();
    drop(f);
    let s = fs_storage(dir.path()).await;
    let st = s.get(&r).await.unwrap().expect("state survives");
    assert_eq!(st.version, 2);
    assert_eq!(st.values["n"], 2);
    assert_eq!(s.head().await.unwrap(), 2);
    assert_eq!(s.get_event(&first.id).await.unwrap().unwrap(), first);
    let third = s.append(put(&r, serde_json::json!({"n": 3}))).await.unwrap().event;
    assert_eq!((third.seq, third.version), (3, 3), "the torn line was cut off, numbering continues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_the_directory_channel() {
    use crate::harness::TestGateway;
    use futures::StreamExt;
    use stategate::proto::*;
    let bus = tempfile::tempdir().unwrap();
    let provider = channel_spec(&spec(&guest("dir_channel"), bus.path()));
    let cache = crate::wasm_support::cache_dir();
    // One sqlite file for both; b's storage sweep is effectively off, so
    // only the channel can bring a's event to b's stream in time.
    let storage = stategate::storage::StorageSpec::parse(
        &serde_json::json!({"name": "sqlite", "path": bus.path().join("shared.db")}).to_string(),
    )
    .unwrap();
    let a = TestGateway::start_with(|c| {
        c.channel_provider = Some(provider.clone());
        c.storage_provider = Some(storage.clone());
        c.wasm_cache_dir = Some(cache.clone());
    })
    .await;
    let b = TestGateway::start_with(|c| {
        c.channel_provider = Some(provider.clone());
        c.storage_provider = Some(storage.clone());
        c.wasm_cache_dir = Some(cache.clone());
        c.sweep_interval_ms = 3_600_000;
    })
    .await;
    let d = crate::storage_conformance::unique_domain();
    let mut stream = b
        .event_client()
        .await
        .stream(StreamOpts { domain: d.clone(), r#type: "t".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut sc = a.state_client().await;
    let values = stategate::api::convert::json_to_struct(serde_json::json!({"n": 7}).as_object().unwrap().clone());
    sc.set(State { domain: d.clone(), r#type: "t".into(), key: "k".into(), values: Some(values), ..Default::default() })
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
        .await
        .expect("the event crosses gateways in time")
        .unwrap()
        .unwrap();
    assert_eq!(got.state.unwrap().key, "k");
    a.stop().await;
    b.stop().await;
}

/// A provider (called on the blocking pool, through the synchronous WASI
/// linker) whose file leads out of its granted directory: the host refuses
/// the open, the call fails PERMISSION_DENIED naming the path, and nothing
/// is created outside the directory. The policy-hook counterpart, on the
/// async linker, is in wasm_sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_file_escape_from_the_granted_dir_is_denied() {
    let parent = tempfile::tempdir().unwrap();
    let granted = parent.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let mut provider = spec(&guest("fs_storage"), &granted);
    provider.insert("config".into(), serde_json::json!({"file": "../escaped.jsonl"}));
    let err = match storage_spec(&provider).open(&granted, &runtime()).await {
        Err(e) => e,
        Ok(s) => s.head().await.expect_err("a file outside grants.dir must not open"),
    };
    let message = err.to_string();
    assert!(matches!(err, stategate::model::Error::PermissionDenied { .. }), "{err:?}");
    for part in ["outside grants.dir", "escaped.jsonl", "not granted"] {
        assert!(message.contains(part), "{message:?} should say {part:?}");
    }
    assert!(!parent.path().join("escaped.jsonl").exists(), "nothing was written outside the grant");
}

/// A provider (the synchronous WASI linker) writing past its disk quota:
/// the append that would pass it fails RESOURCE_EXHAUSTED naming the quota,
/// and the log on disk stays within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_disk_quota_stops_appends() {
    use crate::storage_conformance::put;
    let dir = tempfile::tempdir().unwrap();
    let mut provider = spec(&guest("fs_storage"), dir.path());
    provider.insert("limits".into(), serde_json::json!({"disk_mb": 1}));
    let storage = storage_spec(&provider).open(dir.path(), &runtime()).await.expect("opens");
    let r = stategate::model::RecordRef::parse("d", "t", "k").unwrap();
    let blob = "x".repeat(20_000);
    let mut appended = 0;
    let err = loop {
        match storage.append(put(&r, serde_json::json!({"blob": blob}))).await {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 100, "2 MB appended under a 1 MiB quota");
    };
    assert!(matches!(err, stategate::model::Error::ResourceExhausted(_)), "{err:?}");
    assert!(err.to_string().contains("exceeded its disk quota of 1 MiB"), "{err}");
    assert!(appended > 10, "appends within the quota succeeded: {appended}");
    let size = std::fs::metadata(dir.path().join("events.jsonl")).unwrap().len();
    assert!(size <= 1 << 20, "{size} bytes on disk");
}

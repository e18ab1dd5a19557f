//! Sandbox: a policy hook that traps, loops forever, allocates without bound
//! or uses a capability it was not granted (TCP, HTTP, files) fails only its
//! own call (with UNAVAILABLE / PERMISSION_DENIED naming the guest), while a
//! client of another tenant, served by another wasm hook, keeps being
//! served. A grant of one kind does not open another.

use crate::harness::TestGateway;
use crate::wasm_support::{auth_service, cache_dir, guest};
use stategate::proto::*;
use tonic::Code;

fn state(domain: &str, key: &str, v: serde_json::Value) -> State {
    State {
        domain: domain.into(),
        r#type: "t".into(),
        key: key.into(),
        values: Some(stategate::api::convert::json_to_struct(v.as_object().unwrap().clone())),
        ..Default::default()
    }
}

fn json_of(s: &State) -> serde_json::Value {
    serde_json::Value::Object(stategate::api::convert::struct_to_json("values", s.values.clone().unwrap()).unwrap())
}

async fn misbehaving(mode: &str, limits: serde_json::Value, code: Code, says: &str) {
    let bad = serde_json::json!({"path": guest("misbehave"), "config": {"mode": mode}, "limits": limits});
    misbehaving_guest(bad, code, &[says]).await;
}

/// Runs the `bad` hook spec against a concurrent client of a well-behaved
/// tenant; every call of the bad tenant must fail with `code` and a message
/// naming the guest and containing each of `says`, within a hundred times
/// its time limit. Returns that message.
async fn misbehaving_guest(bad: serde_json::Value, code: Code, says: &[&str]) -> String {
    let hooks = serde_json::json!({
        "bad": bad,
        "good": {"path": guest("redact"), "config": {"fields": "secret"}},
    });
    let limit_ms = bad.pointer("/limits/timeout_ms").and_then(|t| t.as_u64()).unwrap_or(2000);
    let mode = bad.pointer("/config/mode").and_then(|m| m.as_str()).unwrap_or("guest").to_owned();
    let gw = TestGateway::start_with(|c| {
        c.auth.policy_hooks = Some(hooks.to_string());
        c.wasm_cache_dir = Some(cache_dir());
    })
    .await;

    // A client of another tenant keeps writing and reading meanwhile.
    let mut good = gw.state_client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || n < 5 {
                let key = format!("k{}", n % 3);
                good.set(state("good", &key, serde_json::json!({"n": n, "secret": "s"}))).await.expect("good tenant write");
                let got = good
                    .get(StateRef { domain: "good".into(), r#type: "t".into(), key, ..Default::default() })
                    .await
                    .expect("good tenant read")
                    .into_inner();
                let v = json_of(&got);
                assert!(v.get("secret").is_none(), "the good tenant's hook still redacts: {v}");
                n += 1;
            }
            n
        })
    };

    let mut bad = gw.state_client().await;
    for _ in 0..3 {
        // Bounded, not measured: a call that outlives its limit a hundred
        // times over was not stopped by it.
        let call = bad.set(state("bad", "k", serde_json::json!({"n": 1})));
        let err = tokio::time::timeout(std::time::Duration::from_millis(limit_ms * 100), call)
            .await
            .expect("the call ends within 100 times its time limit")
            .expect_err("the bad hook fails the call");
        assert_eq!(err.code(), code, "{mode}: {err:?}");
        assert!(err.message().contains("policy:bad"), "{mode}: the error names the guest: {}", err.message());
        for says in says {
            assert!(err.message().contains(says), "{mode}: the error says {says:?}: {}", err.message());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let served = background.await.expect("the good tenant was served throughout");
    assert!(served >= 5);

    // The gateway still serves both: the bad tenant's next call fails the
    // same clean way, the good tenant's succeeds.
    let err = bad.set(state("bad", "k", serde_json::json!({"n": 2}))).await.unwrap_err();
    assert_eq!(err.code(), code);
    let message = err.message().to_owned();
    gw.state_client().await.set(state("good", "after", serde_json::json!({"n": 1}))).await.unwrap();
    let metrics = crate::harness::http().get(format!("{}/metrics", gw.ops_url())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("wasm_guest_errors_total{guest=\"policy:bad\""), "per-guest error metrics: {metrics}");
    gw.stop().await;
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_hook_fails_only_its_call() {
    misbehaving("trap", serde_json::json!({}), Code::Unavailable, "trapped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_hook_hits_its_deadline() {
    misbehaving("loop", serde_json::json!({"timeout_ms": 300}), Code::Unavailable, "time limit").await;
}

/// A hook runs on its request's task and yields at every epoch tick: with
/// the gateway and the clients on one thread, another tenant is served
/// while a hook loops, and cancelling the looping call (the client goes
/// away) ends it.
#[tokio::test(flavor = "current_thread")]
async fn looping_hook_does_not_hold_the_thread() {
    let hooks = serde_json::json!({
        "bad": {"path": guest("misbehave"), "config": {"mode": "loop"}, "limits": {"timeout_ms": 120_000}},
        "good": {"path": guest("redact"), "config": {"fields": "secret"}},
    });
    let gw = TestGateway::start_with(|c| {
        c.auth.policy_hooks = Some(hooks.to_string());
        c.wasm_cache_dir = Some(cache_dir());
    })
    .await;
    let mut bad = gw.state_client().await;
    let looping = tokio::spawn(async move { bad.set(state("bad", "k", serde_json::json!({"n": 1}))).await });
    // Let the bad call reach its hook.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut good = gw.state_client().await;
    for n in 0..5 {
        good.set(state("good", "k", serde_json::json!({"n": n, "secret": "s"}))).await.expect("good tenant write");
        let got = good
            .get(StateRef { domain: "good".into(), r#type: "t".into(), key: "k".into(), ..Default::default() })
            .await
            .expect("good tenant read")
            .into_inner();
        assert!(json_of(&got).get("secret").is_none());
    }
    assert!(!looping.is_finished(), "the other tenant was served while the hook still looped");
    looping.abort();
    let _ = looping.await;
    good.set(state("good", "after", serde_json::json!({"n": 1}))).await.expect("served after the cancellation");
    gw.stop().await;
}

/// A hook blocked in the host (a ten-minute sleep: a WASI clock pollable,
/// where no epoch deadline reaches) fails at its deadline like one that
/// loops, not when the sleep ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_hook_hits_its_deadline() {
    let bad = serde_json::json!({"path": guest("misbehave"), "config": {"mode": "sleep", "ms": 600_000}, "limits": {"timeout_ms": 300}});
    misbehaving_guest(bad, Code::Unavailable, &["time limit"]).await;
}

/// One tenant's hook calls blocked in the host take at most their guest's
/// share of the instance bound: with 4 places, 2 per guest, six blocked
/// calls of one tenant leave another tenant served, and are all still
/// blocked when it has been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_hook_calls_leave_other_tenants_their_places() {
    let hooks = serde_json::json!({
        "bad": {"path": guest("misbehave"), "config": {"mode": "sleep", "ms": 60_000}, "limits": {"timeout_ms": 600_000}},
        "good": {"path": guest("redact"), "config": {"fields": "secret"}},
    });
    let gw = TestGateway::start_with(|c| {
        c.auth.policy_hooks = Some(hooks.to_string());
        c.wasm_cache_dir = Some(cache_dir());
        c.wasm_max_instances = 4;
        c.wasm_max_instances_per_guest = 2;
    })
    .await;
    let mut blocked = Vec::new();
    for n in 0..6 {
        let mut bad = gw.state_client().await;
        blocked.push(tokio::spawn(async move { bad.set(state("bad", &format!("k{n}"), serde_json::json!({"n": n}))).await }));
    }
    // Let the blocked calls take what they can.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut good = gw.state_client().await;
    for n in 0..5 {
        good.set(state("good", "k", serde_json::json!({"n": n, "secret": "s"}))).await.expect("good tenant write");
        let got = good
            .get(StateRef { domain: "good".into(), r#type: "t".into(), key: "k".into(), ..Default::default() })
            .await
            .expect("good tenant read")
            .into_inner();
        assert!(json_of(&got).get("secret").is_none());
    }
    assert!(blocked.iter().all(|b| !b.is_finished()), "the other tenant was served while every blocked call still waited");
    for b in &blocked {
        b.abort();
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_its_cap() {
    misbehaving("oom", serde_json::json!({"memory_mb": 32}), Code::Unavailable, "memory limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_network_is_denied() {
    misbehaving("net", serde_json::json!({}), Code::PermissionDenied, "not granted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_http_is_denied() {
    let bad = serde_json::json!({"path": guest("misbehave"), "config": {"mode": "http", "target": "example.com"}});
    misbehaving_guest(bad, Code::PermissionDenied, &["outbound HTTP to example.com", "not granted"]).await;
}

/// The webhook policy without an HTTP grant for its service: denied, and the
/// service never hears of the request. A `grants.net` entry for the same
/// address does not allow HTTP to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_without_http_grant_is_denied() {
    let (service, received) = auth_service().await;
    let bad = serde_json::json!({
        "path": guest("webhook"),
        "config": {"url": format!("http://{service}/authorize")},
        "grants": {"net": [service]},
    });
    misbehaving_guest(bad, Code::PermissionDenied, &[&format!("outbound HTTP to {service}"), "not granted"]).await;
    assert!(received.lock().unwrap().is_empty(), "the service got no request");
}

/// An HTTP grant does not allow raw TCP to the same address (refused at the
/// socket's implicit bind already: nothing is granted in `grants.net`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_grant_does_not_open_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let bad = serde_json::json!({
        "path": guest("misbehave"),
        "config": {"mode": "net", "target": target},
        "grants": {"http": [target]},
    });
    misbehaving_guest(bad, Code::PermissionDenied, &["network access", "not granted"]).await;
}

const PASSWD_LINE: &str = "root:";

/// No directory granted: wasi-libc refuses `/etc/passwd` inside the guest
/// (the host never sees the attempt), the guest panics on the error, and
/// the call fails UNAVAILABLE naming it, without the file's content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_file_fails_cleanly() {
    assert!(std::fs::read_to_string("/etc/passwd").unwrap().contains(PASSWD_LINE));
    let bad = serde_json::json!({"path": guest("misbehave"), "config": {"mode": "fs", "path": "/etc/passwd"}});
    let message = misbehaving_guest(bad, Code::Unavailable, &["trapped"]).await;
    assert!(!message.contains(PASSWD_LINE), "no file content reaches the client: {message}");
}

/// With a directory granted, a path leading out of it reaches the host,
/// which refuses it and fails the call PERMISSION_DENIED naming the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_escape_from_the_granted_dir_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let bad = serde_json::json!({
        "path": guest("misbehave"),
        "config": {"mode": "fs", "path": "/data/../../etc/passwd"},
        "grants": {"dir": dir.path()},
    });
    let message = misbehaving_guest(bad, Code::PermissionDenied, &["outside grants.dir", "etc/passwd", "not granted"]).await;
    assert!(!message.contains(PASSWD_LINE), "no file content reaches the client: {message}");
}

/// A granted service that never answers: the call still ends at its
/// deadline (the host bounds the guest's wait), UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_http_service_hits_the_call_deadline() {
    let (service, _) = auth_service().await;
    let bad = serde_json::json!({
        "path": guest("webhook"),
        "config": {"url": format!("http://{service}/slow")},
        "grants": {"http": [service]},
        "limits": {"timeout_ms": 300},
    });
    misbehaving_guest(bad, Code::Unavailable, &["time limit"]).await;
}

/// Whether a forged hook allows a request when its limits are `limits`
/// (the forged hooks below do allow, within the caps: what fails them in
/// those tests is the cap, not the forging).
async fn forged_hook_allows(path: &std::path::Path, limits: serde_json::Value) -> bool {
    let hooks = serde_json::json!({"*": {"path": path, "limits": limits}});
    let hooks = stategate::auth::hooks::PolicyHooks::from_config(&hooks.to_string(), &crate::wasm_support::runtime())
        .await
        .unwrap()
        .unwrap();
    let input = stategate::auth::PolicyInput {
        claims: Default::default(),
        method: "/stategate.StateService/Set".into(),
        metadata: Default::default(),
        body: serde_json::json!({"domain": "d", "type": "t", "key": "k"}).into(),
        client_stream: false,
        server_stream: false,
        response: None,
        domain: Some("d".into()),
    };
    hooks.authorize_request(&input).await.is_ok()
}

/// Three extra memories of 10 MiB each under a 16 MiB cap: the cap is a
/// total over the instance's memories, not a cap per memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_together_hit_the_memory_cap() {
    use crate::wasm_forge::{Forge, write_policy_hook};
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy_hook(dir.path(), "memories", Forge { extra_memories: 3, grow_pages: 160, ..Forge::default() });
    assert!(forged_hook_allows(&path, serde_json::json!({"memory_mb": 64})).await, "30 MiB fit under 64");
    let bad = serde_json::json!({"path": path, "limits": {"memory_mb": 16}});
    misbehaving_guest(bad, Code::Unavailable, &["exceeded its memory limit of 16 MiB"]).await;
}

/// A table grown by two million elements (memory of the host's, outside
/// every linear memory) hits the table-element cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_growth_hits_the_table_cap() {
    use crate::wasm_forge::{Forge, write_policy_hook};
    let dir = tempfile::tempdir().unwrap();
    let small = write_policy_hook(dir.path(), "small", Forge { table_grow: 1000, ..Forge::default() });
    assert!(forged_hook_allows(&small, serde_json::json!({})).await);
    let path = write_policy_hook(dir.path(), "tables", Forge { table_grow: 2_000_000, ..Forge::default() });
    let bad = serde_json::json!({"path": path});
    misbehaving_guest(bad, Code::Unavailable, &["exceeded its limit of 1048576 table elements"]).await;
}

/// More memories than an instance may have: it never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_memories_fail_instantiation() {
    use crate::wasm_forge::{Forge, write_policy_hook};
    let dir = tempfile::tempdir().unwrap();
    let eight = write_policy_hook(dir.path(), "eight", Forge { extra_memories: 7, ..Forge::default() });
    assert!(forged_hook_allows(&eight, serde_json::json!({})).await, "8 memories are allowed");
    let path = write_policy_hook(dir.path(), "nine", Forge { extra_memories: 8, ..Forge::default() });
    let bad = serde_json::json!({"path": path});
    misbehaving_guest(bad, Code::Unavailable, &["instantiate", "memory count"]).await;
}

/// An HTTP grant given by name that resolves to a loopback address (the
/// same is true of private and link-local ones) is refused once resolved:
/// naming an internal service takes its IP address, or `http_private`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_grant_by_name_to_an_internal_address_is_denied() {
    let (service, received) = auth_service().await;
    let port = service.rsplit(':').next().unwrap();
    let by_name = format!("localhost:{port}");
    let hook = |private: bool| {
        serde_json::json!({
            "path": guest("webhook"),
            "config": {"url": format!("http://{by_name}/authorize"), "authorization": "Bearer t0k"},
            "grants": {"http": [by_name], "http_private": private},
        })
    };
    let message = misbehaving_guest(hook(false), Code::PermissionDenied, &["resolves to the non-public address", "not granted"]).await;
    assert!(message.contains(&format!("outbound HTTP to {by_name}")), "{message}");
    assert!(received.lock().unwrap().is_empty(), "the service got no request");

    // With http_private the same grant reaches the service.
    let hooks = serde_json::json!({"acme": hook(true)});
    let hooks = stategate::auth::hooks::PolicyHooks::from_config(&hooks.to_string(), &crate::wasm_support::runtime())
        .await
        .unwrap()
        .unwrap();
    let input = stategate::auth::PolicyInput {
        claims: Default::default(),
        method: "/stategate.StateService/Set".into(),
        metadata: Default::default(),
        body: serde_json::json!({"domain": "acme", "type": "t", "key": "k"}).into(),
        client_stream: false,
        server_stream: false,
        response: None,
        domain: Some("acme".into()),
    };
    hooks.authorize_request(&input).await.expect("allowed by the service");
    assert_eq!(received.lock().unwrap().len(), 1);
}

/// A guest writing past its disk quota under grants.dir: the write is
/// refused before it lands, the call fails RESOURCE_EXHAUSTED naming the
/// quota, and the directory holds no more than the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_quota_stops_writes_under_grants_dir() {
    let dir = tempfile::tempdir().unwrap();
    let bad = serde_json::json!({
        "path": guest("misbehave"),
        "config": {"mode": "fill", "bytes": 8 << 20},
        "grants": {"dir": dir.path()},
        "limits": {"disk_mb": 1},
    });
    misbehaving_guest(bad, Code::ResourceExhausted, &["exceeded its disk quota of 1 MiB under grants.dir"]).await;
    let size = std::fs::metadata(dir.path().join("fill.bin")).unwrap().len();
    assert!(size > 0 && size <= 1 << 20, "the writes within the quota landed, none past it: {size} bytes");
}

/// A guest's stderr goes to the gateway's log, within a budget per call:
/// three calls writing 2 MiB each leave the log a small fraction of that,
/// with the guest's first lines in it, named, and the drop reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stderr_is_logged_within_a_budget() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let per_call = 2usize << 20;
    let hooks = serde_json::json!({"bad": {"path": guest("misbehave"), "config": {"mode": "stderr", "bytes": per_call}}});
    let (port, ops) = (crate::procs::free_port(), crate::procs::free_port());
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stategate"))
        .args(["--dev", "--port", &port.to_string(), "--ops-port", &ops.to_string(), "--log-format", "text"])
        .env("STATEGATE_POLICY_HOOKS", hooks.to_string())
        .env("STATEGATE_WASM_CACHE_DIR", cache_dir())
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    crate::procs::wait_port(port, "gateway").await;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    let mut client = stategate::proto::state_service_client::StateServiceClient::new(channel);
    for n in 0..3 {
        client.set(state("bad", "k", serde_json::json!({"n": n}))).await.expect("the hook allows");
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let written = 3 * per_call;
    assert!(text.len() * 20 < written, "the log holds {} bytes of {written} written to stderr", text.len());
    assert!(text.contains("misbehave stderr line 0 "), "the first lines are logged: {text}");
    assert!(text.contains("policy:bad"), "with the guest's name: {text}");
    assert!(text.contains("the rest was dropped"), "the drop is reported: {text}");
}

//! The examples in other languages, each run against a gateway started
//! here: Python (grpcio, its client generated from proto/ now with
//! grpcio-tools), Node (@grpc/grpc-js + @grpc/proto-loader) and the browser
//! page (grpc-web in headless Chromium, with a screenshot). A missing tool
//! skips the test with the reason (`scripts/ci-clients` installs them all);
//! with STATEGATE_TEST_REQUIRE_BACKENDS=1 it fails instead.

use crate::harness::TestGateway;
use crate::wire::unique;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `Some(())` when `ok`; otherwise skip (or fail when tools are required).
pub fn require(what: &str, ok: bool) -> Option<()> {
    if ok {
        return Some(());
    }
    if std::env::var("STATEGATE_TEST_REQUIRE_BACKENDS").as_deref() == Ok("1") {
        panic!("{what} is missing but STATEGATE_TEST_REQUIRE_BACKENDS=1 (run scripts/ci-clients)");
    }
    eprintln!("SKIPPED: {what} is missing; scripts/ci-clients installs it");
    None
}

pub fn succeeds(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command to completion (bounded), returning stdout; panics with
/// both outputs when it fails.
pub async fn run(cmd: &mut tokio::process::Command) -> String {
    cmd.kill_on_drop(true).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let out = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What the Python and Node examples print, in order (the streamed lines
/// may interleave with the others).
fn check_example_output(out: &str) {
    for line in [
        "set alice: version 1",
        "search city=Paris:",
        "get bob: NOT_FOUND",
        "streamed: alice SET v1",
        "streamed: bob SET v1",
        "streamed: bob DEL v2",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(out.contains(r#"get alice: {"city": "Paris", "name": "Alice"}"#) || out.contains(r#"get alice: {"city":"Paris","name":"Alice"}"#), "{out}");
    assert!(out.contains("alice:SET") && out.contains("bob:DEL"), "{out}");
}

/// The example's writes are really in the gateway.
async fn check_gateway_state(gw: &TestGateway, d: &str) {
    let c = stategate_client::Client::connect(gw.url()).await.unwrap();
    assert_eq!(c.get(d, "user", "alice").await.unwrap().values_json()["city"], "Paris");
    assert!(c.get(d, "user", "bob").await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example() {
    if require("python3 with grpcio and grpcio-tools", succeeds("python3", &["-c", "import grpc, grpc_tools"])).is_none() {
        return;
    }
    let gen_dir = tempfile::tempdir().unwrap();
    let repo = repo();
    run(tokio::process::Command::new("python3")
        .current_dir(&repo)
        .args(["-m", "grpc_tools.protoc", "-I", "proto", "--python_out"])
        .arg(gen_dir.path())
        .arg("--grpc_python_out")
        .arg(gen_dir.path())
        .args(["proto/stategate.proto", "proto/google/api/annotations.proto", "proto/google/api/http.proto"]))
    .await;
    let gw = TestGateway::start().await;
    let d = unique("python");
    let out = run(tokio::process::Command::new("python3")
        .arg(repo.join("examples/python/example.py"))
        .args(["--addr", &gw.addr.to_string(), "--domain", &d])
        .env("PYTHONPATH", gen_dir.path()))
    .await;
    check_example_output(&out);
    check_gateway_state(&gw, &d).await;
    gw.stop().await;
}

fn node_modules_ok(package: &str) -> bool {
    repo().join("examples/node_modules").join(package).join("package.json").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_example() {
    if require("node", succeeds("node", &["--version"])).is_none()
        || require("examples/node_modules (npm ci in examples/)", node_modules_ok("@grpc/grpc-js") && node_modules_ok("@grpc/proto-loader")).is_none()
    {
        return;
    }
    let gw = TestGateway::start().await;
    let d = unique("node");
    let out = run(tokio::process::Command::new("node")
        .arg(repo().join("examples/node/example.js"))
        .args(["--addr", &gw.addr.to_string(), "--domain", &d]))
    .await;
    check_example_output(&out);
    check_gateway_state(&gw, &d).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_example_shows_live_events_over_grpc_web() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if require("node", succeeds("node", &["--version"])).is_none()
        || require("examples/node_modules (npm ci in examples/)", node_modules_ok("playwright-core") && node_modules_ok("protobufjs")).is_none()
        || require(&format!("chromium ({chromium})"), Path::new(&chromium).exists()).is_none()
    {
        return;
    }
    let gw = TestGateway::start().await;
    let d = unique("browser");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-events.png");
    let _ = std::fs::remove_file(&shot);
    let out = run(tokio::process::Command::new("node")
        .arg(repo().join("examples/browser/test.mjs"))
        .args(["--gateway", &gw.url(), "--domain", &d, "--screenshot"])
        .arg(&shot)
        .env("CHROMIUM", &chromium))
    .await;
    assert!(out.contains("browser example: 3 events shown"), "{out}");
    for key in ["alice", "bob", "carol"] {
        assert!(out.contains(&format!("{d}/user/{key}")), "{key} not shown:\n{out}");
    }
    let png = std::fs::read(&shot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "not a real screenshot ({} bytes)", png.len());
    eprintln!("screenshot: {}", shot.display());
    gw.stop().await;
}

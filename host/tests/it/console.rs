//! The web console (`console/`, served at /console/): how the gateway
//! serves it (and leaves it out when STATEGATE_CONSOLE=false), the browser
//! test (`console/tests/console.test.mjs`: node:test and playwright-core
//! driving Debian's Chromium against gateways it starts from this build,
//! saving a screenshot of each view), and that the committed build
//! (`console/dist`) is what its sources build to. Without node, the
//! console's npm packages or Chromium the last two skip with the reason
//! (`scripts/ci-browser` installs them), or fail under
//! STATEGATE_TEST_REQUIRE_BACKENDS=1.

use crate::examples::{repo, require, run, succeeds};
use crate::harness::{TestGateway, http};
use std::path::Path;

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_can_be_turned_off() {
    let gw = TestGateway::start().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = client.get(format!("{}/console", gw.url())).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (308, "console/"));
    let r = http().get(format!("{}/console/", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let html = r.text().await.unwrap();
    let script = html.split('"').find(|s| s.starts_with("./assets/") && s.ends_with(".js")).expect("the page loads a hashed script");
    let r = http().get(format!("{}/console/{}", gw.url(), &script[2..])).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    let r = http().get(format!("{}/console/assets/missing.js", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["code"], 5);
    // The browser rules still hold: with auth off, a rebound host name is refused.
    let r = http().get(format!("{}/console/", gw.url())).header("host", "evil.test").send().await.unwrap();
    assert_eq!(r.status(), 403);
    gw.stop().await;

    let gw = TestGateway::start_with(|c| c.console = false).await;
    let r = http().get(format!("{}/console/", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 404, "STATEGATE_CONSOLE=false leaves the console out");
    gw.stop().await;
}

fn console_package(name: &str) -> bool {
    repo().join("console/node_modules").join(name).join("package.json").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if require("node", succeeds("node", &["--version"])).is_none()
        || require("console/node_modules (npm ci in console/)", console_package("playwright-core")).is_none()
        || require(&format!("chromium ({chromium})"), Path::new(&chromium).exists()).is_none()
    {
        return;
    }
    // Not emptied first: worktrees that share a target directory may run
    // this test at the same time; each checks that the files are new.
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let out = run(tokio::process::Command::new("node")
        .current_dir(repo().join("console"))
        .args(["--test", "--test-reporter=spec", "tests/console.test.mjs"])
        .env("STATEGATE_TEST_BIN", crate::procs::stategate_bin())
        .env("CHROMIUM", &chromium)
        .env("CONSOLE_ARTIFACTS", &artifacts))
    .await;
    eprintln!("{out}");
    for view in ["overview", "tail", "record", "records", "metrics", "signin", "refused", "phone-record"] {
        let file = artifacts.join(format!("{view}.png"));
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("no {view}.png: {e}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "{view}.png is not a real screenshot");
        assert!(std::fs::metadata(&file).unwrap().modified().unwrap() >= started, "{view}.png is not from this run");
    }
    eprintln!("screenshots: {}", artifacts.display());
}

#[tokio::test]
async fn the_committed_console_build_matches_its_sources() {
    if require("node", succeeds("node", &["--version"])).is_none()
        || require("console/node_modules (npm ci in console/)", console_package("vite")).is_none()
    {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    run(tokio::process::Command::new("node")
        .current_dir(repo().join("console"))
        .args(["node_modules/vite/bin/vite.js", "build", "--logLevel", "warn", "--emptyOutDir", "--outDir"])
        .arg(out.path()))
    .await;
    let built = files(out.path());
    let committed = files(&repo().join("console/dist"));
    assert!(
        built == committed,
        "console/dist is not what console/src builds to: run scripts/build-console and commit console/dist\nbuilt: {:?}\ncommitted: {:?}",
        built.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>()
    );
}

/// Every file under `dir`, by its path below it.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

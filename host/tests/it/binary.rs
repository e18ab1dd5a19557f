//! The `stategate` binary: start-up checks and graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stategate(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(crate::procs::stategate_bin());
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn invalid_configuration_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("STATEGATE_STORAGE_PROVIDER", "{\"name\":\"oracle\"}"),
        ("STATEGATE_CHANNEL_PROVIDER", "not json"),
        ("STATEGATE_PORT", "99999"),
    ] {
        let out = stategate(dir.path()).args(["--dev"]).env(var, value).output().unwrap();
        assert!(!out.status.success(), "{var}={value} must stop the start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var) || stderr.to_lowercase().contains("port"), "{var}: {stderr}");
    }
}

#[test]
fn secure_by_default_without_a_way_to_verify_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = stategate(dir.path()).env("STATEGATE_PORT", "0").output().unwrap();
    assert!(!out.status.success(), "auth on with no key source must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--dev") && stderr.contains("STATEGATE_"), "{stderr}");
}

#[test]
fn dev_mode_says_so_first_and_sigterm_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = stategate(dir.path())
        .args(["--dev", "--port", "0", "--ops-port", "0"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("development mode") && first.contains("127.0.0.1"), "{first}");
    let serving = lines.next().unwrap().unwrap();
    assert!(serving.contains("serving"), "{serving}");
    assert!(dir.path().join("data/stategate.db").exists(), "sqlite file under ./data");

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    // The WAL was folded back into the database file at close.
    let wal = dir.path().join("data/stategate.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
}

/// Authentication off on a non-loopback address is said at start; the ops
/// port stays on loopback (no warning about it).
#[test]
fn auth_off_on_a_public_address_warns_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = stategate(dir.path())
        .args(["--auth-disabled", "--bind", "0.0.0.0", "--port", "0", "--ops-port", "0"])
        .spawn()
        .unwrap();
    let mut before_serving = vec![];
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("serving") {
            assert!(line.contains("\"ops_addr\":\"127.0.0.1:"), "the ops port is on loopback: {line}");
            break;
        }
        before_serving.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        before_serving.iter().any(|l| l.contains("authentication is disabled") && l.contains("0.0.0.0")),
        "{before_serving:?}"
    );
    assert!(!before_serving.iter().any(|l| l.contains("ops port listens")), "{before_serving:?}");
}

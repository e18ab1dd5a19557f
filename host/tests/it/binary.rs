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

/// Reads stderr lines until one contains `until` (the start-up summary
/// says "is serving"); returns the lines read, that one last.
fn lines_until(child: &mut std::process::Child, until: &str) -> Vec<String> {
    let mut out = vec![];
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains(until);
        out.push(line);
        if done {
            return out;
        }
    }
    panic!("no line with {until:?}: {out:?}");
}

/// One summary event at start: version, storage and where, channel, auth,
/// policies, hooks, both ports, data dir; JSON when stderr is not a
/// terminal (auto), with a password in an address redacted.
#[test]
fn start_up_summary_names_what_the_gateway_is() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("allow.rego");
    std::fs::write(&policy, "package stategate.authz\nimport rego.v1\ndefault allow := true\n").unwrap();
    let mut child = stategate(dir.path())
        .args(["--port", "0", "--ops-port", "0", "--data-dir", "state"])
        .env("STATEGATE_JWT_HMAC_SECRET", "0123456789abcdef0123456789abcdef-summary")
        .env("STATEGATE_REQUEST_POLICY_PATH", &policy)
        .env("STATEGATE_CHANNEL_PROVIDER", r#"{"name":"inmem"}"#)
        .spawn()
        .unwrap();
    let lines = lines_until(&mut child, "is serving");
    let _ = child.kill();
    let _ = child.wait();
    let summary: serde_json::Value = serde_json::from_str(lines.last().unwrap()).expect("a JSON log line");
    assert_eq!(summary["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(summary["storage"], format!("sqlite at {}", std::path::Path::new("state").join("stategate.db").display()));
    assert_eq!(summary["channel"], "inmem at in-process (this instance only)");
    assert_eq!(summary["data_dir"], "state");
    assert_eq!(summary["auth"], "JWT verified with HMAC secret (STATEGATE_JWT_HMAC_SECRET)");
    assert_eq!(summary["request_policy"], policy.display().to_string());
    assert_eq!(summary["response_policy"], "none: responses are sent as they are");
    assert_eq!(summary["policy_hooks"], "none");
    let (addr, ops): (std::net::SocketAddr, std::net::SocketAddr) =
        (summary["addr"].as_str().unwrap().parse().unwrap(), summary["ops_addr"].as_str().unwrap().parse().unwrap());
    assert!(addr.port() > 0 && ops.port() > 0 && addr.port() != ops.port());
    assert!(!lines.join("\n").contains("0123456789abcdef"), "no secret in the log");

    // A JWKS URL's password stays out of what the gateway prints, even
    // when it cannot start.
    let out = stategate(dir.path())
        .args(["--port", "0", "--ops-port", "0"])
        .env("STATEGATE_JWKS_URI", "http://user:hunter2@127.0.0.1:9/jwks.json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("user:***@127.0.0.1:9") && !stderr.contains("hunter2"), "{stderr}");
}

/// `--log-format text` off a terminal: readable lines, no colour codes.
#[test]
fn text_logs_off_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = stategate(dir.path())
        .args(["--dev", "--port", "0", "--ops-port", "0", "--log-format", "text"])
        .spawn()
        .unwrap();
    let lines = lines_until(&mut child, "is serving");
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(!all.contains('\u{1b}'), "no ANSI escape codes: {all:?}");
    let summary = lines.last().unwrap();
    assert!(summary.contains("INFO") && summary.contains("storage=") && summary.contains("auth=disabled (--dev)"), "{summary}");
    assert!(serde_json::from_str::<serde_json::Value>(summary).is_err(), "text, not JSON: {summary}");
}

/// A bad value names its variable and its flag, whichever way it was set.
#[test]
fn configuration_errors_name_the_variable_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, flag) in [
        ("STATEGATE_MAX_STREAMS", "0", "--max-streams"),
        ("STATEGATE_OPS_TOKEN", "short", "--ops-token"),
        ("STATEGATE_PORT", "not-a-port", "--port"),
        ("STATEGATE_DEBUG", "maybe", "--debug"),
    ] {
        let out = stategate(dir.path()).args(["--dev"]).env(var, value).output().unwrap();
        assert!(!out.status.success(), "{var}={value} must stop the start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var) && stderr.contains(flag), "{var}: {stderr}");
    }
    let out = stategate(dir.path()).args(["--dev", "--max-search-limit", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("STATEGATE_MAX_SEARCH_LIMIT (--max-search-limit)"), "{stderr}");
}

/// Two gateways on one data dir: the second is refused at start, naming
/// the data dir; the first keeps serving.
#[test]
fn one_gateway_per_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = stategate(dir.path()).args(["--dev", "--port", "0", "--ops-port", "0"]).spawn().unwrap();
    let _ = lines_until(&mut first, "is serving");
    let mut second = stategate(dir.path()).args(["--dev", "--port", "0", "--ops-port", "0"]).spawn().unwrap();
    // Bounded: a second gateway that starts anyway must fail this test, not hang it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if second.try_wait().unwrap().is_none() {
        let _ = second.kill();
    }
    let second = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains("data dir data is in use") && stderr.contains(&format!("pid {}", first.id())), "{stderr}");
    assert!(first.try_wait().unwrap().is_none(), "the first gateway still runs");
    Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
    assert!(first.wait().unwrap().success());
    // Released at exit: a gateway starts there again.
    let mut again = stategate(dir.path()).args(["--dev", "--port", "0", "--ops-port", "0"]).spawn().unwrap();
    let _ = lines_until(&mut again, "is serving");
    let _ = again.kill();
    let _ = again.wait();
}

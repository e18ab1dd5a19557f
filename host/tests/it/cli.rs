//! The `stategate` command line against a live gateway: every client
//! subcommand, pretty and `--json` output, the token flag and variable,
//! bad input, and `serve` as the default.

use crate::harness::TestGateway;
use crate::wire::unique;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn stategate(addr: &str) -> Command {
    let mut cmd = Command::new(crate::procs::stategate_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STATEGATE_ADDR", addr)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure, got stdout {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running stategate")
}

#[tokio::test]
async fn set_get_search_events_del_round_trip() {
    let gw = TestGateway::start().await;
    let url = gw.url();
    let d = unique("cli");
    let url2 = url.clone();
    let d2 = d.clone();
    tokio::task::spawn_blocking(move || {
        let (url, d) = (url2, d2);
        // set: pretty output names the record and version.
        let out = ok(run(stategate(&url).args(["set", &d, "user", "alice", r#"{"name":"Alice","address":{"city":"Paris"}}"#])));
        assert!(out.contains(&format!("SET    {d}/user/alice v1")), "{out}");
        // set from standard input, JSON output.
        let mut child = stategate(&url)
            .args(["set", &d, "user", "bob", "-", "--json"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), br#"{"name":"Bob","address":{"city":"Lyon"}}"#).unwrap();
        let ev: Value = serde_json::from_str(&ok(child.wait_with_output().unwrap())).unwrap();
        assert_eq!(ev["kind"], "SET");
        assert_eq!(ev["state"]["values"]["name"], "Bob");
        // get --json is the REST form.
        let st: Value = serde_json::from_str(&ok(run(stategate(&url).args(["get", &d, "user", "alice", "--json"])))).unwrap();
        assert_eq!(st, json!({"domain": d, "type": "user", "key": "alice", "values": {"name": "Alice", "address": {"city": "Paris"}}, "version": "1"}));
        // get, pretty.
        let out = ok(run(stategate(&url).args(["get", &d, "user", "bob"])));
        assert_eq!(out.trim(), format!(r#"{d}/user/bob v1 {{"address":{{"city":"Lyon"}},"name":"Bob"}}"#));
        // search with a query.
        let found: Value = serde_json::from_str(&ok(run(stategate(&url).args(["search", &d, "user", "-q", r#"{"address.city":"Paris"}"#, "--json"])))).unwrap();
        let keys: Vec<&str> = found["stateValues"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["alice"]);
        // optimistic concurrency through the flag.
        let err = failed(run(stategate(&url).args(["set", &d, "user", "alice", r#"{"name":"A2"}"#, "--expected-version", "5"])));
        assert!(err.contains("ABORTED"), "{err}");
        // del, then get is NOT_FOUND with a failing exit.
        ok(run(stategate(&url).args(["del", &d, "user", "alice"])));
        let err = failed(run(stategate(&url).args(["get", &d, "user", "alice"])));
        assert!(err.contains("NOT_FOUND"), "{err}");
        // events: the history, oldest first, including the deletion.
        let hist: Value = serde_json::from_str(&ok(run(stategate(&url).args(["events", &d, "user", "--key", "alice", "--json"])))).unwrap();
        let kinds: Vec<&str> = hist["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["SET", "DEL"]);
        let out = ok(run(stategate(&url).args(["events", &d, "user"])));
        assert_eq!(out.lines().count(), 3, "{out}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_replays_then_follows_live_events() {
    let gw = TestGateway::start().await;
    let client = stategate_client::Client::connect(gw.url()).await.unwrap();
    let d = unique("clistream");
    let first = client.set(&d, "t", "a", &json!({"n": 1})).await.unwrap();
    let mut child = stategate(&gw.url())
        .args(["stream", &d, "t", "--from-time", "1", "-n", "3", "--json"])
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    // The replayed event proves the stream is open before the live writes.
    let line = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the replayed event");
    let ev: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["id"], first.id);
    let second = client.set(&d, "t", "b", &json!({"n": 2})).await.unwrap();
    let third = client.del(&d, "t", "a").await.unwrap();
    let mut ids = vec![];
    for _ in 0..2 {
        let line = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a live event");
        ids.push(serde_json::from_str::<Value>(&line).unwrap()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids, [second.id, third.id]);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "`-n 3` ends the stream after three events");
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_clear_error() {
    let gw = TestGateway::start().await;
    let url = gw.url();
    tokio::task::spawn_blocking(move || {
        let err = failed(run(stategate(&url).args(["set", "d", "t", "k", "[1,2]"])));
        assert!(err.contains("VALUES must be a JSON object"), "{err}");
        let err = failed(run(stategate(&url).args(["set", "d", "t", "k", "{nope"])));
        assert!(err.contains("VALUES is not valid JSON"), "{err}");
        let err = failed(run(stategate(&url).args(["search", "d", "t", "--query", "3"])));
        assert!(err.contains("--query must be a JSON object"), "{err}");
        let err = failed(run(stategate(&url).args(["set", "bad domain", "t", "k", "{}"])));
        assert!(err.contains("INVALID_ARGUMENT") && err.contains("domain"), "{err}");
        let err = failed(run(stategate(&url).args(["get", "d", "t", "k", "--addr", "localhost:1"])));
        assert!(err.contains("invalid gateway address"), "{err}");
        let err = failed(run(stategate("http://127.0.0.1:1").args(["health"])));
        assert!(err.contains("cannot connect to http://127.0.0.1:1"), "{err}");
        let err = failed(run(stategate(&url).args(["get", "d", "t"])));
        assert!(err.contains("<KEY>"), "a missing argument is named: {err}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

/// A gRPC endpoint that refuses every call with PERMISSION_DENIED and puts
/// the `authorization` header it received into the message, so the test
/// sees exactly what the client sent. Returns its address.
pub async fn echo_authorization_server() -> String {
    use axum::http::{HeaderMap, HeaderValue};
    async fn refuse(headers: HeaderMap) -> (HeaderMap, &'static str) {
        let got = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("7"));
        h.insert("grpc-message", HeaderValue::from_str(&format!("authorization={got}")).unwrap());
        (h, "")
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(refuse);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn token_from_flag_or_environment() {
    let url = echo_authorization_server().await;
    tokio::task::spawn_blocking(move || {
        let err = failed(run(stategate(&url).args(["get", "d", "t", "k", "--token", "flag-token"])));
        assert!(err.contains("PERMISSION_DENIED") && err.contains("authorization=Bearer flag-token"), "{err}");
        let err = failed(run(stategate(&url).args(["get", "d", "t", "k"]).env("STATEGATE_TOKEN", "env-token")));
        assert!(err.contains("authorization=Bearer env-token"), "{err}");
        let err = failed(run(stategate(&url).args(["get", "d", "t", "k"])));
        assert!(err.contains("authorization=none"), "{err}");
        // The token never shows in --help, even when set in the environment.
        let help = ok(run(stategate(&url).args(["get", "--help"]).env("STATEGATE_TOKEN", "secret-value")));
        assert!(help.contains("STATEGATE_TOKEN") && !help.contains("secret-value"), "{help}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn serve_is_the_default_and_health_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    for args in [vec!["serve"], vec![]] {
        let mut server = stategate(&url)
            .args(&args)
            .args(["--dev", "--log-format", "text", "--port", &port.to_string(), "--ops-port", "0"])
            .arg("--data-dir")
            .arg(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = url.clone();
        let answered = tokio::task::spawn_blocking(move || {
            // Bounded wait for the start-up, then the health check must pass.
            for _ in 0..300 {
                let out = run(stategate(&url).args(["health", "--json"]));
                if out.status.success() {
                    return Some(String::from_utf8_lossy(&out.stdout).into_owned());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            None
        })
        .await
        .unwrap();
        server.kill().unwrap();
        server.wait().unwrap();
        let out = answered.unwrap_or_else(|| panic!("`stategate {args:?} --dev` never served"));
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"status": "SERVING"}));
    }
}

#[tokio::test]
async fn https_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let gw = TestGateway::start_with(|c| {
        c.tls_cert_file = Some(cert_path.clone());
        c.tls_key_file = Some(key_path.clone());
    })
    .await;
    let url = format!("https://localhost:{}", gw.addr.port());
    let d = unique("clitls");
    tokio::task::spawn_blocking(move || {
        let ca = cert_path.to_str().unwrap();
        ok(run(stategate(&url).args(["set", &d, "t", "k", r#"{"secure":true}"#, "--ca-file", ca])));
        let out = ok(run(stategate(&url).args(["get", &d, "t", "k", "--json"]).env("STATEGATE_CA_FILE", ca)));
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["values"], json!({"secure": true}));
        // Without the CA the server is not trusted.
        failed(run(stategate(&url).args(["get", &d, "t", "k"])));
        let err = failed(run(stategate(&url).args(["get", &d, "t", "k", "--ca-file", "/no/such/ca.pem"])));
        assert!(err.contains("--ca-file /no/such/ca.pem"), "{err}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

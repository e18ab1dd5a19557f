//! The `stategate` command line against a live gateway: every client
//! subcommand, pretty and `--json` output (one object per line), times as
//! people write them, the token flag and variable, addresses without a
//! scheme, bad input, shell completions, what `stream` says while the
//! gateway is away, and `serve` as the default.

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

/// Each line of `--json` output as a JSON object.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
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
        // search with a query; --json is one state per line.
        let found = json_lines(&ok(run(stategate(&url).args(["search", &d, "user", "-q", r#"{"address.city":"Paris"}"#, "--json"]))));
        let keys: Vec<&str> = found.iter().map(|s| s["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["alice"]);
        assert_eq!(json_lines(&ok(run(stategate(&url).args(["search", &d, "user", "--json"])))).len(), 2);
        // optimistic concurrency through the flag.
        let err = failed(run(stategate(&url).args(["set", &d, "user", "alice", r#"{"name":"A2"}"#, "--expected-version", "5"])));
        assert!(err.contains("ABORTED"), "{err}");
        // del, then get is NOT_FOUND with a failing exit.
        ok(run(stategate(&url).args(["del", &d, "user", "alice"])));
        let err = failed(run(stategate(&url).args(["get", &d, "user", "alice"])));
        assert!(err.contains("NOT_FOUND"), "{err}");
        // events: the history, oldest first, including the deletion.
        let hist = json_lines(&ok(run(stategate(&url).args(["events", &d, "user", "--key", "alice", "--json"]))));
        let kinds: Vec<&str> = hist.iter().map(|e| e["kind"].as_str().unwrap()).collect();
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
        let err = failed(run(stategate(&url).args(["get", "d", "t", "k", "--addr", "http://"])));
        assert!(err.contains("invalid gateway address"), "{err}");
        let err = failed(run(stategate(&url).args(["get", "d", "t", "k", "--addr", ""])));
        assert!(err.contains("the address is empty"), "{err}");
        let err = failed(run(stategate(&url).args(["events", "d", "t", "--since", "yesterday"])));
        assert!(err.contains("--since") && err.contains("RFC 3339") && err.contains("1h"), "{err}");
        let err = failed(run(stategate(&url).args(["revert", "d", "t", "k"])));
        assert!(err.contains("--to-version") && err.contains("--to-event"), "{err}");
        let err = failed(run(stategate("http://127.0.0.1:1").args(["health"])));
        assert!(err.contains("cannot connect to http://127.0.0.1:1"), "{err}");
        let err = failed(run(stategate(&url).args(["get", "d", "t"])));
        assert!(err.contains("<KEY>"), "a missing argument is named: {err}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

/// A writer chooses its keys: one holding terminal escape sequences (clear
/// the screen, retitle the window, ring the bell) or a bidirectional
/// override is printed with those written out, so listing it cannot drive
/// the terminal of whoever reads. `--json` still carries the key as it is.
#[tokio::test]
async fn names_that_would_steer_a_terminal_are_printed_escaped() {
    let gw = TestGateway::start().await;
    let url = gw.url();
    let d = unique("cli-esc");
    tokio::task::spawn_blocking(move || {
        let key = "k\u{1b}[2J\u{1b}]0;owned\u{7}\u{202e}x";
        let shown = r"k\u{1b}[2J\u{1b}]0;owned\u{7}\u{202e}x";
        let steers = |text: &str| text.chars().any(|c| (c.is_control() && c != '\n') || c == '\u{202e}');
        let outputs = [
            ok(run(stategate(&url).args(["set", &d, "t", key, r#"{"v":"\u001b[31m","w":"\u009b2J\u202e"}"#]))),
            ok(run(stategate(&url).args(["get", &d, "t", key]))),
            ok(run(stategate(&url).args(["search", &d, "t"]))),
            ok(run(stategate(&url).args(["events", &d, "t"]))),
        ];
        for out in outputs {
            assert!(!steers(&out), "raw control characters printed: {out:?}");
            assert!(out.contains(&format!("{d}/t/{shown} v1")), "{out:?}");
            // Values as JSON escapes: C1's CSI and the override too.
            assert!(out.contains(r#"{"v":"\u001b[31m","w":"\u009b2J\u202e"}"#), "{out:?}");
        }
        // The gateway's own messages name the record too.
        let missing = format!("{key}-gone");
        let err = failed(run(stategate(&url).args(["get", &d, "t", &missing])));
        assert!(!steers(&err) && err.contains(&format!("{shown}-gone")), "{err:?}");
        // Programs get the key itself.
        let st: Value = serde_json::from_str(&ok(run(stategate(&url).args(["get", &d, "t", key, "--json"])))).unwrap();
        assert_eq!(st["key"], key);
        assert_eq!(st["values"]["v"], "\u{1b}[31m");
        assert_eq!(st["values"]["w"], "\u{9b}2J\u{202e}");
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

#[tokio::test]
async fn edit_revert_and_one_event() {
    let gw = TestGateway::start().await;
    let url = gw.url();
    let d = unique("cliedit");
    tokio::task::spawn_blocking(move || {
        let first = json_lines(&ok(run(stategate(&url).args(["set", &d, "user", "alice", r#"{"name":"Alice","city":"Paris","age":30}"#, "--json"]))));
        let first_id = first[0]["id"].as_str().unwrap().to_owned();
        // edit: a merge patch; null removes a field; pretty output names the kind.
        let out = ok(run(stategate(&url).args(["edit", &d, "user", "alice", r#"{"city":"Lyon","age":null}"#])));
        assert!(out.contains(&format!("EDIT   {d}/user/alice v2")), "{out}");
        let st = json_lines(&ok(run(stategate(&url).args(["get", &d, "user", "alice", "--json"]))));
        assert_eq!(st[0]["values"], json!({"name": "Alice", "city": "Lyon"}));
        // edit from standard input, with an expected version that holds.
        let mut child = stategate(&url)
            .args(["edit", &d, "user", "alice", "-", "--expected-version", "2", "--json"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), br#"{"city":"Nice"}"#).unwrap();
        let ev = json_lines(&ok(child.wait_with_output().unwrap()));
        assert_eq!((ev[0]["kind"].as_str(), ev[0]["version"].as_str()), (Some("EDIT"), Some("3")));
        let err = failed(run(stategate(&url).args(["edit", &d, "user", "alice", r#"{"city":"X"}"#, "--expected-version", "1"])));
        assert!(err.contains("ABORTED"), "{err}");
        let err = failed(run(stategate(&url).args(["edit", &d, "user", "nobody", r#"{"city":"X"}"#])));
        assert!(err.contains("NOT_FOUND"), "{err}");
        let err = failed(run(stategate(&url).args(["edit", &d, "user", "alice", "[]"])));
        assert!(err.contains("PATCH must be a JSON object"), "{err}");
        // revert to a version: its values are current again, as a new event.
        let ev = json_lines(&ok(run(stategate(&url).args(["revert", &d, "user", "alice", "--to-version", "1", "--json"]))));
        assert_eq!((ev[0]["kind"].as_str(), ev[0]["version"].as_str()), (Some("REVERT"), Some("4")));
        assert_eq!(ev[0]["state"]["values"], json!({"name": "Alice", "city": "Paris", "age": 30}));
        // revert to an event by id.
        let edit_id = json_lines(&ok(run(stategate(&url).args(["events", &d, "user", "--key", "alice", "--json"]))))[1]["id"].as_str().unwrap().to_owned();
        let out = ok(run(stategate(&url).args(["revert", &d, "user", "alice", "--to-event", &edit_id])));
        assert!(out.contains(&format!("REVERT {d}/user/alice v5")) && out.contains(r#""city":"Lyon""#), "{out}");
        let err = failed(run(stategate(&url).args(["revert", &d, "user", "alice", "--to-version", "99"])));
        assert!(err.contains("has no version 99"), "{err}");
        // event get: one event by id, pretty and JSON.
        let ev = json_lines(&ok(run(stategate(&url).args(["event", "get", &first_id, "--json"]))));
        assert_eq!((ev[0]["id"].as_str(), ev[0]["kind"].as_str()), (Some(first_id.as_str()), Some("SET")));
        let out = ok(run(stategate(&url).args(["event", "get", &first_id])));
        assert!(out.contains(&format!("SET    {d}/user/alice v1 {first_id}")), "{out}");
        let err = failed(run(stategate(&url).args(["event", "get", "no-such-event"])));
        assert!(err.contains("NOT_FOUND") || err.contains("INVALID_ARGUMENT"), "{err}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn events_last_desc_sort_and_human_times() {
    let gw = TestGateway::start().await;
    let client = stategate_client::Client::connect(gw.url()).await.unwrap();
    let d = unique("clilast");
    let mut written = vec![];
    for (key, n) in [("a", 3), ("b", 1), ("c", 5), ("d", 2), ("e", 4)] {
        written.push(client.set(&d, "t", key, &json!({"n": n})).await.unwrap());
    }
    let all: Vec<String> = written.iter().map(|e| e.id.clone()).collect();
    let third_time = written[2].time.to_string();
    let url = gw.url();
    tokio::task::spawn_blocking(move || {
        let events = |args: &[&str]| ids(&json_lines(&ok(run(stategate(&url).args(["events", &d, "t", "--json"]).args(args)))));
        let rev = |v: &[String]| v.iter().rev().cloned().collect::<Vec<_>>();
        assert_eq!(events(&[]), all);
        // The newest two, printed oldest first; with --desc newest first.
        assert_eq!(events(&["--last", "2"]), all[3..]);
        assert_eq!(events(&["--last", "2", "--desc"]), rev(&all[3..]));
        assert_eq!(events(&["--desc"]), rev(&all));
        // Sorted by a field of the values.
        let by_n = |ns: &[usize]| ns.iter().map(|n| all[[1, 3, 0, 4, 2][*n - 1]].clone()).collect::<Vec<_>>();
        assert_eq!(events(&["--sort", "values.n"]), by_n(&[1, 2, 3, 4, 5]));
        assert_eq!(events(&["--sort", "values.n", "--desc", "--limit", "2"]), by_n(&[5, 4]));
        assert_eq!(events(&["--sort", "values.n", "--last", "2"]), by_n(&[4, 5]));
        // Times: durations before now, RFC 3339, Unix nanoseconds (and the old names).
        assert_eq!(events(&["--since", "1h"]), all);
        assert_eq!(events(&["--until", "1h"]), Vec::<String>::new());
        assert_eq!(events(&["--since", "2262-01-01T00:00:00Z"]), Vec::<String>::new());
        assert_eq!(events(&["--since", "2000-01-01T01:00:00+01:00", "--until", "30m"]), Vec::<String>::new());
        assert_eq!(events(&["--since", &third_time]), all[2..]);
        assert_eq!(events(&["--min", &third_time]), all[2..]);
        assert_eq!(events(&["--until", &third_time]), all[..3]);
        // Text output: one line per event.
        let out = ok(run(stategate(&url).args(["events", &d, "t", "--last", "1"])));
        assert!(out.contains(&all[4]), "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn an_address_without_a_scheme_is_plain_http() {
    let gw = TestGateway::start().await;
    let hostport = gw.addr.to_string();
    let d = unique("cliaddr");
    tokio::task::spawn_blocking(move || {
        ok(run(stategate("unused").args(["set", &d, "t", "k", r#"{"n":1}"#, "--addr", &hostport])));
        let st = json_lines(&ok(run(stategate(&hostport).args(["get", &d, "t", "k", "--json"]))));
        assert_eq!(st[0]["values"], json!({"n": 1}));
        let out = ok(run(stategate(&hostport).args(["health"])));
        assert_eq!(out.trim(), format!("http://{hostport} SERVING"));
        let err = failed(run(stategate("127.0.0.1:1").args(["health"])));
        assert!(err.contains("cannot connect to http://127.0.0.1:1"), "{err}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef stategate"), ("fish", "complete -c stategate")] {
        let out = ok(run(stategate("unused").args(["completions", shell])));
        assert!(out.contains(marker), "{shell}: {out}");
        for sub in ["revert", "edit", "events", "stream", "completions"] {
            assert!(out.contains(sub), "{shell} completes {sub}");
        }
        // fish writes long flags as `-l name`.
        assert!(out.contains("to-version") && out.contains("since") && out.contains("from-time"), "{shell} completes flags");
    }
    let err = failed(run(stategate("unused").args(["completions", "tcsh"])));
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

/// A gateway process on `port` with its data in `dir` (so a restart finds
/// its events again), once it answers health checks.
fn serve(port: u16, dir: &std::path::Path) -> std::process::Child {
    let url = format!("http://127.0.0.1:{port}");
    let mut child = stategate(&url)
        .args(["--dev", "--log-format", "text", "--port", &port.to_string(), "--ops-port", "0"])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if run(stategate(&url).args(["health"])).status.success() {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the gateway on port {port} never served");
}

#[test]
fn stream_says_on_stderr_when_it_loses_and_regains_the_gateway() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::procs::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut gateway = serve(port, dir.path());
    let d = unique("clireconnect");
    let mut stream = stategate(&url).args(["stream", &d, "t", "--json"]).spawn().unwrap();
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    let stdout = stream.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = out_tx.send(line.unwrap());
        }
    });
    let (err_tx, err_rx) = std::sync::mpsc::channel();
    let stderr = stream.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = err_tx.send(line.unwrap());
        }
    });
    let set = |key: &str| {
        let out = ok(run(stategate(&url).args(["set", &d, "t", key, r#"{"n":1}"#, "--json"])));
        json_lines(&out)[0]["id"].as_str().unwrap().to_owned()
    };
    // Wait until the stream is open: a write made before could be missed
    // (the stream starts at "now"), so write until one arrives.
    let first = loop {
        let id = set("a");
        if let Ok(line) = out_rx.recv_timeout(Duration::from_secs(2)) {
            let got = serde_json::from_str::<Value>(&line).unwrap()["id"].as_str().unwrap().to_owned();
            if got == id {
                break id;
            }
        }
    };
    let stderr_until = |want: &dyn Fn(&str) -> bool, what: &str| -> Vec<String> {
        let mut seen = vec![];
        loop {
            let line = err_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("stderr never said {what}; it said {seen:?}"));
            let done = want(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    };
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let said = stderr_until(&|l| l.contains("reconnect attempt 2"), "a second reconnect attempt");
    assert!(said[0].starts_with("stategate stream: connection lost (") && said[0].ends_with("); reconnecting"), "{said:?}");
    assert!(said.iter().any(|l| l.contains("reconnect attempt 1 in ")), "{said:?}");
    assert!(said.last().unwrap().contains("(last attempt: UNAVAILABLE"), "the failed attempt is named: {said:?}");
    let mut gateway = serve(port, dir.path());
    let said = stderr_until(&|l| l.contains("reconnected"), "that it reconnected");
    assert!(said.last().unwrap().ends_with(&format!("resuming after event {first}")), "{said:?}");
    let second = set("b");
    let line = out_rx.recv_timeout(Duration::from_secs(60)).expect("the event written after the restart");
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["id"], second.as_str());
    stream.kill().unwrap();
    stream.wait().unwrap();
    gateway.kill().unwrap();
    gateway.wait().unwrap();
}

#[tokio::test]
async fn catalog_lists_domains_and_types() {
    let gw = TestGateway::start().await;
    let url = gw.url();
    let (d1, d2) = (unique("clicat"), unique("clicat"));
    tokio::task::spawn_blocking(move || {
        for (d, t, k) in [(&d1, "user", "a"), (&d1, "user", "b"), (&d1, "order", "o"), (&d2, "user", "z")] {
            ok(run(stategate(&url).args(["set", d, t, k, r#"{"n":1}"#])));
        }
        ok(run(stategate(&url).args(["del", &d1, "user", "b"])));
        // One domain: its types, by name, one JSON object per line.
        let entries = json_lines(&ok(run(stategate(&url).args(["catalog", &d1, "--json"]))));
        let got: Vec<(&str, &str, &str, &str)> = entries
            .iter()
            .map(|e| (e["domain"].as_str().unwrap(), e["type"].as_str().unwrap(), e["records"].as_str().unwrap(), e["events"].as_str().unwrap()))
            .collect();
        assert_eq!(got, [(d1.as_str(), "order", "1", "1"), (d1.as_str(), "user", "1", "3")]);
        assert!(entries[0]["lastEventTime"].as_str().unwrap().parse::<i64>().unwrap() > 0);
        // Every domain, text for people.
        let out = ok(run(stategate(&url).args(["catalog"])));
        assert!(out.contains(&format!("{d1}/user 1 record(s) 3 event(s), last ")), "{out}");
        assert!(out.contains(&format!("{d2}/user 1 record(s) 1 event(s)")), "{out}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

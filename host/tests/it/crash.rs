//! Crash consistency (on the embedded default, PostgreSQL and MySQL):
//! concurrent writers, SIGKILL of the gateway mid-load, restart, and then
//! every acknowledged write is present with its event, state and history
//! agree, and versions have no gaps. Repeated at
//! several kill points (counted in acknowledged writes, not in time).

use crate::wire::*;
use serde_json::json;
use stategate::proto::{self as pb, event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

const WRITERS: usize = 8;
const RECORDS: usize = 16;

/// A gateway on `storage` (a provider object; `None`: the default sqlite
/// file in `dir`).
fn spawn(dir: &std::path::Path, port: u16, storage: Option<&str>) -> Child {
    let mut cmd = Command::new(crate::procs::stategate_bin());
    if let Some(spec) = storage {
        cmd.env("STATEGATE_STORAGE_PROVIDER", spec);
    }
    cmd.args(["--dev", "--port", &port.to_string(), "--ops-port", "0", "--log-format", "text"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log_file(dir))
        .spawn()
        .unwrap()
}

/// Every run's log, appended to one file in the data's dir, so a failure
/// can show what the gateway said.
fn log_file(dir: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join("gateway.log")).unwrap()
}

/// The end of the gateways' log, for a failure's message.
fn log_tail(dir: &std::path::Path) -> String {
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Longest a round may take to reach its kill: far more than it needs
/// (seconds), and a failure naming why instead of a hang when the writes
/// stop succeeding before it.
const ROUND: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn connect(port: u16) -> Channel {
    for _ in 0..200 {
        if let Ok(c) = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway did not come up");
}

#[derive(Default)]
struct Acked {
    /// Acknowledged events by id: (key, version).
    events: HashMap<String, (String, i64)>,
}

async fn run_until_killed(dir: &std::path::Path, storage: Option<&str>, domain: &str, kill_after: usize) -> Acked {
    let port = free_port();
    let mut child = spawn(dir, port, storage);
    let channel = connect(port).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    // Why each writer stopped before the kill, if one did.
    let stopped = Arc::new(Mutex::new(Vec::<String>::new()));
    let (kill_tx, mut kill_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut writers = vec![];
    for w in 0..WRITERS {
        let mut st = StateServiceClient::new(channel.clone());
        let acked = acked.clone();
        let domain = domain.to_owned();
        let kill_tx = kill_tx.clone();
        let stopped = stopped.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("r{}", (w + i * 7) % RECORDS);
                let result = if i % 11 == 10 {
                    st.del(state_ref(&domain, "t", &key)).await
                } else {
                    st.set(state(&domain, "t", &key, json!({"w": w, "i": i, "pad": "x".repeat(200)}))).await
                };
                match result {
                    Ok(ev) => {
                        let ev = ev.into_inner();
                        let mut a = acked.lock().unwrap();
                        a.events.insert(ev.id, (key, ev.version));
                        if a.events.len() >= kill_after {
                            let _ = kill_tx.try_send(());
                        }
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => {
                        // The process is gone, or (a failure) a write failed before the kill.
                        stopped.lock().unwrap().push(format!("writer {w}: {s}"));
                        return;
                    }
                }
            }
        }));
    }
    drop(kill_tx);
    match tokio::time::timeout(ROUND, kill_rx.recv()).await {
        Ok(Some(())) => {}
        outcome => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} acknowledged writes, not the {kill_after} to kill after ({}); writers stopped: {:?}; gateway log:\n{}",
                acked.lock().unwrap().events.len(),
                if outcome.is_err() { "timed out" } else { "every writer stopped" },
                stopped.lock().unwrap(),
                log_tail(dir)
            );
        }
    }
    // SIGKILL: no shutdown hook runs, no buffer is flushed.
    child.kill().unwrap();
    child.wait().unwrap();
    for w in writers {
        let _ = w.await;
    }
    Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap()
}

async fn check_consistency(dir: &std::path::Path, storage: Option<&str>, domain: &str, acked: &Acked) {
    let port = free_port();
    let mut child = spawn(dir, port, storage);
    let checked = tokio::time::timeout(ROUND, check_on(port, domain, acked)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    if checked.is_err() {
        panic!("reading the history back took over {ROUND:?}; gateway log:\n{}", log_tail(dir));
    }
}

/// `check_consistency`'s reads and checks, against the gateway on `port`.
async fn check_on(port: u16, domain: &str, acked: &Acked) {
    let channel = connect(port).await;
    let mut st = StateServiceClient::new(channel.clone());
    let mut ev = EventServiceClient::new(channel);
    let mut history: Vec<pb::Event> = vec![];
    let mut offset = 0;
    loop {
        let page = ev
            .search(pb::SearchEventOpts { domain: domain.into(), r#type: "t".into(), limit: 1000, offset, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .events;
        if page.is_empty() {
            break;
        }
        offset += page.len() as i64;
        history.extend(page);
    }
    let ids: HashMap<&str, &pb::Event> = history.iter().map(|e| (e.id.as_str(), e)).collect();
    for (id, (key, version)) in &acked.events {
        let stored = ids.get(id.as_str()).unwrap_or_else(|| panic!("acknowledged event {id} was lost"));
        assert_eq!((&stored.state.as_ref().unwrap().key, stored.version), (key, *version));
    }
    let mut per_record: HashMap<String, Vec<&pb::Event>> = HashMap::new();
    for e in &history {
        per_record.entry(e.state.as_ref().unwrap().key.clone()).or_default().push(e);
    }
    for (key, events) in per_record {
        let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=events.len() as i64).collect::<Vec<_>>(), "no gaps in {key}");
        let last = events.last().unwrap();
        match st.get(state_ref(domain, "t", &key)).await {
            Ok(s) => {
                let s = s.into_inner();
                assert_eq!(s.version, last.version, "state of {key} matches its last event");
                assert_eq!(s.values, last.state.as_ref().unwrap().values);
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::NotFound);
                assert_eq!(last.kind, pb::EventKind::Del as i32, "{key} has no state, so its last event is a deletion");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_write() {
    kill_repeatedly(None).await;
}

/// The same on the SQL providers: the gateway is killed, the database is
/// not, and what the gateway acknowledged was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_write_on_postgres() {
    let Some(scratch) = crate::sql_backends::Scratch::new(crate::sql_backends::Kind::Postgres) else { return };
    kill_repeatedly(Some(&scratch.spec().to_string())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_write_on_mysql() {
    let Some(scratch) = crate::sql_backends::Scratch::new(crate::sql_backends::Kind::Mysql) else { return };
    kill_repeatedly(Some(&scratch.spec().to_string())).await;
}

async fn kill_repeatedly(storage: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let domain = unique("crash");
    let mut all = Acked::default();
    for kill_after in [1, 40, 400, 1500] {
        let acked = run_until_killed(dir.path(), storage, &domain, kill_after).await;
        assert!(acked.events.len() >= kill_after);
        all.events.extend(acked.events);
        check_consistency(dir.path(), storage, &domain, &all).await;
    }
}

//! Crash consistency (on the embedded default, PostgreSQL and MySQL):
//! concurrent writers, SIGKILL of the gateway mid-load, restart, and then
//! every acknowledged write is present with its event, state and history
//! agree, and versions have no gaps. Repeated at
//! several kill points (counted in acknowledged writes, not in time).

use crate::procs::Gateway;
use crate::wire::*;
use serde_json::json;
use stategate::proto::{self as pb, event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WRITERS: usize = 8;
const RECORDS: usize = 16;

/// A gateway on `storage` (a provider object; `None`: the default sqlite
/// file in `dir`), with the `inmem` channel.
async fn spawn(dir: &std::path::Path, storage: Option<&str>) -> Gateway {
    Gateway::spawn(dir, storage.unwrap_or(r#"{"name":"sqlite"}"#), r#"{"name":"inmem"}"#).await
}

/// Longest a round may take to reach its kill: far more than it needs
/// (seconds), and a failure naming why instead of a hang when the writes
/// stop succeeding before it.
const ROUND: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Acked {
    /// Acknowledged events by id: (key, version).
    events: HashMap<String, (String, i64)>,
}

async fn run_until_killed(dir: &std::path::Path, storage: Option<&str>, domain: &str, kill_after: usize) -> Acked {
    let gateway = spawn(dir, storage).await;
    let channel = gateway.channel().await;
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
            panic!(
                "{} acknowledged writes, not the {kill_after} to kill after ({}); writers stopped: {:?}; gateway log:\n{}",
                acked.lock().unwrap().events.len(),
                if outcome.is_err() { "timed out" } else { "every writer stopped" },
                stopped.lock().unwrap(),
                gateway.log()
            );
        }
    }
    // SIGKILL: no shutdown hook runs, no buffer is flushed.
    drop(gateway);
    for w in writers {
        let _ = w.await;
    }
    Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap()
}

async fn check_consistency(dir: &std::path::Path, storage: Option<&str>, domain: &str, acked: &Acked) {
    let gateway = spawn(dir, storage).await;
    if tokio::time::timeout(ROUND, check_on(&gateway, domain, acked)).await.is_err() {
        panic!("reading the history back took over {ROUND:?}; gateway log:\n{}", gateway.log());
    }
}

/// `check_consistency`'s reads and checks, against `gateway`.
async fn check_on(gateway: &Gateway, domain: &str, acked: &Acked) {
    let channel = gateway.channel().await;
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

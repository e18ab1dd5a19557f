//! Backend faults: each backend (Redis, NATS, the MongoDB-compatible server,
//! PostgreSQL, MariaDB) is killed under load and started again, on a private server of its own
//! so the shared test services are untouched. Checked: writes during the
//! outage fail fast with UNAVAILABLE (or succeed, when only the channel is
//! down), `/readyz` names the provider that is down and then recovers, the
//! gateway reconnects by itself, streams resume with no event lost, and no
//! acknowledged write is lost.

use crate::multi_instance::{Received, metric, stream_into};
use crate::procs::{self, Gateway, Server, have, wait_readyz};
use crate::wire::*;
use serde_json::json;
use stategate::proto::{self as pb, event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Far above any bounded failure of the gateway (a few seconds): a call that
/// runs into it means the gateway hung on a dead backend.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Load {
    pub acked: Mutex<HashSet<String>>,
    pub errors: Mutex<Vec<tonic::Code>>,
    stop: AtomicBool,
}

impl Load {
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn errors(&self) -> usize {
        self.errors.lock().unwrap().len()
    }

    pub async fn wait(&self, what: &str, done: impl Fn(&Load) -> bool) {
        for _ in 0..1200 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("load never reached: {what} (acked {}, errors {:?})", self.acked(), self.errors.lock().unwrap());
    }
}

/// Writers setting records of `domain` until told to stop.
pub fn start_load(channel: Channel, domain: &str) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let tasks = (0..4)
        .map(|w| {
            let mut st = StateServiceClient::new(channel.clone());
            let load = load.clone();
            let domain = domain.to_owned();
            tokio::spawn(async move {
                let mut i = 0;
                while !load.stop.load(Ordering::Relaxed) {
                    let mut req = tonic::Request::new(state(&domain, "t", &format!("w{w}r{}", i % 4), json!({"w": w, "i": i})));
                    req.set_timeout(CLIENT_DEADLINE);
                    match st.set(req).await {
                        Ok(ev) => {
                            load.acked.lock().unwrap().insert(ev.into_inner().id);
                        }
                        Err(status) => {
                            load.errors.lock().unwrap().push(status.code());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    (load, tasks)
}

pub async fn stop_load(load: &Load, tasks: Vec<tokio::task::JoinHandle<()>>) {
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

fn provider_down(which: &'static str, name: &'static str) -> impl Fn(u16, &serde_json::Value) -> bool {
    move |status, body| status == 503 && body[which]["provider"] == name && body[which]["ready"] == false
}

pub fn all_ready(status: u16, body: &serde_json::Value) -> bool {
    status == 200 && body["ready"] == true
}

/// Kills a channel backend under load, restarts it, and checks recovery.
/// `resubscribed` tells whether the gateway holds a subscription on the
/// restarted server again.
pub async fn channel_restart(mut server: Server, channel_spec: serde_json::Value, name: &'static str, resubscribed: impl AsyncFn(&Server) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let storage = json!({"name": "sqlite", "path": dir.path().join("db.sqlite")}).to_string();
    let gw = Gateway::spawn(dir.path(), &storage, &channel_spec.to_string()).await;
    wait_readyz(&gw.ops_url(), "ready at start", all_ready).await;
    let domain = unique("fault");
    let stream = stream_into(gw.channel().await, &domain).await;
    let (load, tasks) = start_load(gw.channel().await, &domain);
    load.wait("writes before the outage", |l| l.acked() >= 20).await;

    server.kill();
    let body = wait_readyz(&gw.ops_url(), "the channel down", provider_down("channel", name)).await;
    assert_eq!(body["storage"]["ready"], true, "{body}");
    // Storage is fine, so writes go on (their broadcast fails fast).
    let before = load.acked();
    load.wait("writes during the outage", |l| l.acked() >= before + 20).await;

    server.start().await;
    wait_readyz(&gw.ops_url(), "recovery", all_ready).await;
    for _ in 0..300 {
        if resubscribed(&server).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(resubscribed(&server).await, "the gateway subscribed again on the restarted {name}");
    let swept_before = metric(&gw.ops_url(), "stategate_hub_sweep_deliveries_total").await;
    let before = load.acked();
    load.wait("writes after recovery", |l| l.acked() >= before + 20).await;
    stop_load(&load, tasks).await;

    assert_eq!(*load.errors.lock().unwrap(), vec![], "no write failed: only the channel was down");
    let acked = load.acked.lock().unwrap().clone();
    eprintln!("{name} restart: {} writes acknowledged, none failed", acked.len());
    stream.wait_for(&acked, "the live stream across the outage").await;
    stream.assert_ordered_per_record();
    // After recovery events travel through the channel again: the storage
    // sweep (the safety net) delivered at most a few of the new ones.
    let after_recovery = (acked.len() - before) as f64;
    let swept = metric(&gw.ops_url(), "stategate_hub_sweep_deliveries_total").await - swept_before;
    assert!(swept < after_recovery / 2.0, "{swept} of {after_recovery} events after recovery came from the sweep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load() {
    if !have("redis-server") {
        return;
    }
    let server = procs::redis_server().await;
    let spec = json!({"name": "redis", "addr": format!("127.0.0.1:{}", server.port)});
    channel_restart(server, spec, "redis", async |s: &Server| {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", s.port)) else { return false };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return false };
        let n: redis::RedisResult<i64> = redis::cmd("PUBSUB").arg("NUMPAT").query_async(&mut conn).await;
        n.is_ok_and(|n| n >= 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_load() {
    if !have("nats-server") {
        return;
    }
    let server = procs::nats_server().await;
    let spec = json!({"name": "nats", "addr": format!("127.0.0.1:{}", server.port)});
    channel_restart(server, spec, "nats", async |s: &Server| {
        let url = format!("http://127.0.0.1:{}/connz?subs=1", procs::nats_monitor_port(s));
        let Ok(resp) = reqwest::get(url).await else { return false };
        let Ok(body) = resp.json::<serde_json::Value>().await else { return false };
        // The hub's subscription to every topic (`stategate.*.*`).
        let conns = body["connections"].as_array().cloned().unwrap_or_default();
        conns.iter().any(|c| {
            c["subscriptions_list"]
                .as_array()
                .is_some_and(|subs| subs.iter().any(|s| s.as_str() == Some("stategate.*.*")))
        })
    })
    .await;
}

/// A stream a client keeps open: on an error it reopens after the last
/// event it got, as the API documents, so it must end up with everything.
fn resuming_stream(channel: Channel, domain: &str, from_time: i64) -> Received {
    let received = Received::default();
    let sink = received.clone();
    let domain = domain.to_owned();
    tokio::spawn(async move {
        let mut client = EventServiceClient::new(channel);
        loop {
            let last = sink.0.lock().unwrap().last().map(|e| e.id.clone());
            let opts = match last {
                Some(id) => pb::StreamOpts { domain: domain.clone(), r#type: "*".into(), after_event_id: id, ..Default::default() },
                None => pb::StreamOpts { domain: domain.clone(), r#type: "*".into(), from_time, ..Default::default() },
            };
            if let Ok(resp) = client.stream(opts).await {
                let mut stream = resp.into_inner();
                while let Some(Ok(e)) = stream.next().await {
                    sink.0.lock().unwrap().push(e);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_restart_under_load() {
    if !have("secantusd-py") {
        return;
    }
    let server = procs::mongo_server().await;
    let storage = json!({"name": "mongo", "addr": format!("mongodb://127.0.0.1:{}/?directConnection=true", server.port), "database": "faults"});
    storage_restart_under_load(server, storage, "mongo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load() {
    if !procs::have_postgres_server() {
        return;
    }
    let server = procs::postgres_server().await;
    let storage = json!({"name": "postgres", "addr": format!("postgres://postgres@127.0.0.1:{}/postgres", server.port),
        "schema": "faults", "connect_timeout_ms": 2000});
    storage_restart_under_load(server, storage, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restart_under_load() {
    if !procs::have_mariadb_server() {
        return;
    }
    let server = procs::mariadb_server().await;
    let admin = format!("mysql://root@127.0.0.1:{}/mysql", server.port);
    {
        use sqlx::Connection;
        let mut c = sqlx::MySqlConnection::connect(&admin).await.expect("root connects to the private MariaDB");
        sqlx::query("CREATE DATABASE faults").execute(&mut c).await.unwrap();
    }
    let storage = json!({"name": "mariadb", "addr": format!("mysql://root@127.0.0.1:{}/faults", server.port), "connect_timeout_ms": 2000});
    storage_restart_under_load(server, storage, "mysql").await;
}

/// Kills a storage server under load, restarts it, and checks recovery:
/// writes fail fast with UNAVAILABLE meanwhile, `/readyz` names `provider`,
/// the gateway recovers by itself and no acknowledged write is lost.
async fn storage_restart_under_load(mut server: Server, storage: serde_json::Value, provider: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::spawn(dir.path(), &storage.to_string(), r#"{"name":"inmem"}"#).await;
    wait_readyz(&gw.ops_url(), "ready at start", all_ready).await;
    let domain = unique("fault");
    let t0 = stategate::model::now_nanos();
    let stream = resuming_stream(gw.channel().await, &domain, t0);
    let (load, tasks) = start_load(gw.channel().await, &domain);
    load.wait("writes before the outage", |l| l.acked() >= 30).await;

    server.kill();
    let body = wait_readyz(&gw.ops_url(), "the storage down", provider_down("storage", provider)).await;
    assert_eq!(body["channel"]["ready"], true, "{body}");
    let before = load.errors();
    load.wait("writes failing during the outage", |l| l.errors() >= before + 8).await;

    server.start().await;
    wait_readyz(&gw.ops_url(), "recovery", all_ready).await;
    let before = load.acked();
    load.wait("writes after recovery", |l| l.acked() >= before + 30).await;
    stop_load(&load, tasks).await;

    // Failed fast, and as UNAVAILABLE: never a hang into the client's
    // deadline, never an internal error.
    let errors = load.errors.lock().unwrap().clone();
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|c| *c == tonic::Code::Unavailable), "error codes during the outage: {errors:?}");

    // Every acknowledged write survived the kill of the server, with its
    // state, and versions have no gaps.
    let acked = load.acked.lock().unwrap().clone();
    eprintln!("{provider} restart: {} writes acknowledged, {} failed with UNAVAILABLE", acked.len(), errors.len());
    let channel = gw.channel().await;
    let mut ev = EventServiceClient::new(channel.clone());
    let mut st = StateServiceClient::new(channel);
    let mut history = vec![];
    loop {
        let page = ev
            .search(pb::SearchEventOpts { domain: domain.clone(), r#type: "t".into(), limit: 1000, offset: history.len() as i64, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .events;
        if page.is_empty() {
            break;
        }
        history.extend(page);
    }
    let stored: HashSet<String> = history.iter().map(|e| e.id.clone()).collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}\nserver log:\n{}", lost.len(), &lost[..lost.len().min(3)], server.log());
    let mut per_record: HashMap<String, Vec<&pb::Event>> = HashMap::new();
    for e in &history {
        per_record.entry(e.state.as_ref().unwrap().key.clone()).or_default().push(e);
    }
    for (key, events) in per_record {
        let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=events.len() as i64).collect::<Vec<_>>(), "no gaps in {key}");
        let s = st.get(state_ref(&domain, "t", &key)).await.unwrap().into_inner();
        assert_eq!(s.version, events.last().unwrap().version, "state of {key} matches its last event");
    }
    stream.wait_for(&acked, "the stream across the outage").await;
    stream.assert_ordered_per_record();
}

//! Two gateway processes sharing one storage and one channel (Mongo over
//! Redis, NATS (core and JetStream), stan, Kafka and RabbitMQ, PostgreSQL over NATS, MySQL over Redis;
//! Mongo over the MQTT guest channel is in `mqtt.rs`): a stream
//! on B receives every write made on A, in order per record, and a write on
//! B with a version made stale on A is refused.

use crate::harness::backend_url;
use crate::procs::{Gateway, readyz};
use crate::wire::*;
use serde_json::json;
use stategate::proto::{self as pb, event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;

const WRITERS: usize = 4;
const RECORDS_PER_WRITER: usize = 3;
const WRITES_PER_WRITER: usize = 60;

/// Events a stream received, kept by a background task.
#[derive(Clone, Default)]
pub struct Received(pub Arc<Mutex<Vec<pb::Event>>>);

impl Received {
    pub fn ids(&self) -> HashSet<String> {
        self.0.lock().unwrap().iter().map(|e| e.id.clone()).collect()
    }

    /// Waits (bounded, generously) until every id in `want` arrived.
    pub async fn wait_for(&self, want: &HashSet<String>, what: &str) {
        for _ in 0..1200 {
            let got = self.ids();
            if want.is_subset(&got) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = self.ids();
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        panic!("{what}: {} of {} events never arrived, e.g. {missing:?}", want.difference(&got).count(), want.len());
    }

    /// Per record, the versions received must strictly increase.
    pub fn assert_ordered_per_record(&self) {
        let mut last: HashMap<String, i64> = HashMap::new();
        for e in self.0.lock().unwrap().iter() {
            let key = e.state.as_ref().unwrap().key.clone();
            let prev = last.insert(key.clone(), e.version).unwrap_or(0);
            assert!(e.version > prev, "record {key}: version {} arrived after {prev}", e.version);
        }
    }
}

/// Opens a live stream and collects it in the background.
pub async fn stream_into(channel: tonic::transport::Channel, domain: &str) -> Received {
    let mut client = EventServiceClient::new(channel);
    let mut stream = client
        .stream(pb::StreamOpts { domain: domain.into(), r#type: "*".into(), ..Default::default() })
        .await
        .expect("the stream opens")
        .into_inner();
    let received = Received::default();
    let sink = received.clone();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            match item {
                Ok(e) => sink.0.lock().unwrap().push(e),
                // Reported by `wait_for` as missing events.
                Err(status) => {
                    eprintln!("the stream failed: {status:?}");
                    return;
                }
            }
        }
    });
    received
}

pub async fn two_instances_share_state(channel_spec: serde_json::Value) {
    let Some(mongo) = backend_url("MONGO") else { return };
    let storage = json!({"name": "mongo", "addr": mongo, "database": unique("sgmulti").replace('-', "_")});
    two_instances_share(storage, channel_spec).await;
}

/// Two gateways on one storage (`storage_spec`) and one channel.
async fn two_instances_share(storage_spec: serde_json::Value, channel_spec: serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_spec.to_string();
    let channel = channel_spec.to_string();
    let a = Gateway::spawn(dir.path(), &storage, &channel).await;
    let b = Gateway::spawn(dir.path(), &storage, &channel).await;
    for gw in [&a, &b] {
        let (status, body) = readyz(&gw.ops_url()).await;
        assert_eq!(status, 200, "{body}");
    }
    let domain = unique("multi");
    let on_b = stream_into(b.channel().await, &domain).await;

    // Writers on A, each owning a few records, each write with the version
    // it expects, so A's history per record is exactly 1, 2, 3, ...
    let a_channel = a.channel().await;
    let mut writers = vec![];
    for w in 0..WRITERS {
        let mut st = StateServiceClient::new(a_channel.clone());
        let domain = domain.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = vec![];
            let mut versions = [0i64; RECORDS_PER_WRITER];
            for i in 0..WRITES_PER_WRITER {
                let r = i % RECORDS_PER_WRITER;
                let mut s = state(&domain, if r == 0 { "x" } else { "y" }, &format!("w{w}r{r}"), json!({"i": i}));
                s.expected_version = Some(versions[r]);
                let ev = st.set(s).await.expect("a write on A succeeds").into_inner();
                versions[r] = ev.version;
                ids.push(ev.id);
            }
            ids
        }));
    }
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    assert_eq!(written.len(), WRITERS * WRITES_PER_WRITER);
    on_b.wait_for(&written, "stream on B").await;
    on_b.assert_ordered_per_record();
    assert_eq!(on_b.0.lock().unwrap().len(), written.len(), "no duplicates");
    // The events crossed through the channel: B's storage sweep (the safety
    // net for lost broadcasts) delivered at most a few of them.
    let swept = metric(&b.ops_url(), "stategate_hub_sweep_deliveries_total").await;
    assert!(swept < written.len() as f64 / 2.0, "{swept} of {} events came from the sweep, not the channel", written.len());

    // A stale expected version, made stale on A, is refused on B.
    let mut st_a = StateServiceClient::new(a.channel().await);
    let mut st_b = StateServiceClient::new(b.channel().await);
    let key = "contended";
    let v1 = st_a.set(state(&domain, "x", key, json!({"by": "a"}))).await.unwrap().into_inner().version;
    let mut s = state(&domain, "x", key, json!({"by": "a", "n": 2}));
    s.expected_version = Some(v1);
    st_a.set(s).await.unwrap();
    let mut stale = state(&domain, "x", key, json!({"by": "b"}));
    stale.expected_version = Some(v1);
    let err = st_b.set(stale).await.expect_err("a stale version is refused");
    assert!(
        matches!(err.code(), tonic::Code::Aborted | tonic::Code::FailedPrecondition),
        "conflict status: {err:?}"
    );
    let now = st_b.get(state_ref(&domain, "x", key)).await.unwrap().into_inner();
    assert_eq!((now.version, now.values.map(|v| from_struct(&v))), (v1 + 1, Some(json!({"by": "a", "n": 2.0}))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_redis() {
    let Some(url) = backend_url("REDIS") else { return };
    two_instances_share_state(json!({"name": "redis", "addr": url, "prefix": unique("sgmulti")})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_nats() {
    let Some(url) = backend_url("NATS") else { return };
    two_instances_share_state(json!({"name": "nats", "addr": url, "prefix": unique("sgmulti")})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_nats_jetstream() {
    let Some(url) = backend_url("NATS") else { return };
    two_instances_share_state(crate::backends::nats_jetstream_spec(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_stan() {
    let Some(url) = backend_url("NATS") else { return };
    two_instances_share_state(json!({"name": "stan", "addr": url, "cluster": "test-cluster", "prefix": "stategate-test-stan"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_kafka() {
    let Some(url) = backend_url("KAFKA") else { return };
    two_instances_share_state(json!({"name": "kafka", "addr": url, "topic": unique("sgmulti"), "partitions": 3})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_rabbitmq() {
    let Some(url) = backend_url("AMQP") else { return };
    two_instances_share_state(json!({"name": "rabbitmq", "addr": url, "exchange": "stategate-test"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_over_nats() {
    use crate::sql_backends::{Kind, Scratch};
    let Some(url) = backend_url("NATS") else { return };
    let Some(scratch) = Scratch::new(Kind::Postgres) else { return };
    two_instances_share(scratch.spec(), json!({"name": "nats", "addr": url, "prefix": unique("sgmulti")})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_mysql_over_redis() {
    use crate::sql_backends::{Kind, Scratch};
    let Some(url) = backend_url("REDIS") else { return };
    let Some(scratch) = Scratch::new(Kind::Mysql) else { return };
    two_instances_share(scratch.spec(), json!({"name": "redis", "addr": url, "prefix": unique("sgmulti")})).await;
}

/// A counter from an instance's `/metrics` (0 when absent).
pub async fn metric(ops_url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{ops_url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `max_payload` a NATS server announces in its INFO line.
async fn nats_max_payload(url: &str) -> usize {
    use tokio::io::AsyncBufReadExt;
    let addr = url.trim_start_matches("nats://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stream).read_line(&mut line).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(line.trim_start_matches("INFO ").trim()).unwrap();
    info["max_payload"].as_u64().unwrap() as usize
}

/// An event larger than the NATS server's payload limit (1 MiB by default,
/// below the gateway's 4 MiB message limit) cannot be broadcast: the write
/// still succeeds (storage has it), the failed publish is counted, and the
/// other instance's stream gets the event from storage (core NATS and
/// JetStream alike). docs/backends.md says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_beyond_the_nats_payload_limit_arrive_from_storage() {
    let (Some(url), Some(mongo)) = (backend_url("NATS"), backend_url("MONGO")) else { return };
    let limit = nats_max_payload(&url).await;
    if limit + 64 * 1024 > 4 << 20 {
        eprintln!("SKIPPED: this NATS server takes {limit}-byte payloads, not below the gateway's 4 MiB limit");
        return;
    }
    for channel in [json!({"name": "nats", "addr": url, "prefix": unique("sgbig")}), crate::backends::nats_jetstream_spec(&url)] {
        let dir = tempfile::tempdir().unwrap();
        let storage = json!({"name": "mongo", "addr": mongo, "database": unique("sgbig").replace('-', "_")}).to_string();
        let a = Gateway::spawn(dir.path(), &storage, &channel.to_string()).await;
        let b = Gateway::spawn(dir.path(), &storage, &channel.to_string()).await;
        let domain = unique("big");
        let on_b = stream_into(b.channel().await, &domain).await;
        let mut st = StateServiceClient::new(a.channel().await);
        let small = st.set(state(&domain, "t", "small", json!({"n": 1}))).await.unwrap().into_inner();
        let big = st
            .set(state(&domain, "t", "big", json!({"blob": "x".repeat(limit + 1024)})))
            .await
            .expect("the write succeeds although it cannot be broadcast")
            .into_inner();
        on_b.wait_for(&HashSet::from([small.id, big.id.clone()]), &format!("stream on B over {channel}")).await;
        assert_eq!(metric(&a.ops_url(), "stategate_publish_failures_total").await, 1.0, "{channel}");
        assert!(metric(&b.ops_url(), "stategate_hub_sweep_deliveries_total").await >= 1.0, "{channel}");
        let got = st.get(state_ref(&domain, "t", "big")).await.unwrap().into_inner();
        assert_eq!(got.version, 1);
    }
}

//! The conformance suites against the real backends (MongoDB-compatible
//! server, Redis, NATS), each run isolated in its own database, channel
//! prefix or subject prefix, plus checks specific to those providers.

use crate::harness::backend_url;
use serde_json::json;
use stategate::channel::nats::{NatsChannel, NatsConfig};
use stategate::channel::redis::{RedisChannel, RedisConfig};
use stategate::model::*;
use stategate::storage::mongo::MongoStorage;
use std::sync::{Arc, OnceLock};

/// One name per test process, so runs never see each other's data.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("sgt{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
}

pub async fn mongo() -> Option<MongoStorage> {
    let url = backend_url("MONGO")?;
    Some(MongoStorage::open(&url, run_id()).await.expect("mongo storage opens"))
}

/// A provider object's options: the object without its `"name"`.
pub fn spec_options(mut spec: serde_json::Value) -> serde_json::Value {
    spec.as_object_mut().unwrap().remove("name");
    spec
}

pub fn redis_config(url: &str, prefix: &str) -> RedisConfig {
    let spec = json!({"name": "redis", "addr": url, "prefix": prefix});
    serde_json::from_value(spec_options(spec)).unwrap()
}

pub fn nats_config(url: &str, prefix: &str) -> NatsConfig {
    let spec = json!({"name": "nats", "addr": url, "prefix": prefix});
    serde_json::from_value(spec_options(spec)).unwrap()
}

storage_conformance!(mongo_storage, async {
    crate::backends::mongo().await.map(|s| Arc::new(s) as stategate::storage::DynStorage)
});

/// The same provider on a server without transactions (standalone scheme).
pub async fn mongo_standalone() -> Option<MongoStorage> {
    let url = backend_url("MONGO_STANDALONE")?;
    Some(MongoStorage::open(&url, run_id()).await.expect("mongo storage opens on a standalone server"))
}

storage_conformance!(mongo_standalone_storage, async {
    crate::backends::mongo_standalone().await.map(|s| Arc::new(s) as stategate::storage::DynStorage)
});

channel_conformance!(redis_channel, async {
    let url = crate::harness::backend_url("REDIS")?;
    let c = stategate::channel::redis::RedisChannel::open(&crate::backends::redis_config(&url, crate::backends::run_id()))
        .await
        .expect("redis channel opens");
    Some(Arc::new(c) as stategate::channel::DynChannel)
});

channel_conformance!(nats_channel, async {
    let url = crate::harness::backend_url("NATS")?;
    let c = stategate::channel::nats::NatsChannel::open(&crate::backends::nats_config(&url, crate::backends::run_id()))
        .await
        .expect("nats channel opens");
    Some(Arc::new(c) as stategate::channel::DynChannel)
});

/// Each test process publishes to a topic of its own (created by the
/// provider), so runs never see each other's events.
pub fn kafka_config(url: &str) -> stategate::channel::kafka::KafkaConfig {
    let spec = json!({"name": "kafka", "addr": url, "topic": run_id(), "partitions": 3});
    serde_json::from_value(spec_options(spec)).unwrap()
}

channel_conformance!(kafka_channel, async {
    let url = crate::harness::backend_url("KAFKA")?;
    let c = stategate::channel::kafka::KafkaChannel::open(&crate::backends::kafka_config(&url))
        .await
        .expect("kafka channel opens");
    Some(Arc::new(c) as stategate::channel::DynChannel)
});

/// One exchange for all test runs (exchanges are durable: one per run would
/// pile up on the shared broker); checks use domains of their own.
pub fn rabbitmq_config(url: &str) -> stategate::channel::rabbitmq::RabbitMqConfig {
    let spec = json!({"name": "rabbitmq", "addr": url, "exchange": "stategate-test"});
    serde_json::from_value(spec_options(spec)).unwrap()
}

channel_conformance!(rabbitmq_channel, async {
    let url = crate::harness::backend_url("AMQP")?;
    let c = stategate::channel::rabbitmq::RabbitMqChannel::open(&crate::backends::rabbitmq_config(&url))
        .await
        .expect("rabbitmq channel opens");
    Some(Arc::new(c) as stategate::channel::DynChannel)
});

/// The durable mode on the shared server: one stream for every test run
/// (in memory, ten minutes of events), so runs do not pile up streams;
/// checks use domains of their own.
pub fn nats_jetstream_spec(url: &str) -> serde_json::Value {
    json!({"name": "nats", "addr": url, "prefix": "stategate-test-js", "jetstream": true, "storage": "memory", "max_age_secs": 600})
}

channel_conformance!(nats_jetstream_channel, async {
    let url = crate::harness::backend_url("NATS")?;
    let config: NatsConfig = serde_json::from_value(spec_options(crate::backends::nats_jetstream_spec(&url))).unwrap();
    let c = NatsChannel::open(&config).await.expect("nats channel opens in durable mode");
    assert!(c.durable());
    Some(Arc::new(c) as stategate::channel::DynChannel)
});

// `stan` on the shared server, which has JetStream: the durable mode.
channel_conformance!(stan_channel, async {
    let url = crate::harness::backend_url("NATS")?;
    let spec = json!({"name": "stan", "addr": url, "cluster": "test-cluster", "prefix": "stategate-test-stan"});
    let c = stategate::channel::stan::open(&serde_json::from_value(spec_options(spec)).unwrap()).await.expect("stan opens over NATS");
    assert!(c.durable(), "the shared server has JetStream");
    assert_eq!(stategate::channel::Channel::name(&c), "stan");
    Some(Arc::new(c) as stategate::channel::DynChannel)
});

/// `stan` on a server without JetStream falls back to core NATS, and
/// still delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stan_without_jetstream_uses_core_nats() {
    if !crate::procs::have("nats-server") {
        return;
    }
    let server = crate::procs::nats_server_without_jetstream().await;
    let spec = json!({"name": "stan", "addr": format!("127.0.0.1:{}", server.port), "cluster": "test-cluster"});
    let c = stategate::channel::stan::open(&serde_json::from_value(spec_options(spec)).unwrap()).await.expect("stan opens over NATS");
    assert!(!c.durable(), "no JetStream on this server");
    crate::channel_conformance::delivers_after_subscribe(Arc::new(c)).await;
}

fn values(v: serde_json::Value) -> Values {
    v.as_object().unwrap().clone()
}

/// Values BSON cannot hold exactly (dotted and `$` keys, u64 beyond i64)
/// round-trip unchanged and are still found by queries (the pushdown lets
/// them through, the shared matcher decides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_keeps_values_bson_cannot_hold() {
    let Some(s) = mongo().await else { return };
    let d = crate::storage_conformance::unique_domain();
    let odd = json!({"a.b": 1, "$x": "y", "big": u64::MAX, "city": "Paris", "n": {"k": 2}});
    let plain = json!({"city": "Paris", "n": {"k": 2}});
    let other = json!({"city": "Lyon", "n": {"k": 2}});
    for (key, v) in [("odd", &odd), ("plain", &plain), ("other", &other)] {
        s.append(crate::storage_conformance::put(&RecordRef::parse(&d, "t", key).unwrap(), v.clone()))
            .await
            .unwrap();
    }
    use stategate::storage::Storage;
    let got = s.get(&RecordRef::parse(&d, "t", "odd").unwrap()).await.unwrap().unwrap();
    assert_eq!(serde_json::Value::Object(got.values), odd);
    let q = |f: &str| StateQuery {
        domain: d.clone(),
        ty: "t".into(),
        filter: Filter::parse("query_string", f).unwrap(),
        sort: None,
        limit: 10,
        offset: 0,
    };
    let keys = |v: Vec<State>| v.into_iter().map(|s| s.record.key).collect::<Vec<_>>();
    assert_eq!(keys(s.search_states(&q(r#"{"city": "Paris", "n.k": 2}"#)).await.unwrap()), ["odd", "plain"]);
    assert_eq!(keys(s.search_states(&q(r#"{"big": 18446744073709551615}"#)).await.unwrap()), ["odd"]);
    let events = s
        .search_events(&EventQuery {
            domain: d.clone(),
            ty: "t".into(),
            key: None,
            filter: Filter::parse("query_string", r#"{"city": "Lyon"}"#).unwrap(),
            claims_filter: Filter::parse("claims_query", r#"{"tenant": "acme"}"#).unwrap(),
            min_time: None,
            max_time: None, min_version: None, max_version: None,
            limit: 10,
            offset: 0, sort: None,
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].record.key, "other");
}

/// Two storages on one database (two gateway instances) still give one
/// winner per expected version and one gap-free global order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_two_clients_share_one_order() {
    let Some(a) = mongo().await else { return };
    two_clients_share_one_order(Arc::new(a), Arc::new(mongo().await.unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_standalone_two_clients_share_one_order() {
    let Some(a) = mongo_standalone().await else { return };
    two_clients_share_one_order(Arc::new(a), Arc::new(mongo_standalone().await.unwrap())).await;
}

/// Two storages on one database (two gateway instances): one winner per
/// expected version, one gap-free order.
pub async fn two_clients_share_one_order(a: stategate::storage::DynStorage, b: stategate::storage::DynStorage) {
    let d = crate::storage_conformance::unique_domain();
    let r = RecordRef::parse(&d, "t", "k").unwrap();
    a.append(crate::storage_conformance::put(&r, json!({"n": 0}))).await.unwrap();
    let mut tasks = vec![];
    for i in 0..8 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            s.append(crate::storage_conformance::req(&r, Change::Put(values(json!({"n": i})).into()), Expect::Version(1)))
                .await
        }));
    }
    let results: Vec<_> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(Error::VersionConflict { .. }))));
    let feed = b
        .feed(&FeedQuery {
            topic: Topic { domain: Some(d.clone()), ty: None },
            key: None,
            after_seq: 0,
            from_time: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(feed.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);

    // Last-write-wins appends racing on one record from both clients: every
    // one lands with its own version, and store order is version order.
    let hot = RecordRef::parse(&d, "t", "hot").unwrap();
    let mut tasks = vec![];
    for i in 0..8 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let hot = hot.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..10 {
                s.append(crate::storage_conformance::put(&hot, json!({"i": i, "j": j}))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let feed = a
        .feed(&FeedQuery {
            topic: Topic { domain: Some(d.clone()), ty: None },
            key: Some("hot".into()),
            after_seq: 0,
            from_time: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(feed.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=80).collect::<Vec<u64>>());
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(b.get(&hot).await.unwrap().unwrap().version, 80);
}

#[tokio::test]
async fn bad_provider_options_are_named() {
    let channel_err = |spec: serde_json::Value| match stategate::channel::ChannelSpec::parse(&spec.to_string()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{spec} was accepted"),
    };
    assert!(channel_err(json!({"name": "redis", "db": -1})).contains("db"));
    assert!(channel_err(json!({"name": "redis", "tls": "yes"})).contains("tls"));
    assert!(channel_err(json!({"name": "redis", "adr": "x:1"})).contains("unknown field `adr`"));
    assert!(channel_err(json!({"name": "nats", "prefix": "a.*"})).contains("prefix"));
    assert!(channel_err(json!({"name": "nats", "user": "u"})).contains("password"));
    let storage_err = |spec: serde_json::Value| match stategate::storage::StorageSpec::parse(&spec.to_string()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{spec} was accepted"),
    };
    assert!(storage_err(json!({"name": "mongo"})).contains("missing field `addr`"));
    assert!(storage_err(json!({"name": "postgres", "addr": "postgres://h/db", "sslmode": "sometimes"})).contains("sslmode"));
    assert!(storage_err(json!({"name": "postgresql", "adr": "postgres://h/db"})).contains("unknown field `adr`"));
    assert!(storage_err(json!({"name": "mariadb", "addr": "mysql://h/db", "pool_size": -1})).contains("pool_size"));
    assert!(storage_err(json!({"name": "cassandra"})).contains("not built in"));
    // A well-formed object whose value the provider refuses when it opens.
    let spec = stategate::storage::StorageSpec::parse(
        &json!({"name": "mongo", "addr": "mongodb://127.0.0.1:1", "database": "a.b"}).to_string(),
    )
    .unwrap();
    let wasm = stategate::wasm::WasmRuntime::new(stategate::wasm::Settings::default()).unwrap();
    match spec.open(std::path::Path::new("."), &wasm).await {
        Err(e) => assert!(e.to_string().contains("database"), "{e}"),
        Ok(_) => panic!("a bad database name was accepted"),
    }
}

/// Standalone scheme: an append that died between its event and its state
/// is repaired on read, and a seq whose writer vanished before writing its
/// event is voided, so the feed moves past it without losing later events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_standalone_repairs_half_done_appends() {
    use mongodb::bson::doc;
    use stategate::storage::Storage;
    let Some(s) = mongo_standalone().await else { return };
    let url = backend_url("MONGO_STANDALONE").unwrap();
    let raw = mongodb::Client::with_uri_str(&url).await.unwrap().database(run_id());
    let d = crate::storage_conformance::unique_domain();
    let r = RecordRef::parse(&d, "t", "k").unwrap();
    let first = s.append(crate::storage_conformance::put(&r, json!({"n": 1}))).await.unwrap().event;

    // A writer takes a seq and vanishes; another writes its event but dies
    // before updating the state (both done by hand here).
    let counters = raw.collection::<mongodb::bson::Document>("counters");
    let vanished = counters
        .find_one_and_update(doc! {"_id": "seq"}, doc! {"$inc": {"n": 1_i64}})
        .return_document(mongodb::options::ReturnDocument::After)
        .await
        .unwrap()
        .unwrap()
        .get_i64("n")
        .unwrap();
    let half = counters
        .find_one_and_update(doc! {"_id": "seq"}, doc! {"$inc": {"n": 1_i64}})
        .return_document(mongodb::options::ReturnDocument::After)
        .await
        .unwrap()
        .unwrap()
        .get_i64("n")
        .unwrap();
    let two = json!({"n": 2});
    raw.collection::<mongodb::bson::Document>("events")
        .insert_one(doc! {
            "_id": half, "id": uuid::Uuid::new_v4().to_string(), "d": &d, "t": "t", "k": "k", "v": 2_i64,
            "kind": "SET", "m": "/m", "time": stategate::model::now_nanos(), "claims": "{}",
            "vals": two.to_string(), "doc": {"n": 2_i64}, "raw": false, "cdoc": {}, "craw": false,
        })
        .await
        .unwrap();

    // `get` follows the history at once; the feed waits for the vanished
    // seq to be voided, then shows the half-done event; searches see the
    // repaired state.
    assert_eq!(s.get(&r).await.unwrap().unwrap().version, 2);
    let feed = FeedQuery { topic: Topic { domain: Some(d.clone()), ty: None }, key: None, after_seq: first.seq, from_time: None, limit: 10 };
    let mut seen = vec![];
    for _ in 0..300 {
        seen = s.feed(&feed).await.unwrap();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen.iter().map(|e| (e.seq, e.version)).collect::<Vec<_>>(), [(half as u64, 2)]);
    assert!(s.head().await.unwrap() >= half as u64 && (vanished as u64) < half as u64);
    let found = s
        .search_states(&StateQuery { domain: d.clone(), ty: "t".into(), filter: Filter::parse("q", r#"{"n": 2}"#).unwrap(), sort: None, limit: 10, offset: 0 })
        .await
        .unwrap();
    assert_eq!(found.iter().map(|s| s.version).collect::<Vec<_>>(), [2], "the state was repaired");
    // And the record goes on from version 2.
    let next = s.append(crate::storage_conformance::req(&r, Change::Put(values(json!({"n": 3})).into()), Expect::Version(2))).await.unwrap();
    assert_eq!(next.event.version, 3);
}

/// A publish through `c` reaches a subscription of `c`.
async fn round_trip(c: &dyn stategate::channel::Channel) {
    use futures::StreamExt;
    let d = crate::storage_conformance::unique_domain();
    let topic = Topic { domain: Some(d.clone()), ty: None };
    let mut sub = c.subscribe(&topic).await.unwrap();
    let e = crate::channel_conformance::event(&d, "t", "k", 1);
    c.publish(&e).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, e);
    c.ping().await.unwrap();
}

/// Redis options: password and database number reach the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_password_and_db() {
    if !crate::procs::have("redis-server") {
        return;
    }
    let port = crate::procs::free_port();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--requirepass", "s3cret:/@"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut server = crate::procs::Server::new("redis-server", port, dir, args);
    server.start().await;
    let spec = |password: &str| json!({"name": "redis", "addr": format!("127.0.0.1:{port}"), "password": password, "db": 3});
    let c = RedisChannel::open(&serde_json::from_value::<RedisConfig>(spec_options(spec("s3cret:/@"))).unwrap()).await.unwrap();
    round_trip(&c).await;
    let wrong = RedisChannel::open(&serde_json::from_value::<RedisConfig>(spec_options(spec("nope"))).unwrap()).await;
    assert!(matches!(wrong, Err(Error::Unavailable(_))), "a wrong password is refused");
}

/// NATS options: TLS with our own CA, and user + password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_and_user() {
    if !crate::procs::have("nats-server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let port = crate::procs::free_port();
    let args = vec![
        "-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string(),
        "--tls".into(), "--tlscert".into(), cert_path.display().to_string(), "--tlskey".into(), key_path.display().to_string(),
        "--user".into(), "gw".into(), "--pass".into(), "pw".into(),
    ];
    let mut server = crate::procs::Server::new("nats-server", port, tempfile::tempdir().unwrap(), args);
    server.start().await;
    let spec = json!({"name": "nats", "addr": format!("tls://localhost:{port}"), "tls": true,
        "ca_file": cert_path.display().to_string(), "user": "gw", "password": "pw"});
    let c = NatsChannel::open(&serde_json::from_value::<NatsConfig>(spec_options(spec.clone())).unwrap()).await.unwrap();
    round_trip(&c).await;
    let mut bad = spec.clone();
    bad["password"] = json!("wrong");
    assert!(NatsChannel::open(&serde_json::from_value::<NatsConfig>(spec_options(bad)).unwrap()).await.is_err(), "a wrong password is refused");
    let mut untrusted = spec.clone();
    untrusted.as_object_mut().unwrap().remove("ca_file");
    assert!(NatsChannel::open(&serde_json::from_value::<NatsConfig>(spec_options(untrusted)).unwrap()).await.is_err(), "an unknown CA is refused");
}

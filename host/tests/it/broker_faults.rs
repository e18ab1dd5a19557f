//! Broker faults of the Kafka, RabbitMQ, durable NATS (JetStream) and stan
//! channels, each on a private broker started for the test (Tansu,
//! a RabbitMQ node of its own, `nats-server -js`): killed under load and
//! restarted, as `faults::channel_restart` checks for Redis and NATS (no
//! write fails, `/readyz` names the channel while it is down, no event is
//! lost to a live stream, events travel through the channel again after).
//!
//! And what the durable mode is for: through a quick restart of the NATS
//! server, a durable gateway's streams get every event through the channel:
//! the hub's storage sweep delivers none, no stream falls back to storage
//! and no publish fails. In core mode the same restart ends every channel
//! subscription, and streams catch up from storage (`stream_catchups`;
//! with this hub a broken subscription ends its feed, so the repair shows
//! there rather than in the sweep counter).

use crate::faults::{all_ready, channel_restart, start_load, stop_load};
use crate::multi_instance::{metric, stream_into};
use crate::procs::{self, Gateway, Server, have, wait_readyz};
use crate::wire::unique;
use serde_json::json;

/// The restarted broker offers no view of who reads it (Tansu's readers
/// hold no consumer group; the private RabbitMQ node has no management
/// plugin; JetStream's ordered consumers come and go): that events travel
/// through the channel again is checked by the sweep counter instead.
async fn trust(_: &Server) -> bool {
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restart_under_load() {
    let Some(tansu) = procs::tansu_bin() else { return };
    let server = procs::kafka_server(tansu).await;
    let spec = json!({"name": "kafka", "addr": format!("127.0.0.1:{}", server.port), "partitions": 2});
    channel_restart(server, spec, "kafka", trust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_under_load() {
    if !have(procs::RABBITMQ_SERVER) {
        return;
    }
    let server = procs::rabbitmq_server().await;
    let spec = json!({"name": "rabbitmq", "addr": format!("amqp://guest:guest@127.0.0.1:{}/%2f", server.port)});
    channel_restart(server, spec, "rabbitmq", trust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_restart_under_load() {
    if !have("nats-server") {
        return;
    }
    let server = procs::nats_server().await;
    let spec = json!({"name": "nats", "addr": format!("127.0.0.1:{}", server.port), "jetstream": true});
    channel_restart(server, spec, "nats", trust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stan_restart_under_load() {
    if !have("nats-server") {
        return;
    }
    let server = procs::nats_server().await;
    let spec = json!({"name": "stan", "addr": format!("127.0.0.1:{}", server.port), "cluster": "test-cluster"});
    channel_restart(server, spec, "stan", trust).await;
}

/// What a quick restart cost, from the gateway's `/metrics`.
#[derive(Debug)]
struct Repairs {
    swept: f64,
    catchups: f64,
    publish_failures: f64,
}

/// Writes under load through a kill and immediate restart of a private
/// NATS server (same port, same JetStream store); returns how much storage
/// had to make up for the channel.
async fn repairs_through_a_quick_restart(durable: bool) -> Repairs {
    let mut server = procs::nats_server().await;
    let spec = json!({"name": "nats", "addr": format!("127.0.0.1:{}", server.port), "jetstream": durable});
    let dir = tempfile::tempdir().unwrap();
    let storage = json!({"name": "sqlite", "path": dir.path().join("db.sqlite")}).to_string();
    let gw = Gateway::spawn(dir.path(), &storage, &spec.to_string()).await;
    wait_readyz(&gw.ops_url(), "ready at start", all_ready).await;
    let domain = unique("sweep");
    let stream = stream_into(gw.channel().await, &domain).await;
    let (load, tasks) = start_load(gw.channel().await, &domain);
    load.wait("writes before the restart", |l| l.acked() >= 30).await;

    server.kill();
    server.start().await;
    wait_readyz(&gw.ops_url(), "recovery", all_ready).await;
    let before = load.acked();
    load.wait("writes after the restart", |l| l.acked() >= before + 30).await;
    stop_load(&load, tasks).await;

    assert_eq!(*load.errors.lock().unwrap(), vec![], "no write failed: only the channel was restarted");
    let acked = load.acked.lock().unwrap().clone();
    stream.wait_for(&acked, "the live stream across the restart").await;
    stream.assert_ordered_per_record();
    assert_eq!(stream.0.lock().unwrap().len(), acked.len(), "no duplicates");
    let ops = gw.ops_url();
    let repairs = Repairs {
        swept: metric(&ops, "stategate_hub_sweep_deliveries_total").await,
        catchups: metric(&ops, "stategate_stream_catchups_total").await,
        publish_failures: metric(&ops, "stategate_publish_failures_total").await,
    };
    eprintln!("nats (jetstream: {durable}) quick restart: {} writes; {repairs:?}", acked.len());
    repairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_durable_mode_needs_no_sweep_through_a_restart() {
    if !have("nats-server") {
        return;
    }
    let r = repairs_through_a_quick_restart(true).await;
    assert_eq!((r.swept, r.catchups, r.publish_failures), (0.0, 0.0, 0.0), "in durable mode every event came through the stream");
}

/// The control: the same restart in core mode breaks the subscription and
/// storage makes up for it, so the check above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_core_mode_needs_storage_through_a_restart() {
    if !have("nats-server") {
        return;
    }
    let r = repairs_through_a_quick_restart(false).await;
    assert!(r.publish_failures > 0.0 && r.catchups + r.swept > 0.0, "in core mode the restart is repaired from storage: {r:?}");
}

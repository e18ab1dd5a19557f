//! The MQTT channel guest (guest-providers/mqtt-channel) over a real
//! broker: the channel conformance suite and two gateway processes on the
//! shared Mosquitto (`STATEGATE_TEST_MQTT_URL`, each run on a topic prefix
//! of its own); and on a private Mosquitto of its own (killed and started
//! again, so the shared one is untouched): reconnecting after the broker
//! went away, the keepalive, a restart under load through a gateway,
//! credentials and a refusal's reason, and a retained message.

use crate::faults::channel_restart;
use crate::harness::backend_url;
use crate::procs::{self, Server, have};
use crate::wasm_support::{channel_spec, guest, runtime};
use crate::wire::unique;
use futures::StreamExt;
use serde_json::{Value, json};
use stategate::channel::DynChannel;
use stategate::model::{Error, Topic};
use std::time::Duration;

/// `host:port` of the shared broker (`mqtt://127.0.0.1:1883` or
/// `127.0.0.1:1883`); `None` (skip, printed) when unset.
pub fn shared_broker() -> Option<String> {
    let url = backend_url("MQTT")?;
    Some(url.trim_start_matches("mqtt://").trim_end_matches('/').to_owned())
}

/// The wasm channel object for the guest on broker `addr`, granted only
/// that address, publishing under `prefix`.
pub fn mqtt_spec(addr: &str, prefix: &str, extra: Value) -> Value {
    let mut config = json!({"addr": addr, "prefix": prefix});
    config.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    json!({"name": "wasm", "path": guest("mqtt_channel"), "config": config, "grants": {"net": [addr]}})
}

async fn open(spec: &Value) -> stategate::model::Result<DynChannel> {
    channel_spec(spec.as_object().unwrap()).open(&runtime()).await
}

channel_conformance!(wasm_mqtt_channel, async {
    let addr = crate::mqtt::shared_broker()?;
    let spec = crate::mqtt::mqtt_spec(&addr, &crate::wire::unique("sgconf"), serde_json::json!({}));
    Some(crate::mqtt::open_spec(&spec).await)
});

pub async fn open_spec(spec: &Value) -> DynChannel {
    open(spec).await.expect("the MQTT channel opens")
}

/// A Mosquitto of our own on a free loopback port, in memory, logging
/// every packet to `mosquitto.log` in its directory (a file: its stdout
/// is block-buffered). `user root` keeps it from switching to the
/// `mosquitto` user, who could not write to the test's directory.
pub async fn mosquitto_server() -> Server {
    let port = procs::free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    let log = dir.path().join("mosquitto.log");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\nlog_dest file {}\nlog_type all\n",
            log.display()
        ),
    )
    .unwrap();
    let mut s = Server::new("mosquitto", port, dir, vec!["-c".into(), conf.display().to_string()]);
    s.start().await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_mqtt() {
    let Some(addr) = shared_broker() else { return };
    crate::multi_instance::two_instances_share_state(mqtt_spec(&addr, &unique("sgmulti"), json!({}))).await;
}

/// Through a gateway under load: the broker is killed (writes go on, their
/// broadcast fails fast, `/readyz` names the channel), started again on the
/// same port (the guest reconnects and subscribes again by itself), and no
/// event is lost to a live stream; after recovery events travel through
/// the channel again, not the storage sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_restart_under_load() {
    if !have("mosquitto") {
        return;
    }
    let server = mosquitto_server().await;
    let spec = mqtt_spec(&format!("127.0.0.1:{}", server.port), &unique("sgfault"), json!({}));
    // That events travel through the channel again is checked by the sweep
    // counter (the broker keeps no record of subscriptions to ask).
    channel_restart(server, spec, "wasm:mqtt_channel", async |_: &Server| true).await;
}

fn topic(domain: &str) -> Topic {
    Topic { domain: Some(domain.to_owned()), ty: None }
}

/// Waits (bounded) until `f` returns Ok.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> stategate::model::Result<T>) -> T {
    let mut last = None;
    for _ in 0..300 {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: still failing: {last:?}");
}

/// Directly on the channel: while the broker is down, ping and publish
/// fail fast with UNAVAILABLE naming the broker; once it is back, the
/// same channel (no reopen) reconnects, subscribes again, and a
/// subscription made before the outage receives what is published after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_subscribes_again_after_the_broker_went_away() {
    if !have("mosquitto") {
        return;
    }
    let mut server = mosquitto_server().await;
    let c = open_spec(&mqtt_spec(&format!("127.0.0.1:{}", server.port), &unique("sgre"), json!({"reconnect_ms": 100}))).await;
    let d = unique("re");
    let mut sub = c.subscribe(&topic(&d)).await.unwrap();
    let e1 = crate::channel_conformance::event(&d, "t", "k", 1);
    c.publish(&e1).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap(), e1);

    server.kill();
    let started = std::time::Instant::now();
    let down = eventually("ping fails while the broker is down", async || match c.ping().await {
        Ok(()) => Err(Error::Internal("still up".into())),
        Err(e) => Ok(e),
    })
    .await;
    assert!(matches!(down, Error::Unavailable(ref m) if m.contains(&server.port.to_string())), "{down:?}");
    let e2 = crate::channel_conformance::event(&d, "t", "k", 2);
    let failed = c.publish(&e2).await.expect_err("no broker, no publish");
    assert!(matches!(failed, Error::Unavailable(_)), "{failed:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "failures are fast, not hung");

    server.start().await;
    eventually("ping succeeds once the broker is back", async || c.ping().await).await;
    let e3 = crate::channel_conformance::event(&d, "t", "k", 3);
    c.publish(&e3).await.expect("publishing works again");
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("delivery resumes").unwrap().unwrap();
    assert_eq!(got, e3, "the event published during the outage was refused, not delivered late");
}

/// With a 2-second keepalive and nothing to do for 7 seconds, the
/// broker (which drops a client silent for 1.5 keepalives, 3 s) keeps the
/// connection: the guest's PINGREQs (after 1 s idle) went out. The broker's
/// log shows one connection from the guest and no timeout. (The margin,
/// 2 s between a ping being due and the broker giving up, absorbs a
/// loaded machine's stalls.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_hold_an_idle_connection() {
    if !have("mosquitto") {
        return;
    }
    let server = mosquitto_server().await;
    let c = open_spec(&mqtt_spec(&format!("127.0.0.1:{}", server.port), &unique("sgka"), json!({"keepalive_secs": 2, "client_id": "sgka"}))).await;
    // Idle on purpose: the property under test is what happens over time.
    tokio::time::sleep(Duration::from_secs(7)).await;
    c.ping().await.unwrap();
    let log = std::fs::read_to_string(server.dir.path().join("mosquitto.log")).unwrap();
    let connects = log.lines().filter(|l| l.contains("New client connected") && l.contains("sgka-")).count();
    assert_eq!(connects, 1, "one connection, never dropped:\n{log}");
    assert!(!log.contains("exceeded timeout"), "{log}");
    assert!(log.contains("Received PINGREQ from sgka-"), "the guest sent PINGREQs:\n{log}");
}

/// Bad configuration fails the channel's opening with the key named; a
/// broker address that is not granted is refused by the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_missing_grant_are_named() {
    let missing = json!({"name": "wasm", "path": guest("mqtt_channel"), "grants": {"net": ["127.0.0.1:1"]}});
    let e = open(&missing).await.err().expect("no addr, no channel");
    assert!(e.to_string().contains("config.addr is missing"), "{e}");
    let bad = mqtt_spec("127.0.0.1:1", "a/#", json!({}));
    let e = open(&bad).await.err().expect("a wildcard prefix is refused");
    assert!(e.to_string().contains("config.prefix"), "{e}");
    // The broker's address granted nowhere: the connection is refused.
    let mut ungranted = mqtt_spec("127.0.0.1:1883", "x", json!({}));
    ungranted["grants"] = json!({"net": ["127.0.0.1:1"]});
    let e = open(&ungranted).await.err().expect("an ungranted address is refused");
    assert!(e.to_string().contains("127.0.0.1:1883"), "{e}");
}

/// A private broker that requires a user name and password (a password
/// file made with `mosquitto_passwd`), and the client id shape.
async fn mosquitto_with_password() -> Server {
    let port = procs::free_port();
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");
    let made = std::process::Command::new("mosquitto_passwd").args(["-b", "-c"]).arg(&passwords).args(["gw", "s3cret"]).status().unwrap();
    assert!(made.success());
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\nuser root\n", passwords.display()),
    )
    .unwrap();
    let mut s = Server::new("mosquitto", port, dir, vec!["-c".into(), conf.display().to_string()]);
    s.start().await;
    s
}

/// CONNECT carries the configured user name and password: the right ones
/// get a working channel; a wrong password or none is refused with the
/// broker's reason (its CONNACK code), not a bare "connection closed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_sent_and_a_refusal_is_named() {
    if !have("mosquitto") || !have("mosquitto_passwd") {
        return;
    }
    let server = mosquitto_with_password().await;
    let addr = format!("127.0.0.1:{}", server.port);
    let c = open_spec(&mqtt_spec(&addr, &unique("sgauth"), json!({"username": "gw", "password": "s3cret"}))).await;
    let d = unique("auth");
    let mut sub = c.subscribe(&topic(&d)).await.unwrap();
    let e = crate::channel_conformance::event(&d, "t", "k", 1);
    c.publish(&e).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap(), e);

    for extra in [json!({"username": "gw", "password": "wrong"}), json!({})] {
        let e = open(&mqtt_spec(&addr, &unique("sgauth"), extra.clone())).await.err().expect("refused");
        let text = e.to_string();
        assert!(
            text.contains("the broker refused the connection") && (text.contains("not authorized") || text.contains("bad user name or password")),
            "{extra}: {text}"
        );
    }
}

/// A retained message on the channel's topic (published by someone else
/// before the gateway subscribed) is not delivered as a new event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_is_not_replayed() {
    if !have("mosquitto") || !have("mosquitto_pub") {
        return;
    }
    let server = mosquitto_server().await;
    let addr = format!("127.0.0.1:{}", server.port);
    let prefix = unique("sgret");
    let d = unique("ret");
    let old = crate::channel_conformance::event(&d, "t", "old", 1);
    let wire = json!({"id": old.id, "seq": 1, "domain": d, "ty": "t", "key": "old", "claims": "{}", "time": 1, "version": 1, "kind": "SET", "method": "m"});
    let published = std::process::Command::new("mosquitto_pub")
        .args(["-p", &server.port.to_string(), "-q", "1", "-r", "-t", &format!("{prefix}/events"), "-m", &wire.to_string()])
        .status()
        .unwrap();
    assert!(published.success());
    let c = open_spec(&mqtt_spec(&addr, &prefix, json!({}))).await;
    let mut sub = c.subscribe(&topic(&d)).await.unwrap();
    let new = crate::channel_conformance::event(&d, "t", "new", 1);
    c.publish(&new).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.record.key.as_str(), "new", "the retained message was skipped");
}

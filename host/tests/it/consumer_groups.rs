//! Consumer groups (`StreamOpts.group`, `EventService.Ack`/`Parked`): one
//! gateway on sqlite for the rules (sharing out, nack and redelivery,
//! parking and replay, bad input, the REST and grpc-web forms), and
//! gateway processes over PostgreSQL and NATS for what a group promises
//! across instances: with a member killed mid-stream, or a gateway killed
//! under its member, no event is lost, a record's events are delivered one
//! at a time in order, and a restart of every gateway keeps the group's
//! position.
//!
//! Deadlines here only guard against hangs; no outcome depends on timing.

use crate::harness::TestGateway;
use crate::wire::*;
use serde_json::json;
use stategate::proto::{self as pb, event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// What members saw and did, in one order.
#[derive(Debug, Clone)]
enum Entry {
    /// A member received the event (record key, version, id).
    Delivered { member: String, key: String, version: i64, id: String },
    /// A member is about to acknowledge it (logged before the call, so a
    /// delivery the ack made possible always comes after this entry).
    Acking { key: String, version: i64, id: String },
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Entry>>>);

impl Log {
    fn push(&self, e: Entry) {
        self.0.lock().unwrap().push(e);
    }

    fn acked(&self) -> HashSet<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Entry::Acking { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    fn delivered_to(&self, member: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Entry::Delivered { member: m, id, .. } if m == member => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) until every id in `want` was acknowledged.
    async fn wait_acked(&self, want: &HashSet<String>, what: &str) {
        for _ in 0..1200 {
            if want.is_subset(&self.acked()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let missing = want.difference(&self.acked()).count();
        panic!("{what}: {missing} of {} events were never acknowledged", want.len());
    }

    /// A record's events one at a time, in order: each delivery of version
    /// v > 1 comes after an acknowledgement of version v - 1 (every version
    /// of these records is of the group's subscription).
    fn assert_one_at_a_time_in_order(&self) {
        let mut acked: HashMap<String, i64> = HashMap::new();
        for e in self.0.lock().unwrap().iter() {
            match e {
                Entry::Acking { key, version, .. } => {
                    let v = acked.entry(key.clone()).or_default();
                    *v = (*v).max(*version);
                }
                Entry::Delivered { member, key, version, .. } => {
                    let done = acked.get(key).copied().unwrap_or(0);
                    assert!(
                        *version <= done + 1,
                        "{member} got {key} version {version} while version {} was not acknowledged",
                        done + 1
                    );
                }
            }
        }
    }
}

fn group_opts(domain: &str, group: &str, member: &str) -> pb::StreamOpts {
    pb::StreamOpts {
        domain: domain.into(),
        r#type: "job".into(),
        group: group.into(),
        member: member.into(),
        ack_timeout_ms: 5000,
        max_deliveries: 5,
        max_in_flight: 4,
        ..Default::default()
    }
}

/// A member: reads its group stream and acknowledges each event (unless
/// `hold_after` events were acknowledged already: then it keeps the rest
/// unacknowledged, as a member that dies mid-work does).
fn member(channel: Channel, opts: pb::StreamOpts, log: Log, hold_after: Option<usize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let name = opts.member.clone();
        let (domain, ty, group) = (opts.domain.clone(), opts.r#type.clone(), opts.group.clone());
        let mut events = EventServiceClient::new(channel.clone());
        let mut acks = EventServiceClient::new(channel);
        let mut stream = events.stream(opts).await.expect("the member joins").into_inner();
        let mut done = 0;
        while let Some(item) = stream.next().await {
            let e = item.expect("the group stream delivers");
            let key = e.state.as_ref().unwrap().key.clone();
            log.push(Entry::Delivered { member: name.clone(), key: key.clone(), version: e.version, id: e.id.clone() });
            if hold_after.is_some_and(|n| done >= n) {
                continue;
            }
            log.push(Entry::Acking { key, version: e.version, id: e.id.clone() });
            let req = pb::AckRequest { domain: domain.clone(), r#type: ty.clone(), group: group.clone(), event_ids: vec![e.id], nack: false };
            acks.ack(req).await.expect("the ack is taken");
            done += 1;
        }
    })
}

/// Writes `per_record` versions to each of `records` records, in turns;
/// returns the event ids.
async fn write(channel: Channel, domain: &str, prefix: &str, records: usize, per_record: usize) -> HashSet<String> {
    let mut st = StateServiceClient::new(channel);
    let mut ids = HashSet::new();
    for i in 0..per_record {
        for r in 0..records {
            let e = st.set(state(domain, "job", &format!("{prefix}{r}"), json!({"i": i}))).await.unwrap().into_inner();
            ids.insert(e.id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_shares_events_out_and_takes_them_back_on_nack() {
    let gw = TestGateway::start().await;
    let domain = unique("grp");
    let log = Log::default();
    let m1 = member(gw.channel().await, group_opts(&domain, "g", "m1"), log.clone(), None);
    let m2 = member(gw.channel().await, group_opts(&domain, "g", "m2"), log.clone(), None);
    // Both joined before the writes: the group starts at the head.
    let mut ev = gw.event_client().await;
    for _ in 0..100 {
        if ev.ack(pb::AckRequest { domain: domain.clone(), r#type: "job".into(), group: "g".into(), event_ids: vec!["x".into()], nack: false })
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written = write(gw.channel().await, &domain, "r", 4, 10).await;
    log.wait_acked(&written, "two members").await;
    log.assert_one_at_a_time_in_order();
    let (n1, n2) = (log.delivered_to("m1").len(), log.delivered_to("m2").len());
    assert!(n1 + n2 >= written.len(), "{n1} + {n2} deliveries of {} events", written.len());
    m1.abort();
    m2.abort();

    // A nacked event comes back; one nacked as often as max_deliveries is
    // parked, listed, and delivered again once replayed.
    let opts = pb::StreamOpts { max_deliveries: 2, ..group_opts(&domain, "n", "solo") };
    let mut stream = ev.stream(opts.clone()).await.unwrap().into_inner();
    let written = write(gw.channel().await, &domain, "p", 1, 1).await;
    let id = written.iter().next().unwrap().clone();
    let nack = pb::AckRequest { domain: domain.clone(), r#type: "job".into(), group: "n".into(), event_ids: vec![id.clone()], nack: true };
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(e.id, id);
        let out = ev.ack(nack.clone()).await.unwrap().into_inner();
        assert_eq!(out.applied, [id.as_str()]);
    }
    let parked_req = pb::ParkedRequest { domain: domain.clone(), r#type: "job".into(), group: "n".into(), ..Default::default() };
    let mut parked = vec![];
    for _ in 0..600 {
        parked = ev.parked(parked_req.clone()).await.unwrap().into_inner().parked;
        if !parked.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(parked.len(), 1, "the event is parked after two deliveries");
    assert_eq!((parked[0].event.as_ref().unwrap().id.as_str(), parked[0].deliveries), (id.as_str(), 2));
    let replay = pb::ParkedRequest { replay_all: true, ..parked_req.clone() };
    assert_eq!(ev.parked(replay).await.unwrap().into_inner().replayed, [id.as_str()]);
    let e = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(e.id, id, "a replayed event is delivered again");
    let ack = pb::AckRequest { nack: false, ..nack };
    assert_eq!(ev.ack(ack.clone()).await.unwrap().into_inner().applied, [id.as_str()]);
    assert_eq!(ev.ack(ack).await.unwrap().into_inner().unknown, [id], "acknowledged once");
    assert!(ev.parked(parked_req).await.unwrap().into_inner().parked.is_empty());
    drop(stream);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_are_invalid_arguments() {
    let gw = TestGateway::start().await;
    let mut ev = gw.event_client().await;
    let domain = unique("grpbad");
    let base = group_opts(&domain, "g", "m");
    let client = ev.clone();
    let refused = |opts: pb::StreamOpts| {
        let mut ev = client.clone();
        async move { ev.stream(opts).await.expect_err("refused") }
    };
    for (opts, field) in [
        (pb::StreamOpts { group: "a b".into(), ..base.clone() }, "group"),
        (pb::StreamOpts { group: "g".repeat(300), ..base.clone() }, "group"),
        (pb::StreamOpts { ack_timeout_ms: -1, ..base.clone() }, "ack_timeout_ms"),
        (pb::StreamOpts { ack_timeout_ms: 10_000_000, ..base.clone() }, "ack_timeout_ms"),
        (pb::StreamOpts { max_deliveries: -3, ..base.clone() }, "max_deliveries"),
        (pb::StreamOpts { max_in_flight: 100_000, ..base.clone() }, "max_in_flight"),
        (pb::StreamOpts { member: "a b".into(), ..base.clone() }, "member"),
        (pb::StreamOpts { after_event_id: "x".into(), ..base.clone() }, "group"),
        (pb::StreamOpts { group: String::new(), ..base.clone() }, "group"),
    ] {
        let status = refused(opts).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    // A group keeps the options it was created with.
    let first = ev.stream(base.clone()).await.unwrap().into_inner();
    let other = refused(pb::StreamOpts { query_string: r#"{"i":1}"#.into(), ..base.clone() }).await;
    assert_eq!(other.code(), tonic::Code::InvalidArgument, "{other:?}");
    drop(first);
    let ack = |group: &str, ids: Vec<String>| pb::AckRequest { domain: domain.clone(), r#type: "job".into(), group: group.into(), event_ids: ids, nack: false };
    assert_eq!(ev.ack(ack("nope", vec!["x".into()])).await.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(ev.ack(ack("g", vec![])).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(ev.ack(ack("", vec!["x".into()])).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    gw.stop().await;
}

/// Three members on two gateway processes (PostgreSQL storage, NATS
/// channel); one member is killed holding unacknowledged events. Every
/// event is still acknowledged, each record's events one at a time in
/// order; then a restart of both gateways keeps the group's position, and
/// the events a killed gateway's member held come back at their deadlines.
#[cfg(all(feature = "sql", feature = "wasm", feature = "nats"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_on_two_instances_lose_nothing_when_one_is_killed() {
    use crate::harness::backend_url;
    use crate::procs::Gateway;
    use crate::sql_backends::{Kind, Scratch};
    let Some(nats) = backend_url("NATS") else { return };
    let Some(scratch) = Scratch::new(Kind::Postgres) else { return };
    let dir = tempfile::tempdir().unwrap();
    let storage = scratch.spec().to_string();
    let channel = json!({"name": "nats", "addr": nats, "prefix": unique("sggroup")}).to_string();
    let a = Gateway::spawn(dir.path(), &storage, &channel).await;
    let mut b = Some(Gateway::spawn(dir.path(), &storage, &channel).await);
    let domain = unique("grpmulti");
    let log = Log::default();

    // The first member creates the group at the head; its stream opening
    // means the group exists, so the others join it.
    let m1 = member(a.channel().await, group_opts(&domain, "workers", "m1"), log.clone(), Some(3));
    let mut probe = EventServiceClient::new(a.channel().await);
    let exists = pb::ParkedRequest { domain: domain.clone(), r#type: "job".into(), group: "workers".into(), ..Default::default() };
    for _ in 0..600 {
        if probe.parked(exists.clone()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m2 = member(a.channel().await, group_opts(&domain, "workers", "m2"), log.clone(), None);
    let m3 = member(b.as_ref().unwrap().channel().await, group_opts(&domain, "workers", "m3"), log.clone(), None);

    // m1 acknowledges three events, then holds what it gets. Writes go on
    // until it holds some; then it is killed (its stream ends mid-work),
    // and more is written.
    let held = |log: &Log| -> Vec<String> {
        let acked = log.acked();
        log.delivered_to("m1").into_iter().filter(|id| !acked.contains(id)).collect()
    };
    let mut written = HashSet::new();
    for _ in 0..40 {
        written.extend(write(a.channel().await, &domain, "rec", 6, 5).await);
        if !held(&log).is_empty() {
            break;
        }
    }
    let holding = held(&log);
    assert!(!holding.is_empty(), "m1 never held an event");
    m1.abort();
    written.extend(write(a.channel().await, &domain, "rec", 6, 20).await);
    log.wait_acked(&written, "the surviving members").await;
    log.assert_one_at_a_time_in_order();
    let acked = log.acked();
    assert!(holding.iter().all(|id| acked.contains(id)), "what m1 held was acknowledged by the others");
    eprintln!("m1 held {} unacknowledged events when killed; {} events in all", holding.len(), written.len());

    // Restart: both gateways go, more is written through a new one, and a
    // new member gets exactly the events written since (the group's
    // position was kept by the storage).
    m3.abort();
    m2.abort();
    drop(b.take());
    drop(a);
    let before = log.acked();
    let c = Gateway::spawn(dir.path(), &storage, &channel).await;
    let later = write(c.channel().await, &domain, "rec", 3, 5).await;
    let m4 = member(c.channel().await, group_opts(&domain, "workers", "m4"), log.clone(), None);
    log.wait_acked(&later, "the member on the restarted gateway").await;
    let got: HashSet<String> = log.delivered_to("m4").into_iter().collect();
    assert!(got.is_disjoint(&before), "events acknowledged before the restart came again");
    assert_eq!(got, later, "the new member got the events written since");

    // A gateway killed while its member holds events: they come back to the
    // member on the other gateway at their deadlines (nothing hands them
    // back, the process is gone).
    let d = Gateway::spawn(dir.path(), &storage, &channel).await;
    let m5 = member(d.channel().await, group_opts(&domain, "workers", "m5"), log.clone(), Some(0));
    let held_by_m5 = |log: &Log| -> Vec<String> {
        let acked = log.acked();
        log.delivered_to("m5").into_iter().filter(|id| !acked.contains(id)).collect()
    };
    let mut more = HashSet::new();
    for _ in 0..40 {
        more.extend(write(c.channel().await, &domain, "rec", 6, 3).await);
        if !held_by_m5(&log).is_empty() {
            break;
        }
    }
    let holding = held_by_m5(&log);
    assert!(!holding.is_empty(), "m5 never held an event");
    drop(d);
    m5.abort();
    log.wait_acked(&more, "the member left after a gateway was killed").await;
    log.assert_one_at_a_time_in_order();
    let m4_got: HashSet<String> = log.delivered_to("m4").into_iter().collect();
    assert!(holding.iter().all(|id| m4_got.contains(id)), "what m5 held went to m4");
    m4.abort();
}

/// The REST forms: the NDJSON stream with `group=`, `POST /api/events/ack`
/// and `POST /api/events/parked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_members_stream_and_acknowledge() {
    let gw = TestGateway::start().await;
    let domain = unique("grprest");
    let http = crate::harness::http();
    let mut resp = http
        .get(format!("{}/api/events/stream?domain={domain}&type=job&group=r&member=m&ack_timeout_ms=60000", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let written = write(gw.channel().await, &domain, "k", 1, 1).await;
    let id = written.into_iter().next().unwrap();
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        let chunk = tokio::time::timeout(Duration::from_secs(60), resp.chunk()).await.unwrap().unwrap().expect("a line");
        buf.extend_from_slice(&chunk);
    }
    let line: serde_json::Value = serde_json::from_slice(&buf[..buf.iter().position(|b| *b == b'\n').unwrap()]).unwrap();
    assert_eq!(line["result"]["id"], id.as_str());
    let ack = json!({"domain": domain, "type": "job", "group": "r", "eventIds": [id]});
    let out: serde_json::Value = http.post(format!("{}/api/events/ack", gw.url())).json(&ack).send().await.unwrap().json().await.unwrap();
    assert_eq!(out["applied"], json!([id]));
    let out: serde_json::Value = http.post(format!("{}/api/events/ack", gw.url())).json(&ack).send().await.unwrap().json().await.unwrap();
    assert_eq!(out["unknown"], json!([id]));
    let parked: serde_json::Value = http
        .post(format!("{}/api/events/parked", gw.url()))
        .json(&json!({"domain": domain, "type": "job", "group": "r"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(parked["parked"], json!([]));
    let bad = http.post(format!("{}/api/events/ack", gw.url())).json(&json!({"domain": domain, "type": "job", "group": "r"})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let bad = http
        .get(format!("{}/api/events/stream?domain={domain}&type=job&group=r&ack_timeout_ms=-5", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    drop(resp);
    gw.stop().await;
}

/// grpc-web (binary mode, as tonic-web's client sends it): a member's
/// stream and its acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_members_stream_and_acknowledge() {
    let gw = TestGateway::start().await;
    let domain = unique("grpweb");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let svc = tower::ServiceBuilder::new().layer(tonic_web::GrpcWebClientLayer::new()).service(client);
    let mut web = EventServiceClient::with_origin(svc, gw.url().parse().unwrap());
    let mut stream = web.stream(group_opts(&domain, "w", "m")).await.unwrap().into_inner();
    let id = write(gw.channel().await, &domain, "k", 1, 1).await.into_iter().next().unwrap();
    let e = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(e.id, id);
    let ack = pb::AckRequest { domain: domain.clone(), r#type: "job".into(), group: "w".into(), event_ids: vec![id.clone()], nack: false };
    assert_eq!(web.ack(ack).await.unwrap().into_inner().applied, [id]);
    drop(stream);
    gw.stop().await;
}

/// Sixteen members drain a backlog together, as the bench's largest level
/// does, but with what a real worker does between deliveries: a random
/// pause before each ack, a nack now and then (the event must come again,
/// to another member or the same), and members that leave mid-work and
/// join again (what they held must come back at once). Every event is
/// acknowledged within the guard, each record's events one at a time in
/// order. Small `max_in_flight` makes members fill up, so claims by full
/// members and wake-ups that reach a full member are exercised too. It
/// caught a lost event (about one run in four): a full member's claim,
/// which reads no feed, moved the group's position over an event that was
/// waiting below the first one in flight, so nobody ever got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_busy_members_drain_a_backlog_with_nacks_and_departures() {
    let gw = TestGateway::start().await;
    let domain = unique("grpbusy");
    let head = gw.state_client().await.set(state(&domain, "job", "start", json!({}))).await.unwrap().into_inner().sequence;
    let written = write(gw.channel().await, &domain, "r", 40, 15).await;
    let log = Log::default();
    let mut tasks = vec![];
    for m in 0..16u64 {
        let opts = pb::StreamOpts {
            after_sequence: Some(head),
            ack_timeout_ms: 30_000,
            max_deliveries: 1000,
            max_in_flight: 2,
            ..group_opts(&domain, "busy", &format!("m{m}"))
        };
        tasks.push(busy_member(gw.channel().await, opts, log.clone(), 0x9e37_79b9_7f4a_7c15 ^ (m + 1)));
    }
    log.wait_acked(&written, "sixteen busy members").await;
    log.assert_one_at_a_time_in_order();
    for t in tasks {
        t.abort();
    }
    gw.stop().await;
}

/// A member that pauses 0–3 ms before each ack, nacks one delivery in
/// ten instead, and every 40 deliveries leaves (its stream dropped with
/// what it holds unacknowledged) and joins again.
fn busy_member(channel: Channel, opts: pb::StreamOpts, log: Log, seed: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = seed;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let name = opts.member.clone();
        let mut events = EventServiceClient::new(channel.clone());
        let mut acks = EventServiceClient::new(channel);
        loop {
            let mut stream = events.stream(opts.clone()).await.expect("the member joins").into_inner();
            let mut got = 0;
            while let Some(item) = stream.next().await {
                let e = item.expect("the group stream delivers");
                let key = e.state.as_ref().unwrap().key.clone();
                log.push(Entry::Delivered { member: name.clone(), key: key.clone(), version: e.version, id: e.id.clone() });
                got += 1;
                if got % 40 == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(next() % 3000)).await;
                let nack = next() % 10 == 0;
                if !nack {
                    log.push(Entry::Acking { key, version: e.version, id: e.id.clone() });
                }
                let req = pb::AckRequest { domain: opts.domain.clone(), r#type: opts.r#type.clone(), group: opts.group.clone(), event_ids: vec![e.id], nack };
                acks.ack(req).await.expect("the ack is taken");
            }
        }
    })
}

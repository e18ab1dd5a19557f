//! Catch-up streams: replay from a position, then live, with no gap and no
//! duplicate at the switch, including while writes keep arriving.

use crate::harness::TestGateway;
use crate::wire::*;
use futures::StreamExt;
use serde_json::json;
use stategate::proto as pb;
use std::collections::HashMap;
use std::time::Duration;

async fn next(stream: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn resume_after_an_event_and_from_a_time() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("resume");
    let mut written = vec![];
    for i in 0..5 {
        written.push(st.set(state(&d, "t", "k", json!({"i": i}))).await.unwrap().into_inner());
    }
    let mut after = ev
        .stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), after_event_id: written[1].id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    for w in &written[2..] {
        assert_eq!(next(&mut after).await.id, w.id);
    }
    let live = st.set(state(&d, "t", "k", json!({"i": 5}))).await.unwrap().into_inner();
    assert_eq!(next(&mut after).await.id, live.id, "then live");

    let mut from = ev
        .stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), from_time: written[3].time, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    for id in [&written[3].id, &written[4].id, &live.id] {
        assert_eq!(&next(&mut from).await.id, id);
    }

    let unknown = ev
        .stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), after_event_id: "no-such-event".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    gw.stop().await;
}

#[tokio::test]
async fn wildcard_streams() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("wild");
    let mut any_type = ev.stream(pb::StreamOpts { domain: d.clone(), r#type: "*".into(), ..Default::default() }).await.unwrap().into_inner();
    let mut everything = ev.stream(pb::StreamOpts { domain: "*".into(), r#type: "*".into(), ..Default::default() }).await.unwrap().into_inner();
    st.set(state(&d, "a", "k", json!({}))).await.unwrap();
    st.set(state(&d, "b", "k", json!({}))).await.unwrap();
    for s in [&mut any_type, &mut everything] {
        assert_eq!(next(s).await.state.unwrap().r#type, "a");
        assert_eq!(next(s).await.state.unwrap().r#type, "b");
    }
    gw.stop().await;
}

/// Streams from a position while another task writes 10,000 events: every
/// event arrives exactly once, in order per record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_while_streaming_from_a_position() {
    const EVENTS: usize = 10_000;
    const RECORDS: usize = 20;
    let gw = TestGateway::start().await;
    let d = unique("tenk");
    let mut st = gw.state_client().await;
    // Some history before the stream starts, so it replays, then switches.
    let mut first = None;
    for i in 0..500 {
        let e = st.set(state(&d, "t", &format!("r{}", i % RECORDS), json!({"i": i}))).await.unwrap().into_inner();
        first.get_or_insert(e);
    }
    let first = first.unwrap();
    let writer = {
        let d = d.clone();
        let channel = gw.channel().await;
        tokio::spawn(async move {
            // Several concurrent writers so the switch happens under load.
            let mut tasks = vec![];
            for w in 0..4 {
                let mut st = pb::state_service_client::StateServiceClient::new(channel.clone());
                let d = d.clone();
                tasks.push(tokio::spawn(async move {
                    for i in (500 + w..EVENTS).step_by(4) {
                        st.set(state(&d, "t", &format!("r{}", i % RECORDS), json!({"i": i}))).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    let mut ev = gw.event_client().await;
    let mut stream = ev
        .stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), after_event_id: first.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::HashSet::new();
    let mut last_version: HashMap<String, i64> = HashMap::new();
    last_version.insert("r0".into(), 1);
    for _ in 1..EVENTS {
        let e = next(&mut stream).await;
        assert!(seen.insert(e.id.clone()), "duplicate {}", e.id);
        let key = e.state.unwrap().key;
        let last = last_version.entry(key.clone()).or_insert(0);
        assert_eq!(e.version, *last + 1, "in order per record ({key})");
        *last = e.version;
    }
    writer.await.unwrap();
    assert_eq!(seen.len(), EVENTS - 1);
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err(), "nothing extra");
    gw.stop().await;
}

/// A client that reconnects with the last id it saw misses nothing, even
/// when writes happened while it was away.
#[tokio::test]
async fn reconnecting_with_the_last_id_misses_nothing() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("reconnect");
    let mut stream = ev.stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), ..Default::default() }).await.unwrap().into_inner();
    let a = st.set(state(&d, "t", "k", json!({"n": 1}))).await.unwrap().into_inner();
    assert_eq!(next(&mut stream).await.id, a.id);
    drop(stream);
    let mut missed = vec![];
    for n in 2..6 {
        missed.push(st.set(state(&d, "t", "k", json!({"n": n}))).await.unwrap().into_inner().id);
    }
    let mut stream = ev
        .stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), after_event_id: a.id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    for id in missed {
        assert_eq!(next(&mut stream).await.id, id);
    }
    gw.stop().await;
}

/// A stream whose client reads nothing does not hold up writers, and
/// catches up from storage once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_catches_up_without_blocking_writers() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("slow");
    let mut slow = ev.stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), ..Default::default() }).await.unwrap().into_inner();
    // Far more than the hub buffer (4096) plus the stream buffer hold.
    const N: usize = 6000;
    for i in 0..N {
        st.set(state(&d, "t", &format!("k{}", i % 50), json!({"i": i}))).await.unwrap();
    }
    let mut count = 0;
    let mut versions: HashMap<String, i64> = HashMap::new();
    while count < N {
        let e = next(&mut slow).await;
        let key = e.state.unwrap().key;
        let v = versions.entry(key).or_insert(0);
        assert_eq!(e.version, *v + 1);
        *v = e.version;
        count += 1;
    }
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable() {
    let gw = TestGateway::start().await;
    let mut ev = gw.event_client().await;
    let mut stream = ev.stream(pb::StreamOpts { domain: "d".into(), r#type: "t".into(), ..Default::default() }).await.unwrap().into_inner();
    let stopping = tokio::spawn(gw.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap();
    match end {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    stopping.await.unwrap();
}

/// A stream whose client goes away is cleaned up: the live-stream gauge
/// drops back and the hub releases the topic's channel subscription.
#[tokio::test]
async fn streams_of_departed_clients_are_cleaned_up() {
    let gw = TestGateway::start().await;
    let mut ev = gw.event_client().await;
    let d = unique("gone");
    let gateway = gw.running.as_ref().unwrap().gateway.clone();
    let mut streams = vec![];
    for _ in 0..5 {
        streams.push(ev.stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), ..Default::default() }).await.unwrap().into_inner());
    }
    let live = || gateway.metrics().live_streams.get();
    for _ in 0..100 {
        if live() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live(), 5);
    assert_eq!(gateway.active_topics().await, 1);
    drop(streams);
    for _ in 0..250 {
        if live() == 0 && gateway.active_topics().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live(), 0, "every stream task ended");
    assert_eq!(gateway.active_topics().await, 0, "the topic feed was released");
    gw.stop().await;
}

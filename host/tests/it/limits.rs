//! Load limits: request rate per client and concurrent streams answer
//! RESOURCE_EXHAUSTED (HTTP 429); many concurrent streams work.

use crate::harness::{TestGateway, http};
use crate::wire::*;
use futures::StreamExt;
use serde_json::json;
use stategate::proto as pb;
use std::time::Duration;

#[tokio::test]
async fn rate_limit_per_client_over_grpc_and_rest() {
    // One request every 100 s after a burst of 5: a run of 20 calls must be cut.
    let gw = TestGateway::start_with(|c| {
        c.rate_limit = 0.01;
        c.rate_burst = Some(5.0);
    })
    .await;
    let mut st = gw.state_client().await;
    let mut refused = 0;
    for _ in 0..20 {
        match st.get(state_ref("d", "t", "k")).await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => refused += 1,
            _ => {}
        }
    }
    assert!(refused >= 14, "at most the burst (and a little refill) passes: {refused} refused");
    let r = http().get(format!("{}/api/state/ref/d/t/k", gw.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429, "REST answers 429");
    gw.stop().await;
}

#[tokio::test]
async fn stream_cap() {
    let gw = TestGateway::start_with(|c| c.max_streams = 3).await;
    let mut ev = gw.event_client().await;
    let opts = || pb::StreamOpts { domain: "d".into(), r#type: "t".into(), ..Default::default() };
    let mut open = vec![];
    for _ in 0..3 {
        open.push(ev.stream(opts()).await.unwrap().into_inner());
    }
    let err = ev.stream(opts()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("STATEGATE_MAX_STREAMS"));
    drop(open.pop());
    // The slot comes back once the stream's task has ended.
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(s) = ev.stream(opts()).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a freed slot can be used again");
    gw.stop().await;
}

/// 10,000 concurrent streams on one instance, over 20 connections, each
/// receiving the same write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_streams() {
    const STREAMS: usize = 10_000;
    const CONNECTIONS: usize = 20;
    let gw = TestGateway::start().await;
    let d = unique("many");
    let mut clients = vec![];
    for _ in 0..CONNECTIONS {
        clients.push(gw.event_client().await);
    }
    let mut streams = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let mut c = clients[i % CONNECTIONS].clone();
        let opts = pb::StreamOpts { domain: d.clone(), r#type: "t".into(), ..Default::default() };
        streams.push(tokio::spawn(async move { c.stream(opts).await.map(|r| r.into_inner()) }));
    }
    let mut opened = Vec::with_capacity(STREAMS);
    for s in streams {
        opened.push(s.await.unwrap().expect("every stream opens"));
    }
    let written = gw.state_client().await.set(state(&d, "t", "k", json!({"hello": "everyone"}))).await.unwrap().into_inner();
    let receivers = opened.into_iter().map(|mut s| {
        let id = written.id.clone();
        tokio::spawn(async move {
            let e = tokio::time::timeout(Duration::from_secs(60), s.next()).await.expect("in time").unwrap().unwrap();
            assert_eq!(e.id, id);
        })
    });
    for r in futures::future::join_all(receivers).await {
        r.unwrap();
    }
    gw.stop().await;
}

//! Load limits: request rate per client and concurrent streams answer
//! RESOURCE_EXHAUSTED (HTTP 429); many concurrent streams work.

use crate::harness::{TestGateway, http};
use crate::wire::*;
use futures::StreamExt;
use serde_json::json;
use stategate::proto as pb;
use std::time::Duration;

/// A gateway allowing one request every 100 s after a burst of 5, and how
/// many of 20 `Get`s (the `i`th made by `request(i)`) it refused.
async fn twenty_rate_limited_gets(request: impl Fn(usize) -> tonic::Request<pb::StateRef>) -> (TestGateway, usize) {
    let gw = TestGateway::start_with(|c| {
        c.rate_limit = 0.01;
        c.rate_burst = Some(5.0);
    })
    .await;
    let mut st = gw.state_client().await;
    let mut refused = 0;
    for i in 0..20 {
        match st.get(request(i)).await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => refused += 1,
            _ => {}
        }
    }
    (gw, refused)
}

#[tokio::test]
async fn rate_limit_per_client_over_grpc_and_rest() {
    let (gw, refused) = twenty_rate_limited_gets(|_| tonic::Request::new(state_ref("d", "t", "k"))).await;
    assert!(refused >= 14, "at most the burst (and a little refill) passes: {refused} refused");
    let r = http().get(format!("{}/api/state/ref/d/t/k", gw.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429, "REST answers 429");
    gw.stop().await;
}

/// The identity a rate limit counts is the TCP peer, set by the server:
/// a client naming another peer in the header the server uses for it
/// (`x-stategate-peer`) is still counted as itself.
#[tokio::test]
async fn rate_limit_ignores_a_peer_named_by_the_client() {
    let (gw, refused) = twenty_rate_limited_gets(|i| {
        let mut request = tonic::Request::new(state_ref("d", "t", "k"));
        request.metadata_mut().insert(stategate::gateway::PEER_HEADER, format!("10.9.{i}.1:4000").parse().unwrap());
        request
    })
    .await;
    assert!(refused >= 14, "twenty claimed peers are one client: {refused} refused");
    let r = http()
        .get(format!("{}/api/state/ref/d/t/k", gw.url()))
        .header(stategate::gateway::PEER_HEADER, "10.9.99.1:4000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429, "REST counts the real peer too");
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

/// One caller (here: one peer, no token) has its own share of the streams,
/// under the instance's: every topic it opens counts, `*` or not.
#[tokio::test]
async fn stream_cap_per_caller() {
    let gw = TestGateway::start_with(|c| c.max_streams_per_caller = 2).await;
    let mut ev = gw.event_client().await;
    let opts = |ty: &str| pb::StreamOpts { domain: "d".into(), r#type: ty.into(), ..Default::default() };
    let mut open = vec![ev.stream(opts("a")).await.unwrap().into_inner(), ev.stream(opts("*")).await.unwrap().into_inner()];
    let err = ev.stream(opts("b")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("STATEGATE_MAX_STREAMS_PER_CALLER"), "{}", err.message());
    let r = http().get(format!("{}/api/events/stream?domain=d&type=c", gw.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429, "REST streams count too");
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(s) = ev.stream(opts("b")).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a closed stream gives its place back");
    gw.stop().await;
}

/// Health `Watch` streams need no token: each takes a slot of
/// STATEGATE_MAX_STREAMS (shared with event streams) and one of
/// STATEGATE_MAX_PUBLIC_STREAMS, so anonymous callers cannot hold more.
#[tokio::test]
async fn health_watch_streams_are_counted_and_capped() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let watch = || HealthCheckRequest { service: String::new() };
    let gw = TestGateway::start_with(|c| c.max_streams = 3).await;
    let mut health = HealthClient::new(gw.channel().await);
    let mut open = vec![];
    for _ in 0..3 {
        let mut s = health.watch(watch()).await.unwrap().into_inner();
        assert!(s.next().await.unwrap().is_ok(), "the first status arrives");
        open.push(s);
    }
    let err = health.watch(watch()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("STATEGATE_MAX_STREAMS"), "{}", err.message());
    let mut ev = gw.event_client().await;
    let opts = || pb::StreamOpts { domain: "d".into(), r#type: "t".into(), ..Default::default() };
    assert_eq!(ev.stream(opts()).await.unwrap_err().code(), tonic::Code::ResourceExhausted, "the budget is shared");
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(s) = ev.stream(opts()).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a closed Watch gives its slot back");
    gw.stop().await;

    // Within a large budget, streams that need no token have their own cap.
    let gw = TestGateway::start_with(|c| c.max_public_streams = 2).await;
    let mut health = HealthClient::new(gw.channel().await);
    let _a = health.watch(watch()).await.unwrap().into_inner();
    let _b = health.watch(watch()).await.unwrap().into_inner();
    let err = health.watch(watch()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("STATEGATE_MAX_PUBLIC_STREAMS"), "{}", err.message());
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest};
    let list = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let err = ServerReflectionClient::new(gw.channel().await)
        .server_reflection_info(futures::stream::iter([list]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "reflection streams share the public cap");
    let mut ev = gw.event_client().await;
    ev.stream(pb::StreamOpts { domain: "d".into(), r#type: "t".into(), ..Default::default() })
        .await
        .expect("event streams are not held back by the public cap");
    gw.stop().await;
}

/// 10,000 concurrent streams on one instance, over 20 connections, each
/// receiving the same write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_streams() {
    const STREAMS: usize = 10_000;
    const CONNECTIONS: usize = 20;
    // One client opens them all, more than one caller may by default.
    let gw = TestGateway::start_with(|c| c.max_streams_per_caller = 0).await;
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

//! The `stategate-client` crate against a live gateway: typed calls, the
//! token callback, streams that resume after the gateway restarts, and its
//! examples (compiled in here and run).

use crate::harness::{TestGateway, dev_config};
use crate::wire::unique;
use futures::StreamExt;
use serde_json::json;
use stategate_client::{Client, Resume, SearchEventOpts, SearchStateOpts, StreamOpts};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[path = "../../../client/examples/basic.rs"]
mod basic_example;
#[path = "../../../client/examples/stream.rs"]
mod stream_example;

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct Order {
    item: String,
    qty: u32,
}

#[tokio::test]
async fn typed_calls() {
    let gw = TestGateway::start().await;
    let c = Client::connect(gw.url()).await.unwrap();
    let d = unique("client");
    let order = Order { item: "tea".into(), qty: 3 };
    let ev = c.set(&d, "order", "o1", &order).await.unwrap();
    assert_eq!(ev.version, 1);
    assert_eq!(ev.values_as::<Order>().unwrap(), order);
    let st = c.get(&d, "order", "o1").await.unwrap();
    assert_eq!(st.values_as::<Order>().unwrap(), order);
    assert_eq!(st.version, 1);
    c.set(&d, "order", "o2", &json!({"item": "cake", "qty": 1})).await.unwrap();
    let big = c.search(SearchStateOpts::new(&d, "order", 10).query(&json!({"qty": {"$gt": 2}}))).await.unwrap();
    assert_eq!(big.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["o1"]);
    let del = c.del(&d, "order", "o1").await.unwrap();
    assert!(c.get(&d, "order", "o1").await.unwrap_err().is_not_found());
    let hist = c.search_events(SearchEventOpts::new(&d, "order", 10).key("o1")).await.unwrap();
    assert_eq!(hist.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), [ev.id.clone(), del.id.clone()]);
    assert_eq!(c.get_event(&ev.id).await.unwrap().id, ev.id);
    // Values that are not a JSON object are refused before any call.
    let err = c.set(&d, "order", "o3", &[1, 2]).await.unwrap_err();
    assert!(err.to_string().contains("values must be a JSON object, got an array"), "{err}");
    // Errors carry the gateway's code and message.
    let err = c.set("bad domain", "order", "o3", &json!({})).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(err.to_string().starts_with("INVALID_ARGUMENT: "), "{err}");
    gw.stop().await;
}

#[tokio::test]
async fn token_callback_is_asked_on_every_call() {
    let url = crate::cli::echo_authorization_server().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let c = Client::builder(url)
        .token_fn(move || Some(format!("t{}", n.fetch_add(1, Ordering::SeqCst))))
        .connect()
        .await
        .unwrap();
    for i in 0..3 {
        let err = c.get("d", "t", "k").await.unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::PermissionDenied));
        assert!(err.to_string().contains(&format!("authorization=Bearer t{i}")), "{err}");
    }
    // A stream's first call also carries it, and its refusal is returned
    // by `stream` itself.
    let err = match c.stream(StreamOpts::new("d", "t")).await {
        Err(e) => e,
        Ok(_) => panic!("the stream must be refused"),
    };
    assert!(err.to_string().contains("authorization=Bearer t3"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The stream outlives two gateway processes: events written while it was
/// disconnected are replayed after the last one it delivered, with no gap
/// and no duplicate.
#[tokio::test]
async fn stream_resumes_after_the_gateway_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = |port: u16| {
        let mut c = dev_config(dir.path());
        c.port = port;
        c.shutdown_grace_secs = 1;
        c
    };
    let d = unique("resume");
    let gw = TestGateway::start_config(config(port)).await;
    let client = Client::builder(gw.url())
        .resume(Resume { initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(500), ..Default::default() })
        .connect()
        .await
        .unwrap();
    let mut stream = client.stream(StreamOpts::new(&d, "t")).await.unwrap();
    let mut written = vec![];
    for i in 0..2 {
        written.push(client.set(&d, "t", &format!("k{i}"), &json!({"i": i})).await.unwrap().id);
    }
    let mut got = vec![];
    while got.len() < 2 {
        got.push(stream.next().await.unwrap().unwrap().id);
    }
    gw.stop().await;

    // Written while the stream's gateway is down (through another instance
    // on the same storage).
    let other = TestGateway::start_config(config(0)).await;
    let side = Client::connect(other.url()).await.unwrap();
    for i in 2..4 {
        written.push(side.set(&d, "t", &format!("k{i}"), &json!({"i": i})).await.unwrap().id);
    }
    other.stop().await;

    let gw = TestGateway::start_config(config(port)).await;
    let live = Client::connect(gw.url()).await.unwrap();
    written.push(live.set(&d, "t", "k4", &json!({"i": 4})).await.unwrap().id);
    while got.len() < 5 {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("the stream resumed")
            .unwrap()
            .unwrap();
        got.push(next.id);
    }
    assert_eq!(got, written);
    assert!(stream.reconnects() >= 1);
    assert_eq!(stream.last_event_id(), written[4]);
    gw.stop().await;
}

#[tokio::test]
async fn stream_errors_that_a_retry_cannot_fix_end_it() {
    let gw = TestGateway::start().await;
    let c = Client::connect(gw.url()).await.unwrap();
    let err = match c.stream(StreamOpts::new("d", "t").after("no-such-event")).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
    };
    assert!(err.is_not_found(), "{err}");
    gw.stop().await;
}

#[tokio::test]
async fn rust_examples_run() {
    let gw = TestGateway::start().await;
    let d = unique("example");
    let lines = basic_example::run(&gw.url(), &d).await.unwrap();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[1].contains("Alice from Paris"), "{lines:?}");
    assert_eq!(lines[2], "search city=Paris: 1 record(s)");
    assert_eq!(lines[4], "alice history: 2 event(s)");
    // The stream example replays the domain's 3 events (set alice, set bob, del alice) from the beginning.
    let ids = tokio::time::timeout(Duration::from_secs(60), stream_example::run(&gw.url(), &d, "user", Some(3)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids.len(), 3);
    gw.stop().await;
}

/// `watch()`: a snapshot, then every change after it applied to the local
/// view, across concurrent writers and a gateway restart (with writes made
/// through another instance while the watch's gateway is down). Every event
/// after the snapshot is handed over exactly once and the view ends equal to
/// the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_keeps_a_view_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = |port: u16| {
        let mut c = dev_config(dir.path());
        c.port = port;
        c.shutdown_grace_secs = 1;
        c
    };
    let d = unique("watch");
    let gw = TestGateway::start_config(config(port)).await;
    let client = Client::builder(gw.url())
        .resume(Resume { initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(500), ..Default::default() })
        .connect()
        .await
        .unwrap();
    for i in 0..20 {
        client.set(&d, "t", &format!("k{i}"), &json!({"i": i, "phase": 0})).await.unwrap();
    }
    let mut watch = client.watch(&d, "t").await.unwrap();
    assert_eq!(watch.view().len(), 20);
    let snapshot = watch.snapshot_sequence();

    // Concurrent writers (live events of different records may arrive out
    // of sequence order), while the watch is read.
    async fn write(url: String, d: String, w: usize, n: usize, phase: u32) {
        let c = Client::connect(url).await.unwrap();
        for i in 0..n {
            let key = format!("k{}", (w * 5 + i) % 20);
            if i % 6 == 5 {
                match c.del(&d, "t", &key).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => panic!("del: {e}"),
                }
            } else {
                c.set(&d, "t", &key, &json!({"w": w, "i": i, "phase": phase})).await.unwrap();
            }
        }
    }
    let writers: Vec<_> = (0..4).map(|w| tokio::spawn(write(gw.url(), d.clone(), w, 50, 1))).collect();
    let mut handed = vec![];
    for w in writers {
        w.await.unwrap();
    }
    while handed.len() < 10 {
        handed.push(tokio::time::timeout(Duration::from_secs(60), watch.next_change()).await.unwrap().unwrap().unwrap());
    }
    gw.stop().await;
    let other = TestGateway::start_config(config(0)).await;
    write(other.url(), d.clone(), 9, 40, 2).await;
    other.stop().await;
    let gw = TestGateway::start_config(config(port)).await;
    write(gw.url(), d.clone(), 7, 30, 3).await;

    // Every event after the snapshot, from the store's own history.
    let side = Client::connect(gw.url()).await.unwrap();
    let history = side.search_events(SearchEventOpts::new(&d, "t", 1000)).await.unwrap();
    let expected: Vec<i64> = history.iter().map(|e| e.sequence).filter(|&s| s > snapshot).collect();
    while handed.len() < expected.len() {
        handed.push(tokio::time::timeout(Duration::from_secs(60), watch.next_change()).await.expect("the watch resumed").unwrap().unwrap());
    }
    let mut got: Vec<i64> = handed.iter().map(|e| e.sequence).collect();
    got.sort_unstable();
    assert_eq!(got, expected, "each change after the snapshot exactly once");
    assert!(watch.reconnects() >= 1);
    let now = side.search(SearchStateOpts::new(&d, "t", 1000)).await.unwrap();
    let view: Vec<(String, i64, serde_json::Value)> =
        watch.view().values().map(|s| (s.key.clone(), s.version, s.values_json())).collect();
    let store: Vec<(String, i64, serde_json::Value)> = now.iter().map(|s| (s.key.clone(), s.version, s.values_json())).collect();
    assert_eq!(view, store, "the view is the store");
    // Nothing trails: the next change is the one written now.
    let sentinel = side.set(&d, "t", "sentinel", &json!({})).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(60), watch.next_change()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.id, sentinel.id, "seq {} came twice", next.sequence);
    assert!(watch.get("sentinel").is_some());
    gw.stop().await;
}

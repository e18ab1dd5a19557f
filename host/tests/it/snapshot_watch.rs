//! Snapshot, then watch, with no gap: a `Search` names the store position
//! it answered at (`StateValues.sequence`), and a `Stream` started after it
//! (`after_sequence`) delivers exactly the changes the snapshot does not
//! hold, under a concurrent writer. Also `Get`'s position and point-in-time
//! reads through the API.
//!
//! The oracle is the writers' acknowledgements: every write in the test's
//! domain is acknowledged with its event (seq, version, values), so the
//! acknowledged events are the domain's whole log, and the state at any
//! seq is their replay up to it.

use crate::harness::TestGateway;
use crate::wire::unique;
use serde_json::{Value, json};
use stategate::proto::{SearchEventOpts, SearchStateOpts, State, StateRef, StreamOpts};
use stategate_client::{json_to_struct, struct_to_json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WRITERS: usize = 4;
const WRITES_PER_WRITER: usize = 2_500;
const KEYS_PER_WRITER: usize = 25;
/// Snapshots are taken once this many writes were acknowledged.
const SNAPSHOT_AT: [usize; 3] = [1_000, 4_000, 7_000];
const WAIT: Duration = Duration::from_secs(180);

/// One acknowledged change: (key, version, values; `None` = deleted).
type Ack = (String, i64, Option<Value>);

/// key → (version, values) after replaying `log` up to `seq`.
fn replay(log: &BTreeMap<i64, Ack>, seq: i64) -> BTreeMap<String, (i64, Value)> {
    let mut view = BTreeMap::new();
    for (_, (key, version, values)) in log.range(..=seq) {
        match values {
            Some(v) => view.insert(key.clone(), (*version, v.clone())),
            None => view.remove(key),
        };
    }
    view
}

fn as_view(states: &[State]) -> BTreeMap<String, (i64, Value)> {
    states
        .iter()
        .map(|s| (s.key.clone(), (s.version, s.values.clone().map(|v| struct_to_json(&v)).unwrap_or(json!({})))))
        .collect()
}

/// What one watcher saw: the snapshot, its position, and the events its
/// stream delivered after it, in order.
struct Watched {
    snapshot: Vec<State>,
    seq: i64,
    events: Vec<stategate::proto::Event>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_then_watch_misses_and_repeats_nothing_under_10k_writes() {
    let gw = TestGateway::start().await;
    let d = unique("watch");
    let acked = Arc::new(AtomicUsize::new(0));
    // The domain's whole log, once every write was acknowledged.
    let (log_tx, log_rx) = tokio::sync::watch::channel(None::<Arc<BTreeMap<i64, Ack>>>);

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (gw_url, d, acked) = (gw.url(), d.clone(), acked.clone());
            tokio::spawn(async move {
                let mut client = stategate::proto::state_service_client::StateServiceClient::connect(gw_url).await.unwrap();
                let mut log = BTreeMap::new();
                let mut live = std::collections::HashSet::new();
                for i in 0..WRITES_PER_WRITER {
                    let key = format!("w{w}-{}", i % KEYS_PER_WRITER);
                    // Every 7th write deletes, when this writer's key has a
                    // state (no one else writes it, so that is known).
                    let event = if i % 7 == 6 && live.contains(&key) {
                        live.remove(&key);
                        let r = StateRef { domain: d.clone(), r#type: "t".into(), key: key.clone(), ..Default::default() };
                        client.del(r).await.unwrap().into_inner()
                    } else {
                        live.insert(key.clone());
                        let values = json!({"w": w, "i": i});
                        let s = State {
                            domain: d.clone(),
                            r#type: "t".into(),
                            key: key.clone(),
                            values: Some(json_to_struct(values.as_object().unwrap())),
                            ..Default::default()
                        };
                        client.set(s).await.unwrap().into_inner()
                    };
                    let values = event.state.as_ref().and_then(|s| s.values.clone()).map(|v| struct_to_json(&v));
                    log.insert(event.sequence, (key, event.version, values));
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                log
            })
        })
        .collect();

    let watchers: Vec<_> = SNAPSHOT_AT
        .iter()
        .map(|&at| {
            let (gw_url, d, acked, mut log_rx) = (gw.url(), d.clone(), acked.clone(), log_rx.clone());
            tokio::spawn(async move {
                let channel = tonic::transport::Channel::from_shared(gw_url).unwrap().connect().await.unwrap();
                let mut states = stategate::proto::state_service_client::StateServiceClient::new(channel.clone());
                let mut events = stategate::proto::event_service_client::EventServiceClient::new(channel);
                // Wait on the condition (writes acknowledged), not a clock.
                while acked.load(Ordering::SeqCst) < at {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let opts = SearchStateOpts { domain: d.clone(), r#type: "t".into(), limit: 1000, ..Default::default() };
                let snap = states.search(opts).await.unwrap().into_inner();
                let seq = snap.sequence;
                let stream_opts = StreamOpts { domain: d.clone(), r#type: "t".into(), after_sequence: Some(seq), ..Default::default() };
                let mut stream = events.stream(stream_opts).await.unwrap().into_inner();
                let log = tokio::time::timeout(WAIT, log_rx.wait_for(Option::is_some)).await.unwrap().unwrap().clone().unwrap();
                // As many as the log holds after the snapshot; a duplicate
                // would take the place of a missing one (caught below), or
                // come after them (caught by the sentinel).
                let mut got = vec![];
                while got.len() < log.range(seq + 1..).count() {
                    let e = tokio::time::timeout(WAIT, stream.message()).await.expect("stream delivers").unwrap().unwrap();
                    got.push(e);
                }
                (Watched { snapshot: snap.state_values, seq, events: got }, stream)
            })
        })
        .collect();

    let mut log = BTreeMap::new();
    for w in writers {
        log.extend(w.await.unwrap());
    }
    assert_eq!(log.len(), WRITERS * WRITES_PER_WRITER, "every write has its own seq");
    let last = *log.keys().next_back().unwrap();
    let log = Arc::new(log);
    log_tx.send(Some(log.clone())).unwrap();

    let mut final_view = None;
    let mut streams = vec![];
    for (watcher, at) in watchers.into_iter().zip(SNAPSHOT_AT) {
        let (Watched { snapshot, seq, events }, stream) = watcher.await.unwrap();
        streams.push(stream);
        // The snapshot is exactly the log up to its position.
        assert!(seq > 0 && seq < last, "a snapshot amid the writes: {seq}");
        assert_eq!(as_view(&snapshot), replay(&log, seq), "snapshot taken after {at} writes, at seq {seq}");
        // The stream carries exactly the log after it: none missed, none
        // twice. (Live events of different records arrive in publish order,
        // which may differ from seq order; one record's arrive in order.)
        let mut delivered: Vec<i64> = events.iter().map(|e| e.sequence).collect();
        delivered.sort_unstable();
        let expected: Vec<i64> = log.range(seq + 1..).map(|(s, _)| *s).collect();
        assert!(delivered == expected,
            "watch after seq {seq}: {} delivered, {} expected; first difference at {:?}",
            delivered.len(), expected.len(), delivered.iter().zip(&expected).position(|(a, b)| a != b));
        let mut versions = BTreeMap::<&str, i64>::new();
        for e in &events {
            let key = e.state.as_ref().unwrap().key.as_str();
            let before = versions.insert(key, e.version);
            assert!(before.is_none_or(|v| v < e.version), "{key}: version {} after {before:?}", e.version);
        }
        // Applying them to the snapshot gives the final state.
        let mut view = as_view(&snapshot);
        for e in &events {
            let st = e.state.as_ref().unwrap();
            match &st.values {
                Some(v) => view.insert(st.key.clone(), (e.version, struct_to_json(v))),
                None => view.remove(&st.key),
            };
        }
        assert_eq!(view, replay(&log, last), "snapshot at {seq} plus its watch");
        final_view = Some(view);
    }
    let mut states = gw.state_client().await;
    let now = states
        .search(SearchStateOpts { domain: d.clone(), r#type: "t".into(), limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.sequence, last, "nothing else was written since");
    assert_eq!(Some(as_view(&now.state_values)), final_view);
    // Nothing more is in any stream: the next event each delivers is the
    // one written now.
    let sentinel = states
        .set(State {
            domain: d.clone(),
            r#type: "t".into(),
            key: "sentinel".into(),
            values: Some(json_to_struct(json!({}).as_object().unwrap())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for mut stream in streams {
        let next = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(next.id, sentinel.id, "a stream delivered seq {} again", next.sequence);
    }
    gw.stop().await;
}

/// `Get` names its position; `as_of_sequence` / `as_of_time` read the past
/// (a deletion is NOT_FOUND); `Search` pages at one position stay
/// consistent; event searches take version bounds; bad positions are
/// refused with the field named.
#[tokio::test]
async fn point_in_time_reads_through_the_api() {
    let gw = TestGateway::start().await;
    let d = unique("asof");
    let mut states = gw.state_client().await;
    let mut events = gw.event_client().await;
    let set = |key: &str, v: Value| State {
        domain: d.clone(),
        r#type: "t".into(),
        key: key.into(),
        values: Some(json_to_struct(v.as_object().unwrap())),
        ..Default::default()
    };
    let r = |key: &str| StateRef { domain: d.clone(), r#type: "t".into(), key: key.into(), ..Default::default() };
    let e1 = states.set(set("k", json!({"n": 1}))).await.unwrap().into_inner();
    let e2 = states.set(set("k", json!({"n": 2}))).await.unwrap().into_inner();
    let del = states.del(r("k")).await.unwrap().into_inner();
    let e4 = states.set(set("k", json!({"n": 4}))).await.unwrap().into_inner();

    let now = states.get(r("k")).await.unwrap().into_inner();
    assert!(now.sequence >= e4.sequence);
    assert_eq!((now.version, now.values.map(|v| struct_to_json(&v))), (4, Some(json!({"n": 4}))));
    let at = |seq: i64| StateRef { as_of_sequence: Some(seq), ..r("k") };
    let then = states.get(at(e1.sequence)).await.unwrap().into_inner();
    assert_eq!((then.version, then.sequence, then.values.map(|v| struct_to_json(&v))), (1, e1.sequence, Some(json!({"n": 1}))));
    assert_eq!(states.get(at(e2.sequence)).await.unwrap().into_inner().version, 2);
    let gone = states.get(at(del.sequence)).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "deleted then: {gone:?}");
    assert_eq!(states.get(at(e1.sequence - 1)).await.unwrap_err().code(), tonic::Code::NotFound, "before its first write");
    let by_time = StateRef { as_of_time: e2.time, ..r("k") };
    assert_eq!(states.get(by_time).await.unwrap().into_inner().version, 2);

    // Past the head, negative, or both: refused, naming the field.
    let future = states.get(at(now.sequence + 1_000_000)).await.unwrap_err();
    assert_eq!(future.code(), tonic::Code::InvalidArgument);
    assert!(future.message().contains("as_of_sequence"), "{}", future.message());
    let both = states.get(StateRef { as_of_time: 5, ..at(e1.sequence) }).await.unwrap_err();
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    assert!(states.get(at(-1)).await.unwrap_err().message().contains("as_of_sequence"));

    // Pages of one search at one position: a write between them does not
    // shift the second page.
    for i in 0..6 {
        states.set(set(&format!("p{i}"), json!({"i": i}))).await.unwrap();
    }
    let page = |offset: i64, as_of: Option<i64>| SearchStateOpts {
        domain: d.clone(),
        r#type: "t".into(),
        limit: 3,
        offset,
        as_of_sequence: as_of,
        ..Default::default()
    };
    let first = states.search(page(0, None)).await.unwrap().into_inner();
    states.set(set("a-new-first-key", json!({}))).await.unwrap();
    let second = states.search(page(3, Some(first.sequence))).await.unwrap().into_inner();
    assert_eq!(second.sequence, first.sequence);
    let keys: Vec<_> = first.state_values.iter().chain(&second.state_values).map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["k", "p0", "p1", "p2", "p3", "p4"]);
    let past = states.search(SearchStateOpts { limit: 10, ..page(0, Some(del.sequence)) }).await.unwrap().into_inner();
    assert!(past.state_values.is_empty(), "at the deletion, nothing: {:?}", past.state_values);

    // One record's versions between two.
    let versions = events
        .search(SearchEventOpts {
            domain: d.clone(),
            r#type: "t".into(),
            key: "k".into(),
            min_version: 2,
            max_version: 3,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions.events.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);

    // REST: the same as query parameters, and `sequence` in the answers.
    let c = crate::harness::http();
    let url = format!("{}/api/state/ref/{d}/t/k?as_of_sequence={}", gw.url(), e1.sequence);
    let got: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!((got["version"].clone(), got["sequence"].clone()), (json!("1"), json!(e1.sequence.to_string())));
    let url = format!("{}/api/state/search?domain={d}&type=t&limit=10&asOfSequence={}", gw.url(), e2.sequence);
    let found: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(found["sequence"], json!(e2.sequence.to_string()));
    assert_eq!(found["stateValues"].as_array().unwrap().len(), 1);
    let url = format!("{}/api/events/search?domain={d}&type=t&key=k&limit=10&min_version=3", gw.url());
    let found: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(found["events"].as_array().unwrap().len(), 2, "{found}");
    let url = format!("{}/api/state/ref/{d}/t/k?as_of_sequence={}", gw.url(), del.sequence);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    gw.stop().await;
}

/// A stream after a position past the head is refused (resuming there
/// would skip events); after the head it waits for the next write.
#[tokio::test]
async fn stream_after_sequence_bounds() {
    let gw = TestGateway::start().await;
    let d = unique("after");
    let mut states = gw.state_client().await;
    let mut events = gw.event_client().await;
    let snap = states
        .search(SearchStateOpts { domain: d.clone(), r#type: "t".into(), limit: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let opts = |after: i64| StreamOpts { domain: d.clone(), r#type: "t".into(), after_sequence: Some(after), ..Default::default() };
    let refused = match events.stream(opts(snap.sequence + 1_000_000)).await {
        Err(s) => s,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("after_sequence"), "{}", refused.message());
    let mut stream = events.stream(opts(snap.sequence)).await.unwrap().into_inner();
    let s = State {
        domain: d.clone(),
        r#type: "t".into(),
        key: "k".into(),
        values: Some(json_to_struct(json!({"a": 1}).as_object().unwrap())),
        ..Default::default()
    };
    // The same over REST (NDJSON), opened before the write.
    let c = crate::harness::http();
    let url = format!("{}/api/events/stream?domain={d}&type=t&after_sequence={}", gw.url(), snap.sequence);
    let ndjson = c.get(url).send().await.unwrap();
    assert_eq!(ndjson.status(), 200);
    let written = states.set(s).await.unwrap().into_inner();
    let got = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.id, written.id);
    // Its resume point covers it: nothing of the stream at or below it is
    // still to come.
    assert!(got.resume_after >= snap.sequence, "{got:?}");
    let mut lines = futures::StreamExt::boxed(ndjson.bytes_stream());
    let chunk = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut lines)).await.unwrap().unwrap().unwrap();
    let line: Value = serde_json::from_slice(chunk.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["result"]["id"], json!(written.id));
    assert!(line["result"]["resumeAfter"].as_str().unwrap().parse::<i64>().unwrap() >= snap.sequence, "{line}");
    gw.stop().await;
}

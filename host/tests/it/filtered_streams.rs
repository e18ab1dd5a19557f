//! Filtered streams (`query_string`, `claims_query`, `kinds` on
//! `EventService.Stream` and the REST stream): one filter for replayed
//! history and live events, exactly the events the shared matcher admits,
//! invalid filters refused naming the field, and one evaluation per event
//! per distinct filter however many streams share it.
//!
//! A stream never ends by itself, so each test ends its streams on a
//! sentinel: an event written last that the stream's filter admits. Writes
//! come from one writer in order, so everything a stream should send
//! arrives before its sentinel.

use crate::harness::{TestGateway, http};
use crate::wire::*;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use stategate::model::{Event, EventFilter, EventKind, RecordRef};
use stategate::proto as pb;
use std::time::Duration;

const SECRET: &str = "filtered-streams-test-secret-0123456789";

fn token(sub: &str) -> String {
    encode(&Header::new(Algorithm::HS256), &json!({"sub": sub, "exp": 4_000_000_000u64}), &EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap()
}

fn as_user<T>(sub: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {}", token(sub)).parse().unwrap());
    r
}

async fn gateway_with_auth() -> TestGateway {
    TestGateway::start_with(|c| {
        c.dev = false;
        c.bind = "127.0.0.1".into();
        c.auth.auth_disabled = false;
        c.auth.jwt_hmac_secret = Some(SECRET.into());
        c.auth.request_policy_path = vec![crate::examples::repo().join("examples/policies/allow_all.rego")];
    })
    .await
}

async fn next(stream: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an event in time (the stream hangs otherwise)")
        .expect("stream open")
        .expect("no error")
}

/// The ids a stream sends up to and including the event `last`.
async fn ids_until(stream: &mut tonic::Streaming<pb::Event>, last: &str) -> Vec<String> {
    let mut out = vec![];
    loop {
        let e = next(stream).await;
        out.push(e.id.clone());
        if e.id == last {
            return out;
        }
    }
}

fn kinds(list: &[pb::EventKind]) -> Vec<i32> {
    list.iter().map(|k| *k as i32).collect()
}

/// The same filters on history (replayed from the first event) and on
/// live events, by values, by the writer's `sub`, by kind, and all three.
#[tokio::test]
async fn filters_apply_to_replayed_history_and_live_events() {
    let gw = gateway_with_auth().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("filtered");
    // (who, key, values or None for a deletion)
    let script = |phase: i64| -> Vec<(&'static str, String, Option<Value>)> {
        vec![
            ("ann", format!("a{phase}"), Some(json!({"n": 1 + phase * 10}))),
            ("bob", format!("b{phase}"), Some(json!({"n": 7 + phase * 10}))),
            ("ann", format!("a{phase}"), Some(json!({"n": 9 + phase * 10, "tag": "x"}))),
            ("bob", format!("b{phase}"), None),
            ("ann", format!("a{phase}"), None),
            ("bob", format!("c{phase}"), Some(json!({"n": 2}))),
        ]
    };
    let mut written: Vec<(String, &'static str, EventKind, Option<Value>)> = vec![];
    let mut write = async |who: &'static str, key: &str, values: Option<Value>| -> String {
        let e = match &values {
            Some(v) => st.set(as_user(who, state(&d, "t", key, v.clone()))).await.unwrap().into_inner(),
            None => st.del(as_user(who, state_ref(&d, "t", key))).await.unwrap().into_inner(),
        };
        let kind = if values.is_some() { EventKind::Set } else { EventKind::Del };
        written.push((e.id.clone(), who, kind, values));
        e.id
    };
    for (who, key, values) in script(0) {
        write(who, &key, values).await;
    }
    let open = async |ev: &mut pb::event_service_client::EventServiceClient<_>, q: &str, c: &str, k: &[pb::EventKind]| {
        let opts = pb::StreamOpts {
            domain: d.clone(),
            r#type: "t".into(),
            from_time: 1,
            query_string: q.into(),
            claims_query: c.into(),
            kinds: kinds(k),
            ..Default::default()
        };
        ev.stream(as_user("reader", opts)).await.unwrap().into_inner()
    };
    let mut by_value = open(&mut ev, r#"{"n": {"$gte": 5}}"#, "", &[]).await;
    let mut by_writer = open(&mut ev, "", r#"{"sub": "ann"}"#, &[]).await;
    let mut deletions = open(&mut ev, "", "", &[pb::EventKind::Del]).await;
    let mut all_three = open(&mut ev, r#"{"n": {"$gte": 5}}"#, r#"{"sub": "ann"}"#, &[pb::EventKind::Set, pb::EventKind::Edit]).await;
    for (who, key, values) in script(1) {
        write(who, &key, values).await;
    }
    // Sentinels: ann's SET passes every filter but the deletions', ann's
    // DEL passes the deletions' and the writer's.
    let set_end = write("ann", "end", Some(json!({"n": 100}))).await;
    let del_end = write("ann", "end", None).await;

    let expect = |keep: &dyn Fn(&str, EventKind, &Option<Value>) -> bool, last: &str| -> Vec<String> {
        let mut out = vec![];
        for (id, who, kind, values) in &written {
            if keep(who, *kind, values) {
                out.push(id.clone());
            }
            if id == last {
                break;
            }
        }
        out
    };
    let n_at_least_5 = |v: &Option<Value>| v.as_ref().and_then(|v| v["n"].as_i64()).is_some_and(|n| n >= 5);
    assert_eq!(ids_until(&mut by_value, &set_end).await, expect(&|_, _, v| n_at_least_5(v), &set_end));
    assert_eq!(ids_until(&mut by_writer, &del_end).await, expect(&|who, _, _| who == "ann", &del_end));
    assert_eq!(ids_until(&mut deletions, &del_end).await, expect(&|_, k, _| k == EventKind::Del, &del_end));
    assert_eq!(
        ids_until(&mut all_three, &set_end).await,
        expect(&|who, k, v| who == "ann" && k == EventKind::Set && n_at_least_5(v), &set_end)
    );
    gw.stop().await;
}

#[tokio::test]
async fn invalid_filters_are_refused_naming_the_field() {
    let gw = TestGateway::start().await;
    let mut ev = gw.event_client().await;
    let cases = [
        (pb::StreamOpts { query_string: r#"{"a": {"$where": "1"}}"#.into(), ..Default::default() }, "query_string"),
        (pb::StreamOpts { query_string: "{not json".into(), ..Default::default() }, "query_string"),
        (pb::StreamOpts { claims_query: "[1]".into(), ..Default::default() }, "claims_query"),
        (pb::StreamOpts { kinds: vec![pb::EventKind::Set as i32, 0], ..Default::default() }, "kinds"),
        (pb::StreamOpts { kinds: vec![42], ..Default::default() }, "kinds"),
    ];
    for (mut opts, field) in cases {
        opts.domain = "d".into();
        opts.r#type = "t".into();
        let err = ev.stream(opts).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let base = gw.url();
    for (params, field) in [
        ("query_string=%7B%22a%22%3A%7B%22%24bogus%22%3A1%7D%7D", "query_string"),
        ("claims_query=7", "claims_query"),
        ("kinds=SET&kinds=UPSERT", "kinds"),
        ("kinds=SET,nope", "kinds"),
    ] {
        let r = http().get(format!("{base}/api/events/stream?domain=d&type=t&{params}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{params}");
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(field), "{params}: {body}");
    }
    gw.stop().await;
}

/// The REST stream (NDJSON) takes the same filter parameters, `kinds`
/// repeated or comma-separated.
#[tokio::test]
async fn the_rest_stream_takes_the_same_filters() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let d = unique("restfilter");
    let q = "%7B%22n%22%3A%7B%22%24gt%22%3A1%7D%7D"; // {"n":{"$gt":1}}
    let mut streams = vec![];
    for kinds in ["kinds=SET&kinds=DEL", "kinds=SET,DEL"] {
        let url = format!("{}/api/events/stream?domain={d}&type=t&query_string={q}&{kinds}", gw.url());
        let r = http().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r.bytes_stream());
    }
    // Give the streams a start position: they are live from when they
    // answered, so the writes below all come after.
    let low = st.set(state(&d, "t", "a", json!({"n": 1}))).await.unwrap().into_inner();
    let high = st.set(state(&d, "t", "a", json!({"n": 2}))).await.unwrap().into_inner();
    let del = st.del(state_ref(&d, "t", "a")).await.unwrap().into_inner();
    // A DEL's values are {}: {"n": {"$gt": 1}} refuses it. So the last
    // event these streams send is this SET:
    let end = st.set(state(&d, "t", "b", json!({"n": 3}))).await.unwrap().into_inner();
    let _ = (low, del);
    for s in &mut streams {
        let mut ids = vec![];
        let mut buf = Vec::new();
        while !ids.contains(&end.id) {
            let chunk = tokio::time::timeout(Duration::from_secs(30), s.next()).await.expect("a line in time").unwrap().unwrap();
            buf.extend_from_slice(&chunk);
            while let Some(at) = buf.iter().position(|b| *b == b'\n') {
                let line: Value = serde_json::from_slice(&buf[..at]).unwrap();
                buf.drain(..=at);
                ids.push(line["result"]["id"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(ids, vec![high.id.clone(), end.id.clone()]);
    }
    gw.stop().await;
}

/// 100 live streams on two distinct filters (one of them written three
/// ways): each event is evaluated once per distinct filter, not once per
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_evaluation_per_event_per_distinct_filter() {
    const STREAMS: usize = 100;
    const EVENTS: usize = 50;
    let gw = TestGateway::start().await;
    let metrics = gw.running.as_ref().unwrap().gateway.metrics().clone();
    let mut st = gw.state_client().await;
    let d = unique("shared");
    let spellings = [r#"{"n": {"$gte": 0, "$lt": 1000}}"#, r#"{"n":{"$lt":1000,"$gte":0}}"#, "{ \"n\" : { \"$gte\" : 0 , \"$lt\" : 1000 } }"];
    let odd = r#"{"odd": true}"#;
    let mut streams = vec![];
    for i in 0..STREAMS {
        let mut ev = gw.event_client().await;
        let q = if i % 4 == 3 { odd } else { spellings[i % 3] };
        let opts = pb::StreamOpts { domain: d.clone(), r#type: "t".into(), query_string: q.into(), ..Default::default() };
        streams.push((i % 4 == 3, ev.stream(opts).await.unwrap().into_inner()));
    }
    assert_eq!(metrics.hub_filters.get(), 2, "three spellings of one filter are one filter");
    let before = metrics.stream_filter_evaluations.get();
    let mut ids = vec![];
    for n in 0..EVENTS {
        let values = json!({"n": n, "odd": n % 2 == 1});
        ids.push(st.set(state(&d, "t", &format!("k{}", n % 7), values)).await.unwrap().into_inner().id);
    }
    let odd_ids: Vec<String> = ids.iter().skip(1).step_by(2).cloned().collect();
    for (odd, stream) in &mut streams {
        let want = if *odd { &odd_ids } else { &ids };
        assert_eq!(&ids_until(stream, want.last().unwrap()).await, want);
    }
    assert_eq!(metrics.stream_filter_evaluations.get() - before, 2 * EVENTS as u64);
    drop(streams);
    gw.stop().await;
}

fn event_of(pb: &pb::Event) -> Event {
    let s = pb.state.clone().unwrap();
    Event {
        id: pb.id.clone(),
        seq: pb.sequence as u64,
        record: RecordRef::parse(&s.domain, &s.r#type, &s.key).unwrap(),
        values: s.values.as_ref().map(|v| from_struct(v).as_object().unwrap().clone().into()),
        claims: pb.claims.as_ref().map(|c| from_struct(c).as_object().unwrap().clone()).unwrap_or_default(),
        time: pb.time,
        version: pb.version as u64,
        kind: EventKind::parse(pb::EventKind::try_from(pb.kind).unwrap().as_str_name()).unwrap(),
        method: pb.method.clone(),
    }
}

/// Random filters over random events: a stream (replaying the first half,
/// the second half live) sends exactly the events the shared matcher
/// admits, in order. Its filter is the random one `$or` the sentinel's
/// values (and SET among its kinds, if it names kinds), and the matcher is
/// asked about that same filter.
#[test]
fn filtered_streams_send_exactly_what_the_matcher_admits() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = rt.block_on(TestGateway::start());
    let channel = rt.block_on(gw.channel());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 24, ..ProptestConfig::default() });
    let write = prop::collection::vec((0usize..4, prop::option::weighted(0.8, crate::properties::doc())), 2..16);
    let filter = (
        prop::collection::vec(crate::properties::condition(), 0..3),
        prop::collection::vec(prop_oneof![Just("SET"), Just("DEL")], 0..2),
    );
    runner
        .run(&(write, filter), |(writes, (conds, kinds))| {
            let values: Map<String, Value> = conds.into_iter().collect();
            let mut kinds: Vec<String> = kinds.into_iter().map(str::to_owned).collect();
            if !kinds.is_empty() {
                kinds.push("SET".into());
            }
            let query = json!({"$or": [values, {"sentinel": true}]}).to_string();
            let reference = match EventFilter::parse(&query, "", &kinds) {
                Ok(f) => f.expect("a filter"),
                // A random filter the language refuses: nothing to stream.
                Err(_) => return Ok(()),
            };
            rt.block_on(async {
                let mut st = pb::state_service_client::StateServiceClient::new(channel.clone());
                let mut ev = pb::event_service_client::EventServiceClient::new(channel.clone());
                let d = unique("prop");
                let mut wrote = vec![];
                let half = writes.len() / 2;
                let mut stream = None;
                for (i, (key, values)) in writes.iter().enumerate() {
                    if i == half {
                        let opts = pb::StreamOpts {
                            domain: d.clone(),
                            r#type: "t".into(),
                            from_time: 1,
                            query_string: query.clone(),
                            kinds: kinds.iter().map(|k| pb::EventKind::from_str_name(k).unwrap() as i32).collect(),
                            ..Default::default()
                        };
                        stream = Some(ev.stream(opts).await.unwrap().into_inner());
                    }
                    let key = format!("k{key}");
                    let r = match values {
                        Some(v) => st.set(state(&d, "t", &key, Value::Object(v.clone()))).await,
                        None => st.del(state_ref(&d, "t", &key)).await,
                    };
                    // Deleting a record without a state is NOT_FOUND: no event.
                    if let Ok(e) = r {
                        wrote.push(e.into_inner());
                    }
                }
                let end = st.set(state(&d, "t", "end", json!({"sentinel": true}))).await.unwrap().into_inner();
                wrote.push(end.clone());
                let got = ids_until(stream.as_mut().unwrap(), &end.id).await;
                let want: Vec<String> = wrote.iter().filter(|e| reference.matches(&event_of(e))).map(|e| e.id.clone()).collect();
                prop_assert_eq!(got, want, "filter {} kinds {:?}", query, kinds);
                Ok(())
            })
        })
        .unwrap();
    rt.block_on(gw.stop());
}

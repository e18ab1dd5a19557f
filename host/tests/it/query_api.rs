//! The query language and the event search order over the wire: each
//! operator over gRPC and over REST returns the same states, a sorted event
//! search comes back in its order on both, and a query the language refuses
//! is `INVALID_ARGUMENT` (HTTP 400) naming the field and the operator.

use crate::harness::{TestGateway, http};
use crate::wire::*;
use serde_json::{Value, json};
use stategate::proto as pb;
use tonic::Code;

/// One filter per operator (and paths through arrays), with the keys it
/// selects from `seed`.
const CASES: &[(&str, &[&str])] = &[
    (r#"{"$or": [{"qty": 5}, {"flag": true}]}"#, &["a1", "d4"]),
    (r#"{"$and": [{"tags": "blue"}, {"qty": {"$gt": 10}}]}"#, &["b2"]),
    (r#"{"$nor": [{"tags": "red"}, {"qty": {"$type": "string"}}]}"#, &["b2"]),
    (r#"{"qty": {"$not": {"$gte": 5}}}"#, &["c3", "d4"]),
    (r#"{"name": {"$regex": "^a", "$options": "i"}}"#, &["a1"]),
    (r#"{"name": {"$regex": "TA$", "$options": "i"}}"#, &["b2", "d4"]),
    (r#"{"name": {"$not": {"$regex": "^[A-Z]"}}}"#, &["b2", "d4"]),
    (r#"{"lines": {"$elemMatch": {"sku": "x", "n": {"$gt": 5}}}}"#, &["b2"]),
    (r#"{"sizes": {"$elemMatch": {"$gt": 10, "$lt": 13}}}"#, &["a1"]),
    (r#"{"tags": {"$size": 2}}"#, &["a1"]),
    (r#"{"tags": {"$all": ["red", "blue"]}}"#, &["a1"]),
    (r#"{"qty": {"$type": ["string", "null"]}}"#, &["c3", "d4"]),
    (r#"{"qty": {"$mod": [4, 1]}}"#, &["a1"]),
    (r#"{"tags.0": "blue"}"#, &["b2"]),
    (r#"{"lines.n": 9}"#, &["a1"]),
    (r#"{"qty": {"$lt": "z"}}"#, &["c3"]),
    (r#"{"meta": {"$gt": {"v": 1}}}"#, &["b2"]),
];

/// Refused queries and a word the error must hold.
const REFUSED: &[(&str, &str)] = &[
    (r#"{"a": {"$where": "1"}}"#, "$where"),
    (r#"{"$text": {"$search": "x"}}"#, "$text"),
    (r#"{"a": {"$regex": "x", "$options": "g"}}"#, "'g'"),
    (r#"{"a": {"$regex": "(a)\\1"}}"#, "linear-time"),
    (r#"{"a": {"$size": "two"}}"#, "$size"),
];

fn seed() -> Vec<(&'static str, Value)> {
    vec![
        ("a1", json!({"name": "Alpha", "qty": 5, "tags": ["red", "blue"], "sizes": [3, 12], "lines": [{"sku": "x", "n": 2}, {"sku": "y", "n": 9}]})),
        ("b2", json!({"name": "beta", "qty": 12.5, "tags": ["blue"], "sizes": [7], "lines": [{"sku": "x", "n": 7}], "meta": {"v": 2}})),
        ("c3", json!({"name": "Gamma", "qty": "many", "tags": [], "lines": [], "meta": {"v": 1}})),
        ("d4", json!({"name": "delta", "qty": null, "tags": "red", "flag": true})),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_over_grpc_and_rest() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let d = unique("query");
    for (key, v) in seed() {
        st.set(state(&d, "item", key, v)).await.unwrap();
    }
    let (base, c) = (gw.url(), http());
    for (filter, want) in CASES {
        let found = st
            .search(pb::SearchStateOpts {
                domain: d.clone(),
                r#type: "item".into(),
                query_string: filter.to_string(),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .into_inner();
        let keys: Vec<&str> = found.state_values.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, *want, "gRPC {filter}");
        let r = c
            .get(format!("{base}/api/state/search"))
            .query(&[("domain", d.as_str()), ("type", "item"), ("limit", "100"), ("query_string", filter)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "REST {filter}");
        let body: Value = r.json().await.unwrap();
        let keys: Vec<&str> = body["stateValues"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap()).collect();
        assert_eq!(keys, *want, "REST {filter}");
    }
    for (filter, says) in REFUSED {
        let err = st
            .search(pb::SearchStateOpts { domain: d.clone(), r#type: "item".into(), query_string: filter.to_string(), limit: 1, ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{filter}");
        assert!(err.message().contains("query_string") && err.message().contains(says), "{filter}: {}", err.message());
        let r = c
            .get(format!("{base}/api/events/search"))
            .query(&[("domain", d.as_str()), ("type", "item"), ("limit", "1"), ("query_string", filter)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "REST {filter}");
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(says), "REST {filter}: {body}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_search_sorts_over_grpc_and_rest() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("sorted");
    for (key, n) in [("a", 3), ("b", 1), ("c", 2)] {
        st.set(state(&d, "t", key, json!({"n": n}))).await.unwrap();
    }
    let (base, c) = (gw.url(), http());
    for (field, reverse, want) in [
        ("time", false, ["a", "b", "c"]),
        ("time", true, ["c", "b", "a"]),
        ("values.n", false, ["b", "c", "a"]),
        ("values.n", true, ["a", "c", "b"]),
    ] {
        let sort = Some(pb::Sort { field: field.into(), reverse });
        let events = ev
            .search(pb::SearchEventOpts { domain: d.clone(), r#type: "t".into(), limit: 10, sort, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .events;
        let keys: Vec<&str> = events.iter().map(|e| e.state.as_ref().unwrap().key.as_str()).collect();
        assert_eq!(keys, want, "gRPC {field} {reverse}");
        let r = c
            .get(format!("{base}/api/events/search"))
            .query(&[("domain", d.as_str()), ("type", "t"), ("limit", "10"), ("sort.field", field), ("sort.reverse", &reverse.to_string())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "REST {field} {reverse}");
        let body: Value = r.json().await.unwrap();
        let keys: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["state"]["key"].as_str().unwrap()).collect();
        assert_eq!(keys, want, "REST {field} {reverse}");
    }
    // Newest first, one page at a time.
    let page = ev
        .search(pb::SearchEventOpts {
            domain: d.clone(),
            r#type: "t".into(),
            limit: 1,
            offset: 1,
            sort: Some(pb::Sort { field: "".into(), reverse: true }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(page[0].state.as_ref().unwrap().key, "b");
    let err = ev
        .search(pb::SearchEventOpts { domain: d.clone(), r#type: "t".into(), limit: 1, sort: Some(pb::Sort { field: "n".into(), reverse: false }), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("sort.field"), "{}", err.message());
    let r = c.get(format!("{base}/api/events/search?domain={d}&type=t&limit=1&sort.field=n")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    gw.stop().await;
}

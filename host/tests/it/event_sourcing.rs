//! Event-sourcing guarantees beyond v0.5.0: versions, optimistic
//! concurrency, idempotent writes, Edit, Revert, EventService.Get, sorting.

use crate::harness::{TestGateway, http};
use crate::wire::*;
use serde_json::{Value, json};
use stategate::proto as pb;
use tonic::Code;

#[tokio::test]
async fn versions_and_optimistic_concurrency_over_grpc() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let d = unique("occ");
    let with = |expected: Option<i64>, v: Value| pb::State { expected_version: expected, ..state(&d, "t", "k", v) };

    assert_eq!(st.set(with(Some(0), json!({"n": 1}))).await.unwrap().into_inner().version, 1);
    let err = st.set(with(Some(0), json!({"n": 2}))).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("current version 1"), "{}", err.message());
    let err = st.set(with(Some(5), json!({"n": 2}))).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(st.set(with(Some(1), json!({"n": 2}))).await.unwrap().into_inner().version, 2);
    // No expectation: last write wins, as in v0.5.0.
    assert_eq!(st.set(with(None, json!({"n": 3}))).await.unwrap().into_inner().version, 3);
    let got = st.get(state_ref(&d, "t", "k")).await.unwrap().into_inner();
    assert_eq!((got.version, from_struct(got.values.as_ref().unwrap())["n"].clone()), (3, json!(3.0)));

    let err = st.del(pb::StateRef { expected_version: Some(2), ..state_ref(&d, "t", "k") }).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let del = st.del(pb::StateRef { expected_version: Some(3), ..state_ref(&d, "t", "k") }).await.unwrap().into_inner();
    assert_eq!(del.version, 4);

    let found = st.search(pb::SearchStateOpts { domain: d.clone(), r#type: "t".into(), limit: 5, ..Default::default() }).await.unwrap().into_inner();
    assert!(found.state_values.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_writers_with_one_expectation_one_wins() {
    let gw = TestGateway::start().await;
    let d = unique("race");
    let mut st = gw.state_client().await;
    st.set(state(&d, "t", "k", json!({"w": -1}))).await.unwrap();
    let mut tasks = vec![];
    for w in 0..12 {
        let mut c = gw.state_client().await;
        let s = pb::State { expected_version: Some(1), ..state(&d, "t", "k", json!({"w": w})) };
        tasks.push(tokio::spawn(async move { c.set(s).await.map(|r| r.into_inner()) }));
    }
    let results: Vec<_> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.code() == Code::Aborted));
    let mut ev = gw.event_client().await;
    let events = ev.search(pb::SearchEventOpts { domain: d, r#type: "t".into(), limit: 100, ..Default::default() }).await.unwrap().into_inner().events;
    assert_eq!(events.len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn idempotent_retries_over_grpc_and_rest() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("idem");

    let s = pb::State { idempotency_key: "req-1".into(), ..state(&d, "t", "k", json!({"n": 1})) };
    let first = st.set(s.clone()).await.unwrap().into_inner();
    let retry = st.set(s).await.unwrap().into_inner();
    assert_eq!(first.id, retry.id, "a retry returns the first result");
    let other = st.set(pb::State { idempotency_key: "req-1".into(), ..state(&d, "t", "k", json!({"n": 2})) }).await.unwrap_err();
    assert_eq!(other.code(), Code::InvalidArgument);
    assert!(other.message().contains("idempotency_key"));

    // The key may also come as metadata.
    let mut request = tonic::Request::new(state(&d, "t", "k2", json!({"n": 1})));
    request.metadata_mut().insert("idempotency-key", "req-2".parse().unwrap());
    let a = st.set(request).await.unwrap().into_inner();
    let mut request = tonic::Request::new(state(&d, "t", "k2", json!({"n": 1})));
    request.metadata_mut().insert("idempotency-key", "req-2".parse().unwrap());
    let b = st.set(request).await.unwrap().into_inner();
    assert_eq!(a.id, b.id);

    // And as a REST header.
    let url = format!("{}/api/state/ref/{d}/t/k3", gw.url());
    let send = || http().post(&url).header("idempotency-key", "req-3").json(&json!({"values": {"n": 1}})).send();
    let x: Value = send().await.unwrap().json().await.unwrap();
    let y: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(x["id"], y["id"]);

    let events = ev.search(pb::SearchEventOpts { domain: d, r#type: "t".into(), limit: 100, ..Default::default() }).await.unwrap().into_inner().events;
    assert_eq!(events.len(), 3, "one event per idempotency key");
    gw.stop().await;
}

#[tokio::test]
async fn idempotency_window_is_configurable() {
    let gw = TestGateway::start_with(|c| c.idempotency_window_secs = 0).await;
    let mut st = gw.state_client().await;
    let d = unique("window");
    let s = pb::State { idempotency_key: "k".into(), ..state(&d, "t", "k", json!({})) };
    let a = st.set(s.clone()).await.unwrap().into_inner();
    let b = st.set(s).await.unwrap().into_inner();
    assert_ne!(a.id, b.id, "outside the window the key no longer deduplicates");
    gw.stop().await;
}

#[tokio::test]
async fn edit_revert_and_event_get() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("edit");
    let edit = |patch: Value, expected: Option<i64>| pb::EditRequest {
        domain: d.clone(),
        r#type: "t".into(),
        key: "k".into(),
        patch: Some(to_struct(patch)),
        expected_version: expected,
        idempotency_key: String::new(),
    };
    assert_eq!(st.edit(edit(json!({"a": 1}), None)).await.unwrap_err().code(), Code::NotFound);
    let v1 = st.set(state(&d, "t", "k", json!({"a": 1, "b": {"c": 2, "d": 3}}))).await.unwrap().into_inner();
    let v2 = st.edit(edit(json!({"b": {"c": null, "e": 4}, "f": "new"}), Some(1))).await.unwrap().into_inner();
    assert_eq!((v2.version, v2.kind, v2.method.as_str()), (2, pb::EventKind::Edit as i32, "/stategate.StateService/Edit"));
    let got = st.get(state_ref(&d, "t", "k")).await.unwrap().into_inner();
    assert_eq!(from_struct(got.values.as_ref().unwrap()), json!({"a": 1.0, "b": {"d": 3.0, "e": 4.0}, "f": "new"}));
    assert_eq!(st.edit(edit(json!({"x": 1}), Some(1))).await.unwrap_err().code(), Code::Aborted);

    let revert = |event_id: &str| pb::RevertRequest {
        domain: d.clone(),
        r#type: "t".into(),
        key: "k".into(),
        event_id: event_id.into(),
        expected_version: None,
        idempotency_key: String::new(),
    };
    let v3 = st.revert(revert(&v1.id)).await.unwrap().into_inner();
    assert_eq!((v3.version, v3.kind), (3, pb::EventKind::Revert as i32));
    let got = st.get(state_ref(&d, "t", "k")).await.unwrap().into_inner();
    assert_eq!(from_struct(got.values.as_ref().unwrap()), json!({"a": 1.0, "b": {"c": 2.0, "d": 3.0}}));
    assert_eq!(st.revert(revert("missing")).await.unwrap_err().code(), Code::NotFound);
    let elsewhere = st.set(state(&d, "t", "other", json!({}))).await.unwrap().into_inner();
    // Another record's event is an unknown id here (issue 17 point 5).
    assert_eq!(st.revert(revert(&elsewhere.id)).await.unwrap_err().code(), Code::NotFound);

    let fetched = ev.get(pb::EventRef { id: v2.id.clone() }).await.unwrap().into_inner();
    assert_eq!(fetched.version, 2);
    assert_eq!(fetched.kind, pb::EventKind::Edit as i32);

    // Over REST: PATCH with the merge patch as the body, revert by POST.
    let base = format!("{}/api/state/ref/{d}/t/k", gw.url());
    let r = http().patch(format!("{base}?expected_version=3")).json(&json!({"a": 9})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http().patch(format!("{base}?expectedVersion=3")).json(&json!({"a": 10})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let r: Value = http().post(format!("{base}/revert")).json(&json!({"eventId": v2.id})).send().await.unwrap().json().await.unwrap();
    assert_eq!((r["kind"].clone(), r["version"].clone()), (json!("REVERT"), json!("5")));
    let got: Value = http().get(&base).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["values"], json!({"a": 1, "b": {"d": 3, "e": 4}, "f": "new"}));
    gw.stop().await;
}

#[tokio::test]
async fn search_sorts_by_a_field() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let d = unique("sort");
    for (k, age) in [("a", 30), ("b", 20), ("c", 40)] {
        st.set(state(&d, "t", k, json!({"p": {"age": age}}))).await.unwrap();
    }
    let keys = |desc: bool| {
        let mut st = st.clone();
        let d = d.clone();
        async move {
            st.search(pb::SearchStateOpts { domain: d, r#type: "t".into(), limit: 10, sort_by: "p.age".into(), sort_descending: desc, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .state_values
                .into_iter()
                .map(|s| s.key)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(keys(false).await, ["b", "a", "c"]);
    assert_eq!(keys(true).await, ["c", "a", "b"]);
    let r: Value = http()
        .get(format!("{}/api/state/search?domain={d}&type=t&limit=10&sortBy=p.age&sortDescending=true", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<_> = r["stateValues"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["c", "a", "b"]);
    gw.stop().await;
}

//! The storage conformance suite: every `Storage` provider, native or wasm,
//! must pass each of these checks against its real backend.
//!
//! `storage_conformance!(name, factory)` expands to a test module with one
//! test per check; `factory` is an async expression yielding
//! `Option<DynStorage>` (`None` = backend not configured: skipped, or failed
//! under `STATEGATE_TEST_REQUIRE_BACKENDS=1`). Each check works in a domain
//! of its own, so checks can share one backend and run in parallel.

use serde_json::{Value, json};
use stategate::model::*;
use stategate::storage::DynStorage;

// The query language's checks live in their own file.
pub use crate::query_conformance::{query_operators, sorted_event_search};
// So are the reads at a store position (snapshots and point-in-time reads).
pub use crate::read_at_conformance::{
    event_versions_between, point_in_time_reads, reads_now_are_snapshots, reads_now_name_their_seq, seq_at_time,
};


pub fn unique_domain() -> String {
    format!("conf-{}", uuid::Uuid::new_v4().simple())
}

pub fn values(v: Value) -> Values {
    v.as_object().expect("test values are objects").clone()
}

pub fn req(record: &RecordRef, change: Change, expect: Expect) -> AppendRequest {
    AppendRequest {
        id: uuid::Uuid::new_v4().to_string(),
        record: record.clone(),
        kind: if change == Change::Delete { EventKind::Del } else { EventKind::Set },
        change,
        expect,
        method: "/stategate.StateService/Set".into(),
        claims: values(json!({"sub": "tester", "tenant": "acme"})),
        time: stategate::model::now_nanos(),
        idempotency: None,
    }
}

pub fn put(record: &RecordRef, v: Value) -> AppendRequest {
    req(record, Change::Put(values(v).into()), Expect::Any)
}

fn rec(domain: &str, ty: &str, key: &str) -> RecordRef {
    RecordRef::parse(domain, ty, key).unwrap()
}

pub async fn append_then_get(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "user", "alice");
    let v = json!({"name": "Alice", "n": 3, "f": 1.5, "nested": {"list": [1, "two", null, {"x": true}]}, "u": "héllo ✓"});
    let a = s.append(put(&r, v.clone())).await.unwrap();
    assert!(!a.replayed);
    assert_eq!(a.event.version, 1);
    assert_eq!(a.event.record, r);
    assert!(a.event.seq > 0);
    let got = s.get(&r).await.unwrap().expect("state was written");
    assert_eq!(Value::Object(got.values), v);
    assert_eq!(got.version, 1);
    let ev = s.get_event(&a.event.id).await.unwrap().expect("event was written");
    assert_eq!(ev, a.event);
    assert!(s.get(&rec(&d, "user", "bob")).await.unwrap().is_none());
    assert!(s.get_event(&uuid::Uuid::new_v4().to_string()).await.unwrap().is_none());
    assert!(s.head().await.unwrap() >= a.event.seq);
    s.ping().await.unwrap();
}

/// Many gets at once (providers may gather them into shared statements):
/// each answers for its own record, whether it exists, was deleted, is asked
/// for several times at once, or shares its key with a record of another
/// type or domain.
pub async fn concurrent_gets(s: DynStorage) {
    let d = unique_domain();
    let other = unique_domain();
    for i in 0..40 {
        s.append(put(&rec(&d, "t", &format!("k{i}")), json!({"i": i, "t": "t"}))).await.unwrap();
        s.append(put(&rec(&d, "u", &format!("k{i}")), json!({"i": i, "t": "u"}))).await.unwrap();
    }
    s.append(put(&rec(&other, "t", "k0"), json!({"i": -1}))).await.unwrap();
    s.append(req(&rec(&d, "t", "k7"), Change::Delete, Expect::Any)).await.unwrap();
    let mut asks = vec![];
    for round in 0..5 {
        for i in 0..50 {
            // Keys 40..49 do not exist; "u" records share the "t" keys.
            let ty = if (i + round) % 3 == 0 { "u" } else { "t" };
            asks.push(rec(&d, ty, &format!("k{i}")));
        }
        asks.push(rec(&other, "t", "k0"));
        asks.push(rec(&other, "t", "k1"));
    }
    let answers = futures::future::join_all(asks.iter().map(|r| {
        let s = s.clone();
        async move { s.get(r).await }
    }))
    .await;
    for (r, got) in asks.iter().zip(answers) {
        let got = got.unwrap_or_else(|e| panic!("get {r:?}: {e}"));
        let i: i64 = r.key[1..].parse().unwrap();
        let expected = if r.domain == other {
            (i == 0).then(|| json!({"i": -1}))
        } else if i >= 40 || (r.ty == "t" && i == 7) {
            None
        } else {
            Some(json!({"i": i, "t": r.ty}))
        };
        assert_eq!(got.as_ref().map(|st| Value::Object(st.values.clone())), expected, "{r:?}");
        if let Some(st) = got {
            assert_eq!((&st.record, st.version), (r, 1), "{r:?}");
        }
    }
}

pub async fn versions_survive_deletion(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "t", "k");
    let mut seqs = vec![];
    for (i, change) in [
        Change::Put(values(json!({"a": 1})).into()),
        Change::Put(values(json!({"a": 2})).into()),
        Change::Delete,
        Change::Put(values(json!({"a": 3})).into()),
    ]
    .into_iter()
    .enumerate()
    {
        let a = s.append(req(&r, change, Expect::Any)).await.unwrap();
        assert_eq!(a.event.version, i as u64 + 1);
        seqs.push(a.event.seq);
        if i == 2 {
            assert!(a.event.values.is_none());
            assert!(s.get(&r).await.unwrap().is_none(), "deleted state is gone");
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs increase: {seqs:?}");
    assert_eq!(s.get(&r).await.unwrap().unwrap().version, 4);
    // Deleting what has no state writes nothing.
    let r2 = rec(&d, "t", "never");
    let head = s.head().await.unwrap();
    assert!(matches!(s.append(req(&r2, Change::Delete, Expect::Any)).await, Err(Error::NotFound(_))));
    let history = s.feed(&FeedQuery { topic: topic(&d), key: None, after_seq: head, from_time: None, limit: 100 }).await.unwrap();
    assert!(history.is_empty(), "a refused delete appends nothing");
}

fn topic(d: &str) -> Topic {
    Topic { domain: Some(d.to_owned()), ty: None }
}

pub async fn expected_versions(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "t", "k");
    let conflict = |res: Result<Appended>| assert!(matches!(res, Err(Error::VersionConflict { .. })), "{res:?}");
    conflict(s.append(req(&r, Change::Put(values(json!({})).into()), Expect::Version(1))).await);
    s.append(req(&r, Change::Put(values(json!({"v": 1})).into()), Expect::Absent)).await.unwrap();
    conflict(s.append(req(&r, Change::Put(values(json!({"v": 9})).into()), Expect::Absent)).await);
    conflict(s.append(req(&r, Change::Put(values(json!({"v": 9})).into()), Expect::Version(2))).await);
    conflict(s.append(req(&r, Change::Delete, Expect::Version(7))).await);
    let got = s.get(&r).await.unwrap().unwrap();
    assert_eq!((got.version, got.values["v"].clone()), (1, json!(1)), "failed writes wrote nothing");
    let a = s.append(req(&r, Change::Put(values(json!({"v": 2})).into()), Expect::Version(1))).await.unwrap();
    assert_eq!(a.event.version, 2);
    s.append(req(&r, Change::Delete, Expect::Version(2))).await.unwrap();
    // After a delete the record has no state: "absent" holds again.
    let a = s.append(req(&r, Change::Put(values(json!({"v": 4})).into()), Expect::Absent)).await.unwrap();
    assert_eq!(a.event.version, 4);
    let events = s.feed(&FeedQuery { topic: topic(&d), key: None, after_seq: 0, from_time: None, limit: 100 }).await.unwrap();
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
}

pub async fn concurrent_writers_one_winner(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "t", "contended");
    s.append(put(&r, json!({"n": 0}))).await.unwrap();
    let writers = (0..16).map(|i| {
        let s = s.clone();
        let r = r.clone();
        tokio::spawn(async move { s.append(req(&r, Change::Put(values(json!({"n": i})).into()), Expect::Version(1))).await })
    });
    let results = futures::future::join_all(writers).await;
    let wins = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(Error::VersionConflict { .. }))))
        .count();
    assert_eq!((wins, conflicts), (1, 15), "exactly one writer wins: {results:?}");
    let events = s.feed(&FeedQuery { topic: topic(&d), key: None, after_seq: 0, from_time: None, limit: 100 }).await.unwrap();
    assert_eq!(events.len(), 2, "one event for the first write, one for the winner");
    assert_eq!(s.get(&r).await.unwrap().unwrap().version, 2);
}

pub async fn idempotent_appends(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "t", "k");
    let key = format!("idem-{}", uuid::Uuid::new_v4());
    let with = |fp: &str, not_before: i64| {
        let mut q = put(&r, json!({"x": 1}));
        q.idempotency = Some(Idempotency { key: key.clone(), fingerprint: fp.into(), not_before });
        q
    };
    let first = s.append(with("fp1", 0)).await.unwrap();
    assert!(!first.replayed);
    let again = s.append(with("fp1", 0)).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.event.id, first.event.id);
    assert_eq!(again.event.version, 1);
    assert!(matches!(
        s.append(with("fp2", 0)).await,
        Err(Error::InvalidArgument { ref field, .. }) if field == "idempotency_key"
    ));
    // Outside the window the key no longer protects: a new write happens.
    let later = s.append(with("fp2", i64::MAX)).await.unwrap();
    assert!(!later.replayed);
    assert_eq!(later.event.version, 2);
    let events = s.feed(&FeedQuery { topic: topic(&d), key: None, after_seq: 0, from_time: None, limit: 100 }).await.unwrap();
    assert_eq!(events.len(), 2);
}

async fn seed_people(s: &DynStorage, d: &str) {
    for (key, v) in [
        ("ann", json!({"age": 31, "city": "Paris", "tags": ["a", "b"], "address": {"zip": "75001"}})),
        ("bob", json!({"age": 25, "city": "Lyon", "tags": ["b"], "address": {"zip": "69001"}})),
        ("cid", json!({"age": 40, "city": "Paris", "tags": [], "address": {"zip": "75002"}})),
        ("dan", json!({"age": 19.5, "city": "Nice"})),
        ("eve", json!({"city": "Paris"})),
    ] {
        s.append(put(&rec(d, "person", key), v)).await.unwrap();
    }
    s.append(put(&rec(d, "other", "ann"), json!({"city": "Paris"}))).await.unwrap();
    s.append(put(&rec(d, "person", "gone"), json!({"city": "Paris"}))).await.unwrap();
    s.append(req(&rec(d, "person", "gone"), Change::Delete, Expect::Any)).await.unwrap();
}

fn keys(states: &[State]) -> Vec<&str> {
    states.iter().map(|s| s.record.key.as_str()).collect()
}

pub async fn search_states(s: DynStorage) {
    let d = unique_domain();
    seed_people(&s, &d).await;
    let q = |filter: &str, sort: Option<(&str, bool)>, limit: usize, offset: usize| StateQuery {
        domain: d.clone(),
        ty: "person".into(),
        filter: Filter::parse("query_string", filter).unwrap(),
        sort: sort.and_then(|(p, desc)| Sort::parse("sort_by", p, desc).unwrap()),
        limit,
        offset,
    };
    let run = |q: StateQuery| {
        let s = s.clone();
        async move { s.search_states(&q).await.unwrap() }
    };
    assert_eq!(keys(&run(q("", None, 100, 0)).await), ["ann", "bob", "cid", "dan", "eve"]);
    assert_eq!(keys(&run(q(r#"{"city": "Paris"}"#, None, 100, 0)).await), ["ann", "cid", "eve"]);
    assert_eq!(keys(&run(q(r#"{"city": "Paris"}"#, None, 1, 1)).await), ["cid"]);
    assert_eq!(keys(&run(q(r#"{"address.zip": "69001"}"#, None, 100, 0)).await), ["bob"]);
    assert_eq!(keys(&run(q(r#"{"tags": "b"}"#, None, 100, 0)).await), ["ann", "bob"]);
    assert_eq!(keys(&run(q(r#"{"age": 31}"#, None, 100, 0)).await), ["ann"]);
    assert_eq!(keys(&run(q(r#"{"age": {"$gte": 25, "$lt": 40}}"#, None, 100, 0)).await), ["ann", "bob"]);
    assert_eq!(keys(&run(q(r#"{"age": {"$exists": false}}"#, None, 100, 0)).await), ["eve"]);
    assert_eq!(keys(&run(q(r#"{"city": {"$in": ["Nice", "Lyon"]}}"#, None, 100, 0)).await), ["bob", "dan"]);
    assert_eq!(keys(&run(q("", Some(("age", false)), 100, 0)).await), ["eve", "dan", "bob", "ann", "cid"]);
    assert_eq!(keys(&run(q("", Some(("age", true)), 2, 0)).await), ["cid", "ann"]);
    assert_eq!(keys(&run(q(r#"{"city": "Paris"}"#, Some(("address.zip", true)), 100, 1)).await), ["ann", "eve"]);
    assert!(run(q(r#"{"city": "Rome"}"#, None, 100, 0)).await.is_empty());
    let ann = &run(q(r#"{"city": "Paris"}"#, None, 1, 0)).await[0];
    assert_eq!(ann.version, 1);
    assert_eq!(ann.values["address"]["zip"], json!("75001"));
}

pub async fn search_events(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "person", "ann");
    let t0 = stategate::model::now_nanos();
    let mut times = vec![];
    for i in 0..5 {
        let mut q = put(&r, json!({"i": i, "even": i % 2 == 0}));
        q.time = t0 + i * 1000;
        times.push(q.time);
        s.append(q).await.unwrap();
    }
    let mut other = put(&rec(&d, "person", "bob"), json!({"i": 9}));
    other.claims = values(json!({"sub": "someone-else"}));
    s.append(other).await.unwrap();
    s.append(req(&r, Change::Delete, Expect::Any)).await.unwrap();
    let q = |key: Option<&str>, filter: &str, claims: &str, min: Option<i64>, max: Option<i64>, limit: usize, offset: usize| EventQuery {
        domain: d.clone(),
        ty: "person".into(),
        key: key.map(str::to_owned),
        filter: Filter::parse("query_string", filter).unwrap(),
        claims_filter: Filter::parse("claims_query", claims).unwrap(),
        min_time: min,
        max_time: max, min_version: None, max_version: None,
        limit,
        offset, sort: None,
    };
    let run = |q: EventQuery| {
        let s = s.clone();
        async move { s.search_events(&q).await.unwrap() }
    };
    let all = run(q(None, "", "", None, None, 100, 0)).await;
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    let ann = run(q(Some("ann"), "", "", None, None, 100, 0)).await;
    assert_eq!(ann.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(ann.last().unwrap().kind, EventKind::Del);
    let ranged = run(q(Some("ann"), "", "", Some(times[1]), Some(times[3]), 100, 0)).await;
    assert_eq!(ranged.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3, 4], "min and max are inclusive");
    let even = run(q(None, r#"{"even": true}"#, "", None, None, 100, 0)).await;
    assert_eq!(even.iter().map(|e| e.values.as_ref().unwrap()["i"].clone()).collect::<Vec<_>>(), [json!(0), json!(2), json!(4)]);
    let paged = run(q(None, r#"{"even": true}"#, "", None, None, 1, 1)).await;
    assert_eq!(paged[0].values.as_ref().unwrap()["i"], json!(2));
    let by_claims = run(q(None, "", r#"{"sub": "someone-else"}"#, None, None, 100, 0)).await;
    assert_eq!(by_claims.len(), 1);
    assert_eq!(by_claims[0].record.key, "bob");
    assert_eq!(by_claims[0].claims["sub"], json!("someone-else"));
}

/// A deletion event has no values; for matching they are the empty object,
/// as a MongoDB document without the field: `$ne`, `$nin`, `$exists: false`
/// and equality with null match it, equality with a value does not.
pub async fn deletions_under_filters(s: DynStorage) {
    let d = unique_domain();
    let (gone, kept, other) = (rec(&d, "t", "gone"), rec(&d, "t", "kept"), rec(&d, "t", "other"));
    s.append(put(&gone, json!({"x": 1}))).await.unwrap();
    let mut del = req(&gone, Change::Delete, Expect::Any);
    del.claims = values(json!({"sub": "remover"}));
    s.append(del).await.unwrap();
    s.append(put(&kept, json!({"x": 2}))).await.unwrap();
    s.append(put(&other, json!({"y": 1}))).await.unwrap();
    let search = |filter: &str, claims: &str, limit: usize, offset: usize| {
        let s = s.clone();
        let q = EventQuery {
            domain: d.clone(),
            ty: "t".into(),
            key: None,
            filter: Filter::parse("query_string", filter).unwrap(),
            claims_filter: Filter::parse("claims_query", claims).unwrap(),
            min_time: None,
            max_time: None, min_version: None, max_version: None,
            limit,
            offset, sort: None,
        };
        async move {
            let found = s.search_events(&q).await.unwrap();
            found.iter().map(|e| format!("{}:{}", e.record.key, e.kind.as_str())).collect::<Vec<_>>()
        }
    };
    let all = ["gone:SET", "gone:DEL", "kept:SET", "other:SET"];
    assert_eq!(search("", "", 100, 0).await, all);
    assert_eq!(search(r#"{"x": {"$ne": 1}}"#, "", 100, 0).await, ["gone:DEL", "kept:SET", "other:SET"]);
    assert_eq!(search(r#"{"x": {"$nin": [1]}}"#, "", 100, 0).await, ["gone:DEL", "kept:SET", "other:SET"]);
    assert_eq!(search(r#"{"x": {"$exists": false}}"#, "", 100, 0).await, ["gone:DEL", "other:SET"]);
    assert_eq!(search(r#"{"x": null}"#, "", 100, 0).await, ["gone:DEL", "other:SET"]);
    assert_eq!(search(r#"{"x": 1}"#, "", 100, 0).await, ["gone:SET"], "a value never matches a deletion");
    assert_eq!(search(r#"{"x": {"$exists": true}}"#, "", 100, 0).await, ["gone:SET", "kept:SET"]);
    assert_eq!(search(r#"{"x": {"$in": [1, 2]}}"#, "", 100, 0).await, ["gone:SET", "kept:SET"]);
    // Pages count deletions like any other event.
    assert_eq!(search(r#"{"x": {"$ne": 1}}"#, "", 1, 0).await, ["gone:DEL"]);
    assert_eq!(search(r#"{"x": {"$ne": 1}}"#, "", 1, 1).await, ["kept:SET"]);
    // The claims filter applies to deletions too, alone or with a values filter.
    assert_eq!(search("", r#"{"sub": "remover"}"#, 100, 0).await, ["gone:DEL"]);
    assert_eq!(search(r#"{"x": {"$exists": false}}"#, r#"{"sub": "remover"}"#, 100, 0).await, ["gone:DEL"]);
    assert_eq!(search(r#"{"x": {"$exists": false}}"#, r#"{"sub": {"$ne": "remover"}}"#, 100, 0).await, ["other:SET"]);
    assert!(search(r#"{"x": 1}"#, r#"{"sub": "remover"}"#, 100, 0).await.is_empty());
    // A deleted record has no state, whatever the filter.
    let states = s
        .search_states(&StateQuery {
            domain: d.clone(),
            ty: "t".into(),
            filter: Filter::parse("query_string", r#"{"x": {"$ne": 1}}"#).unwrap(),
            sort: None,
            limit: 100,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(keys(&states), ["kept", "other"]);
}

pub async fn feed_and_head(s: DynStorage) {
    let d = unique_domain();
    let start = s.head().await.unwrap();
    let mut appended = vec![];
    for (ty, key) in [("a", "1"), ("b", "1"), ("a", "2"), ("a", "1"), ("c", "9")] {
        appended.push(s.append(put(&rec(&d, ty, key), json!({"k": key}))).await.unwrap().event);
    }
    let head = s.head().await.unwrap();
    assert!(head >= appended.last().unwrap().seq && start < appended[0].seq);
    let feed = |topic: Topic, key: Option<&str>, after: u64, from_time: Option<i64>, limit: usize| {
        let s = s.clone();
        let q = FeedQuery { topic, key: key.map(str::to_owned), after_seq: after, from_time, limit };
        async move { s.feed(&q).await.unwrap() }
    };
    let all = feed(topic(&d), None, start, None, 100).await;
    assert_eq!(all, appended, "the feed returns exactly what was appended, in order");
    let a = feed(Topic { domain: Some(d.clone()), ty: Some("a".into()) }, None, start, None, 100).await;
    assert_eq!(a.len(), 3);
    let a1 = feed(Topic { domain: Some(d.clone()), ty: Some("a".into()) }, Some("1"), start, None, 100).await;
    assert_eq!(a1.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    let after = feed(topic(&d), None, appended[2].seq, None, 100).await;
    assert_eq!(after, appended[3..].to_vec());
    let limited = feed(topic(&d), None, start, None, 2).await;
    assert_eq!(limited, appended[..2].to_vec());
    let from = feed(topic(&d), None, 0, Some(appended[3].time), 100).await;
    assert!(from.iter().all(|e| e.time >= appended[3].time) && from.contains(&appended[4]));
    // A wildcard topic sees this domain's events among everyone else's.
    let everything = feed(Topic::ALL, None, start, None, 100_000).await;
    let mine: Vec<_> = everything.into_iter().filter(|e| e.record.domain == d).collect();
    assert_eq!(mine, appended);
}

pub async fn many_concurrent_appends_keep_order(s: DynStorage) {
    let d = unique_domain();
    let writers = (0..8).map(|w| {
        let s = s.clone();
        let d = d.clone();
        tokio::spawn(async move {
            let mut out = vec![];
            for i in 0..25 {
                out.push(s.append(put(&rec(&d, "t", &format!("w{w}")), json!({"i": i}))).await.unwrap().event);
            }
            out
        })
    });
    let per_writer: Vec<Vec<Event>> = futures::future::join_all(writers).await.into_iter().map(Result::unwrap).collect();
    for events in &per_writer {
        assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=25).collect::<Vec<u64>>());
    }
    let feed = s.feed(&FeedQuery { topic: topic(&d), key: None, after_seq: 0, from_time: None, limit: 1000 }).await.unwrap();
    assert_eq!(feed.len(), 200);
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    // Per record, store order is version order.
    for w in 0..8 {
        let versions: Vec<u64> = feed.iter().filter(|e| e.record.key == format!("w{w}")).map(|e| e.version).collect();
        assert_eq!(versions, (1..=25).collect::<Vec<u64>>());
    }
}

/// The catalog: one entry per type with events, records counting only live
/// states, in (domain, type) order; the provider's answer is the one its
/// feed implies (`storage::catalog_from_feed`, the default).
pub async fn catalog(s: DynStorage) {
    let d = unique_domain();
    let mut times = std::collections::HashMap::<&str, i64>::new();
    for (ty, key, change) in [("b", "1", true), ("a", "1", true), ("a", "2", true), ("a", "1", false), ("b", "1", true)] {
        let r = rec(&d, ty, key);
        let request = if change { put(&r, json!({"k": key})) } else { req(&r, Change::Delete, Expect::Any) };
        let e = s.append(request).await.unwrap().event;
        let t = times.entry(ty).or_insert(e.time);
        *t = (*t).max(e.time);
    }
    let got = s.catalog(Some(&d)).await.unwrap();
    let summary: Vec<_> = got.iter().map(|e| (e.domain.as_str(), e.ty.as_str(), e.records, e.events, e.last_event_time)).collect();
    assert_eq!(summary, [(d.as_str(), "a", 1, 3, times["a"]), (d.as_str(), "b", 1, 2, times["b"])]);
    assert_eq!(got, stategate::storage::catalog_from_feed(&*s, Some(&d)).await.unwrap());
    // Every domain: this one's entries among the others', in order.
    let all = s.catalog(None).await.unwrap();
    assert!(all.windows(2).all(|w| (&w[0].domain, &w[0].ty) < (&w[1].domain, &w[1].ty)), "sorted, no duplicates");
    let mine: Vec<_> = all.into_iter().filter(|e| e.domain == d).collect();
    assert_eq!(mine, got);
    assert!(s.catalog(Some(&unique_domain())).await.unwrap().is_empty());
}

/// Expands to one test per check for a provider.
#[macro_export]
macro_rules! storage_conformance {
    ($name:ident, $factory:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::storage_conformance as suite;

            async fn storage() -> Option<stategate::storage::DynStorage> {
                $factory.await
            }

            macro_rules! check {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        if let Some(s) = storage().await {
                            suite::$check(s).await;
                        }
                    }
                };
            }

            check!(append_then_get);
            check!(concurrent_gets);
            check!(versions_survive_deletion);
            check!(expected_versions);
            check!(concurrent_writers_one_winner);
            check!(idempotent_appends);
            check!(search_states);
            check!(search_events);
            check!(deletions_under_filters);
            check!(query_operators);
            check!(sorted_event_search);
            check!(feed_and_head);
            check!(many_concurrent_appends_keep_order);
            check!(catalog);
            check!(reads_now_name_their_seq);
            check!(point_in_time_reads);
            check!(seq_at_time);
            check!(reads_now_are_snapshots);
            check!(event_versions_between);
            check!(group_documents_compare_and_set);
        }
    };
}

/// Consumer-group documents: a store succeeds only at the version read
/// (0: none yet), exactly one of concurrent writers at one version wins,
/// and the documents stay out of every feed, search and the catalog.
pub async fn group_documents_compare_and_set(s: DynStorage) {
    let name = format!("[\"{}\",\"job\",\"g\"]", unique_domain());
    let head = s.head().await.unwrap();
    assert_eq!(s.group_load(&name).await.unwrap(), None);
    assert_eq!(s.group_store(&name, 0, b"{\"a\":1}").await.unwrap(), 1);
    let conflict = s.group_store(&name, 0, b"{}").await.unwrap_err();
    assert!(matches!(conflict, Error::VersionConflict { .. }), "{conflict:?}");
    assert_eq!(s.group_store(&name, 1, b"{\"a\":2}").await.unwrap(), 2);
    assert!(matches!(s.group_store(&name, 1, b"{}").await.unwrap_err(), Error::VersionConflict { .. }));
    assert!(matches!(s.group_store(&name, 7, b"{}").await.unwrap_err(), Error::VersionConflict { .. }));
    let doc = s.group_load(&name).await.unwrap().unwrap();
    assert_eq!((doc.version, doc.bytes.as_slice()), (2, &b"{\"a\":2}"[..]));

    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (s, name) = (s.clone(), name.clone());
            tokio::spawn(async move { s.group_store(&name, 2, format!("{{\"w\":{i}}}").as_bytes()).await })
        })
        .collect();
    let mut won = vec![];
    for (i, w) in writers.into_iter().enumerate() {
        match w.await.unwrap() {
            Ok(v) => won.push((i, v)),
            Err(Error::VersionConflict { .. }) => {}
            Err(e) => panic!("writer {i}: {e:?}"),
        }
    }
    assert_eq!(won.len(), 1, "one winner: {won:?}");
    let doc = s.group_load(&name).await.unwrap().unwrap();
    assert_eq!((doc.version, doc.bytes), (3, format!("{{\"w\":{}}}", won[0].0).into_bytes()));

    // Nothing of the group shows in the store's feed or catalog.
    let feed = s
        .feed(&FeedQuery { topic: Topic { domain: None, ty: None }, key: None, after_seq: head, from_time: None, limit: 10_000 })
        .await
        .unwrap();
    assert!(feed.iter().all(|e| !e.record.domain.contains(char::is_whitespace)), "a group document in the feed");
    let catalog = s.catalog(None).await.unwrap();
    assert!(catalog.iter().all(|c| !c.domain.contains(char::is_whitespace)), "a group document in the catalog");
}


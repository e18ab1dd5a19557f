//! WIT 0.2.0's search pushdown: the guest gets the whole query (filter as
//! the query language's JSON, sort, offset, limit) and returns only what
//! can belong to the page; the host still decides the result. fs-storage
//! (since 0.2.0) answers with the matches alone, cut at offset + limit, where it
//! can decide the filter; the same guest built against 0.1.0 returns every
//! state. Whatever a guest pushes down, the result is the reference
//! provider's.

use crate::storage_conformance::put;
use crate::wasm_support::{guest, runtime, spec, storage_spec};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use stategate::model::{EventQuery, EventSort, Filter, RecordRef, Sort, StateQuery};
use stategate::storage::{DynStorage, memory::MemoryStorage};
use stategate::wasm::versions::storage_types as wit;
use stategate::wasm::{Guest, GuestConfig, Persistent, StoragePre};
use std::sync::Arc;

/// The raw guest over `dir` (no host-side selection).
async fn raw(name: &str, dir: &std::path::Path) -> Persistent<StoragePre> {
    let runtime = runtime();
    let mut c = GuestConfig::at(guest(name), name);
    c.grants.dir = Some(dir.to_owned());
    let spec = c.spec(runtime.settings());
    let g = tokio::task::spawn_blocking(move || Guest::load(&runtime, spec)).await.unwrap().unwrap();
    Persistent::new(g)
}

fn state_query(filter: Value, sort: Option<(&str, bool)>, offset: u32, limit: u32) -> wit::StateQuery {
    wit::StateQuery {
        domain: "d".into(),
        ty: "t".into(),
        filter: filter.to_string(),
        sort: sort.map(|(f, d)| wit::StateSort { field: f.into(), descending: d }),
        offset,
        limit,
    }
}

async fn page(p: &Persistent<StoragePre>, q: wit::StateQuery) -> (Vec<String>, u32) {
    let page = p.call("query-states", move |s, g| g.query_states(s, &q)).await.unwrap().unwrap();
    (page.states.into_iter().map(|s| s.record.key).collect(), page.skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_storage_returns_only_the_page_it_can_decide() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = storage_spec(&spec(&guest("fs_storage"), dir.path())).open(dir.path(), &runtime()).await.unwrap();
        for n in 0..50 {
            let r = RecordRef::parse("d", "t", &format!("k{n:02}")).unwrap();
            s.append(put(&r, json!({"n": n, "s": format!("x{n}"), "tags": ["a"]}))).await.unwrap();
        }
    }
    let keys = |r: std::ops::Range<usize>| r.map(|n| format!("k{n:02}")).collect::<Vec<_>>();
    let new = raw("fs_storage", dir.path()).await;
    // Decided exactly: only the page crosses, the offset skipped by the guest.
    assert_eq!(page(&new, state_query(json!({"n": {"$gte": 40}}), None, 2, 5)).await, (keys(42..47), 2));
    let mut desc = keys(43..48);
    desc.reverse();
    assert_eq!(page(&new, state_query(json!({"n": {"$gte": 40}}), Some(("n", true)), 2, 5)).await, (desc, 2));
    // $or of decidable conditions too.
    assert_eq!(page(&new, state_query(json!({"$or": [{"n": 3}, {"s": "x7"}]}), None, 0, 10)).await, (vec!["k03".into(), "k07".into()], 0));
    // Undecidable (a regex; a path through an array): every candidate, nothing skipped.
    assert_eq!(page(&new, state_query(json!({"s": {"$regex": "^x4"}}), None, 2, 5)).await, (keys(0..50), 0));
    assert_eq!(page(&new, state_query(json!({"tags": "a", "n": {"$lt": 3}}), None, 0, 1)).await, (keys(0..3), 0));
    // Events: matches in seq order, cut at offset + limit.
    let q = wit::EventQuery {
        domain: "d".into(),
        ty: "t".into(),
        key: None,
        filter: json!({"n": {"$lt": 10}}).to_string(),
        claims_filter: json!({"tenant": "acme"}).to_string(),
        min_time: None,
        max_time: None,
        sort: None,
        offset: 1,
        limit: 3,
    };
    let events = new.call("query-events", move |s, g| g.query_events(s, &q)).await.unwrap().unwrap();
    assert_eq!(events.events.iter().map(|e| e.record.key.clone()).collect::<Vec<_>>(), keys(1..4));
    assert_eq!(events.skipped, 1);
    drop(new);
    // The 0.1.0 build of the same guest cannot push down: everything crosses.
    let old = raw("fs_storage_0_1_0", dir.path()).await;
    assert_eq!(page(&old, state_query(json!({"n": {"$gte": 40}}), None, 2, 5)).await, (keys(0..50), 0));
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(|n| json!(n)),
        prop_oneof![Just(1.5f64), Just(-0.5), Just(2.0)].prop_map(|f| json!(f)),
        prop_oneof![Just("a"), Just("b"), Just("ab"), Just("")].prop_map(|s| json!(s)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop_oneof![Just("a"), Just("b"), Just("0")].prop_map(str::to_owned), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn doc() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned), value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c"), Just("0")], 1..3).prop_map(|p| p.join("."))
}

/// One operator object (or a plain value: equality).
fn condition() -> impl Strategy<Value = Value> {
    prop_oneof![
        scalar(),
        value(),
        scalar().prop_map(|v| json!({"$ne": v})),
        scalar().prop_map(|v| json!({"$gt": v})),
        scalar().prop_map(|v| json!({"$gte": v, "$lt": 3})),
        scalar().prop_map(|v| json!({"$lte": v})),
        prop::collection::vec(scalar(), 0..3).prop_map(|v| json!({"$in": v})),
        prop::collection::vec(scalar(), 0..3).prop_map(|v| json!({"$nin": v})),
        any::<bool>().prop_map(|b| json!({"$exists": b})),
        scalar().prop_map(|v| json!({"$not": {"$gt": v}})),
        Just(json!({"$regex": "^a"})),
        Just(json!({"$size": 1})),
        Just(json!({"$type": "string"})),
    ]
}

fn filter() -> impl Strategy<Value = Map<String, Value>> {
    let leaf = prop::collection::vec((path(), condition()), 0..3).prop_map(|c| Value::Object(c.into_iter().collect()));
    let tree = leaf.prop_recursive(2, 6, 3, |inner| {
        (prop_oneof![Just("$and"), Just("$or"), Just("$nor")], prop::collection::vec(inner, 1..3))
            .prop_map(|(op, fs)| json!({ op: fs }))
    });
    (tree, prop::collection::vec((path(), condition()), 0..2)).prop_map(|(t, extra)| {
        let mut m = t.as_object().unwrap().clone();
        m.extend(extra);
        m
    })
}

/// fs-storage pushes the query down; whatever it returns, the page of each
/// state and event search (any filter, sort, offset and limit) is the one
/// the reference (in-memory) provider selects.
#[test]
fn fs_storage_search_agrees_with_the_reference() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs: DynStorage = rt.block_on(async { storage_spec(&spec(&guest("fs_storage"), dir.path())).open(dir.path(), &runtime()).await.unwrap() });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 96, ..ProptestConfig::default() });
    let sort = prop::option::of((path(), any::<bool>()));
    let strategy = (prop::collection::vec(doc(), 1..10), filter(), sort, any::<bool>(), 1usize..5, 0usize..4);
    let round = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&strategy, |(docs, query, sort, by_time, limit, offset)| {
            let domain = format!("p{}", round.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let memory: DynStorage = Arc::new(MemoryStorage::new());
            let Ok(filter) = Filter::from_object("query_string", &query) else { return Ok(()) };
            rt.block_on(async {
                for (i, d) in docs.iter().enumerate() {
                    // Two records get a second event, so events outnumber states.
                    let r = RecordRef::parse(&domain, "t", &format!("k{:02}", i % (docs.len().div_ceil(2).max(1) + 1))).unwrap();
                    let req = crate::storage_conformance::req(&r, stategate::model::Change::Put(d.clone().into()), stategate::model::Expect::Any);
                    fs.append(req.clone()).await.unwrap();
                    memory.append(req).await.unwrap();
                }
                let state_sort = sort.as_ref().and_then(|(p, desc)| Sort::parse("sort_by", p, *desc).unwrap());
                let q = StateQuery { domain: domain.clone(), ty: "t".into(), filter: filter.clone(), sort: state_sort, limit, offset };
                let keys = |v: Vec<stategate::model::State>| v.into_iter().map(|s| s.record.key).collect::<Vec<_>>();
                prop_assert_eq!(
                    keys(fs.search_states(&q).await.unwrap()),
                    keys(memory.search_states(&q).await.unwrap()),
                    "states, query {} sort {:?}", Value::Object(query.clone()), sort
                );
                let event_sort = match (&sort, by_time) {
                    (Some((p, desc)), false) => Some(EventSort::parse("sort", &format!("values.{p}"), *desc).unwrap()),
                    (Some((_, desc)), true) => Some(EventSort::parse("sort", "time", *desc).unwrap()),
                    (None, _) => None,
                };
                let q = EventQuery {
                    domain: domain.clone(),
                    ty: "t".into(),
                    key: None,
                    filter: filter.clone(),
                    claims_filter: Filter::parse("claims_query", r#"{"sub": "tester"}"#).unwrap(),
                    min_time: None,
                    max_time: None, min_version: None, max_version: None,
                    limit,
                    offset,
                    sort: event_sort,
                };
                let ids = |v: Vec<stategate::model::Event>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
                prop_assert_eq!(
                    ids(fs.search_events(&q).await.unwrap()),
                    ids(memory.search_events(&q).await.unwrap()),
                    "events, query {} sort {:?} by time {}", Value::Object(query.clone()), sort, by_time
                );
                Ok(())
            })
        })
        .unwrap();
}

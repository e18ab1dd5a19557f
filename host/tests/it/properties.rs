//! Property tests (bounded, run in CI): the query language and the JSON and
//! protobuf mappings never panic on arbitrary input, and the sqlite provider's
//! SQL pushdown returns exactly what the reference matcher selects.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use stategate::model::{Filter, StateQuery};
use stategate::storage::{DynStorage, memory::MemoryStorage, sqlite::SqliteStorage};
use std::sync::Arc;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(|n| json!(n)),
        prop_oneof![Just(1.5f64), Just(-0.5), Just(2.0)].prop_map(|f| json!(f)),
        prop_oneof![Just("a"), Just("b"), Just("x.y"), Just("é"), Just("")].prop_map(|s| json!(s)),
    ]
}

/// Scalars the stores hold otherwise than serde does: integers beyond
/// i64 (sqlite reads them as reals), and strings that sort among sqlite's
/// JSON text of arrays and objects.
fn stored_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop_oneof![
            Just(json!(u64::MAX)),
            // 2^63, 2^63 + 1 and 2^63 + 2 are one real to sqlite.
            Just(json!(9_223_372_036_854_775_808u64)),
            Just(json!(9_223_372_036_854_775_809u64)),
            Just(json!(9_223_372_036_854_775_810u64)),
            Just(json!(i64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!("[x")),
            Just(json!("{")),
        ],
    ]
}

fn value() -> impl Strategy<Value = Value> {
    value_of(|| scalar().boxed())
}

/// A scalar strategy, made anew wherever one is needed.
type Leaf = fn() -> BoxedStrategy<Value>;

fn value_of(leaf: Leaf) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(field(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("0"), Just("a.b"), odd_name()].prop_map(str::to_owned)
}

/// Field names that sqlite's JSON path syntax or BSON treat specially: a
/// pushdown must skip or quote them, never fail.
fn odd_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("q\"t"), Just("b\\s"), Just("[1]"), Just("$d"), Just("sp ace"), Just("'"), Just("*")]
}

pub fn doc() -> impl Strategy<Value = Map<String, Value>> {
    doc_of(value())
}

fn doc_of(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(field(), value, 0..4).prop_map(|m| m.into_iter().collect())
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c"), Just("0"), odd_name()], 1..3).prop_map(|p| p.join("."))
}

pub fn condition() -> impl Strategy<Value = (String, Value)> {
    condition_of(path(), || scalar().boxed())
}

fn condition_of(path: impl Strategy<Value = String>, scalar: Leaf) -> impl Strategy<Value = (String, Value)> {
    let op = prop_oneof![
        scalar(),
        value_of(scalar),
        scalar().prop_map(|v| json!({"$ne": v})),
        scalar().prop_map(|v| json!({"$gt": v})),
        scalar().prop_map(|v| json!({"$gte": v})),
        scalar().prop_map(|v| json!({"$lt": v})),
        scalar().prop_map(|v| json!({"$lte": v})),
        prop::collection::vec(scalar(), 0..3).prop_map(|v| json!({"$in": v})),
        any::<bool>().prop_map(|b| json!({"$exists": b})),
    ];
    (path, op)
}

/// Mostly the indexed fields alone (what an index answers), else any path.
fn indexed_path() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned), 1 => path()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn filter_parse_never_panics(text in ".{0,64}") {
        let _ = Filter::parse("query_string", &text);
    }

    #[test]
    fn filter_matching_never_panics(conds in prop::collection::vec(condition(), 0..4), d in doc()) {
        let q: Map<String, Value> = conds.into_iter().collect();
        if let Ok(f) = Filter::from_object("query_string", &q) {
            let _ = f.matches(&d);
        }
    }

    /// What a wasm guest is handed (`Filter::to_json`) reads back as the
    /// filter the host checks its answer with.
    #[test]
    fn filter_renders_back_to_itself(conds in prop::collection::vec(condition(), 0..4)) {
        let q: Map<String, Value> = conds.into_iter().collect();
        if let Ok(f) = Filter::from_object("query_string", &q) {
            let back = Filter::from_object("query_string", f.to_json().as_object().unwrap()).unwrap();
            prop_assert_eq!(back, f);
        }
    }

    #[test]
    fn struct_mapping_round_trips(d in doc()) {
        let s = stategate::api::convert::json_to_struct(d.clone());
        let back = stategate::api::convert::struct_to_json("values", s).unwrap();
        // Integral floats come back as integers: compare numerically.
        prop_assert!(stategate::model::query::json_eq(&Value::Object(back), &Value::Object(d)));
    }

    #[test]
    fn event_json_round_trips(d in doc(), version in 1u64..1000, time in 0i64..i64::MAX) {
        let e = stategate::model::Event {
            id: "id".into(), seq: version, record: stategate::model::RecordRef::parse("d", "t", "k").unwrap(),
            values: Some(d.into()), claims: Map::new(), time, version, kind: stategate::model::EventKind::Edit, method: "m".into(),
        };
        prop_assert_eq!(stategate::model::json::parse_event(&stategate::model::json::event(&e)).unwrap(), e);
    }
}

/// sqlite pushes equality conditions down into SQL; the page it returns
/// (sorted or not, any offset and limit) must be exactly the one the
/// reference (in-memory) provider selects.
#[test]
fn sqlite_search_agrees_with_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite: DynStorage = Arc::new(SqliteStorage::open(dir.path().join("p.db")).unwrap());
    let strategy = (prop::collection::vec(doc(), 1..12), prop::collection::vec(condition(), 0..3), sort(path()), 1usize..6, 0usize..4);
    agrees_with_the_reference(sqlite, strategy);
}

/// The same with indexes on the fields `a`, `b` and `c` (conditions on
/// them, and sorts by them, go through the index), on documents holding
/// the values sqlite orders otherwise than the matcher; more records per
/// type and longer pages, so sorted reads stop early at every kind.
#[test]
fn sqlite_search_by_field_indexes_agrees_with_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let config: stategate::storage::sqlite::SqliteConfig =
        serde_json::from_value(json!({"index_fields": ["a", "b", "c"], "auto_index": false})).unwrap();
    let sqlite: DynStorage = Arc::new(SqliteStorage::open_with(dir.path().join("p.db"), &config).unwrap());
    let docs = prop::collection::vec(doc_of(value_of(|| stored_scalar().boxed())), 1..30);
    let conditions = prop::collection::vec(condition_of(indexed_path(), || stored_scalar().boxed()), 0..3);
    let strategy = (docs, conditions, sort(indexed_path()), 1usize..8, 0usize..6);
    agrees_with_the_reference(sqlite, strategy);
}

fn sort(path: impl Strategy<Value = String>) -> impl Strategy<Value = Option<(String, bool)>> {
    prop::option::of((path, any::<bool>()))
}

/// Runs 64 cases of (documents, conditions, sort, limit, offset) on
/// `sqlite` and on a fresh in-memory provider, each in its own domain.
fn agrees_with_the_reference(
    sqlite: DynStorage,
    strategy: impl Strategy<Value = (Vec<Map<String, Value>>, Vec<(String, Value)>, Option<(String, bool)>, usize, usize)>,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 64, ..ProptestConfig::default() });
    let round = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&strategy, |(docs, conds, sort, limit, offset)| {
            let domain = format!("p{}", round.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let memory: DynStorage = Arc::new(MemoryStorage::new());
            let query: Map<String, Value> = conds.into_iter().collect();
            let Ok(filter) = Filter::from_object("query_string", &query) else { return Ok(()) };
            rt.block_on(async {
                for (i, d) in docs.iter().enumerate() {
                    let r = stategate::model::RecordRef::parse(&domain, "t", &format!("k{i:02}")).unwrap();
                    let req = crate::storage_conformance::req(&r, stategate::model::Change::Put(d.clone().into()), stategate::model::Expect::Any);
                    sqlite.append(req.clone()).await.unwrap();
                    memory.append(req).await.unwrap();
                }
                let sort = sort.and_then(|(p, desc)| stategate::model::Sort::parse("sort_by", &p, desc).unwrap());
                let q = StateQuery { domain: domain.clone(), ty: "t".into(), filter, sort: sort.clone(), limit, offset };
                let a: Vec<String> = sqlite.search_states(&q).await.unwrap().into_iter().map(|s| s.record.key).collect();
                let b: Vec<String> = memory.search_states(&q).await.unwrap().into_iter().map(|s| s.record.key).collect();
                prop_assert_eq!(a, b, "query {} sort {:?}", Value::Object(query.clone()), sort);
                Ok(())
            })
        })
        .unwrap();
}

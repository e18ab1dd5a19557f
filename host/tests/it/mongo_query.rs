//! The shared matcher against a real MongoDB query engine: random filters
//! over random documents, run by the test server's own `find` (SecantusDB,
//! `STATEGATE_TEST_MONGO_URL`, a database of its own per run) and by
//! `Filter::matches`, must select the same documents; and the mongo
//! provider (which pushes part of a filter down and lets the matcher
//! decide) must return what the in-memory reference returns.
//!
//! MongoDB's documented behaviour is the reference. Where the test server
//! departs from it, the generator leaves out only that case, named here and
//! in docs/guarantees.md:
//! - `$all` with an array or `null` among its values, or on a path through
//!   an array of objects: MongoDB documents `$all` as the `$and` of `$eq` on
//!   each value (so `{"t": {"$all": [[1, 2]]}}` matches `{"t": [1, 2]}`,
//!   `{"t": {"$all": [null]}}` a document without `t`, and
//!   `{"a.b": {"$all": [1, 2]}}` matches `{"a": [{"b": 1}, {"b": 2}]}`);
//!   SecantusDB 0.7 compares each value with the elements of one reached
//!   array, or the one reached value, only.
//! - `$elemMatch` whose first key is `$and`, `$or` or `$nor`: MongoDB reads
//!   it as a query on object elements; SecantusDB refuses it.
//! - `$mod` on an array reached by an index (`{"a.0": {"$mod": [2, 1]}}`
//!   over `{"a": [[1]]}`) or on an element inside `$elemMatch`: MongoDB
//!   takes such an array as it is (as for every other operator, which
//!   SecantusDB also does), SecantusDB 0.7 looks into it for `$mod` alone.
//!   Filters with `$mod` and an index path or `$elemMatch` are left out.
//!
//! 128 cases by default; `STATEGATE_QUERY_CASES=<n>` runs more.
//!
//! Not differences but choices of the gateway, also left out: numeric
//! `$type` aliases other than `number` (JSON has one number type; the copy
//! the test stores keeps integers as BSON longs), and objects with fields
//! in different orders (the gateway compares objects regardless of field
//! order: the generator writes fields in one order, so both agree).

use crate::harness::backend_url;
use mongodb::bson::{Bson, Document};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use stategate::model::*;
use stategate::storage::{DynStorage, memory::MemoryStorage};
use std::sync::Arc;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(|n| json!(n)),
        prop_oneof![Just(1.5f64), Just(-0.5), Just(2.0)].prop_map(|f| json!(f)),
        prop_oneof![Just("a"), Just("b"), Just("ab"), Just("Ba"), Just(""), Just("a\nb"), Just("b\n")]
            .prop_map(|s| json!(s)),
    ]
}

fn name() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("0"), Just("1")]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            // Fields in one (sorted) order, see the module comment.
            prop::collection::btree_map(name().prop_map(str::to_owned), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn doc() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(name().prop_map(str::to_owned), value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(name(), 1..4).prop_map(|p| p.join("."))
}

/// An operator object (or a plain value for equality) on one field.
fn operator() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        value(),
        value().prop_map(|v| json!({"$eq": v})),
        value().prop_map(|v| json!({"$ne": v})),
        value().prop_map(|v| json!({"$gt": v})),
        value().prop_map(|v| json!({"$gte": v})),
        value().prop_map(|v| json!({"$lt": v})),
        value().prop_map(|v| json!({"$lte": v})),
        prop::collection::vec(value(), 0..3).prop_map(|v| json!({"$in": v})),
        prop::collection::vec(value(), 0..3).prop_map(|v| json!({"$nin": v})),
        any::<bool>().prop_map(|b| json!({"$exists": b})),
        (
            prop_oneof![Just("^a"), Just("b$"), Just("^b$"), Just("a.b"), Just("[a-b]+"), Just("^$"), Just("B"), Just("a b")],
            prop_oneof![Just(""), Just("i"), Just("m"), Just("s"), Just("x"), Just("im")],
        )
            .prop_map(|(p, o)| if o.is_empty() { json!({"$regex": p}) } else { json!({"$regex": p, "$options": o}) }),
        (0u64..4).prop_map(|n| json!({"$size": n})),
        // Scalars other than null only (see the module comment).
        prop::collection::vec(scalar().prop_filter("not null", |v| !v.is_null()), 0..3).prop_map(|v| json!({"$all": v})),
        prop_oneof![Just("number"), Just("string"), Just("object"), Just("array"), Just("bool"), Just("null"), Just("date")]
            .prop_map(|t| json!({"$type": t})),
        (prop_oneof![Just(2i64), Just(3), Just(-2)], -2i64..3).prop_map(|(d, r)| json!({"$mod": [d, r]})),
    ];
    leaf.prop_recursive(2, 8, 2, |inner| {
        prop_oneof![
            // $not over an operator object (not a plain value).
            inner.clone().prop_filter_map("an operator object", |v| match v {
                Value::Object(m) if m.keys().next().is_some_and(|k| k.starts_with('$')) => Some(json!({"$not": m})),
                _ => None,
            }),
            inner.clone().prop_filter_map("an operator object", |v| match v {
                Value::Object(m) if m.keys().next().is_some_and(|k| k.starts_with('$') && k != "$not") => {
                    Some(json!({"$elemMatch": m}))
                }
                _ => None,
            }),
            (name(), inner).prop_map(|(n, v)| json!({"$elemMatch": {n: v}})),
        ]
    })
}

fn filter() -> impl Strategy<Value = Map<String, Value>> {
    let field = (path(), operator()).prop_map(|(p, v)| {
        let mut m = Map::new();
        m.insert(p, v);
        m
    });
    field.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(|fs| single("$and", fs)),
            prop::collection::vec(inner.clone(), 1..3).prop_map(|fs| single("$or", fs)),
            prop::collection::vec(inner.clone(), 1..3).prop_map(|fs| single("$nor", fs)),
            prop::collection::vec(inner, 2..3).prop_map(|fs| {
                // Two clauses side by side (distinct keys only).
                let mut m = Map::new();
                for f in fs {
                    for (k, v) in f {
                        m.entry(k).or_insert(v);
                    }
                }
                m
            }),
        ]
    })
}

/// Whether a filter holds a case where the test server is known to depart
/// from MongoDB (see the module comment).
fn deviates(f: &Map<String, Value>) -> bool {
    let text = Value::Object(f.clone()).to_string();
    fn index_path(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| k.split('.').any(|s| s.bytes().all(|b| b.is_ascii_digit())) || index_path(v)),
            Value::Array(items) => items.iter().any(index_path),
            _ => false,
        }
    }
    text.contains("\"$mod\"") && (text.contains("\"$elemMatch\"") || index_path(&Value::Object(f.clone())))
}

fn single(op: &str, filters: Vec<Map<String, Value>>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(op.into(), Value::Array(filters.into_iter().map(Value::Object).collect()));
    m
}

/// JSON as the BSON the test stores and queries with: integers as longs,
/// other numbers as doubles.
fn bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap()),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(bson).collect()),
        Value::Object(m) => Bson::Document(document(m)),
    }
}

fn document(m: &Map<String, Value>) -> Document {
    m.iter().map(|(k, v)| (k.clone(), bson(v))).collect()
}

#[test]
fn the_shared_matcher_agrees_with_mongodb() {
    let Some(url) = backend_url("MONGO") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let database = format!("qdiff{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let client = rt.block_on(mongodb::Client::with_uri_str(&url)).expect("mongo client");
    let db = client.database(&database);
    let provider: DynStorage = Arc::new(rt.block_on(stategate::storage::mongo::MongoStorage::open(&url, &database)).expect("mongo storage opens"));
    let cases = std::env::var("STATEGATE_QUERY_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(128);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    let round = std::sync::atomic::AtomicUsize::new(0);
    let strategy = (
        prop::collection::vec(doc(), 1..12),
        prop::collection::vec(filter().prop_filter("a known difference of the test server", |f| !deviates(f)), 1..4),
    );
    let result = runner.run(&strategy, |(docs, filters)| {
        let n = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // One collection, emptied per case: creating one per case slows the
        // server down as they pile up.
        let collection = db.collection::<Document>("docs");
        let d = format!("q{n}");
        let reference: DynStorage = Arc::new(MemoryStorage::new());
        rt.block_on(async {
            let rows: Vec<Document> = docs
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let mut row = document(m);
                    row.insert("_id", i as i64);
                    row
                })
                .collect();
            collection.delete_many(Document::new()).await.expect("empty the collection");
            collection.insert_many(rows).await.expect("insert");
            for (i, m) in docs.iter().enumerate() {
                let r = RecordRef::parse(&d, "t", &format!("k{i:02}")).unwrap();
                let put = crate::storage_conformance::put(&r, Value::Object(m.clone()));
                provider.append(put.clone()).await.unwrap();
                reference.append(put).await.unwrap();
            }
            for f in &filters {
                let text = Value::Object(f.clone()).to_string();
                let filter = match Filter::from_object("query_string", f) {
                    Ok(filter) => filter,
                    Err(e) => {
                        // The gateway refuses only what MongoDB refuses too.
                        let server = collection.find(document(f)).await;
                        prop_assert!(server.is_err(), "refused {text}: {e}, which MongoDB runs");
                        continue;
                    }
                };
                let mut want: Vec<i64> = match collection.find(document(f)).await {
                    Ok(cursor) => {
                        use futures::TryStreamExt;
                        let found: Vec<Document> = cursor.try_collect().await.expect("read");
                        found.iter().map(|d| d.get_i64("_id").unwrap()).collect()
                    }
                    Err(e) => {
                        prop_assert!(false, "MongoDB refused {text}, which the gateway accepts: {e}");
                        unreachable!()
                    }
                };
                want.sort();
                let got: Vec<i64> =
                    docs.iter().enumerate().filter(|(_, m)| filter.matches(m)).map(|(i, _)| i as i64).collect();
                prop_assert_eq!(&got, &want, "filter {} over {}", text, Value::Array(docs.iter().cloned().map(Value::Object).collect()));
                let q = StateQuery { domain: d.clone(), ty: "t".into(), filter, sort: None, limit: 100, offset: 0 };
                let keys = |v: Vec<State>| v.into_iter().map(|s| s.record.key).collect::<Vec<_>>();
                let from_provider = keys(provider.search_states(&q).await.unwrap());
                let from_reference = keys(reference.search_states(&q).await.unwrap());
                prop_assert_eq!(from_provider, from_reference, "provider, filter {}", text);
            }
            Ok(())
        })
    });
    rt.block_on(async { db.drop().await }).ok();
    result.unwrap();
}

//! Queries pushed down into PostgreSQL and MySQL/MariaDB: field names that
//! would break a statement pasted together (quotes, semicolons, backticks,
//! `$`, unicode, a kilobyte) are only ever bound, and every search returns
//! exactly what the reference provider (the in-memory one, which runs the
//! shared matcher and sort) returns on the same data, for hand-picked and
//! for random documents and queries. On PostgreSQL, `EXPLAIN` shows the
//! point read, the key lookup, the time range and the catch-up page use
//! their indexes.

use crate::sql_backends::{Kind, Scratch, Scoped};
use crate::storage_conformance::{put, req};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use stategate::model::*;
use stategate::storage::{DynStorage, memory::MemoryStorage};
use std::sync::Arc;

/// A provider on its own scratch place, and the reference beside it.
async fn pair(kind: Kind) -> Option<(DynStorage, DynStorage)> {
    let scratch = Arc::new(Scratch::new(kind)?);
    let s = Scoped::wrap(scratch.open().await, scratch);
    Some((s, Arc::new(MemoryStorage::new())))
}

async fn both(stores: &(DynStorage, DynStorage), r: AppendRequest) {
    stores.0.append(r.clone()).await.unwrap();
    stores.1.append(r).await.unwrap();
}

fn state_query(d: &str, filter: &Value, sort: Option<(&str, bool)>, offset: usize, limit: usize) -> StateQuery {
    StateQuery {
        domain: d.into(),
        ty: "t".into(),
        filter: Filter::from_object("query_string", filter.as_object().unwrap()).unwrap(),
        sort: sort.map(|(p, desc)| Sort { path: p.split('.').map(str::to_owned).collect(), descending: desc }),
        limit,
        offset,
    }
}

async fn same_states(stores: &(DynStorage, DynStorage), q: &StateQuery) -> Vec<String> {
    let keys = |v: Vec<State>| v.into_iter().map(|s| s.record.key).collect::<Vec<_>>();
    let got = keys(stores.0.search_states(q).await.unwrap());
    let want = keys(stores.1.search_states(q).await.unwrap());
    assert_eq!(got, want, "{q:?}");
    got
}

const HOSTILE: &[&str] = &["a'); DROP TABLE events; --", "`x`; DROP TABLE states", "a$where", "x$.a[0]", "-lead", "naïve ✓ 名前", "\"quoted\"", "back\\slash", "*", "semi;colon /* c */ -- x"];

async fn hostile_names(kind: Kind) {
    let Some(stores) = pair(kind).await else { return };
    let d = crate::storage_conformance::unique_domain();
    let long = "k".repeat(1024);
    let mut names: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    names.push(long.clone());
    for (i, value) in [json!("x'; DROP TABLE events; --"), json!(3), json!(["a", "`b`"]), json!({"n": 1}), json!(null)].into_iter().enumerate() {
        let mut doc = Map::new();
        for n in &names {
            doc.insert(n.clone(), value.clone());
        }
        doc.insert("i".into(), json!(i));
        both(&stores, put(&RecordRef::parse(&d, "t", &format!("k{i}")).unwrap(), Value::Object(doc))).await;
    }
    for n in &names {
        for filter in [
            json!({ n: "x'; DROP TABLE events; --" }),
            json!({ n: {"$gte": 2} }),
            json!({ n: "`b`" }),
            json!({ n: {"$exists": true}, "i": {"$lt": 4} }),
            json!({ n: {"$in": [null, 3]} }),
            json!({ n: {"$ne": {"n": 1}} }),
        ] {
            same_states(&stores, &state_query(&d, &filter, None, 0, 100)).await;
            same_states(&stores, &state_query(&d, &filter, Some(("i", true)), 1, 2)).await;
        }
        if !n.contains('.') {
            same_states(&stores, &state_query(&d, &json!({}), Some((n, false)), 0, 100)).await;
        }
    }
    // The hostile names changed no statement: the tables are all there.
    let r = RecordRef::parse(&d, "t", "after").unwrap();
    let after = put(&r, json!({"ok": true}));
    both(&stores, after.clone()).await;
    assert_eq!(stores.0.get_event(&after.id).await.unwrap().unwrap().record, r);
    let found = same_states(&stores, &state_query(&d, &json!({"ok": true}), None, 0, 10)).await;
    assert_eq!(found, ["after"]);
    // Hostile values in a hostile event search, claims included.
    let mut hostile = put(&RecordRef::parse(&d, "t", "claims").unwrap(), json!({"v": 1}));
    hostile.claims = json!({HOSTILE[0]: HOSTILE[1], "sub": "x"}).as_object().unwrap().clone();
    both(&stores, hostile).await;
    let events = |s: &DynStorage| {
        let s = s.clone();
        let d = d.clone();
        async move {
            s.search_events(&EventQuery {
                domain: d,
                ty: "t".into(),
                key: None,
                filter: Filter::default(),
                claims_filter: Filter::from_object("claims_query", json!({HOSTILE[0]: HOSTILE[1]}).as_object().unwrap()).unwrap(),
                min_time: None,
                max_time: None, min_version: None, max_version: None,
                limit: 10,
                offset: 0, sort: None,
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record.key)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(events(&stores.0).await, ["claims"]);
    assert_eq!(events(&stores.0).await, events(&stores.1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hostile_field_names_are_bound() {
    hostile_names(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_hostile_field_names_are_bound() {
    hostile_names(Kind::Mysql).await;
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-4i64..4).prop_map(|n| json!(n)),
        prop_oneof![Just(1.5f64), Just(-0.5), Just(2.0), Just(1e20)].prop_map(|f| json!(f)),
        Just(json!(9_007_199_254_740_993u64)),
        prop_oneof![Just("a"), Just("b"), Just("A"), Just("a "), Just("é"), Just(""), Just("\"q\""), Just("b\\s"), Just("1")]
            .prop_map(|s| json!(s)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(field(), inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("0"), Just("$x"), Just("-1")].prop_map(str::to_owned)
}

fn doc() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(field(), value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(field(), 1..3).prop_map(|p| p.join("."))
}

fn condition() -> impl Strategy<Value = (String, Value)> {
    let op = prop_oneof![
        scalar(),
        value(),
        scalar().prop_map(|v| json!({"$ne": v})),
        scalar().prop_map(|v| json!({"$gt": v})),
        scalar().prop_map(|v| json!({"$gte": v})),
        scalar().prop_map(|v| json!({"$lt": v})),
        scalar().prop_map(|v| json!({"$lte": v})),
        prop::collection::vec(value(), 0..3).prop_map(|v| json!({"$in": v})),
        prop::collection::vec(scalar(), 0..3).prop_map(|v| json!({"$nin": v})),
        any::<bool>().prop_map(|b| json!({"$exists": b})),
        prop::collection::vec(scalar(), 0..3).prop_map(|v| json!({"$all": v})),
        (0u64..3).prop_map(|n| json!({"$size": n})),
        prop_oneof![Just("number"), Just("string"), Just("array"), Just("object"), Just("null"), Just("bool")]
            .prop_map(|t| json!({"$type": t})),
        scalar().prop_map(|v| json!({"$not": {"$gte": v}})),
        scalar().prop_map(|v| json!({"$not": {"$eq": v}})),
        Just(json!({"$regex": "^a", "$options": "i"})),
        Just(json!({"$mod": [2, 1]})),
        scalar().prop_map(|v| json!({"$elemMatch": {"$eq": v}})),
    ];
    (path(), op)
}

/// A field condition, or `$and` / `$or` / `$nor` of one or two.
fn clause() -> impl Strategy<Value = (String, Value)> {
    let field = condition();
    prop_oneof![
        3 => field,
        1 => (prop_oneof![Just("$and"), Just("$or"), Just("$nor")], prop::collection::vec(condition(), 1..3)).prop_map(|(op, cs)| {
            let filters: Vec<Value> = cs.into_iter().map(|(p, v)| json!({ p: v })).collect();
            (op.to_owned(), Value::Array(filters))
        }),
    ]
}

/// Equality with an array value (`$eq`, `$in`, `$nin`, `$all`, `$ne`): the
/// same array, or an element that is that array, and not an array that
/// merely holds its elements (MariaDB's `JSON_OVERLAPS` says they overlap;
/// the property test below found it with `{"a": {"$in": [[]]}}`).
async fn equality_with_arrays(kind: Kind) {
    let Some(stores) = pair(kind).await else { return };
    let d = crate::storage_conformance::unique_domain();
    let docs = [json!([null]), json!([]), json!([]), json!([1, 2]), json!([[1]]), json!([[1, 2]]), json!(1), json!({"b": []})];
    for (i, a) in docs.into_iter().enumerate() {
        both(&stores, put(&RecordRef::parse(&d, "t", &format!("k{i}")).unwrap(), json!({ "a": a }))).await;
    }
    for filter in [
        json!({"a": {"$in": [[]]}}),
        json!({"a": []}),
        json!({"a": [1]}),
        json!({"a": [1, 2]}),
        json!({"a": {"$in": [[1], 7]}}),
        json!({"a": {"$all": [[1]]}}),
        json!({"a": {"$nin": [[]]}}),
        json!({"a": {"$ne": [1, 2]}}),
        json!({"a.b": []}),
    ] {
        same_states(&stores, &state_query(&d, &filter, None, 0, 100)).await;
        same_states(&stores, &state_query(&d, &filter, None, 0, 1)).await;
        same_states(&stores, &state_query(&d, &filter, Some(("a", true)), 1, 2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_equality_with_arrays() {
    equality_with_arrays(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_equality_with_arrays() {
    equality_with_arrays(Kind::Mysql).await;
}

/// Random documents, filters, sorts and pages: the provider returns what
/// the reference returns, for states and for events.
fn agrees_with_the_reference(kind: Kind) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let Some(scratch) = Scratch::new(kind) else { return };
    let scratch = Arc::new(scratch);
    let provider = rt.block_on(scratch.open());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 64, ..ProptestConfig::default() });
    let strategy = (
        prop::collection::vec(doc(), 1..10),
        prop::collection::vec(clause(), 0..3),
        prop::option::of((path(), any::<bool>())),
        0usize..3,
        1usize..5,
    );
    let round = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&strategy, |(docs, conds, sort, offset, limit)| {
            let d = format!("p{}-{}", round.fetch_add(1, std::sync::atomic::Ordering::Relaxed), uuid::Uuid::new_v4().simple());
            let query: Map<String, Value> = conds.into_iter().collect();
            let Ok(filter) = Filter::from_object("query_string", &query) else { return Ok(()) };
            let stores = (provider.clone(), Arc::new(MemoryStorage::new()) as DynStorage);
            rt.block_on(async {
                for (i, v) in docs.iter().enumerate() {
                    let r = RecordRef::parse(&d, "t", &format!("k{i:02}")).unwrap();
                    both(&stores, req(&r, Change::Put(v.clone().into()), Expect::Any)).await;
                    // Some records are deleted: gone from state searches,
                    // and their deletion events match as empty documents.
                    if i % 4 == 3 {
                        both(&stores, req(&r, Change::Delete, Expect::Any)).await;
                    }
                }
                let sort_field = sort.as_ref().map(|(p, desc)| (format!("values.{p}"), *desc));
                let sort = sort.as_ref().map(|(p, desc)| Sort { path: p.split('.').map(str::to_owned).collect(), descending: *desc });
                for (sort, offset, limit) in [(None, 0, 100), (sort.clone(), 0, 100), (sort, offset, limit)] {
                    let q = StateQuery { domain: d.clone(), ty: "t".into(), filter: filter.clone(), sort, limit, offset };
                    let keys = |v: Vec<State>| v.into_iter().map(|s| s.record.key).collect::<Vec<_>>();
                    let got = keys(stores.0.search_states(&q).await.unwrap());
                    let want = keys(stores.1.search_states(&q).await.unwrap());
                    prop_assert_eq!(got, want, "states, query {} {:?}", Value::Object(query.clone()), q.sort);
                }
                let ids = |v: Vec<Event>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
                let sorts = [None, Some(("time", true)), Some(("values.a", false)), sort_field.as_ref().map(|(p, desc)| (p.as_str(), *desc))];
                for by in sorts {
                    let q = EventQuery {
                        domain: d.clone(), ty: "t".into(), key: None, filter: filter.clone(), claims_filter: Filter::default(),
                        min_time: None, max_time: None, min_version: None, max_version: None, limit, offset,
                        sort: by.map(|(f, desc)| EventSort::parse("sort.field", f, desc).unwrap()),
                    };
                    let got = ids(stores.0.search_events(&q).await.unwrap());
                    let want = ids(stores.1.search_events(&q).await.unwrap());
                    prop_assert_eq!(got, want, "events, query {} sort {:?}", Value::Object(query.clone()), by);
                }
                Ok(())
            })
        })
        .unwrap();
    drop(provider);
    drop(scratch);
}

#[test]
fn postgres_pushdown_agrees_with_the_reference() {
    agrees_with_the_reference(Kind::Postgres);
}

#[test]
fn mysql_pushdown_agrees_with_the_reference() {
    agrees_with_the_reference(Kind::Mysql);
}

/// The node types and the indexes of the plan PostgreSQL picks for `sql`.
async fn plan(conn: &mut sqlx::PgConnection, sql: &stategate::storage::postgres::query::Sql) -> (Vec<String>, Vec<String>) {
    let text = format!("EXPLAIN (FORMAT JSON) {}", sql.text);
    let row = sql.bind(sqlx::query(sqlx::AssertSqlSafe(text.as_str()))).fetch_one(&mut *conn).await.unwrap();
    plan_nodes(&row)
}

/// The node types and indexes of the plan in an `EXPLAIN (FORMAT JSON)` row.
fn plan_nodes(row: &sqlx::postgres::PgRow) -> (Vec<String>, Vec<String>) {
    let plan: Value = serde_json::from_str(&sqlx::Row::try_get_unchecked::<String, _>(row, 0).unwrap()).unwrap();
    fn walk(node: &Value, nodes: &mut Vec<String>, indexes: &mut Vec<String>) {
        nodes.extend(node.get("Node Type").and_then(Value::as_str).map(str::to_owned));
        indexes.extend(node.get("Index Name").and_then(Value::as_str).map(str::to_owned));
        for child in node.get("Plans").and_then(Value::as_array).into_iter().flatten() {
            walk(child, nodes, indexes);
        }
    }
    let (mut nodes, mut indexes) = (vec![], vec![]);
    walk(&plan[0]["Plan"], &mut nodes, &mut indexes);
    (nodes, indexes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_use_their_indexes() {
    use sqlx::Connection;
    use stategate::storage::postgres::{query::{Arg, Sql}, statements};
    let Some(scratch) = Scratch::new(Kind::Postgres) else { return };
    let s = scratch.open().await;
    // Enough rows over many types and records that the planner prefers
    // indexes to scanning.
    let writers = (0..8).map(|w| {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..250 {
                let r = RecordRef::parse(&format!("d{}", i % 10), &format!("t{w}"), &format!("k{}", i % 50)).unwrap();
                let mut q = put(&r, json!({"i": i, "w": w}));
                q.time = 1_000_000 + (w * 250 + i) as i64;
                s.append(q).await.unwrap();
            }
        })
    });
    for w in writers {
        w.await.unwrap();
    }
    scratch.execute(&["ANALYZE events", "ANALYZE states"]);
    let mut conn = sqlx::PgConnection::connect(&format!("{}?options=-csearch_path%3D{}", scratch.url, scratch.name)).await.unwrap();
    let dt = stategate::storage::sql::type_hash("d3", "t5");
    let mut get = Sql::new(statements::GET);
    for a in [Arg::Bytes(dt), Arg::Text("k13".into()), Arg::Text("d3".into()), Arg::Text("t5".into())] {
        get.arg(a);
    }
    let mut by_id = Sql::new(statements::GET_EVENT);
    by_id.arg(Arg::Text(uuid::Uuid::new_v4().to_string()));
    let history = statements::search_events(&EventQuery {
        domain: "d3".into(), ty: "t5".into(), key: Some("k13".into()), filter: Filter::default(), claims_filter: Filter::default(),
        min_time: None, max_time: None, min_version: None, max_version: None, limit: 100, offset: 0, sort: None,
    }).0;
    let time_range = statements::search_events(&EventQuery {
        domain: "d3".into(), ty: "t5".into(), key: None, filter: Filter::default(), claims_filter: Filter::default(),
        min_time: Some(1_001_300), max_time: Some(1_001_310), min_version: None, max_version: None, limit: 100, offset: 0, sort: None,
    }).0;
    let feed_type = statements::feed(&FeedQuery {
        topic: Topic { domain: Some("d3".into()), ty: Some("t5".into()) }, key: None, after_seq: 1500, from_time: None, limit: 512,
    });
    let feed_domain = statements::feed(&FeedQuery { topic: Topic { domain: Some("d3".into()), ty: None }, key: None, after_seq: 1900, from_time: None, limit: 512 });
    let feed_all = statements::feed(&FeedQuery { topic: Topic::ALL, key: None, after_seq: 1990, from_time: None, limit: 512 });
    let mut get_past = Sql::new(statements::GET_PAST);
    for a in [Arg::Bytes(stategate::storage::sql::type_hash("d3", "t5")), Arg::Text("k13".into()), Arg::I64(1000)] {
        get_past.arg(a);
    }
    let search_past = statements::search_states_past(
        &StateQuery { domain: "d3".into(), ty: "t5".into(), filter: Filter::default(), sort: None, limit: 10, offset: 0 },
        1000,
    )
    .sql;
    for (what, sql, index) in [
        ("a state by key", &get, &["states_pkey"][..]),
        ("an event by id", &by_id, &["events_id_key"]),
        ("a record's history", &history, &["events_dt_key_version_key"]),
        ("a time range", &time_range, &["events_by_type_time"]),
        // By type and seq, or (depending on the statistics) by combining
        // the type and domain indexes.
        ("a catch-up page of one type", &feed_type, &["events_by_type_seq", "events_by_type_time", "events_by_domain_seq"]),
        ("a catch-up page of one domain", &feed_domain, &["events_by_domain_seq", "events_pkey"]),
        ("a catch-up page of everything", &feed_all, &["events_pkey"]),
        // As of a past seq: one descent of (dt, key, seq) per record.
        ("a record at a past seq", &get_past, &["events_by_record_seq"]),
        ("a type at a past seq", &search_past, &["events_by_record_seq"]),
    ] {
        let (nodes, indexes) = plan(&mut conn, sql).await;
        assert!(!nodes.iter().any(|n| n == "Seq Scan"), "{what}: the plan scans a table: {nodes:?}");
        assert!(indexes.iter().any(|s| index.contains(&s.as_str())), "{what}: expected one of {index:?}, the plan uses {indexes:?} ({nodes:?})");
    }
    // The gateway's gathered gets: one primary-key probe per lookup, in a
    // generic plan too (what the prepared statement settles on).
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await.unwrap();
    let text = format!("EXPLAIN (FORMAT JSON) {}", statements::GET_MANY);
    let row = sqlx::query(sqlx::AssertSqlSafe(text.as_str()))
        .bind(vec![stategate::storage::sql::type_hash("d3", "t5"), stategate::storage::sql::type_hash("d4", "t1")])
        .bind(vec!["k13", "k2"])
        .bind(vec!["d3", "d4"])
        .bind(vec!["t5", "t1"])
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let (nodes, indexes) = plan_nodes(&row);
    assert!(!nodes.iter().any(|n| n == "Seq Scan"), "gathered gets: the plan scans a table: {nodes:?}");
    // The lookups join states on its key; the head comes from the counter's key.
    assert!(nodes.iter().any(|n| n == "Nested Loop") && indexes == ["states_pkey", "seq_counter_pkey"], "gathered gets: {nodes:?} {indexes:?}");
    drop(s);
}

/// A filtered event search of a type whose events all come after another
/// type's (the bench's shape: one type seeded, then another) must walk the
/// type's own index, not the whole log by seq. In a generic plan (what a
/// prepared statement gets after five runs) `dt = $1 … ORDER BY seq` took
/// the primary key and filtered every older event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_event_search_of_a_late_type_walks_the_type_index() {
    use sqlx::Connection;
    use stategate::storage::postgres::statements;
    let Some(scratch) = Scratch::new(Kind::Postgres) else { return };
    let s = scratch.open().await;
    for ty in ["early", "late"] {
        let writers = (0..8).map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    let r = RecordRef::parse("d", ty, &format!("k{w}-{i}")).unwrap();
                    s.append(put(&r, json!({"g": i % 10, "w": w}))).await.unwrap();
                }
            })
        });
        for w in writers {
            w.await.unwrap();
        }
    }
    scratch.execute(&["ANALYZE events"]);
    let mut conn = sqlx::PgConnection::connect(&format!("{}?options=-csearch_path%3D{}", scratch.url, scratch.name)).await.unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await.unwrap();
    let search = statements::search_events(&EventQuery {
        domain: "d".into(), ty: "late".into(), key: None,
        filter: Filter::from_object("query_string", json!({"g": 3}).as_object().unwrap()).unwrap(), claims_filter: Filter::default(),
        min_time: None, max_time: None, min_version: None, max_version: None, limit: 10, offset: 0, sort: None,
    }).0;
    let (nodes, indexes) = plan(&mut conn, &search).await;
    assert_eq!(indexes, ["events_by_type_seq"], "the plan: {nodes:?} over {indexes:?}");
    assert!(!nodes.iter().any(|n| n == "Seq Scan" || n == "Sort"), "{nodes:?}");
    // And the answer is the late type's first matches, in seq order.
    let found = s.search_events(&EventQuery {
        domain: "d".into(), ty: "late".into(), key: None,
        filter: Filter::from_object("query_string", json!({"g": 3}).as_object().unwrap()).unwrap(), claims_filter: Filter::default(),
        min_time: None, max_time: None, min_version: None, max_version: None, limit: 10, offset: 0, sort: None,
    }).await.unwrap();
    assert_eq!(found.len(), 10);
    assert!(found.windows(2).all(|w| w[0].seq < w[1].seq) && found.iter().all(|e| e.record.ty == "late"));
    drop(s);
}

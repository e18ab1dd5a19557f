//! The storage conformance checks of the query language and of sorted
//! event searches (run for every provider by `storage_conformance!`, which
//! reaches them through `storage_conformance`): each operator, paths through
//! arrays and indexes, type-bracketed comparisons, and the orders of an
//! event search, with offsets and limits, on the provider's real backend.

use crate::storage_conformance::{put, req, unique_domain};
use serde_json::json;
use stategate::model::*;
use stategate::storage::DynStorage;

/// Each operator of the language over one small data set; a provider
/// pushes down what it can and must return what the matcher decides.
pub async fn query_operators(s: DynStorage) {
    let d = unique_domain();
    let rec = |key: &str| RecordRef::parse(&d, "item", key).unwrap();
    for (key, v) in [
        ("a1", json!({"name": "Alpha", "qty": 5, "tags": ["red", "blue"], "sizes": [3, 12],
                      "lines": [{"sku": "x", "n": 2}, {"sku": "y", "n": 9}], "note": "first\nline"})),
        ("b2", json!({"name": "beta", "qty": 12.5, "tags": ["blue"], "sizes": [7],
                      "lines": [{"sku": "x", "n": 7}], "meta": {"v": 2}})),
        ("c3", json!({"name": "Gamma", "qty": "many", "tags": [], "lines": [], "meta": {"v": 1, "w": true}})),
        ("d4", json!({"name": "delta", "qty": null, "tags": "red", "flag": true})),
        ("e5", json!({"qty": -7, "sizes": [[1, 2]], "meta": {"v": [1, 2]}})),
    ] {
        s.append(put(&rec(key), v)).await.unwrap();
    }
    s.append(put(&rec("gone"), json!({"name": "Alpha"}))).await.unwrap();
    s.append(req(&rec("gone"), Change::Delete, Expect::Any)).await.unwrap();
    let search = |filter: &str| {
        let s = s.clone();
        let q = StateQuery {
            domain: d.clone(),
            ty: "item".into(),
            filter: Filter::parse("query_string", filter).unwrap_or_else(|e| panic!("{filter}: {e}")),
            sort: None,
            limit: 100,
            offset: 0,
        };
        async move { s.search_states(&q).await.unwrap().into_iter().map(|s| s.record.key).collect::<Vec<_>>() }
    };
    for (filter, want) in [
        // Logic.
        (r#"{"$or": [{"qty": 5}, {"flag": true}]}"#, &["a1", "d4"][..]),
        (r#"{"$and": [{"tags": "blue"}, {"qty": {"$gt": 10}}]}"#, &["b2"]),
        (r#"{"$nor": [{"tags": "red"}, {"qty": {"$type": "string"}}]}"#, &["b2", "e5"]),
        (r#"{"qty": {"$not": {"$gte": 5}}}"#, &["c3", "d4", "e5"]),
        (r#"{"$or": [{"$and": [{"name": {"$exists": true}}, {"tags": {"$size": 0}}]}, {"meta.v": {"$all": [1, 2]}}]}"#, &["c3", "e5"]),
        // Regular expressions and their options.
        (r#"{"name": {"$regex": "^a"}}"#, &[]),
        (r#"{"name": {"$regex": "^a", "$options": "i"}}"#, &["a1"]),
        (r#"{"name": {"$regex": "ta$"}}"#, &["b2", "d4"]),
        (r#"{"note": {"$regex": "^line$", "$options": "m"}}"#, &["a1"]),
        (r#"{"note": {"$regex": "first.line", "$options": "s"}}"#, &["a1"]),
        (r#"{"name": {"$regex": "g a m", "$options": "xi"}}"#, &["c3"]),
        (r#"{"name": {"$not": {"$regex": "a"}}}"#, &["e5"]),
        (r#"{"tags": {"$regex": "^bl"}}"#, &["a1", "b2"]),
        // Arrays.
        (r#"{"lines": {"$elemMatch": {"sku": "x", "n": {"$gt": 5}}}}"#, &["b2"]),
        (r#"{"lines.sku": "x", "lines.n": {"$gt": 5}}"#, &["a1", "b2"]),
        (r#"{"sizes": {"$elemMatch": {"$gt": 10, "$lt": 13}}}"#, &["a1"]),
        (r#"{"sizes": {"$gt": 5, "$lt": 8}}"#, &["a1", "b2"]),
        (r#"{"tags": {"$all": ["blue", "red"]}}"#, &["a1"]),
        (r#"{"tags": {"$size": 1}}"#, &["b2"]),
        (r#"{"tags.0": "blue"}"#, &["b2"]),
        (r#"{"lines.1.n": 9}"#, &["a1"]),
        (r#"{"sizes.0": [1, 2]}"#, &["e5"]),
        (r#"{"sizes.0": 1}"#, &[]),
        (r#"{"lines.n": {"$in": [7]}}"#, &["b2"]),
        // Types, remainders and comparisons across types.
        (r#"{"qty": {"$type": "number"}}"#, &["a1", "b2", "e5"]),
        (r#"{"qty": {"$type": ["null", "string"]}}"#, &["c3", "d4"]),
        (r#"{"meta": {"$type": "object"}, "meta.v": {"$type": "array"}}"#, &["e5"]),
        (r#"{"qty": {"$mod": [4, 1]}}"#, &["a1"]),
        (r#"{"qty": {"$mod": [4, -3]}}"#, &["e5"]),
        (r#"{"qty": {"$mod": [5, 2]}}"#, &["b2"]),
        (r#"{"qty": {"$gt": "a"}}"#, &["c3"]),
        (r#"{"qty": {"$lt": 0}}"#, &["e5"]),
        (r#"{"qty": {"$gte": null}}"#, &["d4"]),
        (r#"{"meta": {"$gt": {"v": 1}}}"#, &["b2", "c3", "e5"]),
        (r#"{"meta": {"$lt": {"v": 2}}}"#, &["c3"]),
        (r#"{"flag": {"$gt": false}}"#, &["d4"]),
        (r#"{"missing.deep": null, "name": {"$exists": true}}"#, &["a1", "b2", "c3", "d4"]),
    ] {
        assert_eq!(search(filter).await, want, "{filter}");
    }
}

/// Event searches in time order (both ways) and by a values field, with
/// offsets and limits; a deletion sorts as a missing field.
pub async fn sorted_event_search(s: DynStorage) {
    let d = unique_domain();
    let t0 = now_nanos();
    let mut ids = vec![];
    // Times out of append order, and one tie (broken by store order).
    for (key, n, dt) in [("a", 3, 30), ("b", 1, 10), ("a", 2, 20), ("c", 5, 20), ("b", 4, 50)] {
        let mut q = put(&RecordRef::parse(&d, "t", key).unwrap(), json!({"n": n}));
        q.time = t0 + dt;
        ids.push(q.id.clone());
        s.append(q).await.unwrap();
    }
    let mut del = req(&RecordRef::parse(&d, "t", "c").unwrap(), Change::Delete, Expect::Any);
    del.time = t0 + 40;
    ids.push(del.id.clone());
    s.append(del).await.unwrap();
    let search = |field: &str, descending: bool, filter: &str, offset: usize, limit: usize| {
        let s = s.clone();
        let q = EventQuery {
            domain: d.clone(),
            ty: "t".into(),
            key: None,
            filter: Filter::parse("query_string", filter).unwrap(),
            claims_filter: Filter::default(),
            min_time: None,
            max_time: None, min_version: None, max_version: None,
            limit,
            offset,
            sort: Some(EventSort::parse("sort.field", field, descending).unwrap()),
        };
        let ids = ids.clone();
        async move {
            let found = s.search_events(&q).await.unwrap();
            found.iter().map(|e| ids.iter().position(|i| *i == e.id).unwrap()).collect::<Vec<_>>()
        }
    };
    // Events by index of append: times 30, 10, 20, 20, 50, 40 (deletion).
    assert_eq!(search("time", false, "", 0, 100).await, [1, 2, 3, 0, 5, 4]);
    assert_eq!(search("", true, "", 0, 100).await, [4, 5, 0, 3, 2, 1]);
    assert_eq!(search("time", true, "", 1, 2).await, [5, 0]);
    assert_eq!(search("time", false, r#"{"n": {"$gte": 3}}"#, 1, 100).await, [0, 4]);
    // By a values field: the deletion has none, and sorts first.
    assert_eq!(search("values.n", false, "", 0, 100).await, [5, 1, 2, 0, 4, 3]);
    assert_eq!(search("values.n", true, "", 0, 3).await, [3, 4, 0]);
    assert_eq!(search("values.n", true, r#"{"n": {"$lt": 5}}"#, 1, 2).await, [0, 2]);
    let err = EventSort::parse("sort.field", "n", false).unwrap_err().to_string();
    assert!(err.contains("sort.field") && err.contains("values."), "{err}");
}

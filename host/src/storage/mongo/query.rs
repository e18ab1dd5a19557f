//! Searches and the feed as server-side filters, and the pages chosen from
//! what the server returns. The filters are exact for record, key, time,
//! version and seq; a query's conditions are pushed down only as a superset (equality on
//! the BSON copy), and `model::query` decides every result.

use super::db_error;
use crate::model::{Arrival, EventQuery, FeedQuery, Filter, Result, Select, StateQuery, query::Op};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;

/// The live states of the query's domain and type, narrowed by pushdown.
pub(super) fn states(q: &StateQuery) -> Document {
    let mut and = vec![doc! {"d": &q.domain, "t": &q.ty, "live": true}];
    pushdown("doc", "raw", &q.filter, &mut and);
    doc! {"$and": and}
}

/// The query's events, narrowed by pushdown. Equality pushed down never
/// matches a deletion (it has no `doc`), and neither does the matcher: a
/// deletion's values are `{}`.
pub(super) fn events(q: &EventQuery) -> Document {
    let mut first = doc! {"d": &q.domain, "t": &q.ty};
    if let Some(k) = &q.key {
        first.insert("k", k);
    }
    let mut time = Document::new();
    if let Some(t) = q.min_time {
        time.insert("$gte", t);
    }
    if let Some(t) = q.max_time {
        time.insert("$lte", t);
    }
    if !time.is_empty() {
        first.insert("time", time);
    }
    let mut version = Document::new();
    if let Some(v) = q.min_version {
        version.insert("$gte", v as i64);
    }
    if let Some(v) = q.max_version {
        version.insert("$lte", v as i64);
    }
    if !version.is_empty() {
        first.insert("v", version);
    }
    let mut and = vec![first];
    pushdown("doc", "raw", &q.filter, &mut and);
    pushdown("cdoc", "craw", &q.claims_filter, &mut and);
    doc! {"$and": and}
}

/// Exactly the feed's events (void markers excluded); on a standalone
/// server only up to the stable head `stable`.
pub(super) fn feed(q: &FeedQuery, stable: Option<u64>) -> Document {
    let mut filter = doc! {"_id": {"$gt": q.after_seq as i64}, "void": {"$ne": true}};
    if let Some(stable) = stable {
        filter.insert("_id", doc! {"$gt": q.after_seq as i64, "$lte": stable as i64});
    }
    if let Some(d) = &q.topic.domain {
        filter.insert("d", d);
    }
    if let Some(t) = &q.topic.ty {
        filter.insert("t", t);
    }
    if let Some(k) = &q.key {
        filter.insert("k", k);
    }
    if let Some(t) = q.from_time {
        filter.insert("time", doc! {"$gte": t});
    }
    filter
}

/// Streams the documents of `cursor` into the query's page; stops
/// reading once the page is full.
pub(super) async fn select<Q: Select>(
    query: &Q,
    arrival: Arrival,
    mut cursor: mongodb::Cursor<Document>,
    parse: impl Fn(&Document) -> Result<Q::Item>,
) -> Result<Vec<Q::Item>> {
    let mut page = query.page(arrival);
    while let Some(d) = cursor.try_next().await.map_err(db_error)? {
        if !page.offer(parse(&d)?) {
            break;
        }
    }
    Ok(page.finish())
}

/// Server-side conditions selecting a superset of what `filter` matches on
/// the BSON copy `field` (flagged `flag` when it could not be made). Only
/// equality on strings, booleans and numbers is pushed down; MongoDB's
/// equality then matches at least what the shared matcher does (it also
/// matches array elements and numbers across int/double), and the matcher
/// makes the final decision.
fn pushdown(field: &str, flag: &str, filter: &Filter, and: &mut Vec<Document>) {
    // Only conditions every match satisfies (top level and inside `$and`).
    for c in filter.required() {
        let Op::Eq(q) = &c.op else { continue };
        let unsafe_key = |s: &str| s.is_empty() || s.starts_with('$') || s.chars().any(char::is_control);
        if c.path.iter().any(|s| unsafe_key(s) || s.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let value = match q {
            Value::String(s) => Bson::String(s.clone()),
            Value::Bool(b) => Bson::Boolean(*b),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Bson::Int64(i),
                (None, Some(f)) if n.is_f64() && f.is_finite() => Bson::Double(f),
                _ => continue,
            },
            _ => continue,
        };
        let path = format!("{field}.{}", c.path.join("."));
        let mut cond = Document::new();
        cond.insert(path, value);
        and.push(doc! {"$or": [{flag: true}, cond]});
    }
}

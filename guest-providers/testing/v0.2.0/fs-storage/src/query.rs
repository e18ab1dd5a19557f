//! The query language (MongoDB's, as the gateway decides it:
//! host/src/model/query) decided in the guest where that can be done
//! exactly, and left to the host where not.
//!
//! Every decision is three-valued: `Yes` and `No` are certain (the host's
//! matcher would say the same), `Maybe` is "could not tell". A candidate
//! that is `Maybe` is returned and the host decides it, so the guest never
//! leaves out a state that matches. Decided exactly:
//! - paths through objects (a scalar in the middle means missing); a path
//!   that meets an array, or ends on one, is `Maybe` (the host expands
//!   arrays);
//! - `$eq`, `$ne`, `$in`, `$nin` (numbers by value, objects regardless of
//!   field order, a missing field equals null), `$gt`, `$gte`, `$lt`,
//!   `$lte` on numbers, strings, booleans and null (type-bracketed), `$exists`,
//!   `$not` of those, and `$and`, `$or`, `$nor` of them;
//! - everything else (`$regex`, `$type`, `$size`, `$all`, `$elemMatch`,
//!   `$mod`, ranges on objects and arrays) is `Maybe`.
//!
//! Sorting is exact for sort values that are missing, null, numbers,
//! strings or booleans; with any other sort value the guest does not cut
//! the candidates short.

use serde_json::{Map, Number, Value};
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    No,
    Maybe,
}

use Verdict::{Maybe, No, Yes};

impl Verdict {
    fn of(b: bool) -> Verdict {
        if b { Yes } else { No }
    }

    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (No, _) | (_, No) => No,
            (Yes, Yes) => Yes,
            _ => Maybe,
        }
    }

    fn or(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Yes, _) | (_, Yes) => Yes,
            (No, No) => No,
            _ => Maybe,
        }
    }

    fn not(self) -> Verdict {
        match self {
            Yes => No,
            No => Yes,
            Maybe => Maybe,
        }
    }
}

/// Whether `doc` matches the filter object.
pub fn decide(filter: &Map<String, Value>, doc: &Map<String, Value>) -> Verdict {
    let mut verdict = Yes;
    for (key, arg) in filter {
        let v = match key.as_str() {
            "$and" => each(arg, doc, Yes, Verdict::and),
            "$or" => each(arg, doc, No, Verdict::or),
            "$nor" => each(arg, doc, No, Verdict::or).not(),
            k if k.starts_with('$') => Maybe,
            path => field(doc, path, arg),
        };
        verdict = verdict.and(v);
        if verdict == No {
            return No;
        }
    }
    verdict
}

/// The filters of `$and` / `$or` / `$nor`, combined.
fn each(arg: &Value, doc: &Map<String, Value>, start: Verdict, combine: fn(Verdict, Verdict) -> Verdict) -> Verdict {
    let Value::Array(filters) = arg else { return Maybe };
    filters.iter().fold(start, |acc, f| match f {
        Value::Object(f) => combine(acc, decide(f, doc)),
        _ => combine(acc, Maybe),
    })
}

/// What a path reaches.
#[derive(Clone, Copy)]
enum Reach<'a> {
    Missing,
    /// A value that is not an array.
    Leaf(&'a Value),
    /// The path meets an array: the host expands it.
    Unknown,
}

fn reach<'a>(doc: &'a Map<String, Value>, path: &str) -> Reach<'a> {
    let mut segments = path.split('.');
    let Some(first) = segments.next() else { return Reach::Unknown };
    let Some(mut current) = doc.get(first) else { return Reach::Missing };
    for segment in segments {
        current = match current {
            Value::Object(map) => match map.get(segment) {
                Some(v) => v,
                None => return Reach::Missing,
            },
            Value::Array(_) => return Reach::Unknown,
            _ => return Reach::Missing,
        };
    }
    match current {
        Value::Array(_) => Reach::Unknown,
        v => Reach::Leaf(v),
    }
}

fn field(doc: &Map<String, Value>, path: &str, arg: &Value) -> Verdict {
    let at = reach(doc, path);
    match arg {
        Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => operators(at, ops),
        other => operator(at, "$eq", other),
    }
}

fn operators(at: Reach, ops: &Map<String, Value>) -> Verdict {
    let mut verdict = Yes;
    for (op, arg) in ops {
        if op == "$options" {
            continue;
        }
        verdict = verdict.and(operator(at, op, arg));
    }
    verdict
}

fn operator(at: Reach, op: &str, arg: &Value) -> Verdict {
    let v = match at {
        Reach::Unknown => return Maybe,
        Reach::Missing => None,
        Reach::Leaf(v) => Some(v),
    };
    match op {
        "$eq" => eq(v, arg),
        "$ne" => eq(v, arg).not(),
        "$in" => match arg {
            Value::Array(qs) => qs.iter().fold(No, |acc, q| acc.or(eq(v, q))),
            _ => Maybe,
        },
        "$nin" => match arg {
            Value::Array(qs) => qs.iter().fold(No, |acc, q| acc.or(eq(v, q))).not(),
            _ => Maybe,
        },
        "$exists" => {
            // MongoDB's truthiness: false, 0 and null are false.
            let want = !matches!(arg, Value::Bool(false) | Value::Null) && arg.as_f64() != Some(0.0);
            Verdict::of(v.is_some() == want)
        }
        "$gt" => range(v, arg, |o| o == Ordering::Greater),
        "$gte" => range(v, arg, |o| o != Ordering::Less),
        "$lt" => range(v, arg, |o| o == Ordering::Less),
        "$lte" => range(v, arg, |o| o != Ordering::Greater),
        "$not" => match arg {
            Value::Object(ops) => operators(at, ops).not(),
            _ => Maybe,
        },
        _ => Maybe,
    }
}

/// Equality of a reached value (not an array) with `q`.
fn eq(v: Option<&Value>, q: &Value) -> Verdict {
    match v {
        None => Verdict::of(q.is_null()),
        Some(v) => Verdict::of(json_eq(v, q)),
    }
}

/// The host's JSON equality: numbers by value, objects regardless of the
/// order of their fields.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn compare_numbers(x: &Number, y: &Number) -> Ordering {
    match (x.as_i64(), y.as_i64()) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => match (x.as_u64(), y.as_u64()) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => {
                let (a, b) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
                a.partial_cmp(&b).unwrap_or(Ordering::Equal)
            }
        },
    }
}

/// A type-bracketed range condition.
fn range(v: Option<&Value>, q: &Value, want: fn(Ordering) -> bool) -> Verdict {
    if q.is_null() {
        // Null orders only equal to null (and missing).
        return if want(Ordering::Equal) { eq(v, q) } else { No };
    }
    let Some(v) = v else { return No };
    match (v, q) {
        (Value::Number(x), Value::Number(y)) => Verdict::of(want(compare_numbers(x, y))),
        (Value::String(x), Value::String(y)) => Verdict::of(want(x.as_bytes().cmp(y.as_bytes()))),
        (Value::Bool(x), Value::Bool(y)) => Verdict::of(want(x.cmp(y))),
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_)) => Maybe,
        // Different brackets never compare.
        _ => No,
    }
}

/// A sort value the guest orders exactly as the host does.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    /// Missing or null.
    Null,
    Number(Number),
    String(String),
    Bool(bool),
}

/// The sort value at `path` (a number segment indexes an array), or None
/// when it is one the guest does not order (an object or an array).
pub fn sort_key(doc: &Map<String, Value>, path: &[&str]) -> Option<SortKey> {
    let Some((first, rest)) = path.split_first() else { return Some(SortKey::Null) };
    let mut current = match doc.get(*first) {
        Some(v) => v,
        None => return Some(SortKey::Null),
    };
    for segment in rest {
        let next = match current {
            Value::Object(map) => map.get(*segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        current = match next {
            Some(v) => v,
            None => return Some(SortKey::Null),
        };
    }
    match current {
        Value::Null => Some(SortKey::Null),
        Value::Number(n) => Some(SortKey::Number(n.clone())),
        Value::String(s) => Some(SortKey::String(s.clone())),
        Value::Bool(b) => Some(SortKey::Bool(*b)),
        Value::Object(_) | Value::Array(_) => None,
    }
}

impl SortKey {
    /// MongoDB's kind order: null, numbers, strings, (objects, arrays),
    /// booleans.
    fn rank(&self) -> u8 {
        match self {
            SortKey::Null => 0,
            SortKey::Number(_) => 1,
            SortKey::String(_) => 2,
            SortKey::Bool(_) => 5,
        }
    }

    pub fn compare(&self, other: &SortKey) -> Ordering {
        self.rank().cmp(&other.rank()).then_with(|| match (self, other) {
            (SortKey::Number(x), SortKey::Number(y)) => compare_numbers(x, y),
            (SortKey::String(x), SortKey::String(y)) => x.cmp(y),
            (SortKey::Bool(x), SortKey::Bool(y)) => x.cmp(y),
            _ => Ordering::Equal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(filter: Value, doc: Value) -> Verdict {
        decide(filter.as_object().unwrap(), doc.as_object().unwrap())
    }

    #[test]
    fn decides_what_it_can_and_says_maybe_to_the_rest() {
        assert_eq!(d(json!({"a": 1}), json!({"a": 1.0})), Yes);
        assert_eq!(d(json!({"a": 1}), json!({"a": 2})), No);
        assert_eq!(d(json!({"a": null}), json!({})), Yes);
        assert_eq!(d(json!({"a.b": 1}), json!({"a": 5})), No);
        assert_eq!(d(json!({"a.b": 1}), json!({"a": [{"b": 1}]})), Maybe);
        assert_eq!(d(json!({"a": 1}), json!({"a": [1]})), Maybe);
        assert_eq!(d(json!({"a": {"x": 1, "y": 2}}), json!({"a": {"y": 2, "x": 1}})), Yes);
        assert_eq!(d(json!({"n": {"$gte": 3, "$lt": 5}}), json!({"n": 4})), Yes);
        assert_eq!(d(json!({"n": {"$gte": 3}}), json!({"n": "4"})), No);
        assert_eq!(d(json!({"n": {"$gt": null}}), json!({"n": null})), No);
        assert_eq!(d(json!({"n": {"$lte": null}}), json!({})), Yes);
        assert_eq!(d(json!({"n": {"$ne": 1}}), json!({})), Yes);
        assert_eq!(d(json!({"n": {"$nin": [1, 2]}}), json!({"n": 2})), No);
        assert_eq!(d(json!({"n": {"$exists": 0}}), json!({"n": 2})), No);
        assert_eq!(d(json!({"n": {"$not": {"$gt": 3}}}), json!({"n": 2})), Yes);
        assert_eq!(d(json!({"s": {"$regex": "a"}}), json!({"s": "a"})), Maybe);
        assert_eq!(d(json!({"s": {"$regex": "a"}, "n": 1}), json!({"s": "a", "n": 2})), No);
        assert_eq!(d(json!({"$or": [{"n": 1}, {"s": {"$regex": "a"}}]}), json!({"n": 1})), Yes);
        assert_eq!(d(json!({"$nor": [{"n": 1}, {"s": {"$regex": "a"}}]}), json!({"n": 2})), Maybe);
        assert_eq!(d(json!({"$and": [{"n": 1}, {"m": 2}]}), json!({"n": 1, "m": 2})), Yes);
    }

    #[test]
    fn sort_keys_order_as_the_host_does() {
        let doc = json!({"a": [{"b": 3}], "s": "x", "o": {}});
        let doc = doc.as_object().unwrap();
        assert_eq!(sort_key(doc, &["a", "0", "b"]), Some(SortKey::Number(3.into())));
        assert_eq!(sort_key(doc, &["a", "b"]), Some(SortKey::Null));
        assert_eq!(sort_key(doc, &["o"]), None);
        assert!(SortKey::Null.compare(&SortKey::Number(0.into())).is_lt());
        assert!(SortKey::String("a".into()).compare(&SortKey::Bool(false)).is_lt());
    }
}

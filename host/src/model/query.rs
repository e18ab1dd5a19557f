//! `query_string` filters and sort orders over JSON values.
//!
//! v0.5.0 handed `query_string` to MongoDB as a find filter, so clients wrote
//! Mongo-style filters: `{"a.b": 1}` matches when the nested field equals 1
//! (or, for an array field, contains 1), and a value may be an operator object
//! such as `{"$gte": 3}`. This module is the one definition of that language:
//! every storage provider either evaluates it here or pushes down a superset
//! and lets `Filter::matches` decide. Unknown operators are refused, never
//! ignored, so a typo cannot silently widen a query.

use super::{Error, Result, Values};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A conjunction of conditions on fields of a JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The dot-notation path split into segments.
    pub path: Vec<String>,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
}

const OPERATORS: &str = "$eq $ne $gt $gte $lt $lte $in $nin $exists";

impl Filter {
    /// Parses a `query_string`; `field` names it in errors. Empty text is the
    /// filter that matches everything.
    pub fn parse(field: &str, text: &str) -> Result<Filter> {
        if text.trim().is_empty() {
            return Ok(Filter::default());
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid(field, format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Filter::from_object(field, &map),
            other => Err(Error::invalid(
                field,
                format!("must be a JSON object, got {}", type_name(&other)),
            )),
        }
    }

    pub fn from_object(field: &str, map: &Map<String, Value>) -> Result<Filter> {
        let mut conditions = Vec::with_capacity(map.len());
        for (key, value) in map {
            if key.starts_with('$') {
                return Err(Error::invalid(
                    field,
                    format!("unknown top-level operator {key:?}; operators go inside a field: {OPERATORS}"),
                ));
            }
            let path = parse_path(field, key)?;
            match value {
                Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => {
                    if let Some(plain) = ops.keys().find(|k| !k.starts_with('$')) {
                        return Err(Error::invalid(
                            field,
                            format!("{key:?} mixes operators with the plain field {plain:?}"),
                        ));
                    }
                    for (op, arg) in ops {
                        conditions.push(Condition {
                            path: path.clone(),
                            op: parse_op(field, key, op, arg)?,
                        });
                    }
                }
                other => conditions.push(Condition {
                    path,
                    op: Op::Eq(other.clone()),
                }),
            }
        }
        Ok(Filter { conditions })
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    pub fn matches(&self, values: &Values) -> bool {
        self.conditions.iter().all(|c| c.matches(values))
    }
}

fn parse_path(field: &str, key: &str) -> Result<Vec<String>> {
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        return Err(Error::invalid(field, format!("field path {key:?} has an empty segment")));
    }
    Ok(path)
}

fn parse_op(field: &str, key: &str, op: &str, arg: &Value) -> Result<Op> {
    let list = || match arg {
        Value::Array(items) => Ok(items.clone()),
        _ => Err(Error::invalid(field, format!("{op} on {key:?} takes an array"))),
    };
    Ok(match op {
        "$eq" => Op::Eq(arg.clone()),
        "$ne" => Op::Ne(arg.clone()),
        "$gt" => Op::Gt(arg.clone()),
        "$gte" => Op::Gte(arg.clone()),
        "$lt" => Op::Lt(arg.clone()),
        "$lte" => Op::Lte(arg.clone()),
        "$in" => Op::In(list()?),
        "$nin" => Op::Nin(list()?),
        "$exists" => match arg {
            Value::Bool(b) => Op::Exists(*b),
            _ => return Err(Error::invalid(field, format!("$exists on {key:?} takes true or false"))),
        },
        other => {
            return Err(Error::invalid(
                field,
                format!("unknown operator {other:?} on {key:?}; known: {OPERATORS}"),
            ));
        }
    })
}

/// The value at a dot-notation path, if every segment exists.
pub fn lookup<'a>(values: &'a Values, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut current = values.get(first)?;
    for segment in rest {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i))?,
            _ => return None,
        };
    }
    Some(current)
}

impl Condition {
    pub fn matches(&self, values: &Values) -> bool {
        let found = lookup(values, &self.path);
        match &self.op {
            Op::Eq(q) => eq_matches(found, q),
            Op::Ne(q) => !eq_matches(found, q),
            Op::In(qs) => qs.iter().any(|q| eq_matches(found, q)),
            Op::Nin(qs) => !qs.iter().any(|q| eq_matches(found, q)),
            Op::Exists(want) => found.is_some() == *want,
            Op::Gt(q) => range_matches(found, q, |o| o == Ordering::Greater),
            Op::Gte(q) => range_matches(found, q, |o| o != Ordering::Less),
            Op::Lt(q) => range_matches(found, q, |o| o == Ordering::Less),
            Op::Lte(q) => range_matches(found, q, |o| o != Ordering::Greater),
        }
    }
}

/// Mongo equality: a missing field equals null, and an array field matches a
/// query value equal to the whole array or to one of its elements.
fn eq_matches(found: Option<&Value>, q: &Value) -> bool {
    match found {
        None => q.is_null(),
        Some(v) => {
            json_eq(v, q) || matches!(v, Value::Array(items) if items.iter().any(|i| json_eq(i, q)))
        }
    }
}

/// Ranges compare only values of the same kind (numbers with numbers,
/// strings with strings); an array field matches if any element does.
fn range_matches(found: Option<&Value>, q: &Value, want: impl Fn(Ordering) -> bool) -> bool {
    let one = |v: &Value| match (v, q) {
        (Value::Number(_), Value::Number(_)) | (Value::String(_), Value::String(_)) => {
            want(compare_values(Some(v), Some(q)))
        }
        _ => false,
    };
    match found {
        Some(Value::Array(items)) => items.iter().any(one),
        Some(v) => one(v),
        None => false,
    }
}

/// JSON equality with numbers compared by value (1 == 1.0).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn compare_numbers(x: &serde_json::Number, y: &serde_json::Number) -> Ordering {
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

/// Rank of a JSON kind in sort order (MongoDB's: null, numbers, strings,
/// objects, arrays, booleans). A missing field sorts as null.
fn kind_rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 0,
        Some(Value::Number(_)) => 1,
        Some(Value::String(_)) => 2,
        Some(Value::Object(_)) => 3,
        Some(Value::Array(_)) => 4,
        Some(Value::Bool(_)) => 5,
    }
}

/// A total order over optional JSON values, used for sorting.
pub fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let rank = kind_rank(a).cmp(&kind_rank(b));
    if rank != Ordering::Equal {
        return rank;
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => compare_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(x @ (Value::Object(_) | Value::Array(_))), Some(y)) => x.to_string().cmp(&y.to_string()),
        _ => Ordering::Equal,
    }
}

/// Sort order of a state search: by a field of the values, ties broken by key.
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    pub path: Vec<String>,
    pub descending: bool,
}

impl Sort {
    pub fn parse(field: &str, path: &str, descending: bool) -> Result<Option<Sort>> {
        if path.is_empty() {
            return Ok(None);
        }
        Ok(Some(Sort {
            path: parse_path(field, path)?,
            descending,
        }))
    }

    /// Compares two (key, values) pairs in this order.
    pub fn compare(&self, a: (&str, &Values), b: (&str, &Values)) -> Ordering {
        let by_field = compare_values(lookup(a.1, &self.path), lookup(b.1, &self.path));
        let ord = by_field.then_with(|| a.0.cmp(b.0));
        if self.descending { ord.reverse() } else { ord }
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(v: Value) -> Values {
        v.as_object().unwrap().clone()
    }

    fn matches(q: &str, v: Value) -> bool {
        Filter::parse("query_string", q).unwrap().matches(&values(v))
    }

    #[test]
    fn equality_nested_and_arrays() {
        let doc = json!({"name": "ann", "age": 30, "address": {"city": "Paris"}, "tags": ["a", "b"]});
        assert!(matches(r#"{"name": "ann"}"#, doc.clone()));
        assert!(matches(r#"{"address.city": "Paris", "age": 30.0}"#, doc.clone()));
        assert!(!matches(r#"{"address.city": "Lyon"}"#, doc.clone()));
        assert!(matches(r#"{"tags": "b"}"#, doc.clone()));
        assert!(matches(r#"{"tags": ["a", "b"]}"#, doc.clone()));
        assert!(matches(r#"{"missing": null}"#, doc.clone()));
        assert!(!matches(r#"{"age": "30"}"#, doc.clone()));
        assert!(matches("", doc));
    }

    #[test]
    fn operators() {
        let doc = json!({"n": 5, "s": "m", "tags": [1, 9]});
        assert!(matches(r#"{"n": {"$gt": 4, "$lte": 5}}"#, doc.clone()));
        assert!(!matches(r#"{"n": {"$gt": 5}}"#, doc.clone()));
        assert!(!matches(r#"{"n": {"$gt": "4"}}"#, doc.clone()));
        assert!(matches(r#"{"s": {"$in": ["x", "m"]}}"#, doc.clone()));
        assert!(matches(r#"{"s": {"$nin": ["x"]}, "z": {"$exists": false}}"#, doc.clone()));
        assert!(matches(r#"{"tags": {"$gt": 8}}"#, doc.clone()));
        assert!(matches(r#"{"n": {"$ne": 4}}"#, doc));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for bad in [
            "[1]",
            "\"x\"",
            "{",
            r#"{"$or": []}"#,
            r#"{"a": {"$regex": "x"}}"#,
            r#"{"a": {"$in": 3}}"#,
            r#"{"a": {"$gt": 1, "b": 2}}"#,
            r#"{"a..b": 1}"#,
        ] {
            let err = Filter::parse("query_string", bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { ref field, .. } if field == "query_string"), "{bad}: {err}");
        }
    }

    #[test]
    fn sort_order_is_total() {
        let s = Sort::parse("sort_by", "n", false).unwrap().unwrap();
        let (a, b, c) = (values(json!({"n": 2})), values(json!({"n": 10})), values(json!({})));
        assert_eq!(s.compare(("a", &a), ("b", &b)), Ordering::Less);
        assert_eq!(s.compare(("c", &c), ("a", &a)), Ordering::Less);
        let d = Sort { descending: true, ..s };
        assert_eq!(d.compare(("a", &a), ("b", &b)), Ordering::Greater);
    }
}

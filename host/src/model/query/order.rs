//! How JSON values compare: equality with numbers by value, MongoDB's BSON
//! order for the range operators of a query, and the one total order that
//! sorts searches on every provider.

use super::parse::parse_path;
use super::path::lookup;
use crate::model::{Result, Values};
use serde_json::Value;
use std::cmp::Ordering;

/// JSON equality with numbers compared by value (1 == 1.0) and objects
/// regardless of the order of their fields. (MongoDB compares field order
/// too; v0.5.0 stored fields in Go map order, that is in no fixed order, and
/// a protobuf `Struct` keeps none, so order cannot be what a client means.)
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

/// Whether a range operator compares `v` with `q` at all: MongoDB's type
/// brackets (numbers with numbers, strings with strings, and so on).
pub fn same_bracket(v: &Value, q: &Value) -> bool {
    kind_rank(Some(v)) == kind_rank(Some(q))
}

/// MongoDB's BSON order, for the range operators: kinds in the order of
/// `kind_rank`; numbers by value, strings by their UTF-8 bytes, booleans
/// false first; arrays element by element (a prefix first); objects field
/// by field, each pair by its value's kind, then its name, then its value (a
/// prefix first). Fields are taken in name order, consistent with
/// `json_eq` (see there).
pub fn bson_cmp(a: &Value, b: &Value) -> Ordering {
    let rank = kind_rank(Some(a)).cmp(&kind_rank(Some(b)));
    if rank != Ordering::Equal {
        return rank;
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = bson_cmp(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            for ((kx, vx), (ky, vy)) in xs.iter().zip(&ys) {
                let o = kind_rank(Some(vx))
                    .cmp(&kind_rank(Some(vy)))
                    .then_with(|| kx.cmp(ky))
                    .then_with(|| bson_cmp(vx, vy));
                if o != Ordering::Equal {
                    return o;
                }
            }
            xs.len().cmp(&ys.len())
        }
        _ => Ordering::Equal,
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

/// A total order over optional JSON values, used for sorting: kinds as
/// `kind_rank`, objects and arrays by their JSON text (which the SQL
/// providers can reproduce in `ORDER BY`).
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

    /// For candidates arriving in a store's order of this sort's field (a
    /// top-level one): its kind rank as here, then the value as the store
    /// compares it, then the key, each in the sort's direction (the sqlite
    /// field index, `storage/sqlite/field_index.rs`): whether `current`,
    /// and so every candidate after it, sorts after `worst`. Within one
    /// kind the store's order is this one's, except for objects and arrays
    /// (the store orders their JSON text, perhaps otherwise) and integers
    /// beyond i64 (rounded): there only a change of kind decides.
    pub fn sorted_past(&self, worst: &Values, current: &Values) -> bool {
        let (w, c) = (lookup(worst, &self.path), lookup(current, &self.path));
        let (rw, rc) = (kind_rank(w), kind_rank(c));
        let exact = |v: Option<&Value>| match v {
            Some(Value::Object(_) | Value::Array(_)) => false,
            Some(Value::Number(n)) => n.as_i64().is_some() || n.is_f64(),
            _ => true,
        };
        let after = if self.descending { Ordering::Less } else { Ordering::Greater };
        if rc != rw {
            return rc.cmp(&rw) == after;
        }
        // Same kind, same store value: ties come by key, in the sort's
        // direction, so `current` is after `worst`.
        exact(w) && exact(c) && compare_values(c, w) != after.reverse()
    }

    /// Compares two (key, values) pairs in this order.
    pub fn compare(&self, a: (&str, &Values), b: (&str, &Values)) -> Ordering {
        let by_field = compare_values(lookup(a.1, &self.path), lookup(b.1, &self.path));
        let ord = by_field.then_with(|| a.0.cmp(b.0));
        if self.descending { ord.reverse() } else { ord }
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(v: Value) -> Values {
        v.as_object().unwrap().clone()
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

    #[test]
    fn kinds_sort_in_mongo_order() {
        let ordered = [json!(null), json!(-1), json!(2.5), json!("a"), json!({"a": 1}), json!([1]), json!(false), json!(true)];
        for w in ordered.windows(2) {
            assert_eq!(compare_values(Some(&w[0]), Some(&w[1])), Ordering::Less, "{} < {}", w[0], w[1]);
        }
        assert_eq!(compare_values(None, Some(&json!(null))), Ordering::Equal, "missing sorts as null");
        assert!(json_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
    }
}

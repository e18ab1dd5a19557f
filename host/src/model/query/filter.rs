//! Filters: MongoDB's query language over the fields of a JSON object, and
//! the one definition of what a filter matches.
//!
//! A filter is a conjunction of clauses: a condition on a field path (an
//! operator and its argument), or `$and` / `$or` / `$nor` of filters.
//! Parsing (in `parse`) validates and bounds it, so every provider, and the
//! SQL or BSON it builds, only ever sees a filter it can run.
//!
//! Matching follows mongod (the reference is MongoDB's documented
//! behaviour; where a detail is undocumented, mongod's measured behaviour):
//! - a path reaches every value `path::resolve` finds (through arrays);
//!   the condition holds when it holds for one of them;
//! - equality, ranges, `$regex`, `$type` and `$mod` also look into a leaf
//!   array's elements (not into an array reached by index); `$size` and
//!   `$elemMatch` look at the array itself;
//! - equality compares numbers by value and objects regardless of field
//!   order (see `order::json_eq`); a missing field equals `null`;
//! - ranges are *type-bracketed*: a value is compared only with an argument
//!   of the same kind (numbers, strings, objects, arrays, booleans) in
//!   MongoDB's BSON order (`order::bson_cmp`); `$gte`/`$lte` `null` match
//!   null and missing, `$gt`/`$lt` `null` nothing;
//! - negations (`$ne`, `$nin`, `$not`, `$nor`) negate the whole positive
//!   condition, so `{"a": {"$ne": 1}}` does not match `{"a": [1, 2]}`.

use super::order::{bson_cmp, json_eq, same_bracket};
use super::path::{Reached, resolve};
use super::pattern::Pattern;
use crate::model::Values;
use serde_json::Value;
use std::cmp::Ordering;

/// A conjunction of clauses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub clauses: Vec<Clause>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// A condition on one field path.
    Field(Condition),
    /// `$and`: every filter matches (non-empty).
    And(Vec<Filter>),
    /// `$or`: one of the filters matches (non-empty).
    Or(Vec<Filter>),
    /// `$nor`: none of the filters matches (non-empty).
    Nor(Vec<Filter>),
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
    /// `$regex` (with `$options`): a string value matches the pattern.
    Regex(Pattern),
    /// `$not`: the conjunction of these operators does not hold.
    Not(Vec<Op>),
    ElemMatch(ElemMatch),
    /// `$size`: an array of exactly this many elements.
    Size(u64),
    /// `$all`: equal to every value (`$and` of `$eq`); an empty list matches
    /// nothing.
    All(Vec<Value>),
    /// `$type`: one of these kinds.
    Type(Vec<Kind>),
    /// `$mod: [divisor, remainder]`: a number, truncated toward zero, with
    /// this remainder (its sign is the number's).
    Mod { divisor: i64, remainder: i64 },
}

/// `$elemMatch`: some element of an array satisfies it.
#[derive(Debug, Clone, PartialEq)]
pub enum ElemMatch {
    /// `{"$elemMatch": {"$gte": 80, "$lt": 85}}`: operators on the element
    /// itself (not looking into it when it is an array).
    Value(Vec<Op>),
    /// `{"$elemMatch": {"product": "x", "qty": {"$gt": 1}}}`: a filter on an
    /// element that is an object (an empty filter also takes an array).
    Object(Filter),
}

/// A `$type` name (MongoDB's aliases and codes). JSON has one number type
/// and v0.5.0 stored every number as a BSON double, so every numeric alias
/// (`double int long decimal number`) matches every number; the kinds JSON
/// cannot hold (`date`, `objectId`, `binData`, …) are accepted and match
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Number,
    String,
    Object,
    Array,
    Bool,
    /// A BSON type no JSON value has.
    None,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether `values` satisfy every clause. A deletion event has no
    /// values: its callers pass the empty object (see `EventQuery::matches`).
    pub fn matches(&self, values: &Values) -> bool {
        self.clauses.iter().all(|c| c.matches(values))
    }

    /// The field conditions that must all hold (those at the top level and
    /// inside top-level `$and`s): what a provider may narrow by. A document
    /// failing one of them cannot match.
    pub fn required(&self) -> Vec<&Condition> {
        let mut out = vec![];
        for clause in &self.clauses {
            match clause {
                Clause::Field(c) => out.push(c),
                Clause::And(filters) => filters.iter().for_each(|f| out.extend(f.required())),
                Clause::Or(_) | Clause::Nor(_) => {}
            }
        }
        out
    }
}

impl Clause {
    pub fn matches(&self, values: &Values) -> bool {
        match self {
            Clause::Field(c) => c.matches(values),
            Clause::And(fs) => fs.iter().all(|f| f.matches(values)),
            Clause::Or(fs) => fs.iter().any(|f| f.matches(values)),
            Clause::Nor(fs) => !fs.iter().any(|f| f.matches(values)),
        }
    }
}

impl Condition {
    pub fn matches(&self, values: &Values) -> bool {
        self.op.matches(&resolve(values, &self.path))
    }
}

impl Op {
    /// Whether the operator holds for the values a path reached.
    pub fn matches(&self, reached: &[Reached]) -> bool {
        match self {
            Op::Eq(q) => eq(reached, q),
            Op::Ne(q) => !eq(reached, q),
            Op::In(qs) => qs.iter().any(|q| eq(reached, q)),
            Op::Nin(qs) => !qs.iter().any(|q| eq(reached, q)),
            Op::All(qs) => !qs.is_empty() && qs.iter().all(|q| eq(reached, q)),
            Op::Exists(want) => reached.iter().any(|r| r.value.is_some()) == *want,
            Op::Gt(q) => range(reached, q, |o| o == Ordering::Greater),
            Op::Gte(q) => range(reached, q, |o| o != Ordering::Less),
            Op::Lt(q) => range(reached, q, |o| o == Ordering::Less),
            Op::Lte(q) => range(reached, q, |o| o != Ordering::Greater),
            Op::Regex(p) => any_leaf(reached, |v| matches!(v, Value::String(s) if p.is_match(s))),
            Op::Type(kinds) => any_leaf(reached, |v| kinds.iter().any(|k| k.of(v))),
            Op::Mod { divisor, remainder } => any_leaf(reached, |v| mod_matches(v, *divisor, *remainder)),
            Op::Not(ops) => !ops.iter().all(|op| op.matches(reached)),
            Op::Size(n) => reached
                .iter()
                .any(|r| matches!(r.value, Some(Value::Array(items)) if items.len() as u64 == *n)),
            Op::ElemMatch(em) => reached
                .iter()
                .any(|r| matches!(r.value, Some(Value::Array(items)) if items.iter().any(|e| em.matches(e)))),
        }
    }
}

impl ElemMatch {
    fn matches(&self, element: &Value) -> bool {
        match self {
            ElemMatch::Value(ops) => {
                let one = [Reached::terminal(element)];
                ops.iter().all(|op| op.matches(&one))
            }
            ElemMatch::Object(filter) => match element {
                Value::Object(map) => filter.matches(map),
                Value::Array(_) => filter.is_empty(),
                _ => false,
            },
        }
    }
}

impl Kind {
    pub fn of(self, v: &Value) -> bool {
        matches!(
            (self, v),
            (Kind::Null, Value::Null)
                | (Kind::Number, Value::Number(_))
                | (Kind::String, Value::String(_))
                | (Kind::Object, Value::Object(_))
                | (Kind::Array, Value::Array(_))
                | (Kind::Bool, Value::Bool(_))
        )
    }
}

/// Whether `pred` holds for a reached value or an element of it.
fn any_leaf(reached: &[Reached], mut pred: impl FnMut(&Value) -> bool) -> bool {
    reached.iter().any(|r| r.any_leaf(&mut pred))
}

/// Mongo equality: a missing field equals null, and an array field (not
/// reached by index) matches a value equal to the whole array or to one of
/// its elements.
fn eq(reached: &[Reached], q: &Value) -> bool {
    reached.iter().any(|r| match r.value {
        None => q.is_null(),
        Some(_) => r.any_leaf(&mut |v| json_eq(v, q)),
    })
}

/// Type-bracketed comparison with `q` (see the module comment).
fn range(reached: &[Reached], q: &Value, want: impl Fn(Ordering) -> bool) -> bool {
    if q.is_null() {
        // Null orders only equal to null (and missing): `$gte`/`$lte` are
        // `$eq: null`, `$gt`/`$lt` match nothing.
        return want(Ordering::Equal) && eq(reached, q);
    }
    reached
        .iter()
        .any(|r| r.any_leaf(&mut |v| same_bracket(v, q) && want(bson_cmp(v, q))))
}

fn mod_matches(v: &Value, divisor: i64, remainder: i64) -> bool {
    let Value::Number(n) = v else { return false };
    let truncated = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i as i128,
        // A u64 beyond i64, or a float truncated toward zero.
        (None, Some(f)) if f.is_finite() => f.trunc() as i128,
        _ => return false,
    };
    truncated % divisor as i128 == remainder as i128
}

/// The kind of a JSON value as error messages name it.
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

    fn matches(q: &str, v: Value) -> bool {
        Filter::parse("query_string", q).unwrap().matches(v.as_object().unwrap())
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
        assert!(matches(r#"{"n": {"$ne": 4}}"#, doc.clone()));
        assert!(!matches(r#"{"tags": {"$ne": 9}}"#, doc));
    }

    #[test]
    fn paths_through_arrays_and_indexes() {
        let doc = json!({"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 7}], "tags": ["x", "y"], "grid": [[1, 2]]});
        assert!(matches(r#"{"items.sku": "b"}"#, doc.clone()));
        assert!(matches(r#"{"items.qty": {"$gt": 5}}"#, doc.clone()));
        assert!(matches(r#"{"tags.0": "x"}"#, doc.clone()) && !matches(r#"{"tags.1": "x"}"#, doc.clone()));
        assert!(matches(r#"{"items.1.sku": "b"}"#, doc.clone()));
        assert!(!matches(r#"{"grid.0": 1}"#, doc.clone()), "an array reached by index is not expanded");
        assert!(matches(r#"{"grid.0": [1, 2]}"#, doc.clone()));
        assert!(matches(r#"{"items.color": null}"#, doc.clone()));
        assert!(!matches(r#"{"tags.5": {"$exists": true}}"#, doc));
    }

    #[test]
    fn logic() {
        let doc = json!({"a": 1, "b": "x"});
        assert!(matches(r#"{"$or": [{"a": 2}, {"b": "x"}]}"#, doc.clone()));
        assert!(!matches(r#"{"$and": [{"a": 1}, {"b": "y"}]}"#, doc.clone()));
        assert!(matches(r#"{"$nor": [{"a": 2}, {"b": "y"}]}"#, doc.clone()));
        assert!(matches(r#"{"a": {"$not": {"$gt": 3}}}"#, doc.clone()));
        assert!(matches(r#"{"z": {"$not": {"$gt": 3}}}"#, doc.clone()), "missing is not greater");
        assert!(!matches(r#"{"b": {"$not": {"$regex": "^x"}}}"#, doc));
    }

    #[test]
    fn array_operators() {
        let doc = json!({"t": ["a", "b", "c"], "s": [{"p": "x", "q": 2}, {"p": "y", "q": 9}], "n": [3, 12]});
        assert!(matches(r#"{"t": {"$all": ["c", "a"]}}"#, doc.clone()));
        assert!(!matches(r#"{"t": {"$all": ["a", "z"]}}"#, doc.clone()));
        assert!(!matches(r#"{"t": {"$all": []}}"#, doc.clone()));
        assert!(matches(r#"{"t": {"$size": 3}}"#, doc.clone()) && !matches(r#"{"t": {"$size": 2}}"#, doc.clone()));
        assert!(matches(r#"{"s": {"$elemMatch": {"p": "y", "q": {"$gt": 5}}}}"#, doc.clone()));
        assert!(!matches(r#"{"s": {"$elemMatch": {"p": "x", "q": {"$gt": 5}}}}"#, doc.clone()));
        assert!(matches(r#"{"n": {"$elemMatch": {"$gt": 10, "$lt": 13}}}"#, doc.clone()));
        assert!(!matches(r#"{"n": {"$elemMatch": {"$gt": 4, "$lt": 10}}}"#, doc.clone()));
        assert!(matches(r#"{"n": {"$gt": 4, "$lt": 10}}"#, doc), "without $elemMatch, different elements may match");
    }

    #[test]
    fn types_and_mod() {
        let doc = json!({"n": -7, "f": 7.9, "s": "x", "a": [1, "y"], "o": {}, "z": null, "b": true});
        for (path, kind) in [("n", "number"), ("f", "double"), ("s", "string"), ("a", "array"), ("a", "string"), ("o", "object"), ("z", "null"), ("b", "bool")] {
            assert!(matches(&format!(r#"{{"{path}": {{"$type": "{kind}"}}}}"#), doc.clone()), "{path} {kind}");
        }
        assert!(matches(r#"{"s": {"$type": [8, 2]}}"#, doc.clone()));
        assert!(!matches(r#"{"s": {"$type": "date"}}"#, doc.clone()));
        assert!(matches(r#"{"n": {"$mod": [4, -3]}}"#, doc.clone()), "the remainder takes the number's sign");
        assert!(matches(r#"{"f": {"$mod": [4, 3]}}"#, doc.clone()), "7.9 truncates to 7");
        assert!(!matches(r#"{"s": {"$mod": [4, 3]}}"#, doc));
    }

    #[test]
    fn comparisons_are_type_bracketed_in_bson_order() {
        let doc = json!({"n": 5, "o": {"a": 2}, "a": [1, 3], "b": true, "z": null});
        assert!(!matches(r#"{"n": {"$lt": "a"}}"#, doc.clone()), "numbers never compare with strings");
        assert!(matches(r#"{"o": {"$gt": {"a": 1}}}"#, doc.clone()));
        assert!(matches(r#"{"o": {"$lt": {"b": 0}}}"#, doc.clone()), "field names before values");
        assert!(matches(r#"{"a": {"$gt": [1, 2]}}"#, doc.clone()), "whole arrays compare element by element");
        assert!(matches(r#"{"b": {"$gt": false}}"#, doc.clone()));
        assert!(matches(r#"{"z": {"$gte": null}}"#, doc.clone()) && matches(r#"{"y": {"$lte": null}}"#, doc.clone()));
        assert!(!matches(r#"{"z": {"$gt": null}}"#, doc));
    }

    #[test]
    fn regexes() {
        let doc = json!({"s": "Hello\nWorld", "t": ["abc", "xyz"], "n": 12});
        assert!(matches(r#"{"s": {"$regex": "^world", "$options": "im"}}"#, doc.clone()));
        assert!(!matches(r#"{"s": {"$regex": "^world", "$options": "i"}}"#, doc.clone()));
        assert!(matches(r#"{"t": {"$regex": "y"}}"#, doc.clone()));
        assert!(!matches(r#"{"n": {"$regex": "1"}}"#, doc), "numbers are not strings");
    }
}

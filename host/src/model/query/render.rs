//! A parsed filter written back as the query language's JSON: what a
//! provider that takes the language itself (a wasm guest, through WIT
//! 0.2.0's `query-states`) is handed.
//!
//! Invariant: `Filter::from_object(f.to_json())` is `f` (the same clauses,
//! in the same order), so the guest reads the filter the host will check
//! its answer with. Conditions on one path share one operator object, as a
//! client writes them (`{"n": {"$gte": 1, "$lt": 5}}`); `$eq` is always
//! spelled out, so a value that looks like an operator object stays a value.

use super::filter::{Clause, ElemMatch, Filter, Kind, Op};
use serde_json::{Map, Value, json};

impl Filter {
    /// This filter as a JSON object (`{}` for the empty filter).
    pub fn to_json(&self) -> Value {
        Value::Object(self.to_object())
    }

    fn to_object(&self) -> Map<String, Value> {
        let mut out = Map::new();
        // Clauses that cannot share the object (a second `$or`, a second
        // condition of one operator on one path: only a filter built in
        // code has them) go into an `$and`, which means the same.
        let mut overflow: Vec<Value> = Vec::new();
        for clause in &self.clauses {
            match clause {
                Clause::Field(c) => {
                    let (name, arg) = op_entry(&c.op);
                    let key = c.path.join(".");
                    let ops = out.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                    let Value::Object(ops) = ops else { unreachable!("path entries are operator objects") };
                    if ops.contains_key(name) {
                        overflow.push(json!({ key: { name: arg } }));
                    } else {
                        ops.insert(name.to_owned(), arg);
                        if let Op::Regex(p) = &c.op
                            && !p.options.is_empty()
                        {
                            ops.insert("$options".into(), Value::String(p.options.clone()));
                        }
                    }
                }
                Clause::And(fs) => logical(&mut out, &mut overflow, "$and", fs),
                Clause::Or(fs) => logical(&mut out, &mut overflow, "$or", fs),
                Clause::Nor(fs) => logical(&mut out, &mut overflow, "$nor", fs),
            }
        }
        if !overflow.is_empty() {
            match out.entry("$and").or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(list) => list.extend(overflow),
                _ => unreachable!("$and holds a list"),
            }
        }
        out
    }
}

fn logical(out: &mut Map<String, Value>, overflow: &mut Vec<Value>, name: &str, filters: &[Filter]) {
    let list = Value::Array(filters.iter().map(Filter::to_json).collect());
    if out.contains_key(name) {
        overflow.push(json!({ name: list }));
    } else {
        out.insert(name.to_owned(), list);
    }
}

/// An operator's name and argument.
fn op_entry(op: &Op) -> (&'static str, Value) {
    match op {
        Op::Eq(v) => ("$eq", v.clone()),
        Op::Ne(v) => ("$ne", v.clone()),
        Op::Gt(v) => ("$gt", v.clone()),
        Op::Gte(v) => ("$gte", v.clone()),
        Op::Lt(v) => ("$lt", v.clone()),
        Op::Lte(v) => ("$lte", v.clone()),
        Op::In(vs) => ("$in", Value::Array(vs.clone())),
        Op::Nin(vs) => ("$nin", Value::Array(vs.clone())),
        Op::All(vs) => ("$all", Value::Array(vs.clone())),
        Op::Exists(b) => ("$exists", Value::Bool(*b)),
        Op::Regex(p) => ("$regex", Value::String(p.source.clone())),
        Op::Not(ops) => ("$not", Value::Object(ops_object(ops))),
        Op::ElemMatch(ElemMatch::Value(ops)) => ("$elemMatch", Value::Object(ops_object(ops))),
        Op::ElemMatch(ElemMatch::Object(f)) => ("$elemMatch", f.to_json()),
        Op::Size(n) => ("$size", json!(n)),
        Op::Type(kinds) => ("$type", Value::Array(kinds.iter().map(|k| Value::String(kind_name(*k).into())).collect())),
        Op::Mod { divisor, remainder } => ("$mod", json!([divisor, remainder])),
    }
}

/// Operators on one value, as one object (`$not`, `$elemMatch`).
fn ops_object(ops: &[Op]) -> Map<String, Value> {
    let mut out = Map::new();
    for op in ops {
        let (name, arg) = op_entry(op);
        out.insert(name.to_owned(), arg);
        if let Op::Regex(p) = op
            && !p.options.is_empty()
        {
            out.insert("$options".into(), Value::String(p.options.clone()));
        }
    }
    out
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Null => "null",
        Kind::Number => "number",
        Kind::String => "string",
        Kind::Object => "object",
        Kind::Array => "array",
        Kind::Bool => "bool",
        // Any of the BSON types no JSON value has.
        Kind::None => "date",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) {
        let f = Filter::parse("q", text).unwrap();
        let back = Filter::from_object("q", f.to_json().as_object().unwrap()).unwrap();
        assert_eq!(back, f, "{text} -> {}", f.to_json());
    }

    #[test]
    fn every_operator_reads_back_as_it_was() {
        for text in [
            "",
            r#"{"a": 1}"#,
            r#"{"a.b": {"x": 1}}"#,
            r#"{"a": {"$eq": {"$gt": 1}}}"#,
            r#"{"n": {"$gte": 1, "$lt": 5}, "s": {"$ne": "x"}}"#,
            r#"{"t": {"$in": [1, "a", null]}, "u": {"$nin": []}, "v": {"$all": [1, 2]}}"#,
            r#"{"e": {"$exists": 0}, "f": {"$exists": "yes"}}"#,
            r#"{"name": {"$regex": "^a.c", "$options": "i"}, "other": {"$regex": "x"}}"#,
            r#"{"n": {"$not": {"$gt": 3, "$regex": "z", "$options": "s"}}}"#,
            r#"{"xs": {"$elemMatch": {"$gte": 80, "$lt": 85}}}"#,
            r#"{"xs": {"$elemMatch": {"product": "x", "qty": {"$gt": 1}}}}"#,
            r#"{"xs": {"$elemMatch": {"$or": [{"a": 1}, {"b": 2}]}}}"#,
            r#"{"xs": {"$elemMatch": {}}}"#,
            r#"{"xs": {"$size": 2}, "y": {"$type": ["int", "string", 3, "date", "null", "bool", "array"]}}"#,
            r#"{"m": {"$mod": [4, -1]}}"#,
            r#"{"$or": [{"a": 1}, {"$and": [{"b": 2}, {"c": {"$lt": 0}}]}], "$nor": [{"d": null}], "z": 0}"#,
        ] {
            round_trip(text);
        }
    }

    #[test]
    fn clauses_that_cannot_share_an_object_go_into_an_and() {
        let one = Filter::parse("q", r#"{"a": {"$gt": 1}, "$or": [{"b": 1}]}"#).unwrap();
        let two = Filter::parse("q", r#"{"a": {"$gt": 5}, "$or": [{"c": 1}], "$and": [{"d": 1}]}"#).unwrap();
        let both = Filter { clauses: one.clauses.iter().chain(&two.clauses).cloned().collect() };
        let json = both.to_json();
        let back = Filter::from_object("q", json.as_object().unwrap()).unwrap();
        for (values, expect) in [
            (serde_json::json!({"a": 6, "b": 1, "c": 1, "d": 1}), true),
            (serde_json::json!({"a": 3, "b": 1, "c": 1, "d": 1}), false),
            (serde_json::json!({"a": 6, "b": 1, "d": 1}), false),
            (serde_json::json!({"a": 6, "b": 1, "c": 1}), false),
        ] {
            let values = values.as_object().unwrap().clone();
            assert_eq!(both.matches(&values), expect, "{values:?}");
            assert_eq!(back.matches(&values), expect, "{json} on {values:?}");
        }
    }
}

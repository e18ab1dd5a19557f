//! Parsing `query_string` / `claims_query` text into a `Filter`: where a
//! query is validated and bounded.
//!
//! Bounds (past any of them the query is `INVALID_ARGUMENT` naming the
//! field and what is wrong, so no query can cost a provider much):
//! - `MAX_CONDITIONS` operator conditions in all (one per field equality or
//!   operator, nested ones included);
//! - `MAX_CLAUSES` filters in all `$and` / `$or` / `$nor` lists together;
//! - `MAX_DEPTH` levels of nesting of `$and $or $nor $not $elemMatch`;
//! - `MAX_LIST_VALUES` values in all `$in`, `$nin`, `$all` and `$type`
//!   lists together;
//! - field paths of at most `MAX_PATH_SEGMENTS` segments and
//!   `MAX_PATH_BYTES` bytes, holding no control character;
//! - `$regex` patterns as `pattern` bounds them.
//!
//! Unknown operators are refused naming the operator, never ignored, so a
//! typo cannot silently widen a query.

use super::filter::{Clause, Condition, ElemMatch, Filter, Kind, Op, type_name};
use super::pattern::{MAX_REGEXES, Pattern};
use crate::model::{Error, Result};
use serde_json::{Map, Value};

/// Most operator conditions (one per field equality or operator) in one
/// filter, nested ones included.
pub const MAX_CONDITIONS: usize = 256;
/// Most filters in all `$and`, `$or` and `$nor` lists of one filter.
pub const MAX_CLAUSES: usize = 256;
/// Deepest nesting of `$and $or $nor $not $elemMatch`.
pub const MAX_DEPTH: usize = 16;
/// Most values in all `$in`, `$nin`, `$all` and `$type` lists of one filter.
pub const MAX_LIST_VALUES: usize = 1024;
/// Most segments in a dot-notation field path.
pub const MAX_PATH_SEGMENTS: usize = 32;
/// Longest dot-notation field path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

const OPERATORS: &str = "$eq $ne $gt $gte $lt $lte $in $nin $exists $regex $options $not $elemMatch $size $all $type $mod";
const LOGICAL: &str = "$and $or $nor";

impl Filter {
    /// Parses a `query_string`; `field` names it in errors. Empty text is the
    /// filter that matches everything.
    pub fn parse(field: &str, text: &str) -> Result<Filter> {
        if text.trim().is_empty() {
            return Ok(Filter::default());
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::invalid(field, format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Filter::from_object(field, &map),
            other => Err(Error::invalid(field, format!("must be a JSON object, got {}", type_name(&other)))),
        }
    }

    /// The filter an already parsed JSON object describes, validated and
    /// bounded as `parse` does.
    pub fn from_object(field: &str, map: &Map<String, Value>) -> Result<Filter> {
        Parser { field, conditions: 0, clauses: 0, listed: 0, regexes: 0 }.filter(map, 0)
    }
}

/// What a filter parsed so far has used of its bounds.
struct Parser<'f> {
    field: &'f str,
    conditions: usize,
    clauses: usize,
    listed: usize,
    regexes: usize,
}

impl Parser<'_> {
    fn invalid(&self, why: String) -> Error {
        Error::invalid(self.field, why)
    }

    fn filter(&mut self, map: &Map<String, Value>, depth: usize) -> Result<Filter> {
        let mut clauses = Vec::with_capacity(map.len().min(MAX_CONDITIONS));
        for (key, value) in map {
            if let Some(op) = key.strip_prefix('$') {
                let filters = self.logical(key, value, depth)?;
                clauses.push(match op {
                    "and" => Clause::And(filters),
                    "or" => Clause::Or(filters),
                    _ => Clause::Nor(filters),
                });
                continue;
            }
            let path = parse_path(self.field, key)?;
            for op in self.field_ops(key, value, depth)? {
                clauses.push(Clause::Field(Condition { path: path.clone(), op }));
            }
        }
        Ok(Filter { clauses })
    }

    /// The filters of `$and` / `$or` / `$nor`.
    fn logical(&mut self, key: &str, value: &Value, depth: usize) -> Result<Vec<Filter>> {
        if !matches!(key, "$and" | "$or" | "$nor") {
            return Err(self.invalid(format!(
                "unknown top-level operator {}; known: {LOGICAL} (field operators go inside a field: {OPERATORS})",
                shown(key)
            )));
        }
        self.deeper(key, depth)?;
        let Value::Array(items) = value else {
            return Err(self.invalid(format!("{key} takes a non-empty array of objects, got {}", type_name(value))));
        };
        if items.is_empty() {
            return Err(self.invalid(format!("{key} takes a non-empty array of objects, got an empty array")));
        }
        let mut filters = Vec::with_capacity(items.len().min(MAX_CLAUSES));
        for item in items {
            self.clauses += 1;
            if self.clauses > MAX_CLAUSES {
                return Err(self.invalid(format!("more than {MAX_CLAUSES} filters in $and, $or and $nor lists")));
            }
            let Value::Object(map) = item else {
                return Err(self.invalid(format!("{key} takes objects, got {}", type_name(item))));
            };
            filters.push(self.filter(map, depth + 1)?);
        }
        Ok(filters)
    }

    fn deeper(&self, what: &str, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(self.invalid(format!("{what} is nested more than {MAX_DEPTH} levels deep")));
        }
        Ok(())
    }

    /// The operators a field's value stands for: an operator object, or
    /// equality with anything else.
    fn field_ops(&mut self, key: &str, value: &Value, depth: usize) -> Result<Vec<Op>> {
        match value {
            Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => self.operators(key, ops, depth),
            other => Ok(vec![self.op(key, "$eq", other, None, depth)?]),
        }
    }

    fn operators(&mut self, key: &str, ops: &Map<String, Value>, depth: usize) -> Result<Vec<Op>> {
        if let Some(plain) = ops.keys().find(|k| !k.starts_with('$')) {
            return Err(self.invalid(format!("{} mixes operators with the plain field {}", shown(key), shown(plain))));
        }
        let options = ops.get("$options");
        if options.is_some() && !ops.contains_key("$regex") {
            return Err(self.invalid(format!("$options on {} needs a $regex beside it", shown(key))));
        }
        ops.iter()
            .filter(|(op, _)| *op != "$options")
            .map(|(op, arg)| self.op(key, op, arg, options, depth))
            .collect()
    }

    fn op(&mut self, key: &str, op: &str, arg: &Value, options: Option<&Value>, depth: usize) -> Result<Op> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(self.invalid(format!("more than {MAX_CONDITIONS} conditions")));
        }
        let on = shown(key);
        Ok(match op {
            "$eq" => Op::Eq(arg.clone()),
            "$ne" => Op::Ne(arg.clone()),
            "$gt" => Op::Gt(arg.clone()),
            "$gte" => Op::Gte(arg.clone()),
            "$lt" => Op::Lt(arg.clone()),
            "$lte" => Op::Lte(arg.clone()),
            "$in" => Op::In(self.values(op, &on, arg)?),
            "$nin" => Op::Nin(self.values(op, &on, arg)?),
            "$all" => Op::All(self.values(op, &on, arg)?),
            // MongoDB's truthiness: false, 0 and null are false.
            "$exists" => Op::Exists(!matches!(arg, Value::Bool(false) | Value::Null) && arg.as_f64() != Some(0.0)),
            "$regex" => {
                let Value::String(source) = arg else {
                    return Err(self.invalid(format!("$regex on {on} takes a string, got {}", type_name(arg))));
                };
                let options = match options {
                    None => "",
                    Some(Value::String(o)) => o.as_str(),
                    Some(other) => {
                        return Err(self.invalid(format!("$options on {on} takes a string, got {}", type_name(other))));
                    }
                };
                self.regexes += 1;
                if self.regexes > MAX_REGEXES {
                    return Err(self.invalid(format!("more than {MAX_REGEXES} $regex patterns")));
                }
                Op::Regex(Pattern::compile(self.field, &on, source, options)?)
            }
            "$not" => {
                self.deeper("$not", depth)?;
                match arg {
                    Value::Object(ops) if !ops.is_empty() => {
                        if let Some(plain) = ops.keys().find(|k| !k.starts_with('$')) {
                            return Err(self.invalid(format!(
                                "$not on {on} takes operators, got the plain field {}",
                                shown(plain)
                            )));
                        }
                        Op::Not(self.operators(key, ops, depth + 1)?)
                    }
                    _ => {
                        return Err(self.invalid(format!(
                            "$not on {on} takes a non-empty object of operators (such as {{\"$regex\": …}})"
                        )));
                    }
                }
            }
            "$elemMatch" => {
                self.deeper("$elemMatch", depth)?;
                let Value::Object(inner) = arg else {
                    return Err(self.invalid(format!("$elemMatch on {on} takes an object, got {}", type_name(arg))));
                };
                // mongod's rule: operators on the element itself when the
                // first key is an operator other than a logical one.
                match inner.keys().next() {
                    Some(first) if first.starts_with('$') && !matches!(first.as_str(), "$and" | "$or" | "$nor") => {
                        ElemMatch::Value(self.operators(key, inner, depth + 1)?).into()
                    }
                    _ => ElemMatch::Object(self.filter(inner, depth + 1)?).into(),
                }
            }
            "$size" => match arg.as_f64() {
                Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => Op::Size(n as u64),
                _ => return Err(self.invalid(format!("$size on {on} takes a whole number >= 0, got {arg}"))),
            },
            "$type" => {
                let names = match arg {
                    Value::Array(items) if items.is_empty() => {
                        return Err(self.invalid(format!("$type on {on} takes at least one type")));
                    }
                    Value::Array(items) => items.as_slice(),
                    one => std::slice::from_ref(one),
                };
                self.count_listed(names.len())?;
                Op::Type(names.iter().map(|n| self.kind(&on, n)).collect::<Result<_>>()?)
            }
            "$mod" => {
                let bad = |why: &str| self.invalid(format!("$mod on {on} takes [divisor, remainder]: {why}"));
                let Value::Array(items) = arg else { return Err(bad("not an array")) };
                let [d, r] = items.as_slice() else {
                    return Err(bad(&format!("got {} elements", items.len())));
                };
                let whole = |v: &Value| match v.as_i64() {
                    Some(i) => Some(i),
                    None => v.as_f64().filter(|f| f.abs() < 9.2e18).map(|f| f.trunc() as i64),
                };
                let (Some(divisor), Some(remainder)) = (whole(d), whole(r)) else {
                    return Err(bad("both must be numbers within 64-bit integers"));
                };
                if divisor == 0 {
                    return Err(bad("the divisor cannot be 0"));
                }
                Op::Mod { divisor, remainder }
            }
            other => {
                return Err(self.invalid(format!("unknown operator {} on {on}; known: {OPERATORS}", shown(other))));
            }
        })
    }

    /// The list of `$in` / `$nin` / `$all`, counted against the bound.
    fn values(&mut self, op: &str, on: &str, arg: &Value) -> Result<Vec<Value>> {
        let Value::Array(items) = arg else {
            return Err(self.invalid(format!("{op} on {on} takes an array, got {}", type_name(arg))));
        };
        self.count_listed(items.len())?;
        if let Some(bad) = items.iter().find(|v| matches!(v, Value::Object(m) if m.keys().any(|k| k.starts_with('$')))) {
            return Err(self.invalid(format!(
                "{op} on {on} takes values, not operators (got {}); use $or for several conditions",
                shown(&bad.to_string())
            )));
        }
        Ok(items.clone())
    }

    fn count_listed(&mut self, n: usize) -> Result<()> {
        self.listed += n;
        if self.listed > MAX_LIST_VALUES {
            return Err(self.invalid(format!("more than {MAX_LIST_VALUES} values in $in, $nin, $all and $type lists")));
        }
        Ok(())
    }

    fn kind(&self, on: &str, name: &Value) -> Result<Kind> {
        let kind = match name {
            Value::String(s) => match s.as_str() {
                "double" | "int" | "long" | "decimal" | "number" => Some(Kind::Number),
                "string" => Some(Kind::String),
                "object" => Some(Kind::Object),
                "array" => Some(Kind::Array),
                "bool" => Some(Kind::Bool),
                "null" => Some(Kind::Null),
                "binData" | "undefined" | "objectId" | "date" | "regex" | "dbPointer" | "javascript" | "symbol"
                | "javascriptWithScope" | "timestamp" | "minKey" | "maxKey" => Some(Kind::None),
                _ => None,
            },
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => match f as i64 {
                    1 | 16 | 18 | 19 => Some(Kind::Number),
                    2 => Some(Kind::String),
                    3 => Some(Kind::Object),
                    4 => Some(Kind::Array),
                    8 => Some(Kind::Bool),
                    10 => Some(Kind::Null),
                    -1 | 5 | 6 | 7 | 9 | 11..=15 | 17 | 127 => Some(Kind::None),
                    0 => return Err(self.invalid(format!("$type 0 on {on} is no type; use {{\"$exists\": false}}"))),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        kind.ok_or_else(|| {
            self.invalid(format!(
                "$type on {on}: unknown type {}; known: double string object array bool null int long decimal \
                 number (and BSON's other names and codes)",
                shown(&name.to_string())
            ))
        })
    }
}

impl From<ElemMatch> for Op {
    fn from(e: ElemMatch) -> Op {
        Op::ElemMatch(e)
    }
}

/// Splits and checks a dot-notation field path (of a filter or a sort).
pub(super) fn parse_path(field: &str, key: &str) -> Result<Vec<String>> {
    let bad = |why: String| Err(Error::invalid(field, format!("field path {} {why}", shown(key))));
    if key.len() > MAX_PATH_BYTES {
        return bad(format!("is longer than {MAX_PATH_BYTES} bytes"));
    }
    if key.chars().any(char::is_control) {
        return bad("contains a control character (such as NUL)".into());
    }
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        return bad("has an empty segment".into());
    }
    if path.len() > MAX_PATH_SEGMENTS {
        return bad(format!("has more than {MAX_PATH_SEGMENTS} segments"));
    }
    Ok(path)
}

/// A client's field name as an error message quotes it: escaped, and cut
/// short, so a hostile name cannot make the message huge.
pub(super) fn shown(key: &str) -> String {
    const SHOWN: usize = 64;
    match key.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}…", &key[..cut]),
        None => format!("{key:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_what_it_does_not_know() {
        for (bad, says) in [
            ("[1]", "JSON object"),
            ("\"x\"", "JSON object"),
            ("{", "JSON"),
            (r#"{"$or": []}"#, "non-empty"),
            (r#"{"$or": {"a": 1}}"#, "non-empty array"),
            (r#"{"$or": [1]}"#, "objects"),
            (r#"{"$where": "1"}"#, "\"$where\""),
            (r#"{"a": {"$near": [1, 2]}}"#, "\"$near\""),
            (r#"{"a": {"$in": 3}}"#, "array"),
            (r#"{"a": {"$in": [{"$regex": "x"}]}}"#, "not operators"),
            (r#"{"a": {"$gt": 1, "b": 2}}"#, "mixes"),
            (r#"{"a..b": 1}"#, "empty segment"),
            (r#"{"a": {"$options": "i"}}"#, "needs a $regex"),
            (r#"{"a": {"$regex": "x", "$options": "g"}}"#, "'g'"),
            (r#"{"a": {"$regex": 1}}"#, "string"),
            (r#"{"a": {"$not": 1}}"#, "$not"),
            (r#"{"a": {"$not": {}}}"#, "$not"),
            (r#"{"a": {"$not": {"b": 1}}}"#, "plain field"),
            (r#"{"a": {"$elemMatch": 1}}"#, "object"),
            (r#"{"a": {"$size": -1}}"#, "whole number"),
            (r#"{"a": {"$size": 1.5}}"#, "whole number"),
            (r#"{"a": {"$type": "date-time"}}"#, "unknown type"),
            (r#"{"a": {"$type": []}}"#, "at least one"),
            (r#"{"a": {"$type": 0}}"#, "$exists"),
            (r#"{"a": {"$mod": [0, 1]}}"#, "divisor"),
            (r#"{"a": {"$mod": [2]}}"#, "1 elements"),
            (r#"{"a": {"$mod": [2, "x"]}}"#, "numbers"),
        ] {
            let err = Filter::parse("query_string", bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument { field, reason } if field == "query_string" && reason.contains(says)),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bounds_and_path_characters() {
        let refused = |q: String, says: &str| {
            let err = Filter::parse("claims_query", &q).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument { field, reason } if field == "claims_query" && reason.contains(says)),
                "{}: {err}",
                &q[..q.len().min(80)]
            );
        };
        refused(r#"{"a b": 1}"#.replace(' ', "\u{1}"), "control character");
        refused(format!(r#"{{"{}": 1}}"#, "a".repeat(MAX_PATH_BYTES + 1)), "longer than");
        refused(format!(r#"{{"{}": 1}}"#, vec!["a"; MAX_PATH_SEGMENTS + 1].join(".")), "segments");
        let many = |n: usize| (0..n).map(|i| format!(r#""f{i}": {i}"#)).collect::<Vec<_>>().join(",");
        refused(format!("{{{}}}", many(MAX_CONDITIONS + 1)), "conditions");
        refused(
            r#"{"a": {"$in": LIST}, "b": {"$all": [1]}}"#.replace("LIST", &json!(vec![0; MAX_LIST_VALUES]).to_string()),
            "$in, $nin, $all and $type",
        );
        let nested = |n: usize| {
            let mut q = json!({"a": 1});
            for _ in 0..n {
                q = json!({"$or": [q]});
            }
            q.to_string()
        };
        refused(nested(MAX_DEPTH + 1), "nested more than");
        assert!(Filter::parse("q", &nested(MAX_DEPTH)).is_ok());
        let mut not = json!({"$gt": 1});
        for _ in 0..MAX_DEPTH + 1 {
            not = json!({"$not": not});
        }
        refused(json!({"a": not}).to_string(), "nested more than");
        let branches = |n: usize| json!({"$or": vec![json!({"a": 1}); n]}).to_string();
        refused(branches(MAX_CLAUSES + 1), "filters in $and, $or and $nor");
        assert!(Filter::parse("q", &branches(MAX_CLAUSES)).is_ok());
        let regexes = |n: usize| json!({"$or": vec![json!({"a": {"$regex": "x"}}); n]}).to_string();
        refused(regexes(MAX_REGEXES + 1), "$regex patterns");
        // At the bounds, a filter is accepted.
        let at = Filter::parse("q", &format!("{{{}}}", many(MAX_CONDITIONS))).unwrap();
        assert_eq!(at.clauses.len(), MAX_CONDITIONS);
        let path = vec!["a"; MAX_PATH_SEGMENTS].join(".");
        assert!(Filter::parse("q", &format!(r#"{{"{path}": {{"$in": {}}}}}"#, json!(vec![0; MAX_LIST_VALUES]))).is_ok());
        assert!(Filter::parse("q", r#"{"né.ü ✓": 1}"#).is_ok(), "any printable field name");
    }

    #[test]
    fn errors_quote_hostile_names_briefly() {
        for q in [format!(r#"{{"$x{}": 1}}"#, "y".repeat(10_000)), format!(r#"{{"a": {{"$x{}": 1}}}}"#, "y".repeat(10_000))] {
            let err = Filter::parse("query_string", &q).unwrap_err();
            assert!(err.to_string().len() < 400, "{err}");
        }
    }

    #[test]
    fn elem_match_forms() {
        let f = Filter::parse("q", r#"{"a": {"$elemMatch": {"$gt": 1}}, "b": {"$elemMatch": {"$or": [{"x": 1}]}}}"#).unwrap();
        assert!(matches!(&f.clauses[0], Clause::Field(Condition { op: Op::ElemMatch(ElemMatch::Value(_)), .. })));
        assert!(matches!(&f.clauses[1], Clause::Field(Condition { op: Op::ElemMatch(ElemMatch::Object(_)), .. })));
    }
}

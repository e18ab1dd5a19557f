//! `query_string` filters and sort orders as PostgreSQL over `jsonb`.
//!
//! Field paths are bound as `text[]` parameters (`doc #> $n`), never
//! written into the SQL, so a field name can hold anything (quotes,
//! semicolons, `$`, unicode, a kilobyte) without changing the statement.
//! Values are bound too, as JSON text cast to `jsonb` or `numeric`.
//!
//! Each condition on a one-segment path translates to an expression that
//! selects *exactly* the rows `Filter::matches` selects (so offset and
//! limit can run in SQL); on a longer path, to "an array on the way, or the
//! condition" (`#>` does not traverse arrays as MongoDB does), a superset.
//! `$and`/`$or` combine what they hold; `$nor`, `$not`, `$ne` and `$nin`
//! negate only exact expressions. `$regex`, `$mod`, `$elemMatch` and ranges
//! over booleans, objects and arrays are left to the shared matcher:
//! - equality is jsonb equality (numbers by value, strings byte for byte)
//!   on the field, or on an element of an array field (`@>` for scalars,
//!   which looks at top-level elements only; `jsonb_array_elements` for
//!   arrays and objects, since `@>` would also accept a sub-array);
//! - ranges compare numbers as `numeric` and strings in byte order
//!   (`COLLATE "C"`), on the field or any array element, and nothing else;
//! - `$exists` is whether the path leads anywhere (JSON null included);
//! - `$all` is equality with each value, `$size` the array's length,
//!   `$type` `jsonb_typeof` of the field or of an element.
//!
//! Two things fall outside that and are left to the shared matcher (the
//! condition is not pushed down, the query is then *inexact* and the
//! caller paginates in Rust): numbers of magnitude 2^53 or more (the matcher
//! compares an integer with a float as f64, SQL exactly), and path segments
//! PostgreSQL would read as an array index where the matcher would not
//! (` 1`, `-1`: whitespace or a minus sign).
//!
//! Sorting follows `query::compare_values`: null/missing, numbers, strings,
//! objects, arrays, booleans; objects and arrays by their JSON text as
//! written (read from the `json` copy of the stored text, which keeps key
//! order); ties by key in byte order.

use crate::model::query::{Clause, Condition, Kind, Op};
use crate::model::{Filter, Sort};
use crate::storage::sql::numbers_exact;
use serde_json::Value;

/// A parameter of a statement under construction.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Texts(Vec<String>),
    Bytes(Vec<u8>),
    I64(i64),
}

/// A statement under construction: its text and its parameters.
#[derive(Debug, Default)]
pub struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Self {
        Sql { text: text.into(), args: vec![] }
    }

    /// Binds `arg` and returns its placeholder (`$n`).
    pub fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    pub fn bind<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(s.as_str()),
                Arg::Texts(v) => q.bind(v.as_slice()),
                Arg::Bytes(b) => q.bind(b.as_slice()),
                Arg::I64(n) => q.bind(*n),
            };
        }
        q
    }
}

/// Appends ` AND …` for each clause of `filter` on the `jsonb` column
/// `column`; returns whether the SQL then selects exactly what the filter
/// does (otherwise it selects a superset, or nothing was pushed).
pub fn filter(sql: &mut Sql, column: &str, filter: &Filter) -> bool {
    let mut exact = true;
    for clause in &filter.clauses {
        match pushed(sql, |sql| clause_sql(sql, column, clause)) {
            Some((expr, e)) => {
                sql.push(" AND ");
                sql.push(&expr);
                exact &= e;
            }
            None => exact = false,
        }
    }
    exact
}

/// Runs a translation; when it gives up, unbinds what it bound (a
/// statement's parameters must be exactly those its text uses).
fn pushed<T>(sql: &mut Sql, f: impl FnOnce(&mut Sql) -> Option<T>) -> Option<T> {
    let bound = sql.args.len();
    let out = f(sql);
    if out.is_none() {
        sql.args.truncate(bound);
    }
    out
}

/// A filter as one expression: `(sql, exact)`, where not exact means a
/// superset of the rows it matches. Never SQL NULL.
fn filter_sql(sql: &mut Sql, column: &str, filter: &Filter) -> Option<(String, bool)> {
    let mut parts = vec![];
    let mut exact = true;
    for clause in &filter.clauses {
        match pushed(sql, |sql| clause_sql(sql, column, clause)) {
            Some((expr, e)) => {
                parts.push(expr);
                exact &= e;
            }
            None => exact = false,
        }
    }
    if parts.is_empty() {
        return Some(("true".into(), exact));
    }
    Some((format!("({})", parts.join(" AND ")), exact))
}

/// `$and` narrows by what it can; `$or` needs every branch (each may be a
/// superset); `$nor` needs every branch exact (the negation of a superset
/// is narrower than the truth).
fn clause_sql(sql: &mut Sql, column: &str, clause: &Clause) -> Option<(String, bool)> {
    let branches = |sql: &mut Sql, filters: &[Filter]| -> Option<(Vec<String>, bool)> {
        let mut parts = vec![];
        let mut exact = true;
        for f in filters {
            let (expr, e) = filter_sql(sql, column, f)?;
            parts.push(expr);
            exact &= e;
        }
        Some((parts, exact))
    };
    match clause {
        Clause::Field(c) => condition(sql, column, c),
        Clause::And(filters) => {
            let (parts, exact) = branches(sql, filters)?;
            Some((format!("({})", parts.join(" AND ")), exact))
        }
        Clause::Or(filters) => {
            let (parts, exact) = branches(sql, filters)?;
            Some((format!("({})", parts.join(" OR ")), exact))
        }
        Clause::Nor(filters) => match branches(sql, filters)? {
            (parts, true) => Some((format!("(NOT ({}))", parts.join(" OR ")), true)),
            _ => None,
        },
    }
}

/// Whether PostgreSQL and `query::lookup` read a path segment the same way.
/// PostgreSQL takes a segment as an array index when `strtol` parses it
/// whole (leading white space and a sign allowed); the matcher only when
/// it is a plain unsigned number.
pub fn segment_agrees(s: &str) -> bool {
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r');
    let trimmed = s.trim_matches(space);
    let body = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    let numeric = !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit());
    !numeric || (trimmed == s && !s.starts_with('-'))
}

fn path_arg(sql: &mut Sql, path: &[String]) -> Option<String> {
    if !path.iter().all(|s| segment_agrees(s) && !s.contains('\0')) {
        return None;
    }
    Some(sql.arg(Arg::Texts(path.to_vec())))
}

/// A field condition. `#>` reads a path without MongoDB's array traversal,
/// so it is exact only when no array lies on the way to the field: a
/// longer path is pushed as "an array on the way, or the condition" (a
/// superset the matcher finishes).
fn condition(sql: &mut Sql, column: &str, c: &Condition) -> Option<(String, bool)> {
    let p = path_arg(sql, &c.path)?;
    let x = format!("({column} #> {p}::text[])");
    let expr = op_sql(sql, &x, &c.op)?;
    if c.path.len() == 1 {
        return Some((expr, true));
    }
    let mut arrays = vec![];
    for n in 1..c.path.len() {
        let prefix = sql.arg(Arg::Texts(c.path[..n].to_vec()));
        arrays.push(format!("jsonb_typeof({column} #> {prefix}::text[]) = 'array'"));
    }
    Some((format!("(COALESCE({}, false) OR {expr})", arrays.join(" OR ")), false))
}

/// An operator on the one value at `x` (or missing), exactly as the
/// matcher decides it for a value reached without arrays on the way; None
/// when SQL cannot say it exactly (`$regex`, `$mod`, `$elemMatch`, ranges
/// over booleans, objects and arrays). Never SQL NULL.
fn op_sql(sql: &mut Sql, x: &str, op: &Op) -> Option<String> {
    Some(match op {
        Op::Exists(true) => format!("({x} IS NOT NULL)"),
        Op::Exists(false) => format!("({x} IS NULL)"),
        Op::Eq(q) => eq(sql, x, q)?,
        Op::Ne(q) => format!("(NOT {})", eq(sql, x, q)?),
        Op::In(qs) => any_eq(sql, x, qs)?,
        Op::Nin(qs) => format!("(NOT {})", any_eq(sql, x, qs)?),
        Op::All(qs) if qs.is_empty() => "false".into(),
        Op::All(qs) => {
            let parts = qs.iter().map(|q| eq(sql, x, q)).collect::<Option<Vec<_>>>()?;
            format!("({})", parts.join(" AND "))
        }
        Op::Gt(q) => range(sql, x, ">", q)?,
        Op::Gte(q) => range(sql, x, ">=", q)?,
        Op::Lt(q) => range(sql, x, "<", q)?,
        Op::Lte(q) => range(sql, x, "<=", q)?,
        Op::Not(ops) => {
            let parts = ops.iter().map(|o| op_sql(sql, x, o)).collect::<Option<Vec<_>>>()?;
            format!("(NOT ({}))", parts.join(" AND "))
        }
        Op::Size(n) => {
            let n = sql.arg(Arg::I64(i64::try_from(*n).ok()?));
            format!("COALESCE(CASE WHEN jsonb_typeof({x}) = 'array' THEN jsonb_array_length({x}) = {n} ELSE false END, false)")
        }
        Op::Type(kinds) => {
            let names: Vec<&str> = kinds.iter().filter_map(|k| kind_name(*k)).collect();
            if names.is_empty() {
                return Some("false".into());
            }
            let names = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
            format!(
                "COALESCE(jsonb_typeof({x}) IN ({names}) OR CASE WHEN jsonb_typeof({x}) = 'array' THEN \
                 EXISTS (SELECT 1 FROM jsonb_array_elements({x}) e WHERE jsonb_typeof(e) IN ({names})) ELSE false END, false)"
            )
        }
        Op::Regex(_) | Op::Mod { .. } | Op::ElemMatch(_) => return None,
    })
}

/// `jsonb_typeof`'s name of a `$type` kind.
fn kind_name(k: Kind) -> Option<&'static str> {
    Some(match k {
        Kind::Null => "null",
        Kind::Number => "number",
        Kind::String => "string",
        Kind::Object => "object",
        Kind::Array => "array",
        Kind::Bool => "boolean",
        Kind::None => return None,
    })
}

fn any_eq(sql: &mut Sql, x: &str, qs: &[Value]) -> Option<String> {
    if qs.is_empty() {
        return Some("false".into());
    }
    let parts = qs.iter().map(|q| eq(sql, x, q)).collect::<Option<Vec<_>>>()?;
    Some(format!("({})", parts.join(" OR ")))
}

/// The matcher's equality: the field equals `q`, or is an array with an
/// element equal to `q`; a missing field equals null. Never SQL NULL, so
/// `NOT` of it is the matcher's `$ne`.
fn eq(sql: &mut Sql, x: &str, q: &Value) -> Option<String> {
    if !numbers_exact(q) || crate::storage::sql::value_has_nul(q) {
        return None;
    }
    Some(match q {
        Value::Null => format!("({x} IS NULL OR {x} = 'null'::jsonb OR (jsonb_typeof({x}) = 'array' AND {x} @> '[null]'::jsonb))"),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            let v = sql.arg(Arg::Text(q.to_string()));
            let a = sql.arg(Arg::Text(Value::Array(vec![q.clone()]).to_string()));
            format!("COALESCE({x} = {v}::jsonb OR (jsonb_typeof({x}) = 'array' AND {x} @> {a}::jsonb), false)")
        }
        Value::Array(_) | Value::Object(_) => {
            let v = sql.arg(Arg::Text(q.to_string()));
            format!(
                "COALESCE({x} = {v}::jsonb OR (jsonb_typeof({x}) = 'array' AND \
                 EXISTS (SELECT 1 FROM jsonb_array_elements({x}) e WHERE e = {v}::jsonb)), false)"
            )
        }
    })
}

/// The matcher's ranges: numbers with numbers, strings with strings (byte
/// order), on the field or any element of an array field; `null` as the
/// matcher's `$eq: null` (inclusive) or nothing (strict). Booleans, objects
/// and arrays are left to the matcher.
fn range(sql: &mut Sql, x: &str, op: &str, q: &Value) -> Option<String> {
    let (kind, cast, v) = match q {
        Value::Null if op.ends_with('=') => return eq(sql, x, q),
        Value::Null => return Some("false".into()),
        Value::Number(n) if numbers_exact(q) => ("number", "::numeric", sql.arg(Arg::Text(n.to_string()))),
        Value::Number(_) => return None,
        Value::String(s) if !s.contains('\0') => ("string", "", sql.arg(Arg::Text(s.clone()))),
        Value::String(_) => return None,
        _ => return None,
    };
    let scalar = |e: &str| match kind {
        "number" => format!("({e})::numeric {op} {v}{cast}"),
        _ => format!("({e} #>> '{{}}') COLLATE \"C\" {op} {v}"),
    };
    // CASE, not AND: PostgreSQL may evaluate the operands of AND in any
    // order, and the cast fails on other kinds.
    Some(format!(
        "COALESCE(CASE jsonb_typeof({x}) WHEN '{kind}' THEN {} \
         WHEN 'array' THEN EXISTS (SELECT 1 FROM jsonb_array_elements({x}) e \
         WHERE CASE WHEN jsonb_typeof(e) = '{kind}' THEN {} ELSE false END) \
         ELSE false END, false)",
        scalar(x),
        scalar("e")
    ))
}

/// ` ORDER BY …` for a state search: by `sort` when it can be pushed down
/// (returns false otherwise, and orders by key), then by key.
pub fn order_by(sql: &mut Sql, sort: Option<&Sort>) -> bool {
    let Some(sort) = sort else {
        sql.push(" ORDER BY key");
        return true;
    };
    let Some(p) = path_arg(sql, &sort.path) else {
        sql.push(" ORDER BY key");
        return false;
    };
    let dir = if sort.descending { "DESC" } else { "ASC" };
    let x = format!("(doc #> {p}::text[])");
    let t = format!("jsonb_typeof({x})");
    sql.push(&format!(
        " ORDER BY CASE {t} WHEN 'number' THEN 1 WHEN 'string' THEN 2 WHEN 'object' THEN 3 \
         WHEN 'array' THEN 4 WHEN 'boolean' THEN 5 ELSE 0 END {dir}, \
         CASE WHEN {t} = 'number' THEN ({x})::numeric END {dir}, \
         CASE WHEN {t} = 'string' THEN ({x} #>> '{{}}') END COLLATE \"C\" {dir}, \
         CASE WHEN {t} IN ('object', 'array') THEN (vals::json #> {p}::text[])::text END COLLATE \"C\" {dir}, \
         CASE WHEN {t} = 'boolean' THEN ({x})::boolean END {dir}, \
         key {dir}"
    ));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_read_as_indexes_the_same_way_or_are_not_pushed() {
        for s in ["a", "0", "12", "+1", "01", "1a", "a1", "é", "a'); DROP TABLE events; --", "$x", "`"] {
            assert!(segment_agrees(s), "{s:?}");
        }
        for s in ["-1", " 1", "1 ", "\t2", "-0", " +3"] {
            assert!(!segment_agrees(s), "{s:?}");
        }
    }

    #[test]
    fn names_and_values_are_bound_not_written() {
        let hostile = "a'); DROP TABLE events; --";
        let f = Filter::parse("q", &format!(r#"{{"{hostile}": "x'; --", "b": {{"$gt": 3}}}}"#)).unwrap();
        let mut sql = Sql::new("SELECT 1 WHERE true");
        assert!(filter(&mut sql, "doc", &f));
        assert!(!sql.text.contains("DROP") && !sql.text.contains("x'"), "{}", sql.text);
        assert!(sql.args.contains(&Arg::Texts(vec![hostile.to_owned()])));
        // Numbers beyond 2^53 are left to the matcher.
        let f = Filter::parse("q", r#"{"n": 9007199254740993}"#).unwrap();
        let mut sql = Sql::new("");
        assert!(!filter(&mut sql, "doc", &f));
        assert!(sql.args.is_empty(), "an abandoned condition leaves nothing bound");
    }
}

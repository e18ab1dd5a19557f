//! `query_string` filters and sort orders as MySQL/MariaDB JSON functions
//! over the stored JSON text.
//!
//! A field path becomes a JSON path (`$."a"."b"`, each name written as a
//! JSON string, so quotes, backslashes, `$`, `*` and unicode stay inside
//! it) that is *bound* as a parameter of `JSON_EXTRACT`, never written into
//! the SQL. Values are bound too. A segment that is a number is not pushed
//! down (the matcher reads it as an array index, a quoted JSON path as an
//! object key), nor one starting with `-` (MariaDB's path parser finds no
//! such key, quoted or not).
//!
//! Each condition on a one-segment path selects exactly the rows
//! `Filter::matches` selects; on a longer path "an array on the way, or the
//! condition" (a superset: JSON paths do not traverse arrays as MongoDB
//! does). `$and`/`$or` combine what they hold, negations (`$nor`, `$not`,
//! `$ne`, `$nin`) only exact expressions; `$regex`, `$mod`, `$elemMatch`,
//! `$type` and ranges over booleans, objects and arrays are left to the
//! shared matcher. Otherwise:
//! - equality is `JSON_OVERLAPS` of the field with `[q]` (the field equals
//!   `q`, or is an array with an element equal to `q`; numbers by value,
//!   strings as written, objects regardless of key order) or of `[field]`
//!   with `[q]` (the field itself equal to `q`); a missing field equals
//!   null. Equality with an array `q` is left to the shared matcher
//!   (`any_eq` says why);
//! - ranges compare numbers as doubles and strings as bytes, on the field
//!   or on any element of an array field (`JSON_TABLE`);
//! - `$exists` is whether the path leads anywhere; `$all` is equality with
//!   each value, `$size` the array's `JSON_LENGTH`.
//!
//! Numbers of magnitude 2^53 or more are left to the shared matcher (doubles
//! are exact below that). Stored text and query values are both written by
//! the same serializer, so string escapes compare alike (MariaDB compares
//! JSON strings as escaped text).

use crate::model::query::{Clause, Condition, Op};
use crate::model::{Filter, Sort};
use crate::storage::sql::numbers_exact;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Bytes(Vec<u8>),
    I64(i64),
    F64(f64),
}

/// A statement under construction. Parameters are placed by token, and
/// [`Sql::finish`] turns the tokens into `?` in text order, so fragments
/// can be built in any order and a parameter used twice is bound twice.
#[derive(Debug, Default)]
pub struct Sql {
    text: String,
    args: Vec<Arg>,
}

const OPEN: char = '\u{1}';
const CLOSE: char = '\u{2}';

impl Sql {
    pub fn new(text: impl Into<String>) -> Self {
        Sql { text: text.into(), args: vec![] }
    }

    /// A token standing for `arg` in the text.
    pub fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("{OPEN}{}{CLOSE}", self.args.len() - 1)
    }

    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The statement with `?` placeholders and its parameters in order.
    pub fn finish(self) -> (String, Vec<Arg>) {
        let mut text = String::with_capacity(self.text.len());
        let mut args = vec![];
        let mut rest = self.text.as_str();
        while let Some(start) = rest.find(OPEN) {
            text.push_str(&rest[..start]);
            let end = rest[start..].find(CLOSE).expect("tokens are closed") + start;
            let i: usize = rest[start + 1..end].parse().expect("tokens hold an index");
            args.push(self.args[i].clone());
            text.push('?');
            rest = &rest[end + 1..];
        }
        text.push_str(rest);
        (text, args)
    }
}

pub fn bind<'q>(
    mut q: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s.as_str()),
            Arg::Bytes(b) => q.bind(b.as_slice()),
            Arg::I64(n) => q.bind(*n),
            Arg::F64(f) => q.bind(*f),
        };
    }
    q
}

/// The JSON path of a field, if it can be pushed down.
pub fn json_path(path: &[String]) -> Option<String> {
    let mut out = String::from("$");
    for segment in path {
        // MariaDB finds no key that starts with '-', even quoted.
        if segment.parse::<usize>().is_ok() || segment.starts_with('-') {
            return None;
        }
        out.push('.');
        out.push_str(&Value::String(segment.clone()).to_string());
    }
    Some(out)
}

/// Appends ` AND …` for each clause on the JSON text column `column`;
/// returns whether the SQL then selects exactly what the filter does
/// (otherwise a superset). Parameters are placed by token, so an abandoned
/// translation leaves nothing bound.
pub fn filter(sql: &mut Sql, column: &str, filter: &Filter) -> bool {
    let mut exact = true;
    for clause in &filter.clauses {
        match clause_sql(sql, column, clause) {
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

/// A filter as one expression `(sql, exact)`; not exact is a superset.
fn filter_sql(sql: &mut Sql, column: &str, filter: &Filter) -> Option<(String, bool)> {
    let mut parts = vec![];
    let mut exact = true;
    for clause in &filter.clauses {
        match clause_sql(sql, column, clause) {
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
/// superset); `$nor` needs every branch exact.
fn clause_sql(sql: &mut Sql, column: &str, clause: &Clause) -> Option<(String, bool)> {
    let mut branches = |filters: &[Filter]| -> Option<(Vec<String>, bool)> {
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
            let (parts, exact) = branches(filters)?;
            Some((format!("({})", parts.join(" AND ")), exact))
        }
        Clause::Or(filters) => {
            let (parts, exact) = branches(filters)?;
            Some((format!("({})", parts.join(" OR ")), exact))
        }
        Clause::Nor(filters) => match branches(filters)? {
            (parts, true) => Some((format!("(NOT ({}))", parts.join(" OR ")), true)),
            _ => None,
        },
    }
}

/// A field condition; on a longer path "an array on the way, or the
/// condition" (JSON paths do not traverse arrays as MongoDB does), a
/// superset the matcher finishes.
fn condition(sql: &mut Sql, column: &str, c: &Condition) -> Option<(String, bool)> {
    let path = json_path(&c.path)?;
    let p = sql.arg(Arg::Text(path));
    let x = format!("JSON_EXTRACT({column}, {p})");
    let expr = op_sql(sql, &x, &c.op)?;
    if c.path.len() == 1 {
        return Some((expr, true));
    }
    let mut arrays = vec![];
    for n in 1..c.path.len() {
        let prefix = sql.arg(Arg::Text(json_path(&c.path[..n])?));
        arrays.push(format!("JSON_TYPE(JSON_EXTRACT({column}, {prefix})) = 'ARRAY'"));
    }
    Some((format!("(COALESCE({}, false) OR {expr})", arrays.join(" OR ")), false))
}

/// An operator on the one value at `x` (or missing), exactly as the
/// matcher decides it; None for what SQL cannot say exactly. Never NULL.
fn op_sql(sql: &mut Sql, x: &str, op: &Op) -> Option<String> {
    Some(match op {
        Op::Exists(true) => format!("({x} IS NOT NULL)"),
        Op::Exists(false) => format!("({x} IS NULL)"),
        Op::Eq(q) => any_eq(sql, x, std::slice::from_ref(q))?,
        Op::Ne(q) => format!("(NOT {})", any_eq(sql, x, std::slice::from_ref(q))?),
        Op::In(qs) => any_eq(sql, x, qs)?,
        Op::Nin(qs) => format!("(NOT {})", any_eq(sql, x, qs)?),
        Op::All(qs) if qs.is_empty() => "false".into(),
        Op::All(qs) => {
            let parts = qs.iter().map(|q| any_eq(sql, x, std::slice::from_ref(q))).collect::<Option<Vec<_>>>()?;
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
            format!("COALESCE(JSON_TYPE({x}) = 'ARRAY' AND JSON_LENGTH({x}) = {n}, false)")
        }
        Op::Regex(_) | Op::Mod { .. } | Op::ElemMatch(_) | Op::Type(_) => return None,
    })
}

/// The matcher's equality with any of `qs`; never SQL NULL. An array
/// among `qs` is left to the matcher: MariaDB's `JSON_OVERLAPS` takes an
/// array inside its second argument as matching any array that holds its
/// elements (`[[1,2]]` overlaps `[[1]]`, `[[null]]` overlaps `[[]]`), where
/// the matcher wants the same array.
fn any_eq(sql: &mut Sql, x: &str, qs: &[Value]) -> Option<String> {
    if qs.is_empty() {
        return Some("false".into());
    }
    if !qs.iter().all(|q| numbers_exact(q) && !q.is_array()) {
        return None;
    }
    let a = sql.arg(Arg::Text(Value::Array(qs.to_vec()).to_string()));
    let overlap = format!("COALESCE(JSON_OVERLAPS({x}, {a}) OR JSON_OVERLAPS(JSON_ARRAY({x}), {a}), false)");
    Some(if qs.iter().any(Value::is_null) { format!("({x} IS NULL OR {overlap})") } else { overlap })
}

const NUMBER_TYPES: &str = "('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL')";

/// The matcher's ranges over numbers and strings; `null` as `$eq: null`
/// (inclusive) or nothing (strict); other kinds are left to the matcher.
fn range(sql: &mut Sql, x: &str, op: &str, q: &Value) -> Option<String> {
    let scalar: Box<dyn Fn(&str) -> String> = match q {
        Value::Null if op.ends_with('=') => return any_eq(sql, x, std::slice::from_ref(q)),
        Value::Null => return Some("false".into()),
        Value::Number(n) if numbers_exact(q) => {
            let v = sql.arg(Arg::F64(n.as_f64()?));
            let op = op.to_owned();
            Box::new(move |e: &str| {
                format!("(JSON_TYPE({e}) IN {NUMBER_TYPES} AND CAST(JSON_UNQUOTE({e}) AS DOUBLE) {op} {v})")
            })
        }
        Value::Number(_) => return None,
        Value::String(s) => {
            let v = sql.arg(Arg::Text(s.clone()));
            let op = op.to_owned();
            Box::new(move |e: &str| {
                format!("(JSON_TYPE({e}) = 'STRING' AND CAST(JSON_UNQUOTE({e}) AS BINARY) {op} CAST({v} AS BINARY))")
            })
        }
        _ => return None,
    };
    Some(array_or(x, &*scalar))
}

/// `scalar` on the field, or on any element when the field is an array.
fn array_or(x: &str, scalar: &dyn Fn(&str) -> String) -> String {
    format!(
        "COALESCE(CASE JSON_TYPE({x}) WHEN 'ARRAY' THEN EXISTS (SELECT 1 FROM JSON_TABLE({x}, '$[*]' \
         COLUMNS (v JSON PATH '$')) AS j WHERE {}) ELSE {} END, false)",
        scalar("j.v"),
        scalar(x)
    )
}

/// ` ORDER BY …` for a state search, by `sort` when it can be pushed down
/// (returns false otherwise and orders by key), then by key. On MariaDB,
/// objects and arrays order by their compact JSON text, as the matcher's
/// `to_string`; MySQL 8 has no `JSON_COMPACT`, so there they order by
/// MySQL's own JSON text (the only place the two servers differ).
pub fn order_by(sql: &mut Sql, sort: Option<&Sort>, mariadb: bool) -> bool {
    let path = sort.and_then(|s| json_path(&s.path));
    let (Some(sort), Some(path)) = (sort, path) else {
        sql.push(" ORDER BY rkey");
        return sort.is_none();
    };
    let dir = if sort.descending { "DESC" } else { "ASC" };
    let p = sql.arg(Arg::Text(path));
    let x = format!("JSON_EXTRACT(vals, {p})");
    let t = format!("JSON_TYPE({x})");
    let text = if mariadb { format!("JSON_COMPACT({x})") } else { format!("CAST({x} AS CHAR)") };
    sql.push(&format!(
        " ORDER BY CASE WHEN {t} IN {NUMBER_TYPES} THEN 1 WHEN {t} = 'STRING' THEN 2 WHEN {t} = 'OBJECT' THEN 3 \
         WHEN {t} = 'ARRAY' THEN 4 WHEN {t} = 'BOOLEAN' THEN 5 ELSE 0 END {dir}, \
         CASE WHEN {t} IN {NUMBER_TYPES} THEN CAST(JSON_UNQUOTE({x}) AS DOUBLE) END {dir}, \
         CASE WHEN {t} IN ('INTEGER', 'UNSIGNED INTEGER') THEN CAST(JSON_UNQUOTE({x}) AS DECIMAL(65, 0)) END {dir}, \
         CASE WHEN {t} = 'STRING' THEN CAST(JSON_UNQUOTE({x}) AS BINARY) END {dir}, \
         CASE WHEN {t} IN ('OBJECT', 'ARRAY') THEN CAST({text} AS BINARY) END {dir}, \
         CASE WHEN {t} = 'BOOLEAN' THEN JSON_UNQUOTE({x}) END {dir}, \
         rkey {dir}"
    ));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_become_placeholders_in_text_order() {
        let mut sql = Sql::new("SELECT ");
        let a = sql.arg(Arg::I64(1));
        let b = sql.arg(Arg::I64(2));
        sql.push(&format!("{b}, {a}, {b}"));
        let (text, args) = sql.finish();
        assert_eq!(text, "SELECT ?, ?, ?");
        assert_eq!(args, [Arg::I64(2), Arg::I64(1), Arg::I64(2)]);
    }

    #[test]
    fn names_are_bound_inside_a_json_path() {
        let hostile = "a'); DROP TABLE events; --\"`$*";
        let f = Filter::parse("q", &serde_json::json!({ hostile: {"$gte": 2} }).to_string()).unwrap();
        let mut sql = Sql::new("SELECT 1 WHERE true");
        assert!(filter(&mut sql, "vals", &f));
        let (text, args) = sql.finish();
        assert!(!text.contains("DROP") && !text.contains('`'), "{text}");
        assert!(args.contains(&Arg::Text(format!("$.{}", serde_json::Value::String(hostile.into())))));
        assert_eq!(json_path(&["a".into(), "0".into()]), None, "a number may be an array index");
    }
}

//! The part of a search sqlite answers itself: conditions on the stored
//! values that select a superset of the matches (the query's shared
//! matcher then decides), and, on an indexed field, the sort order.
//!
//! Only conditions every match satisfies are pushed down (`Filter::required`),
//! on one-segment paths: a longer path may lead through arrays, which
//! `json_extract` does not traverse as the matcher does. An array-valued
//! field always passes (the matcher looks at its elements).
//!
//! - **On any field** equality is a filter with the path bound as a
//!   parameter, never pasted into the SQL; a segment sqlite's JSON path
//!   syntax cannot quote (a `"` or `\`, a control character) or would read
//!   as an array index (all digits) is not pushed down. At most
//!   `MAX_PUSHDOWN` conditions are, so the expression stays far below
//!   sqlite's depth limit (`SQLITE_MAX_EXPR_DEPTH`, 1000) and
//!   bound-parameter count.
//! - **On a field with an index** (`field_index.rs`) equality, `$in` and
//!   ranges on strings, numbers and booleans can also be answered by the
//!   index (`IndexCondition`): one index search per kind of value the
//!   condition can match, written exactly as the index defines its columns,
//!   and one for arrays. The searches are disjoint (each has its own kind),
//!   so their union (`UNION ALL`) holds every candidate once; a single `OR`
//!   of them would make sqlite scan the type's range of the index instead.
//!   Ranges compare inclusively: integers beyond i64 are rounded by sqlite,
//!   and a superset is always safe.
//!
//! Names in index expressions are pasted (an expression index is matched by
//! its text), which is why only `field_index::indexable` names have one.

use super::field_index::{indexable, rank_sql, value_sql};
use crate::model::{Filter, Sort, query::Op};
use rusqlite::types::Value as SqlValue;
use serde_json::Value;
use std::collections::HashSet;

/// Most conditions of one filter pushed down into SQL (the rest are checked
/// in Rust only).
const MAX_PUSHDOWN: usize = 32;
/// Most values of one `$in` an index answers.
const MAX_IN: usize = 64;

/// Kind ranks of the index (`field_index::rank_sql`).
const NUMBER: u8 = 1;
const STRING: u8 = 2;
const ARRAY: u8 = 4;
const BOOLEAN: u8 = 5;

/// Appends to `sql` (a `WHERE` over the JSON column `column`) equality
/// conditions that select a superset of the rows `filter` matches. Returns
/// the indexable fields of the filter's conditions an index could answer
/// (what `FieldIndexes` counts).
pub fn conditions(column: &str, filter: &Filter, sql: &mut String, args: &mut Vec<SqlValue>) -> Vec<String> {
    let mut pushed = 0;
    let mut named = vec![];
    for c in filter.required() {
        let [field] = c.path.as_slice() else { continue };
        if indexable(field) && index_answers(&c.op) && !named.contains(field) {
            named.push(field.clone());
        }
        if pushed == MAX_PUSHDOWN {
            continue;
        }
        if let Some(cond) = by_bound_path(column, field, &c.op, args) {
            sql.push_str(" AND ");
            sql.push_str(&cond);
            pushed += 1;
        }
    }
    named
}

/// A condition of a filter on an indexed field, as disjoint searches of
/// that field's index.
#[derive(Debug, Clone)]
pub struct IndexCondition {
    pub field: String,
    /// Conditions over `vals`, each an index search on its own.
    pub branches: Vec<String>,
    /// Their arguments, numbered from `?3` (`?1` and `?2` are the domain
    /// and the type).
    pub args: Vec<SqlValue>,
    /// Whether every branch but the arrays' reads its index entries in key
    /// order: an equality's entries share their kind and value, and the key
    /// ends every entry. Their union then comes in key order by a merge
    /// that stops when the page is full (sqlite's `MERGE (UNION ALL)`),
    /// with only the arrays' branch read whole and sorted.
    pub in_key_order: bool,
}

impl IndexCondition {
    /// The branch for array values alone (always the last), to count them.
    /// Its entries are in the order of the arrays' text, not of keys.
    pub fn arrays(&self) -> IndexCondition {
        let branches = self.branches.last().into_iter().cloned().collect();
        IndexCondition { field: self.field.clone(), branches, args: vec![], in_key_order: false }
    }
}

/// The filter's conditions an index of `ready` can answer (the first on
/// each field), for choosing which index a search goes through.
pub fn index_conditions(filter: &Filter, ready: &HashSet<String>) -> Vec<IndexCondition> {
    let mut out: Vec<IndexCondition> = vec![];
    for c in filter.required() {
        let [field] = c.path.as_slice() else { continue };
        if !ready.contains(field) || out.iter().any(|x| &x.field == field) || !index_answers(&c.op) {
            continue;
        }
        // Placeholders for ?1 and ?2, dropped after.
        let mut args = vec![SqlValue::Null, SqlValue::Null];
        let branches = by_index(field, &c.op, &mut args);
        let in_key_order = matches!(c.op, Op::Eq(_));
        out.push(IndexCondition { field: field.clone(), branches, args: args.split_off(2), in_key_order });
    }
    out
}

/// ` ORDER BY` for `sort` (a top-level, indexed field) in its index's
/// order, ties by key (as `Sort::compare`); `Sort::sorted_past` knows when
/// to stop reading rows in that order.
pub fn order_by(sort: &Sort) -> Option<String> {
    let [field] = sort.path.as_slice() else { return None };
    let dir = if sort.descending { "DESC" } else { "ASC" };
    Some(format!(
        " ORDER BY {} {dir}, {} {dir}, key {dir}",
        rank_sql("vals", field),
        value_sql("vals", field)
    ))
}

/// Whether `by_index` answers `op`.
fn index_answers(op: &Op) -> bool {
    match op {
        Op::Eq(q) => scalar(q).is_some(),
        Op::Gt(q) | Op::Gte(q) | Op::Lt(q) | Op::Lte(q) => scalar(q).is_some_and(|(kind, _)| kind != BOOLEAN),
        Op::In(qs) => !qs.is_empty() && qs.len() <= MAX_IN && qs.iter().all(|q| scalar(q).is_some()),
        _ => false,
    }
}

/// The disjoint index searches (over `vals`) answering `op` on `field`, an
/// operator `index_answers`; pushes their arguments to `args`.
fn by_index(field: &str, op: &Op, args: &mut Vec<SqlValue>) -> Vec<String> {
    let (rank, value) = (rank_sql("vals", field), value_sql("vals", field));
    let mut branches = vec![];
    let mut compare = |cmp: &str, q: &Value| {
        if let Some((kind, v)) = scalar(q) {
            args.push(v);
            branches.push(format!("{rank} = {kind} AND {value} {cmp} ?{}", args.len()));
        }
    };
    match op {
        Op::Eq(q) => compare("=", q),
        Op::Gt(q) | Op::Gte(q) => compare(">=", q),
        Op::Lt(q) | Op::Lte(q) => compare("<=", q),
        Op::In(qs) => {
            let scalars = qs.iter().filter_map(scalar).collect::<Vec<_>>();
            for kind in [NUMBER, STRING, BOOLEAN] {
                let mut marks = vec![];
                for (_, v) in scalars.iter().filter(|(k, _)| *k == kind) {
                    args.push(v.clone());
                    marks.push(format!("?{}", args.len()));
                }
                if !marks.is_empty() {
                    branches.push(format!("{rank} = {kind} AND {value} IN ({})", marks.join(", ")));
                }
            }
        }
        _ => {}
    }
    branches.push(format!("{rank} = {ARRAY}"));
    branches
}

/// A value's kind rank and the value the index holds for it (booleans as
/// 1 and 0), for strings, numbers and booleans.
fn scalar(v: &Value) -> Option<(u8, SqlValue)> {
    Some(match v {
        Value::String(s) => (STRING, SqlValue::Text(s.clone())),
        Value::Number(n) => (NUMBER, number(n)),
        Value::Bool(b) => (BOOLEAN, SqlValue::Integer(*b as i64)),
        _ => return None,
    })
}

/// The JSON types a stored value equal to the operand can have and the
/// value `json_extract` must equal, for an equality the bound-path form
/// pushes down.
fn bound_equality(op: &Op) -> Option<(&'static str, Option<SqlValue>)> {
    let Op::Eq(q) = op else { return None };
    Some(match q {
        Value::String(s) => ("'text'", Some(SqlValue::Text(s.clone()))),
        Value::Number(n) => ("'integer', 'real'", Some(number(n))),
        Value::Bool(true) => ("'true'", None),
        Value::Bool(false) => ("'false'", None),
        _ => return None,
    })
}

/// An equality on `field` with its JSON path bound as a parameter.
fn by_bound_path(column: &str, field: &str, op: &Op, args: &mut Vec<SqlValue>) -> Option<String> {
    let (types, value) = bound_equality(op)?;
    if field.contains(['"', '\\']) || field.chars().any(char::is_control) || field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    args.push(SqlValue::Text(format!("$.\"{field}\"")));
    let (p, ty) = (args.len(), format!("json_type({column}, ?{})", args.len()));
    Some(match value {
        Some(v) => {
            args.push(v);
            format!("(({ty} IN ({types}) AND json_extract({column}, ?{p}) = ?{}) OR {ty} = 'array')", args.len())
        }
        None => format!("{ty} IN ({types}, 'array')"),
    })
}

fn number(n: &serde_json::Number) -> SqlValue {
    match n.as_i64() {
        Some(i) => SqlValue::Integer(i),
        None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
    }
}

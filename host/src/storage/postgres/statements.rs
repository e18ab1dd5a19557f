//! The read statements of the PostgreSQL provider, built from the queries
//! (public so tests can `EXPLAIN` exactly what the provider runs).

use super::query::{self, Arg, Sql};
use crate::model::{EventOrder, EventQuery, EventSort, FeedQuery, StateQuery};
use crate::storage::FEED_PAGE;
use crate::storage::sql::type_hash;

pub const EVENT_COLUMNS: &str = "seq, id, domain, type, key, version, kind, method, time, vals, claims";

/// A record's current state: `$1` type hash, `$2` key, `$3` domain, `$4` type.
/// The gateway gathers gets into [`GET_MANY`]; this one-record form is the
/// point read the bench's bare-database ceiling issues.
pub const GET: &str =
    "SELECT version, vals FROM states WHERE dt = $1 AND key = $2 AND domain = $3 AND type = $4 AND vals IS NOT NULL";

/// Live states of a batch of records (`$1`..`$4`: arrays of type hashes,
/// keys, domains and types, one element per lookup), each row with the
/// 1-based position of its lookup. One primary-key probe per element. One
/// more row, at position 0, holds the seq counter in its version column:
/// the head this statement's snapshot saw.
pub const GET_MANY: &str = "SELECT q.i, s.version, s.vals \
     FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS q(dt, key, domain, type, i) \
     JOIN states s ON s.dt = q.dt AND s.key = q.key AND s.domain = q.domain AND s.type = q.type \
     WHERE s.vals IS NOT NULL \
     UNION ALL SELECT 0, n, NULL FROM seq_counter WHERE id = 1";

/// An event by id (`$1`).
pub const GET_EVENT: &str =
    "SELECT seq, id, domain, type, key, version, kind, method, time, vals, claims FROM events WHERE id = $1";

fn limit(n: usize) -> Arg {
    Arg::I64(n.min(i64::MAX as usize) as i64)
}

/// A state search and what of it the SQL does exactly.
pub struct StateSearch {
    pub sql: Sql,
    pub exact_filter: bool,
    pub exact_sort: bool,
    /// Filter and sort are exact: offset and limit run in SQL too.
    pub in_sql: bool,
}

/// A state search now: over `states`.
pub fn search_states(q: &StateQuery) -> StateSearch {
    let mut sql = Sql::new("SELECT key, version, vals FROM states WHERE dt = ");
    let dt = sql.arg(Arg::Bytes(type_hash(&q.domain, &q.ty)));
    let d = sql.arg(Arg::Text(q.domain.clone()));
    let t = sql.arg(Arg::Text(q.ty.clone()));
    sql.push(&format!("{dt} AND domain = {d} AND type = {t} AND vals IS NOT NULL"));
    finish_state_search(sql, q)
}

/// A state search as of event `seq`: the type's records (every record
/// ever written keeps its `states` row) each as its last event up to `seq`
/// left it, found by one descent of `events_by_record_seq` per record, so
/// the cost grows with the type's records, not with their history. The
/// derived table has the columns `states` has (`key`, `version`, `vals`,
/// `doc`), so the filter, sort and page are the same SQL as a search now.
pub fn search_states_past(q: &StateQuery, seq: u64) -> StateSearch {
    let mut sql = Sql::new("");
    let at = sql.arg(Arg::I64(seq.min(i64::MAX as u64) as i64));
    let dt = sql.arg(Arg::Bytes(type_hash(&q.domain, &q.ty)));
    let d = sql.arg(Arg::Text(q.domain.clone()));
    let t = sql.arg(Arg::Text(q.ty.clone()));
    sql.push(&format!(
        "SELECT key, version, vals FROM (\
           SELECT s.key, e.version, e.vals, e.doc FROM states s CROSS JOIN LATERAL (\
             SELECT x.version, x.vals, x.doc FROM events x \
             WHERE x.dt = s.dt AND x.key = s.key AND x.seq <= {at} ORDER BY x.seq DESC LIMIT 1) e \
           WHERE s.dt = {dt} AND s.domain = {d} AND s.type = {t}) p \
         WHERE vals IS NOT NULL"
    ));
    finish_state_search(sql, q)
}

/// A record as of event `seq` (`$1` type hash, `$2` key, `$3` seq): its
/// last event up to `seq`, one descent of `events_by_record_seq`.
pub const GET_PAST: &str =
    "SELECT version, vals FROM events WHERE dt = $1 AND key = $2 AND seq <= $3 ORDER BY seq DESC LIMIT 1";

/// The filter, order and (when both are exact) page of a state search
/// whose `sql` selects `key, version, vals` from rows with a `doc`.
fn finish_state_search(mut sql: Sql, q: &StateQuery) -> StateSearch {
    let exact_filter = query::filter(&mut sql, "doc", &q.filter);
    let exact_sort = query::order_by(&mut sql, q.sort.as_ref());
    // Exact SQL: offset and limit run in the database. Otherwise the
    // matcher (and, for a sort SQL cannot express, the sort) finishes.
    let in_sql = exact_filter && exact_sort;
    if in_sql {
        let l = sql.arg(limit(q.limit));
        let o = sql.arg(limit(q.offset));
        sql.push(&format!(" LIMIT {l} OFFSET {o}"));
    }
    StateSearch { sql, exact_filter, exact_sort, in_sql }
}

/// An event search, and whether it is exact: its filters, and its order
/// (seq, or time then seq), so offset and limit run in SQL. A search sorted
/// by a values field is read in seq order for the page to choose from.
pub fn search_events(q: &EventQuery) -> (Sql, bool) {
    let mut sql = Sql::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE "));
    let dt = sql.arg(Arg::Bytes(type_hash(&q.domain, &q.ty)));
    let d = sql.arg(Arg::Text(q.domain.clone()));
    let t = sql.arg(Arg::Text(q.ty.clone()));
    // In seq order, the type is written as a range and the order as
    // (dt, seq): with `dt = $1` the planner drops dt from the order and may
    // walk the whole log by its primary key, filtering, which it costs as
    // if the type's events were spread evenly; for a type written after
    // many others that reads every older event (33 ms instead of 0.3 ms
    // over 100k events in a generic plan). Only `events_by_type_seq` gives
    // this order, and it starts at the type's first event.
    let by_seq = q.key.is_none() && !matches!(q.sort, Some(EventSort { by: EventOrder::Time, .. }));
    if by_seq {
        sql.push(&format!("dt >= {dt} AND dt <= {dt} AND domain = {d} AND type = {t}"));
    } else {
        sql.push(&format!("dt = {dt} AND domain = {d} AND type = {t}"));
    }
    if let Some(key) = &q.key {
        let k = sql.arg(Arg::Text(key.clone()));
        sql.push(&format!(" AND key = {k}"));
    }
    if let Some(min) = q.min_time {
        let m = sql.arg(Arg::I64(min));
        sql.push(&format!(" AND time >= {m}"));
    }
    if let Some(max) = q.max_time {
        let m = sql.arg(Arg::I64(max));
        sql.push(&format!(" AND time <= {m}"));
    }
    for (cond, bound) in [(">=", q.min_version), ("<=", q.max_version)] {
        if let Some(v) = bound {
            let m = sql.arg(Arg::I64(v as i64));
            sql.push(&format!(" AND version {cond} {m}"));
        }
    }
    // A deletion has no values; filters see it as the empty object.
    let exact = query::filter(&mut sql, "COALESCE(doc, '{}'::jsonb)", &q.filter)
        & query::filter(&mut sql, "cdoc", &q.claims_filter);
    // One record's events: version order is seq order, and its index
    // serves it.
    match &q.sort {
        Some(EventSort { by: EventOrder::Time, descending }) => {
            let dir = if *descending { "DESC" } else { "ASC" };
            sql.push(&format!(" ORDER BY time {dir}, seq {dir}"));
        }
        _ => sql.push(if by_seq { " ORDER BY dt, seq" } else { " ORDER BY version" }),
    }
    let exact = exact && !q.sorted_by_field();
    if exact {
        let l = sql.arg(limit(q.limit));
        let o = sql.arg(limit(q.offset));
        sql.push(&format!(" LIMIT {l} OFFSET {o}"));
    }
    (sql, exact)
}

/// A catch-up page.
pub fn feed(q: &FeedQuery) -> Sql {
    let mut sql = Sql::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > "));
    let after = sql.arg(Arg::I64(q.after_seq.min(i64::MAX as u64) as i64));
    sql.push(&after);
    match (&q.topic.domain, &q.topic.ty) {
        (Some(d), Some(t)) => {
            let dt = sql.arg(Arg::Bytes(type_hash(d, t)));
            let d = sql.arg(Arg::Text(d.clone()));
            let t = sql.arg(Arg::Text(t.clone()));
            sql.push(&format!(" AND dt = {dt} AND domain = {d} AND type = {t}"));
        }
        (domain, ty) => {
            if let Some(d) = domain {
                let d = sql.arg(Arg::Text(d.clone()));
                sql.push(&format!(" AND domain = {d}"));
            }
            if let Some(t) = ty {
                let t = sql.arg(Arg::Text(t.clone()));
                sql.push(&format!(" AND type = {t}"));
            }
        }
    }
    if let Some(key) = &q.key {
        let k = sql.arg(Arg::Text(key.clone()));
        sql.push(&format!(" AND key = {k}"));
    }
    if let Some(from) = q.from_time {
        let f = sql.arg(Arg::I64(from));
        sql.push(&format!(" AND time >= {f}"));
    }
    let l = sql.arg(limit(q.limit.min(FEED_PAGE * 16)));
    sql.push(&format!(" ORDER BY seq LIMIT {l}"));
    sql
}

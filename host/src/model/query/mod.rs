//! Queries over states and events, and the one definition of what they match.
//!
//! v0.5.0 handed `query_string` to MongoDB as a find filter, so clients write
//! Mongo-style filters: `{"a.b": 1}` matches when the nested field equals 1
//! (or, for an array field, contains 1), and a value may be an operator object
//! such as `{"$gte": 3}`. Unknown operators are refused, never ignored, so a
//! typo cannot silently widen a query.
//!
//! This module decides every result. A storage provider either translates a
//! query exactly, or reads a superset of candidates from its backend and lets
//! the query choose: `matches` says whether one candidate belongs, and
//! `Select::select` / `Page` pick the page (order, offset, limit) while
//! holding at most `offset + limit` candidates.
//!
//! **Deletions.** A deletion event has no values. For matching, its values
//! are the empty object, exactly as a MongoDB document without those fields:
//! `{"x": {"$ne": 1}}`, `{"x": {"$nin": [1]}}`, `{"x": {"$exists": false}}`
//! and `{"x": null}` match a deletion, `{"x": 1}` does not. Its claims are
//! matched like any other event's.
//!
//! - `filter`: the filter language (parsing, bounds, matching);
//! - `order`: JSON equality and the total sort order;
//! - `page`: choosing a page in bounded memory.

mod filter;
mod order;
mod page;

pub use filter::{
    Condition, Filter, MAX_CONDITIONS, MAX_LIST_VALUES, MAX_PATH_BYTES, MAX_PATH_SEGMENTS, Op, lookup, type_name,
};
pub use order::{Sort, compare_values, json_eq};
pub use page::{Arrival, Page, Select};

use super::{Event, State, Topic, Values};
use std::cmp::Ordering;
use std::sync::LazyLock;

/// A search over current states of one domain and type.
#[derive(Debug, Clone, PartialEq)]
pub struct StateQuery {
    pub domain: String,
    pub ty: String,
    pub filter: Filter,
    pub sort: Option<Sort>,
    pub limit: usize,
    pub offset: usize,
}

/// A search over the event history, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct EventQuery {
    pub domain: String,
    pub ty: String,
    pub key: Option<String>,
    pub filter: Filter,
    pub claims_filter: Filter,
    /// Inclusive bounds on `Event::time`.
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
    pub limit: usize,
    pub offset: usize,
}

/// Events in store order after a position: what catch-up streams replay and
/// what the hub sweeps.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedQuery {
    pub topic: Topic,
    pub key: Option<String>,
    /// Only events with `seq > after_seq`.
    pub after_seq: u64,
    /// Only events with `time >= from_time`.
    pub from_time: Option<i64>,
    pub limit: usize,
}

/// What a values filter sees of an event: its values, or for a deletion the
/// empty object (see the module comment).
pub fn event_values(event: &Event) -> &Values {
    static EMPTY: LazyLock<Values> = LazyLock::new(Values::new);
    event.values.as_ref().unwrap_or(&EMPTY)
}

impl StateQuery {
    /// Whether a current state belongs to the result (before paging).
    pub fn matches(&self, state: &State) -> bool {
        state.record.domain == self.domain && state.record.ty == self.ty && self.filter.matches(&state.values)
    }
}

impl Select for StateQuery {
    type Item = State;

    fn keeps(&self, state: &State) -> bool {
        self.matches(state)
    }

    /// By the sort field (ties by key), or by key when there is none.
    fn order(&self, a: &State, b: &State) -> Ordering {
        match &self.sort {
            Some(sort) => sort.compare((&a.record.key, &a.values), (&b.record.key, &b.values)),
            None => a.record.key.cmp(&b.record.key),
        }
    }

    fn window(&self) -> (usize, usize) {
        (self.offset, self.limit)
    }
}

impl EventQuery {
    /// Whether an event belongs to the result (before paging).
    pub fn matches(&self, e: &Event) -> bool {
        e.record.domain == self.domain
            && e.record.ty == self.ty
            && self.key.as_ref().is_none_or(|k| *k == e.record.key)
            && self.min_time.is_none_or(|t| e.time >= t)
            && self.max_time.is_none_or(|t| e.time <= t)
            && self.filter.matches(event_values(e))
            && self.claims_filter.matches(&e.claims)
    }
}

impl Select for EventQuery {
    type Item = Event;

    fn keeps(&self, e: &Event) -> bool {
        self.matches(e)
    }

    /// Oldest (lowest seq) first.
    fn order(&self, a: &Event, b: &Event) -> Ordering {
        a.seq.cmp(&b.seq)
    }

    fn window(&self) -> (usize, usize) {
        (self.offset, self.limit)
    }
}

impl FeedQuery {
    /// Whether an event belongs to the feed (which is in seq order, up to
    /// `limit`).
    pub fn matches(&self, e: &Event) -> bool {
        e.seq > self.after_seq
            && self.topic.matches(&e.record)
            && self.key.as_ref().is_none_or(|k| *k == e.record.key)
            && self.from_time.is_none_or(|t| e.time >= t)
    }
}

//! Queries over states and events, and the one definition of what they match.
//!
//! v0.5.0 handed `query_string` to MongoDB as a find filter, so clients write
//! MongoDB's query language: `{"a.b": 1}` matches when the nested field
//! equals 1 (or, for an array field, contains 1), a value may be an operator
//! object such as `{"$gte": 3}`, and `$and`/`$or`/`$nor` combine filters.
//! Unknown operators are refused, never ignored, so a typo cannot silently
//! widen a query. docs/guarantees.md states the language in full.
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
//! - `filter`: what a filter is and what it matches;
//! - `event_filter`: a stream's filter (kinds, values, the writer's
//!   claims) and its canonical form;
//! - `parse`: reading a filter from JSON, and its bounds; `render`: a
//!   filter written back as JSON (for providers that take the language);
//! - `path`: the values a field path reaches (through arrays);
//! - `pattern`: `$regex` on a linear-time engine;
//! - `order`: JSON equality, MongoDB's BSON order, the total sort order;
//! - `page`: choosing a page in bounded memory.

mod event_filter;
mod filter;
mod order;
mod page;
mod parse;
mod path;
mod pattern;
mod render;

pub use event_filter::{EventFilter, canonical_json};
pub use filter::{Clause, Condition, ElemMatch, Filter, Kind, Op, type_name};
pub use order::{Sort, bson_cmp, compare_values, json_eq, same_bracket};
pub use page::{Arrival, Page, Select};
pub use parse::{MAX_CLAUSES, MAX_CONDITIONS, MAX_DEPTH, MAX_LIST_VALUES, MAX_PATH_BYTES, MAX_PATH_SEGMENTS};
pub use path::{Reached, is_index, lookup, resolve};
pub use pattern::{MAX_REGEX_BYTES, MAX_REGEXES, Pattern, REGEX_DFA_LIMIT, REGEX_NEST_LIMIT, REGEX_SIZE_LIMIT};

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

/// A search over the event history: oldest (lowest seq) first, or in the
/// order of `sort`.
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
    /// Inclusive bounds on `Event::version` (versions are per record, so
    /// these are meant with `key`: one record's versions between two).
    pub min_version: Option<u64>,
    pub max_version: Option<u64>,
    pub limit: usize,
    pub offset: usize,
    pub sort: Option<EventSort>,
}

/// The order of an event search (`SearchEventOpts.sort`).
#[derive(Debug, Clone, PartialEq)]
pub struct EventSort {
    pub by: EventOrder,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventOrder {
    /// `Event::time`, ties by seq.
    Time,
    /// A field of the event's values (`values.<path>`), in the sort order of
    /// state searches (`compare_values`); a deletion's values are `{}`.
    /// Ties by seq.
    Field(Vec<String>),
}

impl EventSort {
    /// `field` is `time` (or empty, meaning time) or `values.<dot path>`;
    /// `name` names the request field in errors.
    pub fn parse(name: &str, field: &str, descending: bool) -> crate::model::Result<EventSort> {
        let by = match field {
            "" | "time" => EventOrder::Time,
            f => match f.strip_prefix("values.") {
                Some(path) => EventOrder::Field(parse::parse_path(name, path)?),
                None => {
                    return Err(crate::model::Error::invalid(
                        name,
                        format!("sorts by \"time\" or \"values.<field path>\", got {}", parse::shown(f)),
                    ));
                }
            },
        };
        Ok(EventSort { by, descending })
    }

    pub fn compare(&self, a: &Event, b: &Event) -> Ordering {
        let ord = match &self.by {
            EventOrder::Time => a.time.cmp(&b.time),
            EventOrder::Field(path) => {
                compare_values(lookup(event_values(a), path), lookup(event_values(b), path))
            }
        }
        .then_with(|| a.seq.cmp(&b.seq));
        if self.descending { ord.reverse() } else { ord }
    }
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
    event.values.as_deref().unwrap_or(&EMPTY)
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
            && self.min_version.is_none_or(|v| e.version >= v)
            && self.max_version.is_none_or(|v| e.version <= v)
            && self.filter.matches(event_values(e))
            && self.claims_filter.matches(&e.claims)
    }
}

impl EventQuery {
    /// How candidates read in seq order arrive for this query's order.
    pub fn seq_arrival(&self) -> Arrival {
        if self.sort.is_some() { Arrival::AnyOrder } else { Arrival::InOrder }
    }

    /// Sorted by a field of the values (which no provider orders by in its
    /// backend: the page is chosen from candidates in any order).
    pub fn sorted_by_field(&self) -> bool {
        self.sort.as_ref().is_some_and(|s| matches!(s.by, EventOrder::Field(_)))
    }
}

impl Select for EventQuery {
    type Item = Event;

    fn keeps(&self, e: &Event) -> bool {
        self.matches(e)
    }

    /// Oldest (lowest seq) first, or by the sort.
    fn order(&self, a: &Event, b: &Event) -> Ordering {
        match &self.sort {
            Some(sort) => sort.compare(a, b),
            None => a.seq.cmp(&b.seq),
        }
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

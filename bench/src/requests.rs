//! The request shapes: the same messages for the gateway, the bare
//! server's templates and every scenario, and the values seeded into
//! storage to answer them.

use prost_types::{Struct, Value as PbValue, value::Kind};
use stategate::proto as pb;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Set,
    Get,
    Search,
    EventSearch,
    /// `grpc.health.v1.Health/Check`: the transport's share of any call,
    /// and so the most a unary call over the same clients could reach.
    Health,
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Get => "get",
            Op::Search => "search",
            Op::EventSearch => "event-search",
            Op::Health => "health",
        }
    }
}

pub const DOMAIN: &str = "bench";
pub const RECORD_TYPE: &str = "rec";
pub const EVENT_TYPE: &str = "ev";
/// Keys the seeded events are spread over.
pub const EVENT_KEYS: usize = 10_000;
/// Distinct values of the filtered field (`group`): a filter matches 1 in 10.
pub const GROUPS: usize = 10;

fn pb_str(s: impl Into<String>) -> PbValue {
    PbValue { kind: Some(Kind::StringValue(s.into())) }
}

fn pb_num(n: f64) -> PbValue {
    PbValue { kind: Some(Kind::NumberValue(n)) }
}

/// About 1 KiB of values: a group (the searched field), a number and filler.
pub fn values_1k(i: u64, extra: &[(&str, f64)]) -> Struct {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("group".to_owned(), pb_str(format!("g{}", i % GROUPS as u64)));
    fields.insert("n".to_owned(), pb_num(i as f64));
    fields.insert("payload".to_owned(), pb_str("x".repeat(960)));
    for (k, v) in extra {
        fields.insert((*k).to_owned(), pb_num(*v));
    }
    Struct { fields }
}

pub fn json_values(i: u64, filler: usize) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("group".into(), format!("g{}", i % GROUPS as u64).into());
    m.insert("n".into(), i.into());
    m.insert("payload".into(), "x".repeat(filler).into());
    m
}

pub fn set_request(client: usize, i: u64) -> pb::State {
    pb::State {
        domain: DOMAIN.into(),
        r#type: "set".into(),
        key: format!("c{client}k{i}"),
        values: Some(values_1k(i, &[])),
        ..Default::default()
    }
}

/// `Get` of seeded record `i`.
pub fn get_request(i: usize) -> pb::StateRef {
    pb::StateRef {
        domain: DOMAIN.into(),
        r#type: RECORD_TYPE.into(),
        key: record_key(i),
        ..Default::default()
    }
}

/// The filter of both searches: one of GROUPS values (matches 1 in 10),
/// first 10 results.
const SEARCH_LIMIT: usize = 10;

fn group_filter(group: usize) -> String {
    format!(r#"{{"group":"g{group}"}}"#)
}

pub fn state_search_request(group: usize) -> pb::SearchStateOpts {
    pb::SearchStateOpts {
        domain: DOMAIN.into(),
        r#type: RECORD_TYPE.into(),
        query_string: group_filter(group),
        limit: SEARCH_LIMIT as i64,
        ..Default::default()
    }
}

pub fn event_search_request(group: usize) -> pb::SearchEventOpts {
    pb::SearchEventOpts {
        domain: DOMAIN.into(),
        r#type: EVENT_TYPE.into(),
        query_string: group_filter(group),
        limit: SEARCH_LIMIT as i64,
        ..Default::default()
    }
}

/// A search must return a full page: the seeded data has 10k+ matches.
pub fn full_page(what: &str, n: usize) -> Result<(), String> {
    if n == SEARCH_LIMIT { Ok(()) } else { Err(format!("{what} returned {n} results, not {SEARCH_LIMIT}")) }
}

pub fn record_key(i: usize) -> String {
    format!("r{i:07}")
}

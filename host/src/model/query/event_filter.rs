//! What a filtered stream passes on: events of some kinds, whose values
//! match a `query_string` and whose writer's claims match a `claims_query`
//! (the filters of `filter`, decided by its one matcher).
//!
//! Two filters that mean the same thing written differently (keys in
//! another order, other white space, kinds listed twice or in another
//! order) have the same `canonical` form, which is what the hub interns a
//! filter by: streams sharing a filter share its evaluations.

use super::filter::Filter;
use super::event_values;
use crate::model::{Error, Event, EventKind, Result};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct EventFilter {
    /// On the event's values (a deletion's are the empty object).
    pub values: Filter,
    /// On the claims of the caller who wrote the event.
    pub claims: Filter,
    /// The kinds passed on, sorted, without repeats; empty: every kind.
    pub kinds: Vec<EventKind>,
    canonical: String,
}

impl EventFilter {
    /// Parses a stream's filter fields: `query_string` and `claims_query`
    /// (JSON objects, empty for none) and `kinds` (names such as `SET` or
    /// `del`). `None` when the filter passes every event. Errors name the
    /// field.
    pub fn parse(query_string: &str, claims_query: &str, kinds: &[String]) -> Result<Option<EventFilter>> {
        let values = Filter::parse("query_string", query_string)?;
        let claims = Filter::parse("claims_query", claims_query)?;
        let mut parsed = Vec::with_capacity(kinds.len());
        for name in kinds {
            let kind = EventKind::parse(&name.trim().to_ascii_uppercase()).ok_or_else(|| {
                Error::invalid("kinds", format!("unknown event kind {name:?}; known: SET, EDIT, DEL, REVERT"))
            })?;
            parsed.push(kind);
        }
        parsed.sort_by_key(|k| k.as_str());
        parsed.dedup();
        if values.is_empty() && claims.is_empty() && parsed.is_empty() {
            return Ok(None);
        }
        // Parsing succeeded, so the texts are JSON objects (or empty).
        let canonical_of = |text: &str| match serde_json::from_str::<Value>(text) {
            Ok(v) => canonical_json(&v),
            Err(_) => "{}".to_owned(),
        };
        let canonical = format!(
            "{{\"claims\":{},\"kinds\":[{}],\"values\":{}}}",
            canonical_of(claims_query),
            parsed.iter().map(|k| format!("\"{}\"", k.as_str())).collect::<Vec<_>>().join(","),
            canonical_of(query_string),
        );
        Ok(Some(EventFilter { values, claims, kinds: parsed, canonical }))
    }

    /// Whether the event passes: the one definition, used on replayed
    /// history and on live events alike.
    pub fn matches(&self, event: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && self.values.matches(event_values(event))
            && self.claims.matches(&event.claims)
    }

    /// The filter's canonical text: equal for filters that differ only in
    /// how they were written (object key order, white space, the order and
    /// repeats of kinds).
    pub fn canonical(&self) -> &str {
        &self.canonical
    }
}

/// JSON text with every object's keys in sorted order, no white space.
/// Key order carries no meaning in a filter (clauses are a conjunction,
/// objects compare regardless of field order), so this is a canonical form.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecordRef;
    use serde_json::json;

    fn event(kind: EventKind, values: Option<Value>, claims: Value) -> Event {
        Event {
            id: "e".into(),
            seq: 1,
            record: RecordRef::parse("d", "t", "k").unwrap(),
            values: values.map(|v| v.as_object().unwrap().clone().into()),
            claims: claims.as_object().unwrap().clone(),
            time: 1,
            version: 1,
            kind,
            method: String::new(),
        }
    }

    #[test]
    fn an_empty_filter_is_none() {
        assert!(EventFilter::parse("", " ", &[]).unwrap().is_none());
        assert!(EventFilter::parse("{}", "", &[]).unwrap().is_none());
    }

    #[test]
    fn kinds_values_and_claims_all_hold() {
        let f = EventFilter::parse(r#"{"n": {"$gt": 1}}"#, r#"{"sub": "ann"}"#, &["set".into(), "EDIT".into()]).unwrap().unwrap();
        assert!(f.matches(&event(EventKind::Set, Some(json!({"n": 2})), json!({"sub": "ann"}))));
        assert!(!f.matches(&event(EventKind::Revert, Some(json!({"n": 2})), json!({"sub": "ann"}))));
        assert!(!f.matches(&event(EventKind::Set, Some(json!({"n": 1})), json!({"sub": "ann"}))));
        assert!(!f.matches(&event(EventKind::Set, Some(json!({"n": 2})), json!({"sub": "bob"}))));
        let deletions = EventFilter::parse(r#"{"n": {"$exists": false}}"#, "", &["DEL".into()]).unwrap().unwrap();
        assert!(deletions.matches(&event(EventKind::Del, None, json!({}))), "a deletion's values are {{}}");
    }

    #[test]
    fn the_canonical_form_ignores_how_a_filter_is_written() {
        let a = EventFilter::parse(r#"{"a": 1, "b": {"$in": [2, 1]}}"#, "", &["DEL".into(), "SET".into()]).unwrap().unwrap();
        let b = EventFilter::parse(r#" { "b" : {"$in":[2,1]} , "a":1 }"#, "", &["set".into(), "DEL".into(), "SET".into()])
            .unwrap()
            .unwrap();
        assert_eq!(a.canonical(), b.canonical());
        let c = EventFilter::parse(r#"{"a": 1, "b": {"$in": [1, 2]}}"#, "", &["DEL".into(), "SET".into()]).unwrap().unwrap();
        assert_ne!(a.canonical(), c.canonical(), "array order is kept");
        let d = EventFilter::parse("", r#"{"a": 1, "b": {"$in": [2, 1]}}"#, &["DEL".into(), "SET".into()]).unwrap().unwrap();
        assert_ne!(a.canonical(), d.canonical(), "values and claims are told apart");
    }

    #[test]
    fn errors_name_the_field() {
        let e = EventFilter::parse(r#"{"a": {"$where": 1}}"#, "", &[]).unwrap_err().to_string();
        assert!(e.contains("query_string") && e.contains("$where"), "{e}");
        let e = EventFilter::parse("", "[1]", &[]).unwrap_err().to_string();
        assert!(e.contains("claims_query"), "{e}");
        let e = EventFilter::parse("", "", &["UPSERT".into()]).unwrap_err().to_string();
        assert!(e.contains("kinds") && e.contains("UPSERT"), "{e}");
    }
}

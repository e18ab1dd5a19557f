//! Events and states as BSON documents. The JSON text is the stored truth
//! (`vals`, `claims`); the BSON copy beside it (`doc`, `cdoc`, flagged
//! `raw` / `craw` when BSON cannot hold it exactly) only serves pushdown
//! (see **Values** in the module comment of `mongo`).

use crate::model::{Error, Event, EventKind, RecordRef, Result, State, Values};
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;

fn json_text(v: &Values) -> String {
    // Serializing a map of JSON values cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// Stores the BSON copy of `v` under `field`, or flags it `raw` when BSON
/// cannot hold it exactly.
fn put_copy(d: &mut Document, field: &str, flag: &str, v: &Values) {
    match to_bson_doc(v) {
        Some(copy) => {
            d.insert(field, copy);
            d.insert(flag, false);
        }
        None => {
            d.insert(field, Bson::Null);
            d.insert(flag, true);
        }
    }
}

fn to_bson_doc(v: &Values) -> Option<Document> {
    let mut d = Document::new();
    for (k, val) in v {
        if k.is_empty() || k.contains('.') || k.starts_with('$') || k.contains('\0') {
            return None;
        }
        d.insert(k.clone(), to_bson(val)?);
    }
    Some(d)
}

fn to_bson(v: &Value) -> Option<Bson> {
    Some(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None if n.is_f64() => Bson::Double(n.as_f64()?),
            None => return None, // a u64 beyond i64: no exact BSON form
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect::<Option<_>>()?),
        Value::Object(m) => Bson::Document(to_bson_doc(m)?),
    })
}

/// The fields of a record's state document that an event sets: version,
/// the event's seq (`read_at`), liveness, the values as JSON text and
/// their queryable BSON copy.
pub(super) fn state_set(event: &Event) -> Document {
    let mut set = doc! {"v": event.version as i64, "s": event.seq as i64, "live": event.values.is_some()};
    match &event.values {
        Some(v) => {
            set.insert("vals", json_text(v));
            put_copy(&mut set, "doc", "raw", v);
        }
        None => {
            set.insert("vals", Bson::Null);
            set.insert("doc", Bson::Null);
            set.insert("raw", false);
        }
    }
    set
}

pub(super) fn event_to_doc(e: &Event) -> Document {
    let mut d = doc! {
        "_id": e.seq as i64,
        "id": &e.id,
        "d": &e.record.domain,
        "t": &e.record.ty,
        "k": &e.record.key,
        "v": e.version as i64,
        "kind": e.kind.as_str(),
        "m": &e.method,
        "time": e.time,
        "claims": json_text(&e.claims),
    };
    match &e.values {
        Some(v) => {
            d.insert("vals", json_text(v));
            put_copy(&mut d, "doc", "raw", v);
        }
        None => {
            d.insert("vals", Bson::Null);
        }
    }
    put_copy(&mut d, "cdoc", "craw", &e.claims);
    d
}

fn parse_json(field: &str, text: &str) -> Result<Values> {
    serde_json::from_str(text).map_err(|e| Error::internal(format!("mongo: stored {field} is corrupt: {e}")))
}

pub(super) fn event_from_doc(d: &Document) -> Result<Event> {
    let bad = |what: &str| Error::internal(format!("mongo: stored event is corrupt: {what}"));
    let text = |k: &str| d.get_str(k).map(str::to_owned).map_err(|_| bad(k));
    let int = |k: &str| d.get_i64(k).map_err(|_| bad(k));
    let kind = text("kind")?;
    Ok(Event {
        id: text("id")?,
        seq: int("_id")? as u64,
        record: RecordRef {
            domain: text("d")?,
            ty: text("t")?,
            key: text("k")?,
        },
        values: match d.get("vals") {
            Some(Bson::String(s)) => Some(parse_json("values", s)?.into()),
            _ => None,
        },
        claims: parse_json("claims", &text("claims")?)?,
        time: int("time")?,
        version: int("v")? as u64,
        kind: EventKind::parse(&kind).ok_or_else(|| bad("kind"))?,
        method: text("m")?,
    })
}

pub(super) fn state_from_doc(d: &Document) -> Result<State> {
    let bad = |what: &str| Error::internal(format!("mongo: stored state is corrupt: {what}"));
    let text = |k: &str| d.get_str(k).map(str::to_owned).map_err(|_| bad(k));
    Ok(State {
        record: RecordRef {
            domain: text("d")?,
            ty: text("t")?,
            key: text("k")?,
        },
        values: parse_json("values", &text("vals")?)?,
        version: d.get_i64("v").map_err(|_| bad("v"))? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bson_copy_is_exact_or_absent() {
        let ok = json!({"a": 1, "b": [1.5, "x", null, {"c": true}]});
        assert!(to_bson_doc(ok.as_object().unwrap()).is_some());
        for bad in [json!({"a.b": 1}), json!({"$x": 1}), json!({"n": u64::MAX}), json!({"o": {"": 1}})] {
            assert!(to_bson_doc(bad.as_object().unwrap()).is_none(), "{bad}");
        }
    }

    #[test]
    fn events_round_trip_through_documents() {
        let e = Event {
            id: "id-1".into(),
            seq: 7,
            record: RecordRef::parse("d", "t", "k").unwrap(),
            values: Some(json!({"n": u64::MAX, "a.b": 1}).as_object().unwrap().clone().into()),
            claims: json!({"sub": "x"}).as_object().unwrap().clone(),
            time: 123,
            version: 3,
            kind: EventKind::Edit,
            method: "/m".into(),
        };
        let d = event_to_doc(&e);
        assert_eq!(d.get_bool("raw"), Ok(true));
        assert_eq!(event_from_doc(&d).unwrap(), e);
        let _ = mongodb::bson::to_vec(&d).unwrap();
    }
}

//! protobuf ↔ model: `google.protobuf.Struct` ↔ JSON objects, and the
//! messages the gRPC adapter returns.

use crate::model::{Catalog, Error, Event, EventKind, Result, State, Values, json};
use crate::proto as pb;
use prost_types::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::{Number, Value};

/// A Struct from the wire as JSON. Struct numbers are doubles: integral ones
/// become JSON integers again (so `30` round-trips as `30`, not `30.0`), and
/// NaN or infinity, which JSON cannot hold, are refused. More than
/// `json::MAX_VALUES` values are refused too, before they are copied.
pub fn struct_to_json(field: &str, s: Struct) -> Result<Values> {
    let mut budget = json::MAX_VALUES;
    object(field, s, &mut budget)
}

fn object(field: &str, s: Struct, budget: &mut usize) -> Result<Values> {
    s.fields
        .into_iter()
        .map(|(k, v)| Ok((k, value_to_json(field, v, budget)?)))
        .collect()
}

fn value_to_json(field: &str, v: PbValue, budget: &mut usize) -> Result<Value> {
    *budget = budget.checked_sub(1).ok_or_else(|| json::too_many_values(field))?;
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => number(field, n)?,
        Some(Kind::StructValue(s)) => Value::Object(object(field, s, budget)?),
        Some(Kind::ListValue(l)) => {
            if l.values.len() > *budget {
                return Err(json::too_many_values(field));
            }
            Value::Array(
                l.values
                    .into_iter()
                    .map(|v| value_to_json(field, v, budget))
                    .collect::<Result<_>>()?,
            )
        }
    })
}

pub(super) fn number(field: &str, n: f64) -> Result<Value> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        return Ok(Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| Error::invalid(field, format!("{n} is not a finite number")))
}

/// A JSON object as a Struct. It takes the object by value: responses are
/// converted once, and the strings move instead of being copied.
pub fn json_to_struct(m: Values) -> Struct {
    Struct {
        fields: m.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
    }
}

fn json_to_value(v: Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    PbValue { kind: Some(kind) }
}

/// The name of a wire `EventKind` value, as a stream filter reads kinds
/// (an unknown or unspecified value keeps a name the filter refuses).
pub fn kind_name(kind: i32) -> String {
    match pb::EventKind::try_from(kind) {
        Ok(k) => k.as_str_name().to_owned(),
        Err(_) => format!("EventKind({kind})"),
    }
}

pub fn state(s: State) -> pb::State {
    pb::State {
        domain: s.record.domain,
        r#type: s.record.ty,
        key: s.record.key,
        values: Some(json_to_struct(s.values)),
        version: s.version as i64,
        expected_version: None,
        idempotency_key: String::new(),
        sequence: 0,
    }
}

pub fn catalog(c: Catalog) -> pb::Catalog {
    pb::Catalog {
        entries: c
            .entries
            .into_iter()
            .map(|e| pb::CatalogEntry {
                domain: e.domain,
                r#type: e.ty,
                records: e.records,
                events: e.events,
                last_event_time: e.last_event_time,
            })
            .collect(),
        head: c.head,
    }
}

pub fn event(e: Event) -> pb::Event {
    pb::Event {
        id: e.id,
        state: Some(pb::State {
            domain: e.record.domain,
            r#type: e.record.ty,
            key: e.record.key,
            values: e.values.map(|v| json_to_struct(v.into_values())),
            version: e.version as i64,
            expected_version: None,
            idempotency_key: String::new(),
            sequence: 0,
        }),
        claims: Some(json_to_struct(e.claims)),
        time: e.time,
        version: e.version as i64,
        kind: match e.kind {
            EventKind::Set => pb::EventKind::Set,
            EventKind::Edit => pb::EventKind::Edit,
            EventKind::Del => pb::EventKind::Del,
            EventKind::Revert => pb::EventKind::Revert,
        } as i32,
        method: e.method,
        sequence: e.seq as i64,
        // Set per stream by the stream encoder (`codec`), never here.
        resume_after: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn struct_round_trip_keeps_integers() {
        let v = json!({"n": 30, "f": 1.5, "s": "x", "l": [1, null, true], "o": {"a": -2}});
        let back = struct_to_json("values", json_to_struct(v.as_object().unwrap().clone())).unwrap();
        assert_eq!(Value::Object(back), v);
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let s = Struct {
            fields: [("x".to_owned(), PbValue { kind: Some(Kind::NumberValue(f64::NAN)) })].into(),
        };
        assert!(matches!(struct_to_json("values", s), Err(Error::InvalidArgument { .. })));
    }
}

//! The proto3 JSON form of the model (as protojson and grpc-gateway print
//! it: lowerCamelCase names, 64-bit integers as strings, enums by name). REST
//! responses, the `body`/`response` input of policies and the values crossing
//! into wasm guests all use it, so a record looks the same everywhere.

use super::{Catalog, CatalogEntry, Error, Event, EventKind, RecordRef, Result, State, Values};
use serde_json::{Map, Value, json};

/// Deepest nesting accepted in stored values and claims. serde_json's own
/// recursion limit (128) guards the parser; this keeps stored documents
/// within what every backend (MongoDB: 100) can index and return.
pub const MAX_DEPTH: usize = 64;

pub fn state(s: &State) -> Value {
    json!({
        "domain": s.record.domain,
        "type": s.record.ty,
        "key": s.record.key,
        "values": s.values,
        "version": s.version.to_string(),
    })
}

pub fn event(e: &Event) -> Value {
    let mut st = Map::new();
    st.insert("domain".into(), e.record.domain.clone().into());
    st.insert("type".into(), e.record.ty.clone().into());
    st.insert("key".into(), e.record.key.clone().into());
    if let Some(v) = &e.values {
        st.insert("values".into(), Value::Object(Values::clone(v)));
    }
    st.insert("version".into(), e.version.to_string().into());
    json!({
        "id": e.id,
        "state": st,
        "claims": e.claims,
        "time": e.time.to_string(),
        "version": e.version.to_string(),
        "kind": e.kind.as_str(),
        "method": e.method,
        "sequence": e.seq.to_string(),
    })
}

/// Parses the form `event` prints (used where events cross a text boundary,
/// such as wasm guests).
pub fn parse_event(v: &Value) -> Result<Event> {
    let bad = |what: &str| Error::internal(format!("malformed event JSON: {what}"));
    let o = v.as_object().ok_or_else(|| bad("not an object"))?;
    let st = o.get("state").and_then(Value::as_object).ok_or_else(|| bad("state"))?;
    let text = |m: &Map<String, Value>, k: &str| {
        m.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| bad(k))
    };
    Ok(Event {
        id: text(o, "id")?,
        seq: int_field(o, "sequence").map_err(|_| bad("sequence"))? as u64,
        record: RecordRef {
            domain: text(st, "domain")?,
            ty: text(st, "type")?,
            key: text(st, "key")?,
        },
        values: st.get("values").and_then(Value::as_object).cloned().map(Into::into),
        claims: o.get("claims").and_then(Value::as_object).cloned().unwrap_or_default(),
        time: int_field(o, "time").map_err(|_| bad("time"))?,
        version: int_field(o, "version").map_err(|_| bad("version"))? as u64,
        kind: o
            .get("kind")
            .and_then(Value::as_str)
            .and_then(EventKind::parse)
            .ok_or_else(|| bad("kind"))?,
        method: text(o, "method").unwrap_or_default(),
    })
}

pub fn parse_state(v: &Value) -> Result<State> {
    let bad = |what: &str| Error::internal(format!("malformed state JSON: {what}"));
    let o = v.as_object().ok_or_else(|| bad("not an object"))?;
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| bad(k));
    Ok(State {
        record: RecordRef {
            domain: text("domain")?,
            ty: text("type")?,
            key: text("key")?,
        },
        values: o.get("values").and_then(Value::as_object).cloned().ok_or_else(|| bad("values"))?,
        version: int_field(o, "version").map_err(|_| bad("version"))? as u64,
    })
}

/// The `Catalog` message as proto3 JSON (64-bit numbers as strings).
pub fn catalog(c: &Catalog) -> Value {
    let entries: Vec<Value> = c
        .entries
        .iter()
        .map(|e| {
            json!({
                "domain": e.domain,
                "type": e.ty,
                "records": e.records.to_string(),
                "events": e.events.to_string(),
                "lastEventTime": e.last_event_time.to_string(),
            })
        })
        .collect();
    json!({ "entries": entries, "head": c.head.to_string() })
}

/// Reads back what `catalog` printed (after a response policy or hook).
pub fn parse_catalog(v: &Value) -> Result<Catalog> {
    let bad = |what: &str| Error::internal(format!("malformed catalog JSON: {what}"));
    let o = v.as_object().ok_or_else(|| bad("not an object"))?;
    let count = |o: &Map<String, Value>, k: &str| int_field(o, k).map(|n| n.max(0) as u64).map_err(|_| bad(k));
    let entries = match o.get("entries") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                let e = item.as_object().ok_or_else(|| bad("entry"))?;
                let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| bad(k));
                Ok(CatalogEntry {
                    domain: text("domain")?,
                    ty: text("type")?,
                    records: count(e, "records")?,
                    events: count(e, "events")?,
                    last_event_time: int_field(e, "lastEventTime").map_err(|_| bad("lastEventTime"))?,
                })
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad("entries")),
    };
    Ok(Catalog { entries, head: count(o, "head")? })
}

/// Reads a proto3 JSON int64: a number or a decimal string. A missing field
/// is 0, as in proto3.
pub fn int_field(o: &Map<String, Value>, name: &str) -> Result<i64> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => parse_int(name, v),
    }
}

pub fn parse_int(name: &str, v: &Value) -> Result<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64))
            .ok_or_else(|| Error::invalid(name, format!("{n} is not a 64-bit integer"))),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| Error::invalid(name, format!("{s:?} is not a 64-bit integer"))),
        other => Err(Error::invalid(
            name,
            format!("expected an integer, got {}", super::query::type_name(other)),
        )),
    }
}

/// Most JSON values (scalars, arrays and objects, at any depth) one request
/// may carry. Decoded, a value costs a few dozen bytes whatever its text
/// costs (`0,` is two bytes), so a bound on the count, not only on the
/// bytes, keeps the memory of a request a small multiple of its size.
pub const MAX_VALUES: usize = 256 * 1024;

/// Refuses JSON text holding more than [`MAX_VALUES`] values, before any
/// of it is decoded: a linear scan that counts the commas and the opening
/// brackets outside strings (an upper bound on the number of values).
pub fn check_value_count(field: &str, text: &[u8]) -> Result<()> {
    let (mut count, mut in_string, mut escaped) = (1usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b'[' | b'{' => count += 1,
            _ => {}
        }
    }
    if count > MAX_VALUES {
        return Err(too_many_values(field));
    }
    Ok(())
}

/// The error for a request carrying more than [`MAX_VALUES`] values.
pub fn too_many_values(field: &str) -> Error {
    Error::invalid(field, format!("holds more than {MAX_VALUES} JSON values (the limit per request)"))
}

/// Refuses values nested deeper than `MAX_DEPTH`; `field` names them.
pub fn check_depth(field: &str, values: &Values) -> Result<()> {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let d = 1 + values.values().map(depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        return Err(Error::invalid(field, format!("nested {d} levels deep; the limit is {MAX_DEPTH}")));
    }
    Ok(())
}

/// RFC 7386 JSON merge patch of `patch` onto `target`.
pub fn merge_patch(target: &mut Values, patch: &Values) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let entry = target.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(t) = entry {
                    merge_patch(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}}).as_object().unwrap().clone();
        let p = json!({"a": "z", "c": {"f": null}, "n": {"x": 1}}).as_object().unwrap().clone();
        merge_patch(&mut t, &p);
        assert_eq!(Value::Object(t), json!({"a": "z", "c": {"d": "e"}, "n": {"x": 1}}));
    }

    #[test]
    fn event_round_trips_through_json() {
        let e = Event {
            id: "x".into(),
            seq: 7,
            record: RecordRef::parse("d", "t", "k").unwrap(),
            values: None,
            claims: Map::new(),
            time: 12,
            version: 3,
            kind: EventKind::Del,
            method: "/m".into(),
        };
        assert_eq!(parse_event(&event(&e)).unwrap(), e);
    }

    #[test]
    fn value_count_limit() {
        let many = format!("{{\"a\":[{}0]}}", "0,".repeat(MAX_VALUES));
        assert!(check_value_count("values", many.as_bytes()).is_err());
        let fine = format!("{{\"a\":[{}0]}}", "0,".repeat(MAX_VALUES / 2));
        check_value_count("values", fine.as_bytes()).unwrap();
        // Commas and brackets inside strings (escaped quotes too) are text.
        let text = format!("{{\"a\":\"{}\\\"\"}}", ",[{".repeat(MAX_VALUES));
        check_value_count("values", text.as_bytes()).unwrap();
    }

    #[test]
    fn depth_limit() {
        let mut v = json!(1);
        for _ in 0..=MAX_DEPTH {
            v = json!({ "a": v });
        }
        assert!(check_depth("values", v.as_object().unwrap()).is_err());
        assert!(check_depth("values", json!({"a": {"b": 1}}).as_object().unwrap()).is_ok());
    }

    #[test]
    fn ints_as_numbers_or_strings() {
        assert_eq!(parse_int("limit", &json!("12")).unwrap(), 12);
        assert_eq!(parse_int("limit", &json!(12)).unwrap(), 12);
        assert!(parse_int("limit", &json!("x")).is_err());
        assert!(parse_int("limit", &json!(true)).is_err());
    }
}

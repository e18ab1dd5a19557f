//! `google.protobuf.Struct` ↔ JSON.

use prost_types::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Number, Value};

/// A Struct as a JSON object. Struct numbers are doubles: integral ones
/// become JSON integers again, so `30` reads back as `30`, not `30.0`.
pub fn struct_to_json(s: &Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

fn value_to_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if n.fract() == 0.0 && n.abs() <= EXACT {
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null)
            }
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// A JSON object as a Struct.
pub fn json_to_struct(m: &Map<String, Value>) -> Struct {
    Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
    }
}

fn json_to_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    PbValue { kind: Some(kind) }
}

/// Any serializable value that is a JSON object, as a Struct.
pub(crate) fn object_struct(values: &impl serde::Serialize) -> crate::Result<Struct> {
    match serde_json::to_value(values) {
        Ok(Value::Object(m)) => Ok(json_to_struct(&m)),
        Ok(other) => Err(crate::Error::Json(format!(
            "values must be a JSON object, got {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => unreachable!(),
            }
        ))),
        Err(e) => Err(crate::Error::Json(format!("values: {e}"))),
    }
}

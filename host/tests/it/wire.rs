//! Helpers to build and read protobuf messages in tests.

use prost_types::{Struct, Value as PbValue, value::Kind};
use serde_json::Value;
use stategate::proto as pb;

pub fn to_struct(v: Value) -> Struct {
    let Value::Object(map) = v else { panic!("values must be an object") };
    Struct { fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_value(v: Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(to_value).collect() }),
        Value::Object(_) => Kind::StructValue(to_struct(v)),
    };
    PbValue { kind: Some(kind) }
}

pub fn from_struct(s: &Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), from_value(v))).collect())
}

fn from_value(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

pub fn state(domain: &str, ty: &str, key: &str, values: Value) -> pb::State {
    pb::State {
        domain: domain.into(),
        r#type: ty.into(),
        key: key.into(),
        values: Some(to_struct(values)),
        ..Default::default()
    }
}

pub fn state_ref(domain: &str, ty: &str, key: &str) -> pb::StateRef {
    pb::StateRef { domain: domain.into(), r#type: ty.into(), key: key.into(), ..Default::default() }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

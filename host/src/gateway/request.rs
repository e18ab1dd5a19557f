//! The requests of the gateway, as clients send them (not yet validated).
//!
//! Each mirrors its protobuf message. Serialized, it is the message's proto3
//! JSON: the `body` that policies see, whichever transport the call came in
//! on. Deserialized, it is what the REST API accepts: lowerCamelCase or the
//! original field names, 64-bit integers as numbers or strings; fields it
//! does not know are discarded, as grpc-gateway v2 (v0.5.0's REST layer)
//! did, so clients of other versions of the contract keep working.

use crate::model::{EventValues, Values};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `Set` (the `State` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SetRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub key: String,
    pub values: Option<EventValues>,
    /// Output only on the wire; accepted and ignored on input, so a client
    /// can send back a `State` it read.
    #[serde(with = "int64_opt", skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(with = "int64_opt", alias = "expected_version", skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    #[serde(alias = "idempotency_key")]
    pub idempotency_key: String,
}

/// `Get` and `Del` (the `StateRef` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RefRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub key: String,
    #[serde(with = "int64_opt", alias = "expected_version", skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    #[serde(alias = "idempotency_key")]
    pub idempotency_key: String,
    /// Get only: see `AsOf`.
    #[serde(flatten)]
    pub as_of: AsOf,
}

/// A point-in-time read (`Get`, `Search`): the answer as the store was
/// after event `as_of_sequence`, or at `as_of_time` (Unix nanoseconds);
/// neither is now, both is an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AsOf {
    #[serde(with = "int64_opt", alias = "as_of_sequence", skip_serializing_if = "Option::is_none")]
    pub as_of_sequence: Option<i64>,
    #[serde(with = "int64", alias = "as_of_time", skip_serializing_if = "is_zero")]
    pub as_of_time: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EditRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub key: String,
    pub patch: Option<Values>,
    #[serde(with = "int64_opt", alias = "expected_version", skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    #[serde(alias = "idempotency_key")]
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RevertRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub key: String,
    #[serde(alias = "event_id")]
    pub event_id: String,
    #[serde(with = "int64_opt", alias = "expected_version", skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    #[serde(alias = "idempotency_key")]
    pub idempotency_key: String,
}

/// `StateService.Search` (the `SearchStateOpts` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SearchStatesRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(alias = "query_string")]
    pub query_string: String,
    #[serde(with = "int64")]
    pub limit: i64,
    #[serde(with = "int64")]
    pub offset: i64,
    #[serde(alias = "sort_by")]
    pub sort_by: String,
    #[serde(alias = "sort_descending")]
    pub sort_descending: bool,
    #[serde(flatten)]
    pub as_of: AsOf,
}

/// `EventService.Search` (the `SearchEventOpts` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SearchEventsRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub key: String,
    #[serde(alias = "query_string")]
    pub query_string: String,
    #[serde(with = "int64")]
    pub min: i64,
    #[serde(with = "int64")]
    pub max: i64,
    #[serde(with = "int64")]
    pub limit: i64,
    #[serde(with = "int64")]
    pub offset: i64,
    #[serde(alias = "claims_query")]
    pub claims_query: String,
    /// The order; oldest first (by seq) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<EventSortRequest>,
    /// Inclusive bounds on `Event.version`; 0 is unbounded.
    #[serde(with = "int64", alias = "min_version", skip_serializing_if = "is_zero")]
    pub min_version: i64,
    #[serde(with = "int64", alias = "max_version", skip_serializing_if = "is_zero")]
    pub max_version: i64,
}

/// `SearchEventOpts.sort` (the `Sort` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EventSortRequest {
    /// `time` (or empty) or `values.<dot path>`.
    pub field: String,
    pub reverse: bool,
}

/// `EventService.Stream` (the `StreamOpts` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StreamRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(alias = "after_event_id")]
    pub after_event_id: String,
    #[serde(with = "int64", alias = "from_time")]
    pub from_time: i64,
    pub key: String,
    /// Only events whose values match (see `SearchStateOpts.query_string`).
    #[serde(alias = "query_string")]
    pub query_string: String,
    /// Only events whose writer's claims match, like `query_string`.
    #[serde(alias = "claims_query")]
    pub claims_query: String,
    /// Only events of these kinds (`SET`, `EDIT`, `DEL`, `REVERT`); every
    /// kind when empty. Read from a list, or from one comma-separated
    /// string (a REST query parameter).
    #[serde(with = "name_list", skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Replay history after this store position (the `sequence` a state
    /// read answered at, or an event's), then go live.
    #[serde(with = "int64_opt", alias = "after_sequence", skip_serializing_if = "Option::is_none")]
    pub after_sequence: Option<i64>,
    /// A consumer group to join (`gateway::group`): each event goes to one
    /// member at a time, until acknowledged. Empty: a plain stream.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The member's name in the group; a fresh one when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub member: String,
    /// Group creation only: how long a delivery may go unacknowledged.
    #[serde(with = "int64", alias = "ack_timeout_ms", skip_serializing_if = "is_zero")]
    pub ack_timeout_ms: i64,
    /// Group creation only: deliveries of an event before it is parked.
    #[serde(with = "int64", alias = "max_deliveries", skip_serializing_if = "is_zero")]
    pub max_deliveries: i64,
    /// Events this member holds unacknowledged at most.
    #[serde(with = "int64", alias = "max_in_flight", skip_serializing_if = "is_zero")]
    pub max_in_flight: i64,
}

/// `EventService.Ack` (the `AckRequest` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AckRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub group: String,
    #[serde(alias = "event_ids")]
    pub event_ids: Vec<String>,
    /// Not processed: deliver again (to another member when there is one).
    pub nack: bool,
}

/// `EventService.Parked` (the `ParkedRequest` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ParkedRequest {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub group: String,
    /// Put these parked events (every one with `replay_all`) back into
    /// delivery; none: only list.
    #[serde(alias = "replay_ids")]
    pub replay_ids: Vec<String>,
    #[serde(alias = "replay_all")]
    pub replay_all: bool,
}

/// `EventService.Get` (the `EventRef` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventRefRequest {
    pub id: String,
}

/// `CatalogService.List` (the `CatalogOpts` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CatalogRequest {
    /// One domain; empty or `*` is every domain.
    pub domain: String,
}

/// A repeated enum field: a list of names, also read from one string of
/// comma-separated names (how a REST query parameter carries it).
pub mod name_list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let split = |s: &str| s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(vec![]),
            serde_json::Value::String(s) => Ok(split(&s)),
            serde_json::Value::Array(items) => {
                let mut out = vec![];
                for item in items {
                    match item {
                        serde_json::Value::String(s) => out.extend(split(&s)),
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "expected names, got {}",
                                crate::model::query::type_name(&other)
                            )));
                        }
                    }
                }
                Ok(out)
            }
            other => Err(serde::de::Error::custom(format!(
                "expected a list of names, got {}",
                crate::model::query::type_name(&other)
            ))),
        }
    }
}

/// proto3 JSON int64: printed as a string, read from a number or a string.
pub mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if v.is_null() {
            return Ok(0);
        }
        crate::model::json::parse_int("integer", &v).map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

/// Like `int64`, for `optional int64` fields.
pub mod int64_opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if v.is_null() {
            return Ok(None);
        }
        crate::model::json::parse_int("integer", &v)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_both_field_name_styles_and_string_ints() {
        let a: SearchStatesRequest =
            serde_json::from_value(json!({"domain": "d", "type": "t", "queryString": "{}", "limit": "5"})).unwrap();
        let b: SearchStatesRequest =
            serde_json::from_value(json!({"domain": "d", "type": "t", "query_string": "{}", "limit": 5})).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.limit, 5);
        // Unknown fields are discarded (grpc-gateway v2); a wrong type is not.
        let c: SearchStatesRequest = serde_json::from_value(json!({"limt": 5, "limit": 2})).unwrap();
        assert_eq!(c.limit, 2);
        assert!(serde_json::from_value::<SearchStatesRequest>(json!({"limit": "x"})).is_err());
    }

    #[test]
    fn serializes_as_proto3_json() {
        let r = SearchStatesRequest {
            domain: "d".into(),
            limit: 3,
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["limit"], json!("3"));
        assert_eq!(v["queryString"], json!(""));
        assert_eq!(v["type"], json!(""));
    }
}

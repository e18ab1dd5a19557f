//! Responses encoded straight from the model into protobuf bytes.
//!
//! The generated messages hold values as `google.protobuf.Struct`, a
//! `BTreeMap` of boxed `Value`s: answering through them builds that tree
//! from the JSON values, measures it, encodes it and frees it, on every
//! call. These messages write the same fields from the model's JSON values
//! directly (measured with callgrind: a few thousand instructions and a
//! dozen allocations per `Get` and `Set`). They are encode-only: the gRPC
//! routes use them for what they send, never to decode.
//!
//! The bytes decode to exactly what `convert` would have produced (the
//! tests check it over random documents); only the order of a Struct's
//! entries may differ, which protobuf maps do not define.

use super::body_memo::BodyMemo;
use crate::model::{AtSeq, Event, EventKind, RecordRef, State, StoredState, Values};
use bytes::Bytes;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, skip_field};
use serde_json::Value;

/// `stategate.State`, as a `Get` answers: the values encoded from the
/// parsed map, or transcoded from the stored JSON text when the read kept
/// it (`StoredState::Text`), through the memo of recent texts
/// (`body_memo`). Transcoding happens once, in `new`: the encoder asks for
/// the length before it writes.
#[derive(Debug)]
pub struct StateMessage {
    record: RecordRef,
    version: u64,
    values: Body,
    seq: Sequence,
}

#[derive(Debug)]
enum Body {
    Parsed(Values),
    /// A `Struct`'s encoded body.
    Encoded(Bytes),
}

impl StateMessage {
    pub fn new(read: AtSeq<StoredState>, memo: &BodyMemo) -> Result<StateMessage, crate::model::Error> {
        let (record, version, values) = match read.value {
            StoredState::Parsed(s) => (s.record, s.version, Body::Parsed(s.values)),
            StoredState::Text { record, version, values } => {
                let body = memo.struct_body(values).map_err(|e| StoredState::not_an_object(&record, e))?;
                (record, version, Body::Encoded(body))
            }
        };
        Ok(StateMessage { record, version, values, seq: read.seq })
    }

    fn values(&self) -> StructRef<'_> {
        match &self.values {
            Body::Parsed(v) => StructRef::Parsed(v),
            Body::Encoded(b) => StructRef::Encoded(b),
        }
    }
}

/// `State.sequence`, the store position a `Get` answered at (0: none, as
/// in a State inside an Event).
pub type Sequence = u64;

/// `stategate.Event`.
#[derive(Debug)]
pub struct EventMessage {
    pub event: Event,
    /// The encoded `Struct` body of `event.values`, when the caller holds
    /// it already (a `Set` answers with the values it was sent, as it was
    /// sent them: `ValuesRequest::values_and_body`); written in place of
    /// encoding the values again.
    values_body: Option<Vec<u8>>,
}

impl EventMessage {
    /// `event`, with `values_body` exactly the encoding of its values.
    pub fn with_values_body(event: Event, values_body: Option<Vec<u8>>) -> EventMessage {
        EventMessage { event, values_body }
    }

    fn values(&self) -> Option<StructRef<'_>> {
        match &self.values_body {
            Some(body) => Some(StructRef::Encoded(body)),
            None => self.event.values.as_deref().map(StructRef::Parsed),
        }
    }
}

impl From<Event> for EventMessage {
    fn from(event: Event) -> EventMessage {
        EventMessage { event, values_body: None }
    }
}

/// `stategate.StateValues`.
#[derive(Debug)]
pub struct StatesMessage(pub Vec<State>);

/// `stategate.Events`.
#[derive(Debug)]
pub struct EventsMessage(pub Vec<Event>);

/// Implements the encoding half of `prost::Message` from a body length and
/// a body writer; decoding skips every field (these are never decoded).
macro_rules! encode_only {
    ($t:ty, $len:expr, $write:expr) => {
        impl prost::Message for $t {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                $write(self, buf)
            }
            fn merge_field(&mut self, tag: u32, wire: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> Result<(), prost::DecodeError> {
                skip_field(wire, tag, buf, ctx)
            }
            fn encoded_len(&self) -> usize {
                $len(self)
            }
            fn clear(&mut self) {}
        }
    };
}

encode_only!(
    StateMessage,
    |m: &StateMessage| {
        let r = &m.record;
        state_fields_len(&r.domain, &r.ty, &r.key, Some(m.values()), m.version) + int_len(8, m.seq as i64)
    },
    |m: &StateMessage, buf: &mut _| {
        let r = &m.record;
        put_state_fields(&r.domain, &r.ty, &r.key, Some(m.values()), m.version, buf);
        put_int(8, m.seq as i64, buf);
    }
);
encode_only!(
    EventMessage,
    |m: &EventMessage| event_len_with(&m.event, m.values()),
    |m: &EventMessage, buf: &mut _| put_event_with(&m.event, m.values(), buf)
);
encode_only!(
    StatesMessage,
    |m: &StatesMessage| m.0.iter().map(|s| message_len(1, state_len(s))).sum(),
    |m: &StatesMessage, buf: &mut _| m.0.iter().for_each(|s| {
        put_message_head(1, state_len(s), buf);
        put_state(s, buf);
    })
);
encode_only!(
    EventsMessage,
    |m: &EventsMessage| m.0.iter().map(|e| message_len(1, event_len(e))).sum(),
    |m: &EventsMessage, buf: &mut _| m.0.iter().for_each(|e| {
        put_message_head(1, event_len(e), buf);
        put_event(e, buf);
    })
);

/// One event's encoding as a standalone message (the stream codec's).
pub fn event_to_vec(e: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(event_len(e));
    put_event(e, &mut out);
    out
}

// ---- field helpers: proto3 leaves out empty strings and zero numbers ----

pub(super) fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { key_len(tag) + encoded_len_varint(s.len() as u64) + s.len() }
}

pub(super) fn put_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_bytes(tag, s.as_bytes(), buf);
    }
}

/// A length-delimited field written even when empty (oneof members, map
/// values, set message fields).
fn put_bytes(tag: u32, b: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(b.len() as u64, buf);
    buf.put_slice(b);
}

fn int_len(tag: u32, v: i64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + encoded_len_varint(v as u64) }
}

fn put_int(tag: u32, v: i64, buf: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v as u64, buf);
    }
}

fn message_len(tag: u32, body: usize) -> usize {
    key_len(tag) + encoded_len_varint(body as u64) + body
}

pub(super) fn put_message_head(tag: u32, body: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body as u64, buf);
}

// ---- stategate.State and stategate.Event ----

/// A `Struct` to write: a parsed map, or one already encoded.
#[derive(Clone, Copy)]
enum StructRef<'a> {
    Parsed(&'a Values),
    Encoded(&'a [u8]),
}

impl StructRef<'_> {
    fn len(self) -> usize {
        match self {
            StructRef::Parsed(m) => struct_len(m),
            StructRef::Encoded(b) => b.len(),
        }
    }

    fn put(self, buf: &mut impl BufMut) {
        match self {
            StructRef::Parsed(m) => put_struct(m, buf),
            StructRef::Encoded(b) => buf.put_slice(b),
        }
    }
}

fn state_fields_len(domain: &str, ty: &str, key: &str, values: Option<StructRef>, version: u64) -> usize {
    string_len(1, domain)
        + string_len(2, ty)
        + string_len(3, key)
        + values.map_or(0, |v| message_len(4, v.len()))
        + int_len(5, version as i64)
}

fn put_state_fields(domain: &str, ty: &str, key: &str, values: Option<StructRef>, version: u64, buf: &mut impl BufMut) {
    put_string(1, domain, buf);
    put_string(2, ty, buf);
    put_string(3, key, buf);
    if let Some(v) = values {
        put_message_head(4, v.len(), buf);
        v.put(buf);
    }
    put_int(5, version as i64, buf);
}

fn state_len(s: &State) -> usize {
    let r = &s.record;
    state_fields_len(&r.domain, &r.ty, &r.key, Some(StructRef::Parsed(&s.values)), s.version)
}

fn put_state(s: &State, buf: &mut impl BufMut) {
    let r = &s.record;
    put_state_fields(&r.domain, &r.ty, &r.key, Some(StructRef::Parsed(&s.values)), s.version, buf);
}

fn event_state_len(e: &Event, values: Option<StructRef>) -> usize {
    let r = &e.record;
    state_fields_len(&r.domain, &r.ty, &r.key, values, e.version)
}

fn kind_number(k: EventKind) -> i64 {
    use crate::proto::EventKind as Pb;
    (match k {
        EventKind::Set => Pb::Set,
        EventKind::Edit => Pb::Edit,
        EventKind::Del => Pb::Del,
        EventKind::Revert => Pb::Revert,
    }) as i64
}

fn event_len(e: &Event) -> usize {
    event_len_with(e, e.values.as_deref().map(StructRef::Parsed))
}

/// An event's length with its values given apart (parsed or encoded).
fn event_len_with(e: &Event, values: Option<StructRef>) -> usize {
    string_len(1, &e.id)
        + message_len(2, event_state_len(e, values))
        + message_len(3, struct_len(&e.claims))
        + int_len(4, e.time)
        + int_len(5, e.version as i64)
        + int_len(6, kind_number(e.kind))
        + string_len(7, &e.method)
        + int_len(8, e.seq as i64)
}

fn put_event(e: &Event, buf: &mut impl BufMut) {
    put_event_with(e, e.values.as_deref().map(StructRef::Parsed), buf)
}

fn put_event_with(e: &Event, values: Option<StructRef>, buf: &mut impl BufMut) {
    put_string(1, &e.id, buf);
    put_message_head(2, event_state_len(e, values), buf);
    let r = &e.record;
    put_state_fields(&r.domain, &r.ty, &r.key, values, e.version, buf);
    put_message_head(3, struct_len(&e.claims), buf);
    put_struct(&e.claims, buf);
    put_int(4, e.time, buf);
    put_int(5, e.version as i64, buf);
    put_int(6, kind_number(e.kind), buf);
    put_string(7, &e.method, buf);
    put_int(8, e.seq as i64, buf);
}

// ---- google.protobuf.Struct, Value, ListValue ----

/// A Struct's body: one `fields` map entry (key 1, value 2) per member.
fn struct_len(m: &Values) -> usize {
    m.iter().map(|(k, v)| message_len(1, entry_len(k, v))).sum()
}

fn entry_len(k: &str, v: &Value) -> usize {
    entry_len_with(k, value_len(v))
}

/// An entry's length from its value's, which the writer needs on its own
/// too: measuring a nested value walks all of it, so it is done once per
/// entry rather than once for each head.
pub(super) fn entry_len_with(k: &str, value_len: usize) -> usize {
    string_len(1, k) + message_len(2, value_len)
}

fn put_struct(m: &Values, buf: &mut impl BufMut) {
    for (k, v) in m {
        let value_len = value_len(v);
        put_message_head(1, entry_len_with(k, value_len), buf);
        put_string(1, k, buf);
        put_message_head(2, value_len, buf);
        put_value(v, buf);
    }
}

/// A Value's body: its one `kind` member, written even when it holds a
/// zero (a oneof member is always present).
fn value_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => key_len(1) + 1,
        Value::Number(_) => key_len(2) + 8,
        Value::String(s) => key_len(3) + encoded_len_varint(s.len() as u64) + s.len(),
        Value::Object(o) => message_len(5, struct_len(o)),
        Value::Array(a) => message_len(6, list_len(a)),
    }
}

fn list_len(a: &[Value]) -> usize {
    a.iter().map(|v| message_len(1, value_len(v))).sum()
}

fn put_value(v: &Value, buf: &mut impl BufMut) {
    match v {
        Value::Null => {
            encode_key(1, WireType::Varint, buf);
            buf.put_u8(0);
        }
        Value::Bool(b) => {
            encode_key(4, WireType::Varint, buf);
            buf.put_u8(u8::from(*b));
        }
        Value::Number(n) => {
            encode_key(2, WireType::SixtyFourBit, buf);
            buf.put_f64_le(n.as_f64().unwrap_or(0.0));
        }
        Value::String(s) => put_bytes(3, s.as_bytes(), buf),
        Value::Object(o) => {
            put_message_head(5, struct_len(o), buf);
            put_struct(o, buf);
        }
        Value::Array(a) => {
            put_message_head(6, list_len(a), buf);
            for item in a {
                put_message_head(1, value_len(item), buf);
                put_value(item, buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert;
    use crate::model::RecordRef;
    use crate::proto as pb;
    use prost::Message;
    use proptest::prelude::*;
    use serde_json::json;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn values() -> impl Strategy<Value = Values> {
        prop::collection::btree_map(".{0,8}", json_value(), 0..8).prop_map(|m| m.into_iter().collect())
    }

    fn state(values: Values, version: u64, key: &str) -> State {
        State { record: RecordRef { domain: "d".into(), ty: "t".into(), key: key.into() }, version, values }
    }

    fn event(values: Option<Values>, claims: Values, kind: EventKind, seq: u64, time: i64) -> Event {
        Event {
            id: "0190-e".into(),
            seq,
            record: RecordRef { domain: "d".into(), ty: "".into(), key: "k".into() },
            values: values.map(Into::into),
            claims,
            time,
            version: seq / 2,
            kind,
            method: "/stategate.StateService/Set".into(),
        }
    }

    proptest! {
        #[test]
        fn a_state_decodes_as_convert_makes_it(v in values(), version in 0u64..1 << 40, key in ".{0,5}") {
            let s = state(v, version, &key);
            let text = serde_json::to_string(&s.values).unwrap();
            let stored = StoredState::Text { record: s.record.clone(), version, values: text };
            // Parsed or still text; 0: no position, as in an event's state.
            let memo = BodyMemo::new(&crate::telemetry::Metrics::new());
            for (read, seq) in [(StoredState::Parsed(s.clone()), 0), (StoredState::Parsed(s.clone()), 1 << 33), (stored, 1 << 33)] {
                let m = StateMessage::new(AtSeq { value: read, seq }, &memo).unwrap();
                let bytes = m.encode_to_vec();
                prop_assert_eq!(bytes.len(), m.encoded_len());
                prop_assert_eq!(pb::State::decode(bytes.as_slice()).unwrap(), pb::State { sequence: seq as i64, ..convert::state(s.clone()) });
            }
        }

        #[test]
        fn an_event_decodes_as_convert_makes_it(v in prop::option::of(values()), claims in values(), seq in 0u64..1 << 40, time in any::<i64>(), k in 0..4usize) {
            let kind = [EventKind::Set, EventKind::Edit, EventKind::Del, EventKind::Revert][k];
            let e = event(v, claims, kind, seq, time);
            let bytes = event_to_vec(&e);
            prop_assert_eq!(bytes.len(), EventMessage::from(e.clone()).encoded_len());
            prop_assert_eq!(pb::Event::decode(bytes.as_slice()).unwrap(), convert::event(e));
        }

        /// With the values' encoding given (as a `Set` hands it on), the
        /// event is the same message, of the length it announces.
        #[test]
        fn an_event_with_its_values_encoded_decodes_the_same(v in values(), claims in values(), seq in 0u64..1 << 40) {
            let e = event(Some(v.clone()), claims, EventKind::Set, seq, 7);
            let body = prost_types::Struct::encode_to_vec(&convert::json_to_struct(v));
            let m = EventMessage::with_values_body(e.clone(), Some(body));
            let bytes = m.encode_to_vec();
            prop_assert_eq!(bytes.len(), m.encoded_len());
            prop_assert_eq!(pb::Event::decode(bytes.as_slice()).unwrap(), convert::event(e));
        }
    }

    #[test]
    fn lists_decode_as_convert_makes_them() {
        let v: Values = json!({"a": [1, "x", null, {"b": false}], "": ""}).as_object().unwrap().clone();
        let states = vec![state(v.clone(), 1, "a"), state(Values::new(), 0, "")];
        let bytes = StatesMessage(states.clone()).encode_to_vec();
        let want = pb::StateValues { state_values: states.into_iter().map(convert::state).collect(), sequence: 0 };
        assert_eq!(pb::StateValues::decode(bytes.as_slice()).unwrap(), want);
        let events = vec![event(Some(v), Values::new(), EventKind::Set, 3, -5), event(None, Values::new(), EventKind::Del, 0, 0)];
        let bytes = EventsMessage(events.clone()).encode_to_vec();
        let want = pb::Events { events: events.into_iter().map(convert::event).collect() };
        assert_eq!(pb::Events::decode(bytes.as_slice()).unwrap(), want);
    }
}

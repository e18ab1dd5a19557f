//! Conversions between the gateway's model and the WIT types that cross the
//! guest boundary, shared by the storage and channel adapters. Values and
//! claims cross as JSON text, so a guest in any language can read them; a
//! guest that returns text that is not a JSON object fails the call.

use super::bindings::storage::stategate::gateway::types as wt;
use crate::model::{Claims, Error, Event, EventKind, EventValues, RecordRef, Result, State, Values};

pub(crate) fn record_to_wit(r: &RecordRef) -> wt::RecordRef {
    wt::RecordRef {
        domain: r.domain.clone(),
        ty: r.ty.clone(),
        key: r.key.clone(),
    }
}

pub(crate) fn record_from_wit(r: wt::RecordRef) -> RecordRef {
    RecordRef {
        domain: r.domain,
        ty: r.ty,
        key: r.key,
    }
}

pub(crate) fn kind_to_wit(k: EventKind) -> wt::EventKind {
    match k {
        EventKind::Set => wt::EventKind::Set,
        EventKind::Edit => wt::EventKind::Edit,
        EventKind::Del => wt::EventKind::Del,
        EventKind::Revert => wt::EventKind::Revert,
    }
}

pub(crate) fn kind_from_wit(k: wt::EventKind) -> EventKind {
    match k {
        wt::EventKind::Set => EventKind::Set,
        wt::EventKind::Edit => EventKind::Edit,
        wt::EventKind::Del => EventKind::Del,
        wt::EventKind::Revert => EventKind::Revert,
    }
}

fn object(guest: &str, what: &str, text: &str) -> Result<Values> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(Error::Internal(format!("{guest}: returned {what} that is not a JSON object"))),
    }
}

pub(crate) fn event_to_wit(e: &Event) -> wt::Event {
    wt::Event {
        id: e.id.clone(),
        seq: e.seq,
        record: record_to_wit(&e.record),
        values: e.values.as_ref().map(|v| v.to_json_string()),
        claims: serde_json::Value::Object(e.claims.clone()).to_string(),
        time: e.time,
        version: e.version,
        kind: kind_to_wit(e.kind),
        method: e.method.clone(),
    }
}

pub(crate) fn event_from_wit(guest: &str, e: wt::Event) -> Result<Event> {
    let values = e.values.as_deref().map(|v| object(guest, "event values", v)).transpose()?.map(Into::into);
    let claims = object(guest, "event claims", &e.claims)?;
    Ok(event_with(e, values, claims))
}

/// The event `e` describes, with its values and claims already parsed (or
/// known: an append's own).
pub(crate) fn event_with(e: wt::Event, values: Option<EventValues>, claims: Claims) -> Event {
    Event {
        values,
        claims,
        id: e.id,
        seq: e.seq,
        record: record_from_wit(e.record),
        time: e.time,
        version: e.version,
        kind: kind_from_wit(e.kind),
        method: e.method,
    }
}

pub(crate) fn state_from_wit(guest: &str, s: wt::State) -> Result<State> {
    Ok(State {
        values: object(guest, "state values", &s.values)?,
        record: record_from_wit(s.record),
        version: s.version,
    })
}

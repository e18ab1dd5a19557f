//! The domain types of the gateway: records, states, events, the requests of
//! the event pipeline and the queries over them. No protobuf and no WIT here:
//! the API adapters and the wasm host translate to and from these.

pub mod catalog;
mod error;
mod event_values;
pub mod printable;
pub mod flags;
pub mod json;
pub mod query;
pub mod spec;

pub use catalog::{Catalog, CatalogEntry};
pub use event_values::EventValues;
pub use error::{ConfigError, Denial, Error, Result, TokenRefusal, flag_of};
pub use query::{Arrival, EventFilter, EventOrder, EventQuery, EventSort, FeedQuery, Filter, Page, Select, Sort, StateQuery};

use serde_json::{Map, Value};
use std::fmt;

/// Now, in Unix nanoseconds: the clock of event times and idempotency
/// windows, and the `now-nanos` a wasm guest reads.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A new event id: a UUIDv7, in time order within each thread.
///
/// `Uuid::now_v7` orders ids across the process through one global mutex
/// (uuid's shared `ContextV7`), which every runtime thread's appends took
/// in turn, writing memory the other core held. The order serves only the
/// locality of the `id` index, for which millisecond order is enough; an
/// id's uniqueness rests, as with the shared context, on the 74 bits beside
/// its timestamp: a counter seeded at random every millisecond, then
/// random bits.
pub fn new_event_id() -> String {
    thread_local! {
        static CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
    }
    let context = uuid::timestamp::context::ThreadLocalContext::new(&CONTEXT);
    uuid::Uuid::new_v7(uuid::Timestamp::now(context)).to_string()
}

/// The values of a state: always a JSON object.
pub type Values = Map<String, Value>;

/// The verified claims of a caller's token (empty when auth is disabled).
pub type Claims = Map<String, Value>;

/// Identifies one record: (domain, type, key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordRef {
    pub domain: String,
    pub ty: String,
    pub key: String,
}

impl RecordRef {
    /// Builds a reference from client input, checking each part as v0.5.0
    /// did (`^\S+$`): non-empty, no white space.
    pub fn parse(domain: &str, ty: &str, key: &str) -> Result<Self> {
        validate_name("domain", domain)?;
        validate_name("type", ty)?;
        validate_name("key", key)?;
        Ok(RecordRef {
            domain: domain.to_owned(),
            ty: ty.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.domain, self.ty, self.key)
    }
}

/// Longest domain, type or key accepted; keeps keys indexable and bounded.
pub const MAX_NAME_LEN: usize = 1024;

pub fn validate_name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(Error::invalid(field, format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(Error::invalid(field, "must not contain white space"));
    }
    Ok(())
}

/// The current state of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub record: RecordRef,
    pub values: Values,
    /// 1 after the first write, +1 on every change.
    pub version: u64,
}

/// A state as a read hands it to a transport: its values parsed, or still
/// the JSON object text its store holds. `Gateway::get` asks for the text
/// when nothing on the way reads the values (no response policy or hook),
/// and a provider that keeps values as text (sqlite, postgres, mysql)
/// answers with it unparsed (`Storage::get_text_at`): the gRPC adapter
/// transcodes it to a protobuf `Struct` (`api::encode`) without building a
/// map (parsing it was 11.4k of the 41k instructions a `Get` spent beyond
/// the transport's own).
#[derive(Debug, Clone, PartialEq)]
pub enum StoredState {
    Parsed(State),
    /// `values` is the text of a JSON object, as the store wrote it.
    Text { record: RecordRef, version: u64, values: String },
}

impl StoredState {
    /// The state with its values parsed, for an adapter that needs the map.
    pub fn into_state(self) -> Result<State> {
        match self {
            StoredState::Parsed(state) => Ok(state),
            StoredState::Text { record, version, values } => {
                let values = serde_json::from_str(&values).map_err(|e| Self::not_an_object(&record, e))?;
                Ok(State { record, values, version })
            }
        }
    }

    /// The error of stored text that is not a JSON object (a corrupt store).
    pub fn not_an_object(record: &RecordRef, e: impl fmt::Display) -> Error {
        Error::internal(format!("the stored values of {record} are not a JSON object: {e}"))
    }
}

/// An answer read at one store position: it reflects every event with a
/// seq up to `seq` and none after (see `Storage::get_at`). A stream started
/// after `seq` delivers exactly the changes the answer does not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct AtSeq<T> {
    pub value: T,
    pub seq: u64,
}

impl<T> AtSeq<T> {
    /// The same position with the answer turned into another form.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> AtSeq<U> {
        AtSeq { value: f(self.value), seq: self.seq }
    }
}

/// The state a record had after an event: its values, or `None` when the
/// event deleted it.
pub fn state_after(event: &Event) -> Option<State> {
    event.values.as_ref().map(|values| State {
        record: event.record.clone(),
        values: Values::clone(values),
        version: event.version,
    })
}

/// What a change to a record was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Set,
    Edit,
    Del,
    Revert,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Set => "SET",
            EventKind::Edit => "EDIT",
            EventKind::Del => "DEL",
            EventKind::Revert => "REVERT",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "SET" => EventKind::Set,
            "EDIT" => EventKind::Edit,
            "DEL" => EventKind::Del,
            "REVERT" => EventKind::Revert,
            _ => return None,
        })
    }
}

/// One immutable change to a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// A UUID, unique in the store.
    pub id: String,
    /// Position in the store's total order; assigned by storage on append.
    pub seq: u64,
    pub record: RecordRef,
    /// The values after the change; `None` for a deletion.
    pub values: Option<EventValues>,
    pub claims: Claims,
    /// Receive time, Unix nanoseconds.
    pub time: i64,
    /// The record's version after this change.
    pub version: u64,
    pub kind: EventKind,
    /// The RPC that made the change, e.g. `/stategate.StateService/Set`.
    pub method: String,
}

/// What a write requires of the record's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Last write wins (v0.5.0 behaviour).
    Any,
    /// The record must have no current state.
    Absent,
    /// The record must be at exactly this version.
    Version(u64),
}

impl Expect {
    /// From the wire form: unset = any, 0 = absent, n = version n.
    pub fn from_wire(field: &str, v: Option<i64>) -> Result<Self> {
        match v {
            None => Ok(Expect::Any),
            Some(0) => Ok(Expect::Absent),
            Some(n) if n > 0 => Ok(Expect::Version(n as u64)),
            Some(n) => Err(Error::invalid(field, format!("must be >= 0, got {n}"))),
        }
    }

    /// Whether a record currently at `current` (`None` = no state) satisfies
    /// this expectation.
    pub fn admits(self, current: Option<u64>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(v) => current == Some(v),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Expect::Any => "any".into(),
            Expect::Absent => "no state".into(),
            Expect::Version(v) => format!("version {v}"),
        }
    }
}

/// The change an append makes to the current state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put(EventValues),
    Delete,
}

/// A retry token: an append carrying a key already used within the window
/// returns the event of the first append instead of writing again.
#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    pub key: String,
    /// Hash of the request; the same key with another request is an error.
    pub fingerprint: String,
    /// Entries older than this (Unix ns) are expired and may be reused.
    pub not_before: i64,
}

/// One atomic write: the event and the resulting current state, or nothing.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub id: String,
    pub record: RecordRef,
    pub change: Change,
    pub expect: Expect,
    pub kind: EventKind,
    pub method: String,
    pub claims: Claims,
    pub time: i64,
    pub idempotency: Option<Idempotency>,
}

impl AppendRequest {
    /// The event this append writes once storage gave it `seq` and
    /// `version`; it takes the request's values rather than a copy.
    pub fn into_event(self, seq: u64, version: u64) -> Event {
        Event {
            id: self.id,
            seq,
            record: self.record,
            values: match self.change {
                Change::Put(v) => Some(v),
                Change::Delete => None,
            },
            claims: self.claims,
            time: self.time,
            version,
            kind: self.kind,
            method: self.method,
        }
    }
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub event: Event,
    /// True when an idempotent retry returned the first write's event and
    /// nothing was written now (so nothing must be published again).
    pub replayed: bool,
}

/// Which events a stream or a hub subscription wants: `None` is `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub domain: Option<String>,
    pub ty: Option<String>,
}

impl Topic {
    pub const ALL: Topic = Topic {
        domain: None,
        ty: None,
    };

    pub fn matches(&self, record: &RecordRef) -> bool {
        self.domain.as_deref().is_none_or(|d| d == record.domain)
            && self.ty.as_deref().is_none_or(|t| t == record.ty)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.domain.as_deref().unwrap_or("*");
        let t = self.ty.as_deref().unwrap_or("*");
        write!(f, "{d}/{t}")
    }
}

#[cfg(test)]
mod tests {
    use super::new_event_id;

    #[test]
    fn event_ids_are_v7_ordered_within_a_thread_and_unique_across_threads() {
        let ids: Vec<Vec<String>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4).map(|_| s.spawn(|| (0..20_000).map(|_| new_event_id()).collect::<Vec<_>>())).collect();
            threads.into_iter().map(|t| t.join().expect("no panic")).collect()
        });
        for thread in &ids {
            assert!(thread.windows(2).all(|w| w[0] < w[1]), "in order within a thread");
            let first = uuid::Uuid::parse_str(&thread[0]).expect("a UUID");
            assert_eq!(first.get_version_num(), 7);
        }
        let all: std::collections::HashSet<&String> = ids.iter().flatten().collect();
        assert_eq!(all.len(), 80_000, "no id given twice");
    }
}

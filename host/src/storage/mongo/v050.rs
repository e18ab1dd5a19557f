//! Reading stategate v0.5.0's MongoDB data, for `stategate migrate v050`.
//!
//! v0.5.0 kept, per record type, two collections in its database:
//! - `<domain>.<type>`: the current states, one document per record,
//!   `_id` = the key and the values as the other top-level fields;
//! - `<domain>.<type>_events`: the events, `_id` = the event id (a UUID),
//!   `time` (Unix nanoseconds), `state: {key, values}`, `claims`.
//!
//! Its `Set` wrote the state and the event concurrently and neither in a
//! transaction, so the two can disagree (one write failed, or two Sets of
//! one key raced); its `Del` deleted the record's events, then its state.
//! A record deleted in v0.5.0 therefore has no trace left, and the reader
//! reports each record's events and its state separately, for the importer
//! to reconcile.
//!
//! A collection name is split at its first `.` (v0.5.0 let a domain hold
//! dots, which its names cannot tell apart from a type's). A name ending in
//! `_events` is an events collection when its documents look like events
//! (`state` and `time`), so a type that itself ends in `_events` still
//! reads as states. Numbers come back as v0.5.0 stored them (doubles,
//! from `google.protobuf.Struct`); a whole one is read as an integer, as the
//! gateway reads a `Struct` number.
//!
//! Nothing here writes: the source is only read.

use super::bounded;
use crate::model::{Claims, Error, Result, Values};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::FindOptions;
use mongodb::{Collection, Cursor, Database};
use serde_json::{Map, Number, Value};
use std::collections::{BTreeMap, HashSet};

/// v0.5.0's data in one database.
pub struct V050Source {
    db: Database,
}

/// One record type and its two collections (either may be missing).
#[derive(Debug, Clone, PartialEq)]
pub struct V050Type {
    pub domain: String,
    pub ty: String,
    pub states: Option<String>,
    pub events: Option<String>,
}

/// One event as v0.5.0 stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct V050Event {
    pub id: String,
    pub time: i64,
    pub values: Values,
    pub claims: Claims,
}

/// One record: its events oldest first (by time, then id), and its
/// current state (`None`: no state document).
#[derive(Debug, Clone, PartialEq)]
pub struct V050Record {
    pub key: String,
    pub events: Vec<V050Event>,
    pub state: Option<Values>,
}

impl V050Source {
    /// Connects to `addr` (a `mongodb://` URL) and reads `database`.
    pub async fn open(addr: &str, database: &str) -> Result<Self> {
        if database.is_empty() {
            return Err(Error::invalid("database", "must name v0.5.0's database"));
        }
        let client = super::client(addr, None).await?;
        let db = client.database(database);
        bounded(db.run_command(doc! {"ping": 1})).await?;
        Ok(V050Source { db })
    }

    /// Every record type with v0.5.0 collections, sorted by domain and type.
    pub async fn types(&self) -> Result<Vec<V050Type>> {
        let names = bounded(self.db.list_collection_names()).await?;
        let mut types: BTreeMap<(String, String), V050Type> = BTreeMap::new();
        for name in names {
            if name.starts_with("system.") {
                continue;
            }
            // The gateway's own collections have no dot.
            let Some((domain, rest)) = name.split_once('.') else { continue };
            if domain.is_empty() || rest.is_empty() {
                continue;
            }
            let events_of = match rest.strip_suffix("_events") {
                Some(ty) if !ty.is_empty() && self.looks_like_events(&name).await? => Some(ty),
                _ => None,
            };
            let (ty, is_events) = match events_of {
                Some(ty) => (ty, true),
                None => (rest, false),
            };
            let entry = types.entry((domain.to_owned(), ty.to_owned())).or_insert_with(|| V050Type {
                domain: domain.to_owned(),
                ty: ty.to_owned(),
                states: None,
                events: None,
            });
            if is_events {
                entry.events = Some(name.clone());
            } else {
                entry.states = Some(name.clone());
            }
        }
        Ok(types.into_values().collect())
    }

    /// Whether the collection's documents are v0.5.0 events (an empty one
    /// counts as events: it contributes nothing either way).
    async fn looks_like_events(&self, name: &str) -> Result<bool> {
        let one = bounded(self.db.collection::<Document>(name).find_one(doc! {})).await?;
        Ok(one.is_none_or(|d| d.get_document("state").is_ok() && d.contains_key("time")))
    }

    /// The number of events of a type (for progress).
    pub async fn count_events(&self, t: &V050Type) -> Result<u64> {
        match &t.events {
            Some(name) => bounded(self.db.collection::<Document>(name).estimated_document_count()).await,
            None => Ok(0),
        }
    }

    /// The records of a type, one at a time.
    pub async fn records(&self, t: &V050Type) -> Result<V050Records> {
        let events = match &t.events {
            Some(name) => {
                let options = FindOptions::builder()
                    .sort(doc! {"state.key": 1, "time": 1, "_id": 1})
                    .allow_disk_use(true)
                    .build();
                Some(bounded(self.db.collection::<Document>(name).find(doc! {}).with_options(options)).await?)
            }
            None => None,
        };
        Ok(V050Records {
            states: t.states.as_ref().map(|n| self.db.collection(n)),
            events,
            pending: None,
            seen: HashSet::new(),
            leftover: None,
            collection: t.events.clone().unwrap_or_default(),
        })
    }
}

/// The records of one type: first those with events (grouped from the
/// events sorted by key), then those with a state document and no event.
pub struct V050Records {
    states: Option<Collection<Document>>,
    events: Option<Cursor<Document>>,
    /// An event read ahead: the first of the next record.
    pending: Option<(String, V050Event)>,
    /// Keys already returned, so the state pass skips them.
    seen: HashSet<String>,
    leftover: Option<Cursor<Document>>,
    collection: String,
}

impl V050Records {
    pub async fn next(&mut self) -> Result<Option<V050Record>> {
        if let Some(record) = self.next_with_events().await? {
            return Ok(Some(record));
        }
        // States without any event (their events were lost, or v0.5.0's
        // event insert failed).
        let Some(states) = &self.states else { return Ok(None) };
        if self.leftover.is_none() {
            let options = FindOptions::builder().sort(doc! {"_id": 1}).build();
            self.leftover = Some(bounded(states.find(doc! {}).with_options(options)).await?);
        }
        let cursor = self.leftover.as_mut().expect("opened above");
        while let Some(doc) = next_doc(cursor).await? {
            let (key, values) = state_of(doc);
            if !self.seen.contains(&key) {
                return Ok(Some(V050Record { key, events: Vec::new(), state: Some(values) }));
            }
        }
        Ok(None)
    }

    async fn next_with_events(&mut self) -> Result<Option<V050Record>> {
        let Some(cursor) = self.events.as_mut() else { return Ok(None) };
        let first = match self.pending.take() {
            Some(p) => p,
            None => match next_doc(cursor).await? {
                Some(doc) => event_of(&self.collection, doc)?,
                None => return Ok(None),
            },
        };
        let key = first.0;
        let mut events = vec![first.1];
        while let Some(doc) = next_doc(cursor).await? {
            let (k, e) = event_of(&self.collection, doc)?;
            if k != key {
                self.pending = Some((k, e));
                break;
            }
            events.push(e);
        }
        let state = match &self.states {
            Some(states) => bounded(states.find_one(doc! {"_id": &key})).await?.map(|d| state_of(d).1),
            None => None,
        };
        self.seen.insert(key.clone());
        Ok(Some(V050Record { key, events, state }))
    }
}

async fn next_doc(cursor: &mut Cursor<Document>) -> Result<Option<Document>> {
    bounded(cursor.try_next()).await
}

/// `(key, values)` of a state document.
fn state_of(mut doc: Document) -> (String, Values) {
    let key = doc.remove("_id").map(key_text).unwrap_or_default();
    (key, object(doc))
}

/// `(key, event)` of an event document; a document without an id, a key
/// or a time is not one of v0.5.0's and stops the import, naming it.
fn event_of(collection: &str, mut doc: Document) -> Result<(String, V050Event)> {
    let bad = |what: &str, doc: &Document| {
        Error::invalid(collection, format!("a document is not a v0.5.0 event ({what}): {doc}"))
    };
    let id = match doc.remove("_id") {
        Some(Bson::String(s)) => s,
        Some(other) => key_text(other),
        None => return Err(bad("no _id", &doc)),
    };
    let time = match doc.get("time") {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Double(n)) if n.is_finite() => *n as i64,
        _ => return Err(bad("no time", &doc)),
    };
    let mut state = match doc.remove("state") {
        Some(Bson::Document(d)) => d,
        _ => return Err(bad("no state", &doc)),
    };
    let key = match state.remove("key") {
        Some(k) => key_text(k),
        None => return Err(bad("no state.key", &doc)),
    };
    let values = match state.remove("values") {
        Some(Bson::Document(d)) => object(d),
        _ => Map::new(),
    };
    let claims = match doc.remove("claims") {
        Some(Bson::Document(d)) => object(d),
        _ => Map::new(),
    };
    Ok((key, V050Event { id, time, values, claims }))
}

/// A key as v0.5.0 read it back (`cast.ToString`).
fn key_text(b: Bson) -> String {
    match b {
        Bson::String(s) => s,
        other => match json(other) {
            Value::String(s) => s,
            v => v.to_string(),
        },
    }
}

fn object(doc: Document) -> Map<String, Value> {
    doc.into_iter().map(|(k, v)| (k, json(v))).collect()
}

/// A BSON value as the JSON a v0.5.0 client saw (through a `Struct`).
pub fn json(b: Bson) -> Value {
    match b {
        Bson::Double(n) => number(n),
        Bson::Int32(n) => Value::from(n),
        Bson::Int64(n) => Value::from(n),
        Bson::String(s) => Value::String(s),
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Array(a) => Value::Array(a.into_iter().map(json).collect()),
        Bson::Document(d) => Value::Object(object(d)),
        other => other.into_relaxed_extjson(),
    }
}

/// A whole double is an integer, as the gateway reads a `Struct` number.
fn number(n: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        return Value::from(n as i64);
    }
    Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_read_as_v050_clients_saw_them() {
        let d = doc! {"_id": "e1", "time": 1_700_000_000_000_000_001_i64, "state": {"key": "k", "values": {"n": 3.0, "f": 1.5, "a": [1.0, "x", null], "o": {"b": true}}}, "claims": {"sub": "alice"}};
        let (key, e) = event_of("d.t_events", d).unwrap();
        assert_eq!(key, "k");
        assert_eq!(e.id, "e1");
        assert_eq!(e.time, 1_700_000_000_000_000_001);
        assert_eq!(Value::Object(e.values), serde_json::json!({"n": 3, "f": 1.5, "a": [1, "x", null], "o": {"b": true}}));
        assert_eq!(Value::Object(e.claims), serde_json::json!({"sub": "alice"}));
        assert!(event_of("d.t_events", doc! {"_id": "x", "state": {"key": "k"}}).unwrap_err().to_string().contains("no time"));
        let (key, values) = state_of(doc! {"_id": "k", "name": "Alice", "age": 30.0});
        assert_eq!((key.as_str(), Value::Object(values)), ("k", serde_json::json!({"name": "Alice", "age": 30})));
    }
}

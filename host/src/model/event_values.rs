//! An event's values as the pipeline carries them: a map, or the text of
//! the JSON object they were written as, parsed only when something reads
//! them as a map.
//!
//! A gRPC `Set` that nothing inspects on the way (no request or response
//! policy, no tenant hook) and no local stream watches never needs its
//! values as a map: the SQL stores write them as JSON text and the answer
//! repeats the bytes the client sent. Decoding the `Struct` into a map,
//! serializing the map for the store and dropping it was about 22k of a
//! `Set`'s 145k instructions; writing the text straight from the `Struct`
//! took a `Set` to 133k (BENCHMARKS.md, session 21). When something does
//! read them (a policy, a stream, a store that keeps documents), the text
//! is parsed once, and every clone of the event shares the map.
//!
//! **Invariant.** Text is always what `serde_json` writes for a `Values`:
//! an object, keys in order, numbers as serde writes them. Parsing it
//! therefore cannot fail and gives back the map it stands for, and two
//! values held as text parse back to the map they were written from. Only writers that keep
//! this may make one from text ([`EventValues::from_json_text`]: the api's
//! `Struct` transcoder, property-tested against serde); text read back from
//! a store is parsed, with its errors, where it is read.

use super::Values;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

/// The values of an event (and of the write that made it). Cloning is an
/// `Arc` clone: a broadcast to many streams shares one copy.
#[derive(Clone)]
pub struct EventValues(Arc<Held>);

enum Held {
    Map(Values),
    /// The JSON text, and the map once something has read it.
    Text { text: Box<str>, map: OnceLock<Values> },
}

impl EventValues {
    /// Values that are already the JSON text `serde_json` would write for
    /// their map (see the module's invariant).
    pub fn from_json_text(text: String) -> EventValues {
        debug_assert!(
            serde_json::from_str::<Values>(&text).is_ok_and(|map| serde_json::to_string(&map).is_ok_and(|again| again == text)),
            "not the JSON text of a map as serde writes it: {text}"
        );
        EventValues(Arc::new(Held::Text { text: text.into_boxed_str(), map: OnceLock::new() }))
    }

    /// The JSON text, when the values are held as text.
    pub fn json_text(&self) -> Option<&str> {
        match &*self.0 {
            Held::Text { text, .. } => Some(text),
            Held::Map(_) => None,
        }
    }

    /// The JSON text of the values: the text held, or the map serialized.
    pub fn to_json_string(&self) -> String {
        match &*self.0 {
            Held::Text { text, .. } => text.to_string(),
            Held::Map(map) => serde_json::to_string(map).expect("a JSON map always serializes"),
        }
    }

    /// The map, taken out without a copy when nothing else shares it.
    pub fn into_values(self) -> Values {
        match Arc::try_unwrap(self.0) {
            Ok(Held::Map(map)) => map,
            Ok(Held::Text { text, map }) => map.into_inner().unwrap_or_else(|| parse(&text)),
            Err(shared) => EventValues(shared).deref().clone(),
        }
    }
}

impl Deref for EventValues {
    type Target = Values;

    fn deref(&self) -> &Values {
        match &*self.0 {
            Held::Map(map) => map,
            Held::Text { text, map } => map.get_or_init(|| parse(text)),
        }
    }
}

/// The empty object.
impl Default for EventValues {
    fn default() -> EventValues {
        EventValues::from(Values::new())
    }
}

/// Text held by an `EventValues` as its map; cannot fail (the module's invariant).
fn parse(text: &str) -> Values {
    serde_json::from_str(text).expect("EventValues text is a JSON object (the module's invariant)")
}

impl From<Values> for EventValues {
    fn from(map: Values) -> EventValues {
        EventValues(Arc::new(Held::Map(map)))
    }
}

impl PartialEq for EventValues {
    fn eq(&self, other: &EventValues) -> bool {
        **self == **other
    }
}

impl PartialEq<Values> for EventValues {
    fn eq(&self, other: &Values) -> bool {
        **self == *other
    }
}

impl fmt::Debug for EventValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for EventValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EventValues, D::Error> {
        Values::deserialize(deserializer).map(EventValues::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: serde_json::Value) -> Values {
        v.as_object().expect("an object").clone()
    }

    #[test]
    fn text_and_map_of_the_same_values_are_equal_and_read_alike() {
        let values = map(json!({"a": 1, "b": {"c": [true, null, "x"]}, "d": 1.5}));
        let from_text = EventValues::from_json_text(serde_json::to_string(&values).unwrap());
        let from_map = EventValues::from(values.clone());
        assert_eq!(from_text, from_map);
        assert_eq!(from_text.get("a"), Some(&json!(1)));
        assert_eq!(from_text.to_json_string(), from_map.to_json_string());
        assert_eq!(from_text.json_text(), Some(from_map.to_json_string().as_str()));
        assert_eq!(from_map.json_text(), None);
        assert_eq!(from_text.clone().into_values(), values);
        assert_eq!(from_map.into_values(), values);
        assert_ne!(from_text, EventValues::from(map(json!({"a": 2}))));
    }

    #[test]
    fn serializes_as_its_map() {
        let values = map(json!({"k": "v"}));
        let from_text = EventValues::from_json_text(serde_json::to_string(&values).unwrap());
        assert_eq!(serde_json::to_value(&from_text).unwrap(), json!({"k": "v"}));
        let back: EventValues = serde_json::from_value(json!({"k": "v"})).unwrap();
        assert_eq!(back, from_text);
    }
}

//! Field paths as MongoDB reads them: every value a dot-notation path
//! reaches in a document, through arrays.
//!
//! A segment applied to an object is that field. Applied to an array it is
//! read two ways at once (as mongod does): when the segment is a number,
//! the element at that index; and for every element that is an object, that
//! object's field of the segment's name. So `{"a.b": 1}` matches
//! `{"a": [{"b": 1}]}`, and `{"tags.0": "x"}` matches `{"tags": ["x"]}`.
//! A scalar in the middle of a path reaches nothing (the field is missing);
//! array elements that are not objects are skipped by a field name.
//!
//! An array reached *by index* is a terminal value: operators do not look
//! into its elements (`{"v.0": 1}` does not match `{"v": [[1, 2]]}`), as
//! mongod spends the path step on the index.
//!
//! **Bounds.** A path has at most `MAX_PATH_SEGMENTS` segments and each step
//! keeps one entry per distinct value reached, so a step costs at most the
//! number of values in the document (itself bounded by
//! `model::json::MAX_VALUES`), never a count that doubles with every index
//! segment.

use crate::model::Values;
use serde_json::Value;
use std::collections::HashSet;

/// One place a path reaches: a value, or a missing field.
#[derive(Debug, Clone, Copy)]
pub struct Reached<'a> {
    pub value: Option<&'a Value>,
    /// Reached by an array index: a leaf array is not expanded.
    pub positional: bool,
}

impl<'a> Reached<'a> {
    pub const MISSING: Reached<'static> = Reached { value: None, positional: false };

    /// A value taken as it is (inside `$elemMatch`): never expanded.
    pub fn terminal(value: &'a Value) -> Self {
        Reached { value: Some(value), positional: true }
    }

    /// Whether `pred` holds for the value, or (for an array reached by a
    /// field name) for one of its elements: mongod's leaf expansion.
    pub fn any_leaf(&self, pred: &mut impl FnMut(&Value) -> bool) -> bool {
        match self.value {
            None => false,
            Some(v) => {
                pred(v)
                    || matches!(v, Value::Array(items) if !self.positional && items.iter().any(&mut *pred))
            }
        }
    }
}

/// Whether a segment can be an array index (all ASCII digits).
pub fn is_index(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

/// Every value `path` reaches in `values` (see the module comment). Never
/// empty when the first field is missing: that is one missing entry.
pub fn resolve<'a>(values: &'a Values, path: &[String]) -> Vec<Reached<'a>> {
    let Some((first, rest)) = path.split_first() else {
        return vec![Reached::MISSING];
    };
    let mut current = vec![Reached { value: values.get(first), positional: false }];
    for segment in rest {
        let mut next = Vec::with_capacity(current.len());
        let mut seen: HashSet<(*const Value, bool)> = HashSet::new();
        let mut missing = false;
        let mut push = |r: Reached<'a>| match r.value {
            None => {
                if !missing {
                    missing = true;
                    next.push(r);
                }
            }
            Some(v) => {
                if seen.insert((v as *const Value, r.positional)) {
                    next.push(r);
                }
            }
        };
        for r in &current {
            match r.value {
                Some(Value::Object(map)) => push(Reached { value: map.get(segment), positional: false }),
                Some(Value::Array(items)) => {
                    if is_index(segment) {
                        let at = segment.parse::<usize>().ok().and_then(|i| items.get(i));
                        push(Reached { value: at, positional: true });
                    }
                    for item in items {
                        if let Value::Object(map) = item {
                            push(Reached { value: map.get(segment), positional: false });
                        }
                    }
                }
                _ => push(Reached::MISSING),
            }
        }
        current = next;
    }
    current
}

/// The one value at a dot-notation path read without array expansion (a
/// number segment indexes an array): what a sort orders by.
pub fn lookup<'a>(values: &'a Values, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut current = values.get(first)?;
    for segment in rest {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i))?,
            _ => return None,
        };
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reached(doc: Value, path: &str) -> Vec<Option<Value>> {
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        resolve(doc.as_object().unwrap(), &path).into_iter().map(|r| r.value.cloned()).collect()
    }

    #[test]
    fn arrays_are_read_by_index_and_by_field() {
        assert_eq!(reached(json!({"a": [{"b": 1}, {"c": 2}, 3]}), "a.b"), [Some(json!(1)), None]);
        assert_eq!(reached(json!({"a": [5, {"0": 6}]}), "a.0"), [Some(json!(5)), Some(json!(6))]);
        assert_eq!(reached(json!({"a": [5]}), "a.1"), [None]);
        assert_eq!(reached(json!({"a": 5}), "a.b"), [None]);
        assert!(reached(json!({"a": [1, 2]}), "a.b").is_empty(), "scalars in an array are skipped by a name");
    }

    #[test]
    fn a_step_holds_each_value_at_most_twice() {
        // Index and field readings of "0" both continue at every level.
        let mut doc = json!(1);
        for _ in 0..10 {
            doc = json!([{"0": doc.clone()}, doc]);
        }
        fn count(v: &Value) -> usize {
            1 + match v {
                Value::Array(items) => items.iter().map(count).sum(),
                Value::Object(m) => m.values().map(count).sum(),
                _ => 0,
            }
        }
        let path = ["0"; 12].join(".");
        let doc = json!({"0": doc});
        let found = reached(doc.clone(), &path);
        assert!(found.len() <= 2 * count(&doc), "{}", found.len());
    }
}

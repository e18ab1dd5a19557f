//! The decisions of one group-commit batch, made in Rust from the rows the
//! batch locked: which appends write a new event (and with which version),
//! which replay an earlier event of their idempotency key, and which are
//! refused. Later appends of a batch see what earlier ones decided, exactly
//! as if each had run in its own transaction in queue order.

use super::super::{conflict, idempotency_mismatch};
use crate::model::{AppendRequest, Appended, Change, Error, Event, RecordRef};
use std::collections::HashMap;

/// A record's row as the batch found it (locked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    /// The last version written (0 for none); kept after a deletion so a
    /// recreated record continues its numbering.
    pub version: u64,
    /// Whether the record has a state now.
    pub live: bool,
}

/// An idempotency key's entry as the batch found it (locked).
#[derive(Debug, Clone)]
pub struct Remembered {
    pub fingerprint: String,
    /// The event the key first wrote.
    pub first: Event,
}

#[derive(Debug, Clone)]
pub enum Decision {
    /// Writes a new event: this version, and the `ordinal`-th new event of
    /// the batch (its seq is the batch's first seq + ordinal).
    New { version: u64, ordinal: usize },
    /// Returns the key's earlier event again, writing nothing.
    Replay(Box<Event>),
    /// Returns the event that append `index` of this batch writes.
    ReplayOf(usize),
    Refused(Error),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Indexes of the appends that write an event, in seq order.
    pub new_events: Vec<usize>,
    /// Per record touched, the last append writing it: its state (version
    /// and values, or removal) is the record's new row.
    pub states: Vec<usize>,
    /// Per idempotency key written, the last append writing it.
    pub idempotency: Vec<usize>,
}

/// Decides a batch. `current` holds every record of the batch (missing ones
/// with version 0), `remembered` the live entries of its idempotency keys.
pub fn plan(
    reqs: &[&AppendRequest],
    mut current: HashMap<RecordRef, Current>,
    remembered: &HashMap<String, Remembered>,
) -> Plan {
    let mut plan = Plan::default();
    // Keys written earlier in this batch: key → (fingerprint, append index).
    let mut written_keys: HashMap<&str, (&str, usize)> = HashMap::new();
    let mut last_state: HashMap<&RecordRef, usize> = HashMap::new();
    for (i, req) in reqs.iter().enumerate() {
        let decision = decide(req, &mut current, remembered, &written_keys, plan.new_events.len());
        if let Decision::New { .. } = decision {
            plan.new_events.push(i);
            last_state.insert(&req.record, i);
            if let Some(idem) = &req.idempotency {
                written_keys.insert(&idem.key, (&idem.fingerprint, i));
            }
        }
        plan.decisions.push(decision);
    }
    let mut states: Vec<usize> = last_state.into_values().collect();
    states.sort_unstable();
    plan.states = states;
    let mut keys: Vec<usize> = written_keys.into_values().map(|(_, i)| i).collect();
    keys.sort_unstable();
    plan.idempotency = keys;
    plan
}

fn decide(
    req: &AppendRequest,
    current: &mut HashMap<RecordRef, Current>,
    remembered: &HashMap<String, Remembered>,
    written_keys: &HashMap<&str, (&str, usize)>,
    ordinal: usize,
) -> Decision {
    if let Some(idem) = &req.idempotency {
        if let Some(&(fingerprint, first)) = written_keys.get(idem.key.as_str()) {
            // Written moments ago in this batch: inside any window.
            if fingerprint != idem.fingerprint {
                return Decision::Refused(idempotency_mismatch(&idem.key));
            }
            return Decision::ReplayOf(first);
        }
        if let Some(entry) = remembered.get(&idem.key).filter(|e| e.first.time >= idem.not_before) {
            if entry.fingerprint != idem.fingerprint {
                return Decision::Refused(idempotency_mismatch(&idem.key));
            }
            return Decision::Replay(Box::new(entry.first.clone()));
        }
    }
    let row = current.entry(req.record.clone()).or_insert(Current { version: 0, live: false });
    let live = row.live.then_some(row.version);
    if !req.expect.admits(live) {
        return Decision::Refused(conflict(req, live));
    }
    if req.change == Change::Delete && live.is_none() {
        return Decision::Refused(Error::NotFound(format!("state {}", req.record)));
    }
    row.version += 1;
    row.live = matches!(req.change, Change::Put(_));
    Decision::New { version: row.version, ordinal }
}

/// Each append's outcome once the batch committed with its first new event
/// at `first_seq`.
pub fn outcomes(reqs: Vec<AppendRequest>, decisions: Vec<Decision>, first_seq: u64) -> Vec<crate::model::Result<Appended>> {
    let mut events: Vec<Option<Event>> = Vec::with_capacity(reqs.len());
    let mut out: Vec<Option<crate::model::Result<Appended>>> = Vec::with_capacity(reqs.len());
    for (req, decision) in reqs.into_iter().zip(decisions) {
        match decision {
            Decision::New { version, ordinal } => {
                let event = req.into_event(first_seq + ordinal as u64, version);
                events.push(Some(event.clone()));
                out.push(Some(Ok(Appended { event, replayed: false })));
            }
            Decision::Replay(event) => {
                events.push(None);
                out.push(Some(Ok(Appended { event: *event, replayed: true })));
            }
            Decision::ReplayOf(first) => {
                events.push(None);
                let event = events[first].clone();
                out.push(Some(match event {
                    Some(event) => Ok(Appended { event, replayed: true }),
                    None => Err(Error::internal("a batch replayed an append that wrote nothing")),
                }));
            }
            Decision::Refused(e) => {
                events.push(None);
                out.push(Some(Err(e)));
            }
        }
    }
    out.into_iter().map(|o| o.expect("every append has an outcome")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, Expect, Idempotency};
    use serde_json::json;

    fn rec(key: &str) -> RecordRef {
        RecordRef::parse("d", "t", key).unwrap()
    }

    fn req(key: &str, change: Change, expect: Expect) -> AppendRequest {
        AppendRequest {
            id: uuid::Uuid::new_v4().to_string(),
            record: rec(key),
            change,
            expect,
            kind: EventKind::Set,
            method: "m".into(),
            claims: Default::default(),
            time: 100,
            idempotency: None,
        }
    }

    fn put(key: &str, expect: Expect) -> AppendRequest {
        req(key, Change::Put(json!({"a": 1}).as_object().unwrap().clone().into()), expect)
    }

    fn versions(p: &Plan) -> Vec<String> {
        p.decisions
            .iter()
            .map(|d| match d {
                Decision::New { version, ordinal } => format!("new v{version} #{ordinal}"),
                Decision::Replay(e) => format!("replay {}", e.version),
                Decision::ReplayOf(i) => format!("replay of {i}"),
                Decision::Refused(e) => format!("refused {}", e.kind()),
            })
            .collect()
    }

    #[test]
    fn later_appends_see_earlier_ones() {
        let reqs = [
            put("a", Expect::Absent),
            put("a", Expect::Absent),
            put("a", Expect::Version(1)),
            req("a", Change::Delete, Expect::Any),
            req("a", Change::Delete, Expect::Any),
            put("b", Expect::Version(3)),
            put("a", Expect::Absent),
        ];
        let refs: Vec<&AppendRequest> = reqs.iter().collect();
        let current = HashMap::from([(rec("a"), Current { version: 0, live: false }), (rec("b"), Current { version: 3, live: true })]);
        let p = plan(&refs, current, &HashMap::new());
        assert_eq!(
            versions(&p),
            [
                "new v1 #0",
                "refused version_conflict",
                "new v2 #1",
                "new v3 #2",
                "refused not_found",
                "new v4 #3",
                "new v4 #4"
            ]
        );
        assert_eq!(p.new_events, [0, 2, 3, 5, 6]);
        // The last write of each record is its new row.
        assert_eq!(p.states, [5, 6]);
    }

    #[test]
    fn idempotency_keys_within_and_across_batches() {
        let with = |key: &str, idem: &str, fp: &str| {
            let mut r = put(key, Expect::Any);
            r.idempotency = Some(Idempotency { key: idem.into(), fingerprint: fp.into(), not_before: 50 });
            r
        };
        let earlier = put("z", Expect::Any).into_event(7, 1);
        let old = { let mut r = put("y", Expect::Any); r.time = 10; r }.into_event(3, 1);
        let remembered = HashMap::from([
            ("k-old".to_owned(), Remembered { fingerprint: "f".into(), first: earlier.clone() }),
            ("k-expired".to_owned(), Remembered { fingerprint: "f".into(), first: old }),
        ]);
        let reqs = [
            with("a", "k-new", "f"),
            with("a", "k-new", "f"),
            with("a", "k-new", "g"),
            with("b", "k-old", "f"),
            with("b", "k-old", "g"),
            with("c", "k-expired", "g"),
        ];
        let refs: Vec<&AppendRequest> = reqs.iter().collect();
        let p = plan(&refs, HashMap::new(), &remembered);
        assert_eq!(
            versions(&p),
            ["new v1 #0", "replay of 0", "refused invalid_argument", "replay 1", "refused invalid_argument", "new v1 #1"]
        );
        assert_eq!(p.idempotency, [0, 5]);
        let out = outcomes(reqs.to_vec(), p.decisions, 41);
        let first = out[0].as_ref().unwrap();
        assert_eq!((first.event.seq, first.replayed), (41, false));
        let again = out[1].as_ref().unwrap();
        assert_eq!((&again.event, again.replayed), (&first.event, true));
        assert_eq!(out[3].as_ref().unwrap().event, earlier);
        assert_eq!(out[5].as_ref().unwrap().event.seq, 42);
    }
}

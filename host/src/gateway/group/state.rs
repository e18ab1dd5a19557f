//! A consumer group's shared state and the rules that change it: pure
//! functions of the document, the events read from the feed and the clock,
//! so each rule is tested here without storage or time.
//!
//! Invariants (each change keeps them):
//! - every event of the group's subscription with `seq <= position` is
//!   done: acknowledged or parked (only a replayed parked event may be in
//!   flight below `position`);
//! - above `position`, an event of the subscription is in flight (assigned
//!   to a member until its deadline), done (in `done` or `parked`), or
//!   waiting; `position` only grows, and only over events a claim saw:
//!   never past the end of its window (`scanned_to`), since an event past
//!   it may be waiting even below the first event in flight;
//! - at most one event of a record is in flight, and it is the record's
//!   earliest event that is not done: a waiting event is assigned only when
//!   every earlier event of its record is done. So a record's events reach
//!   the members one at a time, in order (a replayed parked event is the
//!   exception: it comes again after later ones);
//! - an event is delivered at most `max_deliveries` times; when its last
//!   delivery expires unacknowledged it is parked, and counts as done.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Parked events kept per group; past it the oldest are dropped (and
/// logged), so the document stays small.
pub const MAX_PARKED: usize = 1000;

/// What a group subscribes to and how it delivers: fixed when the group is
/// created (the first member's request), checked on every later one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub domain: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub query_string: String,
    #[serde(default)]
    pub claims_query: String,
    #[serde(default)]
    pub kinds: Vec<String>,
    pub ack_timeout_ms: u64,
    pub max_deliveries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub id: String,
    /// The record's `domain/type/key`, for one-at-a-time per record.
    pub record: String,
    /// Who holds it; empty for a replayed parked event nobody holds yet.
    pub member: String,
    /// Unix milliseconds after which it is due again.
    pub deadline: i64,
    /// Deliveries made so far.
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub id: String,
    pub attempts: u32,
    /// Unix milliseconds when it was parked.
    pub time: i64,
}

/// The document `Storage::group_store` keeps (as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub spec: GroupSpec,
    pub position: u64,
    #[serde(default)]
    pub inflight: BTreeMap<u64, InFlight>,
    /// Acknowledged seqs above `position`.
    #[serde(default)]
    pub done: BTreeSet<u64>,
    #[serde(default)]
    pub parked: BTreeMap<u64, Parked>,
    /// Member → when it was last seen claiming (Unix milliseconds).
    #[serde(default)]
    pub members: BTreeMap<String, i64>,
}

/// An event of the subscription as the claim sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub seq: u64,
    pub id: String,
    pub record: String,
}

/// One delivery a claim made: the event, and its delivery count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub seq: u64,
    pub id: String,
    pub attempt: u32,
}

/// What a claim did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    pub assigned: Vec<Assigned>,
    pub parked: Vec<Parked>,
    /// Whether the document changed (and must be stored).
    pub changed: bool,
}

/// What an acknowledgement did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Ids that were in flight and are now acknowledged (or due again).
    pub applied: Vec<String>,
    /// Ids not in flight: acknowledged before, never delivered, or not of
    /// this group.
    pub unknown: Vec<String>,
}

impl GroupState {
    pub fn new(spec: GroupSpec, position: u64) -> Self {
        GroupState {
            spec,
            position,
            inflight: BTreeMap::new(),
            done: BTreeSet::new(),
            parked: BTreeMap::new(),
            members: BTreeMap::new(),
        }
    }

    /// Events in flight to `member`.
    pub fn held_by(&self, member: &str) -> usize {
        self.inflight.values().filter(|f| f.member == member).count()
    }

    /// The earliest deadline after `now` of an event in flight. Events due
    /// already are not counted: a claim that left them (to another member,
    /// or for lack of room) waits for a wake-up or a poll, not a spin.
    pub fn next_deadline(&self, now: i64) -> Option<i64> {
        self.inflight.values().map(|f| f.deadline).filter(|d| *d > now).min()
    }

    /// Whether another member than `member` claimed recently enough to be
    /// alive (within two ack timeouts).
    fn others_alive(&self, member: &str, now: i64) -> bool {
        let horizon = 2 * self.spec.ack_timeout_ms as i64;
        self.members.iter().any(|(m, seen)| m != member && now - seen <= horizon)
    }

    /// Claims work for `member`, which has room for `room` more events.
    ///
    /// `window` holds the events of the subscription after `position`, in
    /// seq order, as read from the feed up to `scanned_to` (every event of
    /// the subscription in (`position`, `scanned_to`] is in it). Due events
    /// come first: one whose deliveries are used up is parked, another goes
    /// to `member` unless `member` held it last and another member is
    /// alive (it is left for that one). Then waiting events, oldest first,
    /// each only when its record has nothing in flight and no earlier
    /// waiting event. Finally `position` moves up over what is done, up to
    /// `scanned_to` at most (an empty window with `scanned_to` at the
    /// position, as a full member's claim passes, moves it not at all).
    pub fn claim(&mut self, member: &str, room: usize, now: i64, window: &[Candidate], scanned_to: u64) -> Claimed {
        let mut out = Claimed::default();
        let timeout = self.spec.ack_timeout_ms as i64;
        let seen = self.members.get(member).copied();
        if seen.is_none_or(|s| now - s >= timeout / 2) {
            self.members.insert(member.to_owned(), now);
            out.changed = true;
        }
        let horizon = 10 * timeout.max(1000);
        let before = self.members.len();
        self.members.retain(|_, seen| now - *seen <= horizon);
        out.changed |= self.members.len() != before;

        let others_alive = self.others_alive(member, now);
        let due: Vec<u64> = self.inflight.iter().filter(|(_, f)| f.deadline <= now).map(|(s, _)| *s).collect();
        for seq in due {
            let f = self.inflight.get_mut(&seq).expect("listed above");
            if f.attempts >= self.spec.max_deliveries {
                let f = self.inflight.remove(&seq).expect("listed above");
                let parked = Parked { id: f.id, attempts: f.attempts, time: now };
                self.parked.insert(seq, parked.clone());
                if seq > self.position {
                    self.done.insert(seq);
                }
                out.parked.push(parked);
                out.changed = true;
                continue;
            }
            // Left to another member for one ack timeout past its
            // deadline; after that whoever has room takes it.
            let leave_it = f.member == member && others_alive && now - f.deadline < timeout;
            if out.assigned.len() >= room || leave_it {
                continue;
            }
            f.member = member.to_owned();
            f.attempts += 1;
            f.deadline = now + timeout;
            out.assigned.push(Assigned { seq, id: f.id.clone(), attempt: f.attempts });
            out.changed = true;
        }
        while self.parked.len() > MAX_PARKED {
            let (seq, p) = self.parked.pop_first().expect("not empty");
            tracing::warn!(seq, event = %p.id, "consumer group: more than {MAX_PARKED} parked events; dropped the oldest");
        }

        let mut busy: HashSet<&str> = self.inflight.values().map(|f| f.record.as_str()).collect();
        let mut first_waiting = None;
        let mut fresh = vec![];
        for c in window.iter().filter(|c| c.seq > self.position) {
            if self.done.contains(&c.seq) || self.inflight.contains_key(&c.seq) {
                continue;
            }
            if busy.contains(c.record.as_str()) || out.assigned.len() + fresh.len() >= room {
                // Waiting: its record is busy (or this member is full).
                busy.insert(c.record.as_str());
                first_waiting.get_or_insert(c.seq);
                continue;
            }
            busy.insert(c.record.as_str());
            fresh.push(c);
        }
        for c in fresh {
            self.inflight.insert(
                c.seq,
                InFlight { id: c.id.clone(), record: c.record.clone(), member: member.to_owned(), deadline: now + timeout, attempts: 1 },
            );
            out.assigned.push(Assigned { seq: c.seq, id: c.id.clone(), attempt: 1 });
            out.changed = true;
        }

        // Everything below the first event not done is done, as far as the
        // window shows: past `scanned_to` this claim saw nothing, so an event
        // there may be waiting even below the first one in flight (a full
        // member's claim reads no window at all: `scanned_to` is then the
        // position, and the position stays).
        let first_open = self.inflight.range(self.position + 1..).next().map(|(s, _)| *s);
        let limit = [first_open, first_waiting].into_iter().flatten().map(|s| s - 1).fold(scanned_to, u64::min);
        if limit > self.position {
            self.position = limit;
            self.done = self.done.split_off(&(limit + 1));
            out.changed = true;
        }
        out
    }

    /// Acknowledges the events `ids` (or, with `nack`, makes them due now:
    /// they go to another member if one is alive, and their failed delivery
    /// counts toward parking).
    pub fn ack(&mut self, ids: &[String], nack: bool, now: i64) -> Acked {
        let mut out = Acked::default();
        for id in ids {
            let Some(seq) = self.inflight.iter().find(|(_, f)| f.id == *id).map(|(s, _)| *s) else {
                out.unknown.push(id.clone());
                continue;
            };
            if nack {
                self.inflight.get_mut(&seq).expect("found above").deadline = now;
            } else {
                self.inflight.remove(&seq);
                if seq > self.position {
                    self.done.insert(seq);
                }
            }
            out.applied.push(id.clone());
        }
        out
    }

    /// A member left (its stream ended): what it held is due now, and it
    /// is no longer alive.
    pub fn release(&mut self, member: &str, now: i64) -> bool {
        let mut changed = self.members.remove(member).is_some();
        for f in self.inflight.values_mut().filter(|f| f.member == member) {
            f.deadline = now;
            changed = true;
        }
        changed
    }

    /// Puts parked events (`ids`, or every one when empty) back in flight,
    /// due now, with their delivery count reset. Returns the ids replayed.
    pub fn replay_parked(&mut self, ids: &[String], now: i64, record_of: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let chosen: Vec<u64> = self
            .parked
            .iter()
            .filter(|(_, p)| ids.is_empty() || ids.contains(&p.id))
            .map(|(s, _)| *s)
            .collect();
        let mut out = vec![];
        for seq in chosen {
            let p = self.parked.remove(&seq).expect("listed above");
            let Some(record) = record_of(&p.id) else { continue };
            self.done.remove(&seq);
            self.inflight.insert(seq, InFlight { id: p.id.clone(), record, member: String::new(), deadline: now, attempts: 0 });
            out.push(p.id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_deliveries: u32) -> GroupSpec {
        GroupSpec {
            domain: "d".into(),
            ty: "t".into(),
            key: String::new(),
            query_string: String::new(),
            claims_query: String::new(),
            kinds: vec![],
            ack_timeout_ms: 1000,
            max_deliveries,
        }
    }

    fn ev(seq: u64, record: &str) -> Candidate {
        Candidate { seq, id: format!("e{seq}"), record: record.into() }
    }

    fn seqs(c: &Claimed) -> Vec<u64> {
        c.assigned.iter().map(|a| a.seq).collect()
    }

    #[test]
    fn one_event_per_record_in_flight_in_order() {
        let mut g = GroupState::new(spec(3), 0);
        let w = [ev(1, "a"), ev(2, "a"), ev(3, "b"), ev(4, "a"), ev(5, "c")];
        let c = g.claim("m1", 10, 0, &w, 5);
        assert_eq!(seqs(&c), [1, 3, 5]);
        // Another member gets nothing of a or b while they are in flight.
        assert!(g.claim("m2", 10, 1, &w, 5).assigned.is_empty());
        g.ack(&["e1".into()], false, 2);
        let c = g.claim("m2", 10, 3, &w, 5);
        assert_eq!(seqs(&c), [2], "a's next event, not 4 before it");
        assert_eq!(g.position, 1);
        g.ack(&["e2".into(), "e3".into(), "e5".into()], false, 4);
        assert_eq!(seqs(&g.claim("m1", 10, 5, &w, 5)), [4]);
        assert_eq!(g.position, 3, "4 is still in flight");
        g.ack(&["e4".into()], false, 6);
        assert!(g.claim("m1", 10, 7, &w, 5).assigned.is_empty());
        assert_eq!(g.position, 5);
        assert!(g.done.is_empty() && g.inflight.is_empty());
    }

    #[test]
    fn room_limits_a_claim_and_the_rest_waits() {
        let mut g = GroupState::new(spec(3), 0);
        let w = [ev(1, "a"), ev(2, "b"), ev(3, "c")];
        assert_eq!(seqs(&g.claim("m1", 2, 0, &w, 3)), [1, 2]);
        assert_eq!(seqs(&g.claim("m2", 2, 0, &w, 3)), [3]);
        assert_eq!(g.held_by("m1"), 2);
    }

    #[test]
    fn an_expired_event_goes_to_another_member_and_is_parked_after_max_deliveries() {
        let mut g = GroupState::new(spec(2), 0);
        let w = [ev(1, "a"), ev(2, "a")];
        g.claim("m1", 10, 0, &w, 2);
        g.claim("m2", 10, 0, &w, 2);
        // Due at 1000: m1 held it and m2 is alive, so m1 leaves it.
        assert!(g.claim("m1", 10, 1000, &w, 2).assigned.is_empty());
        let c = g.claim("m2", 10, 1000, &w, 2);
        assert_eq!(c.assigned, [Assigned { seq: 1, id: "e1".into(), attempt: 2 }]);
        // The second delivery expires too: parked, and a's next event goes.
        let c = g.claim("m1", 10, 2000, &w, 2);
        assert_eq!(c.parked.len(), 1);
        assert_eq!(seqs(&c), [2]);
        assert_eq!(g.position, 1);
        // Replayed, it is due at once, with a fresh count.
        let replayed = g.replay_parked(&[], 2100, |_| Some("a".into()));
        assert_eq!(replayed, ["e1"]);
        g.ack(&["e2".into()], false, 2100);
        let c = g.claim("m2", 10, 2100, &w, 2);
        assert_eq!(c.assigned, [Assigned { seq: 1, id: "e1".into(), attempt: 1 }]);
        g.ack(&["e1".into()], false, 2200);
        g.claim("m2", 10, 2300, &w, 2);
        assert_eq!(g.position, 2);
        assert!(g.inflight.is_empty() && g.parked.is_empty());
    }

    #[test]
    fn a_lone_member_gets_its_own_expired_event_back() {
        let mut g = GroupState::new(spec(5), 0);
        let w = [ev(1, "a")];
        g.claim("m1", 10, 0, &w, 1);
        let c = g.claim("m1", 10, 1000, &w, 1);
        assert_eq!(c.assigned[0].attempt, 2);
    }

    #[test]
    fn an_event_left_for_others_comes_back_after_one_more_timeout() {
        let mut g = GroupState::new(spec(5), 0);
        let w = [ev(1, "a")];
        g.claim("m1", 10, 0, &w, 1);
        g.claim("m2", 0, 900, &w, 1);
        // Due at 1000; m2 is alive but has no room.
        assert!(g.claim("m1", 10, 1000, &w, 1).assigned.is_empty());
        assert_eq!(g.next_deadline(1000), None, "nothing to wait for: no spin on a due event");
        g.claim("m2", 0, 1900, &w, 1);
        assert_eq!(seqs(&g.claim("m1", 10, 2000, &w, 1)), [1]);
        assert_eq!(g.next_deadline(2000), Some(3000));
    }

    #[test]
    fn nack_and_release_make_events_due_now() {
        let mut g = GroupState::new(spec(5), 0);
        let w = [ev(1, "a"), ev(2, "b")];
        g.claim("m1", 10, 0, &w, 2);
        let a = g.ack(&["e1".into(), "nope".into()], true, 10);
        assert_eq!((a.applied.len(), a.unknown.len()), (1, 1));
        g.members.insert("m2".into(), 10);
        assert_eq!(seqs(&g.claim("m2", 10, 10, &w, 2)), [1]);
        assert!(g.release("m1", 20));
        assert_eq!(seqs(&g.claim("m2", 10, 20, &w, 2)), [2]);
    }

    #[test]
    fn a_claim_that_read_no_window_does_not_move_the_position_over_waiting_events() {
        let mut g = GroupState::new(spec(3), 0);
        let w = [ev(1, "a"), ev(2, "a"), ev(3, "b")];
        assert_eq!(seqs(&g.claim("m1", 1, 0, &w, 3)), [1], "2 waits for 1, 3 for room");
        assert_eq!(seqs(&g.claim("m2", 1, 0, &w, 3)), [3]);
        g.ack(&["e1".into()], false, 1);
        // 2 now waits below 3, the first event in flight. m2 is full: its
        // claim reads no feed (no window, scanned up to the position), so it
        // saw nothing of 2 and must not move the position over it.
        let c = g.claim("m2", 0, 2, &[], g.position);
        assert!(c.assigned.is_empty());
        assert_eq!(g.position, 0, "a claim that saw no event moves the position over none");
        assert_eq!(seqs(&g.claim("m1", 1, 3, &w, 3)), [2], "2 is still delivered");
        assert_eq!(g.position, 1);
        // A window that stops short of the first event in flight (read up to
        // 1 only) moves the position no further than what it read.
        let mut g = GroupState::new(spec(3), 0);
        g.claim("m1", 1, 0, &w, 3);
        g.claim("m2", 1, 0, &w, 3);
        g.ack(&["e1".into()], false, 1);
        g.claim("m2", 0, 2, &w[..1], 1);
        assert_eq!(g.position, 1);
    }

    #[test]
    fn position_skips_over_events_outside_the_subscription() {
        let mut g = GroupState::new(spec(3), 10);
        // Nothing of the subscription up to 50: the position moves there.
        let c = g.claim("m1", 10, 0, &[], 50);
        assert!(c.changed);
        assert_eq!(g.position, 50);
        let w = [ev(60, "a"), ev(70, "b")];
        g.claim("m1", 10, 1, &w, 80);
        g.ack(&["e70".into()], false, 2);
        g.claim("m1", 10, 3, &w, 80);
        assert_eq!(g.position, 59);
        g.ack(&["e60".into()], false, 4);
        g.claim("m1", 10, 5, &w, 80);
        assert_eq!(g.position, 80);
    }

    #[test]
    fn the_document_round_trips_as_json() {
        let mut g = GroupState::new(spec(3), 0);
        g.claim("m1", 10, 0, &[ev(1, "a")], 1);
        let text = serde_json::to_vec(&g).unwrap();
        assert_eq!(serde_json::from_slice::<GroupState>(&text).unwrap(), g);
    }
}

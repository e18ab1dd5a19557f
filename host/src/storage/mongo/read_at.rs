//! Reads at a store position (`Storage::get_at`, `search_states_at`,
//! `seq_at_time`), answered from the events, which are the truth in both
//! modes (on a standalone server a state document may run ahead of the
//! stable head, or behind it until repaired).
//!
//! - A record at seq S is its last event with `_id <= S`: one descent of
//!   the index (d, t, k, _id). Read now, S is the head read first: events up
//!   to it are all visible (the counter commits with them, or the stable
//!   head has no gap), so the answer is exactly the store at S.
//! - A search at S reads the state documents, which carry the seq of the
//!   event that last set them (`s`): one with `s <= S` is exactly the
//!   record at S (after the standalone repair, which applies every stable
//!   event); one with `s > S` was changed since and is read from its events
//!   at S instead. So the cost grows with the records read plus those
//!   changed since S, each a logarithmic lookup, not with the history.
//!   Documents written before `s` existed have none and count as older.

use super::codec::{event_from_doc, state_from_doc};
use super::{CALL_DEADLINE, MongoStorage, bounded, db_error, query};
use crate::model::{Arrival, AtSeq, Error, Event, RecordRef, Result, Select, State, StateQuery, state_after};
use futures::TryStreamExt;
use mongodb::bson::doc;

impl MongoStorage {
    /// The record's last event with a seq at or below `seq`.
    pub(super) async fn event_at(&self, r: &RecordRef, seq: u64) -> Result<Option<Event>> {
        let found = bounded(
            self.events
                .find_one(doc! {"d": &r.domain, "t": &r.ty, "k": &r.key, "_id": {"$lte": seq as i64}})
                .sort(doc! {"_id": -1}),
        )
        .await?;
        found.as_ref().map(event_from_doc).transpose()
    }

    pub(super) async fn get_at_seq(&self, r: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        let seq = match at {
            Some(seq) => seq,
            None => crate::storage::Storage::head(self).await?,
        };
        let value = self.event_at(r, seq).await?.as_ref().and_then(state_after);
        Ok(AtSeq { value, seq })
    }

    pub(super) async fn search_at_seq(&self, q: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        let seq = match at {
            Some(seq) => seq,
            None => crate::storage::Storage::head(self).await?,
        };
        if self.standalone {
            self.repair().await?;
        }
        let run = async {
            // The live states the query may match, plus every state changed
            // since `seq` (whatever it is now: it may have matched then).
            let filter = doc! {"$or": [query::states(q), {"d": &q.domain, "t": &q.ty, "s": {"$gt": seq as i64}}]};
            let mut cursor = bounded(self.states.find(filter).sort(doc! {"k": 1})).await?;
            let arrival = if q.sort.is_some() { Arrival::AnyOrder } else { Arrival::InOrder };
            let mut page = q.page(arrival);
            while let Some(d) = cursor.try_next().await.map_err(db_error)? {
                let last = d.get_i64("s").unwrap_or(0);
                let state = if last as u64 > seq {
                    let record = RecordRef {
                        domain: q.domain.clone(),
                        ty: q.ty.clone(),
                        key: d.get_str("k").map_err(|_| Error::internal("mongo: stored state has no key"))?.to_owned(),
                    };
                    self.event_at(&record, seq).await?.as_ref().and_then(state_after)
                } else {
                    Some(state_from_doc(&d)?)
                };
                if let Some(state) = state
                    && !page.offer(state)
                {
                    break;
                }
            }
            Ok(page.finish())
        };
        let value = tokio::time::timeout(CALL_DEADLINE, run)
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("mongo: search took too long")))?;
        Ok(AtSeq { value, seq })
    }

    pub(super) async fn seq_at(&self, domain: &str, ty: &str, time: i64) -> Result<u64> {
        // One descent of the index (d, t, time).
        let found = bounded(
            self.events
                .find_one(doc! {"d": domain, "t": ty, "time": {"$lte": time}})
                .sort(doc! {"time": -1, "_id": -1}),
        )
        .await?;
        Ok(found.and_then(|d| d.get_i64("_id").ok()).unwrap_or(0) as u64)
    }
}

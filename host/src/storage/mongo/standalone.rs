//! The append on a standalone server, which has no multi-document
//! transactions: the event is the one atomic write, inserted under the
//! unique (record, version) index, and the state follows (see **Standalone
//! servers** in the module comment of `mongo`).

use super::codec::{event_from_doc, event_to_doc};
use super::{CALL_DEADLINE, MongoStorage, TURN_WAIT, bounded, db_error, is_duplicate_key};
use crate::model::{Appended, AppendRequest, Change, Error, Event, RecordRef, Result};
use crate::storage::{conflict, idempotency_mismatch};
use mongodb::bson::doc;
use mongodb::options::ReturnDocument;
use std::time::{Duration, Instant};

impl MongoStorage {
    pub(super) async fn latest_event(&self, r: &RecordRef) -> Result<Option<Event>> {
        let found = bounded(
            self.events
                .find_one(doc! {"d": &r.domain, "t": &r.ty, "k": &r.key})
                .sort(doc! {"v": -1}),
        )
        .await?;
        found.as_ref().map(event_from_doc).transpose()
    }

    pub(super) async fn append_standalone(&self, req: &AppendRequest) -> Result<Appended> {
        let started = Instant::now();
        let _turn = tokio::time::timeout(TURN_WAIT, self.turn.lock()).await.ok();
        let r = &req.record;
        let mut attempt = 0u32;
        loop {
            if started.elapsed() > CALL_DEADLINE {
                return Err(Error::unavailable("mongo: append kept colliding with concurrent appends"));
            }
            if let Some(idem) = &req.idempotency {
                let first = bounded(self.events.find_one(doc! {"idem": &idem.key}).sort(doc! {"_id": -1})).await?;
                if let Some(first) = first {
                    let fingerprint = first.get_str("fp").unwrap_or("").to_owned();
                    let first = event_from_doc(&first)?;
                    if first.time >= idem.not_before {
                        if fingerprint != idem.fingerprint {
                            return Err(idempotency_mismatch(&idem.key));
                        }
                        return Ok(Appended {
                            event: first,
                            replayed: true,
                        });
                    }
                }
            }
            let latest = self.latest_event(r).await?;
            let last = latest.as_ref().map_or(0, |e| e.version);
            let current = latest.as_ref().filter(|e| e.values.is_some()).map(|e| e.version);
            if !req.expect.admits(current) {
                return Err(conflict(req, current));
            }
            if req.change == Change::Delete && current.is_none() {
                return Err(Error::NotFound(format!("state {r}")));
            }
            let counter = bounded(
                self.counters
                    .find_one_and_update(doc! {"_id": "seq"}, doc! {"$inc": {"n": 1_i64}})
                    .upsert(true)
                    .return_document(ReturnDocument::After),
            )
            .await?
            .ok_or_else(|| Error::internal("mongo: the seq counter vanished"))?;
            let seq = counter.get_i64("n").map_err(|e| Error::internal(format!("mongo: seq counter: {e}")))? as u64;
            let event = Event {
                id: req.id.clone(),
                seq,
                record: r.clone(),
                values: match &req.change {
                    Change::Put(v) => Some(v.clone()),
                    Change::Delete => None,
                },
                claims: req.claims.clone(),
                time: req.time,
                version: last + 1,
                kind: req.kind,
                method: req.method.clone(),
            };
            let mut d = event_to_doc(&event);
            if let Some(idem) = &req.idempotency {
                d.insert("idem", &idem.key);
                d.insert("fp", &idem.fingerprint);
            }
            match tokio::time::timeout(CALL_DEADLINE, self.events.insert_one(d).into_future()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if is_duplicate_key(&e) => {
                    tracing::debug!(seq, error = %e, "mongo: append collided");
                    // A concurrent append took this version (or a reader
                    // voided our seq): give the seq up and decide again,
                    // after a random pause so racing writers spread apart.
                    self.void(seq).await;
                    attempt += 1;
                    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
                    tokio::time::sleep(Duration::from_micros(jitter * u64::from(attempt.min(20)))).await;
                    continue;
                }
                // The outcome is unknown; if the event did not land, a
                // reader voids its seq after VOID_AFTER.
                Ok(Err(e)) => return Err(db_error(e)),
                Err(_) => return Err(Error::unavailable("mongo: append got no answer")),
            }
            if let Err(e) = self.apply_state(&event).await {
                tracing::warn!(error = %e, record = %r, "mongo: state update failed; repaired on the next search");
            }
            return Ok(Appended {
                event,
                replayed: false,
            });
        }
    }
}

//! The append on a replica set or sharded cluster: one multi-document
//! transaction, retried while the server calls its failure transient (see
//! **Atomicity** in the module comment of `mongo`).

use super::codec::{event_from_doc, event_to_doc, state_set};
use super::{CALL_DEADLINE, MongoStorage, TURN_WAIT, corrupt, db_error, is_duplicate_key};
use crate::model::{Appended, AppendRequest, Change, Error, Event, Result};
use crate::storage::{conflict, idempotency_mismatch};
use mongodb::ClientSession;
use mongodb::bson::doc;
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{Acknowledgment, ReadConcern, ReturnDocument, TransactionOptions, WriteConcern};
use std::time::{Duration, Instant};

/// What an append's transaction decided.
#[allow(
    clippy::large_enum_variant,
    reason = "one Outcome per append, nearly always Done: boxing it would cost an allocation per write"
)]
enum Outcome {
    Done(Appended),
    Refused(Error),
}

impl MongoStorage {
    /// One attempt at an append, inside a transaction on `session`.
    async fn try_append(&self, s: &mut ClientSession, req: &AppendRequest) -> mongodb::error::Result<Outcome> {
        let r = &req.record;
        if let Some(idem) = &req.idempotency
            && let Some(entry) = self.idempotency.find_one(doc! {"_id": &idem.key}).session(&mut *s).await?
        {
            let seq = entry.get_i64("seq").unwrap_or(0);
            if let Some(first) = self.events.find_one(doc! {"_id": seq}).session(&mut *s).await? {
                let first = event_from_doc(&first).map_err(corrupt)?;
                if first.time >= idem.not_before {
                    if entry.get_str("fp").unwrap_or("") != idem.fingerprint {
                        return Ok(Outcome::Refused(idempotency_mismatch(&idem.key)));
                    }
                    return Ok(Outcome::Done(Appended {
                        event: first,
                        replayed: true,
                    }));
                }
            }
        }
        let state = self
            .states
            .find_one(doc! {"d": &r.domain, "t": &r.ty, "k": &r.key})
            .session(&mut *s)
            .await?;
        let last = state.as_ref().and_then(|d| d.get_i64("v").ok()).unwrap_or(0) as u64;
        let live = state.as_ref().is_some_and(|d| d.get_bool("live").unwrap_or(false));
        let current = live.then_some(last);
        if !req.expect.admits(current) {
            return Ok(Outcome::Refused(conflict(req, current)));
        }
        if req.change == Change::Delete && current.is_none() {
            return Ok(Outcome::Refused(Error::NotFound(format!("state {r}"))));
        }
        let version = last + 1;
        let counter = self
            .counters
            .find_one_and_update(doc! {"_id": "seq"}, doc! {"$inc": {"n": 1_i64}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await?
            .ok_or_else(|| corrupt("the seq counter vanished"))?;
        let seq = counter.get_i64("n").map_err(corrupt)? as u64;
        let values = match &req.change {
            Change::Put(v) => Some(v.clone()),
            Change::Delete => None,
        };
        let event = Event {
            id: req.id.clone(),
            seq,
            record: r.clone(),
            values,
            claims: req.claims.clone(),
            time: req.time,
            version,
            kind: req.kind,
            method: req.method.clone(),
        };
        self.events.insert_one(event_to_doc(&event)).session(&mut *s).await?;
        self.states
            .update_one(doc! {"d": &r.domain, "t": &r.ty, "k": &r.key}, doc! {"$set": state_set(&event)})
            .upsert(true)
            .session(&mut *s)
            .await?;
        if let Some(idem) = &req.idempotency {
            self.idempotency
                .update_one(
                    doc! {"_id": &idem.key},
                    doc! {"$set": {"fp": &idem.fingerprint, "seq": seq as i64}},
                )
                .upsert(true)
                .session(&mut *s)
                .await?;
        }
        Ok(Outcome::Done(Appended {
            event,
            replayed: false,
        }))
    }

    /// Runs the append transaction, retrying it while the server says the
    /// failure was transient (write conflicts with a concurrent append).
    pub(super) async fn append_with_retries(&self, req: &AppendRequest) -> Result<Appended> {
        let started = Instant::now();
        // Bounded, so a server that hangs cannot queue appends forever: past
        // the wait, contend without the turn.
        let _turn = tokio::time::timeout(TURN_WAIT, self.turn.lock()).await.ok();
        let mut session = self.client.start_session().await.map_err(db_error)?;
        let options = TransactionOptions::builder()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build())
            .build();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            session.start_transaction().with_options(options.clone()).await.map_err(db_error)?;
            let result = self.try_append(&mut session, req).await;
            let err = match result {
                Ok(Outcome::Refused(e)) => {
                    let _ = session.abort_transaction().await;
                    return Err(e);
                }
                Ok(Outcome::Done(appended)) if appended.replayed => {
                    let _ = session.abort_transaction().await;
                    return Ok(appended);
                }
                Ok(Outcome::Done(appended)) => match commit(&mut session).await {
                    Ok(()) => return Ok(appended),
                    Err(e) => e,
                },
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    e
                }
            };
            // A duplicate key inside the transaction means a concurrent
            // append created the same state or counter document first:
            // retrying re-reads it and decides properly.
            let retry = err.contains_label(TRANSIENT_TRANSACTION_ERROR) || is_duplicate_key(&err);
            if !retry || started.elapsed() > CALL_DEADLINE {
                return Err(db_error(err));
            }
            // Spread the retries of contending writers apart.
            let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
            let backoff = Duration::from_micros(jitter * u64::from(attempt.min(20)));
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Commits, retrying while the outcome is unknown (the driver's advice for
/// `UnknownTransactionCommitResult`), within the call deadline.
async fn commit(session: &mut ClientSession) -> mongodb::error::Result<()> {
    let started = Instant::now();
    loop {
        match session.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && started.elapsed() < CALL_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

//! What readers of a standalone server rely on: the *stable head* (the
//! longest gap-free run of seqs, voiding seqs whose event never came) and
//! the `states` collection repaired from the events past a watermark (see
//! **Standalone servers** in the module comment of `mongo`).

use super::codec::{event_from_doc, state_set};
use super::{CALL_DEADLINE, MongoStorage, VOID_AFTER, bounded, db_error, is_duplicate_key};
use crate::model::{Error, Event, Result};
use crate::storage::FEED_PAGE;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Instant;

impl MongoStorage {
    /// Fills a seq that will never hold an event, so the stable head can
    /// pass it. Losing the race to the real event is fine.
    pub(super) async fn void(&self, seq: u64) {
        let marker = format!("void:{seq}");
        let d = doc! {"_id": seq as i64, "id": &marker, "d": "", "t": "", "k": &marker, "v": 0_i64, "void": true};
        if let Err(e) = bounded(self.events.insert_one(d)).await {
            tracing::debug!(seq, error = %e, "mongo: seq not voided");
        }
    }

    /// Moves a record's state to `event`, unless it already is at a later
    /// version. Idempotent.
    pub(super) async fn apply_state(&self, event: &Event) -> Result<()> {
        let r = &event.record;
        let filter = doc! {"d": &r.domain, "t": &r.ty, "k": &r.key, "v": {"$lt": event.version as i64}};
        match tokio::time::timeout(
            CALL_DEADLINE,
            self.states.update_one(filter, doc! {"$set": state_set(event)}).upsert(true).into_future(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            // The state is already at this version or later: the upsert
            // found no match and its insert hit the unique index.
            Ok(Err(e)) if is_duplicate_key(&e) => Ok(()),
            Ok(Err(e)) => Err(db_error(e)),
            Err(_) => Err(Error::unavailable("mongo: state update got no answer")),
        }
    }

    /// The longest gap-free run of seqs from 1: what readers may see.
    pub(super) async fn stable_head(&self) -> Result<u64> {
        let mut w = self.stable.load(AtomicOrdering::SeqCst);
        loop {
            let cursor = bounded(
                self.events
                    .find(doc! {"_id": {"$gt": w as i64}})
                    .sort(doc! {"_id": 1})
                    .projection(doc! {"_id": 1})
                    .limit(FEED_PAGE as i64),
            )
            .await?;
            let ids: Vec<Document> = bounded(cursor.try_collect::<Vec<_>>()).await?;
            let full = ids.len() == FEED_PAGE;
            let mut gap = false;
            for d in &ids {
                let id = d.get_i64("_id").unwrap_or(0) as u64;
                if id == w + 1 {
                    w = id;
                } else {
                    gap = true;
                    break;
                }
            }
            if full && !gap {
                continue;
            }
            // Is seq w+1 handed out but not written yet?
            let counter = bounded(self.counters.find_one(doc! {"_id": "seq"})).await?;
            let allocated = counter.and_then(|d| d.get_i64("n").ok()).unwrap_or(0) as u64;
            if allocated > w {
                let overdue = {
                    let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
                    match *missing {
                        Some((seq, since)) if seq == w + 1 => since.elapsed() > VOID_AFTER,
                        _ => {
                            *missing = Some((w + 1, Instant::now()));
                            false
                        }
                    }
                };
                if overdue {
                    tracing::warn!(seq = w + 1, "mongo: an append never wrote its event; voiding its seq");
                    self.void(w + 1).await;
                    continue;
                }
            }
            self.stable.fetch_max(w, AtomicOrdering::SeqCst);
            return Ok(w);
        }
    }

    /// Applies every stable event past the repair watermark to `states`.
    pub(super) async fn repair(&self) -> Result<()> {
        let stable = self.stable_head().await?;
        let mut from = self.repaired.load(AtomicOrdering::SeqCst);
        while from < stable {
            let cursor = bounded(
                self.events
                    .find(doc! {"_id": {"$gt": from as i64, "$lte": stable as i64}, "void": {"$ne": true}})
                    .sort(doc! {"_id": 1})
                    .limit(FEED_PAGE as i64),
            )
            .await?;
            let docs: Vec<Document> = bounded(cursor.try_collect::<Vec<_>>()).await?;
            if docs.is_empty() {
                from = stable;
                break;
            }
            for d in &docs {
                let event = event_from_doc(d)?;
                self.apply_state(&event).await?;
                from = event.seq;
            }
        }
        if from > self.repaired.fetch_max(from, AtomicOrdering::SeqCst) {
            bounded(
                self.counters
                    .update_one(doc! {"_id": "repaired"}, doc! {"$max": {"n": from as i64}})
                    .upsert(true),
            )
            .await?;
        }
        Ok(())
    }
}

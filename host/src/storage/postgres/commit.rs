//! The PostgreSQL provider's group commit: one transaction per batch of
//! appends, as the module doc of `storage::postgres` describes (lock the
//! batch's records and idempotency keys, decide every append in Rust, write
//! events, states and keys, bump the seq counter, commit). Apart from the
//! reads in `mod.rs`, because this is the one place that writes.

use super::{NAME, db_error, event_from_row, transient};
use crate::storage::sql::batch::{self, Current, Remembered};
use crate::storage::sql::writer::{Committer, Failure, Job, connect_within};
use crate::storage::sql::{idempotency_hash, is_connection_error, type_hash};
use crate::model::{
    AppendRequest, Appended, Error, Event, RecordRef, Result,
};
use async_trait::async_trait;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use std::collections::HashMap;
use std::time::Duration;
use super::statements::EVENT_COLUMNS;

/// Runs a batch of appends as one transaction (see `storage::sql`).
pub(super) struct PgCommitter {
    pub(super) options: PgConnectOptions,
    pub(super) connect_timeout: Duration,
}

/// Locks the batch's records, inserting a placeholder row (version 0, no
/// state) for new ones; returns each record's row. Rows another gateway
/// inserted after this statement's snapshot are missing from the answer.
const LOCK_RECORDS: &str = "
WITH wanted AS (
    SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[]) AS w(dt, key, domain, type)
),
ins AS (
    INSERT INTO states (dt, key, domain, type, version)
    SELECT dt, key, domain, type, 0 FROM wanted ORDER BY dt, key
    ON CONFLICT (dt, key) DO NOTHING
    RETURNING dt, key
),
locked AS (
    SELECT s.dt, s.key, s.version, s.vals IS NOT NULL AS live
    FROM states s JOIN wanted w ON s.dt = w.dt AND s.key = w.key
    ORDER BY s.dt, s.key
    FOR UPDATE OF s
)
SELECT dt, key, version, live FROM locked
UNION ALL
SELECT dt, key, 0, false FROM ins";

/// The same for idempotency keys (by hash), with each entry's event id.
const LOCK_KEYS: &str = "
WITH wanted AS (SELECT unnest($1::bytea[]) AS h),
ins AS (
    INSERT INTO idempotency (h) SELECT h FROM wanted ORDER BY h
    ON CONFLICT (h) DO NOTHING
    RETURNING h
),
locked AS (
    SELECT i.h, i.fingerprint, i.event_id FROM idempotency i JOIN wanted w ON i.h = w.h
    ORDER BY i.h
    FOR UPDATE OF i
)
SELECT h, fingerprint, event_id FROM locked
UNION ALL
SELECT h, NULL, NULL FROM ins";

/// Takes `$1` seqs from the counter and writes the events, the new states
/// and the idempotency entries; returns the counter's new value.
const WRITE: &str = "
WITH c AS (UPDATE seq_counter SET n = n + $1 WHERE id = 1 RETURNING n),
ev AS (
    INSERT INTO events (seq, id, dt, domain, type, key, version, kind, method, time, vals, doc, claims, cdoc)
    SELECT (SELECT n FROM c) - $1 + u.ord, u.id, u.dt, u.domain, u.type, u.key, u.version, u.kind, u.method,
           u.time, u.vals, u.vals::jsonb, u.claims, u.claims::jsonb
    FROM unnest($2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::text[], $9::text[],
                $10::int8[], $11::text[], $12::text[])
         WITH ORDINALITY AS u(id, dt, domain, type, key, version, kind, method, time, vals, claims, ord)
),
st AS (
    UPDATE states s SET version = v.version, vals = v.vals, doc = v.vals::jsonb
    FROM unnest($13::bytea[], $14::text[], $15::int8[], $16::text[]) AS v(dt, key, version, vals)
    WHERE s.dt = v.dt AND s.key = v.key
),
idem AS (
    UPDATE idempotency i SET fingerprint = k.fingerprint, event_id = k.event_id
    FROM unnest($17::bytea[], $18::text[], $19::text[]) AS k(h, fingerprint, event_id)
    WHERE i.h = k.h
)
SELECT n FROM c";

#[async_trait]
impl Committer for PgCommitter {
    type Conn = PgConnection;

    async fn connect(&self) -> Result<PgConnection> {
        connect_within(self.connect_timeout, NAME, PgConnection::connect_with(&self.options), db_error).await
    }

    async fn commit(&self, conn: &mut PgConnection, jobs: &[Job]) -> std::result::Result<Vec<Result<Appended>>, Failure> {
        let before_commit = |e| Failure::before_commit(e, transient, db_error);
        let mut tx = conn.begin().await.map_err(before_commit)?;

        // Records, sorted and distinct, so every gateway locks in one order.
        let mut records: Vec<(Vec<u8>, &RecordRef)> =
            jobs.iter().map(|j| (type_hash(&j.req.record.domain, &j.req.record.ty), &j.req.record)).collect();
        records.sort_by(|a, b| (&a.0, &a.1.key).cmp(&(&b.0, &b.1.key)));
        records.dedup_by(|a, b| a.0 == b.0 && a.1.key == b.1.key);
        let rows = sqlx::query(LOCK_RECORDS)
            .bind(records.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
            .bind(records.iter().map(|r| r.1.key.clone()).collect::<Vec<_>>())
            .bind(records.iter().map(|r| r.1.domain.clone()).collect::<Vec<_>>())
            .bind(records.iter().map(|r| r.1.ty.clone()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(before_commit)?;
        let mut by_hash: HashMap<(Vec<u8>, String), Current> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let current = Current { version: row.try_get::<i64, _>(2).map_err(before_commit)? as u64, live: row.try_get(3).map_err(before_commit)? };
            by_hash.insert((row.try_get(0).map_err(before_commit)?, row.try_get(1).map_err(before_commit)?), current);
        }
        let mut current = HashMap::with_capacity(records.len());
        for (dt, r) in &records {
            match by_hash.get(&(dt.clone(), r.key.clone())) {
                Some(c) => current.insert((*r).clone(), *c),
                // Created by another gateway after this statement began:
                // run the batch again (it now sees the row).
                None => return Err(Failure::Transient(Error::unavailable("postgres: a record was created concurrently"))),
            };
        }

        let Some(remembered) = self.lock_keys(&mut tx, jobs).await.map_err(before_commit)? else {
            return Err(Failure::Transient(Error::unavailable("postgres: an idempotency key was created concurrently")));
        };
        let reqs: Vec<&AppendRequest> = jobs.iter().map(|j| &j.req).collect();
        let plan = batch::plan(&reqs, current, &remembered);
        let new = plan.new_events.len() as i64;
        let mut first_seq = 0;
        if new > 0 {
            let events = &plan.new_events;
            let job = |i: &usize| &jobs[*i];
            let decided_version = |i: usize| match plan.decisions[i] {
                batch::Decision::New { version, .. } => version as i64,
                _ => unreachable!("only new events are written"),
            };
            let n: i64 = sqlx::query_scalar(WRITE)
                .bind(new)
                .bind(events.iter().map(|i| job(i).req.id.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| type_hash(&job(i).req.record.domain, &job(i).req.record.ty)).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.record.domain.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.record.ty.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.record.key.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| decided_version(*i)).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.kind.as_str().to_owned()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.method.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).req.time).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).vals.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|i| job(i).claims.clone()).collect::<Vec<_>>())
                .bind(plan.states.iter().map(|i| type_hash(&job(i).req.record.domain, &job(i).req.record.ty)).collect::<Vec<_>>())
                .bind(plan.states.iter().map(|i| job(i).req.record.key.clone()).collect::<Vec<_>>())
                .bind(plan.states.iter().map(|i| decided_version(*i)).collect::<Vec<_>>())
                .bind(plan.states.iter().map(|i| job(i).vals.clone()).collect::<Vec<_>>())
                .bind(plan.idempotency.iter().map(|i| idempotency_hash(&idem_key(job(i)))).collect::<Vec<_>>())
                .bind(plan.idempotency.iter().map(|i| job(i).req.idempotency.as_ref().map(|k| k.fingerprint.clone()).unwrap_or_default()).collect::<Vec<_>>())
                .bind(plan.idempotency.iter().map(|i| job(i).req.id.clone()).collect::<Vec<_>>())
                .fetch_one(&mut *tx)
                .await
                .map_err(before_commit)?;
            first_seq = (n - new + 1) as u64;
            if let Err(e) = tx.commit().await {
                // The commit may or may not have happened.
                let lost = is_connection_error(&e);
                return Err(if transient(&e) {
                    Failure::Transient(db_error(e))
                } else {
                    Failure::Fatal { error: db_error(e), connection_lost: lost }
                });
            }
        } else {
            // Nothing to write: drop the placeholder rows and the locks.
            tx.rollback().await.map_err(before_commit)?;
        }
        let reqs = jobs.iter().map(|j| j.req.clone()).collect();
        Ok(batch::outcomes(reqs, plan.decisions, first_seq))
    }
}

fn idem_key(job: &Job) -> String {
    job.req.idempotency.as_ref().map(|k| k.key.clone()).unwrap_or_default()
}

impl PgCommitter {
    /// Locks the batch's idempotency keys and reads their entries; `None`
    /// when a key was inserted by another gateway after the statement began.
    async fn lock_keys(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        jobs: &[Job],
    ) -> std::result::Result<Option<HashMap<String, Remembered>>, sqlx::Error> {
        let mut keys: Vec<(Vec<u8>, &str)> = jobs
            .iter()
            .filter_map(|j| j.req.idempotency.as_ref())
            .map(|i| (idempotency_hash(&i.key), i.key.as_str()))
            .collect();
        if keys.is_empty() {
            return Ok(Some(HashMap::new()));
        }
        keys.sort();
        keys.dedup();
        let rows = sqlx::query(LOCK_KEYS)
            .bind(keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>())
            .fetch_all(&mut **tx)
            .await?;
        let mut entries: Vec<(Vec<u8>, String, String)> = vec![];
        let mut seen = 0;
        for row in &rows {
            seen += 1;
            let fingerprint: Option<String> = row.try_get(1)?;
            let event_id: Option<String> = row.try_get(2)?;
            if let (Some(f), Some(id)) = (fingerprint, event_id) {
                entries.push((row.try_get(0)?, f, id));
            }
        }
        if seen < keys.len() {
            return Ok(None);
        }
        let mut remembered = HashMap::new();
        if entries.is_empty() {
            return Ok(Some(remembered));
        }
        let ids: Vec<String> = entries.iter().map(|e| e.2.clone()).collect();
        let events = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY($1)")))
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
        let events: HashMap<String, Event> =
            events.iter().map(event_from_row).map(|e| e.map(|e| (e.id.clone(), e))).collect::<std::result::Result<_, _>>()?;
        let key_of: HashMap<&[u8], &str> = keys.iter().map(|(h, k)| (h.as_slice(), *k)).collect();
        for (h, fingerprint, id) in entries {
            if let (Some(key), Some(first)) = (key_of.get(h.as_slice()), events.get(&id)) {
                remembered.insert((*key).to_owned(), Remembered { fingerprint, first: first.clone() });
            }
        }
        Ok(Some(remembered))
    }
}

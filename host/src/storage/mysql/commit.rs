//! The MySQL/MariaDB provider's group commit: one transaction per batch of
//! appends, as the module doc of `storage::mysql` describes (lock the
//! batch's records and idempotency keys, decide every append in Rust, write
//! events, states and keys, bump the seq counter, commit). Apart from the
//! reads in `mod.rs`, because this is the one place that writes.

use super::{EVENT_COLUMNS, NAME, connect, db_error, event_from_row, text, transient};
use crate::storage::sql::batch::{self, Current, Remembered};
use crate::storage::sql::writer::{Committer, Failure, Job, connect_within};
use crate::storage::sql::{idempotency_hash, is_connection_error, type_hash};
use crate::model::{
    AppendRequest, Appended, Error, Event,
    RecordRef, Result,
};
use async_trait::async_trait;
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{Connection, MySqlConnection, Row};
use std::collections::HashMap;
use std::time::Duration;

pub(super) struct MyCommitter {
    pub(super) options: MySqlConnectOptions,
    pub(super) connect_timeout: Duration,
}

/// `count` rounded up to a power of two: the row count lock statements are
/// padded to, so they come in few shapes.
fn bucket(count: usize) -> usize {
    count.next_power_of_two()
}

/// `(?, ?, …)` rows for a multi-row `VALUES`.
fn rows(row: &str, count: usize) -> String {
    vec![row; count].join(", ")
}

#[async_trait]
impl Committer for MyCommitter {
    type Conn = MySqlConnection;

    async fn connect(&self) -> Result<MySqlConnection> {
        connect_within(self.connect_timeout, NAME, connect(&self.options), db_error).await
    }

    async fn commit(&self, conn: &mut MySqlConnection, jobs: &[Job]) -> std::result::Result<Vec<Result<Appended>>, Failure> {
        let before_commit = |e| Failure::before_commit(e, transient, db_error);
        let mut tx = conn.begin().await.map_err(before_commit)?;

        // Records, sorted and distinct, padded with the last one.
        let mut records: Vec<(Vec<u8>, &RecordRef)> =
            jobs.iter().map(|j| (type_hash(&j.req.record.domain, &j.req.record.ty), &j.req.record)).collect();
        records.sort_by(|a, b| (&a.0, a.1.key.as_bytes()).cmp(&(&b.0, b.1.key.as_bytes())));
        records.dedup_by(|a, b| a.0 == b.0 && a.1.key == b.1.key);
        let padded = bucket(records.len());
        let last = records.last().expect("a batch has an append").clone();
        let padding = std::iter::repeat_n(&last, padded - records.len());
        let sql = format!(
            "INSERT INTO states (dt, rkey, domain, rtype, version) VALUES {} ON DUPLICATE KEY UPDATE version = version",
            rows("(?, ?, ?, ?, 0)", padded)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (dt, r) in records.iter().chain(padding.clone()) {
            q = q.bind(dt.as_slice()).bind(r.key.as_bytes()).bind(r.domain.as_bytes()).bind(r.ty.as_bytes());
        }
        q.execute(&mut *tx).await.map_err(before_commit)?;
        let sql = format!(
            "SELECT dt, rkey, version, vals IS NOT NULL FROM states WHERE {} FOR UPDATE",
            vec!["(dt = ? AND rkey = ?)"; padded].join(" OR ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (dt, r) in records.iter().chain(padding) {
            q = q.bind(dt.as_slice()).bind(r.key.as_bytes());
        }
        let found = q.fetch_all(&mut *tx).await.map_err(before_commit)?;
        let mut by_hash: HashMap<(Vec<u8>, String), Current> = HashMap::with_capacity(found.len());
        for row in &found {
            let live: i64 = row.try_get_unchecked(3).map_err(before_commit)?;
            let version: i64 = row.try_get(2).map_err(before_commit)?;
            let dt: Vec<u8> = row.try_get(0).map_err(before_commit)?;
            by_hash.insert((dt, text(row, 1).map_err(before_commit)?), Current { version: version as u64, live: live != 0 });
        }
        let mut current = HashMap::with_capacity(records.len());
        for (dt, r) in &records {
            let Some(c) = by_hash.get(&(dt.clone(), r.key.clone())) else {
                return Err(Failure::Fatal { error: Error::internal("mysql: a locked record row is missing"), connection_lost: false });
            };
            current.insert((*r).clone(), *c);
        }

        let remembered = lock_keys(&mut tx, jobs).await.map_err(before_commit)?;
        let reqs: Vec<&AppendRequest> = jobs.iter().map(|j| &j.req).collect();
        let plan = batch::plan(&reqs, current, &remembered);
        let new = plan.new_events.len();
        if new == 0 {
            tx.rollback().await.map_err(before_commit)?;
            let reqs = jobs.iter().map(|j| j.req.clone()).collect();
            return Ok(batch::outcomes(reqs, plan.decisions, 0));
        }
        let version = |i: usize| match plan.decisions[i] {
            batch::Decision::New { version, .. } => version as i64,
            _ => unreachable!("only new events are written"),
        };

        let sql = format!(
            "INSERT INTO states (dt, rkey, domain, rtype, version, vals) VALUES {} \
             ON DUPLICATE KEY UPDATE version = VALUES(version), vals = VALUES(vals)",
            rows("(?, ?, ?, ?, ?, ?)", plan.states.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for &i in &plan.states {
            let r = &jobs[i].req.record;
            q = q
                .bind(type_hash(&r.domain, &r.ty))
                .bind(r.key.as_bytes())
                .bind(r.domain.as_bytes())
                .bind(r.ty.as_bytes())
                .bind(version(i))
                .bind(jobs[i].vals.as_deref());
        }
        q.execute(&mut *tx).await.map_err(before_commit)?;

        if !plan.idempotency.is_empty() {
            let sql = format!(
                "INSERT INTO idempotency (h, fingerprint, event_id) VALUES {} \
                 ON DUPLICATE KEY UPDATE fingerprint = VALUES(fingerprint), event_id = VALUES(event_id)",
                rows("(?, ?, ?)", plan.idempotency.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for &i in &plan.idempotency {
                let idem = jobs[i].req.idempotency.as_ref().expect("written keys belong to appends with one");
                q = q.bind(idempotency_hash(&idem.key)).bind(idem.fingerprint.as_bytes()).bind(jobs[i].req.id.as_bytes());
            }
            q.execute(&mut *tx).await.map_err(before_commit)?;
        }

        // Seqs last: the counter row stays locked until the commit.
        let done = sqlx::query("UPDATE seq_counter SET n = LAST_INSERT_ID(n + ?) WHERE id = 1")
            .bind(new as i64)
            .execute(&mut *tx)
            .await
            .map_err(before_commit)?;
        let first_seq = done.last_insert_id() - new as u64 + 1;
        let sql = format!(
            "INSERT INTO events (seq, id, dt, domain, rtype, rkey, version, kind, method, time, vals, claims) VALUES {}",
            rows("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", new)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (ordinal, &i) in plan.new_events.iter().enumerate() {
            let job = &jobs[i];
            let r = &job.req.record;
            q = q
                .bind((first_seq + ordinal as u64) as i64)
                .bind(job.req.id.as_bytes())
                .bind(type_hash(&r.domain, &r.ty))
                .bind(r.domain.as_bytes())
                .bind(r.ty.as_bytes())
                .bind(r.key.as_bytes())
                .bind(version(i))
                .bind(job.req.kind.as_str())
                .bind(job.req.method.as_bytes())
                .bind(job.req.time)
                .bind(job.vals.as_deref())
                .bind(job.claims.as_str());
        }
        q.execute(&mut *tx).await.map_err(before_commit)?;
        if let Err(e) = tx.commit().await {
            let lost = is_connection_error(&e);
            return Err(if transient(&e) {
                Failure::Transient(db_error(e))
            } else {
                Failure::Fatal { error: db_error(e), connection_lost: lost }
            });
        }
        let reqs = jobs.iter().map(|j| j.req.clone()).collect();
        Ok(batch::outcomes(reqs, plan.decisions, first_seq))
    }
}

/// Locks the batch's idempotency keys and reads their live entries.
async fn lock_keys(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    jobs: &[Job],
) -> std::result::Result<HashMap<String, Remembered>, sqlx::Error> {
    let mut keys: Vec<(Vec<u8>, &str)> = jobs
        .iter()
        .filter_map(|j| j.req.idempotency.as_ref())
        .map(|i| (idempotency_hash(&i.key), i.key.as_str()))
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    keys.sort();
    keys.dedup();
    let padded = bucket(keys.len());
    let all = || keys.iter().map(|k| &k.0).chain(std::iter::repeat_n(&keys.last().expect("not empty").0, padded - keys.len()));
    let sql = format!("INSERT INTO idempotency (h) VALUES {} ON DUPLICATE KEY UPDATE h = h", rows("(?)", padded));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for h in all() {
        q = q.bind(h.as_slice());
    }
    q.execute(&mut **tx).await?;
    let sql = format!("SELECT h, fingerprint, event_id FROM idempotency WHERE h IN ({}) FOR UPDATE", vec!["?"; padded].join(", "));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for h in all() {
        q = q.bind(h.as_slice());
    }
    let found = q.fetch_all(&mut **tx).await?;
    let mut entries = vec![];
    for row in &found {
        let fingerprint: Option<Vec<u8>> = row.try_get(1)?;
        let event_id: Option<Vec<u8>> = row.try_get(2)?;
        if let (Some(f), Some(id)) = (fingerprint, event_id) {
            let h: Vec<u8> = row.try_get(0)?;
            entries.push((h, String::from_utf8_lossy(&f).into_owned(), String::from_utf8_lossy(&id).into_owned()));
        }
    }
    let mut remembered = HashMap::new();
    if entries.is_empty() {
        return Ok(remembered);
    }
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id IN ({})", vec!["?"; entries.len()].join(", "));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for e in &entries {
        q = q.bind(e.2.as_bytes());
    }
    let events: HashMap<String, Event> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(event_from_row)
        .map(|e| e.map(|e| (e.id.clone(), e)))
        .collect::<std::result::Result<_, _>>()?;
    let key_of: HashMap<&[u8], &str> = keys.iter().map(|(h, k)| (h.as_slice(), *k)).collect();
    for (h, fingerprint, id) in entries {
        if let (Some(key), Some(first)) = (key_of.get(h.as_slice()), events.get(&id)) {
            remembered.insert((*key).to_owned(), Remembered { fingerprint, first: first.clone() });
        }
    }
    Ok(remembered)
}

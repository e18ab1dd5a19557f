//! `stategate migrate v050`: stategate v0.5.0's MongoDB data into the
//! configured storage, through the `Storage` trait like any write.
//!
//! For each record (`storage::mongo::v050` reads them), its events are
//! appended oldest first, keeping their ids, times and claims; storage
//! assigns versions (1, 2, …) and seqs. Records are independent, so
//! several are imported at once (`CONCURRENT_RECORDS`), each in order. Then the record's current state is
//! made equal to v0.5.0's: v0.5.0 wrote state and event separately, so when
//! its state document differs from the last event (a failed write, or two
//! Sets racing) one more `Set` with the document's values is appended, and
//! when the document is missing (a failed write) a `Del`. A record v0.5.0
//! deleted has neither events nor state left, so it stays absent.
//!
//! **Runs again safely.** A record's events are appended in order, each
//! checking the version the previous one produced, so what an earlier run
//! imported is a prefix of the record's events: the importer finds where
//! that prefix ends by event id (`Storage::get_event`) and appends only the
//! rest. A second run imports nothing twice; a run interrupted anywhere is
//! finished by the next one. The reconciling event has an id derived from
//! the record and what it writes, and is appended only while the state
//! still differs. A record written in the target since (by a gateway
//! already serving) is reported as a conflict and left alone.
//!
//! `--dry-run` reads everything and writes nothing, and prints what it
//! would do.

use super::progress::Progress;
use crate::model::{AppendRequest, Change, Claims, EventKind, Expect, RecordRef, Values};
use crate::storage::DynStorage;
use crate::storage::mongo::v050::{V050Record, V050Source, V050Type};
use anyhow::{Context, Result};
use futures::StreamExt;
use sha2::{Digest, Sha256};

/// What a run did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub types: u64,
    pub records: u64,
    /// Events appended now.
    pub imported: u64,
    /// Events an earlier run had already appended.
    pub already: u64,
    /// States made equal to v0.5.0's by an extra `Set`.
    pub reconciled: u64,
    /// Records v0.5.0 had events of but no state for, deleted.
    pub deleted: u64,
    /// Records written in the target since, left alone.
    pub conflicts: u64,
    /// Records whose domain, type or key the gateway refuses (white space).
    pub invalid: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} types, {} records: {} events imported, {} already imported, {} states reconciled, {} deleted, {} conflicts, {} invalid",
            self.types, self.records, self.imported, self.already, self.reconciled, self.deleted, self.conflicts, self.invalid
        )
    }
}

const SET: &str = "/stategate.StateService/Set";
const DEL: &str = "/stategate.StateService/Del";

/// Records imported at once: each record's events go in order, but records
/// are independent, and storage commits concurrent appends together (group
/// commit), which is what makes a large import fast.
const CONCURRENT_RECORDS: usize = 16;

/// Imports everything `source` holds into `target`.
pub async fn import(source: &V050Source, target: &DynStorage, dry_run: bool, progress: &mut Progress) -> Result<Summary> {
    let types = source.types().await.context("listing v0.5.0's collections")?;
    let mut total = 0;
    for t in &types {
        total += source.count_events(t).await?;
    }
    progress.start(total);
    let mut summary = Summary::default();
    for t in &types {
        summary.types += 1;
        let before = summary.clone();
        let mut records = source.records(t).await?;
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            let record = if running.len() >= CONCURRENT_RECORDS {
                None
            } else {
                records.next().await.with_context(|| format!("reading {}.{}", t.domain, t.ty))?
            };
            match record {
                Some(record) => {
                    let n = record.events.len() as u64;
                    running.push(async move {
                        let done = import_record(t, record, target, dry_run)
                            .await
                            .with_context(|| format!("importing into {}.{}", t.domain, t.ty));
                        (n, done)
                    });
                }
                None => match running.next().await {
                    Some((n, done)) => {
                        summary.add(&done?);
                        progress.advance(n, summary.records);
                    }
                    None => break,
                },
            }
        }
        if dry_run {
            progress.line(&format!(
                "{}.{}: would import {} events of {} records ({} already imported), reconcile {}, delete {}",
                t.domain,
                t.ty,
                summary.imported - before.imported,
                summary.records - before.records,
                summary.already - before.already,
                summary.reconciled - before.reconciled,
                summary.deleted - before.deleted,
            ));
        }
    }
    progress.finish();
    Ok(summary)
}

impl Summary {
    fn add(&mut self, o: &Summary) {
        self.records += o.records;
        self.imported += o.imported;
        self.already += o.already;
        self.reconciled += o.reconciled;
        self.deleted += o.deleted;
        self.conflicts += o.conflicts;
        self.invalid += o.invalid;
    }
}

/// One record; what it did, as a summary of one record.
async fn import_record(t: &V050Type, record: V050Record, target: &DynStorage, dry_run: bool) -> Result<Summary> {
    let mut summary = Summary { records: 1, ..Summary::default() };
    let Ok(rec) = RecordRef::parse(&t.domain, &t.ty, &record.key) else {
        tracing::warn!(domain = %t.domain, r#type = %t.ty, key = %record.key, "skipped: not a valid record reference");
        summary.invalid += 1;
        return Ok(summary);
    };
    // Where an earlier run stopped: the imported events are a prefix.
    let mut done = 0;
    let mut version = None;
    let last_present = match record.events.last() {
        Some(last) => target.get_event(&last.id).await?,
        None => None,
    };
    if let Some(e) = last_present {
        done = record.events.len();
        version = Some(e.version);
    } else {
        for ev in &record.events {
            match target.get_event(&ev.id).await? {
                Some(e) if e.record == rec => {
                    done += 1;
                    version = Some(e.version);
                }
                Some(e) => anyhow::bail!("event {} is already in the target, for another record ({:?})", ev.id, e.record),
                None => break,
            }
        }
    }
    summary.already += done as u64;
    // The state the target has (or, dry, would have) after the events.
    let mut current: Option<(Values, u64)> = match target.get(&rec).await? {
        Some(s) => Some((s.values, s.version)),
        None => None,
    };
    if done == 0 && current.is_some() && !record.events.is_empty() {
        tracing::warn!(record = ?rec, "skipped: the record already has a state in the target that this import did not write");
        summary.conflicts += 1;
        return Ok(summary);
    }
    let last_time = record.events.last().map(|e| e.time);
    for ev in record.events.into_iter().skip(done) {
        summary.imported += 1;
        if dry_run {
            let next = current.as_ref().map_or(1, |c| c.1 + 1);
            current = Some((ev.values, next));
            continue;
        }
        let expect = match version {
            Some(v) => Expect::Version(v),
            None => Expect::Absent,
        };
        let req = AppendRequest {
            id: ev.id,
            record: rec.clone(),
            change: Change::Put(ev.values.clone().into()),
            expect,
            kind: EventKind::Set,
            method: SET.to_owned(),
            claims: ev.claims,
            time: ev.time,
            idempotency: None,
        };
        match target.append(req).await {
            Ok(a) => {
                version = Some(a.event.version);
                current = Some((ev.values, a.event.version));
            }
            Err(crate::model::Error::VersionConflict { .. }) => {
                tracing::warn!(record = ?rec, "skipped: the record was written in the target since the import began");
                summary.imported -= 1;
                summary.conflicts += 1;
                return Ok(summary);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The current state as v0.5.0 had it.
    let time = last_time.map_or_else(crate::model::now_nanos, |t| t + 1);
    let change = match (&record.state, &current) {
        (Some(want), Some((have, _))) if want == have => return Ok(summary),
        (None, None) => return Ok(summary),
        (Some(want), _) => {
            summary.reconciled += 1;
            Change::Put(want.clone().into())
        }
        (None, Some(_)) => {
            summary.deleted += 1;
            Change::Delete
        }
    };
    if dry_run {
        return Ok(summary);
    }
    let (kind, method) = match change {
        Change::Put(_) => (EventKind::Set, SET),
        Change::Delete => (EventKind::Del, DEL),
    };
    let req = AppendRequest {
        id: reconcile_id(&rec, &change, current.as_ref().map(|c| c.1)),
        record: rec.clone(),
        change,
        expect: current.as_ref().map_or(Expect::Absent, |c| Expect::Version(c.1)),
        kind,
        method: method.to_owned(),
        claims: Claims::new(),
        time,
        idempotency: None,
    };
    target.append(req).await?;
    Ok(summary)
}

/// A UUID-shaped id from the record, the change and the version it
/// follows: the same reconciliation gets the same id on every run.
fn reconcile_id(rec: &RecordRef, change: &Change, after: Option<u64>) -> String {
    let mut h = Sha256::new();
    h.update(b"stategate migrate v050 reconcile\0");
    for part in [&rec.domain, &rec.ty, &rec.key] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    match change {
        Change::Put(v) => h.update(serde_json::to_vec(v).unwrap_or_default()),
        Change::Delete => h.update(b"\0delete"),
    }
    h.update(after.unwrap_or(0).to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

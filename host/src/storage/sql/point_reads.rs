//! Point reads (`Storage::get`) that share a statement.
//!
//! A get is one primary-key lookup; what it costs the database is mostly the
//! statement around it: a round trip, bind and execute, a wake-up of the
//! server's connection thread. Concurrent gets of one gateway are therefore
//! gathered, as appends are by the group-commit writer: a dispatcher task
//! takes every get waiting in its queue (up to [`MAX_BATCH`]) and reads them
//! with one statement on one pooled read connection. At most
//! [`MAX_STATEMENTS`] such statements run at once; while they do, new gets
//! wait in the queue, and the next statement takes them all. So a lone get
//! goes out at once, as a batch of one, and under load the batches grow
//! with the load instead of the statements multiplying.
//!
//! Each provider supplies the statement ([`BatchRead`]): it answers, for the
//! lookups of a batch, the index of each lookup that found a live state
//! with that state's version and JSON text. Parsing the JSON is left to the
//! callers, so it runs on their tasks in parallel rather than on the
//! dispatcher's. A batch that fails fails every get in it with the same
//! error; a batch that outlives the call timeout is abandoned (its
//! connection is dropped, as the pool does with any cancelled call).

use super::pool::Pool;
use super::{parse_values, type_hash};
use crate::model::{AtSeq, Error, RecordRef, Result, State, StoredState};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The most lookups one statement carries.
pub const MAX_BATCH: usize = 128;
/// The most point-read statements in flight at once (fewer if the read pool
/// is smaller). A statement of many lookups costs the database little more
/// than one of a single lookup, so a few of them keep up with any load the
/// gateway can send, and the rest of the pool stays free for searches.
pub const MAX_STATEMENTS: usize = 4;

/// One get: the record's `(domain, type)` hash, key and names.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub dt: Vec<u8>,
    pub key: String,
    pub domain: String,
    pub ty: String,
}

/// A live state found for the lookup at `index` of a batch.
#[derive(Debug)]
pub struct Hit {
    pub index: usize,
    pub version: i64,
    pub vals: String,
}

/// A provider's statement for a batch of lookups: the hits, and the store's
/// head (its seq counter) as the same statement saw it. One statement reads
/// one snapshot (PostgreSQL, InnoDB), and the counter commits with the
/// events it counts, so every answer of the batch is exactly the state at
/// that head: what `Storage::get_at` needs of a read now.
pub type BatchRead<C> =
    Arc<dyn for<'c> Fn(&'c mut C, &'c [Lookup]) -> BoxFuture<'c, std::result::Result<(Vec<Hit>, u64), sqlx::Error>> + Send + Sync>;

/// The live state a lookup found (version, JSON text), and the head it was
/// read at.
pub type Found = (Option<(i64, String)>, u64);

type Reply = oneshot::Sender<Result<Found>>;

/// The queue of a gateway's gets; the dispatcher ends when it is dropped.
pub struct PointReads {
    queue: mpsc::UnboundedSender<(Lookup, Reply)>,
    call_timeout: Duration,
    provider: &'static str,
}

impl PointReads {
    /// Starts the dispatcher over `pool`; `db_error` maps a driver error as
    /// the provider does.
    pub fn spawn<C: Send + 'static>(
        pool: Arc<Pool<C>>,
        pool_size: usize,
        read: BatchRead<C>,
        call_timeout: Duration,
        db_error: fn(sqlx::Error) -> Error,
        provider: &'static str,
    ) -> PointReads {
        let (queue, rx) = mpsc::unbounded_channel();
        let statements = pool_size.clamp(1, MAX_STATEMENTS);
        tokio::spawn(dispatch(pool, statements, read, rx, call_timeout, db_error, provider));
        PointReads { queue, call_timeout, provider }
    }

    /// A record's live state now, with the head the statement read beside
    /// it: the lookup made from the record, its JSON parsed on this task.
    pub async fn get_state(&self, record: &RecordRef) -> Result<AtSeq<Option<State>>> {
        let AtSeq { value, seq } = self.get_text(record).await?;
        let value = match value {
            Some((version, vals)) => Some(State { record: record.clone(), version, values: parse_values(self.provider, &vals)? }),
            None => None,
        };
        Ok(AtSeq { value, seq })
    }

    /// `get_state` with the values left as the stored JSON text
    /// (`Storage::get_text_at`).
    pub async fn get_stored(&self, record: &RecordRef) -> Result<AtSeq<Option<StoredState>>> {
        Ok(crate::storage::text_answer(record, self.get_text(record).await?))
    }

    async fn get_text(&self, record: &RecordRef) -> Result<AtSeq<Option<(u64, String)>>> {
        let lookup = Lookup {
            dt: type_hash(&record.domain, &record.ty),
            key: record.key.clone(),
            domain: record.domain.clone(),
            ty: record.ty.clone(),
        };
        let (found, seq) = self.get(lookup).await?;
        Ok(AtSeq { value: found.map(|(version, vals)| (version as u64, vals)), seq })
    }

    /// The version and JSON text of the live state `lookup` names, if any,
    /// with the head it was read at; bounded by the call timeout, the wait
    /// in the queue included.
    async fn get(&self, lookup: Lookup) -> Result<Found> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::unavailable(format!("{}: storage is closed", self.provider));
        self.queue.send((lookup, reply)).map_err(|_| stopped())?;
        match tokio::time::timeout(self.call_timeout, answer).await {
            Ok(answer) => answer.map_err(|_| stopped())?,
            Err(_) => Err(Error::unavailable(format!("{}: no answer within {:?}", self.provider, self.call_timeout))),
        }
    }
}

async fn dispatch<C: Send + 'static>(
    pool: Arc<Pool<C>>,
    statements: usize,
    read: BatchRead<C>,
    mut rx: mpsc::UnboundedReceiver<(Lookup, Reply)>,
    call_timeout: Duration,
    db_error: fn(sqlx::Error) -> Error,
    provider: &'static str,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            // Finished statements first: each frees a slot for the queue.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = rx.recv(), if in_flight.len() < statements => {
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                in_flight.push(run(&pool, &read, batch, call_timeout, db_error, provider));
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Reads one batch on a pooled connection (again on a new one if the pooled
/// one was dead, as `read!` does) and answers every get in it.
async fn run<C: Send + 'static>(
    pool: &Pool<C>,
    read: &BatchRead<C>,
    batch: Vec<(Lookup, Reply)>,
    call_timeout: Duration,
    db_error: fn(sqlx::Error) -> Error,
    provider: &'static str,
) {
    let (lookups, replies): (Vec<Lookup>, Vec<Reply>) = batch.into_iter().unzip();
    let call = async {
        let mut lease = pool.lease().await?;
        loop {
            let result = read(lease.conn(), &lookups).await;
            if !lease.settle(&result).await? {
                break result;
            }
        }
    };
    let (hits, head) = match tokio::time::timeout(call_timeout, call).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return fail(replies, db_error(e)),
        Err(_) => return fail(replies, Error::unavailable(format!("{provider}: no answer within {call_timeout:?}"))),
    };
    let mut found: Vec<Option<(i64, String)>> = std::iter::repeat_with(|| None).take(replies.len()).collect();
    for hit in hits {
        if let Some(slot) = found.get_mut(hit.index) {
            *slot = Some((hit.version, hit.vals));
        }
    }
    for (reply, state) in replies.into_iter().zip(found) {
        // A caller that gave up (its own timeout) is not an error.
        let _ = reply.send(Ok((state, head)));
    }
}

fn fail(replies: Vec<Reply>, e: Error) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

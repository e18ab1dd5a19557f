//! The group-commit writer tasks of a SQL provider (see the parent module):
//! each owns one connection, drains the queue of appends into batches and
//! hands each batch to the provider's [`Committer`], which runs it as one
//! transaction. Retries and reconnects are decided here, from how the
//! batch failed.

use crate::model::{AppendRequest, Appended, Change, Error, Result};
use crate::storage::writer_queue::WriterQueue;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most appends in one transaction.
pub const MAX_BATCH: usize = 256;
/// Most bytes of values in one transaction (the first append always goes,
/// however large): keeps one batch's statements well under the server's
/// packet limit (MySQL's `max_allowed_packet` is 16 MiB by default).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Most attempts at a batch that failed on a transient conflict.
const MAX_ATTEMPTS: u32 = 20;

/// An append with its JSON already serialized (on the caller's task).
pub struct Job {
    pub req: AppendRequest,
    pub vals: Option<String>,
    pub claims: String,
    pub reply: oneshot::Sender<Result<Appended>>,
}

impl Job {
    fn bytes(&self) -> usize {
        self.vals.as_ref().map_or(0, String::len) + self.claims.len() + self.req.record.key.len() + 256
    }
}

/// How a batch failed, which decides what the writer does next.
#[derive(Debug)]
pub enum Failure {
    /// A deadlock, a serialization failure or a lost race on a new row: the
    /// transaction rolled back and the batch may run again as it is.
    Transient(Error),
    /// The connection failed before the commit was sent: nothing was
    /// written; reconnect and run the batch again.
    Reconnect(Error),
    /// The connection failed after the commit was sent, or the database
    /// refused the batch: the outcome is reported as is (for a lost commit,
    /// `UNAVAILABLE`, the outcome unknown: idempotency keys make the
    /// client's retry safe).
    Fatal { error: Error, connection_lost: bool },
}

impl Failure {
    /// How a statement failing before the commit was sent ends the batch:
    /// retried as it is (`transient`: a deadlock, a serialization failure
    /// or a lost race on a new row), rerun on a new connection (the
    /// connection failed, so nothing was written), or refused.
    pub fn before_commit(e: sqlx::Error, transient: fn(&sqlx::Error) -> bool, db_error: fn(sqlx::Error) -> Error) -> Failure {
        if transient(&e) {
            Failure::Transient(db_error(e))
        } else if super::is_connection_error(&e) {
            Failure::Reconnect(db_error(e))
        } else {
            Failure::Fatal { error: db_error(e), connection_lost: false }
        }
    }
}

/// A writer's new connection, bounded by the connect timeout.
pub async fn connect_within<C>(
    timeout: Duration,
    name: &str,
    connect: impl std::future::Future<Output = std::result::Result<C, sqlx::Error>>,
    db_error: fn(sqlx::Error) -> Error,
) -> Result<C> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result.map_err(db_error),
        Err(_) => Err(Error::unavailable(format!("{name}: no connection within {timeout:?}"))),
    }
}

#[async_trait]
pub trait Committer: Send + Sync + 'static {
    type Conn: Send;

    async fn connect(&self) -> std::result::Result<Self::Conn, Error>;

    /// Runs the batch as one transaction; one outcome per job once committed.
    async fn commit(&self, conn: &mut Self::Conn, jobs: &[Job]) -> std::result::Result<Vec<Result<Appended>>, Failure>;
}

/// Starts the writer tasks; appends go to them through the returned queue.
///
/// With `writers` > 1, each task takes the waiting appends as a batch and
/// runs it on a connection of its own, so one batch locks its records
/// while the one before it commits. They still commit one at a time: every
/// batch takes its seqs from the counter row, whose lock it holds until its
/// commit (see the parent module), so the order promise is unchanged; two
/// batches touching one record wait on its row lock just as two gateways'
/// batches do.
pub fn spawn<C: Committer>(
    committer: Arc<C>,
    writers: usize,
    call_timeout: Duration,
    name: &'static str,
) -> Queue {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..writers.max(1) {
        tokio::spawn(run(committer.clone(), queue.clone(), call_timeout, name));
    }
    Queue(WriterQueue::new(tx, name))
}

/// The writers' queue: an append's JSON is serialized on the caller's task,
/// so the writers only run SQL.
pub struct Queue(WriterQueue<Job>);

impl Queue {
    /// Queues an append and waits for its outcome.
    pub async fn append(&self, req: AppendRequest) -> Result<Appended> {
        let vals = match &req.change {
            Change::Put(v) => Some(v.to_json_string()),
            Change::Delete => None,
        };
        let claims = serde_json::to_string(&req.claims).map_err(Error::internal)?;
        let (reply, done) = oneshot::channel();
        self.0.call(Job { req, vals, claims, reply }, done).await
    }

    /// Takes no more appends; those queued are still committed.
    pub fn close(&self) {
        self.0.close();
    }
}

/// The next batch: waits for one append, then takes those already waiting
/// (up to the count and byte budget). `None` once the queue is closed.
async fn next_batch(queue: &tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>, batch: &mut Vec<Job>) -> bool {
    let mut rx = queue.lock().await;
    let Some(job) = rx.recv().await else { return false };
    let mut bytes = job.bytes();
    batch.push(job);
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(job) => {
                bytes += job.bytes();
                batch.push(job);
            }
            Err(_) => break,
        }
    }
    true
}

async fn run<C: Committer>(
    committer: Arc<C>,
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>,
    call_timeout: Duration,
    name: &'static str,
) {
    let mut conn: Option<C::Conn> = None;
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while next_batch(&queue, &mut batch).await {
        let results = run_batch(&*committer, &mut conn, &batch, call_timeout, name).await;
        for (job, result) in batch.drain(..).zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

async fn run_batch<C: Committer>(
    committer: &C,
    conn: &mut Option<C::Conn>,
    batch: &[Job],
    call_timeout: Duration,
    name: &'static str,
) -> Vec<Result<Appended>> {
    let fail = |e: Error| batch.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
    let deadline = Instant::now() + call_timeout;
    let mut reconnected = false;
    for attempt in 1..=MAX_ATTEMPTS {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return fail(Error::unavailable(format!("{name}: append took longer than {call_timeout:?}")));
        }
        let fresh = conn.is_none();
        if fresh {
            match tokio::time::timeout(remaining, committer.connect()).await {
                Ok(Ok(c)) => *conn = Some(c),
                Ok(Err(e)) => return fail(e),
                Err(_) => return fail(Error::unavailable(format!("{name}: no connection within {call_timeout:?}"))),
            }
        }
        let c = conn.as_mut().expect("connected above");
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, committer.commit(c, batch)).await {
            Ok(Ok(results)) => return results,
            Ok(Err(Failure::Transient(e))) => {
                tracing::debug!(provider = name, attempt, error = %e, "batch rolled back on a conflict; retrying");
                // Spread contending gateways' retries apart.
                let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u16 % 1000);
                tokio::time::sleep(Duration::from_micros(jitter * u64::from(attempt))).await;
            }
            Ok(Err(Failure::Reconnect(e))) => {
                *conn = None;
                // A connection left from before a restart fails at its first
                // statement: one more try on a new one. A new connection
                // failing the same way means the server is gone.
                if fresh || reconnected {
                    return fail(e);
                }
                reconnected = true;
            }
            Ok(Err(Failure::Fatal { error, connection_lost })) => {
                if connection_lost {
                    *conn = None;
                }
                return fail(error);
            }
            Err(_) => {
                // Cancelled mid-transaction: the connection's state is unknown.
                *conn = None;
                return fail(Error::unavailable(format!(
                    "{name}: append got no answer within {call_timeout:?}; its outcome is unknown"
                )));
            }
        }
    }
    fail(Error::unavailable(format!("{name}: append kept conflicting with concurrent appends")))
}

//! Event streams that survive disconnects.
//!
//! A task owns the gRPC stream and forwards events into a bounded channel.
//! When the connection drops (or the gateway restarts or shuts the stream
//! down), it reconnects after the stream's resume point: the highest
//! `Event.resume_after` it received (every event at or below it was
//! delivered), as `after_sequence`. Live events of different records can
//! arrive out of sequence order, so events above that point may have been
//! delivered already; the gateway sends them again and the task skips the
//! sequences it forwarded. So the consumer sees no gap and no duplicate.
//! A gateway that sends no resume point (before v0.6) is resumed after the
//! last event forwarded (`after_event_id`), as before. Errors that a
//! retry cannot fix (bad request, refused token, unknown event id) end the
//! stream with that error. An observer set with [`Resume::on_notice`] is
//! told each step ([`Notice`]), so a program can say what is going on
//! while the stream is down instead of going silent.

use crate::{Error, Event, EventServiceClient, Result, StreamOpts};
use futures::Stream;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// How a stream reconnects after a disconnect.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Reconnect at all (`false`: a disconnect ends the stream with its error).
    pub enabled: bool,
    /// First wait before reconnecting; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up after this many failed reconnects in a row (`None`: never).
    pub max_attempts: Option<u32>,
    /// Told when the connection drops, before each reconnect attempt and
    /// when the stream resumes (`None`: nobody is told; `tracing` still
    /// logs at debug level).
    pub observer: Option<Observer>,
}

impl Default for Resume {
    fn default() -> Self {
        Resume {
            enabled: true,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
            observer: None,
        }
    }
}

impl Resume {
    pub fn disabled() -> Self {
        Resume {
            enabled: false,
            ..Default::default()
        }
    }

    /// Calls `f` with every [`Notice`] of the stream's connection. It runs
    /// on the stream's task: keep it short (print, count, log).
    pub fn on_notice(mut self, f: impl Fn(&Notice) + Send + Sync + 'static) -> Self {
        self.observer = Some(Observer(Arc::new(f)));
        self
    }
}

/// A callback told about a stream's connection ([`Resume::on_notice`]).
#[derive(Clone)]
pub struct Observer(Arc<dyn Fn(&Notice) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// What happened to a resuming stream's connection. `Display` says it in
/// one line for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The call ended or failed with `reason`; the stream will reconnect.
    Dropped { reason: String },
    /// Reconnect attempt `attempt` (from 1) starts after waiting `wait`;
    /// `last_error` is why the previous attempt failed.
    Retrying { attempt: u32, wait: Duration, last_error: Option<String> },
    /// A call is open again after `attempts` attempts. The gateway replays
    /// the history after `after_event_id` (empty: from the stream's first
    /// position, as no event has arrived yet).
    Resumed { attempts: u32, after_event_id: String },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Dropped { reason } => write!(f, "connection lost ({reason}); reconnecting"),
            Notice::Retrying { attempt, wait, last_error } => {
                write!(f, "reconnect attempt {attempt} in {} ms", wait.as_millis())?;
                match last_error {
                    Some(e) => write!(f, " (last attempt: {e})"),
                    None => Ok(()),
                }
            }
            Notice::Resumed { attempts, after_event_id } if after_event_id.is_empty() => {
                write!(f, "reconnected after {attempts} attempt(s); resuming from the start position")
            }
            Notice::Resumed { attempts, after_event_id } => {
                write!(f, "reconnected after {attempts} attempt(s); resuming after event {after_event_id}")
            }
        }
    }
}

/// A status as a person reads it: `UNAVAILABLE: …`, with transport
/// errors reduced to their innermost cause.
fn describe(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let message = status.source().map_or_else(|| status.message().to_owned(), crate::root_cause);
    format!("{}: {message}", crate::code_name(status.code()))
}

/// Live events; a `futures::Stream` of `Result<Event>`. Dropping it closes
/// the call.
pub struct EventStream {
    rx: mpsc::Receiver<Result<Event>>,
    last: Arc<Mutex<String>>,
    /// The resume point (`Event.resume_after`), 0 until one arrived.
    resume: Arc<std::sync::atomic::AtomicI64>,
    reconnects: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Worth reconnecting: the transport or the server went away, or the
/// gateway is briefly out of capacity.
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable | Unknown | Internal | Cancelled | Aborted | DeadlineExceeded | ResourceExhausted
    )
}

impl EventStream {
    pub(crate) async fn open(mut client: EventServiceClient, opts: StreamOpts, resume: Resume) -> Result<EventStream> {
        let first = client.stream(opts.clone()).await?.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let last = Arc::new(Mutex::new(opts.after_event_id.clone()));
        let reconnects = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let position = Arc::new(std::sync::atomic::AtomicI64::new(opts.after_sequence.unwrap_or(0)));
        let shared = Shared { last: last.clone(), resume: position.clone(), reconnects: reconnects.clone() };
        let task = tokio::spawn(run(client, opts, resume, first, tx, shared));
        Ok(EventStream {
            rx,
            last,
            resume: position,
            reconnects,
            task,
        })
    }

    /// The next event; `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }

    /// The id of the last event delivered (or the starting `after_event_id`).
    /// Keep it to resume in a later process: `StreamOpts::after(id)`.
    pub fn last_event_id(&self) -> String {
        self.last.lock().unwrap().clone()
    }

    /// Where the stream would resume now: every event at or below this
    /// sequence was delivered (`Event.resume_after`; the starting
    /// `after_sequence`, or 0, until an event brought one).
    pub fn resume_sequence(&self) -> i64 {
        self.resume.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many times the stream reconnected.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// What the stream's task shares with its `EventStream`.
struct Shared {
    last: Arc<Mutex<String>>,
    resume: Arc<std::sync::atomic::AtomicI64>,
    reconnects: Arc<std::sync::atomic::AtomicU64>,
}

/// The stream's position: its resume point, and the sequences above it
/// already forwarded (skipped when a resumed stream sends them again).
#[derive(Default)]
struct Position {
    resume: Option<i64>,
    above: std::collections::BTreeSet<i64>,
}

impl Position {
    /// Whether `event` is new; records it.
    fn admit(&mut self, event: &Event) -> bool {
        // At or below the resume point, everything was delivered before.
        if self.above.contains(&event.sequence) || self.resume.is_some_and(|r| event.sequence <= r) {
            return false;
        }
        if event.resume_after > 0 {
            let resume = self.resume.map_or(event.resume_after, |r| r.max(event.resume_after));
            self.resume = Some(resume);
            // Below the resume point nothing comes again.
            self.above = self.above.split_off(&(resume + 1));
        }
        if self.resume.is_some_and(|r| event.sequence > r) {
            self.above.insert(event.sequence);
        }
        true
    }
}

async fn run(
    mut client: EventServiceClient,
    mut opts: StreamOpts,
    resume: Resume,
    mut current: tonic::Streaming<Event>,
    tx: mpsc::Sender<Result<Event>>,
    shared: Shared,
) {
    let Shared { last, resume: resume_seq, reconnects } = shared;
    let mut position = Position::default();
    let mut backoff = resume.initial_backoff;
    let mut failures = 0u32;
    let notify = |notice: Notice| {
        if let Some(Observer(f)) = &resume.observer {
            f(&notice);
        }
    };
    loop {
        // Forward until the stream ends or fails.
        let ended = loop {
            match current.message().await {
                Ok(Some(event)) => {
                    failures = 0;
                    backoff = resume.initial_backoff;
                    if !position.admit(&event) {
                        continue;
                    }
                    // Resume after this point from now on; a start time
                    // only mattered until the first event.
                    match position.resume {
                        Some(seq) => {
                            opts.after_sequence = Some(seq);
                            opts.after_event_id.clear();
                            resume_seq.store(seq, std::sync::atomic::Ordering::Relaxed);
                        }
                        None => opts.after_event_id = event.id.clone(),
                    }
                    opts.from_time = 0;
                    *last.lock().unwrap() = event.id.clone();
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break tonic::Status::unavailable("the gateway ended the stream"),
                Err(status) => break status,
            }
        };
        if !resume.enabled || !retryable(&ended) {
            let _ = tx.send(Err(Error::Status(ended))).await;
            return;
        }
        notify(Notice::Dropped { reason: describe(&ended) });
        // Reconnect, backing off, until a call is accepted.
        let mut attempts = 0u32;
        let mut last_error = None;
        loop {
            if resume.max_attempts.is_some_and(|max| failures >= max) {
                let _ = tx.send(Err(Error::Status(ended))).await;
                return;
            }
            tracing::debug!(code = ?ended.code(), message = ended.message(), after = %opts.after_event_id, after_sequence = ?opts.after_sequence, "event stream reconnecting");
            attempts += 1;
            notify(Notice::Retrying { attempt: attempts, wait: backoff, last_error: last_error.take() });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            backoff = (backoff * 2).min(resume.max_backoff);
            failures += 1;
            match client.stream(opts.clone()).await {
                Ok(resp) => {
                    reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    current = resp.into_inner();
                    notify(Notice::Resumed { attempts, after_event_id: last.lock().unwrap().clone() });
                    break;
                }
                Err(status) if retryable(&status) => {
                    last_error = Some(describe(&status));
                    continue;
                }
                Err(status) => {
                    let _ = tx.send(Err(Error::Status(status))).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: i64, resume_after: i64) -> Event {
        Event { sequence, resume_after, ..Default::default() }
    }

    #[test]
    fn a_resumed_stream_skips_what_it_delivered_above_its_resume_point() {
        let mut p = Position::default();
        assert!(p.admit(&event(5, 5)));
        // Delivered out of order: 8 before 7; the resume point stays at 5.
        assert!(p.admit(&event(8, 5)));
        assert_eq!(p.resume, Some(5));
        // Resumed after 5: 6 is new, 8 comes again and is skipped.
        assert!(p.admit(&event(6, 6)));
        assert!(!p.admit(&event(8, 8)), "8 was delivered before the break");
        assert!(p.admit(&event(7, 8)));
        assert!(!p.admit(&event(7, 8)));
        assert_eq!(p.resume, Some(8));
        assert!(p.above.is_empty(), "nothing above the resume point is remembered: {:?}", p.above);
        assert!(p.admit(&event(9, 9)));
    }

    #[test]
    fn without_resume_points_every_event_passes() {
        let mut p = Position::default();
        assert!(p.admit(&event(3, 0)) && p.admit(&event(2, 0)) && p.admit(&event(3, 0)));
        assert_eq!(p.resume, None);
    }
}

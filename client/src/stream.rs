//! Event streams that survive disconnects.
//!
//! A task owns the gRPC stream and forwards events into a bounded channel.
//! When the connection drops (or the gateway restarts or shuts the stream
//! down), it reconnects with `after_event_id` set to the last event it
//! forwarded; the gateway replays the history after that event and then
//! goes live, so the consumer sees no gap and no duplicate. Errors that a
//! retry cannot fix (bad request, refused token, unknown event id) end the
//! stream with that error.

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
}

impl Default for Resume {
    fn default() -> Self {
        Resume {
            enabled: true,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
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
}

/// Live events; a `futures::Stream` of `Result<Event>`. Dropping it closes
/// the call.
pub struct EventStream {
    rx: mpsc::Receiver<Result<Event>>,
    last: Arc<Mutex<String>>,
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
        let task = tokio::spawn(run(client, opts, resume, first, tx, last.clone(), reconnects.clone()));
        Ok(EventStream {
            rx,
            last,
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

async fn run(
    mut client: EventServiceClient,
    mut opts: StreamOpts,
    resume: Resume,
    mut current: tonic::Streaming<Event>,
    tx: mpsc::Sender<Result<Event>>,
    last: Arc<Mutex<String>>,
    reconnects: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut backoff = resume.initial_backoff;
    let mut failures = 0u32;
    loop {
        // Forward until the stream ends or fails.
        let ended = loop {
            match current.message().await {
                Ok(Some(event)) => {
                    failures = 0;
                    backoff = resume.initial_backoff;
                    // Resume after this event from now on; a start time only
                    // mattered until the first event.
                    opts.after_event_id = event.id.clone();
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
        // Reconnect, backing off, until a call is accepted.
        loop {
            if resume.max_attempts.is_some_and(|max| failures >= max) {
                let _ = tx.send(Err(Error::Status(ended))).await;
                return;
            }
            tracing::debug!(code = ?ended.code(), message = ended.message(), after = %opts.after_event_id, "event stream reconnecting");
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
                    break;
                }
                Err(status) if retryable(&status) => continue,
                Err(status) => {
                    let _ = tx.send(Err(Error::Status(status))).await;
                    return;
                }
            }
        }
    }
}

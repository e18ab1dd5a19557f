//! The threads a provider's calls run on: one queue per provider, drained
//! by up to as many threads ("lanes") as the provider's pool has instances.
//!
//! Why not tokio's blocking pool: a serial guest's next call was handed to
//! `spawn_blocking` only once the last one had come back to its task and
//! given up its permit, so the blocking thread had gone to sleep in
//! between, every time: a Get on a storage guest cost three context
//! switches and three times the CPU of one on embedded sqlite (BENCHMARKS.md,
//! session 32). Here a call is queued as soon as it is made; a lane that
//! finishes one call takes the next from the queue without sleeping, and
//! a caller is woken once, by its answer.
//!
//! Invariants:
//! - Every call pushed is run by a lane, or refused (its caller answered
//!   with the reason) when no lane could be started: a queue never waits
//!   for a thread that will not come.
//! - At most `wanted` lanes are counted as live; a lane stuck in a call its
//!   caller abandoned is no longer counted ([`Lanes::abandoned`]), so
//!   another starts for the calls behind it, and it ends when that call
//!   comes back.
//! - A lane ends when it has been idle for [`KEEP_IDLE`], or when there are
//!   more live lanes than wanted (the pool shrank), so a provider that is
//!   dropped leaves no thread behind for long.

use crate::model::Error;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;

/// How long a lane waits for a call before it ends (as tokio's blocking
/// threads do).
const KEEP_IDLE: Duration = Duration::from_secs(10);

/// One call waiting for a lane.
pub(super) trait Call: Send {
    /// Runs the call on the lane's thread; says whether its caller
    /// abandoned it meanwhile (the lane was stuck in it and is no longer
    /// counted).
    fn run(self: Box<Self>) -> Ended;
    /// Answers the caller with `why`, without running the call.
    fn refuse(self: Box<Self>, why: Error);
}

/// How a lane's call ended.
pub(super) enum Ended {
    Returned,
    Abandoned,
}

/// A provider's queue of calls and the lanes draining it.
pub(super) struct Lanes {
    /// The lanes' thread name.
    name: String,
    queue: Mutex<Queue>,
    ready: Condvar,
}

struct Queue {
    calls: VecDeque<Box<dyn Call>>,
    /// Lanes counted as live (not stuck in an abandoned call).
    live: usize,
    /// Live lanes waiting for a call.
    idle: usize,
    /// Lanes the pool wants at most: one per instance.
    wanted: usize,
}

impl Lanes {
    pub(super) fn new(guest: &str) -> Arc<Lanes> {
        Arc::new(Lanes {
            // Linux keeps 15 bytes of a thread's name.
            name: format!("wasm:{guest}").chars().take(15).collect(),
            queue: Mutex::new(Queue {
                calls: VecDeque::new(),
                live: 0,
                idle: 0,
                wanted: 1,
            }),
            ready: Condvar::new(),
        })
    }

    /// Queues `call` for a lane; starts one if every live lane is busy and
    /// fewer than `wanted` are live. Call from within a tokio runtime: the
    /// lanes run their calls in its context (WASI's waits use its timers).
    pub(super) fn push(self: &Arc<Self>, call: Box<dyn Call>, wanted: usize) {
        let mut q = self.queue.lock().unwrap();
        q.wanted = wanted.max(1);
        q.calls.push_back(call);
        self.serve(q);
    }

    /// Says that a lane is stuck in a call its caller abandoned: it is no
    /// longer counted, and another lane starts if calls are waiting.
    pub(super) fn abandoned(self: &Arc<Self>) {
        let mut q = self.queue.lock().unwrap();
        q.live -= 1;
        if !q.calls.is_empty() {
            self.serve(q);
        }
    }

    /// Wakes an idle lane for the calls waiting, or starts one if none is
    /// idle and the pool wants more; refuses the calls if no lane can run
    /// them at all.
    fn serve(self: &Arc<Self>, mut q: std::sync::MutexGuard<'_, Queue>) {
        if q.idle > 0 {
            self.ready.notify_one();
        }
        // Idle lanes woken but not yet running take the calls first.
        if q.calls.len() <= q.idle || q.live >= q.wanted {
            return;
        }
        let started = Handle::try_current()
            .map_err(|e| e.to_string())
            .and_then(|handle| {
                let lanes = self.clone();
                std::thread::Builder::new()
                    .name(self.name.clone())
                    .spawn(move || lanes.run(handle))
                    .map_err(|e| e.to_string())
            });
        match started {
            Ok(_) => q.live += 1,
            Err(why) => {
                tracing::error!(lane = %self.name, "could not start a thread for wasm provider calls: {why}");
                if q.live == 0 {
                    let calls: Vec<_> = q.calls.drain(..).collect();
                    drop(q);
                    for call in calls {
                        call.refuse(Error::Unavailable(format!("could not start a thread for wasm provider calls: {why}")));
                    }
                }
            }
        }
    }

    /// A lane: takes calls from the queue and runs them back to back.
    fn run(self: Arc<Self>, handle: Handle) {
        let _runtime = handle.enter();
        // Counted out if the lane unwinds (a bug in a call): the queue
        // then starts another lane for the calls behind it.
        let mut counted = Counted(Some(&self));
        while let Some(call) = self.next() {
            match call.run() {
                Ended::Returned => {}
                // No longer counted: another lane serves the queue.
                Ended::Abandoned => {
                    counted.0 = None;
                    return;
                }
            }
            let mut q = self.queue.lock().unwrap();
            if q.live > q.wanted {
                q.live -= 1;
                counted.0 = None;
                return;
            }
        }
        counted.0 = None;
    }

    /// The next call, or None when the lane has been idle long enough to
    /// end (it is no longer counted then).
    fn next(&self) -> Option<Box<dyn Call>> {
        let mut q = self.queue.lock().unwrap();
        loop {
            if let Some(call) = q.calls.pop_front() {
                return Some(call);
            }
            q.idle += 1;
            let (back, waited) = self.ready.wait_timeout(q, KEEP_IDLE).unwrap();
            q = back;
            q.idle -= 1;
            if waited.timed_out() && q.calls.is_empty() {
                q.live -= 1;
                return None;
            }
        }
    }
}

/// A live lane's place in the count, given back if it unwinds.
struct Counted<'a>(Option<&'a Arc<Lanes>>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if let Some(lanes) = self.0 {
            lanes.abandoned();
        }
    }
}

//! The instance strategy of storage and channel providers: long-lived
//! instances (the guest keeps its state, e.g. its indexes, in them), whose
//! calls run on threads of their own ([`super::lanes`]), where a call is a
//! whole unit of file or network I/O done with blocking WASI.
//!
//! How many instances serve calls side by side is the guest's to say: its
//! `max-instances` export (0.2.0), overridden by the guest object's
//! `instances`, bounded by the per-guest instance limit. A guest that says
//! nothing (every 0.1.0 guest) gets one instance and one call at a time;
//! one that says N gets a pool of up to N instances, each call on one of
//! them. The answer is asked for once per loaded version, on the version's
//! first instance, before any other call runs on it.
//!
//! Invariants:
//! - At most `size` calls are inside instances at once: a call holds one
//!   of the pool's permits from before it takes an instance until the
//!   instance is back (or discarded). With one permit, calls are
//!   serialized on one instance. The lane running the call holds the
//!   permit, not the caller: a caller that goes away changes nothing.
//! - All calls run on the version the pool was sized for. When the guest
//!   is reloaded, the next call waits for every call in flight to finish
//!   (it takes all the permits), then starts the candidate (a fresh
//!   instance and its `max-instances`) and, if it started, swaps it in and
//!   sizes the pool for it: a serial guest never has two versions at work
//!   at once, across a swap too.
//! - A candidate that does not start (a trap or its deadline in
//!   instantiation or in `max-instances`) is refused: the pool keeps its
//!   version, its idle instances and its size, the permits go back, and the
//!   call that found the candidate runs on the old version like the others.
//!   Only the first version's failure to start fails the call: there is no
//!   other version to serve it.
//! - An instance whose call failed is discarded (a trapped instance must
//!   not be entered again); the next call instantiates the version again.
//! - A call ends by its deadline (see [`super::deadline`]): if its lane
//!   has not come back shortly after it, the call is abandoned, reported
//!   as out of time, its permit given back and its instance discarded; the
//!   next call starts a new one, on another lane. The abandoned lane keeps
//!   its places until it returns, so a guest whose calls block uses up its
//!   own share of the instance bound, not the others'. The deadline is
//!   watched from the moment the call is inside an instance, and also
//!   when its caller has gone away.

use super::guest::{Guest, Instance, Place, Version};
use super::lanes::{Call, Ended, Lanes};
use super::outcome::{abandoned, finish};
use super::store::Ctx;
use super::worlds::SyncWorld;
use super::TICK;
use crate::model::{Error, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};
use wasmtime::Store;

/// How long after its deadline a blocked call is abandoned: long enough for
/// a call interrupted at its deadline (epoch trap, bounded wait) to come
/// back and be reported from what its store recorded.
const ABANDON_AFTER: Duration = TICK.saturating_mul(5);

/// The long-lived instances of a provider guest.
pub struct Persistent<P: SyncWorld> {
    guest: Arc<Guest<P>>,
    pool: Arc<Pool<P>>,
    lanes: Arc<Lanes>,
}

struct Pool<P: SyncWorld> {
    /// One permit per call that may be inside an instance at once.
    permits: Arc<Semaphore>,
    sized: Mutex<Slots<P>>,
    /// Held while the pool is sized for a new version.
    sizing: tokio::sync::Mutex<()>,
}

/// What the pool is sized for, and its idle instances.
struct Slots<P: SyncWorld> {
    /// None until the first call.
    version: Option<Arc<Version<P>>>,
    /// Permits the pool holds for that version.
    size: usize,
    idle: Vec<Instance<P>>,
}

impl<P: SyncWorld> Clone for Persistent<P> {
    fn clone(&self) -> Self {
        Persistent {
            guest: self.guest.clone(),
            pool: self.pool.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

impl<P: SyncWorld> Persistent<P> {
    pub fn new(guest: Arc<Guest<P>>) -> Self {
        Persistent {
            lanes: Lanes::new(&guest.spec.name),
            guest,
            pool: Arc::new(Pool {
                permits: Arc::new(Semaphore::new(0)),
                sized: Mutex::new(Slots {
                    version: None,
                    size: 0,
                    idle: Vec::new(),
                }),
                sizing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn guest(&self) -> &Arc<Guest<P>> {
        &self.guest
    }

    /// How many calls may run side by side on the current version (0 before
    /// the first call).
    pub fn instances(&self) -> usize {
        self.pool.sized.lock().unwrap().size
    }

    /// Runs `f` on an instance (instantiating one if none is idle), on one
    /// of the provider's lanes. Call from within a tokio runtime.
    pub async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (sized, mut size) = {
            let slots = self.pool.sized.lock().unwrap();
            (slots.version.as_ref().map(|v| v.generation), slots.size)
        };
        if sized != Some(self.guest.current().generation) || self.guest.candidate().is_some() {
            // Sizing drains the pool and starts an instance: on a task of
            // its own, so that a caller that goes away does not leave it
            // half done.
            let this = self.clone();
            tokio::spawn(async move { this.size_for_current().await })
                .await
                .map_err(|e| Error::Internal(format!("wasm guest {:?}: host task failed: {e}", self.guest.spec.name)))??;
            size = self.instances();
        }
        let watch = Arc::new(Watch::default());
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            on: self.clone(),
            op,
            f,
            reply,
            watch: watch.clone(),
        };
        self.lanes.push(Box::new(queued), size);
        let mut watching = Watching(Some((self.clone(), op, watch)));
        let out = watching.answer(answer).await;
        watching.0 = None;
        out
    }

    /// Sizes the pool for the current version if it is not yet, and for the
    /// candidate if one waits.
    async fn size_for_current(&self) -> Result<()> {
        let current = self.guest.current();
        if self.sized_for().is_none_or(|v| v.generation != current.generation) {
            self.resize(current, Step::First).await?;
        }
        if let Some(candidate) = self.guest.candidate() {
            self.resize(candidate, Step::Swap).await?;
        }
        Ok(())
    }

    /// The version the pool is sized for.
    fn sized_for(&self) -> Option<Arc<Version<P>>> {
        self.pool.sized.lock().unwrap().version.clone()
    }

    /// Sizes the pool for `version`: waits for every call in flight, starts
    /// a fresh instance of it, asks that instance how many may run side by
    /// side, and keeps it for the next call. For a candidate (`Step::Swap`)
    /// this is its proof: if it does not start it is refused and the pool
    /// stays as it was (the permits taken are given back on return).
    async fn resize(&self, version: Arc<Version<P>>, step: Step) -> Result<()> {
        let _one = self.pool.sizing.lock().await;
        let old = {
            let sized = self.pool.sized.lock().unwrap();
            let done = match step {
                Step::First => sized.version.as_ref().is_some_and(|v| v.generation >= version.generation),
                // Swapped in or refused by the call that held the lock before.
                Step::Swap => !self.guest.candidate().is_some_and(|c| Arc::ptr_eq(&c, &version)),
            };
            if done {
                return Ok(());
            }
            sized.size
        };
        // Every permit of the old size: no call is inside an instance now.
        let drained = match old {
            0 => None,
            n => Some(self.pool.permits.clone().acquire_many_owned(n as u32).await.map_err(|_| closed())?),
        };
        let started = match step {
            Step::First => self.start(version.clone()).await?,
            Step::Swap => {
                // A place under the instance bound is the host's to give:
                // not finding one says nothing of the candidate, which waits
                // for a later call; the old version serves this one.
                let Ok(place) = self.guest.place("max-instances").await else { return Ok(()) };
                match self.start_in(place, version.clone()).await {
                    Ok(started) if self.guest.accept(&version) => started,
                    // A newer candidate replaced it meanwhile: the next call starts that one.
                    Ok(_) => return Ok(()),
                    Err(why) => {
                        self.guest.reject(&version, &why);
                        return Ok(());
                    }
                }
            }
        };
        let (declared, instance) = started;
        let limit = self.guest.runtime.settings().max_instances_per_guest.max(1);
        let wanted = self.guest.spec.instances.unwrap_or(declared as usize);
        let size = wanted.clamp(1, limit);
        if size > 1 || old > 1 {
            tracing::info!(guest = %self.guest.spec.name, generation = version.generation, declared, configured = ?self.guest.spec.instances,
                limit, instances = size, "wasm provider calls run on a pool of instances");
        }
        {
            let mut sized = self.pool.sized.lock().unwrap();
            sized.version = Some(version);
            sized.size = size;
            sized.idle = instance.into_iter().collect();
        }
        if let Some(d) = drained {
            d.forget();
        }
        self.pool.permits.add_permits(size);
        Ok(())
    }

    /// Starts a fresh instance of `version`: instantiates it and asks its
    /// `max-instances`, under the call deadlines.
    async fn start(&self, version: Arc<Version<P>>) -> Result<(u32, Option<Instance<P>>)> {
        let place = self.guest.place("max-instances").await?;
        self.start_in(place, version).await
    }

    /// Starts a fresh instance of `version` in a place already taken, on
    /// the blocking pool (a start is rare, and waits for every call in
    /// flight anyway: it needs no lane), within the call deadlines.
    async fn start_in(&self, place: Place, version: Arc<Version<P>>) -> Result<(u32, Option<Instance<P>>)> {
        let op = "max-instances";
        let started = Instant::now();
        let g = self.guest.clone();
        let task = tokio::task::spawn_blocking(move || {
            run_blocking(&g, place, &version, None, op, |store, instance| P::max_instances(instance, store))
        });
        match tokio::time::timeout(budget(&self.guest, false), task).await {
            Ok(Ok((back, out))) => out.map(|v| (v, back)),
            Ok(Err(e)) => Err(Error::Internal(format!("wasm guest {:?}: host task failed: {e}", self.guest.spec.name))),
            Err(_) => Err(self.gave_up(op, started)),
        }
    }

    /// A call given up at its deadline: logged, counted, and its error.
    fn gave_up(&self, op: &'static str, started: Instant) -> Error {
        tracing::warn!(guest = %self.guest.spec.name, op, "wasm guest call abandoned at its deadline; its instance is discarded");
        abandoned(&self.guest.spec, op, started)
    }
}

/// How long a call may be inside an instance before it is abandoned:
/// instantiating (when no instance was kept) gets a deadline of its own,
/// as the call does.
fn budget<P: SyncWorld>(guest: &Guest<P>, kept: bool) -> Duration {
    let steps = if kept { 1 } else { 2 };
    guest.spec.call_timeout.saturating_mul(steps) + ABANDON_AFTER
}

/// A call queued for a lane.
struct Queued<P: SyncWorld, T, F> {
    on: Persistent<P>,
    op: &'static str,
    f: F,
    reply: oneshot::Sender<Result<T>>,
    watch: Arc<Watch>,
}

impl<P, T, F> Call for Queued<P, T, F>
where
    P: SyncWorld,
    T: Send + 'static,
    F: FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
{
    fn run(self: Box<Self>) -> Ended {
        let Queued { on, op, f, reply, watch } = *self;
        let (guest, pool) = (&on.guest, &on.pool);
        // Taken here, on the lane, not by the caller: under load the next
        // call is already queued when this lane comes back for it.
        let permit = match pool.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return watch.refuse(reply, closed()),
            Err(TryAcquireError::NoPermits) => match Handle::current().block_on(pool.permits.clone().acquire_owned()) {
                Ok(p) => p,
                Err(_) => return watch.refuse(reply, closed()),
            },
        };
        let place = match guest.try_place() {
            Some(p) => p,
            None => match Handle::current().block_on(guest.place(op)) {
                Ok(p) => p,
                Err(e) => return watch.refuse(reply, e),
            },
        };
        let (version, kept) = {
            let mut sized = pool.sized.lock().unwrap();
            let version = sized.version.clone().expect("sized before any permit exists");
            (version, sized.idle.pop())
        };
        watch.start(budget(guest, kept.is_some()), permit);
        let (instance, out) = run_blocking(guest, place, &version, kept, op, f);
        // Abandoned meanwhile: the caller has its answer and gave the
        // permit back; the instance, past its deadline, is discarded.
        let Some(permit) = watch.finish() else { return Ended::Abandoned };
        if let Some(instance) = instance {
            let mut sized = pool.sized.lock().unwrap();
            let current = sized.version.as_ref().is_some_and(|v| v.generation == version.generation);
            if current && sized.idle.len() < sized.size {
                sized.idle.push(instance);
            }
        }
        // The instance is back before the permit serves another call.
        drop(permit);
        let _ = reply.send(out);
        Ended::Returned
    }

    fn refuse(self: Box<Self>, why: Error) {
        self.watch.refuse(self.reply, why);
    }
}

/// Where a queued call is: what its lane and its caller (or, once the
/// caller has gone away, a task of its own) agree on, so that exactly one
/// of them ends it and gives its permit back.
#[derive(Default)]
struct Watch(Mutex<Stage>);

#[derive(Default)]
enum Stage {
    /// Waiting for a lane, a permit or a place: no deadline runs yet.
    #[default]
    Queued,
    /// Inside an instance since `since`, abandoned at `since + budget`.
    Running {
        since: Instant,
        budget: Duration,
        permit: OwnedSemaphorePermit,
    },
    /// Answered, or abandoned.
    Over,
}

/// What the deadline's watcher is to do next.
enum Due {
    /// Look again a while later: the call is not inside an instance yet.
    Queued,
    /// Look again at this instant, the call's deadline.
    At(Instant),
    /// The call was abandoned now; it had started at this instant.
    Abandoned(Instant),
    /// The call is over: its answer is sent or about to be.
    Over,
}

impl Watch {
    fn start(&self, budget: Duration, permit: OwnedSemaphorePermit) {
        *self.0.lock().unwrap() = Stage::Running {
            since: Instant::now(),
            budget,
            permit,
        };
    }

    /// Ends the call on its lane: its permit, or None if its caller
    /// abandoned it first.
    fn finish(&self) -> Option<OwnedSemaphorePermit> {
        match std::mem::replace(&mut *self.0.lock().unwrap(), Stage::Over) {
            Stage::Running { permit, .. } => Some(permit),
            _ => None,
        }
    }

    /// Ends a call that never got inside an instance, answering `why`.
    fn refuse<T>(&self, reply: oneshot::Sender<Result<T>>, why: Error) -> Ended {
        *self.0.lock().unwrap() = Stage::Over;
        let _ = reply.send(Err(why));
        Ended::Returned
    }

    /// Abandons the call if its deadline has passed (giving its permit
    /// back), or says when to look again.
    fn due(&self) -> Due {
        let mut stage = self.0.lock().unwrap();
        match &*stage {
            Stage::Queued => Due::Queued,
            Stage::Over => Due::Over,
            &Stage::Running { since, budget, .. } => {
                if since.elapsed() < budget {
                    return Due::At(since + budget);
                }
                // The permit is given back as the stage is replaced.
                *stage = Stage::Over;
                Due::Abandoned(since)
            }
        }
    }
}

/// A caller's watch over its queued call's deadline. Dropped while the
/// call is not over (the caller went away), it hands the watch to a task
/// of its own: a call stuck in its lane is abandoned all the same, and the
/// calls behind it get another lane.
struct Watching<P: SyncWorld>(Option<(Persistent<P>, &'static str, Arc<Watch>)>);

impl<P: SyncWorld> Watching<P> {
    /// The call's answer, or its abandonment at its deadline.
    async fn answer<T>(&self, mut answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        let (on, op, watch) = self.0.as_ref().expect("watching");
        let mut at = tokio::time::Instant::now() + budget(&on.guest, false);
        loop {
            match tokio::time::timeout_at(at, &mut answer).await {
                Ok(Ok(out)) => return out,
                Ok(Err(_)) => return Err(Error::Internal(format!("wasm guest {:?}: its lane failed", on.guest.spec.name))),
                Err(_) => match on.look(op, watch) {
                    Look::At(next) => at = next,
                    // The answer is on its way.
                    Look::Over => at = tokio::time::Instant::now() + budget(&on.guest, false),
                    Look::Abandoned(why) => return Err(why),
                },
            }
        }
    }
}

impl<P: SyncWorld> Drop for Watching<P> {
    fn drop(&mut self) {
        let Some((on, op, watch)) = self.0.take() else { return };
        let Ok(runtime) = Handle::try_current() else { return };
        runtime.spawn(async move {
            while let Look::At(next) = on.look(op, &watch) {
                tokio::time::sleep_until(next).await;
            }
        });
    }
}

/// What one look at a queued call's deadline found.
enum Look {
    /// Look again then.
    At(tokio::time::Instant),
    /// The call is over: answered, or abandoned by another look.
    Over,
    /// The call was abandoned now, with this error.
    Abandoned(Error),
}

impl<P: SyncWorld> Persistent<P> {
    /// One look at a queued call's deadline. A call abandoned now no longer
    /// counts its lane, and another lane serves the calls behind it.
    fn look(&self, op: &'static str, watch: &Watch) -> Look {
        match watch.due() {
            Due::Queued => Look::At(tokio::time::Instant::now() + budget(&self.guest, false)),
            Due::At(at) => Look::At(tokio::time::Instant::from_std(at)),
            Due::Over => Look::Over,
            Due::Abandoned(since) => {
                self.lanes.abandoned();
                Look::Abandoned(self.gave_up(op, since))
            }
        }
    }
}

/// Why the pool is sized: for the guest's first version (a failure to
/// start fails the call), or for a candidate (a failure refuses it).
#[derive(Clone, Copy)]
enum Step {
    First,
    Swap,
}

fn closed() -> Error {
    Error::Unavailable("wasm runtime shut down".into())
}

/// One call, on the thread it blocks (a lane, or the blocking pool for a
/// start): the instance to put back (none if the call failed) and the
/// outcome. `place` is held until this returns, even
/// when the caller has stopped waiting.
fn run_blocking<P: SyncWorld, T>(
    guest: &Guest<P>,
    place: Place,
    version: &Version<P>,
    kept: Option<Instance<P>>,
    op: &'static str,
    f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T>,
) -> (Option<Instance<P>>, Result<T>) {
    let _place = place;
    let mut instance = match kept {
        Some(i) => i,
        None => match instantiate(guest, version) {
            Ok(i) => i,
            Err(e) => return (None, Err(e)),
        },
    };
    guest.arm(&mut instance.store);
    let started = Instant::now();
    let r = f(&mut instance.store, &instance.instance);
    let failed = r.is_err();
    let out = finish(&guest.spec, op, instance.store.data(), started, r);
    // A trapped instance must not be entered again.
    ((!failed).then_some(instance), out)
}

fn instantiate<P: SyncWorld>(guest: &Guest<P>, version: &Version<P>) -> Result<Instance<P>> {
    let mut store = guest.new_store()?;
    guest.arm(&mut store);
    let started = Instant::now();
    let r = version.pre.instantiate(&mut store);
    let instance = finish(&guest.spec, "instantiate", store.data(), started, r)?;
    Ok(Instance {
        store,
        instance,
        generation: version.generation,
    })
}

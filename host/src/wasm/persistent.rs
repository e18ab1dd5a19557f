//! The instance strategy of storage and channel providers: long-lived
//! instances (the guest keeps its state, e.g. its indexes, in them), whose
//! calls run on the blocking pool, where a call is a whole unit of file or
//! network I/O done with blocking WASI.
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
//!   serialized on one instance.
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
//! - A call ends by its deadline (see [`super::deadline`]): if the blocking
//!   thread has not come back shortly after it, the call is abandoned,
//!   reported as out of time, its permit given back and its instance
//!   discarded; the next call starts a new one. The abandoned thread keeps
//!   its places until it returns, so a guest whose calls block uses up its
//!   own share of the instance bound, not the others'.

use super::guest::{Guest, Instance, Place, Version};
use super::outcome::{abandoned, finish};
use super::store::Ctx;
use super::worlds::SyncWorld;
use super::TICK;
use crate::model::{Error, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::Store;

/// How long after its deadline a blocked call is abandoned: long enough for
/// a call interrupted at its deadline (epoch trap, bounded wait) to come
/// back and be reported from what its store recorded.
const ABANDON_AFTER: Duration = TICK.saturating_mul(5);

/// The long-lived instances of a provider guest.
pub struct Persistent<P: SyncWorld> {
    guest: Arc<Guest<P>>,
    pool: Arc<Pool<P>>,
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
        }
    }
}

impl<P: SyncWorld> Persistent<P> {
    pub fn new(guest: Arc<Guest<P>>) -> Self {
        Persistent {
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

    /// Runs `f` on an instance (instantiating one if none is idle), on the
    /// blocking pool.
    ///
    /// The call runs on a task of its own: a caller that goes away (its
    /// request was cancelled) does not end it, so the instance is back in
    /// the pool, or discarded, before its permit serves another call.
    pub async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::spawn(async move { this.run(op, f).await })
            .await
            .map_err(|e| Error::Internal(format!("wasm guest {:?}: host task failed: {e}", self.guest.spec.name)))?
    }

    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<T> {
        let current = self.guest.current();
        if self.sized_for().is_none_or(|v| v.generation != current.generation) {
            self.resize(current, Step::First).await?;
        }
        if let Some(candidate) = self.guest.candidate() {
            self.resize(candidate, Step::Swap).await?;
        }
        let permit = self.pool.permits.clone().acquire_owned().await.map_err(|_| closed())?;
        let (version, kept) = {
            let mut sized = self.pool.sized.lock().unwrap();
            let version = sized.version.clone().expect("sized before any permit exists");
            (version, sized.idle.pop())
        };
        let back = self.on_blocking_pool(op, version, kept, f).await;
        drop(permit);
        back
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

    async fn start_in(&self, place: Place, version: Arc<Version<P>>) -> Result<(u32, Option<Instance<P>>)> {
        self.in_place(place, "max-instances", version, None, |store, instance| P::max_instances(instance, store))
            .await
    }

    /// Runs one call on the blocking pool, within its deadline, and puts
    /// the instance back among the idle ones if the call succeeded.
    async fn on_blocking_pool<T: Send + 'static>(
        &self,
        op: &'static str,
        version: Arc<Version<P>>,
        kept: Option<Instance<P>>,
        f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<T> {
        let generation = version.generation;
        let (out, instance) = self.on_blocking_pool_kept(op, version, kept, f).await?;
        if let Some(instance) = instance {
            let mut sized = self.pool.sized.lock().unwrap();
            let current = sized.version.as_ref().is_some_and(|v| v.generation == generation);
            if current && sized.idle.len() < sized.size {
                sized.idle.push(instance);
            }
        }
        Ok(out)
    }

    /// One call on the blocking pool: its outcome, and the instance unless
    /// the call failed.
    async fn on_blocking_pool_kept<T: Send + 'static>(
        &self,
        op: &'static str,
        version: Arc<Version<P>>,
        kept: Option<Instance<P>>,
        f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<(T, Option<Instance<P>>)> {
        let place = self.guest.place(op).await?;
        self.in_place(place, op, version, kept, f).await
    }

    /// One call on the blocking pool in a place already taken.
    async fn in_place<T: Send + 'static>(
        &self,
        place: Place,
        op: &'static str,
        version: Arc<Version<P>>,
        kept: Option<Instance<P>>,
        f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<(T, Option<Instance<P>>)> {
        let guest = &self.guest;
        // Instantiating gets a deadline of its own, as the call does.
        let steps = if kept.is_some() { 1 } else { 2 };
        let budget = guest.spec.call_timeout.saturating_mul(steps) + ABANDON_AFTER;
        let started = Instant::now();
        let g = guest.clone();
        let task = tokio::task::spawn_blocking(move || run_blocking(&g, place, &version, kept, op, f));
        match tokio::time::timeout(budget, task).await {
            Ok(Ok((back, out))) => out.map(|v| (v, back)),
            Ok(Err(e)) => Err(Error::Internal(format!("wasm guest {:?}: host task failed: {e}", guest.spec.name))),
            Err(_) => {
                tracing::warn!(guest = %guest.spec.name, op, "wasm guest call abandoned at its deadline; its instance is discarded");
                Err(abandoned(&guest.spec, op, started))
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

/// One call on the blocking pool: the instance to put back (none if the
/// call failed) and the outcome. `place` is held until this returns, even
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

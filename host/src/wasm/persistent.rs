//! The instance strategy of storage and channel providers: one long-lived
//! instance per guest (the guest keeps its state, e.g. its indexes, in it),
//! whose calls run one at a time on the blocking pool, where a call is a
//! whole unit of file or network I/O done with blocking WASI.
//!
//! Invariants:
//! - Calls are serialized: at most one call is inside the instance.
//! - An instance whose call failed is discarded (a trapped instance must
//!   not be entered again); after a reload the next call instantiates the
//!   current version.
//! - A call ends by its deadline (see [`super::deadline`]): if the blocking
//!   thread has not come back shortly after it, the call is abandoned,
//!   reported as out of time, and its instance discarded; the next call
//!   starts a new one. The abandoned thread keeps its places until it
//!   returns, so a guest whose calls block uses up its own share of the
//!   instance bound, not the others'.

use super::guest::{Guest, Instance, Place, Version};
use super::outcome::{abandoned, finish};
use super::store::Ctx;
use super::worlds::SyncWorld;
use super::TICK;
use crate::model::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use wasmtime::Store;

/// How long after its deadline a blocked call is abandoned: long enough for
/// a call interrupted at its deadline (epoch trap, bounded wait) to come
/// back and be reported from what its store recorded.
const ABANDON_AFTER: Duration = TICK.saturating_mul(5);

/// One long-lived instance of a provider guest.
pub struct Persistent<P: SyncWorld> {
    guest: Arc<Guest<P>>,
    /// The instance between calls; taken out for a call, put back if the
    /// call succeeded. The lock serializes calls.
    slot: Arc<Mutex<Option<Instance<P>>>>,
}

impl<P: SyncWorld> Clone for Persistent<P> {
    fn clone(&self) -> Self {
        Persistent {
            guest: self.guest.clone(),
            slot: self.slot.clone(),
        }
    }
}

impl<P: SyncWorld> Persistent<P> {
    pub fn new(guest: Arc<Guest<P>>) -> Self {
        Persistent {
            guest,
            slot: Arc::default(),
        }
    }

    pub fn guest(&self) -> &Arc<Guest<P>> {
        &self.guest
    }

    /// Runs `f` on the instance (instantiating it first if there is none,
    /// or only one of an older version), on the blocking pool.
    ///
    /// The call runs on a task of its own: a caller that goes away (its
    /// request was cancelled) does not end it, so the instance is back in
    /// its slot, or discarded, before the next call takes the slot; two
    /// instances of one provider never run calls side by side, except for
    /// an abandoned one that can only finish the host call it is blocked in.
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
        let guest = &self.guest;
        let mut slot = self.slot.lock().await;
        let place = guest.place(op).await?;
        let current = guest.current();
        let kept = slot.take().filter(|i| i.generation == current.generation);
        // Instantiating gets a deadline of its own, as the call does.
        let steps = if kept.is_some() { 1 } else { 2 };
        let budget = guest.spec.call_timeout.saturating_mul(steps) + ABANDON_AFTER;
        let started = Instant::now();
        let g = guest.clone();
        let task = tokio::task::spawn_blocking(move || run_blocking(&g, place, current, kept, op, f));
        match tokio::time::timeout(budget, task).await {
            Ok(Ok((back, out))) => {
                *slot = back;
                out
            }
            Ok(Err(e)) => Err(Error::Internal(format!("wasm guest {:?}: host task failed: {e}", guest.spec.name))),
            Err(_) => {
                tracing::warn!(guest = %guest.spec.name, op, "wasm guest call abandoned at its deadline; its instance is discarded");
                Err(abandoned(&guest.spec, op, started))
            }
        }
    }
}

/// One call on the blocking pool: the instance to put back (none if the
/// call failed) and the outcome. `place` is held until this returns, even
/// when the caller has stopped waiting.
fn run_blocking<P: SyncWorld, T>(
    guest: &Guest<P>,
    place: Place,
    current: Arc<Version<P>>,
    kept: Option<Instance<P>>,
    op: &'static str,
    f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T>,
) -> (Option<Instance<P>>, Result<T>) {
    let _place = place;
    let mut instance = match kept {
        Some(i) => i,
        None => match instantiate(guest, &current) {
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

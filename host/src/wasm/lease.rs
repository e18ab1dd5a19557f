//! The instance strategy of policy hooks: every call leases an instance
//! (a warm one of the current version, or a new one) and releases it when
//! the call is over. A hook call is short and sits on every request, twice,
//! so it runs on the request's own task, on a fiber that yields to the
//! executor at every epoch tick (a slow hook never holds a worker thread
//! for longer than a tick); WASI is linked async.
//!
//! Invariants:
//! - One guest serves one tenant, so what a guest keeps between calls in a
//!   warm instance stays within that tenant.
//! - Only an instance whose call succeeded goes back among the warm ones;
//!   one whose call failed, or whose call was dropped midway (the request
//!   was cancelled), is discarded.
//! - A reloaded version is swapped in by the first lease that finds it
//!   waiting and instantiates it (one lease at a time tries); one that does
//!   not instantiate is refused (see `guest.rs`), and that call runs on
//!   the current version.
//! - A lease holds its places (its guest's share and the runtime's bound)
//!   until it is released or dropped.
//! - The whole call, instantiation included, is bounded by a timer at its
//!   deadline: a guest blocked in the host (a sleep, a pollable, a slow
//!   host call) is cut off there like one that loops, and its instance
//!   discarded.

use super::guest::{Guest, Instance, Place, Version};
use super::outcome::{abandoned, finish};
use super::store::Ctx;
use super::worlds::AsyncWorld;
use crate::model::Result;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use wasmtime::Store;

/// Warm instances kept per guest.
const IDLE_INSTANCES: usize = 4;

/// An instance checked out for one call, with its place under the instance
/// bound. Dropped instead of released, it is discarded.
struct Lease<P: AsyncWorld> {
    instance: Instance<P>,
    started: Instant,
    _place: Place,
}

/// The right to start a guest's candidate, given back when dropped (also
/// when the call is cancelled midway).
struct Starting<'a>(&'a AtomicBool);

impl<'a> Starting<'a> {
    fn take(flag: &'a AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Starting(flag))
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The epoch callback of async stores: yield to the executor at every tick
/// (other requests run on this worker meanwhile), trap once the call's
/// deadline has passed. tokio's `yield_now` lets the worker poll for I/O
/// before it resumes the guest; a plain re-queue would leave sockets unread
/// for dozens of ticks while a busy guest keeps its task ready.
fn yield_until_deadline(ctx: wasmtime::StoreContextMut<'_, Ctx>) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    Ok(if Instant::now() >= ctx.data().deadline() {
        wasmtime::UpdateDeadline::Interrupt
    } else {
        wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
    })
}

impl<P: AsyncWorld> Guest<P> {
    /// Runs `f` on a leased instance: the one way to call a policy hook.
    pub async fn call<T>(
        &self,
        op: &'static str,
        f: impl for<'a> FnOnce(&'a mut Store<Ctx>, &'a P::Instance) -> BoxFuture<'a, wasmtime::Result<T>>,
    ) -> Result<T> {
        let place = self.place(op).await?;
        let mut lease = self.lease(place).await?;
        let deadline = tokio::time::Instant::from_std(lease.instance.store.data().deadline());
        let Instance { store, instance, .. } = &mut lease.instance;
        let r = tokio::time::timeout_at(deadline, f(store, instance)).await;
        match r {
            Ok(r) => self.release(op, lease, r),
            // Dropped, not released: discarded.
            Err(_) => Err(abandoned(&self.spec, op, lease.started)),
        }
    }

    /// Checks out a warm instance of the current version, or instantiates
    /// one. While a reloaded version waits to be started, the lease starts
    /// it first: if it instantiates it is swapped in and serves this call;
    /// if not it is refused and the current version serves the call.
    async fn lease(&self, place: Place) -> Result<Lease<P>> {
        // One call at a time tries the candidate: should it run to its
        // deadline, the calls beside it do not each wait for that too.
        if let Some(candidate) = self.candidate()
            && let Some(_starting) = Starting::take(&self.starting)
        {
            match self.instantiate(&candidate).await {
                Ok(instance) => {
                    self.accept(&candidate);
                    // Unless a newer candidate replaced it meanwhile, it is current now.
                    if Arc::ptr_eq(&self.current(), &candidate) {
                        return Ok(self.leased(instance, place));
                    }
                }
                Err(why) => self.reject(&candidate, &why),
            }
        }
        let current = self.current();
        let warm = {
            let mut idle = self.idle.lock().unwrap();
            idle.retain(|l| l.generation == current.generation);
            idle.pop()
        };
        let instance = match warm {
            Some(l) => l,
            None => self.instantiate(&current).await?,
        };
        Ok(self.leased(instance, place))
    }

    /// A fresh instance of `version`, within a deadline of its own.
    async fn instantiate(&self, version: &Version<P>) -> Result<Instance<P>> {
        let mut store = self.new_store()?;
        store.epoch_deadline_callback(yield_until_deadline);
        self.arm_async(&mut store);
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(store.data().deadline());
        let r = match tokio::time::timeout_at(deadline, version.pre.instantiate_async(&mut store)).await {
            Ok(r) => r,
            Err(_) => return Err(abandoned(&self.spec, "instantiate", started)),
        };
        let instance = finish(&self.spec, "instantiate", store.data(), started, r)?;
        Ok(Instance {
            store,
            instance,
            generation: version.generation,
        })
    }

    /// `instance` checked out for a call, its clock started.
    fn leased(&self, mut instance: Instance<P>, place: Place) -> Lease<P> {
        self.arm_async(&mut instance.store);
        Lease {
            instance,
            started: Instant::now(),
            _place: place,
        }
    }

    /// Ends a leased call: its outcome in the gateway's error model, and the
    /// instance back among the warm ones if the call succeeded.
    fn release<T>(&self, op: &'static str, lease: Lease<P>, r: wasmtime::Result<T>) -> Result<T> {
        let ok = r.is_ok();
        let out = finish(&self.spec, op, lease.instance.store.data(), lease.started, r);
        if ok && out.is_ok() {
            let mut idle = self.idle.lock().unwrap();
            if idle.len() < IDLE_INSTANCES {
                idle.push(lease.instance);
            }
        }
        out
    }
}

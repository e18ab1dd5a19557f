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
//! - Every call holds a place under the runtime's instance bound while it
//!   runs.

use super::guest::{Guest, Instance};
use super::outcome::finish;
use super::store::Ctx;
use super::worlds::SyncWorld;
use crate::model::{Error, Result};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::Store;

/// One long-lived instance of a provider guest.
pub struct Persistent<P: SyncWorld> {
    guest: Arc<Guest<P>>,
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
    pub async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<T> {
        let name = &self.guest.spec.name;
        let _permit = self
            .guest
            .runtime
            .instances()
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("wasm runtime shut down".into()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let guest = &this.guest;
            let mut slot = this.slot.lock().unwrap_or_else(|p| p.into_inner());
            let current = guest.current();
            if slot.as_ref().is_none_or(|l| l.generation != current.generation) {
                *slot = None;
                let mut store = guest.new_store()?;
                guest.arm(&mut store);
                let started = Instant::now();
                let r = current.pre.instantiate(&mut store);
                let instance = finish(&guest.spec, "instantiate", store.data(), started, r)?;
                *slot = Some(Instance {
                    store,
                    instance,
                    generation: current.generation,
                });
            }
            let l = slot.as_mut().expect("just set");
            guest.arm(&mut l.store);
            let started = Instant::now();
            let r = f(&mut l.store, &l.instance);
            let failed = r.is_err();
            let out = finish(&guest.spec, op, l.store.data(), started, r);
            if failed {
                *slot = None;
            }
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("wasm guest {name:?}: host task failed: {e}")))?
    }
}

//! A guest's lifecycle, in the words used throughout `wasm/`:
//!
//! - **load**: read the `.wasm` file, compile it (through the cache) and
//!   link it against its world, giving a [`Version`]. [`Guest::load`] loads
//!   the first version and starts the file watcher.
//! - **reload**: load the file again if it changed ([`Guest::reload`]),
//!   giving a **candidate** version; a file that does not load is refused
//!   and the current version keeps serving.
//! - **instantiate**: a fresh store with the guest's grants and limits, and
//!   an instance of a version in it ([`Instance`]).
//! - **start**: instantiate a version and make the calls the host makes on
//!   every fresh instance before any other (`max-instances` for providers,
//!   none for hooks).
//! - **swap**: a candidate becomes current once a fresh instance of it has
//!   started ([`Guest::accept`], called by the instance strategy on the
//!   next call); a candidate that fails to start is refused
//!   ([`Guest::reject`]) and the current version keeps serving.
//! - **call**: run one export on an instance under the call's deadline
//!   (`Persistent::call` for providers, `Guest::call` for policy hooks).
//! - **lease** / **release**: check an instance out for one call and hand
//!   it back (policy hooks keep a few warm ones, see `lease.rs`);
//!   **discard**: drop an instance that failed or was abandoned, never to
//!   enter it again.
//!
//! Invariants:
//! - A version is immutable; calls in flight finish on the version they
//!   started on, new instances use the current one.
//! - A version is current only once an instance of it has started: a
//!   replacement that loads and links but traps (or runs out of time) in
//!   its instantiation or its start-up calls never serves a call, and is
//!   tried again only when the file changes again.
//! - Generations count successful loads: 1 for the first, +1 per swap (a
//!   refused candidate's number is given to the next one).

use super::store::{Ctx, GuestInfo, new_store};
use super::worlds::World;
use super::dirs::DirHold;
use super::quota::DiskQuota;
use super::outcome::{self, Busy};
use super::{GuestSpec, TICK, WasmRuntime, cache, metrics};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use crate::model::{Error, Result};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime};
use wasmtime::Store;

/// A compiled, linked component version.
pub struct Version<P> {
    pub pre: P,
    /// SHA-256 of the `.wasm` file.
    pub hash: String,
    /// 1 for the first load, +1 per successful reload.
    pub generation: u64,
}

/// An instance of a guest version, in its own store.
pub(super) struct Instance<P: World> {
    pub(super) store: Store<Ctx>,
    pub(super) instance: P::Instance,
    pub(super) generation: u64,
}

/// A guest component: the current version, swapped on reload.
pub struct Guest<P: World> {
    pub(super) runtime: WasmRuntime,
    pub(super) spec: GuestSpec,
    info: Arc<GuestInfo>,
    allowed_net: Arc<Vec<SocketAddr>>,
    current: ArcSwap<Version<P>>,
    /// The version loaded from a changed file, not yet started: read on
    /// every call, so lock-free; changed only under `staging`.
    candidate: ArcSwapOption<Version<P>>,
    staging: Mutex<()>,
    /// Set while a call is starting the candidate (hooks: one at a time).
    pub(super) starting: AtomicBool,
    /// (mtime, length) of the file when last looked at.
    stamp: Mutex<(Option<SystemTime>, u64)>,
    last_error: Mutex<Option<String>>,
    generations: AtomicU64,
    /// Warm instances for leases, with the generation they run.
    pub(super) idle: Mutex<Vec<Instance<P>>>,
    /// This guest's share of the runtime's instance bound.
    places: Arc<Semaphore>,
    /// Its `grants.dir`, kept from the cache and from other guests.
    _dir_hold: Option<DirHold>,
    /// The byte quota of its `grants.dir`.
    quota: Option<Arc<DiskQuota>>,
}

/// A call's places: one of its guest's share and one under the runtime's
/// bound, held for as long as the call's instance is in use.
pub(super) struct Place {
    _guest: OwnedSemaphorePermit,
    _runtime: OwnedSemaphorePermit,
}

fn stamp(path: &Path) -> (Option<SystemTime>, u64) {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

impl<P: World> Guest<P> {
    /// Loads the guest's first version; fails naming the guest and the
    /// reason. Starts its file watcher. Blocking (compiles): call it on the
    /// blocking pool.
    pub fn load(runtime: &WasmRuntime, spec: GuestSpec) -> Result<Arc<Self>> {
        let field = format!("wasm guest {:?}", spec.name);
        let dir_hold = match &spec.grants.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::invalid(&field, format!("cannot create grants.dir {}: {e}", dir.display())))?;
                // Opens (creates) the cache directory first, so both paths
                // compare resolved.
                let _ = runtime.disk_cache();
                let cache = runtime.settings().cache_dir.as_deref();
                Some(runtime.dirs().hold(&spec.name, dir, cache).map_err(|why| Error::invalid(&field, why))?)
            }
            None => None,
        };
        let quota = spec.grants.dir.as_deref().map(|dir| Arc::new(DiskQuota::new(dir, spec.disk_bytes)));
        let mut allowed = Vec::new();
        for a in &spec.grants.net {
            use std::net::ToSocketAddrs;
            let addrs = a
                .to_socket_addrs()
                .map_err(|e| Error::invalid(&field, format!("grants.net entry {a:?} is not a reachable host:port: {e}")))?;
            allowed.extend(addrs);
        }
        let st = stamp(&spec.path);
        let bytes = std::fs::read(&spec.path)
            .map_err(|e| Error::invalid(&field, format!("cannot read {}: {e}", spec.path.display())))?;
        let started = Instant::now();
        let version = Self::version(runtime, &bytes, 1).map_err(|reason| Error::invalid(&field, reason))?;
        tracing::info!(guest = %spec.name, world = P::KIND.world(), wit = version.pre.version(), hash = %&version.hash[..12],
            ms = started.elapsed().as_millis() as u64, "wasm guest loaded");
        metrics::reloaded(&spec.name, "loaded");
        let guest = Arc::new(Guest {
            runtime: runtime.clone(),
            info: Arc::new(GuestInfo {
                name: spec.name.clone(),
                config: spec.config.clone(),
            }),
            allowed_net: Arc::new(allowed),
            spec,
            current: ArcSwap::from_pointee(version),
            candidate: ArcSwapOption::empty(),
            staging: Mutex::new(()),
            starting: AtomicBool::new(false),
            stamp: Mutex::new(st),
            last_error: Mutex::new(None),
            generations: AtomicU64::new(1),
            idle: Mutex::new(Vec::new()),
            places: Arc::new(Semaphore::new(runtime.settings().max_instances_per_guest.max(1))),
            _dir_hold: dir_hold,
            quota,
        });
        guest.watch();
        Ok(guest)
    }

    /// Starts the thread that reloads the guest when its file changes; it
    /// ends when the guest is dropped.
    fn watch(self: &Arc<Self>) {
        let interval = self.runtime.settings().reload_interval;
        if interval.is_zero() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name(format!("wasm-watch-{}", self.spec.name))
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(g) = weak.upgrade() else { break };
                    g.reload();
                }
            });
    }

    /// Compiles and links the bytes of a `.wasm` file.
    fn version(runtime: &WasmRuntime, bytes: &[u8], generation: u64) -> std::result::Result<Version<P>, String> {
        let (component, hash) = cache::compile(runtime, bytes)?;
        let pre = P::link(&component).map_err(|e| format!("does not implement world {}: {e:#}", P::KIND.world()))?;
        Ok(Version { pre, hash, generation })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &GuestSpec {
        &self.spec
    }

    /// The version new instances use.
    pub fn current(&self) -> Arc<Version<P>> {
        self.current.load_full()
    }

    /// Why the last reload was refused (cleared by a successful one).
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    /// The version loaded from a changed file and waiting to be started,
    /// if any.
    pub fn candidate(&self) -> Option<Arc<Version<P>>> {
        self.candidate.load_full()
    }

    /// Checks the file now; a changed file that loads becomes the
    /// candidate (replacing an earlier one not yet started), swapped in
    /// once an instance of it starts. Returns whether a candidate was
    /// staged.
    pub fn reload(&self) -> bool {
        let now = stamp(&self.spec.path);
        {
            let mut st = self.stamp.lock().unwrap();
            if *st == now {
                return false;
            }
            *st = now;
        }
        let bytes = match std::fs::read(&self.spec.path) {
            Ok(b) => b,
            Err(e) => {
                self.refuse(format!("cannot read it: {e}"));
                return false;
            }
        };
        let hash = cache::hash(&bytes);
        if hash == self.current().hash {
            // Back to the version serving: nothing to swap.
            let _staging = self.staging.lock().unwrap();
            self.candidate.store(None);
            return false;
        }
        if self.candidate().is_some_and(|c| c.hash == hash) {
            return false;
        }
        let generation = self.generations.load(Ordering::SeqCst) + 1;
        match Self::version(&self.runtime, &bytes, generation) {
            Ok(version) => {
                tracing::info!(guest = %self.spec.name, generation, wit = version.pre.version(), hash = %&version.hash[..12],
                    "wasm guest reloaded; swapped in once an instance of it starts");
                let _staging = self.staging.lock().unwrap();
                self.candidate.store(Some(Arc::new(version)));
                true
            }
            Err(reason) => {
                self.refuse(reason);
                false
            }
        }
    }

    /// Makes `version`, the candidate, current: an instance of it started.
    /// Returns false (and changes nothing) if it is no longer the candidate.
    pub(super) fn accept(&self, version: &Arc<Version<P>>) -> bool {
        let _staging = self.staging.lock().unwrap();
        if !self.candidate().is_some_and(|c| Arc::ptr_eq(&c, version)) {
            return false;
        }
        self.candidate.store(None);
        self.generations.store(version.generation, Ordering::SeqCst);
        self.current.store(version.clone());
        *self.last_error.lock().unwrap() = None;
        tracing::info!(guest = %self.spec.name, generation = version.generation, hash = %&version.hash[..12], "wasm guest swapped in");
        metrics::reloaded(&self.spec.name, "swapped");
        true
    }

    /// Refuses `version`, the candidate, which did not start: the current
    /// version keeps serving; the file is tried again when it changes.
    pub(super) fn reject(&self, version: &Arc<Version<P>>, why: &Error) {
        {
            let _staging = self.staging.lock().unwrap();
            if !self.candidate().is_some_and(|c| Arc::ptr_eq(&c, version)) {
                return;
            }
            self.candidate.store(None);
        }
        self.refuse(format!("it loads, but a fresh instance of it did not start: {why}"));
    }

    fn refuse(&self, reason: String) {
        tracing::warn!(guest = %self.spec.name, file = %self.spec.path.display(),
            "wasm guest reload refused, the current version keeps serving: {reason}");
        metrics::reloaded(&self.spec.name, "refused");
        *self.last_error.lock().unwrap() = Some(reason);
    }

    /// Waits for a call's places, at most the call's time limit: first one
    /// of the guest's own share (so a guest whose calls pile up waits on
    /// itself, not on the others), then one under the runtime's bound.
    pub(super) async fn place(&self, op: &'static str) -> Result<Place> {
        let started = Instant::now();
        let until = tokio::time::Instant::now() + self.spec.call_timeout;
        let closed = |_| Error::Unavailable("wasm runtime shut down".into());
        let own = self.places.clone().acquire_owned();
        let own = match tokio::time::timeout_at(until, own).await {
            Ok(p) => p.map_err(closed)?,
            Err(_) => return Err(outcome::busy(&self.spec, op, started, Busy::Guest(self.runtime.settings().max_instances_per_guest))),
        };
        let shared = self.runtime.instances().clone().acquire_owned();
        let shared = match tokio::time::timeout_at(until, shared).await {
            Ok(p) => p.map_err(closed)?,
            Err(_) => return Err(outcome::busy(&self.spec, op, started, Busy::Runtime(self.runtime.settings().max_instances))),
        };
        Ok(Place {
            _guest: own,
            _runtime: shared,
        })
    }

    /// A call's places if both are free now, without waiting.
    pub(super) fn try_place(&self) -> Option<Place> {
        let own = self.places.clone().try_acquire_owned().ok()?;
        let shared = self.runtime.instances().clone().try_acquire_owned().ok()?;
        Some(Place {
            _guest: own,
            _runtime: shared,
        })
    }

    /// A fresh store with the guest's grants and limits.
    pub(super) fn new_store(&self) -> Result<Store<Ctx>> {
        new_store(self.runtime.engine(), &self.spec, &self.info, &self.allowed_net, self.quota.as_ref())
            .map_err(|e| Error::Unavailable(format!("wasm guest {:?}: {e}", self.spec.name)))
    }

    /// Starts a synchronous call's clock: it traps after a number of ticks.
    pub(super) fn arm(&self, store: &mut Store<Ctx>) {
        let ticks = (self.spec.call_timeout.as_millis() / TICK.as_millis()).max(1) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.data_mut().start_call(Instant::now() + self.spec.call_timeout);
    }

    /// Starts an async call's clock: the guest yields at the next tick, and
    /// at every tick after it until the deadline (see `lease.rs`).
    pub(super) fn arm_async(&self, store: &mut Store<Ctx>) {
        store.set_epoch_deadline(1);
        store.data_mut().start_call(Instant::now() + self.spec.call_timeout);
    }
}

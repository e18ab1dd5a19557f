//! The WebAssembly host: runs guest components (storage providers, channel
//! providers, per-tenant policy hooks) built against the WIT contract in
//! `wit/`, sandboxed.
//!
//! - One shared [`Engine`] with epoch interruption; a ticker thread advances
//!   the epoch every [`TICK`], and every call gets a deadline.
//! - Storage and channel providers ([`SyncWorld`]) run their calls on the
//!   blocking pool, one call per instance at a time: a call is a whole unit
//!   of file or network I/O, done with blocking WASI.
//! - Policy hooks ([`AsyncWorld`]) run on the request's own task: a hook
//!   call is short and sits on every request, twice, where a hop to the
//!   blocking pool and back costs more than the guest. The guest runs on a
//!   fiber that yields to the executor at every tick, so a slow hook never
//!   holds a worker thread for longer than a tick; WASI is linked async.
//! - Each store has a memory cap ([`StoreLimits`], growth failure traps).
//! - A semaphore bounds the instances alive at once.
//! - Components are compiled once and cached on disk, keyed by the SHA-256
//!   of the `.wasm` file; the linked [`InstancePre`](wasmtime::component::InstancePre)
//!   is reused for every instantiation.
//! - A watcher thread per guest polls the file; a changed file is compiled
//!   and checked against the world, then swapped in atomically. Calls in
//!   flight finish on the old component; a broken file is refused (logged,
//!   counted, kept in [`Guest::last_reload_error`]) and the old one keeps
//!   serving.
//! - WASI capabilities only as granted ([`grants`], checked in
//!   [`capabilities`]): `grants.dir` is preopened at `/data`, `grants.net`
//!   lists the `host:port` addresses the guest may connect to over TCP,
//!   `grants.http` the authorities it may send HTTP requests to. Using
//!   anything else fails the call with `PERMISSION_DENIED`.
//!
//! A trap, a deadline, a memory cap or a denied capability fails only that
//! call (`UNAVAILABLE` / `PERMISSION_DENIED`, naming the guest).

pub mod capabilities;
pub mod convert;
pub mod grants;
pub mod spec;
pub mod metrics;

use crate::model::{Error, Result};
use arc_swap::ArcSwap;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use capabilities::Denied;
pub use grants::{Grants, HttpGrant};
pub use spec::{GuestConfig, GuestLimits, GuestSpec};

/// Bindings of the WIT worlds.
pub mod bindings {
    pub mod storage {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "storage-provider",
        });
    }
    pub mod channel {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "channel-provider",
            with: {
                "stategate:gateway/types": super::storage::stategate::gateway::types,
                "stategate:gateway/host": super::storage::stategate::gateway::host,
            },
        });
    }
    pub mod policy {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "policy-hook",
            exports: { default: async },
            with: {
                "stategate:gateway/host": super::storage::stategate::gateway::host,
            },
        });
    }
}

use bindings::storage::stategate::gateway::host as host_if;

/// Epoch tick: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// Process-wide sandbox settings (from the `STATEGATE_WASM_*` options).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Wall-clock budget of one guest call.
    pub call_timeout: Duration,
    /// Memory cap of one instance.
    pub memory_bytes: usize,
    /// Instances alive at once, all guests together.
    pub max_instances: usize,
    /// Where compiled components are cached; `None` = no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// How often guest files are checked for changes; zero = never.
    pub reload_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            call_timeout: Duration::from_secs(5),
            memory_bytes: 256 << 20,
            max_instances: 32,
            cache_dir: None,
            reload_interval: Duration::from_secs(1),
        }
    }
}

static SETTINGS: OnceLock<Mutex<Settings>> = OnceLock::new();
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Sets the sandbox settings; guests loaded afterwards use them. The
/// instance bound is fixed by the first guest loaded.
pub fn configure(settings: Settings) {
    *SETTINGS.get_or_init(|| Mutex::new(Settings::default())).lock().unwrap() = settings;
}

pub fn settings() -> Settings {
    SETTINGS.get_or_init(|| Mutex::new(Settings::default())).lock().unwrap().clone()
}

struct Runtime {
    engine: Engine,
    instances: Arc<tokio::sync::Semaphore>,
}

fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("wasm engine configuration is valid");
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .expect("spawn wasm epoch ticker");
        Runtime {
            engine,
            instances: Arc::new(tokio::sync::Semaphore::new(settings().max_instances.max(1))),
        }
    })
}

pub fn engine() -> &'static Engine {
    &runtime().engine
}

/// Which world a guest implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Storage,
    Channel,
    Policy,
}

impl Kind {
    pub fn world(self) -> &'static str {
        match self {
            Kind::Storage => "storage-provider",
            Kind::Channel => "channel-provider",
            Kind::Policy => "policy-hook",
        }
    }
}

/// The data of every guest store.
pub struct Ctx {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_gate: capabilities::HttpGate,
    table: ResourceTable,
    limits: StoreLimits,
    guest: Arc<GuestInfo>,
    /// Set when the guest tried a capability it was not granted.
    denied: Denied,
}

struct GuestInfo {
    name: String,
    config: Map<String, Value>,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_gate,
        }
    }
}

impl capabilities::RecordsDenial for Ctx {
    fn denied(&self) -> &Denied {
        &self.denied
    }
}

impl host_if::Host for Ctx {
    fn log(&mut self, level: host_if::Level, message: String) {
        let g = &self.guest.name;
        match level {
            host_if::Level::Trace => tracing::trace!(guest = %g, "{message}"),
            host_if::Level::Debug => tracing::debug!(guest = %g, "{message}"),
            host_if::Level::Info => tracing::info!(guest = %g, "{message}"),
            host_if::Level::Warn => tracing::warn!(guest = %g, "{message}"),
            host_if::Level::Error => tracing::error!(guest = %g, "{message}"),
        }
    }

    fn now_nanos(&mut self) -> i64 {
        crate::model::now_nanos()
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.guest.config.get(&key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// A world the host can run: how to link a component into it.
pub trait World: Sized + Send + Sync + 'static {
    const KIND: Kind;
    type Instance: Send + 'static;
    fn link(component: &Component) -> wasmtime::Result<Self>;
}

/// A world whose calls run synchronously on the blocking pool.
pub trait SyncWorld: World {
    fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<Self::Instance>;
}

/// A world whose calls run on the async executor.
pub trait AsyncWorld: World {
    fn instantiate_async(&self, store: &mut Store<Ctx>) -> impl Future<Output = wasmtime::Result<Self::Instance>> + Send;
}

fn linker_sync() -> wasmtime::Result<Linker<Ctx>> {
    let mut linker = Linker::new(engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    capabilities::record_filesystem_escapes(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    host_if::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    Ok(linker)
}

fn linker_async() -> wasmtime::Result<Linker<Ctx>> {
    let mut linker = Linker::new(engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    capabilities::record_filesystem_escapes_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    host_if::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    Ok(linker)
}

/// Implements [`World`] and [`SyncWorld`] or [`AsyncWorld`] for a
/// bindgen-generated `…Pre` type.
macro_rules! world {
    (sync $pre:ty, $kind:expr, $instance:ty) => {
        world!(@world $pre, $kind, $instance, linker_sync);
        impl SyncWorld for $pre {
            fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<Self::Instance> {
                self.instantiate(store)
            }
        }
    };
    (async $pre:ty, $kind:expr, $instance:ty) => {
        world!(@world $pre, $kind, $instance, linker_async);
        impl AsyncWorld for $pre {
            fn instantiate_async(
                &self,
                store: &mut Store<Ctx>,
            ) -> impl Future<Output = wasmtime::Result<Self::Instance>> + Send {
                self.instantiate_async(store)
            }
        }
    };
    (@world $pre:ty, $kind:expr, $instance:ty, $linker:ident) => {
        impl World for $pre {
            const KIND: Kind = $kind;
            type Instance = $instance;
            fn link(component: &Component) -> wasmtime::Result<Self> {
                Self::new($linker()?.instantiate_pre(component)?)
            }
        }
    };
}

world!(sync bindings::storage::StorageProviderPre<Ctx>, Kind::Storage, bindings::storage::StorageProvider);
world!(sync bindings::channel::ChannelProviderPre<Ctx>, Kind::Channel, bindings::channel::ChannelProvider);
world!(async bindings::policy::PolicyHookPre<Ctx>, Kind::Policy, bindings::policy::PolicyHook);

/// A compiled, linked component version.
pub struct Loaded<P> {
    pub pre: P,
    /// SHA-256 of the `.wasm` file.
    pub hash: String,
    /// 1 for the first load, +1 per successful reload.
    pub generation: u64,
}

/// A guest component: the current version, swapped on reload.
pub struct Guest<P: World> {
    spec: GuestSpec,
    info: Arc<GuestInfo>,
    allowed_net: Arc<Vec<SocketAddr>>,
    current: ArcSwap<Loaded<P>>,
    /// (mtime, length) of the file when last looked at.
    stamp: Mutex<(Option<SystemTime>, u64)>,
    last_error: Mutex<Option<String>>,
    generations: AtomicU64,
    /// Warm instances for [`Guest::lease`], with the generation they run.
    idle: Mutex<Vec<Live<P>>>,
}

/// Warm instances kept per guest.
const IDLE_INSTANCES: usize = 4;

fn stamp(path: &Path) -> (Option<SystemTime>, u64) {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

/// Compiles a component, through the on-disk cache when one is configured.
fn compile(bytes: &[u8]) -> std::result::Result<(Component, String), String> {
    let hash = hex::encode(Sha256::digest(bytes));
    let engine = engine();
    let cache = settings().cache_dir;
    if let Some(dir) = &cache {
        let file = dir.join(format!("{hash}.cwasm"));
        if file.exists() {
            // SAFETY: the cache directory holds only artifacts this host
            // serialized; an incompatible or corrupt one is an error, not UB,
            // because wasmtime checks the header and engine compatibility.
            match unsafe { Component::deserialize_file(engine, &file) } {
                Ok(c) => return Ok((c, hash)),
                Err(e) => tracing::warn!(file = %file.display(), "wasm cache entry unusable, recompiling: {e}"),
            }
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| format!("not a valid component: {e:?}"))?;
    if let Some(dir) = &cache {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let bytes = component.serialize().map_err(std::io::Error::other)?;
            let tmp = dir.join(format!("{hash}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(format!("{hash}.cwasm")))
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %dir.display(), "cannot write the wasm compile cache: {e}");
        }
    }
    Ok((component, hash))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

impl<P: World> Guest<P> {
    /// Loads, compiles and links a guest; fails naming the guest and the
    /// reason. Starts its file watcher.
    pub fn load(spec: GuestSpec) -> Result<Arc<Self>> {
        let field = format!("wasm guest {:?}", spec.name);
        if let Some(dir) = &spec.grants.dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::invalid(&field, format!("cannot create grants.dir {}: {e}", dir.display())))?;
        }
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
        let loaded = Self::build(&bytes, 1).map_err(|reason| Error::invalid(&field, reason))?;
        tracing::info!(guest = %spec.name, world = P::KIND.world(), hash = %&loaded.hash[..12],
            ms = started.elapsed().as_millis() as u64, "wasm guest loaded");
        metrics::reloaded(&spec.name, "loaded");
        let guest = Arc::new(Guest {
            info: Arc::new(GuestInfo {
                name: spec.name.clone(),
                config: spec.config.clone(),
            }),
            allowed_net: Arc::new(allowed),
            spec,
            current: ArcSwap::from_pointee(loaded),
            stamp: Mutex::new(st),
            last_error: Mutex::new(None),
            generations: AtomicU64::new(1),
            idle: Mutex::new(Vec::new()),
        });
        let interval = settings().reload_interval;
        if !interval.is_zero() {
            let weak: Weak<Self> = Arc::downgrade(&guest);
            let _ = std::thread::Builder::new()
                .name(format!("wasm-watch-{}", guest.spec.name))
                .spawn(move || {
                    loop {
                        std::thread::sleep(interval);
                        let Some(g) = weak.upgrade() else { break };
                        g.reload_if_changed();
                    }
                });
        }
        Ok(guest)
    }

    fn build(bytes: &[u8], generation: u64) -> std::result::Result<Loaded<P>, String> {
        let (component, hash) = compile(bytes)?;
        let pre = P::link(&component)
            .map_err(|e| format!("does not implement world {}: {e:?}", P::KIND.world()))?;
        Ok(Loaded { pre, hash, generation })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &GuestSpec {
        &self.spec
    }

    /// The version new calls use.
    pub fn current(&self) -> Arc<Loaded<P>> {
        self.current.load_full()
    }

    /// Why the last replacement was refused (cleared by a successful one).
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    /// Checks the file now; swaps in a changed, valid component. Returns
    /// whether a new version was swapped in.
    pub fn reload_if_changed(&self) -> bool {
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
                self.refuse(format!("cannot read {}: {e}", self.spec.path.display()));
                return false;
            }
        };
        if hex::encode(Sha256::digest(&bytes)) == self.current().hash {
            return false;
        }
        let generation = self.generations.load(Ordering::SeqCst) + 1;
        match Self::build(&bytes, generation) {
            Ok(loaded) => {
                self.generations.store(generation, Ordering::SeqCst);
                tracing::info!(guest = %self.spec.name, generation, hash = %&loaded.hash[..12], "wasm guest reloaded");
                self.current.store(Arc::new(loaded));
                *self.last_error.lock().unwrap() = None;
                metrics::reloaded(&self.spec.name, "swapped");
                true
            }
            Err(reason) => {
                self.refuse(reason);
                false
            }
        }
    }

    fn refuse(&self, reason: String) {
        tracing::warn!(guest = %self.spec.name, "wasm guest replacement refused, the previous version keeps serving: {reason}");
        metrics::reloaded(&self.spec.name, "refused");
        *self.last_error.lock().unwrap() = Some(reason);
    }

    /// A fresh store with the guest's grants and limits.
    fn new_store(&self) -> std::result::Result<Store<Ctx>, Error> {
        let denied = Denied::default();
        let mut b = WasiCtxBuilder::new();
        b.inherit_stderr();
        capabilities::grant_wasi(&mut b, &self.spec.grants, self.allowed_net.clone(), &denied).map_err(|e| {
            Error::Unavailable(format!("wasm guest {:?}: {e}", self.spec.name))
        })?;
        let ctx = Ctx {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            http_gate: capabilities::HttpGate {
                grants: self.spec.grants.clone(),
                denied: denied.clone(),
                deadline: Instant::now() + self.spec.call_timeout,
                expired: Arc::default(),
            },
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.spec.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            guest: self.info.clone(),
            denied,
        };
        let mut store = Store::new(engine(), ctx);
        store.limiter(|c| &mut c.limits);
        Ok(store)
    }

    /// Starts a call's clock: the deadline of a synchronous call is a
    /// number of ticks, after which it traps.
    fn arm(&self, store: &mut Store<Ctx>) {
        let ticks = (self.spec.call_timeout.as_millis() / TICK.as_millis()).max(1) as u64 + 1;
        store.set_epoch_deadline(ticks);
        self.reset_call(store);
    }

    /// Starts an async call's clock: the guest yields at the next tick, and
    /// at every tick after it until the deadline (see [`yield_until_deadline`]).
    fn arm_async(&self, store: &mut Store<Ctx>) {
        store.set_epoch_deadline(1);
        self.reset_call(store);
    }

    fn reset_call(&self, store: &mut Store<Ctx>) {
        let gate = &mut store.data_mut().http_gate;
        gate.deadline = Instant::now() + self.spec.call_timeout;
        gate.expired.store(false, Ordering::SeqCst);
        store.data().denied.take();
    }

    /// Turns a call's outcome into the gateway's error model and records
    /// metrics. `Err` from wasmtime is a trap, a deadline or the memory cap.
    fn finish<T>(&self, op: &'static str, store: &Store<Ctx>, started: Instant, r: wasmtime::Result<T>) -> Result<T> {
        let name = &self.spec.name;
        let denied = store.data().denied.take();
        let expired = store.data().http_gate.expired.load(Ordering::SeqCst);
        let out = match (denied, r) {
            (Some(what), _) => Err((
                "denied",
                Error::denied(crate::model::Denial::NotGranted, format!("wasm guest {name:?}: {op} used {what}, which is not granted")),
            )),
            (None, _) if expired => Err(self.out_of_time(op)),
            (None, Ok(v)) => Ok(v),
            (None, Err(e)) => Err(self.classify(op, &e)),
        };
        metrics::call(name, op, started.elapsed(), out.as_ref().err().map(|(reason, _)| *reason));
        out.map_err(|(_, e)| e)
    }

    fn out_of_time(&self, op: &str) -> (&'static str, Error) {
        let (name, ms) = (&self.spec.name, self.spec.call_timeout.as_millis());
        ("deadline", Error::Unavailable(format!("wasm guest {name:?}: {op} exceeded its time limit of {ms} ms")))
    }

    fn classify(&self, op: &str, e: &wasmtime::Error) -> (&'static str, Error) {
        let name = &self.spec.name;
        let text = format!("{e:?}");
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return self.out_of_time(op);
        }
        if text.contains("growing memory") || text.contains("memory limit") || text.contains("forcing trap when growing") {
            let mb = self.spec.memory_bytes >> 20;
            return ("memory", Error::Unavailable(format!("wasm guest {name:?}: {op} exceeded its memory limit of {mb} MiB")));
        }
        tracing::warn!(guest = %name, op, "wasm guest trapped: {text}");
        ("trap", Error::Unavailable(format!("wasm guest {name:?}: {op} trapped: {}", first_line(&text))))
    }
}

/// An instance of an [`AsyncWorld`] guest checked out for one call, with its
/// place under the instance bound. Handed back with [`Guest::give_back`]; one
/// dropped instead (the call failed, or its request was cancelled midway) is
/// discarded, never reused.
pub struct Lease<P: World> {
    live: Live<P>,
    started: Instant,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<P: World> Lease<P> {
    /// The store and the instance to call.
    pub fn parts(&mut self) -> (&mut Store<Ctx>, &P::Instance) {
        (&mut self.live.store, &self.live.instance)
    }
}

/// The epoch callback of async stores: yield to the executor at every tick
/// (other requests run on this worker meanwhile), trap once the call's
/// deadline has passed. tokio's `yield_now` lets the worker poll for I/O
/// before it resumes the guest; a plain re-queue would leave sockets unread
/// for dozens of ticks while a busy guest keeps its task ready.
fn yield_until_deadline(ctx: wasmtime::StoreContextMut<'_, Ctx>) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    Ok(if Instant::now() >= ctx.data().http_gate.deadline {
        wasmtime::UpdateDeadline::Interrupt
    } else {
        wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
    })
}

impl<P: AsyncWorld> Guest<P> {
    /// Checks out a warm instance of the current version, or instantiates
    /// one (policy hooks: one guest serves one tenant, so what a guest keeps
    /// between calls stays within that tenant). Waits for a place under the
    /// instance bound.
    pub async fn lease(&self) -> Result<Lease<P>> {
        let permit = runtime()
            .instances
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("wasm runtime shut down".into()))?;
        let current = self.current();
        let warm = {
            let mut idle = self.idle.lock().unwrap();
            idle.retain(|l| l.generation == current.generation);
            idle.pop()
        };
        let mut live = match warm {
            Some(l) => l,
            None => {
                let mut store = self.new_store()?;
                store.epoch_deadline_callback(yield_until_deadline);
                self.arm_async(&mut store);
                let started = Instant::now();
                let r = current.pre.instantiate_async(&mut store).await;
                let instance = self.finish("instantiate", &store, started, r)?;
                Live {
                    store,
                    instance,
                    generation: current.generation,
                }
            }
        };
        self.arm_async(&mut live.store);
        Ok(Lease {
            live,
            started: Instant::now(),
            _permit: permit,
        })
    }

    /// Ends a leased call: its outcome in the gateway's error model, and the
    /// instance back among the warm ones if the call succeeded.
    pub fn give_back<T>(&self, op: &'static str, lease: Lease<P>, r: wasmtime::Result<T>) -> Result<T> {
        let ok = r.is_ok();
        let out = self.finish(op, &lease.live.store, lease.started, r);
        if ok && out.is_ok() {
            let mut idle = self.idle.lock().unwrap();
            if idle.len() < IDLE_INSTANCES {
                idle.push(lease.live);
            }
        }
        out
    }
}

/// Runs blocking wasm work on the blocking pool, under the instance bound.
async fn blocking<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let _permit = runtime()
        .instances
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Error::Unavailable("wasm runtime shut down".into()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("wasm guest {name:?}: host task failed: {e}")))?
}

struct Live<P: World> {
    store: Store<Ctx>,
    instance: P::Instance,
    generation: u64,
}

/// One long-lived instance of a guest (storage and channel providers keep
/// their state in it). Calls are serialized; after a failed call, and after
/// a reload, the next call starts a new instance of the current version.
pub struct Persistent<P: SyncWorld> {
    guest: Arc<Guest<P>>,
    live: Arc<Mutex<Option<Live<P>>>>,
}

impl<P: SyncWorld> Clone for Persistent<P> {
    fn clone(&self) -> Self {
        Persistent {
            guest: self.guest.clone(),
            live: self.live.clone(),
        }
    }
}

impl<P: SyncWorld> Persistent<P> {
    pub fn new(guest: Arc<Guest<P>>) -> Self {
        Persistent {
            guest,
            live: Arc::default(),
        }
    }

    pub fn guest(&self) -> &Arc<Guest<P>> {
        &self.guest
    }

    pub async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Store<Ctx>, &P::Instance) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        blocking(&self.guest.spec.name, move || {
            let guest = &this.guest;
            let mut live = this.live.lock().unwrap_or_else(|p| p.into_inner());
            let current = guest.current();
            if live.as_ref().is_none_or(|l| l.generation != current.generation) {
                *live = None;
                let mut store = guest.new_store()?;
                guest.arm(&mut store);
                let started = Instant::now();
                let r = current.pre.instantiate(&mut store);
                let instance = guest.finish("instantiate", &store, started, r)?;
                *live = Some(Live {
                    store,
                    instance,
                    generation: current.generation,
                });
            }
            let l = live.as_mut().expect("just set");
            guest.arm(&mut l.store);
            let started = Instant::now();
            let r = f(&mut l.store, &l.instance);
            let failed = r.is_err();
            let out = guest.finish(op, &l.store, started, r);
            if failed {
                // A trapped instance must not be entered again.
                *live = None;
            }
            out
        })
        .await
    }
}

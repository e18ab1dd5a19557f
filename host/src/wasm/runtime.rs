//! The wasm runtime of one gateway: the sandbox settings, one [`Engine`]
//! with its epoch ticker, and the bound on guest calls running at once.
//!
//! A [`WasmRuntime`] is a value, created by `server::start` from the
//! configuration and handed to everything that loads a guest (the storage
//! and channel specs' `open`, the policy hook loader). Cloning it is cheap
//! (an `Arc`); every clone shares the engine and the bound. Nothing here is
//! process-global, so two gateways in one process (the tests, the
//! benchmarks) each run guests under their own settings.
//!
//! Invariants:
//! - The engine has epoch interruption on; a thread advances its epoch every
//!   [`TICK`] for as long as the engine lives (it holds only a weak
//!   reference), so every store can be given a deadline in ticks.
//! - The instance bound counts guest calls in flight (instances checked out
//!   or running a call), all guests of this runtime together; each guest
//!   also has its own bound, its share (`Guest::place`). A call holds its
//!   places until its instance is released or, for a provider call
//!   abandoned at its deadline, until the blocked thread returns.

use super::cache::DiskCache;
use super::dirs::GrantedDirs;
use super::settings::Settings;
use crate::model::{Error, Result};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use wasmtime::Engine;

/// Epoch tick: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// The engine, the settings, the instance bound, the compile cache and the
/// granted directories of the guests of one gateway.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    settings: Settings,
    instances: Arc<Semaphore>,
    /// Opened when the first guest loads; `None` when no cache is
    /// configured or it cannot be trusted.
    disk_cache: OnceLock<Option<DiskCache>>,
    dirs: Arc<GrantedDirs>,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

impl WasmRuntime {
    /// A runtime with its own engine and epoch ticker.
    pub fn new(settings: Settings) -> Result<WasmRuntime> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| Error::Internal(format!("wasm engine: {e}")))?;
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
            .map_err(|e| Error::Internal(format!("cannot start the wasm epoch ticker: {e}")))?;
        let instances = Arc::new(Semaphore::new(settings.max_instances.max(1)));
        Ok(WasmRuntime {
            inner: Arc::new(Inner {
                engine,
                settings,
                instances,
                disk_cache: OnceLock::new(),
                dirs: Arc::default(),
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The compile cache, when there is one that can be trusted.
    pub(crate) fn disk_cache(&self) -> Option<&DiskCache> {
        let dir = self.inner.settings.cache_dir.as_deref();
        self.inner.disk_cache.get_or_init(|| dir.and_then(DiskCache::open)).as_ref()
    }

    /// The directories this runtime's guests hold.
    pub(crate) fn dirs(&self) -> &Arc<GrantedDirs> {
        &self.inner.dirs
    }

    /// The bound on guest calls in flight.
    pub(crate) fn instances(&self) -> &Arc<Semaphore> {
        &self.inner.instances
    }
}

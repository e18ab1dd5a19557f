//! The sandbox settings every guest of a gateway runs under (from the
//! `STATEGATE_WASM_*` options). Read by the configuration whether or not
//! this binary was built with the `wasm` feature.

use std::path::PathBuf;
use std::time::Duration;

/// Sandbox settings (from the `STATEGATE_WASM_*` options).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Wall-clock budget of one guest call.
    pub call_timeout: Duration,
    /// Memory cap of one instance: all its linear memories together.
    pub memory_bytes: usize,
    /// Byte quota of a guest's `grants.dir`.
    pub disk_bytes: u64,
    /// Guest calls in flight at once, all guests together.
    pub max_instances: usize,
    /// Guest calls in flight at once for one guest: its share of
    /// `max_instances`, so a guest whose calls block cannot take the places
    /// the others need.
    pub max_instances_per_guest: usize,
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
            disk_bytes: 1 << 30,
            max_instances: 32,
            max_instances_per_guest: 8,
            cache_dir: None,
            reload_interval: Duration::from_secs(1),
        }
    }
}

//! The wasm host of a binary built without the `wasm` feature (no
//! wasmtime, no compiler): the same settings and runtime value, so the
//! configuration and start-up read the same, but no guest can be loaded.
//! A wasm storage or channel provider is refused when the configuration is
//! read (`model::spec`), and policy hooks when the auth chain is built
//! (`auth::hooks`), each naming the feature that builds them in.

mod settings;

pub use settings::Settings;

/// Stands for the runtime guests would run in; holds only its settings.
#[derive(Debug, Clone)]
pub struct WasmRuntime {
    _settings: Settings,
}

impl WasmRuntime {
    pub fn new(settings: Settings) -> crate::model::Result<WasmRuntime> {
        Ok(WasmRuntime { _settings: settings })
    }
}

/// The per-guest metrics: none without guests.
pub mod metrics {
    pub fn register(_registry: &prometheus::Registry) {}
}

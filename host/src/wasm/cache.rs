//! Compiling a component, through the on-disk compile cache when the
//! runtime has one (`STATEGATE_WASM_CACHE_DIR`).
//!
//! Invariants:
//! - An entry is keyed by the SHA-256 of the `.wasm` file it was compiled
//!   from; the same bytes give the same component whichever guest loads
//!   them.
//! - An entry that cannot be used is never fatal: the component is compiled
//!   again and the entry rewritten.
//! - Entries are written aside and renamed into place, so a reader never
//!   sees half an entry.

use super::WasmRuntime;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// The SHA-256 of a `.wasm` file, as the cache and the logs name it.
pub(super) fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compiles a component; returns it with the hash of its bytes.
pub(super) fn compile(runtime: &WasmRuntime, bytes: &[u8]) -> Result<(Component, String), String> {
    let hash = hash(bytes);
    let engine = runtime.engine();
    let cache = &runtime.settings().cache_dir;
    if let Some(dir) = cache {
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
    if let Some(dir) = cache {
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

//! How a guest is configured: the typed object of a wasm storage or channel
//! provider and of a policy hook,
//! `{"path":…,"guest":…,"config":{…},"grants":{…},"limits":{…},"instances":N}`
//! (`instances` for providers only).
//!
//! [`GuestConfig`] is what the configuration says, parsed once when the
//! configuration is read, with unknown keys refused (a typo such as
//! `"grant"` stops the start instead of silently granting nothing).
//! [`GuestSpec`] is the same guest with the runtime's defaults filled in:
//! what the host loads.

use super::{Grants, Settings};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A guest object as written in the configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// The `.wasm` component file.
    pub path: PathBuf,
    /// The guest's name in errors, logs and metrics (default: the file's stem).
    #[serde(default)]
    pub guest: Option<String>,
    /// Free-form settings the guest reads through the host's `config` call.
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: Map<String, Value>,
    /// The capabilities granted beyond the host interface.
    #[serde(default, deserialize_with = "null_as_default")]
    pub grants: Grants,
    /// Per-guest overrides of the sandbox limits.
    #[serde(default, deserialize_with = "null_as_default")]
    pub limits: GuestLimits,
    /// Providers only: how many instances may serve calls side by side,
    /// overriding what the guest's `max-instances` says (1 for a 0.1.0
    /// guest): for a guest that keeps no state in its instance. Bounded by
    /// `STATEGATE_WASM_MAX_INSTANCES_PER_GUEST`.
    #[serde(default)]
    pub instances: Option<std::num::NonZeroUsize>,
}

/// `limits` of a guest: each overrides the runtime's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestLimits {
    /// Time limit of one call (default `STATEGATE_WASM_CALL_TIMEOUT_MS`).
    pub timeout_ms: Option<NonZeroU64>,
    /// Memory cap of one instance, all its linear memories together
    /// (default `STATEGATE_WASM_MEMORY_MB`).
    pub memory_mb: Option<NonZeroU64>,
    /// Byte quota of `grants.dir` (default `STATEGATE_WASM_DISK_MB`).
    pub disk_mb: Option<NonZeroU64>,
}

impl GuestConfig {
    /// A guest given by its file alone, named `name`.
    pub fn at(path: impl Into<PathBuf>, name: impl Into<String>) -> GuestConfig {
        GuestConfig {
            path: path.into(),
            guest: Some(name.into()),
            config: Map::new(),
            grants: Grants::default(),
            limits: GuestLimits::default(),
            instances: None,
        }
    }

    /// The guest to load: this configuration with the runtime's limits
    /// filled in where it sets none.
    pub fn spec(&self, s: &Settings) -> GuestSpec {
        let name = match &self.guest {
            Some(n) => n.clone(),
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "guest".into()),
        };
        GuestSpec {
            name,
            path: self.path.clone(),
            config: self.config.clone(),
            grants: Arc::new(self.grants.clone()),
            call_timeout: self.limits.timeout_ms.map_or(s.call_timeout, |ms| Duration::from_millis(ms.get())),
            memory_bytes: self.limits.memory_mb.map_or(s.memory_bytes, |mb| (mb.get() as usize) << 20),
            disk_bytes: self.limits.disk_mb.map_or(s.disk_bytes, |mb| mb.get().saturating_mul(1 << 20)),
            instances: self.instances.map(|n| n.get()),
        }
    }
}

/// A guest as loaded: its configuration with every default resolved.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// For errors, logs and metrics.
    pub name: String,
    pub path: PathBuf,
    pub config: Map<String, Value>,
    /// Shared with every store's HTTP gate.
    pub grants: Arc<Grants>,
    pub call_timeout: Duration,
    pub memory_bytes: usize,
    pub disk_bytes: u64,
    /// The guest object's `instances` (providers only).
    pub instances: Option<usize>,
}

/// `null` reads as the field's default, as an absent field does.
fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_typo_is_refused_naming_the_key_and_the_known_ones() {
        let err = serde_json::from_value::<GuestConfig>(json!({"path": "x.wasm", "grant": {}})).unwrap_err().to_string();
        assert!(err.contains("unknown field `grant`") && err.contains("`grants`"), "{err}");
        let err = serde_json::from_value::<GuestConfig>(json!({"path": "x.wasm", "limits": {"timeout": 5}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `timeout`") && err.contains("timeout_ms"), "{err}");
        let err = serde_json::from_value::<GuestConfig>(json!({"path": "x.wasm", "limits": {"memory_mb": 0}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonzero"), "{err}");
        let err = serde_json::from_value::<GuestConfig>(json!({"grants": {}})).unwrap_err().to_string();
        assert!(err.contains("missing field `path`"), "{err}");
    }

    #[test]
    fn defaults_fill_what_the_guest_leaves_out() {
        let c: GuestConfig = serde_json::from_value(json!({"path": "dir/fs_storage.wasm", "config": null,
            "grants": {"dir": "/tmp/x"}, "limits": {"timeout_ms": 250}}))
        .unwrap();
        let settings = Settings {
            memory_bytes: 3 << 20,
            ..Settings::default()
        };
        let spec = c.spec(&settings);
        assert_eq!(spec.name, "fs_storage");
        assert_eq!(spec.call_timeout, Duration::from_millis(250));
        assert_eq!(spec.memory_bytes, 3 << 20);
        assert_eq!(spec.grants.dir.as_deref(), Some(std::path::Path::new("/tmp/x")));
    }
}

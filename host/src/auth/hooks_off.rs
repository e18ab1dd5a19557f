//! Per-tenant policy hooks in a binary built without the `wasm` feature:
//! hooks are wasm components, so none can run. An empty
//! `STATEGATE_POLICY_HOOKS` is no hook, as with the feature; a set one
//! fails the start, naming the feature, rather than being ignored (a
//! tenant's hook that silently did not run would let through what it denies).

use super::PolicyInput;
use crate::model::{Error, Result};
use crate::wasm::WasmRuntime;
use serde_json::Value;
use std::sync::Arc;

/// No value exists: there is never a hook to call.
pub enum PolicyHooks {}

impl PolicyHooks {
    pub async fn from_config(text: &str, _runtime: &WasmRuntime) -> Result<Option<Arc<PolicyHooks>>> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        Err(Error::invalid(
            "STATEGATE_POLICY_HOOKS",
            "policy hooks are wasm components, and this binary was built without them; rebuild with `--features wasm`",
        ))
    }

    pub async fn authorize_request(&self, _input: &PolicyInput) -> Result<()> {
        match *self {}
    }

    pub async fn authorize_response(&self, _input: &PolicyInput) -> Result<Option<Value>> {
        match *self {}
    }
}

//! Per-tenant policy hooks: wasm components of the `policy-hook` world,
//! chosen by the domain a call touches (`PolicyInput::domain`: the request's
//! domain, or the domain of what is returned when the request names none,
//! as `EventService.Get` by id) and run after the Rego policies.
//!
//! `STATEGATE_POLICY_HOOKS` is either
//! - a JSON object mapping a domain (or `"*"` for every domain without its
//!   own hook) to a `.wasm` path or to a guest object
//!   `{"path":…,"config":{…},"grants":{…},"limits":{…}}`, or
//! - a directory: `<domain>.wasm` serves that domain, `_default.wasm` every
//!   other one; files may be added, replaced or removed while running.
//!
//! Each hook runs in instances of its own (a few warm ones are reused for
//! speed; one that failed is discarded), so nothing leaks between tenants.
//! A hook runs on the request's task (see [`crate::wasm::AsyncWorld`]). A
//! hook that traps, times out, exceeds its memory or uses a capability it
//! was not granted fails only that call.
//!
//! Loading a hook compiles a component (up to seconds for a Python guest),
//! so it never runs on a request's task: it runs on the blocking pool, once
//! per file however many calls wait for it (single flight).

use super::PolicyInput;
use crate::model::{Denial, Error, Result};
use crate::wasm::versions::policy_types::{Decision, ResponseDecision};
use crate::wasm::{Guest, GuestConfig, PolicyPre, WasmRuntime};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub type PolicyGuest = Guest<PolicyPre>;

pub struct PolicyHooks {
    source: Source,
}

enum Source {
    Map(HashMap<String, Arc<PolicyGuest>>),
    Dir {
        dir: PathBuf,
        /// What the hooks, loaded on first use, run in.
        runtime: WasmRuntime,
        /// One cell per file stem: the first call for a stem loads it, the
        /// others wait for that load; a failed load leaves the cell empty,
        /// so the next call tries again.
        loaded: Mutex<HashMap<String, Arc<OnceCell<Arc<PolicyGuest>>>>>,
    },
}

const DEFAULT_FILE: &str = "_default";

impl PolicyHooks {
    /// From the `STATEGATE_POLICY_HOOKS` text; `None` when empty. Hooks run
    /// in `runtime`. Hooks of a map are loaded now, on the blocking pool (a
    /// broken one fails start-up).
    pub async fn from_config(text: &str, runtime: &WasmRuntime) -> Result<Option<Arc<PolicyHooks>>> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        const FIELD: &str = "STATEGATE_POLICY_HOOKS";
        let source = if text.starts_with('{') {
            let map: Map<String, Value> =
                serde_json::from_str(text).map_err(|e| Error::invalid(FIELD, format!("not a JSON object: {e}")))?;
            let mut guests = HashMap::new();
            for (domain, v) in map {
                let config = match v {
                    Value::String(path) => GuestConfig::at(path, format!("policy:{domain}")),
                    object @ Value::Object(_) => {
                        let mut c: GuestConfig = serde_json::from_value(object)
                            .map_err(|e| Error::invalid(FIELD, format!("hook of {domain:?}: {e}")))?;
                        if c.instances.is_some() {
                            return Err(Error::invalid(
                                FIELD,
                                format!("hook of {domain:?}: `instances` is for providers; a hook's calls each lease an instance of their own"),
                            ));
                        }
                        c.guest.get_or_insert_with(|| format!("policy:{domain}"));
                        c
                    }
                    _ => return Err(Error::invalid(FIELD, format!("hook of {domain:?} must be a path or an object"))),
                };
                guests.insert(domain, load(runtime, config).await?);
            }
            Source::Map(guests)
        } else {
            let dir = PathBuf::from(text);
            if !dir.is_dir() {
                return Err(Error::invalid(FIELD, format!("{} is not a directory (nor a JSON object)", dir.display())));
            }
            Source::Dir {
                dir,
                runtime: runtime.clone(),
                loaded: Mutex::default(),
            }
        };
        Ok(Some(Arc::new(PolicyHooks { source })))
    }

    /// Builds hooks from a map of domain → guest (for embedding and tests).
    pub fn from_guests(guests: HashMap<String, Arc<PolicyGuest>>) -> Arc<PolicyHooks> {
        Arc::new(PolicyHooks {
            source: Source::Map(guests),
        })
    }

    /// The hook serving a domain, if any.
    pub async fn guest_for(&self, domain: Option<&str>) -> Result<Option<Arc<PolicyGuest>>> {
        match &self.source {
            Source::Map(m) => Ok(domain.and_then(|d| m.get(d)).or_else(|| m.get("*")).map(Arc::clone)),
            Source::Dir { dir, runtime, loaded } => {
                let own = domain.filter(|d| !d.contains(['/', '\\']) && !d.starts_with('.') && *d != DEFAULT_FILE);
                for stem in own.into_iter().chain([DEFAULT_FILE]) {
                    let path = dir.join(format!("{stem}.wasm"));
                    if !path.is_file() {
                        continue;
                    }
                    let cell = loaded.lock().unwrap().entry(stem.to_owned()).or_default().clone();
                    let guest = cell
                        .get_or_try_init(|| load(runtime, GuestConfig::at(path, format!("policy:{stem}"))))
                        .await
                        .map_err(|e| Error::Unavailable(format!("policy hook for {stem:?} cannot be loaded: {e}")))?;
                    return Ok(Some(guest.clone()));
                }
                Ok(None)
            }
        }
    }

    /// Request hook: `PermissionDenied` (naming the hook) to refuse.
    pub async fn authorize_request(&self, input: &PolicyInput) -> Result<()> {
        let Some(guest) = self.guest_for(tenant(input)).await? else {
            return Ok(());
        };
        let doc = serde_json::to_string(input).map_err(Error::internal)?;
        let decision = guest
            .call("authorize-request", move |store, hook| {
                Box::pin(async move { hook.authorize_request(store, &doc).await })
            })
            .await?;
        match decision {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(Error::denied(Denial::Hook, format!("{}: {reason}", guest.name()))),
        }
    }

    /// Response hook on `input.response`: `Ok(None)` unchanged,
    /// `Ok(Some(v))` redacted, `PermissionDenied` withheld.
    pub async fn authorize_response(&self, input: &PolicyInput) -> Result<Option<Value>> {
        let Some(guest) = self.guest_for(tenant(input)).await? else {
            return Ok(None);
        };
        let doc = serde_json::to_string(input).map_err(Error::internal)?;
        let decision = guest
            .call("authorize-response", move |store, hook| {
                Box::pin(async move { hook.authorize_response(store, &doc).await })
            })
            .await?;
        match decision {
            ResponseDecision::Allow => Ok(None),
            ResponseDecision::Deny(reason) => Err(Error::denied(Denial::Hook, format!("{}: {reason}", guest.name()))),
            ResponseDecision::Redact(paths) => {
                let mut response = input.response.as_deref().cloned().unwrap_or(Value::Null);
                let paths: Vec<Vec<&str>> = paths.iter().map(|p| p.split('.').collect()).collect();
                redact(&mut response, &paths);
                Ok(Some(response))
            }
        }
    }
}

/// Compiles a hook on the blocking pool: never on a request's task.
async fn load(runtime: &WasmRuntime, config: GuestConfig) -> Result<Arc<PolicyGuest>> {
    let spec = config.spec(runtime.settings());
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || Guest::load(&runtime, spec))
        .await
        .map_err(|e| Error::internal(format!("loading a policy hook: {e}")))?
}

/// The tenant of a call: the domain it touches (none for calls that name
/// no domain and return nothing yet, which the default hook serves).
fn tenant(input: &PolicyInput) -> Option<&str> {
    input.domain.as_deref().filter(|d| !d.is_empty() && *d != "*")
}

/// Removes the paths from every object under a `values` key.
pub fn redact(v: &mut Value, paths: &[Vec<&str>]) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if k == "values"
                    && let Value::Object(values) = child
                {
                    for p in paths {
                        remove_path(values, p);
                    }
                }
                redact(child, paths);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| redact(c, paths)),
        _ => {}
    }
}

fn remove_path(o: &mut Map<String, Value>, path: &[&str]) {
    match path {
        [] => {}
        [last] => {
            o.remove(*last);
        }
        [first, rest @ ..] => {
            if let Some(Value::Object(inner)) = o.get_mut(*first) {
                remove_path(inner, rest);
            }
        }
    }
}

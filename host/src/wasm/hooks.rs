//! Per-tenant policy hooks: wasm components of the `policy-hook` world,
//! chosen by the request's domain and run after the Rego policies.
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
//! A hook runs on the request's task (see [`super::AsyncWorld`]). A hook
//! that traps, times out, exceeds its memory or uses a capability it was
//! not granted fails only that call.

use super::bindings::policy::PolicyHookPre;
use super::bindings::policy::exports::stategate::gateway::policy::{Decision, ResponseDecision};
use super::{Ctx, Guest, GuestSpec};
use crate::auth::PolicyInput;
use crate::model::{Error, Result};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub type PolicyGuest = Guest<PolicyHookPre<Ctx>>;

pub struct PolicyHooks {
    source: Source,
}

enum Source {
    Map(HashMap<String, Arc<PolicyGuest>>),
    Dir {
        dir: PathBuf,
        loaded: Mutex<HashMap<String, Arc<PolicyGuest>>>,
    },
}

const DEFAULT_FILE: &str = "_default";

impl PolicyHooks {
    /// From the `STATEGATE_POLICY_HOOKS` text; `None` when empty. Hooks of a
    /// map are loaded now (a broken one fails start-up).
    pub fn from_config(text: &str) -> Result<Option<Arc<PolicyHooks>>> {
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
                let mut spec = match v {
                    Value::String(path) => {
                        let mut m = Map::new();
                        m.insert("path".into(), Value::String(path));
                        m
                    }
                    Value::Object(m) => m,
                    _ => return Err(Error::invalid(FIELD, format!("hook of {domain:?} must be a path or an object"))),
                };
                spec.entry("guest").or_insert_with(|| Value::String(format!("policy:{domain}")));
                let spec = GuestSpec::from_json(FIELD, &spec)?;
                guests.insert(domain, Guest::load(spec)?);
            }
            Source::Map(guests)
        } else {
            let dir = PathBuf::from(text);
            if !dir.is_dir() {
                return Err(Error::invalid(FIELD, format!("{} is not a directory (nor a JSON object)", dir.display())));
            }
            Source::Dir {
                dir,
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
    pub fn guest_for(&self, domain: Option<&str>) -> Result<Option<Arc<PolicyGuest>>> {
        match &self.source {
            Source::Map(m) => Ok(domain.and_then(|d| m.get(d)).or_else(|| m.get("*")).map(Arc::clone)),
            Source::Dir { dir, loaded } => {
                let own = domain.filter(|d| !d.contains(['/', '\\']) && !d.starts_with('.') && *d != DEFAULT_FILE);
                for stem in own.into_iter().chain([DEFAULT_FILE]) {
                    let path = dir.join(format!("{stem}.wasm"));
                    if !path.is_file() {
                        continue;
                    }
                    if let Some(g) = loaded.lock().unwrap().get(stem) {
                        return Ok(Some(g.clone()));
                    }
                    let mut spec = Map::new();
                    spec.insert("path".into(), Value::String(path.to_string_lossy().into_owned()));
                    spec.insert("guest".into(), Value::String(format!("policy:{stem}")));
                    let spec = GuestSpec::from_json("STATEGATE_POLICY_HOOKS", &spec)?;
                    let guest = Guest::load(spec).map_err(|e| {
                        Error::Unavailable(format!("policy hook for {stem:?} cannot be loaded: {e}"))
                    })?;
                    loaded.lock().unwrap().insert(stem.to_owned(), guest.clone());
                    return Ok(Some(guest));
                }
                Ok(None)
            }
        }
    }

    /// Request hook: `PermissionDenied` (naming the hook) to refuse.
    pub async fn authorize_request(&self, input: &PolicyInput) -> Result<()> {
        let Some(guest) = self.guest_for(domain_of(input))? else {
            return Ok(());
        };
        let doc = serde_json::to_string(input).map_err(Error::internal)?;
        let mut lease = guest.lease().await?;
        let (store, hook) = lease.parts();
        let r = hook.stategate_gateway_policy().call_authorize_request(store, &doc).await;
        let decision = guest.give_back("authorize-request", lease, r)?;
        match decision {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(Error::PermissionDenied(format!("{}: {reason}", guest.name()))),
        }
    }

    /// Response hook on `input.response`: `Ok(None)` unchanged,
    /// `Ok(Some(v))` redacted, `PermissionDenied` withheld.
    pub async fn authorize_response(&self, input: &PolicyInput) -> Result<Option<Value>> {
        let Some(guest) = self.guest_for(domain_of(input))? else {
            return Ok(None);
        };
        let doc = serde_json::to_string(input).map_err(Error::internal)?;
        let mut lease = guest.lease().await?;
        let (store, hook) = lease.parts();
        let r = hook.stategate_gateway_policy().call_authorize_response(store, &doc).await;
        let decision = guest.give_back("authorize-response", lease, r)?;
        match decision {
            ResponseDecision::Allow => Ok(None),
            ResponseDecision::Deny(reason) => Err(Error::PermissionDenied(format!("{}: {reason}", guest.name()))),
            ResponseDecision::Redact(paths) => {
                let mut response = input.response.clone().unwrap_or(Value::Null);
                let paths: Vec<Vec<&str>> = paths.iter().map(|p| p.split('.').collect()).collect();
                redact(&mut response, &paths);
                Ok(Some(response))
            }
        }
    }
}

/// The tenant of a call: the request's `domain` (none for calls without one,
/// which the default hook serves).
fn domain_of(input: &PolicyInput) -> Option<&str> {
    let body = &input.body;
    // On a streamed event the body is the event: its record is under `state`.
    let d = body.get("domain").or_else(|| body.get("state").and_then(|s| s.get("domain")));
    d.and_then(Value::as_str).filter(|d| !d.is_empty() && *d != "*")
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

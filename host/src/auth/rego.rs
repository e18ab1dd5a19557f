//! Rego policies (OPA's language, evaluated by `regorus`): a request policy
//! before the handler and a response policy on every message sent, both
//! answering `data.stategate.authz.allow` for the call's `PolicyInput`.
//!
//! Sources are the v0.5.0 base64 variables and policy files or directories
//! (every `*.rego` file in them, `*_test.rego` excepted). Files are watched
//! by polling their modification times: a changed set is compiled and
//! swapped in; one that does not compile is refused with the compiler's
//! message and the previous policy keeps serving. At start a policy that
//! does not compile stops the start.
//!
//! v0.5.0-era modules use Rego v0 syntax (`allow { … }`); each module is
//! parsed as Rego v1 first and, if that fails, as v0, so both work (and may
//! be mixed).

use crate::model::{Error, Result};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use regorus::{CompiledPolicy, Engine};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// The rule every policy answers.
pub const ENTRYPOINT: &str = "data.stategate.authz.allow";

/// Longest a policy may evaluate before the call is denied (a guard
/// against a pathological policy holding a thread).
const EVAL_TIME_LIMIT: Duration = Duration::from_secs(2);

/// Where a policy's modules come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A module given as text (the v0.5.0 base64 variables), named for errors.
    Inline { name: String, text: String },
    /// A `.rego` file, or a directory of them.
    Path(PathBuf),
}

/// A file's identity for change detection: path, modification time, length.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

pub struct Policy {
    /// "request" or "response": in logs and metrics.
    stage: &'static str,
    sources: Vec<Source>,
    current: ArcSwap<CompiledPolicy>,
    seen: Mutex<Fingerprint>,
    metrics: Arc<Metrics>,
}

impl Policy {
    /// Loads and compiles the sources; the error is the compiler's message.
    /// Starts the reload watcher when there are files to watch.
    pub fn open(stage: &'static str, sources: Vec<Source>, reload_every: Duration, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let (modules, fingerprint) = read_sources(&sources)?;
        let compiled = compile(&modules)?;
        let policy = Arc::new(Policy {
            stage,
            sources,
            current: ArcSwap::from_pointee(compiled),
            seen: Mutex::new(fingerprint),
            metrics,
        });
        if policy.sources.iter().any(|s| matches!(s, Source::Path(_))) {
            tokio::spawn(watch(Arc::downgrade(&policy), reload_every.max(Duration::from_millis(50))));
        }
        Ok(policy)
    }

    /// Evaluates the policy: `Ok` when `allow` is `true`; otherwise
    /// `PermissionDenied`. An evaluation error denies and is logged.
    pub fn check(&self, method: &str, input: regorus::Value) -> Result<()> {
        let policy = self.current.load();
        match policy.eval_with_input(input) {
            Ok(regorus::Value::Bool(true)) => Ok(()),
            Ok(_) => Err(Error::PermissionDenied(format!("{} policy denied {method}", self.stage))),
            Err(e) => {
                tracing::warn!(stage = self.stage, method, error = %e, "policy evaluation failed; denying");
                Err(Error::PermissionDenied(format!("{} policy could not be evaluated for {method}", self.stage)))
            }
        }
    }

    /// Reloads if any watched file changed. Returns whether a new policy
    /// was swapped in.
    pub fn reload_if_changed(&self) -> bool {
        let fingerprint = match fingerprint(&self.sources) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(stage = self.stage, error = %e, "cannot read policy files; keeping the current policy");
                return false;
            }
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == fingerprint {
                return false;
            }
            *seen = fingerprint;
        }
        let outcome = read_sources(&self.sources).and_then(|(modules, _)| compile(&modules));
        match outcome {
            Ok(compiled) => {
                self.current.store(Arc::new(compiled));
                self.metrics.policy_reloads.with_label_values(&[self.stage, "loaded"]).inc();
                tracing::info!(stage = self.stage, "policy reloaded");
                true
            }
            Err(e) => {
                self.metrics.policy_reloads.with_label_values(&[self.stage, "refused"]).inc();
                tracing::error!(stage = self.stage, error = %e, "changed policy refused; the previous policy keeps serving");
                false
            }
        }
    }
}

async fn watch(policy: Weak<Policy>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(policy) = policy.upgrade() else { return };
        // File reads and compilation are blocking work.
        let _ = tokio::task::spawn_blocking(move || policy.reload_if_changed()).await;
    }
}

/// The `.rego` files a path names (a directory: its files, recursively,
/// in name order; `*_test.rego` are OPA unit tests and are skipped).
fn rego_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            rego_files(&p, out)?;
        } else if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            out.push(p);
        }
    }
    Ok(())
}

fn fingerprint(sources: &[Source]) -> Result<Fingerprint, String> {
    let mut files = Vec::new();
    for s in sources {
        if let Source::Path(p) = s {
            rego_files(p, &mut files)?;
        }
    }
    Ok(files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (f, mtime, len)
        })
        .collect())
}

/// The modules (name, text) of the sources, with the files' fingerprint.
fn read_sources(sources: &[Source]) -> Result<(Vec<(String, String)>, Fingerprint), String> {
    let fingerprint = fingerprint(sources)?;
    let mut modules = Vec::new();
    for s in sources {
        match s {
            Source::Inline { name, text } => modules.push((name.clone(), text.clone())),
            Source::Path(p) => {
                let mut files = Vec::new();
                rego_files(p, &mut files)?;
                if files.is_empty() {
                    return Err(format!("{}: no .rego files", p.display()));
                }
                for f in files {
                    let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                    modules.push((f.display().to_string(), text));
                }
            }
        }
    }
    Ok((modules, fingerprint))
}

/// Compiles modules into a policy answering `ENTRYPOINT`. Each module is
/// parsed as Rego v1, else as v0; the error is the compiler's message.
pub fn compile(modules: &[(String, String)]) -> Result<CompiledPolicy, String> {
    // Compiled policies evaluate in engines of their own, which take the
    // process-wide limit.
    regorus::utils::limits::set_fallback_execution_timer_config(Some(regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: std::num::NonZeroU32::new(64).expect("non-zero"),
    }));
    let mut engine = Engine::new();
    for (name, text) in modules {
        engine.set_rego_v0(false);
        if let Err(v1) = engine.add_policy(name.clone(), text.clone()) {
            engine.set_rego_v0(true);
            if let Err(v0) = engine.add_policy(name.clone(), text.clone()) {
                let (v1, v0) = (v1.to_string(), v0.to_string());
                return Err(if v1 == v0 { v1 } else { format!("{v1}\n(as Rego v0: {v0})") });
            }
        }
    }
    let entry: regorus::Rc<str> = ENTRYPOINT.into();
    engine.compile_with_entrypoint(&entry).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(modules: &[(&str, &str)], input: serde_json::Value) -> bool {
        let modules: Vec<_> = modules.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        let p = compile(&modules).unwrap();
        matches!(p.eval_with_input(input.into()), Ok(regorus::Value::Bool(true)))
    }

    #[test]
    fn v0_and_v1_syntax_both_compile() {
        let v0 = "package stategate.authz\ndefault allow = false\nallow { input.claims.role == \"admin\" }\n";
        let v1 = "package stategate.authz\ndefault allow := false\nallow if input.claims.role == \"admin\"\n";
        for m in [v0, v1] {
            assert!(allow(&[("p.rego", m)], serde_json::json!({"claims": {"role": "admin"}})));
            assert!(!allow(&[("p.rego", m)], serde_json::json!({"claims": {"role": "guest"}})));
        }
    }

    #[test]
    fn compile_errors_carry_the_compiler_message() {
        let e = compile(&[("bad.rego".into(), "package stategate.authz\nallow if {".into())]).err().unwrap();
        assert!(e.contains("bad.rego"), "{e}");
    }

    #[test]
    fn policies_are_shareable_across_threads() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<CompiledPolicy>();
    }
}

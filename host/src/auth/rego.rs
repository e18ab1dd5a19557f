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
//!
//! Per call, a policy gets only the input fields its modules name, and of
//! the request and response messages only the parts they name (see
//! `input_scan`). A policy whose decisions depend on its input alone (no
//! clock, randomness or network) keeps them in a bounded cache keyed by
//! exactly that document (dropped with the policy on reload): the
//! evaluation, not the verification of the token, is what a request policy
//! costs, and a response policy that compares an event's domain with a
//! claim is evaluated once per caller and domain, not once per event and
//! subscriber.

use super::PolicyInput;
use super::input_scan::{self, Paths, Reads};
use crate::model::{Denial, Error, Result};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use lru::LruCache;
use regorus::{CompiledPolicy, Engine};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::num::NonZeroUsize;
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

/// Decisions kept per policy version (distinct callers × methods).
const DECISION_CACHE_ENTRIES: usize = 4096;

/// Inputs longer than this (as JSON) are evaluated but not cached, so the
/// cache stays within ~`DECISION_CACHE_ENTRIES` × this many bytes.
const DECISION_CACHE_MAX_KEY: usize = 2048;

/// A file's identity for change detection: path, modification time, length.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// One version of a policy: compiled, what it reads, its decisions so far.
struct Loaded {
    compiled: CompiledPolicy,
    reads: Reads,
    /// Input JSON → allowed; `None` when decisions may not be cached.
    decisions: Option<Mutex<LruCache<String, bool>>>,
}

impl Loaded {
    fn new(compiled: CompiledPolicy, reads: Reads) -> Loaded {
        let decisions = reads
            .cacheable()
            .then(|| Mutex::new(LruCache::new(NonZeroUsize::new(DECISION_CACHE_ENTRIES).expect("non-zero"))));
        Loaded { compiled, reads, decisions }
    }

    /// Allowed or not (`Err` inside: an evaluation error), and whether the
    /// answer came from the cache.
    fn decide(&self, input: &PolicyInput) -> Result<Decision> {
        let doc = serde_json::to_string(&Visible { input, reads: &self.reads }).map_err(Error::internal)?;
        let cache = self.decisions.as_ref().filter(|_| doc.len() <= DECISION_CACHE_MAX_KEY);
        if let Some(cache) = cache
            && let Some(allowed) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&doc)
        {
            return Ok(Decision { allowed: Ok(*allowed), cached: true });
        }
        let value = regorus::Value::from_json_str(&doc).map_err(Error::internal)?;
        let allowed = match self.compiled.eval_with_input(value) {
            Ok(v) => {
                let allowed = v == regorus::Value::Bool(true);
                if let Some(cache) = cache {
                    cache.lock().unwrap_or_else(|p| p.into_inner()).put(doc, allowed);
                }
                Ok(allowed)
            }
            Err(e) => Err(e.to_string()),
        };
        Ok(Decision { allowed, cached: false })
    }
}

/// One answer of a policy.
#[derive(Debug)]
struct Decision {
    /// Allowed or not; `Err` is an evaluation error.
    allowed: std::result::Result<bool, String>,
    /// Whether it came from the decision cache.
    cached: bool,
}

/// The input fields a policy reads, serialized as its `input` document;
/// of the messages, only the parts it reads.
struct Visible<'a> {
    input: &'a PolicyInput,
    reads: &'a Reads,
}

impl Serialize for Visible<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let (i, r) = (self.input, self.reads);
        let mut m = s.serialize_map(None)?;
        if r.reads("claims") {
            m.serialize_entry("claims", &i.claims)?;
        }
        if r.reads("method") {
            m.serialize_entry("method", &i.method)?;
        }
        if r.reads("metadata") {
            m.serialize_entry("metadata", &i.metadata)?;
        }
        if let Some(paths) = r.message("body") {
            m.serialize_entry("body", &Part { value: &i.body, paths })?;
        }
        if r.reads("client_stream") {
            m.serialize_entry("client_stream", &i.client_stream)?;
        }
        if r.reads("server_stream") {
            m.serialize_entry("server_stream", &i.server_stream)?;
        }
        if let (Some(resp), Some(paths)) = (i.response.as_deref(), r.message("response")) {
            m.serialize_entry("response", &Part { value: resp, paths })?;
        }
        m.end()
    }
}

/// The parts of a message a policy reads. Below a member read only by
/// `.name` steps, a value that is not an object has no members, so any
/// such step is undefined; it is given as `null` when it is an array (which
/// may be large) and as itself otherwise, which reads the same.
struct Part<'a> {
    value: &'a serde_json::Value,
    paths: &'a Paths,
}

impl Serialize for Part<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde_json::Value;
        match (self.paths, self.value) {
            (Paths::All, v) => v.serialize(s),
            (Paths::Members(members), Value::Object(o)) => {
                let mut m = s.serialize_map(None)?;
                for (name, paths) in members {
                    if let Some(value) = o.get(name) {
                        m.serialize_entry(name, &Part { value, paths })?;
                    }
                }
                m.end()
            }
            (Paths::Members(_), Value::Array(_)) => s.serialize_unit(),
            (Paths::Members(_), v) => v.serialize(s),
        }
    }
}

pub struct Policy {
    /// "request" or "response": in logs and metrics.
    stage: &'static str,
    sources: Vec<Source>,
    current: ArcSwap<Loaded>,
    seen: Mutex<Fingerprint>,
    metrics: Arc<Metrics>,
}

impl Policy {
    /// Loads and compiles the sources; the error is the compiler's message.
    /// Starts the reload watcher when there are files to watch.
    pub fn open(stage: &'static str, sources: Vec<Source>, reload_every: Duration, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let (modules, fingerprint) = read_sources(&sources)?;
        let loaded = load(&modules)?;
        let policy = Arc::new(Policy {
            stage,
            sources,
            current: ArcSwap::from_pointee(loaded),
            seen: Mutex::new(fingerprint),
            metrics,
        });
        if policy.sources.iter().any(|s| matches!(s, Source::Path(_))) {
            tokio::spawn(watch(Arc::downgrade(&policy), reload_every.max(Duration::from_millis(50))));
        }
        Ok(policy)
    }

    /// Whether the current version of the policy reads `body` (when not,
    /// callers may leave it `Null`).
    pub fn reads_body(&self) -> bool {
        self.current.load().reads.reads("body")
    }

    /// Evaluates the policy: `Ok` when `allow` is `true`; otherwise
    /// `PermissionDenied`. An evaluation error denies and is logged.
    pub fn check(&self, input: &PolicyInput) -> Result<()> {
        let policy = self.current.load();
        let method = input.method.as_str();
        // A body left out because the policy did not read it, and a reload
        // in between to one that does: do not decide on a missing body.
        if input.body.is_null() && policy.reads.reads("body") {
            return Err(Error::Unavailable(format!("the {} policy changed during this call; retry", self.stage)));
        }
        let decision = policy.decide(input)?;
        let source = if decision.cached { "cached" } else { "evaluated" };
        self.metrics.policy_decisions.with_label_values(&[self.stage, source]).inc();
        match decision.allowed {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::denied(Denial::Policy, format!("{} policy denied {method}", self.stage))),
            Err(e) => {
                tracing::warn!(stage = self.stage, method, error = %e, "policy evaluation failed; denying");
                Err(Error::denied(Denial::PolicyError, format!("{} policy could not be evaluated for {method}", self.stage)))
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
        let outcome = read_sources(&self.sources).and_then(|(modules, _)| load(&modules));
        match outcome {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
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

/// Compiles modules and finds what they read.
fn load(modules: &[(String, String)]) -> Result<Loaded, String> {
    let compiled = compile(modules)?;
    Ok(Loaded::new(compiled, input_scan::scan(modules.iter().map(|(_, text)| text.as_str()))))
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

    fn input(sub: &str, method: &str, body: serde_json::Value) -> PolicyInput {
        PolicyInput {
            claims: serde_json::json!({"sub": sub}).as_object().unwrap().clone(),
            method: method.into(),
            metadata: Default::default(),
            body: Arc::new(body),
            client_stream: false,
            server_stream: false,
            response: None,
            domain: None,
        }
    }

    fn loaded(text: &str) -> Loaded {
        load(&[("p.rego".into(), text.into())]).unwrap()
    }

    #[test]
    fn cached_decisions_stay_per_caller_and_method() {
        let p = loaded("package stategate.authz\nimport rego.v1\nallow if { input.claims.sub == \"a\"; input.method == \"/m\" }\n");
        assert!(p.decisions.is_some(), "reads only claims and method: cacheable");
        for _ in 0..2 {
            assert_eq!(p.decide(&input("a", "/m", serde_json::Value::Null)).unwrap().allowed, Ok(true));
            assert_eq!(p.decide(&input("b", "/m", serde_json::Value::Null)).unwrap().allowed, Ok(false));
            assert_eq!(p.decide(&input("a", "/n", serde_json::Value::Null)).unwrap().allowed, Ok(false));
        }
        assert_eq!(p.decisions.as_ref().unwrap().lock().unwrap().len(), 3);
    }

    #[test]
    fn a_policy_reading_part_of_the_body_sees_that_part_and_caches_by_it() {
        let p = loaded("package stategate.authz\nimport rego.v1\nallow if input.body.key != \"secret\"\n");
        assert!(p.decisions.is_some());
        let big = |key: &str| serde_json::json!({"key": key, "values": {"blob": "x".repeat(100_000)}});
        assert_eq!(p.decide(&input("a", "/m", big("k"))).unwrap().allowed, Ok(true));
        assert_eq!(p.decide(&input("a", "/m", big("secret"))).unwrap().allowed, Ok(false));
        assert_eq!(p.decide(&input("a", "/m", big("secret"))).unwrap().allowed, Ok(false));
        // The values were left out, so each document was small enough to keep.
        assert_eq!(p.decisions.as_ref().unwrap().lock().unwrap().len(), 2);
    }

    #[test]
    fn a_response_policy_on_the_domain_decides_once_per_caller_and_domain() {
        let p = loaded(
            "package stategate.authz\nimport rego.v1\nallow if input.response.state.domain == input.claims.sub\n",
        );
        let event = |domain: &str, n: u64| {
            let mut i = input("acme", "/stategate.EventService/Stream", serde_json::Value::Null);
            let body = Arc::new(serde_json::json!({"id": n.to_string(), "state": {"domain": domain, "key": n.to_string(), "values": {"n": n}}}));
            i.body = body.clone();
            i.response = Some(body);
            i
        };
        for n in 0..50 {
            assert_eq!(p.decide(&event("acme", n)).unwrap().allowed, Ok(true));
            assert_eq!(p.decide(&event("other", n)).unwrap().allowed, Ok(false));
        }
        assert_eq!(p.decisions.as_ref().unwrap().lock().unwrap().len(), 2, "one per domain, whatever the event");
    }

    #[test]
    fn parts_below_a_value_that_is_not_an_object_read_as_undefined() {
        let p = loaded("package stategate.authz\nimport rego.v1\ndefault allow := true\nallow := false if input.body.tags.x\n");
        for body in [serde_json::json!({"tags": [1, 2]}), serde_json::json!({"tags": "s"}), serde_json::json!({"tags": {"y": 1}})] {
            assert_eq!(p.decide(&input("a", "/m", body.clone())).unwrap().allowed, Ok(true), "{body}");
        }
        assert_eq!(p.decide(&input("a", "/m", serde_json::json!({"tags": {"x": true}}))).unwrap().allowed, Ok(false));
    }

    #[test]
    fn a_body_left_out_is_never_decided_on() {
        let text = "package stategate.authz\nimport rego.v1\nallow if input.body.key != \"secret\"\n";
        let source = Source::Inline { name: "p.rego".into(), text: text.into() };
        let p = Policy::open("request", vec![source], Duration::from_secs(60), Arc::new(Metrics::new())).unwrap();
        assert!(p.reads_body());
        // `Null`: the gateway skipped the body (the policy read none when
        // the call came in); the policy now reading it must not see "no key".
        let e = p.check(&input("a", "/m", serde_json::Value::Null)).unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        assert!(p.check(&input("a", "/m", serde_json::json!({"key": "k"}))).is_ok());
    }

    #[test]
    fn policies_are_shareable_across_threads() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<CompiledPolicy>();
    }
}

//! `stategate guest check FILE`: what a guest author runs after each
//! build. Loads the component as the gateway would (same sandbox defaults,
//! no compile cache left behind), says which world it implements (from its
//! exports) and which contract version it was built against, then calls it
//! with sample input and prints each answer and how long it took. Exits
//! with an error when the component is not a guest of any world or a call
//! fails, so it serves as a smoke test in a guest's CI.

use super::CheckArgs;
use crate::model::{Change, EventKind, Expect, RecordRef, Topic};
use crate::wasm::{ChannelPre, Guest, GuestConfig, PolicyPre, Settings, StoragePre, WasmRuntime, World};
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const DOMAIN: &str = "guest-check";

/// A temporary directory (compile cache, a storage guest's data), removed
/// when the check ends.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("stategate-guest-check-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn took(since: Instant) -> String {
    format!("{:.1} ms", since.elapsed().as_secs_f64() * 1000.0)
}

fn object(flag: &str, text: Option<&str>) -> Result<Map<String, Value>> {
    match text {
        None => Ok(Map::new()),
        Some(t) => match serde_json::from_str(t) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => bail!("{flag} must be a JSON object"),
            Err(e) => bail!("{flag} is not JSON: {e}"),
        },
    }
}

pub async fn run(a: CheckArgs) -> Result<()> {
    let file = a.file.canonicalize().with_context(|| format!("{}", a.file.display()))?;
    let config = object("--config", a.config.as_deref())?;
    let mut grants = object("--grants", a.grants.as_deref())?;
    // A compile cache of its own, shared by the loads below, gone after.
    let scratch = Scratch::new()?;
    let settings = Settings {
        cache_dir: Some(scratch.path().join("cache")),
        reload_interval: Duration::ZERO,
        ..Settings::default()
    };
    let runtime = WasmRuntime::new(settings)?;

    let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
    let size = bytes.len();
    let started = Instant::now();
    // Through the (scratch) compile cache, so loading it as its world
    // below does not compile it again (a Python guest takes seconds).
    let rt = runtime.clone();
    let (component, _) = tokio::task::spawn_blocking(move || crate::wasm::cache::compile(&rt, &bytes))
        .await?
        .map_err(|e| anyhow!("{} is not a WebAssembly component this host can run: {e}", file.display()))?;
    println!("component  {} ({size} bytes), compiled in {}", file.display(), took(started));

    let ty = component.component_type();
    let engine = runtime.engine();
    let mut world = None;
    for (name, item) in ty.exports(engine) {
        let funcs: Vec<String> = match &item.ty {
            wasmtime::component::types::ComponentItem::ComponentInstance(i) => i
                .exports(engine)
                .filter(|(_, e)| matches!(e.ty, wasmtime::component::types::ComponentItem::ComponentFunc(_)))
                .map(|(f, _)| f.to_owned())
                .collect(),
            _ => vec![],
        };
        println!("export     {name}: {}", funcs.join(", "));
        for (interface, w) in [("storage", "storage-provider"), ("channel", "channel-provider"), ("policy", "policy-hook")] {
            if name.starts_with(&format!("stategate:gateway/{interface}@")) {
                world = Some(w);
            }
        }
    }
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    println!("imports    {}", imports.join(", "));
    let Some(world) = world else {
        bail!("{} exports none of stategate:gateway/storage, /channel or /policy: it is no stategate guest", file.display());
    };
    let http = imports.iter().any(|i| i.starts_with("wasi:http/outgoing-handler@"));

    if world == "storage-provider" && !grants.contains_key("dir") {
        let dir = scratch.path().join("data");
        println!("grants     dir = {} (a temporary directory; --grants to choose)", dir.display());
        grants.insert("dir".into(), json!(dir));
    }
    let guest = json!({"path": file, "config": config, "grants": grants});
    let guest_config: GuestConfig = serde_json::from_value(guest.clone()).map_err(|e| anyhow!("--config/--grants: {e}"))?;
    let spec = guest_config.spec(runtime.settings());
    let rt = runtime.clone();
    let started = Instant::now();
    let linked = tokio::task::spawn_blocking(move || -> crate::model::Result<&'static str> {
        Ok(match world {
            "storage-provider" => Guest::<StoragePre>::load(&rt, spec)?.current().pre.version(),
            "channel-provider" => Guest::<ChannelPre>::load(&rt, spec)?.current().pre.version(),
            _ => Guest::<PolicyPre>::load(&rt, spec)?.current().pre.version(),
        })
    })
    .await?
    .map_err(|e| anyhow!("{} does not implement the {world} world: {e}", file.display()))?;
    let variant = if http { format!("{world}-http") } else { world.to_owned() };
    println!("world      {variant} (stategate:gateway@{linked}), loaded in {}", took(started));

    let mut object = guest.as_object().cloned().expect("an object");
    object.insert("name".into(), json!("wasm"));
    match world {
        "storage-provider" => storage(&object, scratch.path(), &runtime).await,
        "channel-provider" => channel(&object, &runtime).await,
        _ => policy(guest_config, &runtime).await,
    }
}

fn sample_record() -> RecordRef {
    RecordRef::parse(DOMAIN, "sample", "k1").expect("a valid record")
}

fn claims() -> Map<String, Value> {
    json!({"sub": "guest-check"}).as_object().cloned().expect("an object")
}

fn values() -> Map<String, Value> {
    json!({"hello": "world", "n": 1}).as_object().cloned().expect("an object")
}

async fn storage(object: &Map<String, Value>, data: &Path, runtime: &WasmRuntime) -> Result<()> {
    let spec = crate::storage::StorageSpec::parse(&Value::Object(object.clone()).to_string())?;
    let s = spec.open(data, runtime).await.map_err(|e| anyhow!("opening the storage: {e}"))?;
    let t = Instant::now();
    let appended = s
        .append(crate::model::AppendRequest {
            id: uuid::Uuid::new_v4().to_string(),
            record: sample_record(),
            change: Change::Put(values().into()),
            expect: Expect::Any,
            kind: EventKind::Set,
            method: "/stategate.StateService/Set".into(),
            claims: claims(),
            time: crate::model::now_nanos(),
            idempotency: None,
        })
        .await
        .map_err(|e| anyhow!("append: {e}"))?;
    println!("call       append {DOMAIN}/sample/k1 -> seq {} version {} ({})", appended.event.seq, appended.event.version, took(t));
    let t = Instant::now();
    let state = s.get(&sample_record()).await.map_err(|e| anyhow!("get: {e}"))?;
    let shown = state.as_ref().map(|st| format!("version {} values {}", st.version, Value::Object(st.values.clone())));
    println!("call       get {DOMAIN}/sample/k1 -> {} ({})", shown.as_deref().unwrap_or("none"), took(t));
    if state.as_ref().map(|st| st.version) != Some(appended.event.version) {
        bail!("get did not return the state just appended");
    }
    // As of the append (get-at on a 0.3.0 guest, a replay of feed on an
    // older one).
    let t = Instant::now();
    let seq = appended.event.seq;
    let past = s.get_at(&sample_record(), Some(seq)).await.map_err(|e| anyhow!("get at seq {seq}: {e}"))?.value;
    let shown = past.as_ref().map(|st| format!("version {}", st.version));
    println!("call       get {DOMAIN}/sample/k1 at seq {seq} -> {} ({})", shown.as_deref().unwrap_or("none"), took(t));
    if past.as_ref().map(|st| st.version) != Some(appended.event.version) {
        bail!("get at the append's seq did not return the state appended");
    }
    let t = Instant::now();
    let head = s.head().await.map_err(|e| anyhow!("head: {e}"))?;
    println!("call       head -> {head} ({})", took(t));
    let t = Instant::now();
    s.ping().await.map_err(|e| anyhow!("ping: {e}"))?;
    println!("call       ping -> ok ({})", took(t));
    println!("ok");
    Ok(())
}

async fn channel(object: &Map<String, Value>, runtime: &WasmRuntime) -> Result<()> {
    let spec = crate::channel::ChannelSpec::parse(&Value::Object(object.clone()).to_string())?;
    let t = Instant::now();
    let c = spec.open(runtime).await.map_err(|e| anyhow!("opening the channel (tail): {e}"))?;
    println!("call       tail -> ok ({})", took(t));
    let mut sub = c.subscribe(&Topic { domain: Some(DOMAIN.into()), ty: None }).await?;
    let record = sample_record();
    let event = crate::model::Event {
        id: uuid::Uuid::new_v4().to_string(),
        seq: 1,
        record,
        values: Some(values().into()),
        claims: claims(),
        time: crate::model::now_nanos(),
        version: 1,
        kind: EventKind::Set,
        method: "/stategate.StateService/Set".into(),
    };
    let t = Instant::now();
    c.publish(&event).await.map_err(|e| anyhow!("publish: {e}"))?;
    println!("call       publish {DOMAIN}/sample/k1 -> ok ({})", took(t));
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .map_err(|_| anyhow!("poll: the published event did not come back within 10 s"))?
        .ok_or_else(|| anyhow!("poll: the subscription ended"))?
        .map_err(|e| anyhow!("poll: {e}"))?;
    println!("call       poll -> the event back after {} (id {})", took(t), got.id);
    if got != event {
        bail!("the event came back changed: sent {event:?}, got {got:?}");
    }
    let t = Instant::now();
    c.ping().await.map_err(|e| anyhow!("ping: {e}"))?;
    println!("call       ping -> ok ({})", took(t));
    println!("ok");
    Ok(())
}

async fn policy(config: GuestConfig, runtime: &WasmRuntime) -> Result<()> {
    let spec = config.spec(runtime.settings());
    let rt = runtime.clone();
    let guest = tokio::task::spawn_blocking(move || Guest::<PolicyPre>::load(&rt, spec)).await??;
    let request = json!({
        "claims": {"sub": "guest-check"},
        "method": "/stategate.StateService/Set",
        "metadata": {},
        "body": {"domain": DOMAIN, "type": "sample", "key": "k1", "values": values()},
        "client_stream": false,
        "server_stream": false,
    });
    let mut response = request.clone();
    response["method"] = json!("/stategate.StateService/Get");
    response["body"] = json!({"domain": DOMAIN, "type": "sample", "key": "k1"});
    response["response"] = json!({"domain": DOMAIN, "type": "sample", "key": "k1", "values": values(), "version": 1});
    let doc = request.to_string();
    println!("input      {doc}");
    let t = Instant::now();
    let decision = guest
        .call("authorize-request", move |store, hook| Box::pin(async move { hook.authorize_request(store, &doc).await }))
        .await
        .map_err(|e| anyhow!("authorize-request: {e}"))?;
    println!("call       authorize-request -> {decision:?} ({})", took(t));
    let doc = response.to_string();
    println!("input      {doc}");
    let t = Instant::now();
    let decision = guest
        .call("authorize-response", move |store, hook| Box::pin(async move { hook.authorize_response(store, &doc).await }))
        .await
        .map_err(|e| anyhow!("authorize-response: {e}"))?;
    println!("call       authorize-response -> {decision:?} ({})", took(t));
    println!("ok");
    Ok(())
}

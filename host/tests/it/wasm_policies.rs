//! Policy hooks: the Rust tenant-isolation, redaction and webhook hooks, the
//! Python read-only policy and the JavaScript schema policy decide as
//! written; hot reload swaps a hook while
//! a client keeps calling (no call fails) and refuses broken replacements,
//! among them one that loads but does not instantiate.

use crate::harness::TestGateway;
use crate::wasm_support::{auth_service, cache_dir, guest, runtime};
use serde_json::{Value, json};
use stategate::auth::PolicyInput;
use stategate::model::Error;
use stategate::proto::*;
use stategate::auth::hooks::PolicyHooks;

/// A policy input; the tenant is the body's domain, as the gateway sets it
/// for a request naming one.
fn input(claims: Value, method: &str, body: Value, response: Option<Value>) -> PolicyInput {
    let domain = body.get("domain").and_then(Value::as_str).map(str::to_owned);
    PolicyInput {
        claims: claims.as_object().unwrap().clone(),
        method: method.into(),
        metadata: Default::default(),
        body: body.into(),
        client_stream: false,
        server_stream: false,
        response: response.map(Into::into),
        domain,
    }
}

const SET: &str = "/stategate.StateService/Set";
const GET: &str = "/stategate.StateService/Get";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_isolation_hook() {
    let hooks = PolicyHooks::from_config(&json!({"*": guest("tenant_isolation")}).to_string(), &runtime()).await.unwrap().unwrap();
    let acme = json!({"tenant": "acme"});
    hooks.authorize_request(&input(acme.clone(), SET, json!({"domain": "acme", "key": "k"}), None)).await.unwrap();
    let err = hooks
        .authorize_request(&input(acme.clone(), SET, json!({"domain": "globex", "key": "k"}), None))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::PermissionDenied { message: m, .. } if m.contains("may not access domain \"globex\"")), "{err}");
    let err = hooks.authorize_request(&input(json!({}), GET, json!({"domain": "acme"}), None)).await.unwrap_err();
    assert!(matches!(&err, Error::PermissionDenied { message: m, .. } if m.contains("no tenant claim")), "{err}");
    // A response carrying another tenant's record is withheld.
    let leak = json!({"stateValues": [{"domain": "acme", "values": {}}, {"domain": "globex", "values": {"domain": "x"}}]});
    let err = hooks.authorize_response(&input(acme.clone(), GET, json!({}), Some(leak))).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }));
    let fine = json!({"domain": "acme", "values": {"domain": "stored values are not addressing"}});
    assert_eq!(hooks.authorize_response(&input(acme, GET, json!({}), Some(fine))).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_read_only_policy() {
    let spec = json!({"ro": {"path": guest("python_readonly"), "config": {"hide": "card.number,ssn"}, "limits": {"timeout_ms": 30000}}});
    let hooks = PolicyHooks::from_config(&spec.to_string(), &runtime()).await.unwrap().unwrap();
    let body = json!({"domain": "ro", "type": "t", "key": "k"});
    let err = hooks.authorize_request(&input(json!({"role": "viewer"}), SET, body.clone(), None)).await.unwrap_err();
    assert!(matches!(&err, Error::PermissionDenied { message: m, .. } if m.contains("read-only (python policy)") && m.contains("policy:ro")), "{err}");
    hooks.authorize_request(&input(json!({"role": "admin"}), SET, body.clone(), None)).await.unwrap();
    hooks.authorize_request(&input(json!({}), GET, body.clone(), None)).await.unwrap();
    // Other domains have no hook.
    hooks.authorize_request(&input(json!({}), SET, json!({"domain": "rw"}), None)).await.unwrap();
    let response = json!({"domain": "ro", "values": {"card": {"number": "4111", "exp": "12/30"}, "ssn": "1", "name": "n"}});
    let out = hooks.authorize_response(&input(json!({}), GET, body, Some(response))).await.unwrap().unwrap();
    assert_eq!(out, json!({"domain": "ro", "values": {"card": {"exp": "12/30"}, "name": "n"}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_schema_policy() {
    let spec = json!({"shop": {
        "path": guest("js_schema"),
        "config": {"required": {"order": ["id", "total"]}, "types": {"order": {"total": "number", "id": "string"}}},
        "limits": {"timeout_ms": 30000},
    }});
    let hooks = PolicyHooks::from_config(&spec.to_string(), &runtime()).await.unwrap().unwrap();
    let set = |values: Value| input(json!({}), SET, json!({"domain": "shop", "type": "order", "key": "o1", "values": values}), None);
    hooks.authorize_request(&set(json!({"id": "o1", "total": 12.5, "note": "extra fields pass"}))).await.unwrap();
    let err = hooks.authorize_request(&set(json!({"id": "o1"}))).await.unwrap_err();
    assert!(
        matches!(&err, Error::PermissionDenied { message: m, .. } if m.contains("missing total") && m.contains("js schema policy") && m.contains("policy:shop")),
        "{err}"
    );
    let err = hooks.authorize_request(&set(json!({"id": 7, "total": "12"}))).await.unwrap_err();
    assert!(
        matches!(&err, Error::PermissionDenied { message: m, .. } if m.contains("total must be number, not string") && m.contains("id must be string, not number")),
        "{err}"
    );
    // Types without rules, reads and other domains pass.
    let other = input(json!({}), SET, json!({"domain": "shop", "type": "note", "key": "n", "values": {}}), None);
    hooks.authorize_request(&other).await.unwrap();
    hooks.authorize_request(&input(json!({}), GET, json!({"domain": "shop", "type": "order"}), None)).await.unwrap();
    hooks.authorize_request(&input(json!({}), SET, json!({"domain": "elsewhere", "type": "order"}), None)).await.unwrap();
    let response = json!({"domain": "shop", "values": {"id": "o1"}});
    assert_eq!(hooks.authorize_response(&input(json!({}), GET, json!({}), Some(response))).await.unwrap(), None);
}

fn state(key: &str, v: Value) -> State {
    State {
        domain: "d".into(),
        r#type: "t".into(),
        key: key.into(),
        values: Some(stategate::api::convert::json_to_struct(v.as_object().unwrap().clone())),
        ..Default::default()
    }
}

/// Replaces a file the way a deploy should: write aside, rename over.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn refused(gw: &TestGateway) -> u64 {
    let text = crate::harness::http().get(format!("{}/metrics", gw.ops_url())).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.contains("wasm_guest_loads_total") && l.contains("outcome=\"refused\""))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_while_calling() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("hook.wasm");
    std::fs::copy(guest("redact"), &hook).unwrap();
    // The old version redacts `secret`; the new one (misbehave, mode allow)
    // lets it through: every answer shows which one served it.
    let hooks = json!({"*": {"path": hook, "config": {"fields": "secret", "mode": "allow"}}});
    let gw = TestGateway::start_with(|c| {
        c.auth.policy_hooks = Some(hooks.to_string());
        c.wasm_cache_dir = Some(cache_dir());
        c.wasm_reload_ms = 50;
    })
    .await;
    let mut client = gw.state_client().await;
    client.set(state("k", json!({"a": 1, "secret": "s"}))).await.unwrap();

    let get = |mut c: StateServiceClient<tonic::transport::Channel>| async move {
        let s = c
            .get(StateRef { domain: "d".into(), r#type: "t".into(), key: "k".into(), ..Default::default() })
            .await
            .expect("no call fails during a reload")
            .into_inner();
        let v = stategate::api::convert::struct_to_json("values", s.values.unwrap()).unwrap();
        assert_eq!(v["a"], 1);
        v.contains_key("secret")
    };
    use stategate::proto::state_service_client::StateServiceClient;
    let (mut old, mut new) = (0, 0);
    for _ in 0..5 {
        assert!(!get(client.clone()).await, "the first version redacts");
        old += 1;
    }
    replace(&hook, &std::fs::read(guest("misbehave")).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while new < 20 {
        // Two calls at once, so some are in flight while the swap happens.
        let (a, b) = tokio::join!(get(client.clone()), get(client.clone()));
        for served_by_new in [a, b] {
            if served_by_new { new += 1 } else { old += 1 }
        }
        assert!(std::time::Instant::now() < deadline, "the new version is never swapped in");
    }
    assert!(old >= 5);

    // Broken replacements are refused; the current version keeps serving.
    let before = refused(&gw).await;
    replace(&hook, b"\0asm definitely not a component");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while refused(&gw).await < before + 1 {
        assert!(get(client.clone()).await, "the last good version serves");
        assert!(std::time::Instant::now() < deadline, "the broken file is never refused");
    }
    // A valid component of the wrong world is refused too.
    replace(&hook, &std::fs::read(guest("fs_storage")).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while refused(&gw).await < before + 2 {
        assert!(get(client.clone()).await, "the last good version serves");
        assert!(std::time::Instant::now() < deadline, "the wrong-world file is never refused");
    }
    for _ in 0..5 {
        assert!(get(client.clone()).await);
    }
    gw.stop().await;
}

async fn swapped(gw: &TestGateway) -> u64 {
    let text = crate::harness::http().get(format!("{}/metrics", gw.ops_url())).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.contains("wasm_guest_loads_total") && l.contains("outcome=\"swapped\""))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A replacement hook that compiles and links but whose instance cannot
/// start (the test guest big_start needs 64 MiB of initial memory; the hook
/// may have 16) is refused on the call that tries it, and that call and
/// every other one are served by the old version; a good file after it is
/// swapped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_hook_that_does_not_instantiate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("hook.wasm");
    std::fs::copy(guest("redact"), &hook).unwrap();
    // The old version redacts `secret`; misbehave (mode allow) lets it through.
    let hooks = json!({"*": {"path": hook, "config": {"fields": "secret", "mode": "allow"}, "limits": {"memory_mb": 16}}});
    let gw = TestGateway::start_with(|c| {
        c.auth.policy_hooks = Some(hooks.to_string());
        c.wasm_cache_dir = Some(cache_dir());
        c.wasm_reload_ms = 50;
    })
    .await;
    let mut client = gw.state_client().await;
    client.set(state("k", json!({"a": 1, "secret": "s"}))).await.unwrap();
    // Whether the answer shows `secret`, i.e. whether misbehave served it.
    let get = |mut c: stategate::proto::state_service_client::StateServiceClient<tonic::transport::Channel>| async move {
        let s = c
            .get(StateRef { domain: "d".into(), r#type: "t".into(), key: "k".into(), ..Default::default() })
            .await
            .expect("no call fails for a replacement")
            .into_inner();
        let v = stategate::api::convert::struct_to_json("values", s.values.unwrap()).unwrap();
        assert_eq!(v["a"], 1);
        v.contains_key("secret")
    };
    assert!(!get(client.clone()).await, "the first version redacts");
    let (refused_before, swapped_before) = (refused(&gw).await, swapped(&gw).await);

    replace(&hook, &std::fs::read(guest("big_start")).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while refused(&gw).await < refused_before + 1 {
        let (a, b) = tokio::join!(get(client.clone()), get(client.clone()));
        assert!(!a && !b, "the first version serves while the replacement waits");
        assert!(std::time::Instant::now() < deadline, "the replacement that does not instantiate is never refused");
    }
    for _ in 0..5 {
        assert!(!get(client.clone()).await, "the first version serves after the refusal");
    }
    assert_eq!(refused(&gw).await, refused_before + 1, "refused once");
    assert_eq!(swapped(&gw).await, swapped_before, "never counted as swapped");

    replace(&hook, &std::fs::read(guest("misbehave")).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !get(client.clone()).await {
        assert!(std::time::Instant::now() < deadline, "the good replacement is never swapped in");
    }
    assert!(get(client.clone()).await, "the good replacement serves");
    assert_eq!(swapped(&gw).await, swapped_before + 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_apply_to_unary_and_streamed_responses_per_domain() {
    use futures::StreamExt;
    let hooks = json!({"d": {"path": guest("redact"), "config": {"fields": "secret,card.number"}}});
    let gw = TestGateway::start_with(|c| {
        c.auth.policy_hooks = Some(hooks.to_string());
        c.wasm_cache_dir = Some(cache_dir());
    })
    .await;
    let mut stream = gw
        .event_client()
        .await
        .stream(StreamOpts { domain: "d".into(), r#type: "t".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut client = gw.state_client().await;
    let written = client.set(state("k", json!({"a": 1, "secret": "s", "card": {"number": "4111", "exp": "1"}}))).await.unwrap().into_inner();
    let shown = |s: Option<State>| stategate::api::convert::struct_to_json("values", s.unwrap().values.unwrap()).unwrap();
    let expected = json!({"a": 1, "card": {"exp": "1"}});
    assert_eq!(Value::Object(shown(written.state)), expected, "the Set response is redacted");
    let got = client
        .get(StateRef { domain: "d".into(), r#type: "t".into(), key: "k".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Value::Object(shown(Some(got))), expected, "the Get response is redacted");
    // List responses: every state and every event in them.
    let found = client
        .search(SearchStateOpts { domain: "d".into(), r#type: "t".into(), limit: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .state_values;
    assert_eq!(found.len(), 1);
    assert_eq!(Value::Object(shown(found.into_iter().next())), expected, "the Search response is redacted");
    let history = gw
        .event_client()
        .await
        .search(SearchEventOpts { domain: "d".into(), r#type: "t".into(), limit: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(history.len(), 1);
    assert_eq!(Value::Object(shown(history[0].state.clone())), expected, "the event Search response is redacted");
    let streamed = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(Value::Object(shown(streamed.state)), expected, "the streamed event is redacted");
    // Another domain has no hook: its values come back whole.
    let mut other = state("k", json!({"secret": "s"}));
    other.domain = "e".into();
    let e = client.set(other).await.unwrap().into_inner();
    assert_eq!(Value::Object(shown(e.state)), json!({"secret": "s"}));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_from_a_directory_are_picked_up_while_running() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("redact"), dir.path().join("d.wasm")).unwrap();
    let gw = TestGateway::start_with(|c| {
        c.auth.policy_hooks = Some(dir.path().display().to_string());
        c.wasm_cache_dir = Some(cache_dir());
    })
    .await;
    let mut client = gw.state_client().await;
    let write = |domain: &str| {
        let mut s = state("k", json!({"a": 1, "secret": "s"}));
        s.domain = domain.into();
        let mut c = client.clone();
        async move {
            let e = c.set(s).await.unwrap().into_inner();
            stategate::api::convert::struct_to_json("values", e.state.unwrap().values.unwrap()).unwrap()
        }
    };
    assert!(!write("d").await.contains_key("secret"), "d.wasm serves domain d");
    assert!(write("e").await.contains_key("secret"), "no hook for e yet");
    std::fs::copy(guest("redact"), dir.path().join("_default.wasm")).unwrap();
    assert!(!write("e").await.contains_key("secret"), "_default.wasm now serves e");
    let _ = &mut client;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hook_configuration_fails_start_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (hooks, says) in [
        (json!({"d": dir.path().join("missing.wasm")}).to_string(), "cannot read"),
        (json!({"d": guest("fs_storage")}).to_string(), "does not implement world policy-hook"),
        (json!({"d": {"path": guest("redact"), "grants": {"disk": "/"}}}).to_string(), "unknown grant"),
        (
            json!({"d": {"path": guest("webhook"), "grants": {"http": ["https://authz.example.com/check"]}}}).to_string(),
            "grants.http entry \"https://authz.example.com/check\": give an authority (host or host:port), not a URL",
        ),
        ("/no/such/dir".to_string(), "not a directory"),
    ] {
        let mut config = crate::harness::dev_config(dir.path());
        config.auth.policy_hooks = Some(hooks.clone());
        config.wasm_cache_dir = Some(cache_dir());
        let err = stategate::server::start(config).await.err().expect("start fails").to_string();
        assert!(err.contains("STATEGATE_POLICY_HOOKS") && err.contains(says), "{hooks}: {err}");
    }
}

/// The webhook hook asks the tenant's own HTTP service (granted in
/// `grants.http`) about every request: it sends the policy input and
/// follows the answer; an error answer denies (fails closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_hook_delegates_to_an_http_service() {
    let (service, received) = auth_service().await;
    let hooks = json!({"acme": {
        "path": guest("webhook"),
        "config": {"url": format!("http://{service}/authorize"), "authorization": "Bearer t0k"},
        "grants": {"http": [service]},
    }});
    let gw = TestGateway::start_with(|c| {
        c.auth.policy_hooks = Some(hooks.to_string());
        c.wasm_cache_dir = Some(cache_dir());
    })
    .await;
    let mut client = gw.state_client().await;
    let acme = |key: &str| State { domain: "acme".into(), ..state(key, json!({"n": 1})) };

    client.set(acme("ok")).await.expect("the service allows");
    let err = client.set(acme("forbidden")).await.expect_err("the service denies");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("key is forbidden") && err.message().contains("policy:acme"), "{}", err.message());
    let err = client.set(acme("broken")).await.expect_err("an error answer denies");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("answered HTTP 500"), "{}", err.message());
    let got = client
        .get(StateRef { domain: "acme".into(), r#type: "t".into(), key: "ok".into(), ..Default::default() })
        .await
        .expect("reads are asked about too, and allowed")
        .into_inner();
    assert_eq!(got.key, "ok");
    // Another domain has no hook: the service is not asked.
    client.set(state("k", json!({"n": 1}))).await.unwrap();

    let seen = received.lock().unwrap().clone();
    let keys: Vec<(&str, &str)> = seen
        .iter()
        .map(|doc| (doc["method"].as_str().unwrap_or(""), doc.pointer("/body/key").and_then(Value::as_str).unwrap_or("")))
        .collect();
    assert_eq!(
        keys,
        [(SET, "ok"), (SET, "forbidden"), (SET, "broken"), (GET, "ok")],
        "the service received each request's policy input"
    );
    assert_eq!(seen[0].pointer("/body/values/n"), Some(&json!(1)), "with the request body: {}", seen[0]);
    gw.stop().await;
}

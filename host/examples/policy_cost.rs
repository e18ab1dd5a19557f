//! Where the time of a Rego request-policy check goes (not a test): the
//! pieces of the check as it was built before (the whole `PolicyInput` to a
//! `serde_json::Value`, that to a `regorus::Value`, a fresh evaluation) and
//! the check as `auth::rego::Policy` runs it now (only the fields the policy
//! reads, decisions cached when they can be), for the bench's `Get` and
//! `Set` inputs and `examples/policies/read_only_role.rego`.
//!
//! `cargo run --release -p stategate --example policy_cost`

use serde_json::json;
use stategate::auth::PolicyInput;
use stategate::auth::rego::{Policy, Source, compile};
use std::hint::black_box;
use std::time::{Duration, Instant};

const N: u32 = 20_000;

fn per_call(mut f: impl FnMut()) -> Duration {
    for _ in 0..N / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..N {
        f();
    }
    t.elapsed() / N
}

fn input(method: &str, body: serde_json::Value) -> PolicyInput {
    let claims = json!({"sub": "bench", "roles": ["writer"], "exp": 1_900_000_000});
    let metadata = [
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "tonic/0.14"),
    ];
    PolicyInput {
        claims: claims.as_object().unwrap().clone(),
        method: method.into(),
        metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        body: body.into(),
        client_stream: false,
        server_stream: false,
        response: None,
        domain: Some("bench".into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let text = include_str!("../../examples/policies/read_only_role.rego");
    let compiled = compile(&[("read_only_role.rego".into(), text.into())]).unwrap();
    let metrics = std::sync::Arc::new(stategate::telemetry::Metrics::new());
    let policy = |text: &str| {
        Policy::open("request", vec![Source::Inline { name: "p.rego".into(), text: text.into() }], Duration::from_secs(3600), metrics.clone())
            .unwrap()
    };
    let cached = policy(text);
    // The same policy, also reading the body: no field left out, no cache.
    let uncached = policy(&format!("{text}\nallow if input.body.key == \"never\"\n"));

    let get = json!({"domain": "bench", "type": "rec", "key": "r0012345", "idempotencyKey": ""});
    let values: serde_json::Map<_, _> = [("group", json!("g1")), ("n", json!(1)), ("payload", json!("x".repeat(960)))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let set = json!({"domain": "bench", "type": "set", "key": "c1k1", "values": values, "idempotencyKey": ""});
    println!("per call, {N} calls each (release build: {})", !cfg!(debug_assertions));
    for (name, method, body) in [("Get", "/stategate.StateService/Get", get), ("Set", "/stategate.StateService/Set", set)] {
        let input = input(method, body.clone());
        let json = serde_json::to_value(&input).unwrap();
        let rego = regorus::Value::from(json.clone());
        let to_value = per_call(|| drop(black_box(serde_json::to_value(black_box(&input)).unwrap())));
        let from = per_call(|| drop(black_box(regorus::Value::from(black_box(json.clone())))));
        let clone = per_call(|| drop(black_box(json.clone())));
        let eval = per_call(|| drop(black_box(compiled.eval_with_input(black_box(rego.clone())).unwrap())));
        let body_json = per_call(|| drop(black_box(serde_json::to_value(black_box(&body)).unwrap())));
        let now_cached = per_call(|| black_box(cached.check(black_box(&input))).unwrap());
        let now_uncached = per_call(|| black_box(uncached.check(black_box(&input))).unwrap());
        println!("{name}:");
        println!("  before: to_value(input) {to_value:?} + Value::from {:?} + eval_with_input {eval:?}", from.saturating_sub(clone));
        println!("          (the gateway also serializes the request body for policies: {body_json:?})");
        println!("  now:    check, policy reads claims+method (cached decision) {now_cached:?}");
        println!("          check, policy reads the body too (no cache) {now_uncached:?}");
    }
}

//! Tenant isolation: a caller may only touch the domain named by its token's
//! tenant claim (config `claim`, default `tenant`), and a response may only
//! carry records of that domain.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy-hook",
});

use exports::stategate::gateway::policy::{Decision, Guest, ResponseDecision};
use serde_json::Value;
use stategate::gateway::host;

fn tenant(input: &Value) -> Option<String> {
    let claim = host::config("claim").unwrap_or_else(|| "tenant".into());
    input.get("claims")?.get(&claim)?.as_str().map(str::to_owned)
}

/// Every `domain` string anywhere in a message.
fn domains<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                match (k.as_str(), child) {
                    ("domain", Value::String(d)) => out.push(d),
                    // Stored values are the tenant's data, not addressing.
                    ("values", _) => {}
                    _ => domains(child, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| domains(c, out)),
        _ => {}
    }
}

fn check(input: &str, part: &str) -> Result<(), String> {
    let input: Value = serde_json::from_str(input).map_err(|e| format!("bad policy input: {e}"))?;
    let Some(tenant) = tenant(&input) else {
        return Err("the token carries no tenant claim".into());
    };
    let mut found = Vec::new();
    domains(input.get(part).unwrap_or(&Value::Null), &mut found);
    match found.into_iter().find(|d| *d != tenant) {
        Some(other) => Err(format!("tenant {tenant:?} may not access domain {other:?}")),
        None => Ok(()),
    }
}

struct Isolation;

impl Guest for Isolation {
    fn authorize_request(input: String) -> Decision {
        match check(&input, "body") {
            Ok(()) => Decision::Allow,
            Err(reason) => Decision::Deny(reason),
        }
    }

    fn authorize_response(input: String) -> ResponseDecision {
        match check(&input, "response") {
            Ok(()) => ResponseDecision::Allow,
            Err(reason) => ResponseDecision::Deny(reason),
        }
    }
}

export!(Isolation);

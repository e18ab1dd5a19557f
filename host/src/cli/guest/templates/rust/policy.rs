//! A stategate policy hook (world `policy-hook`, wit/policy.wit). The
//! gateway calls it after its Rego policies with the policy input as JSON:
//! {"claims", "method", "metadata", "body", "client_stream",
//! "server_stream"} and, on responses, "response".
//!
//! This one allows everything except requests for the record key named in
//! its `config` as `forbidden_key` (default "forbidden"), and removes the
//! field `config.redact` (if set) from every returned values object.
//! Check it with `stategate guest check <file.wasm>`.

wit_bindgen::generate!({ path: "wit", world: "policy-hook" });

use exports::stategate::gateway::policy::{Decision, Guest, ResponseDecision};
use stategate::gateway::host;

struct Hook;

impl Guest for Hook {
    fn authorize_request(input: String) -> Decision {
        let input: serde_json::Value = match serde_json::from_str(&input) {
            Ok(v) => v,
            // Fail closed on what cannot be read.
            Err(e) => return Decision::Deny(format!("unreadable policy input: {e}")),
        };
        let forbidden = host::config("forbidden_key").unwrap_or_else(|| "forbidden".into());
        match input.pointer("/body/key").and_then(|k| k.as_str()) {
            Some(key) if key == forbidden => Decision::Deny(format!("key {key:?} is forbidden")),
            _ => Decision::Allow,
        }
    }

    fn authorize_response(_input: String) -> ResponseDecision {
        match host::config("redact") {
            Some(field) => ResponseDecision::Redact(vec![field]),
            None => ResponseDecision::Allow,
        }
    }
}

export!(Hook);

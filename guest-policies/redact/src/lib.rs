//! Field redaction: removes the fields listed in config `fields`
//! (comma-separated dot paths, default `secret`) from every returned value.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy-hook",
});

use exports::stategate::gateway::policy::{Decision, Guest, ResponseDecision};
use stategate::gateway::host;

struct Redact;

impl Guest for Redact {
    fn authorize_request(_input: String) -> Decision {
        Decision::Allow
    }

    fn authorize_response(_input: String) -> ResponseDecision {
        let fields = host::config("fields").unwrap_or_else(|| "secret".into());
        ResponseDecision::Redact(fields.split(',').map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()).collect())
    }
}

export!(Redact);

//! TEST FIXTURE, frozen: this guest exactly as it was built against
//! stategate:gateway@0.2.0 (wit/v0.2.0), before WIT 0.3.0. The host must
//! keep loading it and it must keep passing its conformance suite; do not
//! update it (the maintained guest is the one of the same name one level up
//! from `testing/`).
//!
//! Field redaction: removes the fields listed in config `fields`
//! (comma-separated dot paths, default `secret`) from every returned value.

wit_bindgen::generate!({
    path: "../../../../wit/v0.2.0",
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

//! TEST ONLY: a policy hook that compiles and links against the
//! `policy-hook` world but whose initial linear memory holds a 64 MiB zeroed
//! static, so under a guest memory limit below that (`limits.memory_mb`)
//! no instance of it starts: instantiation is refused by the memory cap.
//! A host that swapped it in would fail every hook call after the swap.
//! Were it ever to run, it allows every request and response.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "policy-hook",
});

use exports::stategate::gateway::policy::{Decision, Guest, ResponseDecision};

/// In the module's initial memory (zeroed, mutable: bss, so not in the
/// file), not allocated at run time.
static mut BALLAST: [u8; 64 << 20] = [0; 64 << 20];

struct BigStart;

impl Guest for BigStart {
    fn authorize_request(_input: String) -> Decision {
        std::hint::black_box(&raw const BALLAST);
        Decision::Allow
    }
    fn authorize_response(_input: String) -> ResponseDecision {
        std::hint::black_box(&raw const BALLAST);
        ResponseDecision::Allow
    }
}

export!(BigStart);

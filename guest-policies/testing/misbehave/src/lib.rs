//! TEST ONLY: a policy hook that misbehaves as config `mode` says, to check
//! the sandbox: `trap` (panics), `loop` (never returns), `oom` (allocates
//! without bound), `net` (opens a TCP connection it was not granted);
//! anything else allows.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "policy-hook",
});

use exports::stategate::gateway::policy::{Decision, Guest, ResponseDecision};
use stategate::gateway::host;

struct Misbehave;

impl Guest for Misbehave {
    fn authorize_request(_input: String) -> Decision {
        match host::config("mode").as_deref() {
            Some("trap") => panic!("misbehave: deliberate trap"),
            Some("loop") => loop {
                std::hint::spin_loop();
            },
            Some("oom") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("net") => {
                let target = host::config("target").unwrap_or_else(|| "127.0.0.1:9".into());
                match std::net::TcpStream::connect(&target) {
                    Ok(_) => Decision::Deny(format!("connected to {target}?!")),
                    Err(e) => {
                        host::log(host::Level::Info, &format!("connect {target}: {e}"));
                        Decision::Allow
                    }
                }
            }
            _ => Decision::Allow,
        }
    }

    fn authorize_response(_input: String) -> ResponseDecision {
        ResponseDecision::Allow
    }
}

export!(Misbehave);

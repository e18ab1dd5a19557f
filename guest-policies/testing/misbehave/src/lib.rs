//! TEST ONLY: a policy hook that misbehaves as config `mode` says, to check
//! the sandbox: `trap` (panics), `loop` (never returns), `oom` (allocates
//! without bound), `net` (opens a TCP connection it was not granted),
//! `http` (sends an HTTP request to an authority it was not granted),
//! `fs` (reads a file outside what it was granted and, should that work,
//! leaks it in the deny reason), `sleep` (sleeps config `ms` milliseconds,
//! default 60000, blocked in the host on a WASI clock, then allows);
//! anything else allows.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "policy-hook-http",
    // Bindings for the wasi:http (and wasi:io) interfaces it imports.
    generate_all,
});

use exports::stategate::gateway::policy::{Decision, Guest, ResponseDecision};
use stategate::gateway::host;
use wasi::http::types::{Fields, OutgoingRequest, Scheme};

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
            Some("http") => {
                let target = host::config("target").unwrap_or_else(|| "example.com".into());
                match http_get(&target) {
                    Ok(status) => Decision::Deny(format!("HTTP {status} from {target}?!")),
                    Err(e) => {
                        host::log(host::Level::Info, &format!("GET http://{target}/: {e}"));
                        Decision::Allow
                    }
                }
            }
            Some("fs") => {
                let path = host::config("path").unwrap_or_else(|| "/etc/passwd".into());
                match std::fs::read_to_string(&path) {
                    Ok(text) => Decision::Deny(format!("{path}: {text}")),
                    Err(e) => panic!("misbehave: cannot read {path}: {e}"),
                }
            }
            Some("sleep") => {
                let ms = host::config("ms").and_then(|m| m.parse::<u64>().ok()).unwrap_or(60_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Decision::Allow
            }
            _ => Decision::Allow,
        }
    }

    fn authorize_response(_input: String) -> ResponseDecision {
        ResponseDecision::Allow
    }
}

/// GET http://{authority}/ over wasi:http; the response status.
fn http_get(authority: &str) -> Result<u16, String> {
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some("/")).map_err(|()| "path")?;
    let pending = wasi::http::outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    loop {
        match pending.get() {
            Some(r) => {
                let response = r.map_err(|()| "taken twice")?.map_err(|e| format!("{e:?}"))?;
                return Ok(response.status());
            }
            None => pending.subscribe().block(),
        }
    }
}

export!(Misbehave);

//! A policy hook that delegates each request decision to the tenant's own
//! HTTP authorization service.
//!
//! For every request it POSTs the policy input document (the JSON Rego
//! policies see: claims, method, metadata, body) to config `url`
//! (`http://…` or `https://…`) and expects `200` with
//! `{"allow": true}` or `{"allow": false, "reason": "…"}`. Anything else
//! (another status, a body that is not that JSON, an unreachable service)
//! denies: the hook fails closed. Responses pass unchanged.
//!
//! The service's authority must be granted: `"grants": {"http": ["host:port"]}`.
//! Config `authorization`, when set, is sent as the `authorization` header.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy-hook-http",
    // Bindings for the wasi:http (and wasi:io) interfaces it imports.
    generate_all,
});

use exports::stategate::gateway::policy::{Decision, Guest, ResponseDecision};
use stategate::gateway::host;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

/// Answers larger than this are not an authorization decision.
const MAX_ANSWER: usize = 64 * 1024;

struct Webhook;

impl Guest for Webhook {
    fn authorize_request(input: String) -> Decision {
        let Some(url) = host::config("url") else {
            return Decision::Deny("webhook policy: config \"url\" is not set".into());
        };
        match ask(&url, input.as_bytes()) {
            Ok(decision) => decision,
            Err(e) => {
                host::log(host::Level::Warn, &format!("authorization service {url}: {e}"));
                Decision::Deny(format!("authorization service unavailable: {e}"))
            }
        }
    }

    fn authorize_response(_input: String) -> ResponseDecision {
        ResponseDecision::Allow
    }
}

/// POSTs the input to the service and reads its decision.
fn ask(url: &str, input: &[u8]) -> Result<Decision, String> {
    let (status, answer) = post_json(url, input)?;
    if status != 200 {
        return Err(format!("answered HTTP {status}"));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|e| format!("answer is not JSON: {e}"))?;
    match answer.get("allow").and_then(serde_json::Value::as_bool) {
        Some(true) => Ok(Decision::Allow),
        Some(false) => {
            let reason = answer.get("reason").and_then(serde_json::Value::as_str).unwrap_or("denied by the authorization service");
            Ok(Decision::Deny(reason.to_owned()))
        }
        None => Err("answer has no boolean \"allow\"".into()),
    }
}

/// A minimal wasi:http client: one POST, the whole answer read.
fn post_json(url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(format!("config url {url:?} must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };

    let mut headers = vec![
        ("content-type".to_owned(), b"application/json".to_vec()),
        ("content-length".to_owned(), body.len().to_string().into_bytes()),
    ];
    if let Some(auth) = host::config("authorization") {
        headers.push(("authorization".to_owned(), auth.into_bytes()));
    }
    let headers = Fields::from_list(&headers).map_err(|e| format!("bad header: {e:?}"))?;
    let request = OutgoingRequest::new(headers);
    let bad = |what: &str| format!("config url {url:?}: bad {what}");
    request.set_method(&Method::Post).map_err(|()| bad("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    request.set_authority(Some(authority)).map_err(|()| bad("authority"))?;
    request.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
    let outgoing = request.body().map_err(|()| "request body taken twice".to_owned())?;

    // Send first, then stream the body: the host buffers little of it.
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = outgoing.write().map_err(|()| "request body stream taken twice".to_owned())?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| format!("sending the request: {e:?}"))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;

    let response = loop {
        match pending.get() {
            Some(r) => break r.map_err(|()| "response taken twice".to_owned())?.map_err(|e| format!("{e:?}"))?,
            None => pending.subscribe().block(),
        }
    };
    let status = response.status();
    let incoming = response.consume().map_err(|()| "response body taken twice".to_owned())?;
    let mut answer = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| "response stream taken twice".to_owned())?;
        loop {
            match stream.blocking_read(16 * 1024) {
                Ok(chunk) => answer.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => return Err(format!("reading the answer: {}", e.to_debug_string())),
            }
            if answer.len() > MAX_ANSWER {
                return Err(format!("answer larger than {MAX_ANSWER} bytes"));
            }
        }
    }
    Ok((status, answer))
}

export!(Webhook);

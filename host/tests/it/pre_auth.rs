//! Issue 17 point 2: an unauthenticated peer cannot make the gateway spend
//! memory on bodies it will refuse. The token is checked from the headers
//! before a body is decoded (gRPC: before it is even read), and a decoded
//! request is bounded by its count of JSON values, not only its bytes.
//!
//! Measured on the gateway process from outside: its peak resident memory
//! (`VmHWM`) grows by at most a small multiple of the bytes the refused
//! requests carried. Before the fix, 16 REST bodies of 4 MiB raised it by
//! ~570 MiB (about 9x) and 8 gRPC `Set`s with a 1M-element list by
//! ~186 MiB (about 6x).

use crate::procs::{free_port, wait_port};
use prost::Message;
use std::process::{Command, Stdio};

/// Peak resident memory of a process, bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// A `{"values":{"a":[0,0,…]}}` body just under the message limit.
fn dense_body(bytes: usize) -> Vec<u8> {
    let mut body = b"{\"values\":{\"a\":[".to_vec();
    while body.len() < bytes - 16 {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]}}");
    body
}

/// A `State` with a list of `n` nulls: about 4 bytes on the wire each.
fn dense_state(n: usize) -> stategate::proto::State {
    use prost_types::{ListValue, Struct, Value, value::Kind};
    let list = ListValue {
        values: vec![Value { kind: Some(Kind::NullValue(0)) }; n],
    };
    stategate::proto::State {
        domain: "d".into(),
        r#type: "t".into(),
        key: "k".into(),
        values: Some(Struct {
            fields: [("a".to_owned(), Value { kind: Some(Kind::ListValue(list)) })].into(),
        }),
        ..Default::default()
    }
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-pre-auth";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_cost_a_small_multiple_of_their_size() {
    const LIMIT: usize = 4 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (port, ops) = (free_port(), free_port());
    let mut child = Command::new(crate::procs::stategate_bin())
        .args(["--port", &port.to_string(), "--ops-port", &ops.to_string(), "--bind", "127.0.0.1"])
        .env("STATEGATE_JWT_HMAC_SECRET", SECRET)
        // v0.5.0's sample request policy (allow all), base64 as it was set.
        .env("STATEGATE_REQUEST_POLICY", "cGFja2FnZSBzdGF0ZWdhdGUuYXV0aHoKCmRlZmF1bHQgYWxsb3cgPSB0cnVl")
        .env("STATEGATE_MAX_MESSAGE_BYTES", LIMIT.to_string())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, "gateway").await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Warm up both transports so their buffers are in the baseline.
    let r = http.post(format!("{base}/api/state/ref/d/t/k")).json(&serde_json::json!({"values": {}})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let channel = tonic::transport::Channel::from_shared(base.clone()).unwrap().connect().await.unwrap();
    let mut grpc = stategate::proto::state_service_client::StateServiceClient::new(channel)
        .max_encoding_message_size(LIMIT * 2);
    let err = grpc.set(dense_state(1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let before = peak_rss(child.id());

    // 8 gRPC Sets, each a list of ~1M nulls (just under the limit).
    let state = dense_state((LIMIT - 1024) / 4);
    let grpc_bytes = state.encoded_len() * 8;
    assert!(state.encoded_len() < LIMIT, "{} bytes", state.encoded_len());
    let calls = (0..8).map(|_| {
        let mut c = grpc.clone();
        let s = state.clone();
        async move { c.set(s).await.unwrap_err().code() }
    });
    for code in futures::future::join_all(calls).await {
        assert_eq!(code, tonic::Code::Unauthenticated);
    }
    // 16 REST bodies of ~4 MiB at once.
    let body = dense_body(LIMIT - 1024);
    let rest_bytes = body.len() * 16;
    let posts = (0..16).map(|i| {
        let (http, url, body) = (http.clone(), format!("{base}/api/state/ref/d/t/k{i}"), body.clone());
        async move { http.post(url).header("content-type", "application/json").body(body).send().await.unwrap().status() }
    });
    for status in futures::future::join_all(posts).await {
        assert_eq!(status, 401);
    }
    let grown = peak_rss(child.id()).saturating_sub(before);
    let sent = (grpc_bytes + rest_bytes) as u64;
    eprintln!("peak RSS grew by {} MiB for {} MiB of refused requests", grown >> 20, sent >> 20);
    assert!(grown < sent, "peak RSS grew by {grown} bytes for {sent} bytes of unauthenticated requests");

    // With a valid token the same requests are refused for what they hold:
    // more JSON values than one request may carry.
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "t", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let r = http
        .post(format!("{base}/api/state/ref/d/t/k"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("JSON values"), "{text}");
    let mut request = tonic::Request::new(state);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let err = grpc.set(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("JSON values"), "{}", err.message());
    let _ = child.kill();
    let _ = child.wait();
}

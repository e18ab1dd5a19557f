//! grpc-web on the same port: binary mode through tonic-web's client, and
//! text mode (base64) framed by hand as a browser library sends it,
//! including server streaming.

use crate::harness::{TestGateway, http};
use crate::wire::*;
use base64::Engine;
use futures::StreamExt;
use prost::Message;
use serde_json::json;
use stategate::proto as pb;
use std::time::Duration;

#[tokio::test]
async fn binary_mode_unary_calls() {
    let gw = TestGateway::start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let svc = tower::ServiceBuilder::new().layer(tonic_web::GrpcWebClientLayer::new()).service(client);
    let mut web = pb::state_service_client::StateServiceClient::with_origin(svc, gw.url().parse().unwrap());
    let d = unique("web");
    let ev = web.set(state(&d, "t", "k", json!({"via": "grpc-web"}))).await.unwrap().into_inner();
    assert_eq!(ev.version, 1);
    let got = web.get(state_ref(&d, "t", "k")).await.unwrap().into_inner();
    assert_eq!(from_struct(got.values.as_ref().unwrap()), json!({"via": "grpc-web"}));
    let missing = web.get(state_ref(&d, "t", "nope")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    gw.stop().await;
}

fn frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes grpc-web-text: each message is base64 on its own, padding
/// included, so decode block by block rather than as one string.
fn decode_text(text: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    text.chunks(4).flat_map(|block| b64.decode(block).expect("valid base64 block")).collect()
}

/// Splits decoded grpc-web bytes into (flag, payload) frames.
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![];
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        if bytes.len() < 5 + len {
            break;
        }
        out.push((bytes[0], bytes[5..5 + len].to_vec()));
        bytes = &bytes[5 + len..];
    }
    out
}

#[tokio::test]
async fn text_mode_with_server_streaming_and_cors() {
    let gw = TestGateway::start().await;
    let c = http();
    let d = unique("webtext");
    let b64 = base64::engine::general_purpose::STANDARD;

    // A CORS preflight as a browser on another (loopback: authentication
    // is off) origin sends it.
    let pre = c
        .request(reqwest::Method::OPTIONS, format!("{}/stategate.EventService/Stream", gw.url()))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert!(pre.headers().contains_key("access-control-allow-origin"));

    let stream = c
        .post(format!("{}/stategate.EventService/Stream", gw.url()))
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .header("origin", "http://localhost:5173")
        .body(b64.encode(frame(&pb::StreamOpts { domain: d.clone(), r#type: "t".into(), ..Default::default() })))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web-text"));
    assert_eq!(
        stream.headers()["access-control-allow-origin"],
        "http://localhost:5173",
        "grpc-web from a page gets CORS"
    );

    // Write through a unary text-mode call.
    let set = c
        .post(format!("{}/stategate.StateService/Set", gw.url()))
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .body(b64.encode(frame(&state(&d, "t", "k", json!({"n": 1})))))
        .send()
        .await
        .unwrap();
    let reply = decode_text(&set.bytes().await.unwrap());
    let reply = frames(&reply);
    let written = pb::Event::decode(reply[0].1.as_slice()).unwrap();
    assert_eq!(reply[0].0, 0);
    assert_eq!(reply[1].0, 0x80, "trailers frame");
    assert!(String::from_utf8_lossy(&reply[1].1).contains("grpc-status:0"));

    // The stream delivers it; text mode may split base64 across chunks, so
    // collect until a whole frame decodes.
    let mut body = stream.bytes_stream();
    let mut text = Vec::new();
    let event = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next()).await.unwrap().unwrap().unwrap();
        text.extend_from_slice(&chunk);
        let bytes = decode_text(&text[..text.len() / 4 * 4]);
        if let Some((0, payload)) = frames(&bytes).into_iter().next() {
            break pb::Event::decode(payload.as_slice()).unwrap();
        }
    };
    assert_eq!(event.id, written.id);
    gw.stop().await;
}

/// Native gRPC, which no browser speaks, is served without CORS headers
/// (grpc-web and REST keep them, above).
#[tokio::test]
async fn native_grpc_responses_carry_no_cors_headers() {
    let gw = TestGateway::start().await;
    let mut sc = gw.state_client().await;
    let d = unique("nocors");
    let reply = sc.set(state(&d, "t", "k", json!({"n": 1}))).await.unwrap();
    for name in ["access-control-allow-origin", "access-control-expose-headers", "vary"] {
        assert!(reply.metadata().get(name).is_none(), "{name} on a native gRPC response");
    }
}

/// What a web page can make a browser send, over grpc-web
/// (docs/security.md): with authentication off a foreign page or host name
/// is refused with a gRPC status, and a POST without a gRPC content type
/// (what a page sends without a preflight) is 415; nothing is written.
#[tokio::test]
async fn dev_mode_refuses_foreign_pages_hosts_and_plain_posts() {
    let gw = TestGateway::start().await;
    let c = http();
    let b64 = base64::engine::general_purpose::STANDARD;
    let d = unique("webguard");
    let set = format!("{}/stategate.StateService/Set", gw.url());
    let body = || b64.encode(frame(&state(&d, "t", "k", json!({"csrf": true}))));
    let web = |origin: &str, host: Option<String>| {
        let mut req = c
            .post(&set)
            .header("content-type", "application/grpc-web-text")
            .header("accept", "application/grpc-web-text")
            .header("x-grpc-web", "1")
            .header("origin", origin)
            .body(body());
        if let Some(h) = host {
            req = req.header("host", h);
        }
        req
    };

    // Another origin, or a rebound host name: PERMISSION_DENIED.
    let port = gw.addr.port();
    for (origin, host) in [("http://evil.test", None), ("http://localhost:3000", Some(format!("evil.test:{port}")))] {
        let r = web(origin, host.clone()).send().await.unwrap();
        assert_eq!(r.headers().get("grpc-status").map(|v| v.to_str().unwrap()), Some("7"), "{origin} {host:?}");
    }
    // A text/plain POST carrying a grpc-web frame (no preflight needed).
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = c
            .post(&set)
            .header("content-type", content_type)
            .header("origin", "http://localhost:3000")
            .body(body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 415, "{content_type}");
        let err: serde_json::Value = r.json().await.unwrap();
        assert!(err["message"].as_str().unwrap().contains("content-type"), "{err}");
    }
    let missing = gw.state_client().await.get(state_ref(&d, "t", "k")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "nothing was written");

    // The same call from a loopback page succeeds.
    let r = web("http://127.0.0.1:8000", None).send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "http://127.0.0.1:8000");
    let reply = frames(&decode_text(&r.bytes().await.unwrap()));
    assert!(String::from_utf8_lossy(&reply[1].1).contains("grpc-status:0"));
    gw.stop().await;
}

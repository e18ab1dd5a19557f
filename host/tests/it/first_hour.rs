//! The main port as a first-time user meets it: whatever no route takes is
//! answered in the error envelope with a hint (REST) or a gRPC status with a
//! message (gRPC, grpc-web); a body too large is 413 `OUT_OF_RANGE`; a
//! stream honours the client's `grpc-timeout`; `*` in a search is a clear
//! error.

use crate::harness::{TestGateway, http};
use crate::wire::*;
use serde_json::{Value, json};
use stategate::proto as pb;
use std::time::Duration;
use tonic::Code;

async fn envelope(r: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.expect("a JSON body");
    assert!(body["code"].is_i64() && body["message"].is_string() && body["details"].is_array(), "{body}");
    (status, allow, body)
}

#[tokio::test]
async fn unknown_routes_are_json_with_hints() {
    let gw = TestGateway::start().await;
    let ops_port = gw.ops_addr.port().to_string();
    for path in ["/", "/healthz", "/readyz", "/metrics", "/api/nope"] {
        let (status, _, body) = envelope(http().get(format!("{}{path}", gw.url())).send().await.unwrap()).await;
        assert_eq!((status, &body["code"]), (404, &json!(5)), "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        for hint in ["/openapi.json", "/healthz", &ops_port, path] {
            assert!(message.contains(hint), "{path}: the message names {hint}: {message}");
        }
    }
    // A record or event path missing a part names the part.
    for (path, part) in [
        ("/api/state/ref/users/user/", "key"),
        ("/api/state/ref/users/user", "key"),
        ("/api/state/ref/users//alice", "type"),
        ("/api/events/ref/", "id"),
    ] {
        let (status, _, body) = envelope(http().get(format!("{}{path}", gw.url())).send().await.unwrap()).await;
        assert_eq!((status, &body["code"]), (400, &json!(3)), "{path}: {body}");
        assert!(body["message"].as_str().unwrap().contains(&format!("invalid {part}")), "{path}: {body}");
    }
    // The document the hints point at is there.
    assert_eq!(http().get(format!("{}/openapi.json", gw.url())).send().await.unwrap().status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let gw = TestGateway::start().await;
    let url = gw.url();
    let (status, allow, body) = envelope(http().delete(format!("{url}/api/catalog")).send().await.unwrap()).await;
    assert_eq!((status, &body["code"]), (405, &json!(12)), "{body}");
    assert!(allow.unwrap().contains("GET"));
    let put = http().put(format!("{url}/api/state/ref/d/t/k")).json(&json!({"values": {}})).send().await.unwrap();
    let (status, allow, _) = envelope(put).await;
    let allow = allow.unwrap();
    assert_eq!(status, 405);
    for m in ["GET", "POST", "DELETE", "PATCH"] {
        assert!(allow.contains(m), "{allow}");
    }
    // A gRPC method's path asked as plain HTTP says how to call it.
    let (status, allow, body) = envelope(http().get(format!("{url}/stategate.StateService/Get")).send().await.unwrap()).await;
    assert_eq!((status, allow.as_deref()), (405, Some("POST")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("application/grpc"), "{body}");
    // grpc-web is POST only.
    let r = http()
        .get(format!("{url}/stategate.StateService/Get"))
        .header("content-type", "application/grpc-web+proto")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(r.headers()["grpc-status"], "12");
    // Native gRPC over HTTP/1.1 (reqwest speaks 1.1 to plain http) says to
    // use HTTP/2 or grpc-web; over HTTP/2 it goes straight to the gRPC routes.
    let r = http()
        .post(format!("{url}/stategate.StateService/Get"))
        .header("content-type", "application/grpc")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    let (status, _, body) = envelope(r).await;
    assert_eq!((status, &body["code"]), (400, &json!(3)), "{body}");
    assert!(body["message"].as_str().unwrap().contains("gRPC needs HTTP/2"), "{body}");
    // gRPC calls are POSTs, over HTTP/2 too: a GET or DELETE carrying a gRPC
    // content type (a client's default header) is plain HTTP. A REST route
    // serves it as over HTTP/1.1; a gRPC method's path says to POST.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let grpc_typed = |method: http::Method, path: &str| {
        h2.request(method, format!("{url}{path}")).header("content-type", "application/grpc").send()
    };
    for method in [http::Method::GET, http::Method::DELETE] {
        let r = grpc_typed(method.clone(), "/api/state/ref/d/t/nobody").await.unwrap();
        assert_eq!(r.version(), http::Version::HTTP_2);
        let (status, _, body) = envelope(r).await;
        assert_eq!((status, &body["code"]), (404, &json!(5)), "{method}: the REST route answers: {body}");
    }
    let r = grpc_typed(http::Method::GET, "/stategate.StateService/Get").await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(r.headers()["grpc-status"], "12");
    let message = r.headers()["grpc-message"].to_str().unwrap();
    assert!(message.contains("POSTs") && message.contains("GET"), "{message}");
    gw.stop().await;
}

#[tokio::test]
async fn oversize_bodies_are_413_out_of_range() {
    let gw = TestGateway::start().await;
    let big = json!({"values": {"s": "x".repeat(5 << 20)}});
    let r = http().post(format!("{}/api/state/ref/d/t/k", gw.url())).json(&big).send().await.unwrap();
    let (status, _, body) = envelope(r).await;
    assert_eq!((status, &body["code"]), (413, &json!(11)), "{body}");
    assert!(body["message"].as_str().unwrap().contains("STATEGATE_MAX_MESSAGE_BYTES"), "{body}");
    // gRPC says the same with OUT_OF_RANGE and a message.
    let mut grpc = gw.state_client().await;
    let e = grpc.set(state("d", "t", "k", json!({"s": "x".repeat(5 << 20)}))).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(!e.message().is_empty());
    gw.stop().await;
}

/// The grpc-web frames of a response body: (flag, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![];
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        out.push((bytes[0], bytes[5..5 + len].to_vec()));
        bytes = &bytes[5 + len..];
    }
    out
}

/// A grpc-web response's status and message, from its headers
/// (trailers-only) or its trailer frame.
async fn grpc_web_status(r: reqwest::Response) -> (String, String) {
    let header = |h: &http::HeaderMap, k: &str| h.get(k).map(|v| v.to_str().unwrap().to_owned());
    if let Some(code) = header(r.headers(), "grpc-status") {
        return (code, header(r.headers(), "grpc-message").unwrap_or_default());
    }
    let body = r.bytes().await.unwrap();
    let trailer = frames(&body).into_iter().find(|(flag, _)| flag & 0x80 != 0).expect("a trailer frame");
    let text = String::from_utf8(trailer.1).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    (field("grpc-status"), field("grpc-message"))
}

#[tokio::test]
async fn unknown_grpc_methods_are_unimplemented_with_a_message() {
    let gw = TestGateway::start().await;
    for path in ["/stategate.StateService/Nope", "/nope.Service/Call"] {
        let mut grpc = tonic::client::Grpc::new(gw.channel().await);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<pb::StateRef, pb::State>::default();
        let e = grpc
            .unary(tonic::Request::new(pb::StateRef::default()), http::uri::PathAndQuery::from_static(path), codec)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented, "{path}");
        assert!(e.message().contains(path) && e.message().contains("stategate.StateService"), "{path}: {}", e.message());

        // grpc-web: the same status, as grpc-web carries it.
        let r = http()
            .post(format!("{}{path}", gw.url()))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(vec![0u8, 0, 0, 0, 0])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let (code, message) = grpc_web_status(r).await;
        assert_eq!(code, "12", "{path}");
        assert!(message.contains(&path[1..]), "{path}: {message}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn streams_end_at_the_clients_grpc_timeout() {
    let gw = TestGateway::start().await;
    let mut events = gw.event_client().await;
    let mut req = tonic::Request::new(pb::StreamOpts { domain: unique("deadline"), r#type: "t".into(), ..Default::default() });
    req.metadata_mut().insert("grpc-timeout", "2S".parse().unwrap());
    let mut stream = events.stream(req).await.expect("the stream opens").into_inner();
    let end = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the stream ended at its deadline (not at this test's)");
    let e = end.expect_err("it ends with a status");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("grpc-timeout"), "{}", e.message());
    // The stream's slot was given back: the gateway has no live stream.
    let mut live = 1.0;
    for _ in 0..100 {
        let metrics = http().get(format!("{}/metrics", gw.ops_url())).send().await.unwrap().text().await.unwrap();
        live = metrics
            .lines()
            .find_map(|l| l.strip_prefix("stategate_live_streams "))
            .map_or(0.0, |v| v.trim().parse().unwrap());
        if live == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(live, 0.0, "the expired stream was dropped");
    // A unary call within its deadline is unaffected.
    let mut grpc = gw.state_client().await;
    let mut req = tonic::Request::new(state(&unique("deadline"), "t", "k", json!({"n": 1})));
    req.metadata_mut().insert("grpc-timeout", "10S".parse().unwrap());
    grpc.set(req).await.expect("a call well within its deadline");
    gw.stop().await;
}

#[tokio::test]
async fn wildcards_in_searches_are_a_clear_error() {
    let gw = TestGateway::start().await;
    let mut grpc = gw.state_client().await;
    let mut events = gw.event_client().await;
    let e = grpc
        .search(pb::SearchStateOpts { domain: "*".into(), r#type: "user".into(), limit: 10, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("domain") && e.message().contains("/api/catalog"), "{}", e.message());
    let e = events
        .search(pb::SearchEventOpts { domain: "users".into(), r#type: "*".into(), limit: 10, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("type"), "{}", e.message());
    let r = http().get(format!("{}/api/events/search?domain=*&type=user&limit=5", gw.url())).send().await.unwrap();
    let (status, _, body) = envelope(r).await;
    assert_eq!((status, &body["code"]), (400, &json!(3)), "{body}");
    gw.stop().await;
}

//! The REST routes: grpc-gateway's JSON mapping, status codes and error
//! bodies, and the streaming endpoint in NDJSON and SSE.

use crate::harness::{TestGateway, http};
use crate::wire::unique;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn v050_routes_round_trip() {
    let gw = TestGateway::start().await;
    let base = gw.url();
    let c = http();
    let d = unique("rest");
    let url = format!("{base}/api/state/ref/{d}/user/alice");

    let (s, set) = body(c.post(&url).json(&json!({"values": {"name": "Alice", "n": 7}})).send().await.unwrap()).await;
    assert_eq!(s, 200, "{set}");
    assert_eq!(set["version"], json!("1"), "int64 as a string");
    assert_eq!(set["kind"], json!("SET"));
    assert!(set["time"].as_str().unwrap().parse::<i64>().is_ok());

    let (s, mut got) = body(c.get(&url).send().await.unwrap()).await;
    assert_eq!(s, 200);
    // The store position the read answered at (additive): at least the write's.
    let seq = got.as_object_mut().unwrap().remove("sequence").expect("sequence");
    assert!(seq.as_str().unwrap().parse::<i64>().unwrap() >= set["sequence"].as_str().unwrap().parse::<i64>().unwrap());
    assert_eq!(got, json!({"domain": d, "type": "user", "key": "alice", "values": {"name": "Alice", "n": 7}, "version": "1"}));

    // Original field names and camelCase are both accepted, as are int64s as strings.
    let q = urlencode(r#"{"n": 7}"#);
    for params in [format!("domain={d}&type=user&query_string={q}&limit=5"), format!("domain={d}&type=user&queryString={q}&limit=\"5\"")] {
        let params = params.replace('"', "");
        let (s, found) = body(c.get(format!("{base}/api/state/search?{params}")).send().await.unwrap()).await;
        assert_eq!(s, 200, "{found}");
        assert_eq!(found["stateValues"].as_array().unwrap().len(), 1);
    }

    let (s, del) = body(c.delete(&url).send().await.unwrap()).await;
    assert_eq!((s, del["kind"].clone()), (200, json!("DEL")));
    let (s, err) = body(c.get(&url).send().await.unwrap()).await;
    assert_eq!(s, 404);
    assert_eq!(err["code"], json!(5));
    assert!(err["message"].as_str().unwrap().contains("not found"));

    let (s, events) = body(c.get(format!("{base}/api/events/search?domain={d}&type=user&key=alice&limit=10")).send().await.unwrap()).await;
    assert_eq!(s, 200);
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    let id = events[0]["id"].as_str().unwrap();
    let (s, one) = body(c.get(format!("{base}/api/events/ref/{id}")).send().await.unwrap()).await;
    assert_eq!((s, one["id"].as_str()), (200, Some(id)));
    gw.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn errors_use_grpc_gateway_statuses() {
    let gw = TestGateway::start().await;
    let base = gw.url();
    let c = http();
    let cases = [
        (c.post(format!("{base}/api/state/ref/d/t/k")).header("content-type", "application/json").body("{not json"), 400, "body"),
        (c.post(format!("{base}/api/state/ref/d/t/k")).header("content-type", "application/json").body("[1]"), 400, "body"),
        (c.post(format!("{base}/api/state/ref/d/t/k")).body("{\"values\":{}}"), 415, "content-type"),
        // An unknown field is discarded (grpc-gateway v2): here that leaves no values.
        (c.post(format!("{base}/api/state/ref/d/t/k")).json(&json!({"valuez": {}})), 400, "values"),
        (c.post(format!("{base}/api/state/ref/d/t/k")).json(&json!({"values": [1]})), 400, "values"),
        (c.post(format!("{base}/api/state/ref/d/t/k")).json(&json!({})), 400, "values"),
        (c.get(format!("{base}/api/state/search?domain=d&type=t&limit=0")), 400, "limit"),
        (c.get(format!("{base}/api/state/search?domain=d&type=t&limit=x")), 400, "integer"),
        (c.get(format!("{base}/api/state/search?domain=d&type=t&limit=1&sortDescending=maybe")), 400, "sortDescending"),
        (c.get(format!("{base}/api/state/search?domain=d&type=t&limit=1&query_string=%7B%22a%22%3A%7B%22%24foo%22%3A1%7D%7D")), 400, "$foo"),
        (c.get(format!("{base}/api/events/search?domain=d&type=t&limit=1&min=%FF")), 400, "min"),
        (c.get(format!("{base}/api/state/ref/d/t/nothing")), 404, "not found"),
        (c.post(format!("{base}/api/state/ref/d/t/k")).json(&json!({"values": {}, "expectedVersion": "3"})), 409, "version"),
    ];
    for (request, status, needle) in cases {
        let r = request.send().await.unwrap();
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, status, "{needle}: {text}");
        let err: Value = serde_json::from_str(&text).unwrap();
        assert!(err["code"].is_number() && err["message"].as_str().unwrap().contains(needle), "{needle}: {text}");
    }
    // An oversized body is refused before it is read whole.
    let big = "x".repeat(5 * 1024 * 1024);
    let r = c.post(format!("{base}/api/state/ref/d/t/k")).json(&json!({"values": {"big": big}})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    gw.stop().await;
}

#[tokio::test]
async fn stream_as_ndjson_and_sse() {
    let gw = TestGateway::start().await;
    let base = gw.url();
    let c = http();
    let d = unique("reststream");

    let ndjson = c.get(format!("{base}/api/events/stream?domain={d}&type=t")).send().await.unwrap();
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let sse = c
        .get(format!("{base}/api/events/stream?domain={d}&type=t"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");

    let set: Value = c.post(format!("{base}/api/state/ref/{d}/t/k")).json(&json!({"values": {"a": 1}})).send().await.unwrap().json().await.unwrap();

    let mut lines = ndjson.bytes_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(10), lines.next()).await.unwrap().unwrap().unwrap();
    let line: Value = serde_json::from_slice(chunk.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["result"]["id"], set["id"]);
    assert_eq!(line["result"]["state"]["values"], json!({"a": 1}));

    let mut frames = sse.bytes_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(10), frames.next()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8(chunk.to_vec()).unwrap();
    assert!(text.starts_with(&format!("id: {}\nevent: event\ndata: ", set["id"].as_str().unwrap())), "{text}");

    // An SSE client that reconnects with Last-Event-ID resumes after it.
    c.post(format!("{base}/api/state/ref/{d}/t/k")).json(&json!({"values": {"a": 2}})).send().await.unwrap();
    let resumed = c
        .get(format!("{base}/api/events/stream?domain={d}&type=t"))
        .header("accept", "text/event-stream")
        .header("last-event-id", set["id"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let mut frames = resumed.bytes_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(10), frames.next()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8(chunk.to_vec()).unwrap();
    assert!(text.contains("\"a\":2") && !text.contains(set["id"].as_str().unwrap()), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn ops_endpoints() {
    let gw = TestGateway::start().await;
    let c = http();
    let ops = gw.ops_url();
    assert_eq!(c.get(format!("{ops}/healthz")).send().await.unwrap().status().as_u16(), 200);
    let ready: Value = c.get(format!("{ops}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], json!(true));
    assert_eq!(ready["storage"]["provider"], json!("sqlite"));
    c.post(format!("{}/api/state/ref/m/t/k", gw.url())).json(&json!({"values": {}})).send().await.unwrap();
    let metrics = c.get(format!("{ops}/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "stategate_requests_total{code=\"OK\",method=\"/stategate.StateService/Set\"} 1",
        "stategate_events_appended_total{kind=\"SET\"} 1",
        "stategate_request_duration_seconds_bucket",
        "stategate_provider_call_duration_seconds_bucket{op=\"append\",provider=\"sqlite\"",
        "stategate_live_streams 0",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }
    gw.stop().await;
}

/// `/debug/pprof/profile` returns a pprof protobuf CPU profile of the gateway
/// under load; one profile at a time; a bad `seconds` is a 400 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profile_in_pprof_format() {
    use pprof::protos::Message;
    let gw = TestGateway::start().await;
    let c = http();
    let ops = gw.ops_url();
    for bad in ["0", "61", "301", "ten"] {
        let r = c.get(format!("{ops}/debug/pprof/profile?seconds={bad}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "seconds={bad}");
        let err: Value = r.json().await.unwrap();
        assert!(err["error"].as_str().unwrap().contains("seconds must be a whole number from 1 to 60"), "{err}");
    }
    // Load while the profile is taken, so there is CPU time to sample.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (c, url, stop) = (c.clone(), gw.url(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c.post(format!("{url}/api/state/ref/prof/t/k{}", n % 50)).json(&json!({"values": {"n": n}})).send().await;
                assert_eq!(r.unwrap().status().as_u16(), 200);
                n += 1;
            }
            n
        })
    };
    let profile = tokio::spawn({
        let (c, ops) = (c.clone(), ops.clone());
        async move { c.get(format!("{ops}/debug/pprof/profile?seconds=2")).send().await.unwrap() }
    });
    // A second profile while the first runs is refused, not queued.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let second = c.get(format!("{ops}/debug/pprof/profile?seconds=1")).send().await.unwrap();
    assert_eq!(second.status().as_u16(), 409);
    let err: Value = second.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("already being taken"), "{err}");
    let r = profile.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);
    assert_eq!(r.status().as_u16(), 200);
    let body = r.bytes().await.unwrap();
    let p = pprof::protos::Profile::parse_from_bytes(&body).expect("the body is a pprof Profile");
    let types: Vec<&str> = p.sample_type.iter().map(|t| p.string_table[t.ty as usize].as_str()).collect();
    assert!(types.contains(&"cpu"), "sample types {types:?}");
    assert!(!p.sample.is_empty(), "samples were taken under load");
    assert!(
        p.string_table.iter().any(|s| s.contains("stategate")),
        "the gateway's own functions appear in the profile"
    );
    gw.stop().await;
}

/// What a web page can make a browser send, over REST (docs/security.md):
/// with authentication off only loopback pages and host names are served,
/// and writes need a JSON content type (always).
#[tokio::test]
async fn dev_mode_serves_loopback_pages_only_and_writes_need_json() {
    let gw = TestGateway::start_with(|c| c.allowed_hosts = vec!["gw.test".into()]).await;
    let base = gw.url();
    let port = gw.addr.port();
    let c = http();
    let d = unique("browser");
    let url = format!("{base}/api/state/ref/{d}/t/k");
    let not_written = || async { assert_eq!(c.get(&url).send().await.unwrap().status().as_u16(), 404, "nothing was written") };

    // The simple requests a page sends without a preflight: refused with
    // the error envelope, nothing written.
    for (content_type, body) in [
        (Some("text/plain;charset=UTF-8"), r#"{"values":{"csrf":true}}"#),
        (Some("application/x-www-form-urlencoded"), "values=1"),
        (Some("multipart/form-data; boundary=x"), "--x--"),
        (None, r#"{"values":{"csrf":true}}"#),
    ] {
        let mut req = c.post(&url).header("origin", "http://localhost:3000").body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let (s, err) = body_of(req.send().await.unwrap()).await;
        assert_eq!(s, 415, "{content_type:?}: {err}");
        assert_eq!(err["code"], json!(3));
        assert!(err["message"].as_str().unwrap().contains("content-type"), "{err}");
    }
    let (s, _) = body_of(c.patch(&url).header("content-type", "text/plain").body("{}").send().await.unwrap()).await;
    assert_eq!(s, 415, "PATCH too");
    not_written().await;

    // A page on another origin: refused, preflight included.
    let (s, err) = body_of(c.post(&url).header("origin", "http://evil.test").json(&json!({"values": {"x": 1}})).send().await.unwrap()).await;
    assert_eq!((s, err["code"].clone()), (403, json!(7)), "{err}");
    let pre = c
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://evil.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status().as_u16(), 403);
    assert!(!pre.headers().contains_key("access-control-allow-origin"));
    not_written().await;

    // DNS rebinding: the page's own host name re-pointed at 127.0.0.1.
    for host in [format!("evil.test:{port}"), "evil.test".into(), format!("127.0.0.1.evil.test:{port}")] {
        let (s, err) = body_of(c.get(&url).header("host", host.clone()).send().await.unwrap()).await;
        assert_eq!(s, 403, "{host}: {err}");
        assert!(err["message"].as_str().unwrap().contains("loopback"), "{err}");
    }

    // A loopback page (any port) may call, with CORS naming it.
    let pre = c
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert_eq!(pre.headers()["access-control-allow-origin"], "http://localhost:5173");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "gw.test".into()] {
        let r = c
            .post(&url)
            .header("host", host.clone())
            .header("origin", "http://127.0.0.1:8000")
            .header("content-type", "application/json; charset=utf-8")
            .body(r#"{"values":{"from":"a loopback page"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{host}");
        assert_eq!(r.headers()["access-control-allow-origin"], "http://127.0.0.1:8000");
    }
    let (s, _) = body_of(
        c.patch(&url).header("content-type", "application/merge-patch+json").body(r#"{"more":1}"#).send().await.unwrap(),
    )
    .await;
    assert_eq!(s, 200, "+json types are JSON");
    gw.stop().await;
}

/// With authentication on, any origin may call (tokens travel in a header a
/// page cannot set without a preflight), but writes still need JSON.
#[tokio::test]
async fn with_auth_on_cors_is_open_and_writes_still_need_json() {
    let gw = TestGateway::start_with(|c| {
        c.dev = false;
        c.auth.auth_disabled = false;
        c.bind = "127.0.0.1".into();
        c.auth.jwt_hmac_secret = Some("0123456789abcdef0123456789abcdef-test-secret".into());
        c.auth.request_policy_path = vec![crate::examples::repo().join("examples/policies/allow_all.rego")];
    })
    .await;
    let url = format!("{}/api/state/ref/d/t/k", gw.url());
    let c = http();
    let r = c.get(&url).header("origin", "http://app.example").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = c.get(&url).header("host", "gw.example.com").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "any host name: the token decides");
    let (s, err) = body_of(c.post(&url).header("content-type", "text/plain").body("{}").send().await.unwrap()).await;
    assert_eq!(s, 415, "{err}");
    gw.stop().await;
}

async fn body_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text)))
}

/// The hostile queries of `hostile::hostile_queries_are_invalid_argument`
/// over REST: 400 naming the field, never a 503 the client would retry.
#[tokio::test]
async fn hostile_queries_are_bad_requests() {
    let gw = TestGateway::start().await;
    let base = gw.url();
    let c = http();
    // sqlite evaluates the paths per row: give it one.
    let r = c.post(format!("{base}/api/state/ref/d/t/k")).json(&json!({"values": {"a": 1}})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let many = crate::hostile::equalities(1001);
    let nul = r#"{"a\u0000": 1}"#;
    let cases: [(&str, &str, &str); 6] = [
        ("state", "query_string", nul),
        ("events", "query_string", nul),
        ("events", "claims_query", nul),
        ("state", "sort_by", "a\u{0}b"),
        ("state", "query_string", &many),
        ("events", "claims_query", &many),
    ];
    for (what, field, value) in cases {
        let r = c
            .get(format!("{base}/api/{what}/search"))
            .query(&[("domain", "d"), ("type", "t"), ("limit", "5"), (field, value)])
            .send()
            .await
            .unwrap();
        let (status, err) = body(r).await;
        assert_eq!(status, 400, "{what} {field}: {err}");
        assert!(err["message"].as_str().unwrap().contains(field), "{what} {field}: {err}");
    }
    let most = crate::hostile::equalities(stategate::model::query::MAX_CONDITIONS);
    let r = c
        .get(format!("{base}/api/events/search"))
        .query(&[("domain", "d"), ("type", "t"), ("limit", "5"), ("query_string", &most), ("claims_query", &most)])
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await.0, 200, "a query at the bounds runs");
    gw.stop().await;
}

//! `GET /api/stats` (the console's overview and charts): its numbers are
//! the gateway's own metrics, it is admitted like every call (no token:
//! 401; the request policy sees `/stategate.AdminService/Stats` and may
//! refuse it: 403), and `/readyz` answers from the same readiness checks.

use crate::harness::{TestGateway, http};
use crate::wire::unique;
use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};

const SECRET: &str = "stats-test-secret-0123456789abcdef-xyz";

async fn stats(gw: &TestGateway, token: Option<&str>) -> (u16, Value) {
    let mut req = http().get(format!("{}/api/stats", gw.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn method<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["methods"].as_array().unwrap().iter().find(|m| m["method"] == name).unwrap_or(&Value::Null)
}

#[tokio::test]
async fn stats_count_calls_events_and_streams() {
    let gw = TestGateway::start().await;
    let d = unique("stats");
    let (status, before) = stats(&gw, None).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["storage"], json!({"provider": "sqlite", "ready": true, "error": null}));
    assert_eq!(before["channel"]["ready"], true);
    assert!(before["time"].as_str().unwrap().parse::<i64>().unwrap() > 0);

    let stream = http().get(format!("{}/api/events/stream?domain={d}&type=t", gw.url())).send().await.unwrap();
    let mut body = stream.bytes_stream();
    for key in ["a", "b"] {
        let r = http().post(format!("{}/api/state/ref/{d}/t/{key}", gw.url())).json(&json!({"values": {"n": 1}})).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = http().get(format!("{}/api/state/ref/{d}/t/missing", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(body.next().await.is_some(), "the stream delivers");

    let (_, after) = stats(&gw, None).await;
    assert_eq!(after["streams"]["live"], 1);
    assert_eq!(after["streams"]["topics"], 1);
    let appended = |s: &Value| s["events_appended"]["total"].as_u64().unwrap();
    assert_eq!(appended(&after) - appended(&before), 2);
    assert_eq!(after["events_appended"]["by_kind"]["SET"], 2);
    let set = method(&after, "/stategate.StateService/Set");
    assert_eq!((set["requests"].as_u64(), set["errors"].as_u64()), (Some(2), Some(0)));
    assert_eq!(set["latency"]["count"], 2);
    assert!(set["latency"]["p99_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(set["latency"]["buckets"].as_array().unwrap().last().unwrap(), &json!([null, 2]));
    let get = method(&after, "/stategate.StateService/Get");
    assert_eq!((get["errors"].as_u64(), &get["codes"]), (Some(1), &json!({"NOT_FOUND": 1})));
    // The stats call itself is counted like any call.
    assert_eq!(method(&after, "/stategate.AdminService/Stats")["requests"], 1);
    drop(body);

    // /readyz reads the same checks.
    let ready: Value = http().get(format!("{}/readyz", gw.ops_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready, json!({"ready": true, "storage": after["storage"], "channel": after["channel"]}));
    gw.stop().await;
}

fn token(role: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"sub": role, "role": role, "iat": now, "exp": now + 600});
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

#[tokio::test]
async fn stats_are_authorized_like_every_call() {
    let policy = "package stategate.authz\n\ndefault allow = false\n\nallow {\n  input.claims.role == \"ops\"\n  input.method == \"/stategate.AdminService/Stats\"\n}\n";
    let gw = TestGateway::start_with(|c| {
        c.dev = false;
        c.bind = "127.0.0.1".into();
        c.auth.jwt_hmac_secret = Some(SECRET.into());
        c.auth.request_policy = Some(base64::engine::general_purpose::STANDARD.encode(policy));
    })
    .await;
    let (status, body) = stats(&gw, None).await;
    assert_eq!((status, body["code"].as_i64()), (401, Some(16)), "{body}");
    let (status, body) = stats(&gw, Some(&token("tenant"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("/stategate.AdminService/Stats"), "{body}");
    let (status, body) = stats(&gw, Some(&token("ops"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(method(&body, "/stategate.AdminService/Stats")["codes"], json!({"UNAUTHENTICATED": 1, "PERMISSION_DENIED": 1}));
    gw.stop().await;
}

//! Every RPC over gRPC, with the v0.5.0 semantics of the wire contract.

use crate::harness::TestGateway;
use crate::wire::*;
use futures::StreamExt;
use serde_json::json;
use stategate::proto as pb;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn set_get_del_search_over_grpc() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("grpc");
    let before = stategate::model::now_nanos();

    let event = st.set(state(&d, "user", "alice", json!({"name": "Alice", "address": {"city": "Paris"}, "age": 30})))
        .await
        .unwrap()
        .into_inner();
    assert!(uuid::Uuid::parse_str(&event.id).is_ok(), "event id is a UUID");
    assert_eq!(event.version, 1);
    assert_eq!(event.kind, pb::EventKind::Set as i32);
    assert_eq!(event.method, "/stategate.StateService/Set");
    assert!(event.time >= before && event.time <= stategate::model::now_nanos(), "receive time in ns");
    st.set(state(&d, "user", "bob", json!({"name": "Bob", "address": {"city": "Lyon"}}))).await.unwrap();

    let got = st.get(state_ref(&d, "user", "alice")).await.unwrap().into_inner();
    assert_eq!(from_struct(got.values.as_ref().unwrap()), json!({"name": "Alice", "address": {"city": "Paris"}, "age": 30.0}));
    assert_eq!(got.version, 1);

    let found = st
        .search(pb::SearchStateOpts {
            domain: d.clone(),
            r#type: "user".into(),
            query_string: r#"{"address.city": "Paris"}"#.into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.state_values.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["alice"]);
    let page = st
        .search(pb::SearchStateOpts { domain: d.clone(), r#type: "user".into(), limit: 1, offset: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.state_values.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["bob"]);

    let del = st.del(state_ref(&d, "user", "alice")).await.unwrap().into_inner();
    assert_eq!((del.version, del.kind), (2, pb::EventKind::Del as i32));
    assert_eq!(st.get(state_ref(&d, "user", "alice")).await.unwrap_err().code(), Code::NotFound);

    // History is immutable: Del appended an event and kept the old ones.
    let history = ev
        .search(pb::SearchEventOpts { domain: d.clone(), r#type: "user".into(), key: "alice".into(), limit: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(history.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(from_struct(history[0].state.as_ref().unwrap().values.as_ref().unwrap())["name"], json!("Alice"));
    assert!(history[1].state.as_ref().unwrap().values.is_none(), "a deletion carries no values");
    let one = ev.get(pb::EventRef { id: history[0].id.clone() }).await.unwrap().into_inner();
    assert_eq!(one, history[0]);
    assert_eq!(ev.get(pb::EventRef { id: "nope".into() }).await.unwrap_err().code(), Code::NotFound);

    // min/max are inclusive bounds on time.
    let t = history[0].time;
    let bounded = ev
        .search(pb::SearchEventOpts { domain: d.clone(), r#type: "user".into(), min: t, max: t, limit: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(bounded.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), [history[0].id.clone()]);
    gw.stop().await;
}

#[tokio::test]
async fn invalid_input_names_the_field() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let cases: Vec<(&str, tonic::Status)> = vec![
        ("domain", st.set(state("", "t", "k", json!({}))).await.unwrap_err()),
        ("type", st.set(state("d", "a b", "k", json!({}))).await.unwrap_err()),
        ("key", st.get(state_ref("d", "t", "")).await.unwrap_err()),
        ("values", st.set(pb::State { domain: "d".into(), r#type: "t".into(), key: "k".into(), ..Default::default() }).await.unwrap_err()),
        ("limit", st.search(pb::SearchStateOpts { domain: "d".into(), r#type: "t".into(), limit: 0, ..Default::default() }).await.unwrap_err()),
        ("query_string", st.search(pb::SearchStateOpts { domain: "d".into(), r#type: "t".into(), limit: 1, query_string: "[1]".into(), ..Default::default() }).await.unwrap_err()),
        ("query_string", st.search(pb::SearchStateOpts { domain: "d".into(), r#type: "t".into(), limit: 1, query_string: r#"{"a": {"$where": 1}}"#.into(), ..Default::default() }).await.unwrap_err()),
        ("offset", ev.search(pb::SearchEventOpts { domain: "d".into(), r#type: "t".into(), limit: 1, offset: -1, ..Default::default() }).await.unwrap_err()),
        ("min", ev.search(pb::SearchEventOpts { domain: "d".into(), r#type: "t".into(), limit: 1, min: -5, ..Default::default() }).await.unwrap_err()),
        ("expected_version", st.set(pb::State { expected_version: Some(-1), ..state("d", "t", "k", json!({})) }).await.unwrap_err()),
    ];
    for (field, status) in cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "message names {field}: {}", status.message());
    }
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!({ "a": nested });
    }
    let deep = st.set(state("d", "t", "k", json!({ "x": nested }))).await.unwrap_err();
    assert_eq!(deep.code(), Code::InvalidArgument);
    gw.stop().await;
}

#[tokio::test]
async fn huge_limits_are_capped_not_refused() {
    let gw = TestGateway::start_with(|c| c.max_search_limit = 3).await;
    let mut st = gw.state_client().await;
    let d = unique("cap");
    for i in 0..5 {
        st.set(state(&d, "t", &format!("k{i}"), json!({"i": i}))).await.unwrap();
    }
    let found = st
        .search(pb::SearchStateOpts { domain: d, r#type: "t".into(), limit: i64::MAX, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.state_values.len(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn stream_receives_writes_of_its_domain_and_type_only() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    let d = unique("stream");
    let mut stream = ev
        .stream(pb::StreamOpts { domain: d.clone(), r#type: "user".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    st.set(state(&d, "other", "x", json!({"skip": true}))).await.unwrap();
    st.set(state(&d, "user", "a", json!({"n": 1}))).await.unwrap();
    st.del(state_ref(&d, "user", "a")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((first.state.as_ref().unwrap().key.as_str(), first.version), ("a", 1));
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((second.kind, second.version), (pb::EventKind::Del as i32, 2));
    gw.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let gw = TestGateway::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(gw.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "stategate.StateService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse};
    let mut reflection = ServerReflectionClient::new(gw.channel().await);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut responses = reflection.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["stategate.StateService", "stategate.EventService", "grpc.health.v1.Health"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    use tonic_reflection::pb::v1alpha::{server_reflection_client::ServerReflectionClient as AlphaClient, ServerReflectionRequest as AlphaRequest, server_reflection_request::MessageRequest as AlphaMessage};
    let mut alpha = AlphaClient::new(gw.channel().await);
    let request = AlphaRequest { host: String::new(), message_request: Some(AlphaMessage::FileContainingSymbol("stategate.StateService".into())) };
    let mut responses = alpha.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    assert!(responses.next().await.unwrap().is_ok(), "v1alpha reflection answers");
    gw.stop().await;
}

/// STATEGATE_PUBLIC_METADATA=false: reflection and /openapi.json need a
/// valid token; health stays open (probes carry none). The default keeps
/// them public.
#[tokio::test]
async fn service_descriptions_need_a_token_unless_public() {
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest};
    use tonic_reflection::pb::v1alpha::{server_reflection_client::ServerReflectionClient as AlphaClient, ServerReflectionRequest as AlphaRequest, server_reflection_request::MessageRequest as AlphaMessage};
    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "dev", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let with_token = |msg| {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", bearer.clone());
        r
    };
    let list = || ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let auth_on = |public: bool| {
        move |c: &mut stategate::config::Config| {
            c.dev = false;
            c.auth.auth_disabled = false;
            c.bind = "127.0.0.1".into();
            c.auth.jwt_hmac_secret = Some(SECRET.into());
            c.auth.request_policy_path = vec![crate::examples::repo().join("examples/policies/allow_all.rego")];
            c.public_metadata = public;
        }
    };

    let gw = TestGateway::start_with(auth_on(true)).await;
    let mut reflection = ServerReflectionClient::new(gw.channel().await);
    let mut answers = reflection.server_reflection_info(futures::stream::iter([list()])).await.unwrap().into_inner();
    assert!(answers.next().await.unwrap().is_ok(), "public by default");
    let r = reqwest::get(format!("{}/openapi.json", gw.url())).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    gw.stop().await;

    let gw = TestGateway::start_with(auth_on(false)).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(gw.channel().await);
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "health stays open");

    let mut reflection = ServerReflectionClient::new(gw.channel().await);
    let err = reflection.server_reflection_info(futures::stream::iter([list()])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut alpha = AlphaClient::new(gw.channel().await);
    let alpha_list = AlphaRequest { host: String::new(), message_request: Some(AlphaMessage::ListServices(String::new())) };
    let err = alpha.server_reflection_info(futures::stream::iter([alpha_list])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "v1alpha too");
    let mut answers = reflection
        .server_reflection_info(with_token(futures::stream::iter([list()])))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.next().await.unwrap().is_ok(), "a valid token lists the services");

    let c = reqwest::Client::new();
    let url = format!("{}/openapi.json", gw.url());
    for presented in [None, Some("not-a-jwt")] {
        let mut req = c.get(&url);
        if let Some(t) = presented {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{presented:?}");
        assert!(r.headers().contains_key("www-authenticate"));
        let err: serde_json::Value = r.json().await.unwrap();
        assert_eq!(err["code"], json!(16), "{err}");
    }
    let spec: serde_json::Value = c.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    gw.stop().await;
}

/// Each gRPC call is counted once in `requests_total`, with the code it
/// ended with (the token check before the body is read is not a second
/// call), and a call refused by that check is counted with its code.
#[tokio::test]
async fn each_grpc_call_is_counted_once() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let d = unique("counted");
    st.set(state(&d, "t", "k", json!({"a": 1}))).await.unwrap();
    assert_eq!(st.get(state_ref(&d, "t", "missing")).await.unwrap_err().code(), Code::NotFound);
    let metrics = reqwest::get(format!("{}/metrics", gw.ops_url())).await.unwrap().text().await.unwrap();
    let count = |code: &str, method: &str| -> Option<String> {
        let line = format!("stategate_requests_total{{code=\"{code}\",method=\"/stategate.StateService/{method}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(line.as_str()).map(str::to_owned))
    };
    assert_eq!(count("OK", "Set").as_deref(), Some("1"), "{metrics}");
    assert_eq!(count("NOT_FOUND", "Get").as_deref(), Some("1"), "{metrics}");
    assert_eq!(count("OK", "Get"), None, "a Get that ended NOT_FOUND was also counted OK:\n{metrics}");
    gw.stop().await;
}

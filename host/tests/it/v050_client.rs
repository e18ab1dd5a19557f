//! A client generated from only the v0.5.0 `.proto` (tests/v050) works
//! against this gateway unchanged: same paths, same field numbers, and the
//! newer `Event` responses of Set/Del decode as `Empty`.

use crate::harness::TestGateway;
use crate::wire::{from_struct, to_struct, unique};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

#[allow(clippy::all, dead_code)]
mod v050 {
    include!(concat!(env!("OUT_DIR"), "/v050/stategate.rs"));
}

use v050::{event_service_client::EventServiceClient, state_service_client::StateServiceClient};

#[tokio::test]
async fn unchanged_v050_client_works() {
    let gw = TestGateway::start().await;
    let mut st = StateServiceClient::new(gw.channel().await);
    let mut ev = EventServiceClient::new(gw.channel().await);
    let d = unique("v050");

    let mut stream = ev
        .stream(v050::StreamOpts { domain: d.clone(), r#type: "user".into() })
        .await
        .unwrap()
        .into_inner();

    let state = |key: &str, v| v050::State { domain: d.clone(), r#type: "user".into(), key: key.into(), values: Some(to_struct(v)) };
    let _empty: () = st.set(state("alice", json!({"name": "Alice", "tags": ["x"]}))).await.unwrap().into_inner();
    st.set(state("bob", json!({"name": "Bob"}))).await.unwrap();

    let got = st
        .get(v050::StateRef { domain: d.clone(), r#type: "user".into(), key: "alice".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(from_struct(got.values.as_ref().unwrap()), json!({"name": "Alice", "tags": ["x"]}));

    let found = st
        .search(v050::SearchStateOpts { domain: d.clone(), r#type: "user".into(), query_string: r#"{"name":"Bob"}"#.into(), limit: 10, offset: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.state_values.len(), 1);
    assert_eq!(found.state_values[0].key, "bob");

    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.state.as_ref().unwrap().key, "alice");
    assert!(uuid::Uuid::parse_str(&first.id).is_ok());
    assert!(first.time > 0);
    assert!(first.claims.is_some());

    st.del(v050::StateRef { domain: d.clone(), r#type: "user".into(), key: "alice".into() }).await.unwrap();
    let events = ev
        .search(v050::SearchEventOpts { domain: d.clone(), r#type: "user".into(), key: "alice".into(), limit: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 2, "the set and the deletion");
    let missing = st
        .get(v050::StateRef { domain: d, r#type: "user".into(), key: "alice".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    gw.stop().await;
}

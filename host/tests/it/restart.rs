//! Acknowledged writes survive a restart of the gateway, with their history.

use crate::harness::{TestGateway, dev_config};
use crate::wire::*;
use serde_json::json;
use stategate::proto as pb;

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = unique("restart");
    let gw = TestGateway::start_config(dev_config(dir.path())).await;
    let mut st = gw.state_client().await;
    let mut acked = vec![];
    for i in 0..50 {
        let key = format!("k{}", i % 10);
        let ev = st.set(state(&d, "t", &key, json!({"i": i}))).await.unwrap().into_inner();
        acked.push(ev);
    }
    st.del(state_ref(&d, "t", "k0")).await.unwrap();
    gw.stop().await;

    let gw = TestGateway::start_config(dev_config(dir.path())).await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    for k in 1..10 {
        let got = st.get(state_ref(&d, "t", &format!("k{k}"))).await.unwrap().into_inner();
        assert_eq!(got.version, 5);
        assert_eq!(from_struct(got.values.as_ref().unwrap())["i"], json!((40 + k) as f64));
    }
    assert_eq!(st.get(state_ref(&d, "t", "k0")).await.unwrap_err().code(), tonic::Code::NotFound);
    let history = ev
        .search(pb::SearchEventOpts { domain: d.clone(), r#type: "t".into(), limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(history.len(), 51);
    for (stored, ack) in history.iter().zip(&acked) {
        assert_eq!(stored.id, ack.id);
        assert_eq!(stored.version, ack.version);
    }
    // Versions continue where they were.
    let next = st.set(state(&d, "t", "k0", json!({"back": true}))).await.unwrap().into_inner();
    assert_eq!(next.version, 7);
    gw.stop().await;
}

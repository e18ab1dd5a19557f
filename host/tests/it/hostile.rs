//! Hostile input over raw gRPC: bytes that are not a valid message, invalid
//! UTF-8 in string fields, oversized messages, random bytes, and more
//! streams on one connection than the server allows. Each must get a client
//! error status (never INTERNAL or UNKNOWN) and leave the gateway serving.

use crate::harness::TestGateway;
use crate::wire::*;
use bytes::{Buf, BufMut, Bytes};
use proptest::prelude::*;
use serde_json::json;
use stategate::proto as pb;
use std::time::Duration;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Sends and receives message bodies as they are, so a test can put any
/// bytes on the wire under a real method path.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_unary(channel: &Channel, path: &'static str, body: Bytes) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(tonic::Request::new(body), http::uri::PathAndQuery::from_static(path), RawCodec).await.map(|r| r.into_inner())
}

/// A client error: the gateway blamed the request, not itself.
fn is_client_error(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::NotFound | Code::OutOfRange | Code::ResourceExhausted | Code::FailedPrecondition
    )
}

/// A protobuf field: tag, then a length-delimited payload.
fn field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![((number << 3) | 2) as u8];
    let mut len = payload.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn malformed_and_invalid_messages_are_invalid_argument() {
    let gw = TestGateway::start().await;
    let channel = gw.channel().await;
    let cases: Vec<(&str, &'static str, Vec<u8>)> = vec![
        ("truncated length", "/stategate.StateService/Get", vec![0x0a, 0x7f, b'd']),
        ("bad wire type", "/stategate.StateService/Set", vec![0x0f, 0x01]),
        ("invalid UTF-8 in domain", "/stategate.StateService/Get", field(1, &[0xff, 0xfe, 0x80])),
        ("invalid UTF-8 in query_string", "/stategate.StateService/Search", [field(1, b"d"), field(2, b"t"), field(3, &[0xc3, 0x28])].concat()),
        ("varint overflow", "/stategate.EventService/Search", vec![0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
    ];
    for (what, path, body) in cases {
        let status = raw_unary(&channel, path, Bytes::from(body)).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    // A message nested past prost's recursion limit (Struct in Value in Struct…).
    let mut nested = Vec::new();
    for _ in 0..200 {
        // Struct.fields map entry { key = "a", value = Value { struct_value = nested } }
        let value = field(5, &nested);
        let entry = [field(1, b"a"), field(2, &value)].concat();
        nested = field(1, &entry);
    }
    let status = raw_unary(&channel, "/stategate.StateService/Set", Bytes::from([field(1, b"d"), field(2, b"t"), field(3, b"k"), field(4, &nested)].concat()))
        .await
        .expect_err("nested");
    assert!(is_client_error(status.code()), "nested: {status:?}");
    // And the gateway still serves.
    let mut st = gw.state_client().await;
    st.set(state("d", "t", "k", json!({"ok": true}))).await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_limit_is_configurable() {
    let gw = TestGateway::start_with(|c| c.max_message_bytes = 64 * 1024).await;
    let mut st = gw.state_client().await;
    let big = "x".repeat(100 * 1024);
    let status = st.set(state("d", "t", "k", json!({"big": big}))).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let small = "x".repeat(10 * 1024);
    st.set(state("d", "t", "k", json!({"small": small}))).await.unwrap();
    gw.stop().await;
}

/// More streams on one connection than `STATEGATE_MAX_STREAMS_PER_CONNECTION`:
/// HTTP/2 flow control holds the extra one back (the server advertised its
/// limit) instead of the server failing, and other connections are served.
#[tokio::test]
async fn streams_past_the_per_connection_limit_wait_for_a_slot() {
    let gw = TestGateway::start_with(|c| c.max_streams_per_connection = 4).await;
    let channel = gw.channel().await;
    let opts = || pb::StreamOpts { domain: "d".into(), r#type: "t".into(), ..Default::default() };
    let mut open = vec![];
    for _ in 0..4 {
        let mut ev = pb::event_service_client::EventServiceClient::new(channel.clone());
        open.push(ev.stream(opts()).await.unwrap().into_inner());
    }
    let mut ev = pb::event_service_client::EventServiceClient::new(channel.clone());
    let fifth = tokio::spawn(async move { ev.stream(opts()).await.map(|r| r.into_inner()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fifth.is_finished(), "the fifth stream waits for a slot on this connection");
    // Another connection is not affected.
    let mut other = gw.state_client().await;
    other.set(state("d", "t", "k", json!({}))).await.unwrap();
    drop(open.pop());
    let fifth = tokio::time::timeout(Duration::from_secs(10), fifth).await.expect("a freed slot is reused").unwrap();
    assert!(fifth.is_ok(), "{:?}", fifth.err());
    gw.stop().await;
}

#[test]
fn random_bytes_get_client_errors_only() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = rt.block_on(TestGateway::start());
    let channel = rt.block_on(gw.channel());
    const PATHS: [&str; 9] = [
        "/stategate.StateService/Set",
        "/stategate.StateService/Get",
        "/stategate.StateService/Del",
        "/stategate.StateService/Search",
        "/stategate.EventService/Search",
        "/stategate.EventService/Get",
        "/stategate.StateService/Edit",
        "/stategate.EventService/Ack",
        "/stategate.EventService/Parked",
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 200, ..ProptestConfig::default() });
    runner
        .run(&(0..PATHS.len(), prop::collection::vec(any::<u8>(), 0..256)), |(p, body)| {
            match rt.block_on(raw_unary(&channel, PATHS[p], Bytes::from(body.clone()))) {
                Ok(_) => {}
                Err(s) => prop_assert!(is_client_error(s.code()), "{} {:02x?}: {:?}", PATHS[p], body, s),
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(gw.stop());
}

/// `{"f0": 0, "f1": 1, …}`: `n` equality conditions (each one sqlite could
/// push down into SQL).
pub fn equalities(n: usize) -> String {
    serde_json::Value::Object((0..n).map(|i| (format!("f{i}"), json!(i))).collect()).to_string()
}

/// Queries the store cannot run are the client's mistake, not an outage
/// (issue 17, point 10): a NUL in a field path made sqlite fail with "bad
/// JSON path", a thousand conditions with "Expression tree is too large",
/// both reported as UNAVAILABLE, which clients retry. Each is
/// INVALID_ARGUMENT naming the field, and a query at the bounds runs.
#[tokio::test]
async fn hostile_queries_are_invalid_argument() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let mut ev = gw.event_client().await;
    st.set(state("d", "t", "k", json!({"a": 1}))).await.unwrap();
    let states = |query_string: &str, sort_by: &str| pb::SearchStateOpts {
        domain: "d".into(),
        r#type: "t".into(),
        limit: 10,
        query_string: query_string.into(),
        sort_by: sort_by.into(),
        ..Default::default()
    };
    let events = |query_string: &str, claims_query: &str| pb::SearchEventOpts {
        domain: "d".into(),
        r#type: "t".into(),
        limit: 10,
        query_string: query_string.into(),
        claims_query: claims_query.into(),
        ..Default::default()
    };
    let nul = r#"{"a\u0000": 1}"#;
    let deep = format!(r#"{{"{}": 1}}"#, vec!["a"; 40].join("."));
    let long_in = format!(r#"{{"a": {{"$in": {}}}}}"#, json!((0..2000).collect::<Vec<_>>()));
    let cases: Vec<(&str, tonic::Status)> = vec![
        ("query_string", st.search(states(nul, "")).await.unwrap_err()),
        ("query_string", ev.search(events(nul, "")).await.unwrap_err()),
        ("claims_query", ev.search(events("", nul)).await.unwrap_err()),
        ("sort_by", st.search(states("", "a\u{0}b")).await.unwrap_err()),
        ("query_string", st.search(states(&equalities(1001), "")).await.unwrap_err()),
        ("query_string", ev.search(events(&equalities(1001), "")).await.unwrap_err()),
        ("claims_query", ev.search(events("", &equalities(1001))).await.unwrap_err()),
        ("query_string", st.search(states(&deep, "")).await.unwrap_err()),
        ("query_string", st.search(states(&long_in, "")).await.unwrap_err()),
    ];
    for (field, status) in cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "the message names {field}: {}", status.message());
    }
    // At the bounds, in both filters at once, the store runs the query.
    let most = equalities(stategate::model::query::MAX_CONDITIONS);
    st.search(states(&most, "f0")).await.unwrap();
    ev.search(events(&most, &most)).await.unwrap();
    let found = st.search(states(r#"{"a": 1}"#, "")).await.unwrap().into_inner();
    assert_eq!(found.state_values.len(), 1, "and the gateway still serves");
    gw.stop().await;
}

/// A writer chooses a record's key, and names accept every character but
/// white space. The gateway's messages quote keys, and they reach a terminal
/// as they are (grpcurl, curl): the escape sequences and the bidirectional
/// overrides in them are written out, over gRPC and REST alike, while the
/// record itself keeps its real key.
#[tokio::test]
async fn messages_write_out_what_would_steer_a_terminal() {
    let gw = TestGateway::start().await;
    let mut st = gw.state_client().await;
    let d = unique("steer");
    let key = "invoice\u{202e}fdp.exe\u{1b}[2J\u{9b}";
    let shown = "invoice\\u{202e}fdp.exe\\u{1b}[2J\\u{9b}";
    let raw = |m: &str| m.chars().any(|c| c.is_control() || c == '\u{202e}');

    st.set(state(&d, "t", key, json!({"a": 1}))).await.unwrap();
    let conflict = pb::State { expected_version: Some(7), ..state(&d, "t", key, json!({"a": 2})) };
    let status = st.set(conflict).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains(&format!("{d}/t/{shown}")) && !raw(status.message()), "{:?}", status.message());
    let gone = state_ref(&d, "t", &format!("{key}-gone"));
    let status = st.get(gone).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains(shown) && !raw(status.message()), "{:?}", status.message());

    let path_key: String = format!("{key}-gone").bytes().map(|b| format!("%{b:02X}")).collect();
    let r = crate::harness::http().get(format!("{}/api/state/ref/{d}/t/{path_key}", gw.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(shown) && !raw(message), "{message:?}");

    let stored = st.get(state_ref(&d, "t", key)).await.unwrap().into_inner();
    assert_eq!(stored.key, key, "the record keeps its real key");
    gw.stop().await;
}

//! TLS from the cert/key files, on the API port and the ops port.

use crate::harness::TestGateway;
use crate::wire::*;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test]
async fn serves_grpc_and_ops_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let gw = TestGateway::start_with(|c| {
        c.tls_cert_file = Some(cert_path.clone());
        c.tls_key_file = Some(key_path.clone());
    })
    .await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", gw.addr.port()))
        .unwrap()
        .tls_config(tls.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut st = stategate::proto::state_service_client::StateServiceClient::new(channel);
    let d = unique("tls");
    st.set(state(&d, "t", "k", json!({"secure": true}))).await.unwrap();
    let got = st.get(state_ref(&d, "t", "k")).await.unwrap().into_inner();
    assert_eq!(from_struct(got.values.as_ref().unwrap()), json!({"secure": true}));

    // Plain text on a TLS port does not get an answer.
    let plain = Channel::from_shared(gw.url()).unwrap().connect().await;
    if let Ok(plain) = plain {
        let mut c = stategate::proto::state_service_client::StateServiceClient::new(plain);
        assert!(c.get(state_ref(&d, "t", "k")).await.is_err());
    }

    // The ops port speaks TLS too: health over gRPC-less HTTPS via tonic's
    // HTTP/2 channel is not possible, so check the handshake succeeds.
    let ops = Channel::from_shared(format!("https://localhost:{}", gw.ops_addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    assert!(ops.is_ok(), "TLS handshake on the ops port: {ops:?}");

    // A key that does not match the certificate stops the start, naming the variable.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let wrong_key = dir.path().join("wrong.pem");
    std::fs::write(&wrong_key, other.signing_key.serialize_pem()).unwrap();
    let mut config = crate::harness::dev_config(dir.path());
    config.tls_cert_file = Some(cert_path);
    config.tls_key_file = Some(wrong_key);
    let err = stategate::server::start(config).await.err().expect("mismatched key is refused");
    assert!(format!("{err:#}").contains("STATEGATE_TLS_KEY_FILE"), "{err:#}");
    gw.stop().await;
}

/// A TLS handshake that never finishes (nothing sent, or half a
/// ClientHello) is cut at the handshake timeout, on both ports.
#[tokio::test]
async fn stalled_tls_handshakes_are_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let gw = TestGateway::start_with(|c| {
        c.tls_cert_file = Some(cert_path.clone());
        c.tls_key_file = Some(key_path.clone());
        c.handshake_timeout_ms = 500;
    })
    .await;
    // A TLS record header announcing a ClientHello of 512 bytes, then 5 of them.
    let half_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    for addr in [gw.addr, gw.ops_addr] {
        for sent in [&[][..], half_hello] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(sent).await.unwrap();
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(std::time::Duration::from_secs(120), s.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{addr} with {} bytes sent: still open", sent.len());
        }
    }
    gw.stop().await;
}

//! The brokers' security options against real peers.
//!
//! TLS: a TLS terminator in front of a real broker (the shared RabbitMQ, a
//! private Tansu advertising the terminator's port), with a test CA, a
//! server certificate for `localhost` and a required client certificate.
//! The terminator is what checks the gateway's side: that it verifies the
//! server against `ca_file`, presents `cert_file` + `key_file`, and refuses
//! a server its roots do not trust.
//!
//! SASL is not tested here (docs/backends.md says why).

use crate::channel_conformance::event;
use crate::procs;
use crate::storage_conformance::unique_domain;
use futures::StreamExt;
use crate::test_pki;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stategate::channel::Channel;
use stategate::channel::kafka::{KafkaChannel, KafkaConfig};
use stategate::channel::rabbitmq::{RabbitMqChannel, RabbitMqConfig};
use stategate::model::{Error, Topic};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// A test CA with a server certificate for `localhost` and a client
/// certificate, written as PEM files; plus a second, unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
    server: Arc<ServerConfig>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let root = test_pki::ca("stategate test CA");
        let other = test_pki::ca("some other CA");
        let (server_cert, server_key) = test_pki::leaf(&["localhost"], &root);
        let (client_cert, client_key) = test_pki::leaf(&["gateway"], &root);
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        write("ca.pem", root.pem());
        write("other-ca.pem", other.pem());
        write("client.pem", client_cert.pem());
        write("client-key.pem", client_key.serialize_pem());

        let mut roots = RootCertStore::empty();
        roots.add(root.der().clone()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert.der().to_vec())],
                PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        Pki { dir, server: Arc::new(server) }
    }

    fn file(&self, name: &str) -> String {
        let path: PathBuf = self.dir.path().join(name);
        path.display().to_string()
    }
}

/// Accepts TLS on `port` (a client certificate required) and forwards the
/// plaintext to `upstream`, until the test ends.
async fn terminator(pki: &Pki, port: u16, upstream: u16) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let acceptor = TlsAcceptor::from(pki.server.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake is part of what the tests check.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    })
}

/// Publishes an event and reads it back through the channel.
async fn round_trip(channel: &dyn Channel) {
    let d = unique_domain();
    let mut sub = channel.subscribe(&Topic { domain: Some(d.clone()), ty: Some("t".into()) }).await.unwrap();
    let e = event(&d, "t", "k", 1);
    channel.publish(&e).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("delivered in time").unwrap().unwrap();
    assert_eq!(got, e);
    channel.ping().await.unwrap();
}

/// The options of a provider object (without its `"name"`), merged.
fn options<T: serde::de::DeserializeOwned>(base: serde_json::Value, extra: serde_json::Value) -> T {
    let mut o = base;
    o.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(o).unwrap()
}

async fn bounded<T>(f: impl Future<Output = stategate::model::Result<T>>) -> stategate::model::Result<Arc<T>> {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("opening ends in time").map(Arc::new)
}

fn unavailable<T>(r: stategate::model::Result<T>) -> String {
    match r {
        Err(e @ Error::Unavailable(_)) => e.to_string(),
        Err(e) => panic!("expected UNAVAILABLE, got {e}"),
        Ok(_) => panic!("expected UNAVAILABLE, it opened"),
    }
}

#[tokio::test]
async fn rabbitmq_over_tls_with_a_client_certificate() {
    let Some(url) = crate::harness::backend_url("AMQP") else { return };
    let upstream = url::Url::parse(&url).unwrap().port().unwrap_or(5672);
    let pki = Pki::new();
    let port = procs::free_port();
    let _t = terminator(&pki, port, upstream).await;
    let amqps = format!("amqps://guest:guest@localhost:{port}/%2f");
    let open = |extra: serde_json::Value| {
        let c: RabbitMqConfig = options(serde_json::json!({"addr": amqps, "exchange": "stategate-test"}), extra);
        async move { bounded(RabbitMqChannel::open(&c)).await }
    };
    let good = open(serde_json::json!({"ca_file": pki.file("ca.pem"), "cert_file": pki.file("client.pem"), "key_file": pki.file("client-key.pem")}));
    round_trip(&*good.await.expect("rabbitmq opens over TLS")).await;

    // The server's certificate must chain to ca_file.
    let untrusted = open(serde_json::json!({"ca_file": pki.file("other-ca.pem"), "cert_file": pki.file("client.pem"), "key_file": pki.file("client-key.pem")}));
    eprintln!("untrusted server: {}", unavailable(untrusted.await));
    // The terminator requires a client certificate.
    let anonymous = open(serde_json::json!({"ca_file": pki.file("ca.pem")}));
    eprintln!("no client certificate: {}", unavailable(anonymous.await));
}

#[tokio::test]
async fn kafka_over_tls_with_a_client_certificate() {
    let Some(tansu) = procs::tansu_bin() else { return };
    let pki = Pki::new();
    let port = procs::free_port();
    // Tansu listens in plain TCP and advertises the terminator, so every
    // connection the client makes (bootstrap and partition leader) is TLS.
    let plain = procs::free_port();
    let listen = format!("tcp://127.0.0.1:{plain}");
    let advertised = format!("tcp://localhost:{port}");
    let args = ["broker", "--listener-url", &listen, "--advertised-listener-url", &advertised, "--storage-engine", "memory://tansu/"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut broker = procs::Server::new(tansu, plain, tempfile::tempdir().unwrap(), args);
    broker.start().await;
    let _t = terminator(&pki, port, plain).await;
    let open = |extra: serde_json::Value| {
        let c: KafkaConfig = options(serde_json::json!({"addr": format!("localhost:{port}"), "topic": crate::backends::run_id(), "fetch_wait_ms": 20}), extra);
        async move { bounded(KafkaChannel::open(&c)).await }
    };
    let good = open(serde_json::json!({"ca_file": pki.file("ca.pem"), "cert_file": pki.file("client.pem"), "key_file": pki.file("client-key.pem")}));
    round_trip(&*good.await.expect("kafka opens over TLS")).await;

    let untrusted = open(serde_json::json!({"ca_file": pki.file("other-ca.pem"), "cert_file": pki.file("client.pem"), "key_file": pki.file("client-key.pem")}));
    eprintln!("untrusted server: {}", unavailable(untrusted.await));
    let anonymous = open(serde_json::json!({"ca_file": pki.file("ca.pem")}));
    eprintln!("no client certificate: {}", unavailable(anonymous.await));
    // Plain Kafka to the TLS port does not open.
    eprintln!("plaintext: {}", unavailable(open(serde_json::json!({})).await));
}


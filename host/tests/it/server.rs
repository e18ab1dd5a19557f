//! What a peer can hold before any token is checked (docs/security.md):
//! connection caps per listener and per peer address, the handshake and
//! idle timeouts, HTTP/2 keepalive pings, accept back-off when the process
//! is out of file descriptors (the ops port still answering), and the ops
//! port's own address and token.

use crate::harness::{TestGateway, http};
use crate::wire::*;
use futures::StreamExt;
use serde_json::{Value, json};
use stategate::proto as pb;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Generous bound on anything the server should do by itself.
const PATIENCE: Duration = Duration::from_secs(120);

/// Reads (and discards) until the server closes the connection: EOF or a
/// reset. Returns what was read, or `None` if it was still open at `within`.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok().map(|_| seen)
}

/// A connection to `addr` from the loopback source address `from`
/// (127.0.0.0/8 all reaches lo, so each is its own peer).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// The value of a metric line starting with `series` on /metrics (0 when absent).
async fn metric(ops_url: &str, series: &str) -> f64 {
    let text = http().get(format!("{ops_url}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Polls a metric (bounded) until `want` holds; returns its value.
async fn wait_metric(ops_url: &str, series: &str, want: impl Fn(f64) -> bool) -> f64 {
    let mut last = 0.0;
    for _ in 0..600 {
        last = metric(ops_url, series).await;
        if want(last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never reached the expected value; last {last}");
}

const OPEN: &str = "stategate_connections{listener=\"api\"}";

#[tokio::test]
async fn connections_are_capped_per_listener_and_per_peer() {
    let gw = TestGateway::start_with(|c| {
        c.max_connections = Some(4);
        c.max_connections_per_peer = Some(2);
        c.handshake_timeout_ms = 600_000;
    })
    .await;
    let ops = gw.ops_url();
    let _a1 = connect_from("127.0.0.1", gw.addr).await;
    let _a2 = connect_from("127.0.0.1", gw.addr).await;
    wait_metric(&ops, OPEN, |v| v == 2.0).await;
    // A third from the same address is closed at once.
    let mut a3 = connect_from("127.0.0.1", gw.addr).await;
    assert!(until_closed(&mut a3, PATIENCE).await.is_some(), "over the per-peer cap");
    let per_peer = "stategate_connections_refused_total{listener=\"api\",reason=\"max_per_peer\"}";
    assert_eq!(metric(&ops, per_peer).await, 1.0);

    let b1 = connect_from("127.0.0.2", gw.addr).await;
    let _b2 = connect_from("127.0.0.2", gw.addr).await;
    wait_metric(&ops, OPEN, |v| v == 4.0).await;
    // The listener is full: another peer is closed at once too.
    let mut c1 = connect_from("127.0.0.3", gw.addr).await;
    assert!(until_closed(&mut c1, PATIENCE).await.is_some(), "over the listener's cap");
    let total = "stategate_connections_refused_total{listener=\"api\",reason=\"max_connections\"}";
    assert_eq!(metric(&ops, total).await, 1.0);

    // A closed connection gives its slots back.
    drop(b1);
    wait_metric(&ops, OPEN, |v| v == 3.0).await;
    let _c2 = connect_from("127.0.0.3", gw.addr).await;
    wait_metric(&ops, OPEN, |v| v == 4.0).await;
    assert_eq!(metric(&ops, total).await, 1.0, "no new refusal");
    gw.stop().await;
}

/// Silent, trickling and idle connections are closed; a connection with an
/// open stream keeps it for many idle timeouts.
#[tokio::test]
async fn silent_and_idle_connections_are_closed_but_open_streams_are_kept() {
    let gw = TestGateway::start_with(|c| {
        c.handshake_timeout_ms = 1000;
        c.idle_timeout_secs = 1;
    })
    .await;
    let ops = gw.ops_url();
    // Nothing sent.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // A few bytes, then nothing (less than any request or the HTTP/2 preface).
    let mut trickle = TcpStream::connect(gw.addr).await.unwrap();
    trickle.write_all(b"GET /").await.unwrap();
    // A whole HTTP/1.1 request on a keep-alive connection, then nothing.
    let mut keep_alive = TcpStream::connect(gw.addr).await.unwrap();
    keep_alive
        .write_all(b"GET /api/state/ref/d/t/nothing HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut silent, PATIENCE).await, Some(vec![]), "closed without a word");
    assert!(until_closed(&mut trickle, PATIENCE).await.is_some(), "a trickle is not a start");
    let answered = until_closed(&mut keep_alive, PATIENCE).await.expect("the idle keep-alive connection is closed");
    assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 404"), "answered first");
    assert!(metric(&ops, "stategate_connections_timed_out_total{listener=\"api\",reason=\"handshake\"}").await >= 2.0);
    assert!(metric(&ops, "stategate_connections_timed_out_total{listener=\"api\",reason=\"idle\"}").await >= 1.0);

    // An open stream is an open call: its connection outlives the idle
    // timeout several times over and still delivers.
    let d = unique("idle");
    let events = gw.channel().await;
    let mut stream = pb::event_service_client::EventServiceClient::new(events.clone())
        .stream(pb::StreamOpts { domain: d.clone(), r#type: "t".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = gw.channel().await;
    let mut writer = pb::state_service_client::StateServiceClient::new(writes.clone());
    let written = writer.set(state(&d, "t", "k", json!({"n": 1}))).await.unwrap().into_inner();
    let got = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.id, written.id);
    // Once nothing is open, the server closes the HTTP/2 connections (the
    // clients still hold theirs), and a client just reconnects.
    drop(stream);
    wait_metric(&ops, OPEN, |v| v == 0.0).await;
    writer.get(state_ref(&d, "t", "k")).await.expect("the client reconnects after GOAWAY");
    drop(events);
    gw.stop().await;
}

/// The server pings HTTP/2 peers and drops one that never answers, even
/// with the idle timeout off.
#[tokio::test]
async fn http2_peers_that_ignore_pings_are_dropped() {
    let gw = TestGateway::start_with(|c| {
        c.idle_timeout_secs = 0;
        c.http2_keepalive_interval_secs = 1;
        c.http2_keepalive_timeout_secs = 1;
    })
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // The client preface and an empty SETTINGS frame; then silence (no
    // SETTINGS ack, no PING ack).
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let bytes = until_closed(&mut s, PATIENCE).await.expect("the connection is dropped");
    let mut types = vec![];
    let mut rest = bytes.as_slice();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(types.contains(&0x6), "a PING was sent before closing; frame types {types:?}");
    gw.stop().await;
}

#[tokio::test]
async fn the_ops_port_has_its_own_address_and_an_optional_token() {
    // Authentication off on a non-loopback API address: the ops port stays
    // on loopback unless told otherwise.
    let gw = TestGateway::start_with(|c| {
        c.dev = false;
        c.auth.auth_disabled = true;
        c.bind = "0.0.0.0".into();
    })
    .await;
    assert!(gw.addr.ip().is_unspecified());
    assert!(gw.ops_addr.ip().is_loopback(), "ops on {}", gw.ops_addr);
    gw.stop().await;

    const TOKEN: &str = "ops-token-0123456789";
    let gw = TestGateway::start_with(|c| c.ops_token = Some(TOKEN.into())).await;
    let ops = format!("http://127.0.0.1:{}", gw.ops_addr.port());
    let c = http();
    for open in ["/healthz", "/readyz"] {
        assert_eq!(c.get(format!("{ops}{open}")).send().await.unwrap().status().as_u16(), 200, "{open} needs no token");
    }
    for guarded in ["/metrics", "/debug/pprof/profile?seconds=1"] {
        for token in [None, Some("ops-token-0123456780"), Some("")] {
            let mut req = c.get(format!("{ops}{guarded}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 401, "{guarded} with {token:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body: Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("ops token"), "{body}");
        }
        let r = c.get(format!("{ops}{guarded}")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{guarded} with the token");
    }
    gw.stop().await;

    // A token file works the same; a short one stops the start.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ops-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let gw = TestGateway::start_with(|c| c.ops_token_file = Some(file.clone())).await;
    let metrics = format!("http://127.0.0.1:{}/metrics", gw.ops_addr.port());
    assert_eq!(c.get(&metrics).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(c.get(&metrics).bearer_auth(TOKEN).send().await.unwrap().status().as_u16(), 200);
    gw.stop().await;
    std::fs::write(&file, "short").unwrap();
    let mut config = crate::harness::dev_config(dir.path());
    config.ops_token_file = Some(file);
    let err = stategate::server::start(config).await.err().expect("a short ops token is refused");
    assert!(format!("{err:#}").contains("STATEGATE_OPS_TOKEN_FILE"), "{err:#}");
}

/// The gateway binary with its open-file limit (soft and hard) set to
/// `nofile`, a 2 s idle timeout and the given handshake timeout, logging to
/// `<dir>/gateway.log`.
fn spawn_with_fd_limit(dir: &Path, port: u16, ops_port: u16, nofile: u64, handshake_ms: u64, extra: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stategate"));
    cmd.args(["--dev", "--port", &port.to_string(), "--ops-port", &ops_port.to_string(), "--log-format", "text"])
        .args(["--handshake-timeout-ms", &handshake_ms.to_string(), "--idle-timeout-secs", "2"])
        .args(extra)
        .env_remove("STATEGATE_LOG")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

struct Killed(Child);

impl Killed {
    /// Waits (bounded) until the gateway listens; on failure shows its log.
    async fn listening(&mut self, dir: &Path, port: u16) {
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!("the gateway exited ({status}):\n{}", std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the gateway did not listen:\n{}", std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default());
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/healthz` on the ops port answers 200 (bounded wait for the answer).
async fn healthz(ops_port: u16) -> u16 {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{ops_port}/healthz"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the ops port answers")
        .status()
        .as_u16()
}

/// A write and a read over REST after the flood: the API is serving.
async fn api_answers(port: u16) {
    let url = format!("http://127.0.0.1:{port}/api/state/ref/flood/t/k");
    let c = reqwest::Client::new();
    let r = c.post(&url).json(&json!({"values": {"after": "flood"}})).timeout(PATIENCE).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got: Value = c.get(&url).timeout(PATIENCE).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["values"], json!({"after": "flood"}));
}

/// Two distinct free ports (held together while chosen, so they differ).
fn two_free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// 320 idle sockets against a gateway limited to 256 descriptors.
const FLOOD: usize = 320;
const FD_LIMIT: u64 = 256;

async fn flood(port: u16) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        sockets.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    sockets
}

async fn all_closed_by_server(sockets: Vec<TcpStream>) {
    let closed = futures::future::join_all(sockets.into_iter().map(|mut s| async move {
        until_closed(&mut s, PATIENCE).await.is_some()
    }))
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} of {FLOOD} idle sockets were never closed by the server");
}

/// With the default caps (derived from the descriptor limit) the flood is
/// refused or timed out, the ops port answers throughout, and the API
/// serves afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_under_a_low_fd_limit_keeps_ops_and_api_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ops_port) = two_free_ports();
    let mut gw = Killed(spawn_with_fd_limit(dir.path(), port, ops_port, FD_LIMIT, 2000, &[]));
    gw.listening(dir.path(), port).await;
    let sockets = flood(port).await;
    assert_eq!(healthz(ops_port).await, 200, "ops answers during the flood");
    all_closed_by_server(sockets).await;
    assert_eq!(healthz(ops_port).await, 200);
    api_answers(port).await;
    let ops = format!("http://127.0.0.1:{ops_port}");
    let refused = metric(&ops, "stategate_connections_refused_total{listener=\"api\",reason=\"max_per_peer\"}").await
        + metric(&ops, "stategate_connections_refused_total{listener=\"api\",reason=\"max_connections\"}").await;
    let timed_out = metric(&ops, "stategate_connections_timed_out_total{listener=\"api\",reason=\"handshake\"}").await;
    assert!(refused > 0.0 && timed_out > 0.0, "refused {refused}, timed out {timed_out}");
    assert_eq!(refused + timed_out, FLOOD as f64, "every flood socket was refused or timed out");
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    assert!(!log.contains("accept failed"), "the cap kept the process within its descriptors:\n{log}");
}

/// With a cap above the descriptor limit, `accept` runs out of
/// descriptors: it backs off (one warning per episode, not one per try),
/// the ops port answers from its spare descriptors, and once the timeouts
/// free descriptors the API serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_backs_off_and_ops_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ops_port) = two_free_ports();
    let extra = ["--max-connections", "100000", "--max-connections-per-peer", "100000"];
    // A long handshake timeout keeps the descriptors used up while the ops
    // port is asked.
    let mut gw = Killed(spawn_with_fd_limit(dir.path(), port, ops_port, FD_LIMIT, 10_000, &extra));
    gw.listening(dir.path(), port).await;
    let sockets = flood(port).await;
    let log = || std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    for _ in 0..600 {
        if log().contains("accept failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log().contains("accept failed"), "the flood exhausted the descriptors:\n{}", log());
    for _ in 0..3 {
        assert_eq!(healthz(ops_port).await, 200, "ops answers while the API is out of descriptors");
    }
    all_closed_by_server(sockets).await;
    api_answers(port).await;
    let log = log();
    let warnings = log.matches("accept failed").count();
    let recoveries = log.matches("accepting connections again").count();
    assert!(recoveries >= 1, "{log}");
    // One warning per episode: each episode ends with a recovery.
    assert!(warnings <= recoveries + 1, "{warnings} warnings for {recoveries} recoveries:\n{log}");
}

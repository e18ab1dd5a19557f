//! A v0.5.0 deployment's environment starts this gateway unchanged (issue
//! 20): booleans in Go's spellings, empty variables as unset, a `.env`
//! file, deny by default with authentication on, and REST clients that
//! send fields this contract does not know. Each over gRPC and REST, with
//! the binary started as a v0.5.0 operator would start it.

use crate::harness::http;
use crate::procs::{free_port, stategate_bin, wait_port};
use crate::wire::unique;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use stategate::proto::state_service_client::StateServiceClient;
use stategate::proto::{State, StateRef};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use tonic::Code;

const SECRET: &str = "0123456789abcdef0123456789abcdef-v050-dropin";
/// v0.5.0's sample request policy as its `.env` set it (allow all).
const V050_ALLOW_ALL: &str = "cGFja2FnZSBzdGF0ZWdhdGUuYXV0aHoKCmRlZmF1bHQgYWxsb3cgPSB0cnVl";

/// The binary in `dir` with only `env` (and PATH) set.
fn gateway(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(stategate_bin());
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

struct Running {
    child: Child,
    port: u16,
}

impl Running {
    async fn start(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Running {
        // Some runs leave the ops port at its default, port+1: find a port
        // whose neighbour is free too.
        let port = loop {
            let p = free_port();
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let mut env = env.to_vec();
        let port_text = port.to_string();
        env.push(("STATEGATE_PORT", &port_text));
        env.push(("STATEGATE_BIND", "127.0.0.1"));
        let child = gateway(dir, &env, args).spawn().unwrap();
        wait_port(port, "gateway").await;
        Running { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn grpc(&self) -> StateServiceClient<tonic::transport::Channel> {
        StateServiceClient::connect(self.url()).await.unwrap()
    }

    /// Stops the gateway and returns what it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn token(claims: Value) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut claims = claims;
    claims["exp"] = json!(exp);
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn state(d: &str, key: &str, values: Value) -> State {
    State {
        domain: d.into(),
        r#type: "user".into(),
        key: key.into(),
        values: Some(crate::wire::to_struct(values)),
        ..Default::default()
    }
}

/// `STATEGATE_AUTH_DISABLED` in each of Go's true spellings starts the
/// gateway with authentication off; empty variables (as a v0.5.0 template
/// leaves them) are unset; a value Go would not read stops the start
/// naming the variable.
#[tokio::test]
async fn go_booleans_and_empty_variables() {
    let dir = tempfile::tempdir().unwrap();
    for spelling in ["1", "t", "T", "TRUE", "true", "True"] {
        let gw = Running::start(
            dir.path(),
            &[
                ("STATEGATE_AUTH_DISABLED", spelling),
                ("STATEGATE_DEBUG", "0"),
                ("STATEGATE_JWKS_URI", ""),
                ("STATEGATE_REQUEST_POLICY", ""),
                ("STATEGATE_TLS_CERT_FILE", ""),
                ("STATEGATE_OPS_PORT", ""),
                ("STATEGATE_CHANNEL_PROVIDER", r#"{ "name": "inmem" }"#),
                ("STATEGATE_STORAGE_PROVIDER", r#"{"name":"inmem"}"#),
            ],
            &[],
        )
        .await;
        let d = unique("gobool");
        // No token: authentication is off.
        gw.grpc().await.set(state(&d, "k", json!({"n": 1}))).await.unwrap_or_else(|e| panic!("{spelling}: {e}"));
        let r = http().get(format!("{}/api/state/ref/{d}/user/k", gw.url())).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{spelling}");
        // The empty STATEGATE_OPS_PORT took its default, port+1.
        let ops = http().get(format!("http://127.0.0.1:{}/healthz", gw.port + 1)).send().await.unwrap();
        assert_eq!(ops.status().as_u16(), 200, "{spelling}: ops on port+1");
        gw.stop();
    }
    for (var, bad) in [("STATEGATE_AUTH_DISABLED", "yes"), ("STATEGATE_DEBUG", "on"), ("STATEGATE_DEV", "2")] {
        let out = gateway(dir.path(), &[(var, bad), ("STATEGATE_PORT", "0")], &[]).output().unwrap();
        assert!(!out.status.success(), "{var}={bad} must stop the start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var) && stderr.contains("is not a boolean"), "{var}: {stderr}");
    }
    // Flags still work, and "false" turns nothing on.
    let gw = Running::start(dir.path(), &[("STATEGATE_AUTH_DISABLED", "False"), ("STATEGATE_JWT_HMAC_SECRET", SECRET)], &["--ops-port", "0"]).await;
    let err = gw.grpc().await.get(StateRef { domain: "d".into(), r#type: "t".into(), key: "k".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "STATEGATE_AUTH_DISABLED=False keeps authentication on");
    gw.stop();
    let gw = Running::start(dir.path(), &[], &["--dev", "--ops-port", "0"]).await;
    gw.grpc().await.set(state(&unique("flag"), "k", json!({}))).await.unwrap();
    gw.stop();
}

/// `.env` in the working directory is read (v0.5.0's own sample lines
/// included) without overriding what the environment sets; `--env-file`
/// names another file.
#[tokio::test]
async fn dotenv_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# as v0.5.0's .env\nSTATEGATE_DEBUG=true\nSTATEGATE_AUTH_DISABLED=true\n\
         STATEGATE_CHANNEL_PROVIDER={ \"name\": \"inmem\" }\n\
         STATEGATE_STORAGE_PROVIDER={\"name\":\"inmem\"}\nSTATEGATE_OPS_PORT=\n",
    )
    .unwrap();
    let gw = Running::start(dir.path(), &[], &[]).await;
    gw.grpc().await.set(state(&unique("dotenv"), "k", json!({}))).await.unwrap();
    let log = gw.stop();
    assert!(log.contains("\"level\":\"DEBUG\"") || log.contains("DEBUG"), "STATEGATE_DEBUG=true from .env: {log}");

    // The environment wins over the file: authentication stays on.
    let gw = Running::start(dir.path(), &[("STATEGATE_AUTH_DISABLED", "0"), ("STATEGATE_JWT_HMAC_SECRET", SECRET)], &[]).await;
    let err = gw.grpc().await.set(state("d", "k", json!({}))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "the environment's STATEGATE_AUTH_DISABLED=0 wins");
    gw.stop();

    // --env-file names another file; a missing one stops the start.
    let other = dir.path().join("prod.env");
    std::fs::write(&other, format!("STATEGATE_JWT_HMAC_SECRET=\"{SECRET}\"\nSTATEGATE_REQUEST_POLICY={V050_ALLOW_ALL}\n")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let gw = Running::start(elsewhere.path(), &[], &["--env-file", other.to_str().unwrap(), "--ops-port", "0"]).await;
    let t = token(json!({"sub": "ops"}));
    gw.grpc().await.set(with_token(state(&unique("envfile"), "k", json!({})), &t)).await.unwrap();
    gw.stop();
    let out = gateway(elsewhere.path(), &[], &["--env-file", "missing.env"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.env"));
}

/// Authentication on and no policy: every request is refused with a
/// message naming the variables, over gRPC and REST, and the start warns.
/// A v0.5.0 request policy alone then lets requests through, and responses
/// are sent as they are.
#[tokio::test]
async fn deny_by_default_without_a_request_policy() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("STATEGATE_JWT_HMAC_SECRET", SECRET), ("STATEGATE_STORAGE_PROVIDER", r#"{"name":"inmem"}"#), ("STATEGATE_REQUEST_POLICY", "")];
    let gw = Running::start(dir.path(), &env, &["--ops-port", "0", "--log-format", "text"]).await;
    let t = token(json!({"sub": "alice", "role": "admin"}));
    let d = unique("deny");
    let err = gw.grpc().await.set(with_token(state(&d, "k", json!({"a": 1})), &t)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("STATEGATE_REQUEST_POLICY") && err.message().contains("STATEGATE_REQUEST_POLICY_PATH"),
        "{}",
        err.message()
    );
    let r = http()
        .post(format!("{}/api/state/ref/{d}/user/k", gw.url()))
        .bearer_auth(&t)
        .json(&json!({"values": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("STATEGATE_REQUEST_POLICY_PATH"), "{body}");
    let r = http().get(format!("{}/api/state/search?domain={d}&type=user&limit=5", gw.url())).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "reads too");
    // Without a token it is still UNAUTHENTICATED first.
    let r = http().get(format!("{}/api/state/ref/{d}/user/k", gw.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let log = gw.stop();
    assert!(log.contains("no request policy") && log.contains("every request is refused"), "{log}");

    let env = [("STATEGATE_JWT_HMAC_SECRET", SECRET), ("STATEGATE_STORAGE_PROVIDER", r#"{"name":"inmem"}"#), ("STATEGATE_REQUEST_POLICY", V050_ALLOW_ALL), ("STATEGATE_RESPONSE_POLICY", "")];
    let gw = Running::start(dir.path(), &env, &["--ops-port", "0"]).await;
    gw.grpc().await.set(with_token(state(&d, "k", json!({"a": 1})), &t)).await.unwrap();
    let r = http().get(format!("{}/api/state/ref/{d}/user/k", gw.url())).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "no response policy: the response is sent");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["values"], json!({"a": 1}));
    gw.stop();
}

/// A REST client of another version of the contract sends fields this one
/// does not know: they are discarded, as grpc-gateway v2 did; a known
/// field of the wrong type is still a 400 naming it.
#[tokio::test]
async fn rest_discards_unknown_fields() {
    let gw = crate::harness::TestGateway::start().await;
    let base = gw.url();
    let d = unique("unknown");
    let c = http();
    let r = c
        .post(format!("{base}/api/state/ref/{d}/user/k"))
        .json(&json!({"values": {"a": 1}, "ttl": 30, "meta": {"by": "v9 client"}, "domain": "ignored-path-wins"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let r = c.get(format!("{base}/api/state/ref/{d}/user/k?consistency=strong&fields=a")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.get(format!("{base}/api/state/search?domain={d}&type=user&limit=5&cursor=abc&queryString=%7B%22a%22%3A1%7D")).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["stateValues"].as_array().map(Vec::len), Some(1), "{body}");
    let r = c.get(format!("{base}/api/events/search?domain={d}&type=user&limit=5&order=desc&pageToken=x")).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1), "{body}");
    for (req, field) in [
        (c.post(format!("{base}/api/state/ref/{d}/user/k")).json(&json!({"values": "x", "extra": 1})), "values"),
        (c.post(format!("{base}/api/state/ref/{d}/user/k")).json(&json!({"values": {}, "expectedVersion": "two"})), "expectedVersion"),
        (c.get(format!("{base}/api/state/search?domain={d}&type=user&limit=many&bogus=1")), "limit"),
        (c.get(format!("{base}/api/events/search?domain={d}&type=user&limit=1&min=soon")), "min"),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{field}");
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(field), "{field}: {body}");
    }
    gw.stop().await;
}

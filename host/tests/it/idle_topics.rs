//! Issue 17 point 7: a stream on a topic of its own costs what a stream on
//! a shared topic does. Each watched topic used to get its own channel
//! subscription, a 4,096-slot buffer allocated up front (~256 KiB) and a
//! storage sweep every second: 2,000 one-topic streams held +385 MiB and
//! 29 % of a core while idle. Now a topic is a map entry and an empty ring.
//!
//! Measured on gateway processes from outside, each in a fresh process (an
//! allocator keeps what it was given, so one process cannot measure both):
//! the resident memory N one-topic streams add is at most a small multiple
//! of what N streams of one topic add, the hub sweeps storage once per
//! interval whatever the number of topics, and it forgets each topic when
//! its last stream leaves.

use crate::multi_instance::metric;
use crate::procs::{free_port, wait_port};
use stategate::proto::{self as pb, event_service_client::EventServiceClient};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STREAMS: usize = 1000;
const CONNECTIONS: usize = 10;

struct Idle {
    child: Child,
    port: u16,
    ops: String,
    _dir: tempfile::TempDir,
}

impl Idle {
    async fn start() -> Idle {
        let dir = tempfile::tempdir().unwrap();
        let (port, ops) = (free_port(), free_port());
        let child = Command::new(crate::procs::stategate_bin())
            .args(["--dev", "--port", &port.to_string(), "--ops-port", &ops.to_string()])
            .env("STATEGATE_MAX_STREAMS_PER_CALLER", "0")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port, "gateway").await;
        Idle {
            child,
            port,
            ops: format!("http://127.0.0.1:{ops}"),
            _dir: dir,
        }
    }

    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kb * 1024
    }

    async fn clients(&self) -> Vec<EventServiceClient<tonic::transport::Channel>> {
        let mut out = vec![];
        for _ in 0..CONNECTIONS {
            let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
                .unwrap()
                .connect()
                .await
                .unwrap();
            out.push(EventServiceClient::new(channel));
        }
        out
    }

    /// Opens one stream per type in `types` and waits until the gateway
    /// serves them all.
    async fn open(&self, clients: &[EventServiceClient<tonic::transport::Channel>], types: impl Iterator<Item = String>) -> Vec<tonic::Streaming<pb::Event>> {
        let mut opening = vec![];
        for (i, ty) in types.enumerate() {
            let mut c = clients[i % clients.len()].clone();
            let opts = pb::StreamOpts { domain: "idle".into(), r#type: ty, ..Default::default() };
            opening.push(tokio::spawn(async move { c.stream(opts).await.map(|r| r.into_inner()) }));
        }
        let mut open = vec![];
        for s in opening {
            open.push(s.await.unwrap().expect("the stream opens"));
        }
        self.wait_metric("stategate_live_streams", open.len() as f64).await;
        open
    }

    async fn wait_metric(&self, name: &str, want: f64) {
        for _ in 0..300 {
            if metric(&self.ops, name).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} never reached {want}: {}", metric(&self.ops, name).await);
    }

    /// What `STREAMS` streams of `types` add to the resident memory, after
    /// a warm-up that opens and closes a few (so connections and pools are
    /// in the baseline).
    async fn cost(&self, types: impl Fn(usize) -> String) -> u64 {
        let clients = self.clients().await;
        drop(self.open(&clients, (0..CONNECTIONS).map(&types)).await);
        self.wait_metric("stategate_live_streams", 0.0).await;
        let before = self.rss();
        let open = self.open(&clients, (0..STREAMS).map(types)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let grown = self.rss().saturating_sub(before);
        drop(open);
        grown
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_of_its_own_costs_a_stream_no_more_than_a_shared_one() {
    let shared = Idle::start().await;
    let shared_cost = shared.cost(|_| "shared".into()).await;
    drop(shared);

    let own = Idle::start().await;
    let own_cost = own.cost(|i| format!("t{i}")).await;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{STREAMS} idle streams: {:.1} MiB on one topic, {:.1} MiB on a topic each",
        mib(shared_cost),
        mib(own_cost)
    );
    // Before: ~256 KiB more per topic, i.e. +250 MiB here.
    assert!(
        own_cost <= 2 * shared_cost + 16 * 1024 * 1024,
        "{STREAMS} one-topic streams added {:.1} MiB, {STREAMS} streams of one topic {:.1} MiB",
        mib(own_cost),
        mib(shared_cost)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topics_do_no_periodic_work_and_go_with_their_last_stream() {
    let gw = Idle::start().await;
    let clients = gw.clients().await;
    let open = gw.open(&clients, (0..STREAMS).map(|i| format!("t{i}"))).await;
    gw.wait_metric("stategate_hub_topics", STREAMS as f64).await;

    // One sweep per interval (1 s by default) for the whole hub; before,
    // one per topic per interval.
    let before = metric(&gw.ops, "stategate_hub_sweeps_total").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sweeps = metric(&gw.ops, "stategate_hub_sweeps_total").await - before;
    assert!(sweeps <= 6.0, "{sweeps} storage sweeps in 3 s with {STREAMS} idle topics");

    drop(open);
    gw.wait_metric("stategate_live_streams", 0.0).await;
    gw.wait_metric("stategate_hub_topics", 0.0).await;
}

//! The hub's repairs, tested directly: a gateway whose channel drops,
//! duplicates, holds back and reorders deliveries on command
//! (`chaos_channel`), streams that must still get every event once and in
//! order per record, and the hub's counters (`hub_gap_fills`,
//! `hub_duplicates`, `hub_sweep_deliveries`) saying what it repaired.
//!
//! The gateway is assembled here (a storage, the chaos channel, a hub with
//! the settings each test needs, no auth) rather than by `server::start`,
//! because the hub's grace period is not a setting: with a grace longer than
//! any test the storage sweep delivers nothing, so every repair is a gap fill
//! or a duplicate drop and each can be counted exactly. Calls go to
//! `Gateway` itself, the functions every transport calls.
//!
//! Where the sweep races the channel (its grace is short), which repair
//! catches an event depends on timing, but one identity does not: per hub
//! feed, every delivery is either dropped as a duplicate or passed on, and
//! every event is passed on once, by the channel, a gap fill or the sweep. So
//! `duplicates - gap_fills - sweep_deliveries = deliveries - events`.

use crate::chaos_channel::{ChaosChannel, Fault, Order};
use crate::storage_conformance::values;
use crate::wire::unique;
use futures::StreamExt;
use futures::stream::BoxStream;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use stategate::auth::{Metadata, NoAuth};
use stategate::channel::DynChannel;
use stategate::gateway::{Gateway, Limits, RefRequest, SetRequest, StreamRequest};
use stategate::hub::{Hub, HubConfig};
use stategate::model::{Event, Topic};
use stategate::storage::{DynStorage, FEED_PAGE, memory::MemoryStorage, sqlite::SqliteStorage};
use stategate::telemetry::Metrics;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest wait for a stream's next event: a bound on a hang, not a measure.
const WAIT: Duration = Duration::from_secs(30);

channel_conformance!(chaos_channel_passing_everything, async {
    Some(Arc::new(ChaosChannel::new()) as stategate::channel::DynChannel)
});

#[derive(Clone, Copy)]
enum Store {
    Memory,
    Sqlite,
}

/// A hub whose sweep never delivers (its grace outlasts every test) but
/// still runs, so its watermark moves as in production.
fn no_sweep() -> HubConfig {
    HubConfig {
        sweep_interval: Duration::from_millis(20),
        grace: Duration::from_secs(3600),
        ..HubConfig::default()
    }
}

/// A hub whose sweep delivers anything not yet delivered after `grace`.
fn sweeping(grace: Duration) -> HubConfig {
    HubConfig {
        sweep_interval: Duration::from_millis(10),
        grace,
        ..HubConfig::default()
    }
}

/// What the hub repaired: its counters, or their growth over a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Repairs {
    gap_fills: u64,
    duplicates: u64,
    sweeps: u64,
}

impl Repairs {
    const NONE: Repairs = Repairs { gap_fills: 0, duplicates: 0, sweeps: 0 };

    fn of(metrics: &Metrics) -> Self {
        Repairs {
            gap_fills: metrics.hub_gap_fills.get(),
            duplicates: metrics.hub_duplicates.get(),
            sweeps: metrics.hub_sweep_deliveries.get(),
        }
    }

    fn fills(n: u64) -> Self {
        Repairs { gap_fills: n, ..Self::NONE }
    }

    fn dups(n: u64) -> Self {
        Repairs { duplicates: n, ..Self::NONE }
    }

    fn since(self, before: Repairs) -> Self {
        Repairs {
            gap_fills: self.gap_fills - before.gap_fills,
            duplicates: self.duplicates - before.duplicates,
            sweeps: self.sweeps - before.sweeps,
        }
    }
}

/// Where a stream starts.
enum Start {
    /// New events only (no start position: the v0.5.0 stream).
    Live,
    /// After the event with this id.
    After(String),
    /// Events at or after this time (Unix nanoseconds).
    From(i64),
}

/// One received event: record, version, id.
type Got = (String, u64, String);

/// A stream, or a tap on a hub feed, read by a task of its own into `got`
/// as events arrive (so a stream takes its events live, from the hub, as a
/// client's would), and the events it must get.
struct Watcher {
    name: String,
    topic: Topic,
    key: Option<String>,
    after_seq: u64,
    from_time: Option<i64>,
    reading: Reading,
}

/// What a reader task has read so far, and why it stopped, if it did.
struct Reading {
    got: Arc<Mutex<Vec<Got>>>,
    failed: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        self.topic.matches(&e.record)
            && self.key.as_ref().is_none_or(|k| *k == e.record.key)
            && e.seq > self.after_seq
            && self.from_time.is_none_or(|t| e.time >= t)
    }
}

/// Reads `items` into `got` until it ends or fails. `waiting` is told when
/// the first read finds nothing: the stream's task ran until it had to wait.
fn read(
    mut items: BoxStream<'static, std::result::Result<Got, String>>,
    waiting: oneshot::Sender<()>,
) -> Reading {
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let (g, f) = (got.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut waiting = Some(waiting);
        loop {
            let next = futures::future::poll_fn(|cx| {
                let poll = items.poll_next_unpin(cx);
                if poll.is_pending() && let Some(w) = waiting.take() {
                    let _ = w.send(());
                }
                poll
            });
            match next.await {
                Some(Ok(item)) => g.lock().unwrap().push(item),
                Some(Err(e)) => {
                    *f.lock().unwrap() = Some(e);
                    return;
                }
                None => {
                    *f.lock().unwrap() = Some("ended".into());
                    return;
                }
            }
        }
    });
    Reading { got, failed, task }
}

fn got(e: &Event) -> Got {
    (e.record.to_string(), e.version, e.id.clone())
}

/// A gateway on the chaos channel, and every event written through it.
struct Rig {
    gateway: Arc<Gateway>,
    hub: Arc<Hub>,
    chaos: Arc<ChaosChannel>,
    domain: String,
    /// Every event written, in seq order.
    log: Vec<Event>,
    /// The hub's counters at the last `repaired` check.
    counted: Repairs,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(store: Store, hub: HubConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage: DynStorage = match store {
            Store::Memory => Arc::new(MemoryStorage::new()),
            Store::Sqlite => Arc::new(SqliteStorage::open(dir.path().join("hub.db")).unwrap()),
        };
        let chaos = Arc::new(ChaosChannel::new());
        let channel: DynChannel = chaos.clone();
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(storage.clone(), channel.clone(), hub, metrics.clone());
        let gateway = Gateway::new(storage, channel, hub.clone(), Arc::new(NoAuth), metrics, Limits::default());
        Rig {
            gateway: Arc::new(gateway),
            hub,
            chaos,
            domain: unique("hub"),
            log: Vec::new(),
            counted: Repairs::default(),
            _dir: dir,
        }
    }

    /// Writes the next version of `ty`/`key`; its deliveries get `fault`.
    async fn set(&mut self, ty: &str, key: &str, fault: Fault) -> Event {
        self.chaos.on_next_publish(fault);
        self.set_by_rule(ty, key).await
    }

    /// Writes the next version of `ty`/`key`; the channel's rule decides.
    async fn set_by_rule(&mut self, ty: &str, key: &str) -> Event {
        let n = self.log.len();
        let req = SetRequest {
            domain: self.domain.clone(),
            ty: ty.into(),
            key: key.into(),
            values: Some(values(json!({"n": n})).into()),
            ..Default::default()
        };
        let event = self.gateway.set(Metadata::new(), req).await.expect("set");
        self.log.push(event.clone());
        event
    }

    async fn del_by_rule(&mut self, ty: &str, key: &str) -> Event {
        let req = RefRequest {
            domain: self.domain.clone(),
            ty: ty.into(),
            key: key.into(),
            ..Default::default()
        };
        let event = self.gateway.del(Metadata::new(), req).await.expect("del");
        self.log.push(event.clone());
        event
    }

    async fn del(&mut self, ty: &str, key: &str, fault: Fault) -> Event {
        self.chaos.on_next_publish(fault);
        self.del_by_rule(ty, key).await
    }

    /// A tap on the hub's feed of a topic: exactly what the hub passes on to
    /// that topic's streams, before any stream drops a duplicate. Opened
    /// before the first write, it must see every event of the topic.
    async fn tap(&self, domain: &str, ty: &str) -> Watcher {
        assert!(self.log.is_empty(), "a tap sees what the hub passes on after it opened");
        let topic = topic(domain, ty);
        let sub = self.hub.subscribe(&topic, None).await.expect("the hub subscribes");
        let deliveries = futures::stream::unfold(sub, |mut sub| async move {
            let item = match sub.recv().await {
                Ok(d) => Ok(got(&d.event)),
                Err(e) => Err(format!("the tap failed: {e}")),
            };
            Some((item, sub))
        });
        let (waiting, _) = oneshot::channel();
        let reading = read(deliveries.boxed(), waiting);
        Watcher { name: format!("hub feed {topic}"), topic, key: None, after_seq: 0, from_time: None, reading }
    }

    /// Opens a stream of `domain`/`ty` (`*` for any), optionally of one key,
    /// and returns once its task waits for events. On memory storage (whose
    /// reads never wait) that means it replayed its history and now takes
    /// live deliveries from the hub.
    async fn open(&self, name: &str, domain: &str, ty: &str, key: Option<&str>, start: Start) -> Watcher {
        let head = self.log.last().map_or(0, |e| e.seq);
        let (after_event_id, from_time, after_seq) = match start {
            Start::Live => (String::new(), None, head),
            Start::After(id) => {
                let seq = self.log.iter().find(|e| e.id == id).expect("a written event").seq;
                (id, None, seq)
            }
            Start::From(t) => (String::new(), Some(t), 0),
        };
        let req = StreamRequest {
            domain: domain.into(),
            ty: ty.into(),
            key: key.unwrap_or_default().into(),
            after_event_id,
            from_time: from_time.unwrap_or(0),
            ..Default::default()
        };
        let stream = self.gateway.stream(Metadata::new(), req).await.expect("stream opens");
        let events = stream.map(|r| r.map(|e| got(&e)).map_err(|e| format!("the stream failed: {e}")));
        let (waiting, waited) = oneshot::channel();
        let reading = read(events.boxed(), waiting);
        waited.await.expect("the stream waits for events");
        Watcher {
            name: name.into(),
            topic: topic(domain, ty),
            key: key.map(str::to_owned),
            after_seq,
            from_time,
            reading,
        }
    }

    fn repairs(&self) -> Repairs {
        Repairs::of(self.gateway.metrics())
    }

    /// Waits until the hub has taken every delivery, then checks what it
    /// repaired since the last check.
    async fn repaired(&mut self, step: &str, expected: Repairs) {
        self.chaos.settled().await;
        let now = self.repairs();
        assert_eq!(now.since(self.counted), expected, "{step}");
        self.counted = now;
    }


    /// Waits until `w` has had as many events as it must get, and checks
    /// they are exactly those: per record, every version once, in order.
    async fn assert_exactly_once(&self, w: &Watcher) {
        let expected: Vec<&Event> = self.log.iter().filter(|e| w.wants(e)).collect();
        assert!(!expected.is_empty(), "{}: a check that sees nothing checks nothing", w.name);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = w.reading.failed.lock().unwrap().clone() {
                panic!("{}: {e}", w.name);
            }
            let n = w.reading.got.lock().unwrap().len();
            if n >= expected.len() {
                break;
            }
            if Instant::now() > deadline {
                let got = w.reading.got.lock().unwrap();
                let seen: HashSet<&str> = got.iter().map(|g| g.2.as_str()).collect();
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|e| !seen.contains(e.id.as_str()))
                    .map(|e| format!("{} v{}", e.record, e.version))
                    .collect();
                panic!("{}: {n} of {} events arrived; missing {missing:?}", w.name, expected.len());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in &expected {
            want.entry(e.record.to_string()).or_default().push(e.version);
        }
        let mut have: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (record, version, _) in w.reading.got.lock().unwrap().iter() {
            have.entry(record.clone()).or_default().push(*version);
        }
        assert_eq!(have, want, "{}: every event once, in version order per record", w.name);
    }
}

/// `*` is a wildcard.
fn topic(domain: &str, ty: &str) -> Topic {
    let part = |p: &str| (p != "*").then(|| p.to_owned());
    Topic { domain: part(domain), ty: part(ty) }
}

/// Each fault on its own, with the hub's exact answer to it: a lost event is
/// filled from storage when its successor arrives; a duplicate, and an event
/// that arrives after its successor made the hub fill it, are dropped.
/// Each topic's ring passes every event on once, in order per record, and so do
/// streams of several topics, with and without a start position.
#[tokio::test]
async fn each_fault_is_repaired_and_counted() {
    use Fault::*;
    let mut rig = Rig::new(Store::Memory, no_sweep());
    let d = rig.domain.clone();
    let mut watchers = vec![
        rig.tap(&d, "a").await,
        rig.tap(&d, "b").await,
        rig.tap(&d, "*").await,
        rig.tap("*", "*").await,
        rig.open("a, live", &d, "a", None, Start::Live).await,
        rig.open("the domain, live", &d, "*", None, Start::Live).await,
    ];
    // One channel subscription for the hub, whatever the topics: each fault
    // is repaired once, and the repaired event reaches every topic it
    // belongs to (its type's, its domain's and everything's).
    assert_eq!(rig.chaos.subscriptions(), 1);
    const FEEDS: u64 = 1;

    rig.set("a", "k1", Pass).await;
    let a_k1_v2 = rig.set("a", "k1", Drop).await;
    rig.repaired("a lost event, before anything shows it missing", Repairs::NONE).await;
    rig.set("a", "k1", Pass).await;
    rig.repaired("its successor arrived: the gap is filled from storage", Repairs::fills(FEEDS)).await;
    let b_k1_v1 = rig.set("b", "k1", Duplicate).await;
    rig.repaired("the second copy is dropped", Repairs::dups(FEEDS)).await;
    rig.set("a", "k2", Hold).await;
    rig.set("a", "k2", Pass).await;
    rig.repaired("a first version held back is filled when the second arrives", Repairs::fills(FEEDS)).await;
    assert_eq!(rig.chaos.release(Order::AsHeld), FEEDS as usize);
    rig.repaired("and dropped when it arrives late", Repairs::dups(FEEDS)).await;

    // Streams with a start position, and of a single key, on the topics
    // above: they share the hub's feed.
    watchers.push(rig.open("a, after an event", &d, "a", None, Start::After(a_k1_v2.id.clone())).await);
    watchers.push(rig.open("the domain, from a time", &d, "*", None, Start::From(b_k1_v1.time)).await);
    watchers.push(rig.open("a, key k1, live", &d, "a", Some("k1"), Start::Live).await);
    watchers.push(rig.open("b, key k1, after an event", &d, "b", Some("k1"), Start::After(b_k1_v1.id.clone())).await);
    watchers.push(rig.open("everything, live", "*", "*", None, Start::Live).await);
    assert_eq!(rig.chaos.subscriptions(), 1, "every stream shares the hub's one feed");

    rig.set("a", "k1", Hold).await;
    rig.set("a", "k1", Hold).await;
    rig.set("a", "k1", Pass).await;
    rig.repaired("two held versions are filled when the next arrives", Repairs::fills(2 * FEEDS)).await;
    assert_eq!(rig.chaos.release(Order::Reversed), 2 * FEEDS as usize);
    rig.repaired("and both dropped when they arrive, newest first", Repairs::dups(2 * FEEDS)).await;
    rig.del("b", "k1", Drop).await;
    rig.set("b", "k1", Pass).await;
    rig.repaired("a lost deletion is filled like any event", Repairs::fills(FEEDS)).await;
    rig.set("a", "k2", Duplicate).await;
    rig.repaired("a duplicate after a repair is dropped", Repairs::dups(FEEDS)).await;
    rig.set("a", "k2", Hold).await;
    rig.set("b", "k2", Hold).await;
    rig.chaos.release(Order::Reversed);
    rig.repaired("events of different records in any order need no repair", Repairs::NONE).await;

    // Last, events every stream watches pass: anything a stream would wrongly
    // get would come before them.
    rig.set("a", "k1", Pass).await;
    rig.set("b", "k1", Pass).await;
    rig.repaired("the closing events", Repairs::NONE).await;
    for w in &watchers {
        rig.assert_exactly_once(w).await;
    }
}

/// A channel that loses every broadcast (a publish that failed after the
/// write committed): the sweep passes each event on once, from storage, to
/// every watched topic it belongs to, and nothing else is needed.
#[tokio::test]
async fn lost_broadcasts_arrive_through_the_sweep() {
    let mut rig = Rig::new(Store::Sqlite, sweeping(Duration::ZERO));
    rig.chaos.rule(|_, _| Fault::Drop);
    let d = rig.domain.clone();
    let mut watchers = vec![
        rig.tap(&d, "a").await,
        rig.tap(&d, "*").await,
        rig.open("a, live", &d, "a", None, Start::Live).await,
    ];
    let first = rig.set_by_rule("a", "k1").await;
    for i in 0..20 {
        let ty = if i % 3 == 0 { "b" } else { "a" };
        rig.set_by_rule(ty, &format!("k{}", i % 4)).await;
    }
    rig.del_by_rule("a", "k1").await;
    watchers.push(rig.open("a, after an event", &d, "a", None, Start::After(first.id.clone())).await);
    watchers.push(rig.open("the domain, key k2, from a time", &d, "*", Some("k2"), Start::From(first.time)).await);
    for i in 0..10 {
        rig.set_by_rule("a", &format!("k{}", i % 3)).await;
    }
    rig.set_by_rule("b", "k2").await;
    for w in &watchers {
        rig.assert_exactly_once(w).await;
    }
    // The taps got every event the hub passed on: the counters are final.
    // The hub's one subscription lost each event once, and its sweep
    // brought each once, whatever the number of topics watching it.
    let every = rig.log.len() as u64;
    let tally = rig.chaos.tally();
    assert_eq!(tally.delivered, 0);
    assert_eq!(tally.dropped, every);
    let swept = Repairs { sweeps: every, ..Repairs::NONE };
    assert_eq!(rig.repairs(), swept, "every event came from the sweep, once");
}

/// Every fault at random (seeded), with streams of several topics opened
/// before and while it happens; the sweep never delivers, so every lost
/// delivery is a gap fill.
#[tokio::test]
async fn random_faults_are_repaired() {
    random_faults(Store::Memory, no_sweep(), 7).await;
}

/// The same on sqlite, with the sweep racing the channel: which repair
/// catches an event depends on timing, their sum does not.
#[tokio::test]
async fn random_faults_are_repaired_with_the_sweep_racing() {
    random_faults(Store::Sqlite, sweeping(Duration::from_millis(20)), 11).await;
}

async fn random_faults(store: Store, hub: HubConfig, seed: u64) {
    const WRITES: usize = 300;
    const TYPES: [&str; 2] = ["a", "b"];
    const KEYS: [&str; 3] = ["k0", "k1", "k2"];
    let sweeps = hub.grace < Duration::from_secs(60);
    let mut rig = Rig::new(store, hub);
    let d = rig.domain.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = StdRng::seed_from_u64(seed ^ 0x5eed);
    rig.chaos.rule(move |_, _| match faults.gen_range(0..100) {
        0..15 => Fault::Drop,
        15..30 => Fault::Duplicate,
        30..45 => Fault::Hold,
        _ => Fault::Pass,
    });
    let mut watchers = vec![
        rig.tap(&d, "a").await,
        rig.tap(&d, "b").await,
        rig.tap(&d, "*").await,
        rig.tap("*", "*").await,
        rig.open("b, live", &d, "b", None, Start::Live).await,
        rig.open("everything, live", "*", "*", None, Start::Live).await,
    ];
    let mut exists = HashSet::new();
    for i in 0..WRITES {
        let record = (TYPES[rng.gen_range(0..TYPES.len())], KEYS[rng.gen_range(0..KEYS.len())]);
        if exists.contains(&record) && rng.gen_ratio(1, 8) {
            rig.del_by_rule(record.0, record.1).await;
            exists.remove(&record);
        } else {
            rig.set_by_rule(record.0, record.1).await;
            exists.insert(record);
        }
        if rng.gen_ratio(1, 10) {
            rig.chaos.release(Order::Shuffled(rng.r#gen()));
        }
        if i == WRITES / 3 || i == 2 * WRITES / 3 {
            let earlier = rig.log[rng.gen_range(0..rig.log.len())].clone();
            // A start position must be an event of the stream's topic.
            let of_a: Vec<&Event> = rig.log.iter().filter(|e| e.record.ty == "a").collect();
            let earlier_a = of_a[rng.gen_range(0..of_a.len())].id.clone();
            let key = KEYS[rng.gen_range(0..KEYS.len())];
            watchers.push(rig.open(&format!("a, after an event, at {i}"), &d, "a", None, Start::After(earlier_a)).await);
            watchers.push(rig.open(&format!("the domain, from a time, at {i}"), &d, "*", None, Start::From(earlier.time)).await);
            watchers.push(rig.open(&format!("b, key {key}, live, at {i}"), &d, "b", Some(key), Start::Live).await);
            watchers.push(rig.open(&format!("everything, after an event, at {i}"), "*", "*", None, Start::After(earlier.id.clone())).await);
        }
    }
    // The channel recovers: what it held arrives, and a last write to every
    // record passes, so every loss shows as a gap (or was swept).
    rig.chaos.rule(|_, _| Fault::Pass);
    rig.chaos.release(Order::Shuffled(rng.r#gen()));
    for ty in TYPES {
        for key in KEYS {
            rig.set_by_rule(ty, key).await;
        }
    }
    rig.chaos.settled().await;
    for w in &watchers {
        rig.assert_exactly_once(w).await;
    }

    let tally = rig.chaos.tally();
    let repairs = rig.repairs();
    // The hub's one feed passes each event on once (to every topic's ring).
    let events = rig.log.len() as u64;
    assert!(tally.dropped > 0 && tally.duplicated > 0 && tally.held > 0, "the seed exercises every fault: {tally:?}");
    assert_eq!(
        repairs.duplicates as i64 - repairs.gap_fills as i64 - repairs.sweeps as i64,
        tally.delivered as i64 - events as i64,
        "each delivery was passed on or dropped as a duplicate, and each event passed on once: \
         {repairs:?}, {tally:?}, {events} events"
    );
    assert!(repairs.duplicates >= tally.duplicated, "every second copy is a duplicate: {repairs:?}, {tally:?}");
    assert!(repairs.gap_fills + repairs.sweeps >= tally.dropped, "every lost delivery was repaired: {repairs:?}, {tally:?}");
    if !sweeps {
        assert_eq!(repairs.sweeps, 0);
    }
}

/// A gap longer than one storage read returns (sqlite and mongo cap a feed
/// read at 16 pages): every missed version is still filled, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_gap_is_filled_whole() {
    const GAP: usize = 16 * FEED_PAGE + 100;
    // A buffer that holds the whole repair: a stream that fell behind would
    // catch up from storage by itself and hide a gap the hub left.
    let mut rig = Rig::new(Store::Sqlite, HubConfig { buffer: 2 * GAP, ..no_sweep() });
    let d = rig.domain.clone();
    let watchers = [rig.tap(&d, "a").await, rig.open("a, live", &d, "a", None, Start::Live).await];
    rig.chaos.rule(|_, _| Fault::Drop);
    let writes = futures::stream::iter(0..GAP)
        .map(|n| {
            let gateway = rig.gateway.clone();
            let req = SetRequest {
                domain: d.clone(),
                ty: "a".into(),
                key: "k".into(),
                values: Some(values(json!({"n": n})).into()),
                ..Default::default()
            };
            async move { gateway.set(Metadata::new(), req).await.expect("set") }
        })
        .buffer_unordered(64);
    let mut written: Vec<Event> = writes.collect().await;
    written.sort_by_key(|e| e.seq);
    rig.log = written;
    rig.chaos.rule(|_, _| Fault::Pass);
    rig.set_by_rule("a", "k").await;
    rig.repaired("every lost version is filled", Repairs::fills(GAP as u64)).await;
    for w in &watchers {
        rig.assert_exactly_once(w).await;
    }
}

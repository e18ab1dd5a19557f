//! Hot swap of wasm providers under load: a gateway process runs the
//! `fs_storage` storage guest and the `dir_channel` channel guest while
//! writers write (each with the version it expects, then reading back) and a
//! subscriber streams; each guest's file is replaced twice while the load
//! runs, once atomically (written aside, renamed over) and once by a plain
//! overwrite in place, which the watcher sees half-written first (and
//! refuses, the old version serving on). Every call must succeed, the subscriber must receive
//! every acknowledged event exactly once and in order per record, and
//! `wasm_guest_loads_total{outcome="swapped"}` must count each swap.
//!
//! A replacement that loads and links but never starts (the test guest
//! `trap_start_storage` traps in `max-instances`, the call the host makes on
//! a fresh instance) is refused while the old version serves every call,
//! and a good file after it is swapped in.

use crate::procs::Gateway;
use crate::wasm_support::{cache_dir, guest};
use crate::wire::*;
use serde_json::json;
use stategate::proto::{self as pb, event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

const WRITERS: usize = 4;
const RECORDS_PER_WRITER: usize = 3;
/// Writes acknowledged between two swaps, so each swap lands under load.
const WRITES_BETWEEN_SWAPS: usize = 40;
/// A hang guard, never a pass/fail timing.
const PATIENCE: Duration = Duration::from_secs(120);

/// The component's bytes with a custom section appended: a valid component
/// of the same world whose file hash differs, as a rebuild would.
fn variant(original: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"stategate-hot-swap-test";
    let mut contents = Vec::new();
    leb(name.len(), &mut contents);
    contents.extend_from_slice(name);
    contents.extend_from_slice(tag.as_bytes());
    let mut bytes = original.to_vec();
    bytes.push(0); // custom section
    leb(contents.len(), &mut bytes);
    bytes.extend_from_slice(&contents);
    bytes
}

/// How a guest file is replaced.
#[derive(Clone, Copy, Debug)]
enum Replace {
    /// Written aside, then renamed over the file: the watcher sees the old
    /// file or the new one, whole.
    Rename,
    /// Truncated and written in place, here in two halves with the watcher
    /// made to read the first half alone (refused) before the second lands.
    Overwrite,
}

async fn replace(path: &Path, bytes: &[u8], how: Replace, ops_url: &str, guest: &str, load: &Load) {
    match how {
        Replace::Rename => {
            let tmp = path.with_extension("wasm.tmp");
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        Replace::Overwrite => {
            use std::io::Write;
            let refused = metric(ops_url, &loads_of(guest, "refused")).await;
            let mut f = std::fs::File::create(path).unwrap();
            let (first, rest) = bytes.split_at(bytes.len() / 2);
            f.write_all(first).unwrap();
            f.flush().unwrap();
            let until = Instant::now() + PATIENCE;
            while metric(ops_url, &loads_of(guest, "refused")).await <= refused {
                let failed = load.failed.lock().unwrap().clone();
                assert!(failed.is_empty(), "while {guest} was half-written: calls failed: {failed:#?}");
                assert!(Instant::now() < until, "the half-written {guest} was never refused");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            f.write_all(rest).unwrap();
        }
    }
}

/// The sum of the lines of `/metrics` that start with `series`.
async fn metric(ops_url: &str, series: &str) -> u64 {
    let text = reqwest::get(format!("{ops_url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn loads_of(guest: &str, outcome: &str) -> String {
    format!("stategate_wasm_guest_loads_total{{guest=\"{guest}\",outcome=\"{outcome}\"}}")
}

fn swaps_of(guest: &str) -> String {
    loads_of(guest, "swapped")
}

/// What the writers did: acknowledged events by id (record key, version),
/// and every failed call.
#[derive(Default)]
struct Load {
    acked: Mutex<HashMap<String, (String, i64)>>,
    failed: Mutex<Vec<String>>,
    count: AtomicUsize,
    stop: AtomicBool,
}

/// One writer: its own records, each write with the version it expects,
/// and after each write a read of the record, which must show that write.
async fn writer(mut client: StateServiceClient<tonic::transport::Channel>, domain: String, w: usize, load: Arc<Load>) {
    let mut versions = [0i64; RECORDS_PER_WRITER];
    let mut i = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        let r = i % RECORDS_PER_WRITER;
        let key = format!("w{w}r{r}");
        let mut s = state(&domain, "t", &key, json!({"w": w, "i": i}));
        s.expected_version = Some(versions[r]);
        match client.set(s).await {
            Ok(ev) => {
                let ev = ev.into_inner();
                versions[r] = ev.version;
                load.acked.lock().unwrap().insert(ev.id, (key.clone(), ev.version));
                load.count.fetch_add(1, Ordering::SeqCst);
            }
            Err(status) => {
                load.failed.lock().unwrap().push(format!("set {key} (expecting version {}): {status:?}", versions[r]));
                return;
            }
        }
        match client.get(state_ref(&domain, "t", &key)).await {
            Ok(st) if st.get_ref().version == versions[r] => {}
            Ok(st) => {
                let got = st.into_inner().version;
                load.failed.lock().unwrap().push(format!("get {key}: version {got}, but {} was acknowledged", versions[r]));
                return;
            }
            Err(status) => {
                load.failed.lock().unwrap().push(format!("get {key}: {status:?}"));
                return;
            }
        }
        i += 1;
    }
}

/// Waits until the writers have acknowledged `n` more writes (failing
/// early if a call failed).
async fn more_writes(load: &Load, n: usize, what: &str) {
    let want = load.count.load(Ordering::SeqCst) + n;
    let until = Instant::now() + PATIENCE;
    while load.count.load(Ordering::SeqCst) < want {
        let failed = load.failed.lock().unwrap().clone();
        assert!(failed.is_empty(), "{what}: calls failed: {failed:#?}");
        assert!(Instant::now() < until, "{what}: the writers stalled at {} writes", load.count.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the swap counter of `guest` reaches `n`, writes going on.
async fn swapped(ops_url: &str, guest: &str, n: u64, load: &Load) {
    let until = Instant::now() + PATIENCE;
    loop {
        let now = metric(ops_url, &swaps_of(guest)).await;
        if now >= n {
            return;
        }
        let failed = load.failed.lock().unwrap().clone();
        assert!(failed.is_empty(), "while {guest} was swapped: calls failed: {failed:#?}");
        assert!(Instant::now() < until, "{guest} was never swapped in (swaps counted: {now}, wanted {n})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_swap_under_load_without_a_failed_call_or_a_lost_event() {
    let dir = tempfile::tempdir().unwrap();
    let storage_file = dir.path().join("fs_storage.wasm");
    let channel_file = dir.path().join("dir_channel.wasm");
    let storage_bytes = std::fs::read(guest("fs_storage")).unwrap();
    let channel_bytes = std::fs::read(guest("dir_channel")).unwrap();
    std::fs::write(&storage_file, &storage_bytes).unwrap();
    std::fs::write(&channel_file, &channel_bytes).unwrap();
    let storage = json!({"name": "wasm", "path": storage_file, "grants": {"dir": dir.path().join("store")}});
    let channel = json!({"name": "wasm", "path": channel_file, "grants": {"dir": dir.path().join("bus")}, "poll_ms": 5});
    let cache = cache_dir().display().to_string();
    let gw = Gateway::spawn_with(
        dir.path(),
        &storage.to_string(),
        &channel.to_string(),
        &[
            ("STATEGATE_WASM_RELOAD_MS", "50"),
            ("STATEGATE_WASM_CACHE_DIR", &cache),
            // A hang guard: a loaded machine must not fail a call by its
            // time limit, which is not what this test is about.
            ("STATEGATE_WASM_CALL_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    let ops = gw.ops_url();
    let domain = unique("swap");

    // The subscriber, collecting everything it receives.
    let received: Arc<Mutex<Vec<pb::Event>>> = Arc::default();
    let mut stream = EventServiceClient::new(gw.channel().await)
        .stream(pb::StreamOpts { domain: domain.clone(), r#type: "*".into(), ..Default::default() })
        .await
        .expect("the stream opens")
        .into_inner();
    let sink = received.clone();
    let stream_error: Arc<Mutex<Option<String>>> = Arc::default();
    let stream_failed = stream_error.clone();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            match item {
                Ok(e) => sink.lock().unwrap().push(e),
                Err(status) => {
                    *stream_failed.lock().unwrap() = Some(format!("{status:?}"));
                    return;
                }
            }
        }
        *stream_failed.lock().unwrap() = Some("the stream ended".into());
    });

    let load = Arc::new(Load::default());
    let grpc = gw.channel().await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(StateServiceClient::new(grpc.clone()), domain.clone(), w, load.clone())))
        .collect();
    more_writes(&load, WRITES_BETWEEN_SWAPS, "before the swaps").await;

    // Each guest twice: a rebuilt file renamed over it, then another
    // written over it in place (half of it first).
    let swaps = [
        (&storage_file, &storage_bytes, "fs_storage", Replace::Rename, 1),
        (&channel_file, &channel_bytes, "dir_channel", Replace::Rename, 1),
        (&storage_file, &storage_bytes, "fs_storage", Replace::Overwrite, 2),
        (&channel_file, &channel_bytes, "dir_channel", Replace::Overwrite, 2),
    ];
    for (file, original, name, how, n) in swaps {
        replace(file, &variant(original, &format!("{how:?}-{n}")), how, &ops, name, &load).await;
        swapped(&ops, name, n, &load).await;
        more_writes(&load, WRITES_BETWEEN_SWAPS, &format!("after swap {n} of {name} ({how:?})")).await;
    }
    load.stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let failed = load.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "calls failed: {failed:#?}");
    let acked = load.acked.lock().unwrap().clone();

    // A last write after all the others: once the subscriber has it, it has
    // had every earlier event (one feed, in seq order) and any duplicate
    // of one would have come before it.
    let mut client = StateServiceClient::new(grpc.clone());
    let last = client.set(state(&domain, "t", "last", json!({"last": true}))).await.expect("the last write").into_inner();
    let until = Instant::now() + PATIENCE;
    while !received.lock().unwrap().iter().any(|e| e.id == last.id) {
        if let Some(why) = stream_error.lock().unwrap().clone() {
            panic!("the subscriber's stream failed: {why}");
        }
        let have = received.lock().unwrap().len();
        assert!(Instant::now() < until, "the subscriber stalled at {have} of {} events", acked.len() + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Exactly once each, in order per record: each record's versions
    // arrive as 1, 2, 3, … with none skipped.
    let got = received.lock().unwrap().clone();
    let mut times: HashMap<&str, usize> = HashMap::new();
    let mut next: HashMap<String, i64> = HashMap::new();
    for e in &got {
        *times.entry(e.id.as_str()).or_default() += 1;
        let key = e.state.as_ref().unwrap().key.clone();
        let want = next.entry(key.clone()).or_insert(1);
        assert_eq!(e.version, *want, "record {key}: version {} arrived where {} was due", e.version, *want);
        *want += 1;
    }
    let duplicated: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "delivered more than once: {duplicated:?}");
    let missing: Vec<_> = acked.iter().filter(|(id, _)| !times.contains_key(id.as_str())).take(5).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered (first 5): {missing:?}");
    assert_eq!(got.len(), acked.len() + 1, "every event delivered is an acknowledged one");

    // The swaps show in the metrics, and no guest call failed.
    assert_eq!(metric(&ops, &swaps_of("fs_storage")).await, 2);
    assert_eq!(metric(&ops, &swaps_of("dir_channel")).await, 2);
    for name in ["fs_storage", "dir_channel"] {
        // Each loaded version is asked `max-instances` once, on its first
        // instance, before it serves a call: three versions served.
        let versions = metric(&ops, &format!("stategate_wasm_guest_calls_total{{guest=\"{name}\",op=\"max-instances\"}}")).await;
        assert_eq!(versions, 3, "{name}: the first version and both replacements served calls");
        let errors = metric(&ops, &format!("stategate_wasm_guest_errors_total{{guest=\"{name}\"")).await;
        assert_eq!(errors, 0, "{name}: guest calls failed (wasm_guest_errors_total)");
    }
    // For the record, not a verdict: how many events the hub's storage
    // sweep delivered rather than the channel (it covers for a broadcast
    // lost, e.g. across a channel swap).
    let swept = metric(&ops, "stategate_hub_sweep_deliveries_total").await;
    eprintln!("{} writes acknowledged and delivered once each across 4 swaps; {swept} came from the sweep", acked.len());
}

/// One acknowledged write of `key` and a read of it showing that write;
/// panics naming `when` if either call fails.
async fn write_and_read(client: &mut StateServiceClient<tonic::transport::Channel>, domain: &str, key: &str, n: usize, when: &str) -> i64 {
    let set = client.set(state(domain, "t", key, json!({"n": n}))).await;
    let ev = set.unwrap_or_else(|status| panic!("{when}: set {key} failed: {status:?}")).into_inner();
    let got = client.get(state_ref(domain, "t", key)).await;
    let got = got.unwrap_or_else(|status| panic!("{when}: get {key} failed: {status:?}")).into_inner();
    assert_eq!(got.version, ev.version, "{when}: get {key} does not show the write just acknowledged");
    ev.version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_fails_to_start_is_refused_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fs_storage.wasm");
    let good = std::fs::read(guest("fs_storage")).unwrap();
    let broken = std::fs::read(guest("trap_start_storage")).unwrap();
    std::fs::write(&file, &good).unwrap();
    let storage = json!({"name": "wasm", "path": file, "grants": {"dir": dir.path().join("store")}});
    let cache = cache_dir().display().to_string();
    let gw = Gateway::spawn_with(
        dir.path(),
        &storage.to_string(),
        r#"{"name":"memory"}"#,
        &[
            ("STATEGATE_WASM_RELOAD_MS", "50"),
            ("STATEGATE_WASM_CACHE_DIR", &cache),
            // Hang guards, not timings: a loaded machine must not fail a call by its time limit.
            ("STATEGATE_WASM_CALL_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    let ops = gw.ops_url();
    let domain = unique("refuse");
    let mut client = StateServiceClient::new(gw.channel().await);
    // What was acknowledged, by key: the version each record must still show.
    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut n = 0usize;
    for key in ["a", "b"] {
        acked.insert(key.into(), write_and_read(&mut client, &domain, key, n, "before any swap").await);
        n += 1;
    }
    let swaps = metric(&ops, &swaps_of("fs_storage")).await;
    assert_eq!(swaps, 0);

    // Twice a component that loads, links and traps on start (the second a
    // different file, so the refusal of the first does not stand for it):
    // each is refused on a call after the watcher loaded it, and every call
    // meanwhile is served by the first version.
    for attempt in 1..=2u64 {
        let tmp = file.with_extension("wasm.tmp");
        std::fs::write(&tmp, variant(&broken, &format!("broken-{attempt}"))).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let until = Instant::now() + PATIENCE;
        while metric(&ops, &loads_of("fs_storage", "refused")).await < attempt {
            assert!(Instant::now() < until, "broken replacement {attempt} was never refused");
            let key = format!("during-{attempt}-{}", n % 3);
            let when = format!("while broken replacement {attempt} was waiting");
            acked.insert(key.clone(), write_and_read(&mut client, &domain, &key, n, &when).await);
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let when = format!("after broken replacement {attempt} was refused");
        for key in ["a", "b", "c"] {
            acked.insert(key.into(), write_and_read(&mut client, &domain, key, n, &when).await);
            n += 1;
        }
        assert_eq!(metric(&ops, &loads_of("fs_storage", "refused")).await, attempt, "each broken file is refused once");
        assert_eq!(metric(&ops, &swaps_of("fs_storage")).await, 0, "a broken replacement is never counted as swapped");
    }
    let log = std::fs::read_to_string(dir.path().join(format!("gateway-{}.log", gw.port))).unwrap();
    let refusal = log.lines().find(|l| l.contains("reload refused")).unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(refusal.contains(&file.display().to_string()), "the refusal names the file: {refusal}");
    assert!(refusal.contains("did not start") && refusal.contains("max-instances"), "the refusal says why: {refusal}");

    // A good file after them is swapped in, and serves what was acknowledged.
    let tmp = file.with_extension("wasm.tmp");
    std::fs::write(&tmp, variant(&good, "good-again")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let until = Instant::now() + PATIENCE;
    while metric(&ops, &swaps_of("fs_storage")).await < 1 {
        assert!(Instant::now() < until, "the good replacement was never swapped in");
        write_and_read(&mut client, &domain, "after", n, "while the good replacement was waiting").await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (key, version) in &acked {
        let got = client.get(state_ref(&domain, "t", key)).await.unwrap_or_else(|s| panic!("get {key} after the swap: {s:?}"));
        let got = got.into_inner().version;
        assert_eq!(got, *version, "{key}: the last acknowledged write is what a read shows after the swap");
    }
    write_and_read(&mut client, &domain, "a", n, "after the good replacement was swapped in").await;
    assert_eq!(metric(&ops, &swaps_of("fs_storage")).await, 1);
    assert_eq!(metric(&ops, &loads_of("fs_storage", "refused")).await, 2);
}

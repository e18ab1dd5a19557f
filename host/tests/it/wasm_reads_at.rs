//! WIT 0.3.0's reads as of an event: a 0.3.0 storage guest (fs-storage)
//! answers `get_at` / `search_states_at`, in the past and now, with its
//! own `get-at` / `query-states-at` (from its per-record index), and the
//! host replays nothing from `feed`; the same guest built against 0.2.0
//! has no such calls and is replayed from `feed`. Both answer like the
//! reference provider at every seq of a history with deletions. The calls
//! are told apart by the per-guest call metrics
//! (`stategate_wasm_guest_calls_total{op}`), each test under a guest name
//! of its own.

use crate::storage_conformance::{put, req};
use crate::wasm_support::{guest, runtime, spec, storage_spec};
use serde_json::{Value, json};
use stategate::model::{AtSeq, Change, Expect, Filter, RecordRef, Sort, State, StateQuery};
use stategate::storage::{DynStorage, memory::MemoryStorage};
use stategate::wasm::metrics::calls_of;
use std::sync::Arc;

/// The guest built as `file`, named `name` in metrics, over `dir`.
async fn open(file: &str, name: &str, dir: &std::path::Path) -> DynStorage {
    let mut object = spec(&guest(file), dir);
    object.insert("guest".into(), json!(name));
    storage_spec(&object).open(dir, &runtime()).await.expect("the guest opens")
}

fn rec(key: &str) -> RecordRef {
    RecordRef::parse("d", "t", key).unwrap()
}

/// The same history written to every store: 6 records, 120 events, with
/// deletions and re-creations; returns the head.
async fn write_history(stores: &[&DynStorage]) -> u64 {
    let mut live = [false; 6];
    let mut head = 0;
    for i in 0..120u64 {
        let k = ((i * 7 + i / 5) % 6) as usize;
        let r = rec(&format!("k{k}"));
        let append = if live[k] && i % 5 == 4 {
            req(&r, Change::Delete, Expect::Any)
        } else {
            put(&r, json!({"n": i, "g": i % 3}))
        };
        live[k] = append.change != Change::Delete;
        let seqs: Vec<u64> = futures::future::join_all(stores.iter().map(|s| s.append(append.clone())))
            .await
            .into_iter()
            .map(|a| a.unwrap().event.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] == w[1]), "the stores number events alike: {seqs:?}");
        head = seqs[0];
    }
    head
}

fn states(found: &[State]) -> Vec<(String, u64, Value)> {
    found.iter().map(|s| (s.record.key.clone(), s.version, Value::Object(s.values.clone()))).collect()
}

fn one(found: AtSeq<Option<State>>) -> (u64, Option<(String, u64, Value)>) {
    (found.seq, found.value.map(|s| (s.record.key, s.version, Value::Object(s.values))))
}

/// Every record at every seq, and two searches (all states; a filtered,
/// sorted, offset page) at every seq, then now: as the reference answers.
/// Returns how many reads of each kind were made.
async fn reads_agree(guest: &DynStorage, reference: &DynStorage, head: u64) -> (u64, u64) {
    let all = StateQuery {
        domain: "d".into(),
        ty: "t".into(),
        filter: Filter::default(),
        sort: None,
        limit: 100,
        offset: 0,
    };
    let page = StateQuery {
        filter: Filter::parse("q", r#"{"g": {"$gte": 1}}"#).unwrap(),
        sort: Some(Sort { path: vec!["n".into()], descending: true }),
        limit: 2,
        offset: 1,
        ..all.clone()
    };
    let (mut gets, mut searches) = (0, 0);
    for at in (0..=head).map(Some).chain([None]) {
        for k in 0..6 {
            let r = rec(&format!("k{k}"));
            let got = one(guest.get_at(&r, at).await.unwrap());
            assert_eq!(got, one(reference.get_at(&r, at).await.unwrap()), "get_at(k{k}, {at:?})");
            gets += 1;
        }
        for q in [&all, &page] {
            let got = guest.search_states_at(q, at).await.unwrap();
            let want = reference.search_states_at(q, at).await.unwrap();
            assert_eq!((got.seq, states(&got.value)), (want.seq, states(&want.value)), "search_states_at({at:?})");
            searches += 1;
        }
    }
    (gets, searches)
}

/// The calls of `op` the guest `name` served while `f` ran.
struct Calls<'a> {
    name: &'a str,
    before: [u64; 3],
}

const OPS: [&str; 3] = ["feed", "get-at", "query-states-at"];

impl<'a> Calls<'a> {
    fn start(name: &'a str) -> Self {
        Calls { name, before: OPS.map(|op| calls_of(name, op)) }
    }

    /// (feed, get-at, query-states-at) calls since `start`.
    fn since(&self) -> [u64; 3] {
        let mut n = [0; 3];
        for (i, op) in OPS.iter().enumerate() {
            n[i] = calls_of(self.name, op) - self.before[i];
        }
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_3_0_guest_answers_reads_at_a_seq_from_its_index_without_feed() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("reads-at-0-3-0-{}", uuid::Uuid::new_v4().simple());
    let wasm = open("fs_storage", &name, dir.path()).await;
    let reference: DynStorage = Arc::new(MemoryStorage::new());
    let head = write_history(&[&wasm, &reference]).await;
    let calls = Calls::start(&name);
    let (gets, searches) = reads_agree(&wasm, &reference, head).await;
    assert_eq!(calls.since(), [0, gets, searches], "(feed, get-at, query-states-at) calls: no replay, one call per read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_2_0_guest_is_replayed_from_feed() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("reads-at-0-2-0-{}", uuid::Uuid::new_v4().simple());
    let wasm = open("fs_storage_0_2_0", &name, dir.path()).await;
    let reference: DynStorage = Arc::new(MemoryStorage::new());
    let head = write_history(&[&wasm, &reference]).await;
    let calls = Calls::start(&name);
    let (gets, searches) = reads_agree(&wasm, &reference, head).await;
    let [feed, get_at, query_at] = calls.since();
    assert_eq!((get_at, query_at), (0, 0), "a 0.2.0 guest has no get-at / query-states-at");
    // Every past read replays (at least one feed page each); the last
    // round (6 gets, 2 searches) reads now, bracketed by `head`.
    let past = gets + searches - 8;
    assert!(feed >= past, "{feed} feed calls for {past} past reads");
}

/// A 0.3.0 guest reopened over its log rebuilds the index: past reads
/// after a restart answer as before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("reads-at-restart-{}", uuid::Uuid::new_v4().simple());
    let reference: DynStorage = Arc::new(MemoryStorage::new());
    let head = {
        let wasm = open("fs_storage", &name, dir.path()).await;
        write_history(&[&wasm, &reference]).await
    };
    let wasm = open("fs_storage", &name, dir.path()).await;
    let calls = Calls::start(&name);
    let (gets, searches) = reads_agree(&wasm, &reference, head).await;
    assert_eq!(calls.since(), [0, gets, searches]);
}

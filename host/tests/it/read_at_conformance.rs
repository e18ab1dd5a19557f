//! The storage conformance checks of reads at a store position (run for
//! every provider by `storage_conformance!`): a read now answers with the
//! seq it reflects, consistent with the data even under concurrent writes;
//! a read at a past seq answers from history; `seq_at_time` and event
//! searches bounded by version.
//!
//! The oracle is the feed: the state of a record after seq S is what its
//! last event up to S left, so every answer is checked against a replay.

use crate::storage_conformance::{put, req, unique_domain, values};
use serde_json::{Value, json};
use stategate::model::*;
use stategate::storage::DynStorage;
use std::collections::BTreeMap;

fn rec(domain: &str, ty: &str, key: &str) -> RecordRef {
    RecordRef::parse(domain, ty, key).unwrap()
}

fn query(d: &str, ty: &str, filter: &str, limit: usize) -> StateQuery {
    StateQuery {
        domain: d.to_owned(),
        ty: ty.to_owned(),
        filter: Filter::parse("query_string", filter).unwrap(),
        sort: None,
        limit,
        offset: 0,
    }
}

/// key → (version, values) of every live record of `d`/`ty` after seq `at`,
/// replayed from the feed.
async fn replayed(s: &DynStorage, d: &str, ty: &str, at: u64) -> BTreeMap<String, (u64, Value)> {
    let mut out = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = s
            .feed(&FeedQuery {
                topic: Topic { domain: Some(d.to_owned()), ty: Some(ty.to_owned()) },
                key: None,
                after_seq: after,
                from_time: None,
                limit: 500,
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page.into_iter().filter(|e| e.seq <= at) {
            match e.values {
                Some(v) => out.insert(e.record.key.clone(), (e.version, Value::Object(v.into_values()))),
                None => out.remove(&e.record.key),
            };
        }
    }
    out
}

fn as_map(states: &[State]) -> BTreeMap<String, (u64, Value)> {
    states.iter().map(|s| (s.record.key.clone(), (s.version, Value::Object(s.values.clone())))).collect()
}

/// `get_text_at`'s answer as (version, values): the stored text parsed,
/// to compare with `get_at`'s and with the replay.
async fn text_read(s: &DynStorage, r: &RecordRef, at: Option<u64>) -> AtSeq<Option<(u64, Value)>> {
    let AtSeq { value, seq } = s.get_text_at(r, at).await.unwrap();
    let value = value.map(|stored| {
        let st = stored.into_state().unwrap();
        assert_eq!(&st.record, r);
        (st.version, Value::Object(st.values))
    });
    AtSeq { value, seq }
}

/// A read now names the head it was read at, and holds what that head
/// implies.
pub async fn reads_now_name_their_seq(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "t", "a");
    s.append(put(&r, json!({"n": 1}))).await.unwrap();
    let last = s.append(put(&rec(&d, "t", "b"), json!({"n": 2}))).await.unwrap().event;
    let got = s.get_at(&r, None).await.unwrap();
    assert!(got.seq >= last.seq && got.seq <= s.head().await.unwrap(), "{} vs {}", got.seq, last.seq);
    assert_eq!(got.value.map(|st| Value::Object(st.values)), Some(json!({"n": 1})));
    let missing = s.get_at(&rec(&d, "t", "zzz"), None).await.unwrap();
    assert!(missing.value.is_none() && missing.seq >= last.seq);
    // The same read with the values as the store keeps them.
    let got = text_read(&s, &r, None).await;
    assert!(got.seq >= last.seq && got.seq <= s.head().await.unwrap(), "{} vs {}", got.seq, last.seq);
    assert_eq!(got.value, Some((1, json!({"n": 1}))));
    let missing = text_read(&s, &rec(&d, "t", "zzz"), None).await;
    assert!(missing.value.is_none() && missing.seq >= last.seq);
    let found = s.search_states_at(&query(&d, "t", "", 10), None).await.unwrap();
    assert!(found.seq >= last.seq);
    assert_eq!(as_map(&found.value), replayed(&s, &d, "t", found.seq).await);
}

/// A record's past: each seq of its history answers with the state it
/// had then; a deletion is absence; before the first write there is
/// nothing. Searches at each seq agree with a replay, with filters.
pub async fn point_in_time_reads(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "t", "k");
    let other = rec(&d, "t", "other");
    let before = s.head().await.unwrap();
    let mut seqs = vec![];
    for change in [
        Change::Put(values(json!({"a": 1})).into()),
        Change::Put(values(json!({"a": 2})).into()),
        Change::Delete,
        Change::Put(values(json!({"a": 3})).into()),
    ] {
        seqs.push(s.append(req(&r, change, Expect::Any)).await.unwrap().event.seq);
        s.append(put(&other, json!({"a": seqs.len()}))).await.unwrap();
    }
    let expected = [Some((1, json!({"a": 1}))), Some((2, json!({"a": 2}))), None, Some((4, json!({"a": 3})))];
    for (seq, want) in seqs.iter().zip(&expected) {
        let got = s.get_at(&r, Some(*seq)).await.unwrap();
        assert_eq!(got.seq, *seq);
        assert_eq!(got.value.map(|st| (st.version, Value::Object(st.values))), want.clone(), "at {seq}");
        let text = text_read(&s, &r, Some(*seq)).await;
        assert_eq!((text.seq, text.value), (*seq, want.clone()), "text at {seq}");
        // Between this event and the record's next one, the same answer.
        let got = s.get_at(&r, Some(*seq + 1)).await.unwrap().value;
        assert_eq!(got.map(|st| (st.version, Value::Object(st.values))), want.clone(), "at {} + 1", seq);
    }
    assert!(s.get_at(&r, Some(before)).await.unwrap().value.is_none(), "before its first write");
    for at in [before, seqs[0], seqs[1], seqs[2], seqs[2] + 1, seqs[3], s.head().await.unwrap()] {
        let all = s.search_states_at(&query(&d, "t", "", 100), Some(at)).await.unwrap();
        assert_eq!(all.seq, at);
        assert_eq!(as_map(&all.value), replayed(&s, &d, "t", at).await, "search at {at}");
        // A filter applies to the values as they were then.
        let twos = s.search_states_at(&query(&d, "t", r#"{"a": 2}"#, 100), Some(at)).await.unwrap();
        let want: Vec<_> = replayed(&s, &d, "t", at).await.into_iter().filter(|(_, (_, v))| v["a"] == 2).collect();
        assert_eq!(as_map(&twos.value).into_iter().collect::<Vec<_>>(), want, "filtered search at {at}");
    }
    // Paging: limit and offset over the past, by key.
    let page = s
        .search_states_at(&StateQuery { offset: 1, ..query(&d, "t", "", 1) }, Some(seqs[1]))
        .await
        .unwrap();
    assert_eq!(page.value.iter().map(|st| st.record.key.as_str()).collect::<Vec<_>>(), ["other"]);
    // Sorted by a field as it was then, descending: after the second
    // round "k" had a = 2 and "other" a = 2, so the key breaks the tie;
    // after the third, "other" (a = 3) comes first and "k" is deleted.
    let sorted = |at| {
        let s = s.clone();
        let q = StateQuery { sort: Some(Sort { path: vec!["a".into()], descending: true }), ..query(&d, "t", "", 10) };
        async move {
            let found = s.search_states_at(&q, Some(at)).await.unwrap().value;
            found.iter().map(|st| (st.record.key.clone(), st.values["a"].clone())).collect::<Vec<_>>()
        }
    };
    assert_eq!(sorted(seqs[1] + 1).await, [("other".to_owned(), json!(2)), ("k".to_owned(), json!(2))]);
    assert_eq!(sorted(seqs[2] + 1).await, [("other".to_owned(), json!(3))]);
    assert_eq!(sorted(seqs[3] + 1).await, [("other".to_owned(), json!(4)), ("k".to_owned(), json!(3))]);
}

/// `seq_at_time`: the last event of the type stamped at or before a time.
pub async fn seq_at_time(s: DynStorage) {
    let d = unique_domain();
    let base = 1_000_000_000_000_000_000;
    let mut seqs = vec![];
    for (i, (ty, key)) in [("t", "a"), ("u", "a"), ("t", "b"), ("t", "a")].into_iter().enumerate() {
        let mut append = put(&rec(&d, ty, key), json!({"i": i}));
        append.time = base + 10 * i as i64;
        seqs.push(s.append(append).await.unwrap().event.seq);
    }
    assert_eq!(s.seq_at_time(&d, "t", base - 1).await.unwrap(), 0, "before every event");
    assert_eq!(s.seq_at_time(&d, "t", base).await.unwrap(), seqs[0]);
    assert_eq!(s.seq_at_time(&d, "t", base + 15).await.unwrap(), seqs[0], "the other type's event is not the type's");
    assert_eq!(s.seq_at_time(&d, "u", base + 15).await.unwrap(), seqs[1]);
    assert_eq!(s.seq_at_time(&d, "t", base + 20).await.unwrap(), seqs[2]);
    assert_eq!(s.seq_at_time(&d, "t", i64::MAX).await.unwrap(), seqs[3]);
}

/// A read now under concurrent writes reflects exactly the events up to
/// the seq it names: the answer equals the replay of the log up to it.
pub async fn reads_now_are_snapshots(s: DynStorage) {
    let d = unique_domain();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (s, d) = (s.clone(), d.clone());
            tokio::spawn(async move {
                for i in 0..60 {
                    let r = rec(&d, "t", &format!("k{}", (w * 7 + i) % 10));
                    let change = if i % 9 == 8 { Change::Delete } else { Change::Put(values(json!({"w": w, "i": i})).into()) };
                    match s.append(req(&r, change, Expect::Any)).await {
                        Ok(_) | Err(Error::NotFound(_)) => {}
                        Err(e) => panic!("append: {e}"),
                    }
                }
            })
        })
        .collect();
    let mut reads = 0;
    while reads < 20 || !writers.iter().all(|w| w.is_finished()) {
        let snap = s.search_states_at(&query(&d, "t", "", 100), None).await.unwrap();
        assert_eq!(as_map(&snap.value), replayed(&s, &d, "t", snap.seq).await, "search now at {}", snap.seq);
        let one = s.get_at(&rec(&d, "t", "k3"), None).await.unwrap();
        let want = replayed(&s, &d, "t", one.seq).await.remove("k3");
        assert_eq!(one.value.map(|st| (st.version, Value::Object(st.values))), want, "get now at {}", one.seq);
        let text = text_read(&s, &rec(&d, "t", "k3"), None).await;
        let want = replayed(&s, &d, "t", text.seq).await.remove("k3");
        assert_eq!(text.value, want, "text get now at {}", text.seq);
        reads += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
}

/// One record's versions between two, in an event search, paged.
pub async fn event_versions_between(s: DynStorage) {
    let d = unique_domain();
    let r = rec(&d, "t", "k");
    for i in 1..=8 {
        s.append(put(&r, json!({"i": i}))).await.unwrap();
        s.append(put(&rec(&d, "t", "other"), json!({"i": i}))).await.unwrap();
    }
    let q = |min: Option<u64>, max: Option<u64>, limit: usize, offset: usize| EventQuery {
        domain: d.clone(),
        ty: "t".into(),
        key: Some("k".into()),
        filter: Filter::default(),
        claims_filter: Filter::default(),
        min_time: None,
        max_time: None,
        min_version: min,
        max_version: max,
        limit,
        offset,
        sort: None,
    };
    let versions = |events: Vec<Event>| events.iter().map(|e| e.version).collect::<Vec<_>>();
    assert_eq!(versions(s.search_events(&q(Some(3), Some(6), 100, 0)).await.unwrap()), [3, 4, 5, 6]);
    assert_eq!(versions(s.search_events(&q(Some(3), Some(6), 2, 1)).await.unwrap()), [4, 5]);
    assert_eq!(versions(s.search_events(&q(Some(7), None, 100, 0)).await.unwrap()), [7, 8]);
    assert_eq!(versions(s.search_events(&q(None, Some(2), 100, 0)).await.unwrap()), [1, 2]);
    assert!(s.search_events(&q(Some(9), None, 100, 0)).await.unwrap().is_empty());
    let all = s.search_events(&q(Some(2), Some(3), 100, 0)).await.unwrap();
    assert!(all.iter().all(|e| e.record == r));
}

//! Recently read records, so a `Get` of a record nobody changed since does
//! not run sqlite again.
//!
//! A point read in sqlite is two b-tree descents (the record's `states`
//! row and the head, `MAX(seq)`), a read transaction's locks on the WAL
//! index that every reader shares, and rusqlite's statement cache and
//! bindings: about 10k of a `Get`'s 83k instructions (callgrind), and more
//! than that in time on machines where the WAL index's and the page
//! cache's lines cross between cores. A hit here is one hash lookup in
//! memory this core already holds.
//!
//! What an answer must be, cached or not: the record's version and values
//! at a store position `seq`, reflecting every event up to `seq` and none
//! after (a stream resumed after it carries exactly what the answer lacks);
//! never older than a write already acknowledged (read your writes); and
//! never older than what any read already saw (a hit after a read of the
//! file that saw a commit must see it too). The invariants that make a hit
//! such an answer:
//!
//! 1. Only the writer thread changes `states` (one process per file,
//!    `file_lock`). Before it begins a batch's transaction it calls
//!    [`PointCache::writing`]: under each shard's lock it drops the batch's
//!    records and marks them in flight. After the transaction ends
//!    (committed or not), and before it answers any of the batch's
//!    appends, it calls [`PointCache::written`]: it clears the marks and
//!    raises each shard's `head` to the batch's last seq. So no shard holds
//!    a record while a commit that changes it can become visible, and a
//!    shard's `head` is a position every commit up to which it has seen.
//! 2. A reader offers what it read ([`PointCache::offer`]) with the head
//!    its read saw. The shard keeps it only if, under its lock, that is its
//!    `head` and the record is not in flight: the read was then the
//!    record's state at `head`, and no commit changing it is under way or
//!    done since (one that began later drops it).
//! 3. So an entry is the record's state at its shard's `head` for as long as
//!    it is there, and a hit answers with that `head` as its `seq`.
//!
//! Shards are per CPU, as the read connections are (`read_pool.rs`): a
//! reader looks in and offers to the shard of the CPU it runs on, whose
//! lock and entries stay in that core's cache; a record read on two cores
//! may be held twice. A shard keeps a record only on its second read in a
//! while (a doorkeeper, as in TinyLFU: a table of the hashes of records
//! read once, each overwritten by the next record that maps to its
//! slot): reads spread over more records than the cache holds would
//! otherwise each pay for an entry (its copies, and the drop of another)
//! that is dropped before anyone reads it again. Each shard keeps at most
//! its share of the byte budget (`SqliteConfig::read_cache_mib`); a full
//! shard makes room by dropping entries picked at random, which costs
//! nothing to track and keeps the records read most often more often than
//! not. Values larger than a sixteenth of a shard are never kept. Deleted
//! and missing records are not kept: they read from sqlite each time.

use super::read_pool::current_cpu;
use crate::model::RecordRef;
use indexmap::IndexMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

/// Slots of a shard's doorkeeper.
const SEEN_SLOTS: usize = 4096;

/// The bytes an entry is charged beyond its text: the record's three
/// names' heap, the map's slot and the `Arc`'s counts, roughly.
const ENTRY_OVERHEAD: usize = 96;

type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
pub(super) struct PointCache {
    shards: Box<[Mutex<Shard>]>,
    /// Most bytes one shard keeps.
    shard_budget: usize,
    /// The hasher of every shard's map, and of the records in flight.
    hasher: Hasher,
}

#[derive(Debug)]
struct Shard {
    /// Every commit up to this seq has been applied here (invariant 1).
    head: u64,
    entries: IndexMap<RecordRef, Entry, Hasher>,
    /// The hashes of the records of the batch being written, sorted.
    in_flight: Vec<u64>,
    /// The doorkeeper: hashes of records read once, by hash modulo its size.
    seen: Box<[u64]>,
    bytes: usize,
    /// xorshift state for picking entries to drop.
    pick: u64,
}

#[derive(Debug)]
struct Entry {
    version: u64,
    text: Arc<str>,
}

impl Entry {
    fn charge(record: &RecordRef, text: &str) -> usize {
        record.domain.len() + record.ty.len() + record.key.len() + text.len() + ENTRY_OVERHEAD
    }
}

/// A hit: the record's version and values text at store position `seq`.
#[derive(Debug, PartialEq)]
pub(super) struct Hit {
    pub seq: u64,
    pub version: u64,
    pub text: String,
}

impl PointCache {
    /// A cache of at most `budget_bytes` over all shards, for a store whose
    /// head is `head` now (read before the writer starts); `None` for 0.
    pub(super) fn new(head: u64, budget_bytes: usize) -> Option<Arc<PointCache>> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::with_shards(head, budget_bytes, cpus)
    }

    fn with_shards(head: u64, budget_bytes: usize, shards: usize) -> Option<Arc<PointCache>> {
        if budget_bytes == 0 {
            return None;
        }
        let cpus = shards.max(1);
        let hasher = Hasher::default();
        let shards = (0..cpus)
            .map(|i| {
                Mutex::new(Shard {
                    head,
                    entries: IndexMap::with_hasher(hasher.clone()),
                    in_flight: Vec::new(),
                    seen: vec![0; SEEN_SLOTS].into_boxed_slice(),
                    bytes: 0,
                    pick: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
                })
            })
            .collect();
        Some(Arc::new(PointCache { shards, shard_budget: budget_bytes / cpus, hasher }))
    }

    /// The record as of this shard's head, if held here.
    pub(super) fn get(&self, record: &RecordRef) -> Option<Hit> {
        let shard = self.local();
        let entry = shard.entries.get(record)?;
        Some(Hit { seq: shard.head, version: entry.version, text: entry.text.as_ref().to_owned() })
    }

    /// What a point read at store position `seq` found: kept if this CPU's
    /// shard has seen no commit since and none is changing it (invariant 2),
    /// and it read the record lately already (the doorkeeper).
    pub(super) fn offer(&self, record: &RecordRef, seq: u64, version: u64, text: &str) {
        let charge = Entry::charge(record, text);
        if charge > self.shard_budget / 16 {
            return;
        }
        let hash = self.hasher.hash_one(record);
        let mut shard = self.local();
        if shard.head != seq || shard.in_flight.binary_search(&hash).is_ok() {
            return;
        }
        let seen = &mut shard.seen[hash as usize % SEEN_SLOTS];
        if *seen != hash {
            *seen = hash;
            return;
        }
        if shard.entries.contains_key(record) {
            return;
        }
        while shard.bytes + charge > self.shard_budget && !shard.entries.is_empty() {
            let at = shard.next_pick() % shard.entries.len();
            if let Some((dropped, entry)) = shard.entries.swap_remove_index(at) {
                shard.bytes -= Entry::charge(&dropped, &entry.text);
            }
        }
        shard.bytes += charge;
        shard.entries.insert(record.clone(), Entry { version, text: Arc::from(text) });
    }

    /// The writer is about to write these records (invariant 1).
    pub(super) fn writing<'r>(&self, records: impl Iterator<Item = &'r RecordRef> + Clone) {
        let mut hashes: Vec<u64> = records.clone().map(|r| self.hasher.hash_one(r)).collect();
        hashes.sort_unstable();
        for shard in &*self.shards {
            let mut shard = lock(shard);
            if !shard.entries.is_empty() {
                for record in records.clone() {
                    if let Some(entry) = shard.entries.swap_remove(record) {
                        shard.bytes -= Entry::charge(record, &entry.text);
                    }
                }
            }
            shard.in_flight.clone_from(&hashes);
        }
    }

    /// The writer's transaction ended; `head`, if it committed any event,
    /// is the store's head now (invariant 1).
    pub(super) fn written(&self, head: Option<u64>) {
        for shard in &*self.shards {
            let mut shard = lock(shard);
            shard.in_flight.clear();
            if let Some(head) = head {
                shard.head = shard.head.max(head);
            }
        }
    }

    /// Forgets every record and keeps none offered later: the store is
    /// closed, and its file may be another process's next.
    pub(super) fn close(&self) {
        for shard in &*self.shards {
            let mut shard = lock(shard);
            shard.entries.clear();
            shard.bytes = 0;
            // No read's head is this one.
            shard.head = u64::MAX;
        }
    }

    /// Whether any shard holds the record.
    #[cfg(test)]
    pub(super) fn holds(&self, record: &RecordRef) -> bool {
        self.shards.iter().any(|s| lock(s).entries.contains_key(record))
    }

    fn local(&self) -> MutexGuard<'_, Shard> {
        lock(&self.shards[current_cpu() % self.shards.len()])
    }
}

impl Shard {
    fn next_pick(&mut self) -> usize {
        let mut x = self.pick;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.pick = x;
        x as usize
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic under the lock (there is no code that can) would leave whole
    // entries: what the shard held stays true.
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str) -> RecordRef {
        RecordRef { domain: "d".into(), ty: "t".into(), key: key.into() }
    }

    /// A record read twice at `seq`, as the doorkeeper wants before it keeps one.
    fn read_twice(cache: &PointCache, record: &RecordRef, seq: u64, version: u64, text: &str) {
        cache.offer(record, seq, version, text);
        cache.offer(record, seq, version, text);
    }

    fn hit(seq: u64, version: u64, text: &str) -> Option<Hit> {
        Some(Hit { seq, version, text: text.into() })
    }

    /// A write of `records` that committed up to `head` (`None`: no event).
    fn write(cache: &PointCache, records: &[&RecordRef], head: Option<u64>) {
        cache.writing(records.iter().copied());
        cache.written(head);
    }

    #[test]
    fn a_read_is_kept_only_at_the_head_the_shards_have_seen() {
        // One shard: whichever CPU the test runs on, it is the one.
        let cache = PointCache::with_shards(5, 1 << 20, 1).unwrap();
        let (a, b) = (record("a"), record("b"));
        // Read before a commit the shards have seen: dropped.
        read_twice(&cache, &a, 4, 1, "{}");
        assert_eq!(cache.get(&a), None);
        // Read after a commit not applied here yet: dropped too.
        read_twice(&cache, &a, 6, 1, "{}");
        assert_eq!(cache.get(&a), None);
        read_twice(&cache, &a, 5, 2, r#"{"n":2}"#);
        assert_eq!(cache.get(&a), hit(5, 2, r#"{"n":2}"#));
        // A commit of another record moves the head; `a` is still current.
        write(&cache, &[&b], Some(7));
        assert_eq!(cache.get(&a), hit(7, 2, r#"{"n":2}"#));
        // A commit of `a` drops it.
        write(&cache, &[&a], Some(8));
        assert_eq!(cache.get(&a), None);
        // A batch that wrote no event (every append refused) leaves the head.
        read_twice(&cache, &a, 8, 3, "{}");
        write(&cache, &[&b], None);
        assert_eq!(cache.get(&a), hit(8, 3, "{}"));
    }

    #[test]
    fn a_record_being_written_is_neither_answered_nor_kept() {
        let cache = PointCache::with_shards(3, 1 << 20, 1).unwrap();
        let (a, b) = (record("a"), record("b"));
        read_twice(&cache, &a, 3, 1, "{}");
        cache.writing([&a].into_iter());
        // Its commit may be visible to reads of the file already.
        assert_eq!(cache.get(&a), None);
        read_twice(&cache, &a, 3, 1, "{}");
        assert_eq!(cache.get(&a), None, "a read from before the commit was kept while it was under way");
        // Another record read meanwhile is kept: the batch does not change it.
        read_twice(&cache, &b, 3, 1, "{}");
        assert_eq!(cache.get(&b), hit(3, 1, "{}"));
        cache.written(Some(4));
        assert_eq!(cache.get(&b), hit(4, 1, "{}"));
        // After the commit, a read that saw it is kept.
        read_twice(&cache, &a, 4, 2, "{}");
        assert_eq!(cache.get(&a), hit(4, 2, "{}"));
    }

    #[test]
    fn every_shard_sees_every_commit() {
        let cache = PointCache::with_shards(1, 1 << 20, 4).unwrap();
        let a = record("a");
        // Fill every shard directly, as readers on each CPU would.
        for shard in &*cache.shards {
            let mut s = lock(shard);
            s.bytes += Entry::charge(&a, "{}");
            s.entries.insert(a.clone(), Entry { version: 1, text: Arc::from("{}") });
        }
        cache.writing([&a].into_iter());
        for shard in &*cache.shards {
            let s = lock(shard);
            assert!(s.entries.is_empty() && s.bytes == 0 && s.in_flight.len() == 1, "{s:?}");
        }
        cache.written(Some(2));
        for shard in &*cache.shards {
            let s = lock(shard);
            assert!(s.in_flight.is_empty() && s.head == 2, "{s:?}");
        }
    }

    #[test]
    fn a_full_shard_drops_entries_to_stay_within_its_budget() {
        let budget = 64 * 1024;
        let cache = PointCache::with_shards(0, budget, 1).unwrap();
        let text = "x".repeat(200);
        for i in 0..10_000 {
            read_twice(&cache, &record(&i.to_string()), 0, 1, &text);
        }
        for shard in &*cache.shards {
            let s = lock(shard);
            let counted: usize = s.entries.iter().map(|(r, e)| Entry::charge(r, &e.text)).sum();
            assert_eq!(s.bytes, counted);
            assert!(s.bytes <= cache.shard_budget, "{} bytes in a shard of {}", s.bytes, cache.shard_budget);
        }
        let held: usize = cache.shards.iter().map(|s| lock(s).entries.len()).sum();
        assert!(held > 100, "only {held} entries held in {budget} bytes");
        // Too large a value for a shard is not kept at all.
        let big = record("big");
        read_twice(&cache, &big, 0, 1, &"y".repeat(cache.shard_budget / 8));
        assert_eq!(cache.get(&big), None);
    }

    #[test]
    fn a_record_is_kept_on_its_second_read_in_a_while() {
        let cache = PointCache::with_shards(1, 1 << 20, 1).unwrap();
        let (a, b) = (record("a"), record("b"));
        cache.offer(&a, 1, 1, "{}");
        assert_eq!(cache.get(&a), None, "kept on its first read");
        cache.offer(&a, 1, 1, "{}");
        assert_eq!(cache.get(&a), hit(1, 1, "{}"));
        // Many other records read once in between push `b` out of the doorkeeper.
        cache.offer(&b, 1, 1, "{}");
        for i in 0..20 * SEEN_SLOTS {
            cache.offer(&record(&format!("x{i}")), 1, 1, "{}");
        }
        cache.offer(&b, 1, 1, "{}");
        assert_eq!(cache.get(&b), None, "a read long ago let a record in");
        assert_eq!(lock(&cache.shards[0]).entries.len(), 1, "records read once each were kept");
    }

    #[test]
    fn a_closed_cache_answers_nothing_and_keeps_nothing() {
        let cache = PointCache::with_shards(1, 1 << 20, 1).unwrap();
        let a = record("a");
        read_twice(&cache, &a, 1, 1, "{}");
        assert_eq!(cache.get(&a), hit(1, 1, "{}"));
        cache.close();
        assert_eq!(cache.get(&a), None);
        read_twice(&cache, &a, 1, 1, "{}");
        assert_eq!(cache.get(&a), None);
    }

    #[test]
    fn no_budget_no_cache() {
        assert!(PointCache::new(0, 0).is_none());
    }
}

//! Indexes on fields of the stored values, so that a state search naming a
//! field (`{"status": "open"}`, `{"price": {"$lt": 10}}`, sort by `price`)
//! is an index scan instead of a pass over every record of the type.
//!
//! **One index per field name, serving every type.** The index is on the
//! `states` table: `(domain, type, kind rank, value)` of one top-level
//! field, where the kind rank is `query::compare_values`'s (null/missing,
//! number, string, object, array, boolean) and the value is sqlite's
//! `json_extract`. Within one kind, sqlite's order of those values is the
//! matcher's (numbers numerically, strings by bytes, false before true),
//! except for objects and arrays (by JSON text) and integers beyond i64
//! (read as reals, so rounded): `Sort::sorted_past` knows those ties.
//! The table's key (`key`) ends every index entry, so a sort by the field
//! that breaks ties by key reads the index in order.
//!
//! **Which fields.** Those named in the config (`index_fields`), and, unless
//! `auto_index` is off, a field that `AUTO_AFTER` expensive searches named
//! (a condition an index can answer, or the sort): expensive meaning the
//! search's statement ran `EXPENSIVE_STEPS` virtual-machine steps, which a
//! type of a few thousand records costs. At most `MAX_AUTO` fields get
//! an index automatically, since every index is one more entry to write on
//! every append. Indexes persist in the file and are found again at open;
//! nothing drops them (`DROP INDEX "states_by_field_<hex>"` does).
//!
//! **Names are never pasted raw.** An expression index is only used by a
//! query whose expression is the same text, so the field's JSON path is a
//! literal in the SQL, not a bound parameter: only names of ASCII letters,
//! digits, `_` and `-` (not all digits, at most 64 bytes) are indexable;
//! searches on any other field keep the bound-parameter pushdown. Index
//! names carry the field hex-encoded.
//!
//! **Who builds.** `CREATE INDEX` runs on the writer thread, between two
//! append batches: appends queue behind it (none fail) and reads go on
//! (WAL). Searches start using the index once it is committed.

use rusqlite::Connection;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Expensive searches naming a field before it gets an index.
pub(super) const AUTO_AFTER: u32 = 3;
/// Virtual-machine steps that make a search expensive: a pass over about
/// 2,000 records (measured: 13 steps a record for one pushed-down
/// equality); a search through an index of the field takes far fewer.
pub(super) const EXPENSIVE_STEPS: i32 = 26_000;
/// Most fields indexed automatically.
const MAX_AUTO: usize = 16;
/// How long a probe's count (`mod.rs`, `choose_index`) is reused.
const PROBE_TTL: Duration = Duration::from_secs(5);
/// Most probe counts kept.
const MAX_PROBES_KEPT: usize = 4096;
/// Longest indexable field name, in bytes.
const MAX_NAME: usize = 64;
const PREFIX: &str = "states_by_field_";

/// Whether `field` may be indexed: its JSON path is pasted into SQL text.
pub fn indexable(field: &str) -> bool {
    !field.is_empty()
        && field.len() <= MAX_NAME
        && field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !field.bytes().all(|b| b.is_ascii_digit())
}

/// The field's kind rank (`query::compare_values`'s order) over `column`.
/// `field` must be `indexable`.
pub fn rank_sql(column: &str, field: &str) -> String {
    format!(
        "(CASE json_type({column}, '$.\"{field}\"') WHEN 'integer' THEN 1 WHEN 'real' THEN 1 WHEN 'text' THEN 2 \
         WHEN 'object' THEN 3 WHEN 'array' THEN 4 WHEN 'true' THEN 5 WHEN 'false' THEN 5 ELSE 0 END)"
    )
}

/// The field's value over `column` (booleans as 1 and 0, objects and arrays
/// as JSON text). `field` must be `indexable`.
pub fn value_sql(column: &str, field: &str) -> String {
    format!("json_extract({column}, '$.\"{field}\"')")
}

/// The index of `field`, as sqlite names it (`INDEXED BY`).
pub fn index_name(field: &str) -> String {
    let hex: String = field.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

fn field_of(index: &str) -> Option<String> {
    let hex = index.strip_prefix(PREFIX)?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok().filter(|f| indexable(f))
}

/// The fields with an index, and the counts that decide the next one.
pub struct FieldIndexes {
    auto: bool,
    /// Fields whose index is committed: searches may name them.
    ready: RwLock<Arc<HashSet<String>>>,
    /// Expensive searches per field not indexed yet; a field is removed
    /// once its index is asked for.
    uses: Mutex<HashMap<String, u32>>,
    /// Fields indexed (or asked for) automatically.
    automatic: Mutex<usize>,
    /// Recent probe counts by condition: probing a common value reads
    /// `SELECTIVE` index entries, several times what its search then
    /// costs, and searches repeat. A stale count only picks a slower plan.
    probes: Mutex<HashMap<String, (i64, Instant)>>,
}

impl FieldIndexes {
    pub fn new(auto: bool) -> Self {
        FieldIndexes {
            auto,
            ready: RwLock::new(Arc::default()),
            uses: Mutex::default(),
            automatic: Mutex::new(0),
            probes: Mutex::default(),
        }
    }

    /// The indexed fields now.
    pub fn ready(&self) -> Arc<HashSet<String>> {
        self.ready.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A probe's count for `condition` from the last `PROBE_TTL`.
    pub fn probed(&self, condition: &str) -> Option<i64> {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.get(condition).filter(|(_, at)| at.elapsed() < PROBE_TTL).map(|(found, _)| *found)
    }

    pub fn remember_probe(&self, condition: String, found: i64) {
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        if probes.len() >= MAX_PROBES_KEPT {
            probes.retain(|_, (_, at)| at.elapsed() < PROBE_TTL);
            if probes.len() >= MAX_PROBES_KEPT {
                probes.clear();
            }
        }
        probes.insert(condition, (found, Instant::now()));
    }

    /// Finds the indexes an earlier run created.
    pub fn load(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'states'")?;
        let found: HashSet<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .filter_map(|name| name.ok().and_then(|n| field_of(&n)))
            .collect();
        *self.ready.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(found);
        Ok(())
    }

    /// Creates the index of `field` (on the write connection) if it has none.
    pub fn create(&self, conn: &Connection, field: &str) -> rusqlite::Result<()> {
        if !indexable(field) || self.ready().contains(field) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS \"{}\" ON states (domain, type, {}, {})",
            index_name(field),
            rank_sql("vals", field),
            value_sql("vals", field)
        ))?;
        let mut ready = self.ready.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashSet::clone(&ready);
        next.insert(field.to_owned());
        *ready = Arc::new(next);
        tracing::info!(field, took_ms = started.elapsed().as_millis() as u64, "sqlite: indexed a field of the stored values");
        Ok(())
    }

    /// Counts an expensive search naming `fields`; returns those that now
    /// should get an index (each once).
    pub fn note_expensive(&self, fields: &[String]) -> Vec<String> {
        if !self.auto {
            return vec![];
        }
        let ready = self.ready();
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        let mut automatic = self.automatic.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = vec![];
        for field in fields {
            if !indexable(field) || ready.contains(field) || *automatic >= MAX_AUTO {
                continue;
            }
            let n = uses.entry(field.clone()).or_default();
            *n += 1;
            if *n == AUTO_AFTER {
                *automatic += 1;
                due.push(field.clone());
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_indexable() {
        for ok in ["status", "a_b", "price-eur", "x1", "A"] {
            assert!(indexable(ok), "{ok}");
        }
        let long = "a".repeat(MAX_NAME + 1);
        for bad in ["", "0", "123", "a.b", "a'b", "a\"b", "a b", "a$", "é", "a;", long.as_str()] {
            assert!(!indexable(bad), "{bad:?}");
        }
    }

    #[test]
    fn index_names_give_back_their_field() {
        for f in ["status", "price-eur", "x_1"] {
            assert_eq!(field_of(&index_name(f)).as_deref(), Some(f));
        }
        assert_eq!(field_of("states_by_field_zz"), None);
        assert_eq!(field_of("events_by_type_seq"), None);
    }

    #[test]
    fn a_field_is_due_once_after_enough_expensive_searches() {
        let ix = FieldIndexes::new(true);
        let names = |fields: &[&str]| fields.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        for _ in 1..AUTO_AFTER {
            assert!(ix.note_expensive(&names(&["status"])).is_empty());
        }
        assert_eq!(ix.note_expensive(&names(&["status", "a.b"])), names(&["status"]));
        assert!(ix.note_expensive(&names(&["status"])).is_empty(), "asked for once");
        assert!(FieldIndexes::new(false).note_expensive(&names(&["status"; 10])).is_empty(), "auto off");
    }
}

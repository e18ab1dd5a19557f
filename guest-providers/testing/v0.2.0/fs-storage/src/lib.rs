//! TEST FIXTURE, frozen: this guest exactly as it was built against
//! stategate:gateway@0.2.0 (wit/v0.2.0), before WIT 0.3.0. The host must
//! keep loading it and it must keep passing its conformance suite; do not
//! update it (the maintained guest is the one of the same name one level up
//! from `testing/`).
//!
//! A stategate storage provider over a preopened directory (`/data`, from
//! `grants.dir`). Every append is one JSON line in `/data/<file>` (config
//! `file`, default `events.jsonl`), written and fsynced before it returns;
//! the current states and indexes are rebuilt from that log when the
//! instance starts, so data survives restarts. A torn last line (a crash
//! mid-write) is cut off. One writer per directory, one instance
//! (`max-instances` is 1: the indexes live in the instance's memory).
//!
//! Searches (`query-states`, `query-events`) decide the filter in the guest
//! where it can (`query`), so only matches cross to the host; when every
//! candidate was decided they also stop at offset + limit and skip the
//! offset.

wit_bindgen::generate!({
    path: "../../../../wit/v0.2.0",
    world: "storage-provider",
});

mod query;

use exports::stategate::gateway::storage::{
    AppendRequest, Appended, EventOrder, EventPage, EventQuery, EventScan, Expect, FeedQuery, Guest, StatePage, StateQuery,
};
use query::{SortKey, Verdict, decide, sort_key};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stategate::gateway::host::{self, Level};
use stategate::gateway::types::{Event, EventKind, ProviderError, RecordRef, State};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

/// One line of the log.
#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    seq: u64,
    domain: String,
    ty: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<String>,
    claims: String,
    time: i64,
    version: u64,
    kind: String,
    method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idem: Option<(String, String)>,
}

type Key = (String, String, String);

struct Store {
    file: File,
    len: u64,
    lines: Vec<Line>,
    states: BTreeMap<Key, usize>,
    versions: HashMap<Key, u64>,
    by_id: HashMap<String, usize>,
    idem: HashMap<String, (String, usize)>,
}

static STORE: Mutex<Option<Store>> = Mutex::new(None);

fn unavailable(what: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable(what.to_string())
}

fn kind_str(k: EventKind) -> &'static str {
    match k {
        EventKind::Set => "SET",
        EventKind::Edit => "EDIT",
        EventKind::Del => "DEL",
        EventKind::Revert => "REVERT",
    }
}

fn kind_of(s: &str) -> EventKind {
    match s {
        "EDIT" => EventKind::Edit,
        "DEL" => EventKind::Del,
        "REVERT" => EventKind::Revert,
        _ => EventKind::Set,
    }
}

impl Line {
    fn key(&self) -> Key {
        (self.domain.clone(), self.ty.clone(), self.key.clone())
    }

    fn event(&self) -> Event {
        Event {
            id: self.id.clone(),
            seq: self.seq,
            record: RecordRef { domain: self.domain.clone(), ty: self.ty.clone(), key: self.key.clone() },
            values: self.values.clone(),
            claims: self.claims.clone(),
            time: self.time,
            version: self.version,
            kind: kind_of(&self.kind),
            method: self.method.clone(),
        }
    }
}

impl Store {
    fn open() -> Result<Store, ProviderError> {
        let name = host::config("file").unwrap_or_else(|| "events.jsonl".into());
        let path = format!("/data/{name}");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| unavailable(format!("cannot open {path} (is grants.dir set?): {e}")))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(|e| unavailable(format!("cannot read {path}: {e}")))?;
        let mut store = Store {
            file,
            len: 0,
            lines: Vec::new(),
            states: BTreeMap::new(),
            versions: HashMap::new(),
            by_id: HashMap::new(),
            idem: HashMap::new(),
        };
        let mut good = 0usize;
        for raw in text.split_inclusive(|b| *b == b'\n') {
            if raw.last() != Some(&b'\n') {
                break; // torn tail
            }
            match serde_json::from_slice::<Line>(raw) {
                Ok(line) => {
                    store.apply(line);
                    good += raw.len();
                }
                Err(e) => {
                    host::log(Level::Warn, &format!("{path}: cutting the log at a bad line: {e}"));
                    break;
                }
            }
        }
        if good < text.len() {
            store.file.set_len(good as u64).map_err(|e| unavailable(format!("cannot repair {path}: {e}")))?;
        }
        // Appends write at the file's cursor, kept at the end of the log.
        store.file.seek(SeekFrom::Start(good as u64)).map_err(|e| unavailable(format!("cannot seek {path}: {e}")))?;
        store.len = good as u64;
        host::log(Level::Info, &format!("{path}: {} events loaded", store.lines.len()));
        Ok(store)
    }

    fn apply(&mut self, line: Line) {
        let i = self.lines.len();
        let key = line.key();
        self.versions.insert(key.clone(), line.version);
        if line.values.is_some() {
            self.states.insert(key, i);
        } else {
            self.states.remove(&key);
        }
        self.by_id.insert(line.id.clone(), i);
        if let Some((k, fp)) = &line.idem {
            self.idem.insert(k.clone(), (fp.clone(), i));
        }
        self.lines.push(line);
    }

    fn state(&self, i: usize) -> State {
        let l = &self.lines[i];
        State {
            record: RecordRef { domain: l.domain.clone(), ty: l.ty.clone(), key: l.key.clone() },
            values: l.values.clone().unwrap_or_else(|| "{}".into()),
            version: l.version,
        }
    }

    fn append(&mut self, req: AppendRequest) -> Result<Appended, ProviderError> {
        if let Some(idem) = &req.idempotency {
            if let Some((fp, i)) = self.idem.get(&idem.key) {
                let first = &self.lines[*i];
                if first.time >= idem.not_before {
                    if *fp != idem.fingerprint {
                        return Err(ProviderError::IdempotencyMismatch);
                    }
                    return Ok(Appended { event: first.event(), replayed: true });
                }
            }
        }
        let key = (req.record.domain.clone(), req.record.ty.clone(), req.record.key.clone());
        let current = self.states.get(&key).map(|i| self.lines[*i].version);
        let ok = match req.expect {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(v) => current == Some(v),
        };
        if !ok {
            return Err(ProviderError::VersionConflict(current));
        }
        if req.values.is_none() && current.is_none() {
            return Err(ProviderError::NotFound(format!(
                "state {}/{}/{}",
                req.record.domain, req.record.ty, req.record.key
            )));
        }
        let version = self.versions.get(&key).copied().unwrap_or(0) + 1;
        let line = Line {
            id: req.id,
            seq: self.lines.len() as u64 + 1,
            domain: key.0,
            ty: key.1,
            key: key.2,
            values: req.values,
            claims: req.claims,
            time: req.time,
            version,
            kind: kind_str(req.kind).into(),
            method: req.method,
            idem: req.idempotency.map(|i| (i.key, i.fingerprint)),
        };
        let mut text = serde_json::to_vec(&line).map_err(|e| ProviderError::Internal(e.to_string()))?;
        text.push(b'\n');
        // One write and one fsync per append: the cursor is at the end of
        // the log (put back there after a failed write).
        let written = self.file.write_all(&text).and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Leave no partial line behind: nothing was written.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(unavailable(format!("cannot write the event log: {e}")));
        }
        self.len += text.len() as u64;
        let event = line.event();
        self.apply(line);
        Ok(Appended { event, replayed: false })
    }
}

/// A filter as the host sends it (validated JSON text).
fn filter(text: &str) -> Result<Map<String, Value>, ProviderError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ProviderError::Internal(format!("the host sent a filter that is not a JSON object: {text:.80}"))),
    }
}

/// A JSON object as stored (values, claims); None when it is not one (the
/// host then decides, and refuses it).
fn object(text: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Candidates of a search, in the order the log holds them (key order for
/// states, seq order for events): the certain matches and the undecided
/// ones, each with its sort value (None when the guest cannot order it).
struct Candidates<T> {
    sure: Vec<(T, Option<SortKey>)>,
    maybe: Vec<T>,
    /// The sort values of every sure match can be ordered by the guest.
    orderable: bool,
}

impl<T> Candidates<T> {
    fn new() -> Self {
        Candidates { sure: Vec::new(), maybe: Vec::new(), orderable: true }
    }

    fn push(&mut self, verdict: Verdict, item: T, key: Option<SortKey>) {
        match verdict {
            Verdict::No => {}
            Verdict::Maybe => self.maybe.push(item),
            Verdict::Yes => {
                self.orderable &= key.is_some();
                self.sure.push((item, key));
            }
        }
    }

    /// The page to return: every undecided candidate, and of the certain
    /// matches (already in the query's order when `sorted` is false) those
    /// that can belong to the first `offset + limit`; the first `offset`
    /// are left out when nothing was undecided (see `state-page`).
    fn page(mut self, sorted: Option<impl Fn(&(T, Option<SortKey>), &(T, Option<SortKey>)) -> std::cmp::Ordering>, offset: u32, limit: u32) -> (Vec<T>, u32) {
        let window = offset as usize + limit as usize;
        match sorted {
            None => {}
            Some(_) if !self.orderable => return (self.sure.into_iter().map(|(t, _)| t).chain(self.maybe).collect(), 0),
            Some(order) => self.sure.sort_by(order),
        }
        self.sure.truncate(window);
        let skipped = if self.maybe.is_empty() { (offset as usize).min(self.sure.len()) } else { 0 };
        let out = self.sure.into_iter().skip(skipped).map(|(t, _)| t).chain(self.maybe).collect();
        (out, skipped as u32)
    }
}

fn with<T>(f: impl FnOnce(&mut Store) -> Result<T, ProviderError>) -> Result<T, ProviderError> {
    let mut guard = STORE.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(Store::open()?);
    }
    f(guard.as_mut().unwrap())
}

struct Provider;

impl Guest for Provider {
    fn append(req: AppendRequest) -> Result<Appended, ProviderError> {
        with(|s| s.append(req))
    }

    fn get(record: RecordRef) -> Result<Option<State>, ProviderError> {
        with(|s| Ok(s.states.get(&(record.domain, record.ty, record.key)).map(|i| s.state(*i))))
    }

    fn search_states(domain: String, ty: String) -> Result<Vec<State>, ProviderError> {
        with(|s| {
            let from = (domain.clone(), ty.clone(), String::new());
            Ok(s.states
                .range(from..)
                .take_while(|((d, t, _), _)| *d == domain && *t == ty)
                .map(|(_, i)| s.state(*i))
                .collect())
        })
    }

    fn search_events(scan: EventScan) -> Result<Vec<Event>, ProviderError> {
        with(|s| {
            Ok(s.lines
                .iter()
                .filter(|l| {
                    l.domain == scan.domain
                        && l.ty == scan.ty
                        && scan.key.as_ref().is_none_or(|k| *k == l.key)
                        && scan.min_time.is_none_or(|t| l.time >= t)
                        && scan.max_time.is_none_or(|t| l.time <= t)
                })
                .map(Line::event)
                .collect())
        })
    }

    fn get_event(id: String) -> Result<Option<Event>, ProviderError> {
        with(|s| Ok(s.by_id.get(&id).map(|i| s.lines[*i].event())))
    }

    fn feed(q: FeedQuery) -> Result<Vec<Event>, ProviderError> {
        with(|s| {
            let start = (q.after_seq as usize).min(s.lines.len());
            Ok(s.lines[start..]
                .iter()
                .filter(|l| {
                    q.domain.as_ref().is_none_or(|d| *d == l.domain)
                        && q.ty.as_ref().is_none_or(|t| *t == l.ty)
                        && q.key.as_ref().is_none_or(|k| *k == l.key)
                        && q.from_time.is_none_or(|t| l.time >= t)
                })
                .take(q.limit as usize)
                .map(Line::event)
                .collect())
        })
    }

    fn query_states(q: StateQuery) -> Result<StatePage, ProviderError> {
        let f = filter(&q.filter)?;
        let path: Option<Vec<&str>> = q.sort.as_ref().map(|s| s.field.split('.').collect());
        let window = q.offset as usize + q.limit as usize;
        with(|s| {
            let mut found = Candidates::new();
            let from = (q.domain.clone(), q.ty.clone(), String::new());
            for (_, i) in s.states.range(from..).take_while(|((d, t, _), _)| *d == q.domain && *t == q.ty) {
                let line = &s.lines[*i];
                let text = line.values.as_deref().unwrap_or("{}");
                let (verdict, key) = match object(text) {
                    Some(values) => (decide(&f, &values), path.as_ref().and_then(|p| sort_key(&values, p))),
                    None => (Verdict::Maybe, None),
                };
                found.push(verdict, *i, key);
                // In key order, the first `window` certain matches are all
                // a page without a sort can hold.
                if path.is_none() && found.sure.len() >= window {
                    break;
                }
            }
            let descending = q.sort.as_ref().is_some_and(|s| s.descending);
            let lines = &s.lines;
            let order = path.as_ref().map(|_| {
                move |a: &(usize, Option<SortKey>), b: &(usize, Option<SortKey>)| {
                    let by = match (&a.1, &b.1) {
                        (Some(x), Some(y)) => x.compare(y),
                        _ => std::cmp::Ordering::Equal,
                    };
                    let o = by.then_with(|| lines[a.0].key.cmp(&lines[b.0].key));
                    if descending { o.reverse() } else { o }
                }
            });
            let (page, skipped) = found.page(order, q.offset, q.limit);
            Ok(StatePage { states: page.into_iter().map(|i| s.state(i)).collect(), skipped })
        })
    }

    fn query_events(q: EventQuery) -> Result<EventPage, ProviderError> {
        let f = filter(&q.filter)?;
        let claims = filter(&q.claims_filter)?;
        let window = q.offset as usize + q.limit as usize;
        let field: Option<Vec<&str>> = match &q.sort {
            Some(s) => match &s.by {
                EventOrder::Field(path) => Some(path.split('.').collect()),
                EventOrder::Time => None,
            },
            None => None,
        };
        with(|s| {
            let mut found = Candidates::new();
            for (i, l) in s.lines.iter().enumerate() {
                let wanted = l.domain == q.domain
                    && l.ty == q.ty
                    && q.key.as_ref().is_none_or(|k| *k == l.key)
                    && q.min_time.is_none_or(|t| l.time >= t)
                    && q.max_time.is_none_or(|t| l.time <= t);
                if !wanted {
                    continue;
                }
                let values = match &l.values {
                    Some(text) => object(text),
                    // A deletion's values are the empty object.
                    None => Some(Map::new()),
                };
                let (verdict, key) = match (values, object(&l.claims)) {
                    (Some(values), Some(c)) => {
                        let key = match (&q.sort, &field) {
                            (Some(_), Some(p)) => sort_key(&values, p),
                            (Some(_), None) => Some(SortKey::Number(l.time.into())),
                            (None, _) => Some(SortKey::Null),
                        };
                        (decide(&f, &values).and(decide(&claims, &c)), key)
                    }
                    _ => (Verdict::Maybe, None),
                };
                found.push(verdict, i, key);
                if q.sort.is_none() && found.sure.len() >= window {
                    break;
                }
            }
            let descending = q.sort.as_ref().is_some_and(|s| s.descending);
            let order = q.sort.as_ref().map(|_| {
                move |a: &(usize, Option<SortKey>), b: &(usize, Option<SortKey>)| {
                    let by = match (&a.1, &b.1) {
                        (Some(x), Some(y)) => x.compare(y),
                        _ => std::cmp::Ordering::Equal,
                    };
                    // Line index order is seq order.
                    let o = by.then_with(|| a.0.cmp(&b.0));
                    if descending { o.reverse() } else { o }
                }
            });
            let (page, skipped) = found.page(order, q.offset, q.limit);
            Ok(EventPage { events: page.into_iter().map(|i| s.lines[i].event()).collect(), skipped })
        })
    }

    fn max_instances() -> u32 {
        1
    }

    fn head() -> Result<u64, ProviderError> {
        with(|s| Ok(s.lines.len() as u64))
    }

    fn ping() -> Result<(), ProviderError> {
        with(|_| Ok(()))
    }
}

export!(Provider);

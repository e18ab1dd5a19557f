//! TEST FIXTURE, frozen: this guest exactly as it was built against
//! stategate:gateway@0.2.0 (wit/v0.2.0), before WIT 0.3.0. The host must
//! keep loading it and it must keep passing its conformance suite; do not
//! update it (the maintained guest is the one of the same name one level up
//! from `testing/`).
//!
//! A stategate channel provider over a shared directory (`/data`, from
//! `grants.dir`): each publisher appends JSON lines to a file of its own
//! (`<random id>.log`), and readers poll every `*.log` file from a cursor
//! (`{"file": byte offset, …}` as JSON). Gateways on one machine that grant
//! the same directory see each other's events. Files are never compacted.

wit_bindgen::generate!({
    path: "../../../../wit/v0.2.0",
    world: "channel-provider",
});

use exports::stategate::gateway::channel::{Batch, Guest};
use serde::{Deserialize, Serialize};
use stategate::gateway::host;
use stategate::gateway::types::{Event, EventKind, ProviderError, RecordRef};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

const DIR: &str = "/data";
/// Bytes read from one file per poll.
const CHUNK: u64 = 1 << 20;

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
}

static OUT: Mutex<Option<File>> = Mutex::new(None);

fn unavailable(what: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable(what.to_string())
}

fn logs() -> Result<BTreeMap<String, u64>, ProviderError> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(DIR).map_err(|e| unavailable(format!("cannot list {DIR} (is grants.dir set?): {e}")))?;
    for entry in entries {
        let entry = entry.map_err(unavailable)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            let len = entry.metadata().map_err(unavailable)?.len();
            out.insert(name, len);
        }
    }
    Ok(out)
}

fn parse_cursor(text: &str) -> BTreeMap<String, u64> {
    serde_json::from_str(text).unwrap_or_default()
}

fn to_event(l: Line) -> Event {
    let kind = match l.kind.as_str() {
        "EDIT" => EventKind::Edit,
        "DEL" => EventKind::Del,
        "REVERT" => EventKind::Revert,
        _ => EventKind::Set,
    };
    Event {
        id: l.id,
        seq: l.seq,
        record: RecordRef { domain: l.domain, ty: l.ty, key: l.key },
        values: l.values,
        claims: l.claims,
        time: l.time,
        version: l.version,
        kind,
        method: l.method,
    }
}

struct Channel;

impl Guest for Channel {
    fn publish(e: Event) -> Result<(), ProviderError> {
        let line = Line {
            id: e.id,
            seq: e.seq,
            domain: e.record.domain,
            ty: e.record.ty,
            key: e.record.key,
            values: e.values,
            claims: e.claims,
            time: e.time,
            version: e.version,
            kind: match e.kind {
                EventKind::Set => "SET",
                EventKind::Edit => "EDIT",
                EventKind::Del => "DEL",
                EventKind::Revert => "REVERT",
            }
            .into(),
            method: e.method,
        };
        let mut text = serde_json::to_vec(&line).map_err(|e| ProviderError::Internal(e.to_string()))?;
        text.push(b'\n');
        let mut out = OUT.lock().unwrap_or_else(|p| p.into_inner());
        if out.is_none() {
            let id = std::collections::hash_map::RandomState::new().hash_one(host::now_nanos());
            let path = format!("{DIR}/{id:016x}.log");
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| unavailable(format!("cannot create {path} (is grants.dir set?): {e}")))?;
            *out = Some(f);
        }
        // One write per line: readers only consume complete lines.
        out.as_mut().unwrap().write_all(&text).map_err(|e| {
            *out = None;
            unavailable(format!("cannot append to the channel log: {e}"))
        })
    }

    fn tail() -> Result<String, ProviderError> {
        Ok(serde_json::to_string(&logs()?).unwrap())
    }

    fn poll(cursor: String, max: u32) -> Result<Batch, ProviderError> {
        let mut pos = parse_cursor(&cursor);
        let mut events = Vec::new();
        for (name, len) in logs()? {
            let at = pos.get(&name).copied().unwrap_or(0);
            if len <= at || events.len() >= max as usize {
                continue;
            }
            let mut f = File::open(format!("{DIR}/{name}")).map_err(unavailable)?;
            f.seek(SeekFrom::Start(at)).map_err(unavailable)?;
            let mut buf = Vec::new();
            f.take((len - at).min(CHUNK)).read_to_end(&mut buf).map_err(unavailable)?;
            let mut used = 0usize;
            for raw in buf.split_inclusive(|b| *b == b'\n') {
                if raw.last() != Some(&b'\n') || events.len() >= max as usize {
                    break; // partial line: the writer is still at it
                }
                used += raw.len();
                match serde_json::from_slice::<Line>(raw) {
                    Ok(l) => events.push(to_event(l)),
                    Err(e) => host::log(host::Level::Warn, &format!("{name}: skipping a bad line: {e}")),
                }
            }
            pos.insert(name, at + used as u64);
        }
        Ok(Batch { events, cursor: serde_json::to_string(&pos).unwrap() })
    }

    fn ping() -> Result<(), ProviderError> {
        logs().map(|_| ())
    }

    /// One instance: a publisher's events stay in one file, in order.
    fn max_instances() -> u32 {
        1
    }
}

export!(Channel);

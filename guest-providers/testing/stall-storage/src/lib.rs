//! TEST ONLY: a storage provider whose every call first stalls in the host,
//! where no epoch deadline reaches it: it sleeps for config `sleep_ms`
//! milliseconds (default 0) with `std::thread::sleep` (blocked on a WASI
//! clock pollable), then, when config `read` names a file, reads it (a FIFO
//! without a writer blocks in the file system call itself). Then `ping`
//! succeeds, `head` answers 0, `get` and `get-at` answer as below, and
//! everything else is `unavailable`. It checks that a provider call's deadline covers the
//! time a guest spends blocked in the host.
//!
//! For the instance pool: `max-instances` answers config `max_instances`
//! (default 1, without stalling); a read of a key `/data/<gate>` holds the
//! call at a gate: it creates `/data/<gate>.in` (the test sees the call is
//! inside the instance) and waits until `/data/<gate>.go` exists (the test
//! lets it go); it answers a state whose values are `{"calls": n}`, n counting the
//! reads this instance has served, so a test can tell whether two
//! calls ran on one instance.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "storage-provider",
});

use exports::stategate::gateway::storage::{
    AppendRequest, Appended, EventPage, EventQuery, EventScan, FeedQuery, Guest, StatePage, StateQuery,
};
use stategate::gateway::host;
use stategate::gateway::types::{Event, ProviderError, RecordRef, State};
use std::sync::atomic::{AtomicU64, Ordering};

struct Stall;

/// `get` calls served by this instance.
static CALLS: AtomicU64 = AtomicU64::new(0);

fn stall() {
    let ms = host::config("sleep_ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_millis(ms));
    if let Some(path) = host::config("read") {
        let _ = std::fs::read(path);
    }
}

fn unavailable<T>() -> Result<T, ProviderError> {
    Err(ProviderError::Unavailable("stall-storage stores nothing".into()))
}

/// The answer of `get` and `get-at`: a key under `/data/` is held at the
/// gate (see above) first; values count this instance's calls.
fn gated_state(record: RecordRef) -> Result<Option<State>, ProviderError> {
    if record.key.starts_with("/data/") {
        let inside = format!("{}.in", record.key);
        std::fs::write(&inside, b"").map_err(|e| ProviderError::Unavailable(format!("{inside}: {e}")))?;
        let go = format!("{}.go", record.key);
        while !std::path::Path::new(&go).exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(Some(State { record, values: format!("{{\"calls\":{n}}}"), version: n }))
}

impl Guest for Stall {
    fn append(_req: AppendRequest) -> Result<Appended, ProviderError> {
        stall();
        unavailable()
    }
    fn get(record: RecordRef) -> Result<Option<State>, ProviderError> {
        stall();
        gated_state(record)
    }
    /// The host reads through `get-at` at the head (WIT 0.3.0); a store that
    /// holds nothing has the same answer at every position.
    fn get_at(record: RecordRef, _seq: u64) -> Result<Option<State>, ProviderError> {
        stall();
        gated_state(record)
    }
    fn search_states(_domain: String, _ty: String) -> Result<Vec<State>, ProviderError> {
        stall();
        unavailable()
    }
    fn search_events(_scan: EventScan) -> Result<Vec<Event>, ProviderError> {
        stall();
        unavailable()
    }
    fn query_states(_query: StateQuery) -> Result<StatePage, ProviderError> {
        stall();
        unavailable()
    }
    fn query_events(_query: EventQuery) -> Result<EventPage, ProviderError> {
        stall();
        unavailable()
    }
    fn query_states_at(_query: StateQuery, _seq: u64) -> Result<StatePage, ProviderError> {
        stall();
        unavailable()
    }
    fn get_event(_id: String) -> Result<Option<Event>, ProviderError> {
        stall();
        unavailable()
    }
    fn feed(_query: FeedQuery) -> Result<Vec<Event>, ProviderError> {
        stall();
        unavailable()
    }
    fn head() -> Result<u64, ProviderError> {
        stall();
        Ok(0)
    }
    fn ping() -> Result<(), ProviderError> {
        stall();
        Ok(())
    }
    fn max_instances() -> u32 {
        host::config("max_instances").and_then(|v| v.parse().ok()).unwrap_or(1)
    }
}

export!(Stall);

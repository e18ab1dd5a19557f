//! TEST ONLY: a storage provider whose every call first stalls in the host,
//! where no epoch deadline reaches it: it sleeps for config `sleep_ms`
//! milliseconds (default 0) with `std::thread::sleep` (blocked on a WASI
//! clock pollable), then, when config `read` names a file, reads it (a FIFO
//! without a writer blocks in the file system call itself). Then `ping`
//! succeeds, `head` answers 0, and everything else is `unavailable`. It
//! checks that a provider call's deadline covers the time a guest spends
//! blocked in the host.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "storage-provider",
});

use exports::stategate::gateway::storage::{AppendRequest, Appended, EventScan, FeedQuery, Guest};
use stategate::gateway::host;
use stategate::gateway::types::{Event, ProviderError, RecordRef, State};

struct Stall;

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

impl Guest for Stall {
    fn append(_req: AppendRequest) -> Result<Appended, ProviderError> {
        stall();
        unavailable()
    }
    fn get(_record: RecordRef) -> Result<Option<State>, ProviderError> {
        stall();
        unavailable()
    }
    fn search_states(_domain: String, _ty: String) -> Result<Vec<State>, ProviderError> {
        stall();
        unavailable()
    }
    fn search_events(_scan: EventScan) -> Result<Vec<Event>, ProviderError> {
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
}

export!(Stall);

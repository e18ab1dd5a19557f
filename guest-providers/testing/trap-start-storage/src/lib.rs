//! TEST ONLY: a storage provider that compiles and links against the
//! `storage-provider` world, so a hot swap to it is accepted as far as
//! loading goes, but whose `max-instances` (the call the host makes on a
//! fresh instance before any other) traps. No instance of it ever starts:
//! a host that swapped it in would fail every call after the swap. Every
//! other export fails as `unavailable`, so a call that reached one would
//! show too.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "storage-provider",
});

use exports::stategate::gateway::storage::{
    AppendRequest, Appended, EventPage, EventQuery, EventScan, FeedQuery, Guest, StatePage, StateQuery,
};
use stategate::gateway::types::{Event, ProviderError, RecordRef, State};

struct TrapStart;

fn unavailable<T>() -> Result<T, ProviderError> {
    Err(ProviderError::Unavailable("trap-start-storage never starts, this call should not have reached it".into()))
}

impl Guest for TrapStart {
    fn append(_req: AppendRequest) -> Result<Appended, ProviderError> {
        unavailable()
    }
    fn get(_record: RecordRef) -> Result<Option<State>, ProviderError> {
        unavailable()
    }
    fn search_states(_domain: String, _ty: String) -> Result<Vec<State>, ProviderError> {
        unavailable()
    }
    fn search_events(_scan: EventScan) -> Result<Vec<Event>, ProviderError> {
        unavailable()
    }
    fn query_states(_query: StateQuery) -> Result<StatePage, ProviderError> {
        unavailable()
    }
    fn query_events(_query: EventQuery) -> Result<EventPage, ProviderError> {
        unavailable()
    }
    fn get_at(_record: RecordRef, _seq: u64) -> Result<Option<State>, ProviderError> {
        unavailable()
    }
    fn query_states_at(_query: StateQuery, _seq: u64) -> Result<StatePage, ProviderError> {
        unavailable()
    }
    fn get_event(_id: String) -> Result<Option<Event>, ProviderError> {
        unavailable()
    }
    fn feed(_query: FeedQuery) -> Result<Vec<Event>, ProviderError> {
        unavailable()
    }
    fn head() -> Result<u64, ProviderError> {
        unavailable()
    }
    fn ping() -> Result<(), ProviderError> {
        unavailable()
    }
    fn max_instances() -> u32 {
        // panic = "abort": a trap (wasm `unreachable`).
        panic!("trap-start-storage traps on start")
    }
}

export!(TrapStart);

//! `Client::watch`: a local view of one domain and type, kept current.
//!
//! It reads a snapshot (`Search`, whose answer names the store position it
//! reflects, `StateValues.sequence`; further pages are read at that same
//! position, `as_of_sequence`, so they form one snapshot however many
//! writes land meanwhile), then streams every event after that position
//! (`StreamOpts.after_sequence`): the gateway delivers exactly the changes
//! the snapshot does not hold. Each is applied to the view as it is handed
//! to the caller. The stream resumes by itself after a disconnect from its
//! resume point and skips what it already delivered (`EventStream`), so
//! the view misses nothing and applies nothing twice.
//!
//! The view holds the whole type: a filtered watch cannot be built from a
//! filtered stream, which says nothing when a record stops matching.

use crate::{Client, Event, EventStream, Result, SearchStateOpts, State, StreamOpts};
use std::collections::BTreeMap;

/// States per page of the snapshot (the gateway may cap it lower; pages
/// are read until one comes back empty).
const PAGE: i64 = 1000;

/// A live view of one domain and type (see [`Client::watch`]).
pub struct Watch {
    view: BTreeMap<String, State>,
    snapshot_sequence: i64,
    stream: EventStream,
}

impl Watch {
    pub(crate) async fn open(client: &Client, domain: &str, ty: &str) -> Result<Watch> {
        let mut view = BTreeMap::new();
        let mut at = None;
        loop {
            let opts = SearchStateOpts {
                offset: view.len() as i64,
                as_of_sequence: at,
                ..SearchStateOpts::new(domain, ty, PAGE)
            };
            let page = client.state_service().search(opts).await?.into_inner();
            let seq = *at.get_or_insert(page.sequence);
            if page.state_values.is_empty() {
                let stream = client.stream(StreamOpts { after_sequence: Some(seq), ..StreamOpts::new(domain, ty) }).await?;
                return Ok(Watch { view, snapshot_sequence: seq, stream });
            }
            for state in page.state_values {
                view.insert(state.key.clone(), state);
            }
        }
    }

    /// The current view: key → state, as of the changes applied so far.
    pub fn view(&self) -> &BTreeMap<String, State> {
        &self.view
    }

    pub fn get(&self, key: &str) -> Option<&State> {
        self.view.get(key)
    }

    /// The store position the snapshot was read at.
    pub fn snapshot_sequence(&self) -> i64 {
        self.snapshot_sequence
    }

    /// Where the watch resumes after a disconnect (see
    /// [`EventStream::resume_sequence`]).
    pub fn resume_sequence(&self) -> i64 {
        self.stream.resume_sequence().max(self.snapshot_sequence)
    }

    /// How many times the stream reconnected.
    pub fn reconnects(&self) -> u64 {
        self.stream.reconnects()
    }

    /// Waits for the next change, applies it to the view and returns its
    /// event; `None` once the stream ended (after an error it returned).
    pub async fn next_change(&mut self) -> Option<Result<Event>> {
        let event = match self.stream.next_event().await? {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        if let Some(state) = &event.state {
            // One record's events come in version order; an older one
            // than the view holds would be a replay and changes nothing.
            let newer = self.view.get(&state.key).is_none_or(|s| s.version < event.version);
            if newer {
                match &state.values {
                    Some(_) => {
                        let state = State { version: event.version, ..state.clone() };
                        self.view.insert(state.key.clone(), state);
                    }
                    None => {
                        self.view.remove(&state.key);
                    }
                }
            }
        }
        Some(Ok(event))
    }
}

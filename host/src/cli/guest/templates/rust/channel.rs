//! A stategate channel provider (world `channel-provider`,
//! wit/channel.wit): the broadcast between gateway instances. The gateway
//! publishes every event to it and polls it from an opaque cursor every few
//! milliseconds, filtering by topic itself.
//!
//! This one keeps events in the instance's memory, so it serves one gateway
//! only: a starting point. A real channel talks to a broker through
//! `grants.net` (TCP) or `grants.http` (see guest-providers/mqtt-channel in
//! the stategate repository). Check it with `stategate guest check <file.wasm>`.

wit_bindgen::generate!({ path: "wit", world: "channel-provider" });

use exports::stategate::gateway::channel::{Batch, Guest};
use stategate::gateway::types::{Event, ProviderError};
use std::sync::Mutex;

/// The number of the first event held, and the events not yet polled past.
static LOG: Mutex<(u64, Vec<Event>)> = Mutex::new((0, Vec::new()));

fn cursor(n: u64) -> String {
    n.to_string()
}

struct Channel;

impl Guest for Channel {
    fn publish(event: Event) -> Result<(), ProviderError> {
        LOG.lock().unwrap().1.push(event);
        Ok(())
    }

    fn tail() -> Result<String, ProviderError> {
        let log = LOG.lock().unwrap();
        Ok(cursor(log.0 + log.1.len() as u64))
    }

    fn poll(from: String, max: u32) -> Result<Batch, ProviderError> {
        let from: u64 = from.parse().map_err(|_| ProviderError::Internal(format!("not a cursor: {from:?}")))?;
        let mut log = LOG.lock().unwrap();
        // Forget what the host has polled past (its cursor only moves forward).
        let done = from.saturating_sub(log.0).min(log.1.len() as u64) as usize;
        log.1.drain(..done);
        log.0 += done as u64;
        let events: Vec<Event> = log.1.iter().take(max as usize).cloned().collect();
        let next = log.0 + events.len() as u64;
        Ok(Batch { events, cursor: cursor(next) })
    }

    fn ping() -> Result<(), ProviderError> {
        Ok(())
    }

    /// One instance: the events live in its memory.
    fn max_instances() -> u32 {
        1
    }
}

export!(Channel);

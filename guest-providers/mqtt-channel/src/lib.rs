//! A stategate channel provider over an MQTT 3.1.1 broker (e.g. Mosquitto),
//! through wasi:sockets TCP to the address granted in `grants.net`:
//!
//! ```json
//! {"name": "wasm", "path": "mqtt_channel.wasm",
//!  "config": {"addr": "127.0.0.1:1883", "prefix": "stategate"},
//!  "grants": {"net": ["127.0.0.1:1883"]}}
//! ```
//!
//! Every event is published as JSON at QoS 1 to `<prefix>/events` (one
//! topic, so the broker keeps publish order; the host filters by domain and
//! type itself). Each instance holds one clean MQTT session subscribed to
//! that topic at QoS 1 and keeps what arrives in a bounded log that the
//! host polls (`log.rs`); the connection's lifecycle (keepalive, PUBACK,
//! reconnecting and subscribing again) is in `session.rs`, the packets in
//! `codec.rs`, the settings in `config.rs`.
//!
//! Delivery is what MQTT QoS 1 on a clean session gives: a publish returns
//! Ok once the broker acknowledged it; a message published while this
//! instance is disconnected from the broker does not reach it (the
//! gateway's storage sweep makes up for it, as for the core NATS and
//! Redis channels). The guest keeps its session in its instance, so it
//! asks for one instance (`max-instances` 1; do not override `instances`).

wit_bindgen::generate!({
    path: "../../wit",
    world: "channel-provider",
});

mod codec;
mod config;
mod log;
mod session;

use exports::stategate::gateway::channel::{Batch, Guest};
use serde::{Deserialize, Serialize};
use stategate::gateway::host;
use stategate::gateway::types::{Event, EventKind, ProviderError, RecordRef};
use std::hash::BuildHasher;
use std::sync::Mutex;

/// The instance's session, made by its first call.
static SESSION: Mutex<Option<session::Session>> = Mutex::new(None);

pub(crate) fn info(message: &str) {
    host::log(host::Level::Info, message);
}

pub(crate) fn warn(message: &str) {
    host::log(host::Level::Warn, message);
}

fn unavailable(why: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable(why.to_string())
}

/// Runs `f` on the instance's session, creating it (from the config) first.
fn with_session<T>(f: impl FnOnce(&mut session::Session) -> Result<T, ProviderError>) -> Result<T, ProviderError> {
    let mut guard = SESSION.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        let random = std::collections::hash_map::RandomState::new().hash_one(host::now_nanos());
        let (settings, buffer) = config::read(host::config, random).map_err(ProviderError::Internal)?;
        *guard = Some(session::Session::new(settings, log::Log::new(random, buffer.events, buffer.bytes)));
    }
    f(guard.as_mut().expect("made above"))
}

/// An event as published: JSON, the fields of the WIT `event`.
#[derive(Serialize, Deserialize)]
struct Wire {
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

fn to_wire(e: Event) -> Wire {
    Wire {
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
    }
}

fn from_wire(w: Wire) -> Result<Event, String> {
    let kind = match w.kind.as_str() {
        "SET" => EventKind::Set,
        "EDIT" => EventKind::Edit,
        "DEL" => EventKind::Del,
        "REVERT" => EventKind::Revert,
        other => return Err(format!("unknown event kind {other:?}")),
    };
    Ok(Event {
        id: w.id,
        seq: w.seq,
        record: RecordRef { domain: w.domain, ty: w.ty, key: w.key },
        values: w.values,
        claims: w.claims,
        time: w.time,
        version: w.version,
        kind,
        method: w.method,
    })
}

struct Channel;

impl Guest for Channel {
    fn publish(e: Event) -> Result<(), ProviderError> {
        let payload = serde_json::to_vec(&to_wire(e)).map_err(|e| ProviderError::Internal(e.to_string()))?;
        with_session(|s| {
            if payload.len() > s.settings.max_message {
                return Err(unavailable(format!(
                    "an event of {} bytes is over config.max_message_bytes ({})",
                    payload.len(),
                    s.settings.max_message
                )));
            }
            s.publish(payload).map_err(unavailable)
        })
    }

    /// Connects (and subscribes) first: events published after this call
    /// are received.
    fn tail() -> Result<String, ProviderError> {
        with_session(|s| {
            s.pump().map_err(unavailable)?;
            Ok(s.log.tail())
        })
    }

    fn poll(cursor: String, max: u32) -> Result<Batch, ProviderError> {
        with_session(|s| {
            // What arrived before a failure is still returned; the failure
            // shows on the next poll that has nothing else to return.
            let pumped = s.pump();
            let dropped = s.log.dropped;
            let (messages, cursor) = s.log.read(&cursor, max as usize).map_err(ProviderError::Internal)?;
            if messages.is_empty() {
                pumped.map_err(unavailable)?;
            }
            if s.log.dropped > dropped {
                warn(&format!("{} received messages were dropped: the host did not poll in time", s.log.dropped - dropped));
            }
            let mut events = Vec::with_capacity(messages.len());
            for m in messages {
                match serde_json::from_slice::<Wire>(&m).map_err(|e| e.to_string()).and_then(from_wire) {
                    Ok(e) => events.push(e),
                    Err(why) => warn(&format!("skipping a message on {} that is not a stategate event: {why}", s.settings.topic)),
                }
            }
            Ok(Batch { events, cursor })
        })
    }

    /// A PINGREQ/PINGRESP round trip to the broker (connecting first if
    /// needed), so readiness reflects the broker.
    fn ping() -> Result<(), ProviderError> {
        with_session(|s| s.ping().map_err(unavailable))
    }

    /// One instance: the session and its log live in it.
    fn max_instances() -> u32 {
        1
    }
}

export!(Channel);

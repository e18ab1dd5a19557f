//! The gateway's limits (`Limits`, from the configuration) and admission:
//! concurrent streams on this instance and of each client identity, and the
//! request rate of each client identity. All answer `RESOURCE_EXHAUSTED`
//! when exceeded, so a client can back off, and none grows without bound.
//!
//! A client identity is the token's `sub`, else the peer's IP address:
//! with a per-caller stream cap one tenant cannot take all of an
//! instance's streams (each costs a task and buffers) from the others.

use crate::auth::Metadata;
use crate::model::{Claims, Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `limit` a search may ask for; larger ones are capped.
    pub max_search_limit: usize,
    /// How long an idempotency key protects against a second write.
    pub idempotency_window: Duration,
    /// Messages buffered between a stream and its client.
    pub stream_buffer: usize,
    /// How long a broadcast may take before the write is acknowledged anyway
    /// (the hub's sweep delivers the event from storage).
    pub publish_timeout: Duration,
    /// Concurrent streams on this instance.
    pub max_streams: usize,
    /// Concurrent streams of one client identity; 0 is unlimited.
    pub max_streams_per_caller: usize,
    /// Requests per second per client identity (token `sub`, else peer
    /// address); 0 is unlimited.
    pub rate_limit: f64,
    pub rate_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_search_limit: 1000,
            idempotency_window: Duration::from_secs(24 * 3600),
            stream_buffer: 256,
            publish_timeout: Duration::from_secs(2),
            max_streams: 100_000,
            max_streams_per_caller: 1_000,
            rate_limit: 0.0,
            rate_burst: 0.0,
        }
    }
}

/// The header the server sets to the TCP peer of each request (any value a
/// client sends under that name is replaced).
pub const PEER_HEADER: &str = "x-stategate-peer";

/// Identities whose buckets are remembered; past this the fullest (least
/// recently limited) buckets are forgotten, which only ever forgives.
const MAX_IDENTITIES: usize = 100_000;

pub struct Admission {
    streams: Arc<Semaphore>,
    max_streams: usize,
    callers: Option<Arc<CallerStreams>>,
    rate: Option<RateLimiter>,
}

/// Open streams per client identity; an identity with none has no entry.
struct CallerStreams {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// A stream's places under `STATEGATE_MAX_STREAMS` and, for a caller's
/// stream, under `STATEGATE_MAX_STREAMS_PER_CALLER`; both are given back
/// when it drops.
pub struct StreamSlot {
    _instance: OwnedSemaphorePermit,
    _caller: Option<CallerSlot>,
}

struct CallerSlot {
    streams: Arc<CallerStreams>,
    identity: String,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        Admission {
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            max_streams: limits.max_streams,
            callers: (limits.max_streams_per_caller > 0).then(|| {
                Arc::new(CallerStreams {
                    max: limits.max_streams_per_caller,
                    open: Mutex::new(HashMap::new()),
                })
            }),
            rate: (limits.rate_limit > 0.0).then(|| RateLimiter {
                rate: limits.rate_limit,
                burst: limits.rate_burst.max(1.0),
                buckets: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A slot of the instance's streams, held for the stream's lifetime.
    pub fn stream_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "this gateway already serves {} streams (STATEGATE_MAX_STREAMS)",
                self.max_streams
            ))
        })
    }

    /// A slot for one of a caller's streams: of the instance's, and of the
    /// caller's own.
    pub fn caller_stream_slot(&self, claims: &Claims, metadata: &Metadata) -> Result<StreamSlot> {
        let caller = match &self.callers {
            None => None,
            Some(streams) => {
                let identity = identity(claims, metadata);
                let mut open = streams.open.lock().unwrap_or_else(|p| p.into_inner());
                let n = open.entry(identity.clone()).or_insert(0);
                if *n >= streams.max {
                    return Err(Error::ResourceExhausted(format!(
                        "this caller already has {} streams open on this gateway (STATEGATE_MAX_STREAMS_PER_CALLER)",
                        streams.max
                    )));
                }
                *n += 1;
                Some(CallerSlot {
                    streams: streams.clone(),
                    identity,
                })
            }
        };
        // Taken second: if the instance is full, the caller's place goes
        // back as `caller` drops.
        Ok(StreamSlot {
            _instance: self.stream_slot()?,
            _caller: caller,
        })
    }

    /// Counts one request against the caller's rate.
    pub fn check_rate(&self, claims: &Claims, metadata: &Metadata) -> Result<()> {
        let Some(rate) = &self.rate else { return Ok(()) };
        rate.take(&identity(claims, metadata))
    }
}

/// Who a caller is for its limits: the token's subject, else the peer host.
fn identity(claims: &Claims, metadata: &Metadata) -> String {
    match claims.get("sub").and_then(|s| s.as_str()) {
        Some(sub) => format!("sub:{sub}"),
        None => format!("peer:{}", peer_host(metadata)),
    }
}

/// The peer's IP without its port: one client opening many connections is
/// still one identity.
fn peer_host(metadata: &Metadata) -> &str {
    let peer = metadata.get(PEER_HEADER).map(String::as_str).unwrap_or("unknown");
    peer.rsplit_once(':').map_or(peer, |(host, _)| host)
}

struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    fn take(&self, identity: &str) -> Result<()> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_IDENTITIES && !buckets.contains_key(identity) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(identity.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Error::ResourceExhausted(format!(
                "rate limit of {} requests per second exceeded (STATEGATE_RATE_LIMIT)",
                self.rate
            )));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refuses() {
        let a = Admission::new(&Limits {
            max_streams: 2,
            rate_limit: 0.001,
            rate_burst: 3.0,
            ..Limits::default()
        });
        let claims = Claims::new();
        let mut md = Metadata::new();
        md.insert(PEER_HEADER.into(), "10.0.0.1:5000".into());
        for _ in 0..3 {
            a.check_rate(&claims, &md).unwrap();
        }
        assert!(matches!(a.check_rate(&claims, &md), Err(Error::ResourceExhausted(_))));
        // Another connection of the same host is the same identity.
        md.insert(PEER_HEADER.into(), "10.0.0.1:6000".into());
        assert!(a.check_rate(&claims, &md).is_err());
        // Another subject is not.
        let mut other = Claims::new();
        other.insert("sub".into(), "bob".into());
        a.check_rate(&other, &md).unwrap();
    }

    #[test]
    fn stream_slots_are_bounded_and_returned() {
        let a = Admission::new(&Limits {
            max_streams: 2,
            ..Limits::default()
        });
        let s1 = a.stream_slot().unwrap();
        let _s2 = a.stream_slot().unwrap();
        assert!(matches!(a.stream_slot(), Err(Error::ResourceExhausted(_))));
        drop(s1);
        let _s3 = a.stream_slot().unwrap();
    }

    #[test]
    fn a_caller_has_its_own_share_of_the_streams() {
        let a = Admission::new(&Limits {
            max_streams: 10,
            max_streams_per_caller: 2,
            ..Limits::default()
        });
        let md = Metadata::new();
        let claims = |sub: &str| {
            let mut c = Claims::new();
            c.insert("sub".into(), sub.into());
            c
        };
        let first = a.caller_stream_slot(&claims("alice"), &md).unwrap();
        let _second = a.caller_stream_slot(&claims("alice"), &md).unwrap();
        let refused = a.caller_stream_slot(&claims("alice"), &md).err().expect("a third is refused");
        assert!(refused.to_string().contains("STATEGATE_MAX_STREAMS_PER_CALLER"), "{refused}");
        let _bob = a.caller_stream_slot(&claims("bob"), &md).expect("another caller is not");
        drop(first);
        let _again = a.caller_stream_slot(&claims("alice"), &md).expect("a closed stream gives its place back");
        assert_eq!(a.callers.as_ref().unwrap().open.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_caller_refused_by_the_instance_keeps_no_place() {
        let a = Admission::new(&Limits {
            max_streams: 1,
            max_streams_per_caller: 5,
            ..Limits::default()
        });
        let md = Metadata::new();
        let _held = a.caller_stream_slot(&Claims::new(), &md).unwrap();
        assert!(a.caller_stream_slot(&Claims::new(), &md).is_err());
        assert_eq!(a.callers.as_ref().unwrap().open.lock().unwrap().values().sum::<usize>(), 1);
    }
}

//! The gateway's limits (`Limits`, from the configuration) and admission:
//! concurrent streams on this instance and the request rate
//! of each client identity. Both answer `RESOURCE_EXHAUSTED` when exceeded,
//! so a client can back off, and neither grows without bound.

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
    rate: Option<RateLimiter>,
}

impl Admission {
    /// `rate_per_sec` 0 disables rate limiting.
    pub fn new(max_streams: usize, rate_per_sec: f64, burst: f64) -> Self {
        Admission {
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            rate: (rate_per_sec > 0.0).then(|| RateLimiter {
                rate: rate_per_sec,
                burst: burst.max(1.0),
                buckets: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A slot for one stream, held for the stream's lifetime.
    pub fn stream_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "this gateway already serves {} streams (STATEGATE_MAX_STREAMS)",
                self.max_streams
            ))
        })
    }

    /// Counts one request against the caller's rate.
    pub fn check_rate(&self, claims: &Claims, metadata: &Metadata) -> Result<()> {
        let Some(rate) = &self.rate else { return Ok(()) };
        let identity = match claims.get("sub").and_then(|s| s.as_str()) {
            Some(sub) => format!("sub:{sub}"),
            None => format!("peer:{}", peer_host(metadata)),
        };
        rate.take(&identity)
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
        let a = Admission::new(2, 0.001, 3.0);
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
        let a = Admission::new(2, 0.0, 0.0);
        let s1 = a.stream_slot().unwrap();
        let _s2 = a.stream_slot().unwrap();
        assert!(matches!(a.stream_slot(), Err(Error::ResourceExhausted(_))));
        drop(s1);
        let _s3 = a.stream_slot().unwrap();
    }
}

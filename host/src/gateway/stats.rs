//! A snapshot of this instance (`GET /api/stats`, the console's overview
//! and charts) and the readiness of its providers (also `/readyz`).
//!
//! Invariants:
//! - Every number is read from the gateway's Prometheus registry (the
//!   collectors of `telemetry::Metrics`), so the snapshot and `/metrics`
//!   never disagree and nothing is counted twice.
//! - The call is admitted like every other (token, then the request policy
//!   with its own method name, `STATS`, and the default tenant hook: it
//!   names no domain). It holds no record or event, only counts of calls by
//!   method, so no response policy runs on it.
//! - Counters are cumulative since the process started; a client that wants
//!   rates (events per second, a recent p99) takes the difference of two
//!   snapshots (the histogram buckets are included for that).

use super::Gateway;
use crate::auth::Metadata;
use crate::model::Result;
use futures::future::BoxFuture;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The method name the request policy sees for a stats call.
pub const STATS: &str = "/stategate.AdminService/Stats";

/// How long a provider may take to answer a readiness ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the storage and channel providers answer.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub storage: ProviderHealth,
    pub channel: ProviderHealth,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderHealth {
    pub provider: String,
    pub ready: bool,
    /// Why it is not ready (the provider's error, which may name a
    /// backend's address).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// When the snapshot was taken, Unix nanoseconds (a string, as the
    /// API writes every 64-bit number that may pass 2^53).
    pub time: String,
    pub storage: ProviderHealth,
    pub channel: ProviderHealth,
    pub streams: Streams,
    pub events_appended: EventsAppended,
    /// Every method called since start, in name order.
    pub methods: Vec<MethodStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Streams {
    /// Event streams open on this instance.
    pub live: i64,
    /// Topics (domain/type pairs) those streams watch.
    pub topics: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EventsAppended {
    pub total: u64,
    /// By event kind (SET, EDIT, REVERT, DEL).
    pub by_kind: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MethodStats {
    pub method: String,
    pub requests: u64,
    /// Calls whose code was not OK.
    pub errors: u64,
    /// Calls by gRPC code name.
    pub codes: BTreeMap<String, u64>,
    pub latency: Latency,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub sum_seconds: f64,
    /// The 99th percentile since start, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; `None` before the first call.
    pub p99_seconds: Option<f64>,
    /// Cumulative `[upper bound in seconds, count]` pairs (the last bound is
    /// infinite, written as `null`).
    pub buckets: Vec<(Option<f64>, u64)>,
}

impl Gateway {
    /// Pings storage and channel, each bounded by a timeout.
    pub async fn readiness(&self) -> Readiness {
        let storage = self.storage.clone();
        let channel = self.channel.clone();
        let (storage, channel) = tokio::join!(
            ping(storage.name().to_owned(), Box::pin(async move { storage.ping().await })),
            ping(channel.name().to_owned(), Box::pin(async move { channel.ping().await })),
        );
        Readiness {
            ready: storage.ready && channel.ready,
            storage,
            channel,
        }
    }

    /// The snapshot described in the module doc, for an admitted caller.
    pub async fn stats(&self, metadata: Metadata) -> Result<Stats> {
        let caller = self.authenticate(STATS, metadata, &serde_json::json!({}), false).await?;
        self.authorize(caller, None).await?;
        let Readiness { storage, channel, .. } = self.readiness().await;
        Ok(Stats {
            time: crate::model::now_nanos().to_string(),
            storage,
            channel,
            streams: Streams {
                live: self.metrics.live_streams.get(),
                topics: self.active_topics().await,
            },
            events_appended: events_appended(&self.metrics.events_appended.collect()),
            methods: methods(&self.metrics.requests.collect(), &self.metrics.request_seconds.collect()),
        })
    }
}

async fn ping(provider: String, call: BoxFuture<'static, Result<()>>) -> ProviderHealth {
    let error = match tokio::time::timeout(PING_TIMEOUT, call).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {PING_TIMEOUT:?}")),
    };
    ProviderHealth {
        provider,
        ready: error.is_none(),
        error,
    }
}

/// The value of label `name` on a sample.
fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label().iter().find(|l| l.name() == name).map_or("", |l| l.value())
}

fn events_appended(families: &[MetricFamily]) -> EventsAppended {
    let mut out = EventsAppended::default();
    for m in families.iter().flat_map(|f| f.get_metric()) {
        let n = m.get_counter().value() as u64;
        out.total += n;
        *out.by_kind.entry(label(m, "kind").to_owned()).or_default() += n;
    }
    out
}

fn methods(requests: &[MetricFamily], latency: &[MetricFamily]) -> Vec<MethodStats> {
    let mut by_method: BTreeMap<String, MethodStats> = BTreeMap::new();
    for m in requests.iter().flat_map(|f| f.get_metric()) {
        let stats = by_method.entry(label(m, "method").to_owned()).or_default();
        let n = m.get_counter().value() as u64;
        let code = label(m, "code");
        stats.requests += n;
        if code != "OK" {
            stats.errors += n;
        }
        *stats.codes.entry(code.to_owned()).or_default() += n;
    }
    for m in latency.iter().flat_map(|f| f.get_metric()) {
        let h = m.get_histogram();
        let mut buckets: Vec<(Option<f64>, u64)> = h
            .get_bucket()
            .iter()
            .map(|b| (Some(b.upper_bound()), b.cumulative_count()))
            .collect();
        buckets.push((None, h.get_sample_count()));
        by_method.entry(label(m, "method").to_owned()).or_default().latency = Latency {
            count: h.get_sample_count(),
            sum_seconds: h.get_sample_sum(),
            p99_seconds: quantile(0.99, &buckets),
            buckets,
        };
    }
    by_method
        .into_iter()
        .map(|(method, stats)| MethodStats { method, ..stats })
        .collect()
}

/// The `q` quantile of cumulative buckets (the last one infinite), by
/// linear interpolation within the bucket the rank falls in; a rank in the
/// infinite bucket answers the largest finite bound.
fn quantile(q: f64, buckets: &[(Option<f64>, u64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, count) in buckets {
        let Some(upper) = bound else { return Some(lower) };
        if count as f64 >= rank {
            let inside = (count - below) as f64;
            let fraction = if inside > 0.0 { (rank - below as f64) / inside } else { 1.0 };
            return Some(lower + (upper - lower) * fraction);
        }
        (lower, below) = (upper, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metrics;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        assert_eq!(quantile(0.99, &[(Some(1.0), 0), (None, 0)]), None);
        // 100 calls, all in (0, 1]: p99 is 0.99 of the way up.
        let p = quantile(0.99, &[(Some(1.0), 100), (Some(2.0), 100), (None, 100)]).unwrap();
        assert!((p - 0.99).abs() < 1e-9, "{p}");
        // 90 fast, 10 in (1, 2]: rank 99 is the 9th of 10 in the second bucket.
        let p = quantile(0.99, &[(Some(1.0), 90), (Some(2.0), 100), (None, 100)]).unwrap();
        assert!((p - 1.9).abs() < 1e-9, "{p}");
        // Beyond the last finite bound: that bound.
        assert_eq!(quantile(0.99, &[(Some(1.0), 1), (None, 100)]), Some(1.0));
    }

    #[test]
    fn counts_come_from_the_registry() {
        let m = Metrics::new();
        m.requests.with_label_values(&["/s/Set", "OK"]).inc_by(3);
        m.requests.with_label_values(&["/s/Set", "ABORTED"]).inc();
        m.requests.with_label_values(&["/s/Get", "NOT_FOUND"]).inc();
        for _ in 0..4 {
            m.request_seconds.with_label_values(&["/s/Set"]).observe(0.003);
        }
        m.events_appended.with_label_values(&["SET"]).inc_by(2);
        m.events_appended.with_label_values(&["DEL"]).inc();
        let e = events_appended(&m.events_appended.collect());
        assert_eq!((e.total, e.by_kind["SET"], e.by_kind["DEL"]), (3, 2, 1));
        let all = methods(&m.requests.collect(), &m.request_seconds.collect());
        assert_eq!(all.iter().map(|s| s.method.as_str()).collect::<Vec<_>>(), ["/s/Get", "/s/Set"]);
        let set = &all[1];
        assert_eq!((set.requests, set.errors, set.codes["OK"], set.codes["ABORTED"]), (4, 1, 3, 1));
        assert_eq!(set.latency.count, 4);
        let p99 = set.latency.p99_seconds.unwrap();
        assert!(p99 > 0.0025 && p99 <= 0.005, "{p99}");
        assert_eq!(set.latency.buckets.last(), Some(&(None, 4)));
        assert_eq!((all[0].errors, all[0].latency.count, all[0].latency.p99_seconds), (1, 0, None));
    }
}

//! Logs and metrics.
//!
//! Logs go through `tracing` to stderr: readable text on a terminal, JSON
//! lines otherwise (`STATEGATE_LOG_FORMAT` chooses; debug level with
//! `STATEGATE_DEBUG`), with what would steer a terminal written out
//! (`logs`). Metrics live in one Prometheus registry per gateway,
//! so tests can run several gateways in one process; `/metrics` on the ops
//! port serves it.

mod logs;
mod resolved;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
pub use logs::init_logging;
pub use resolved::{Resolved, Series};
use std::time::Duration;

pub struct Metrics {
    pub registry: Registry,
    /// Calls by method and outcome code (gRPC code name).
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub events_appended: IntCounterVec,
    pub live_streams: IntGauge,
    /// Storage and channel calls by provider and operation.
    pub provider_seconds: HistogramVec,
    pub provider_errors: IntCounterVec,
    pub publish_failures: IntCounter,
    pub hub_duplicates: IntCounter,
    pub hub_gap_fills: IntCounter,
    pub hub_sweep_deliveries: IntCounter,
    pub hub_sweeps: IntCounter,
    pub hub_topics: IntGauge,
    /// Distinct filters of this instance's filtered streams.
    pub hub_filters: IntGauge,
    /// Runs of a stream filter's matcher (once per event per distinct
    /// filter, not per stream).
    pub stream_filter_evaluations: IntCounter,
    pub stream_catchups: IntCounter,
    pub auth_failures: IntCounterVec,
    pub policy_denials: IntCounterVec,
    pub policy_decisions: IntCounterVec,
    /// Policy file reloads by stage and result (loaded, refused).
    pub policy_reloads: IntCounterVec,
    /// The values `Get` answered with as stored text, by where their
    /// encoding came from: `memo` (a text answered lately,
    /// `api::body_memo`) or `transcoded`.
    pub get_value_encodings: IntCounterVec,
    /// Bytes held by the memo of `Get`'s encoded values.
    pub get_memo_bytes: IntGauge,
    /// The series every call touches, resolved once per label (`resolved`):
    /// `request_duration_seconds` and `requests_total{code="OK"}` by method,
    /// `events_appended_total` by kind.
    call_seconds: Resolved<Histogram>,
    ok_calls: Resolved<IntCounter>,
    appended_by_kind: Resolved<IntCounter>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("stategate".into()), None).expect("static prefix is valid");
        let latency = vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        let m = Metrics {
            requests: IntCounterVec::new(Opts::new("requests_total", "Calls by method and status code"), &["method", "code"]).unwrap(),
            request_seconds: HistogramVec::new(
                HistogramOpts::new("request_duration_seconds", "Call latency by method").buckets(latency.clone()),
                &["method"],
            )
            .unwrap(),
            events_appended: IntCounterVec::new(Opts::new("events_appended_total", "Events appended by kind"), &["kind"]).unwrap(),
            live_streams: IntGauge::new("live_streams", "Event streams open on this instance").unwrap(),
            provider_seconds: HistogramVec::new(
                HistogramOpts::new("provider_call_duration_seconds", "Storage and channel call latency").buckets(latency),
                &["provider", "op"],
            )
            .unwrap(),
            provider_errors: IntCounterVec::new(
                Opts::new("provider_errors_total", "Failed storage and channel calls"),
                &["provider", "op"],
            )
            .unwrap(),
            publish_failures: IntCounter::new(
                "publish_failures_total",
                "Events committed but not broadcast (delivered later from storage)",
            )
            .unwrap(),
            hub_duplicates: IntCounter::new("hub_duplicates_total", "Duplicate events dropped by the hub").unwrap(),
            hub_gap_fills: IntCounter::new("hub_gap_fills_total", "Out-of-order events filled from storage").unwrap(),
            hub_topics: IntGauge::new("hub_topics", "Topics the streams of this instance watch").unwrap(),
            hub_sweeps: IntCounter::new("hub_sweeps_total", "Storage sweeps run by the hub (one feed for all topics)").unwrap(),
            hub_sweep_deliveries: IntCounter::new(
                "hub_sweep_deliveries_total",
                "Events the channel lost, delivered from storage by the sweep",
            )
            .unwrap(),
            hub_filters: IntGauge::new("hub_filters", "Distinct filters of the filtered streams of this instance").unwrap(),
            stream_filter_evaluations: IntCounter::new(
                "stream_filter_evaluations_total",
                "Stream filter evaluations (one per event per distinct filter, shared by its streams)",
            )
            .unwrap(),
            stream_catchups: IntCounter::new("stream_catchups_total", "Streams that fell behind and caught up from storage").unwrap(),
            auth_failures: IntCounterVec::new(
                Opts::new("auth_failures_total", "Refused credentials by reason and method"),
                &["reason", "method"],
            )
            .unwrap(),
            policy_decisions: IntCounterVec::new(
                Opts::new("policy_decisions_total", "Rego policy decisions by stage and source (evaluated, cached)"),
                &["stage", "source"],
            )
            .unwrap(),
            policy_denials: IntCounterVec::new(
                Opts::new("policy_denials_total", "Policy denials by stage, reason and method"),
                &["stage", "reason", "method"],
            )
            .unwrap(),
            policy_reloads: IntCounterVec::new(
                Opts::new("policy_reloads_total", "Policy file reloads by stage and result (loaded, refused)"),
                &["stage", "result"],
            )
            .unwrap(),
            get_value_encodings: IntCounterVec::new(
                Opts::new("get_value_encodings_total", "Get answers' stored values by encoding source (memo, transcoded)"),
                &["source"],
            )
            .unwrap(),
            get_memo_bytes: IntGauge::new("get_memo_bytes", "Bytes held by the memo of Get's encoded values").unwrap(),
            call_seconds: Resolved::new(),
            ok_calls: Resolved::new(),
            appended_by_kind: Resolved::new(),
            registry,
        };
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.request_seconds.clone()),
            Box::new(m.events_appended.clone()),
            Box::new(m.live_streams.clone()),
            Box::new(m.provider_seconds.clone()),
            Box::new(m.provider_errors.clone()),
            Box::new(m.publish_failures.clone()),
            Box::new(m.hub_duplicates.clone()),
            Box::new(m.hub_gap_fills.clone()),
            Box::new(m.hub_sweep_deliveries.clone()),
            Box::new(m.hub_sweeps.clone()),
            Box::new(m.hub_topics.clone()),
            Box::new(m.hub_filters.clone()),
            Box::new(m.stream_filter_evaluations.clone()),
            Box::new(m.stream_catchups.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.policy_denials.clone()),
            Box::new(m.policy_decisions.clone()),
            Box::new(m.policy_reloads.clone()),
            Box::new(m.get_value_encodings.clone()),
            Box::new(m.get_memo_bytes.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Counts a finished call of `method` in `requests_total` under its
    /// gRPC code name, and its latency. An `OK` series is made on a
    /// method's first success, not before: a method that never succeeded
    /// shows no `OK` count, as with a plain labelled lookup.
    pub fn call_ended(&self, method: &'static str, code: &'static str, took: Duration) {
        if code == "OK" {
            self.ok_calls.get(method, || self.requests.with_label_values(&[method, code])).inc();
        } else {
            self.requests.with_label_values(&[method, code]).inc();
        }
        let seconds = self.call_seconds.get(method, || self.request_seconds.with_label_values(&[method]));
        seconds.observe(took.as_secs_f64());
    }

    /// Counts an appended event of `kind` (`EventKind::as_str`).
    pub fn appended(&self, kind: &'static str) {
        self.appended_by_kind.get(kind, || self.events_appended.with_label_values(&[kind])).inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// One provider's `provider_call_duration_seconds` by operation, each
/// series resolved once (`resolved`); the provider's name is fixed for its
/// life.
pub struct ProviderCalls {
    provider: String,
    seconds: Resolved<Histogram>,
}

impl ProviderCalls {
    pub fn new(provider: &str) -> Self {
        ProviderCalls { provider: provider.to_owned(), seconds: Resolved::new() }
    }

    /// Times a call of `op` (and counts it in `provider_errors_total` when
    /// it failed).
    pub fn ended(&self, metrics: &Metrics, op: &'static str, took: Duration, failed: bool) {
        let seconds = self.seconds.get(op, || metrics.provider_seconds.with_label_values(&[&self.provider, op]));
        seconds.observe(took.as_secs_f64());
        if failed {
            metrics.provider_errors.with_label_values(&[&self.provider, op]).inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

//! The `fanout` scenario: one writer at a fixed rate and N `Stream`
//! subscribers of its topic, on the gateway and on the bare server; and the
//! fan-out measurement the cross-instance scenarios reuse.

use crate::bench::Bench;
use crate::load::{Clients, connect, open_filtered_streams};
use crate::measure::{Measured, anon_rss_mib, histogram, now_us, process_cpu_secs, reset_peak, rss_mib};
use crate::report::Row;
use crate::requests::{DOMAIN, GROUPS, values_1k};
use anyhow::Result;
use prost_types::value::Kind;
use stategate::proto as pb;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

impl Bench {
    pub(super) async fn fanout_all(&mut self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for &subs in &self.args.subscribers.clone() {
            let rate = (self.args.fanout_deliveries / subs as f64).max(1.0);
            reset_peak();
            let g = self.fanout(self.gateway_addr, self.gateway_addr, subs, rate, 0).await?;
            let (peak, anon) = (rss_mib().1, anon_rss_mib());
            let b = self.fanout(self.bare_addr, self.bare_addr, subs, rate, 0).await?;
            let target = (subs >= 1000).then_some(50.0);
            rows.push(Row {
                scenario: "fanout".into(),
                clients: Some(subs),
                target: target.map(|t| format!("p99 < {t} ms")),
                meets_target: target.map(|t| g.p(0.99) < t && g.errors == 0),
                peak_rss_mib: Some(peak),
                anon_rss_mib: Some(anon),
                errors: g.errors,
                note: format!(
                    "{rate:.0} writes/s x {subs} subscribers; ops/s = delivered events/s; latency = from when the write was due (its tick of the fixed rate: no coordinated omission) to delivery; \
                     the writer's Set calls took p50 {} / p99 {} ms (bare: {} / {}); CPU µs/op = per delivery{}",
                    g.write_p(0.5), g.write_p(0.99), b.write_p(0.5), b.write_p(0.99),
                    g.first_error.as_ref().map(|e| format!("; {e}")).unwrap_or_default()
                ),
                ..Row::compared(&g, &b)
            });
        }
        rows.push(self.filtered_fanout().await?);
        Ok(rows)
    }

    /// 1,000 subscribers over 10 distinct filters (`group` = one of the 10
    /// values the writes cycle through: each write reaches 100 of them)
    /// against 1,000 unfiltered subscribers, at the same deliveries per
    /// second: the filtered row's CPU per delivery shows what filtering
    /// costs when each distinct filter is evaluated once per event.
    async fn filtered_fanout(&self) -> Result<Row> {
        let (subs, filters) = (1000, GROUPS);
        let deliveries = self.args.fanout_deliveries;
        let plain = self.fanout(self.gateway_addr, self.gateway_addr, subs, (deliveries / subs as f64).max(1.0), 0).await?;
        let rate = (deliveries / (subs / filters) as f64).max(1.0);
        let f = self.fanout(self.gateway_addr, self.gateway_addr, subs, rate, filters).await?;
        Ok(Row {
            scenario: "fanout-filtered".into(),
            clients: Some(subs),
            ratio: Some(f.cpu_us_per_op() / plain.cpu_us_per_op()),
            errors: f.errors + plain.errors,
            note: format!(
                "{subs} subscribers over {filters} distinct query_string filters, {rate:.0} writes/s (each reaching {} subscribers); \
                 \"ceiling\" = {subs} unfiltered subscribers at the same deliveries/s on the same gateway; ratio = CPU per delivery \
                 filtered / unfiltered (1: filtering costs nothing per delivery){}",
                subs / filters,
                f.first_error.as_ref().or(plain.first_error.as_ref()).map(|e| format!("; {e}")).unwrap_or_default()
            ),
            ..Row::compared(&f, &plain)
        })
    }

    /// Opens `subs` streams of one topic, writes at `rate`/s for the
    /// warm-up and the measured time, and measures the latency of each
    /// delivery of a write made after the warm-up, from the start of its
    /// write call. `errors` counts events not delivered.
    /// The writer writes to `addr`, the subscribers read from `sub_addr`.
    /// With `filters` > 0, stream `i` admits only `group` = `g{i % filters}`.
    pub(super) async fn fanout(&self, addr: SocketAddr, sub_addr: SocketAddr, subs: usize, rate: f64, filters: usize) -> Result<Measured> {
        let ty = format!("fan{}", uuid::Uuid::new_v4().simple());
        let streams = open_filtered_streams(sub_addr, subs, &ty, filters).await?;
        let epoch = self.epoch;
        let delivered = Arc::new(AtomicU64::new(0));
        // Writes sent before this (µs since the epoch) are the warm-up: they
        // are delivered and counted, but their latency is not recorded.
        let measure_from = Arc::new(AtomicU64::new(u64::MAX));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let delivered = delivered.clone();
                let measure_from = measure_from.clone();
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    let mut hist = histogram();
                    let mut err = None;
                    loop {
                        let msg = tokio::select! {
                            m = s.message() => m,
                            _ = stop.changed() => break,
                        };
                        match msg {
                            Ok(Some(ev)) => {
                                let now = now_us(epoch);
                                let sent = ev
                                    .state
                                    .and_then(|st| st.values)
                                    .and_then(|v| v.fields.get("sent_us").cloned())
                                    .and_then(|v| match v.kind {
                                        Some(Kind::NumberValue(n)) => Some(n),
                                        _ => None,
                                    });
                                if let Some(sent) = sent {
                                    if sent >= measure_from.load(Ordering::Relaxed) as f64 {
                                        let _ = hist.record((now - sent).max(1.0) as u64);
                                    }
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                if e.code() != tonic::Code::Cancelled {
                                    err = Some(format!("{:?}: {}", e.code(), e.message()));
                                }
                                break;
                            }
                        }
                    }
                    (hist, err)
                })
            })
            .collect();

        if sub_addr != addr {
            // Another instance: let its channel subscription settle.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The writer: open loop at `rate`, one call in flight at a time at most
        // per tick. Latencies count from when a write was due (its tick), not
        // from when it went out: a slow write delays the next one, and that
        // wait is latency too (no coordinated omission).
        let mut writer = Clients::new(connect(addr).await?);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let t0 = Instant::now();
        let measured_from = now_us(epoch) + self.args.warmup * 1e6;
        measure_from.store(measured_from as u64, Ordering::Relaxed);
        let cpu_start = process_cpu_secs();
        let end = t0 + Duration::from_secs_f64(self.args.secs + self.args.warmup);
        let mut writes = 0u64;
        let mut write_errors = 0u64;
        let mut write_hist = histogram();
        let mut expected = 0u64;
        while Instant::now() < end {
            let due = tick.tick().await;
            let sent = due.into_std().saturating_duration_since(epoch).as_micros() as f64;
            let r = writer
                .state
                .set(pb::State {
                    domain: DOMAIN.into(),
                    r#type: ty.clone(),
                    key: format!("k{}", writes % 64),
                    values: Some(values_1k(writes, &[("sent_us", sent)])),
                    ..Default::default()
                })
                .await;
            // The same warm-up rule as the deliveries', on the same clock.
            if sent >= measured_from {
                let _ = write_hist.record((now_us(epoch) - sent).max(1.0) as u64);
            }
            if r.is_err() {
                write_errors += 1;
            } else {
                // The subscribers this write's group reaches.
                let group = (writes % GROUPS as u64) as usize;
                expected += if filters == 0 { subs } else { (0..subs).filter(|i| i % filters == group).count() } as u64;
            }
            writes += 1;
        }
        let drain_until = Instant::now() + Duration::from_secs(10);
        while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu_secs = process_cpu_secs() - cpu_start;
        let _ = stop_tx.send(true);
        let mut m = Measured { ops: 0, errors: 0, secs, hist: histogram(), first_error: None, cpu_secs, writes: Some(write_hist) };
        for t in tasks {
            if let Ok((h, err)) = t.await {
                m.hist.add(&h)?;
                if m.first_error.is_none() {
                    m.first_error = err;
                }
            }
        }
        let got = delivered.load(Ordering::Relaxed);
        m.ops = got;
        m.errors = expected.saturating_sub(got) + write_errors;
        if write_errors > 0 {
            m.first_error.get_or_insert(format!("{write_errors} writes failed"));
        }
        Ok(m)
    }
}

//! Soak mode (`--soak`, not part of the default run): steady writes and
//! streams for a while, RSS sampled every 10 s, least-squares slope.

use crate::bench::Bench;
use crate::load::{Clients, connect, open_streams};
use crate::measure::rss_mib;
use crate::requests::{DOMAIN, values_1k};
use anyhow::Result;
use stategate::proto as pb;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

impl Bench {

    /// Steady writes and streams; RSS every 10 s; least-squares slope.
    pub async fn soak(&mut self, duration: Duration) -> Result<serde_json::Value> {
        let subs = 100;
        let rate = 200.0;
        let streams = open_streams(self.gateway_addr, subs, "soak").await?;
        let delivered = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let d = delivered.clone();
                tokio::spawn(async move {
                    while let Ok(Some(_)) = s.message().await {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut writer = Clients::new(connect(self.gateway_addr).await?);
        let t0 = Instant::now();
        let mut samples: Vec<(f64, f64)> = vec![(0.0, rss_mib().0)];
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut next_sample = t0 + Duration::from_secs(10);
        let (mut writes, mut errors) = (0u64, 0u64);
        eprintln!("soak: {subs} streams, {rate} writes/s (1 KiB, 10k keys) for {duration:?}");
        while t0.elapsed() < duration {
            tick.tick().await;
            let r = writer
                .state
                .set(pb::State {
                    domain: DOMAIN.into(),
                    r#type: "soak".into(),
                    key: format!("k{}", writes % 10_000),
                    values: Some(values_1k(writes, &[])),
                    ..Default::default()
                })
                .await;
            writes += 1;
            errors += r.is_err() as u64;
            if Instant::now() >= next_sample {
                let s = (t0.elapsed().as_secs_f64(), rss_mib().0);
                eprintln!("   t={:>5.0}s rss={:.1} MiB writes={writes} delivered={}", s.0, s.1, delivered.load(Ordering::Relaxed));
                samples.push(s);
                next_sample += Duration::from_secs(10);
            }
        }
        for r in readers {
            r.abort();
        }
        // Slope over the second half (after warm-up growth), MiB per minute.
        let half: Vec<_> = samples.iter().filter(|(t, _)| *t >= duration.as_secs_f64() / 2.0).copied().collect();
        let slope = |pts: &[(f64, f64)]| {
            let n = pts.len() as f64;
            if n < 2.0 {
                return f64::NAN;
            }
            let (mt, mr) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
            let num: f64 = pts.iter().map(|(t, r)| (t - mt) * (r - mr)).sum();
            let den: f64 = pts.iter().map(|(t, _)| (t - mt).powi(2)).sum();
            num / den * 60.0
        };
        let (all, second) = (slope(&samples), slope(&half));
        eprintln!("soak: RSS slope {all:.3} MiB/min overall, {second:.3} MiB/min over the second half; {writes} writes, {errors} failed, {} delivered", delivered.load(Ordering::Relaxed));
        Ok(serde_json::json!({
            "duration_secs": duration.as_secs_f64(), "subscribers": subs, "writes_per_sec": rate,
            "writes": writes, "write_errors": errors, "delivered": delivered.load(Ordering::Relaxed),
            "rss_samples_mib": samples, "slope_mib_per_min": all, "slope_second_half_mib_per_min": second,
        }))
    }
}

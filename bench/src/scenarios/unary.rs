//! The unary scenarios (`set`, `get`, `search`, `event-search`): closed-loop
//! clients at each client count against the gateway, then against the bare
//! server answering with the gateway's own response message.

use crate::bench::Bench;
use crate::load::{Clients, Load, Rng, connect, drive};
use crate::measure::{anon_rss_mib, reset_peak, rss_mib};
use crate::report::Row;
use crate::requests::Op;
use anyhow::{Result, bail};

/// The ratio a scenario must reach at 64 clients, if it has a target.
fn target(op: Op) -> Option<f64> {
    match op {
        Op::Set => Some(0.5),
        Op::Get => Some(0.7),
        _ => None,
    }
}

impl Bench {
    /// server answering with the gateway's own response message.
    pub(super) async fn unary(&mut self, op: Op) -> Result<Vec<Row>> {
        // Template: one real gateway answer, so the bare server sends the
        // same bytes.
        let mut cl = Clients::new(connect(self.gateway_addr).await?);
        let mut rng = Rng::new(99);
        self.bare.learn(op, self.args.records, &mut cl, &mut rng).await?;
        let mut rows = Vec::new();
        for &clients in &self.args.clients.clone() {
            reset_peak();
            let load = Load::new(op, self.args.records);
            let g = drive(self.gateway_addr, clients, self.args.warmup, self.args.secs, load).await?;
            let (peak, anon) = (rss_mib().1, anon_rss_mib());
            let b = drive(self.bare_addr, clients, self.args.warmup, self.args.secs, load).await?;
            if b.errors > 0 {
                bail!("bare server failed: {:?}", b.first_error);
            }
            let ratio = g.ops_per_sec() / b.ops_per_sec();
            let target = target(op).filter(|_| clients == 64);
            rows.push(Row {
                scenario: op.label().into(),
                clients: Some(clients),
                target: target.map(|t| format!("ratio >= {t}")),
                meets_target: target.map(|t| ratio >= t),
                peak_rss_mib: Some(peak),
                anon_rss_mib: Some(anon),
                errors: g.errors,
                note: g.first_error.as_ref().map(|e| format!("first error: {e}")).unwrap_or_default(),
                ..Row::compared(&g, &b)
            });
        }
        Ok(rows)
    }
}

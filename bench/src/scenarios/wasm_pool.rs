//! The `wasm-pool` scenario: `Get` on a gateway whose storage guest waits
//! `--wasm-pool-wait-ms` in the host on every call (as a guest over a
//! network service waits for its backend's answer), with calls run side
//! by side on a pool of instances (the guest's `max-instances` says
//! `--wasm-pool-instances`) against the same guest run one call at a time
//! (it says nothing: one instance). The guest is the test guest
//! `guest-providers/testing/stall-storage`, which answers every `get` with
//! a state and does nothing else: the row measures the pool, not a backend.

use super::Relative;
use super::wasm::guests;
use crate::bench::Bench;
use crate::load::Load;
use crate::report::Row;
use crate::requests::Op;
use anyhow::{Context, Result};
use std::path::Path;

const GUEST: &str = "stall_storage.wasm";

impl Bench {
    pub(super) async fn wasm_pool(&mut self) -> Result<Vec<Row>> {
        let dir = match guests(self.args.guests.as_deref(), &[GUEST]) {
            Ok(d) => d,
            Err(why) => {
                eprintln!("   wasm-pool: skipped: {why}");
                return Ok(vec![Row { scenario: "wasm-pool-get".into(), note: format!("skipped: {why}"), ..Row::default() }]);
            }
        };
        let (wait, size) = (self.args.wasm_pool_wait_ms, self.args.wasm_pool_instances);
        let data = tempfile::Builder::new().prefix("stategate-bench-wasm-pool").tempdir_in(&self.data_base)?;
        let serial = self.pool_gateway(&dir.join(GUEST), &data.path().join("serial"), wait, 1).await?;
        let pooled = self.pool_gateway(&dir.join(GUEST), &data.path().join("pooled"), wait, size).await?;
        let limit = match self.config.wasm_max_instances_per_guest {
            0 => self.config.wasm_max_instances.div_ceil(4).max(1),
            n => n,
        };
        let mut rows = Vec::new();
        for &clients in &self.args.wasm_clients.clone() {
            let load = Load::new(Op::Get, 1000);
            rows.push(
                self.relative(Relative {
                    scenario: "wasm-pool-get".into(),
                    clients,
                    off: (serial.addr, load),
                    on: (pooled.addr, load),
                    // Half of what the pool could give at best.
                    target: (size.min(clients) as f64 / 2.0).max(1.0),
                    note: format!(
                        "Get on a storage guest (the test guest stall-storage) whose every call waits {wait} ms in the host, as a call \
                         to a network backend would: its calls on a pool of up to {size} instances (max-instances; the per-guest limit \
                         is {}) against the same guest answering max-instances 1 (\"ceiling\" = one instance, one call at a time)",
                        limit
                    ),
                })
                .await?,
            );
        }
        for g in [serial, pooled] {
            self.server_rt.spawn(g.shutdown()).await?;
        }
        Ok(rows)
    }

    async fn pool_gateway(&self, guest: &Path, data: &Path, wait_ms: u64, instances: usize) -> Result<stategate::server::Running> {
        std::fs::create_dir_all(data.join("guest"))?;
        let mut config = self.wasm_config(data);
        let provider = serde_json::json!({"name": "wasm", "path": guest, "grants": {"dir": data.join("guest")},
            "config": {"sleep_ms": wait_ms, "max_instances": instances}});
        config.storage_provider = Some(stategate::storage::StorageSpec::parse(&provider.to_string())?);
        self.server_rt
            .spawn(stategate::server::start(config))
            .await?
            .with_context(|| format!("starting a gateway on {} ({instances} instances)", guest.display()))
    }
}

//! The `wasm-search` scenario: state `Search` (equality filter matching 1
//! in 10, limit 10) on a gateway whose storage is the fs-storage guest,
//! with search pushdown (the guest built against WIT 0.2.0: it decides the
//! filter and returns the first 10 matches) and without (the same guest
//! built against 0.1.0, `fs_storage_0_1_0.wasm`: it returns every state of
//! the type and the gateway filters), over the same data, at each
//! `--wasm-search-records` size.

use super::relative_row;
use super::wasm::guests;
use crate::bench::Bench;
use crate::load::{Load, drive};
use crate::measure::reset_peak;
use crate::report::Row;
use crate::requests::{Op, RECORD_TYPE};
use anyhow::{Context, Result};
use std::path::Path;

const PUSHDOWN: &str = "fs_storage.wasm";
const NO_PUSHDOWN: &str = "fs_storage_0_1_0.wasm";
const TARGET: f64 = 2.0;

impl Bench {
    pub(super) async fn wasm_search(&mut self) -> Result<Vec<Row>> {
        let sizes = self.args.wasm_search_records.clone();
        let clients = self.args.wasm_search_clients.clone();
        let dir = match guests(self.args.guests.as_deref(), &[PUSHDOWN, NO_PUSHDOWN]) {
            Ok(d) => d,
            Err(why) => {
                eprintln!("   wasm-search: skipped: {why}");
                return Ok(sizes
                    .iter()
                    .map(|n| Row { scenario: format!("wasm-search-{n}"), note: format!("skipped: {why}"), ..Row::default() })
                    .collect());
            }
        };
        let mut rows = Vec::new();
        for &records in &sizes {
            reset_peak();
            let data = tempfile::Builder::new().prefix("stategate-bench-wasm-search").tempdir_in(&self.data_base)?;
            let fs = data.path().join("fs");
            std::fs::create_dir_all(&fs)?;
            // The guest with pushdown writes the data; then the one without
            // reads the same log.
            let on = self.search_gateway(&dir.join(PUSHDOWN), data.path(), &fs).await?;
            let line = self.seed_into(on.gateway.storage(), RECORD_TYPE, records, records, 950).await?;
            eprintln!("   {line}");
            self.seeding.push(line);
            let mut with = Vec::new();
            for &c in &clients {
                with.push(drive(on.addr, c, self.args.warmup, self.args.secs, Load::new(Op::Search, records)).await?);
            }
            self.server_rt.spawn(on.shutdown()).await?;
            let off = self.search_gateway(&dir.join(NO_PUSHDOWN), data.path(), &fs).await?;
            for (&c, with) in clients.iter().zip(with) {
                let without = drive(off.addr, c, self.args.warmup, self.args.secs, Load::new(Op::Search, records)).await?;
                rows.push(relative_row(
                    format!("wasm-search-{records}"),
                    c,
                    with,
                    without,
                    TARGET,
                    &format!(
                        "Search (equality filter matching 1 in 10, limit 10) over {records} records of 1 KiB on the fs-storage guest with \
                         pushdown (WIT 0.2.0 query-states: the guest decides the filter and returns the first 10 matches); \"ceiling\" = the \
                         same guest built against WIT 0.1.0 over the same log (search-states returns all {records} states, the gateway \
                         filters), run after it"
                    ),
                ));
            }
            self.server_rt.spawn(off.shutdown()).await?;
        }
        Ok(rows)
    }

    /// A gateway on the fs-storage guest `guest` over `fs` (limits raised
    /// for the largest size: the guest keeps the whole log in memory, and a
    /// search without pushdown copies every state out of it).
    async fn search_gateway(&self, guest: &Path, data: &Path, fs: &Path) -> Result<stategate::server::Running> {
        let mut config = self.wasm_config(&data.join("gw"));
        let provider = serde_json::json!({"name": "wasm", "path": guest, "grants": {"dir": fs},
            "limits": {"memory_mb": 2048, "timeout_ms": 60_000, "disk_mb": 4096}});
        config.storage_provider = Some(stategate::storage::StorageSpec::parse(&provider.to_string())?);
        self.server_rt
            .spawn(stategate::server::start(config))
            .await?
            .with_context(|| format!("starting a gateway on {}", guest.display()))
    }
}

//! The `wasm-channel` scenario: what a channel provider written in Python
//! costs against the same provider written in Rust. Two gateways, each on
//! a fresh embedded sqlite and a directory channel of its own: one on
//! `guest-providers/dir-channel` (Rust, the "ceiling"), one on
//! `guest-providers/py-channel` (the same format and algorithm in Python,
//! componentize-py). `Set` runs the guest's `publish` in the call's path,
//! and the gateway's poller reads each event back through the guest's
//! `poll` meanwhile, so the ratio is Python's cost per event, both calls,
//! against Rust's.

use super::Relative;
use super::wasm::guests;
use crate::bench::Bench;
use crate::load::Load;
use crate::report::Row;
use crate::requests::Op;
use anyhow::{Context, Result};
use std::path::Path;

const RUST_GUEST: &str = "dir_channel.wasm";
const PYTHON_GUEST: &str = "py_channel.wasm";
/// A Python guest keeps at least half the Rust one's throughput.
const TARGET: f64 = 0.5;

impl Bench {
    pub(super) async fn wasm_channel(&mut self) -> Result<Vec<Row>> {
        let dir = match guests(self.args.guests.as_deref(), &[RUST_GUEST, PYTHON_GUEST]) {
            Ok(d) => d,
            Err(why) => {
                eprintln!("   wasm-channel: skipped: {why}");
                return Ok(vec![Row { scenario: "wasm-channel-set".into(), note: format!("skipped: {why}"), ..Row::default() }]);
            }
        };
        let data = tempfile::Builder::new().prefix("stategate-bench-wasm-channel").tempdir_in(&self.data_base)?;
        let rust = self.channel_gateway(&dir.join(RUST_GUEST), &data.path().join("rust")).await?;
        let python = self.channel_gateway(&dir.join(PYTHON_GUEST), &data.path().join("python")).await?;
        let mut rows = Vec::new();
        for &clients in &self.args.wasm_clients.clone() {
            let load = Load::new(Op::Set, self.args.wasm_records.max(1));
            rows.push(
                self.relative(Relative {
                    scenario: "wasm-channel-set".into(),
                    clients,
                    off: (rust.addr, load),
                    on: (python.addr, load),
                    target: TARGET,
                    note: format!(
                        "channel = the {PYTHON_GUEST} guest (Python, componentize-py; one instance, calls one at a time; publish in \
                         each Set, polled every 10 ms); \"ceiling\" = the same on the {RUST_GUEST} guest (Rust, same format and \
                         algorithm); each gateway on a fresh embedded sqlite and a directory of its own (same run)"
                    ),
                })
                .await?,
            );
        }
        for g in [rust, python] {
            self.server_rt.spawn(g.shutdown()).await?;
        }
        Ok(rows)
    }

    async fn channel_gateway(&self, guest: &Path, data: &Path) -> Result<stategate::server::Running> {
        let bus = data.join("bus");
        std::fs::create_dir_all(&bus)?;
        let mut config = self.wasm_config(data);
        // CPython starts in the instance: its first call gets time for it.
        let provider = serde_json::json!({"name": "wasm", "path": guest, "grants": {"dir": bus}, "limits": {"timeout_ms": 30000}});
        config.channel_provider = Some(stategate::channel::ChannelSpec::parse(&provider.to_string())?);
        self.server_rt
            .spawn(stategate::server::start(config))
            .await?
            .with_context(|| format!("starting a gateway on the channel guest {}", guest.display()))
    }
}

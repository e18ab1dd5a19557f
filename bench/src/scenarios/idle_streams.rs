//! The `idle-streams` scenario: what holding N open, idle streams costs the
//! gateway: the RSS of the release binary as its own process (data on
//! disk), the memory a user's host sees, and in-process the heap of the
//! gateway's threads beside the same streams on the bare server. The
//! in-process RSS holds the bench's own clients too, so it is reported but
//! not what the target checks (unless no release binary is found).

use super::external::{External, gateway_binary};
use crate::alloc;
use crate::bench::Bench;
use crate::load::open_streams;
use crate::measure::{process_rss_mib, reset_peak, rss_mib};
use crate::report::Row;
use anyhow::Result;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

impl Bench {
    /// RSS growth of holding N idle streams open, on the gateway and (for
    /// the client side and transport alone) on the bare server.
    pub(super) async fn idle_streams(&mut self) -> Result<Vec<Row>> {
        let n = self.args.idle_streams;
        let measure = async |addr: SocketAddr| -> Result<(f64, f64, f64)> {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reset_peak();
            let before = rss_mib().0;
            let heap_before = alloc::server_heap_mib();
            let streams = open_streams(addr, n, "idle").await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (after, peak) = rss_mib();
            let heap = alloc::server_heap_mib() - heap_before;
            drop(streams);
            Ok((after - before, heap, peak))
        };
        let (g, g_heap, peak) = measure(self.gateway_addr).await?;
        let (b, b_heap, _) = measure(self.bare_addr).await?;
        let in_process = format!(
            "In-process: gateway heap (bytes allocated and not freed by the server runtime's threads) grew by {g_heap:.1} MiB, \
             RSS of the whole bench process (gateway + the {n} client streams) by {g:.1} MiB; \
             the same streams on the bare tonic server: heap {b_heap:.1} MiB, RSS {b:.1} MiB"
        );
        let (rss, note) = match gateway_binary(self.args.gateway_bin.as_deref()) {
            Ok(bin) => {
                let rss = idle_streams_external(&bin, &self.args.external_disk_dir, n).await?;
                (rss, format!("RSS: the release binary as its own process (data on disk). {in_process}"))
            }
            Err(why) => (g, format!("RSS: the whole bench process, as no release binary was found ({why}). {in_process}")),
        };
        Ok(vec![Row {
            scenario: "idle-streams".into(),
            clients: Some(n),
            rss_delta_mib: Some(rss),
            server_heap_delta_mib: Some(g_heap),
            peak_rss_mib: Some(peak),
            target: Some("< 50 MiB".into()),
            meets_target: Some(rss < 50.0 && g_heap < 50.0),
            note,
            ..Row::default()
        }])
    }
}

/// How much the RSS of the release binary `bin`, started with its data
/// under `base`, grows while it holds `n` idle streams (MiB).
async fn idle_streams_external(bin: &Path, base: &Path, n: usize) -> Result<f64> {
    let gw = External::start(bin, base).await?;
    let pid = gw.child.id();
    let measured: Result<f64> = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = process_rss_mib(pid);
        let streams = open_streams(gw.addr, n, "idle").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = process_rss_mib(pid);
        drop(streams);
        anyhow::ensure!(after.is_finite() && before.is_finite(), "cannot read the RSS of process {pid}");
        Ok(after - before)
    }
    .await;
    gw.stop();
    measured
}

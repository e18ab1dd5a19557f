//! The `idle-streams` scenario: what holding N open, idle streams costs the
//! gateway (heap of its threads, and the process's RSS), beside the same
//! streams on the bare server.

use crate::alloc;
use crate::bench::Bench;
use crate::load::open_streams;
use crate::measure::{reset_peak, rss_mib};
use crate::report::Row;
use anyhow::Result;
use std::net::SocketAddr;
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
        Ok(vec![Row {
            scenario: "idle-streams".into(),
            clients: Some(n),
            rss_delta_mib: Some(g),
            server_heap_delta_mib: Some(g_heap),
            peak_rss_mib: Some(peak),
            target: Some("< 50 MiB".into()),
            meets_target: Some(g < 50.0 && g_heap < 50.0),
            note: format!(
                "gateway heap (bytes allocated and not freed by the server runtime's threads) grew by {g_heap:.1} MiB; \
                 RSS of the whole process (gateway + the {n} client streams) by {g:.1} MiB. \
                 The same streams on the bare tonic server: heap {b_heap:.1} MiB, RSS {b:.1} MiB"
            ),
            ..Row::default()
        }])
    }
}

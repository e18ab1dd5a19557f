//! The `search-index` scenario (issue 22, point 3): state searches on the
//! embedded sqlite (data on disk: `--external-disk-dir`) with and without
//! indexes on the fields they name, at each of `--search-index-records`
//! records (~200 B each: `n`, `group` = one of 10, a filler). Three
//! searches, 16 closed-loop clients each:
//! - selective: `{"n": <random>}`, one record matches;
//! - non-selective: `{"group": "g<k>"}`, one record in ten, first page of 10
//!   (key order: the scan stops after about 100 rows either way);
//! - sorted: the same filter, sorted by `n` descending, first 10 (without an
//!   index every match is read and ranked; with one, `n`'s index is read in
//!   order and stops after the page).
//!
//! Two stores are seeded alike per size through gateways with `auto_index`
//! off. One is reopened as it is and measures the scans; the other is
//! reopened with `index_fields` ["n", "group"] (building both indexes at
//! start, timed) and measures the index searches. Rows: the index searches,
//! with the scans as their ceiling columns, so ratio = how many times faster.
//!
//! Both stay open so that the non-selective search can alternate: it does
//! nearly the same work either way (the index's first page against a scan
//! of about 100 rows: 1.12-1.29 times faster in sessions 43 and 44), less
//! than neighbours move one run, so a single pair of runs minutes apart
//! landed on either side of 1 (0.86 and 1.24 for the same binary,
//! BENCHMARKS.md session 44). It runs `ROUNDS` rounds, each the scan and
//! then the index search back to back, and its row reports the median
//! round, as the `external` rows do. The selective and sorted searches are
//! 2 to thousands of times faster with the index, far beyond that spread,
//! and their scans take up to seconds a call at 1M records: one run each.

use crate::bench::Bench;
use crate::load::{Clients, closed_loop, connect};
use crate::measure::Measured;
use crate::report::Row;
use crate::requests::{DOMAIN, GROUPS, RECORD_TYPE};
use anyhow::{Context, Result};
use stategate::proto as pb;
use stategate::storage::{StorageSpec, sqlite::SqliteConfig};
use std::net::SocketAddr;
use std::time::Instant;

const CLIENTS: usize = 16;
/// Bytes of filler in each record.
const FILLER: usize = 150;

#[derive(Clone, Copy, Debug)]
enum Search {
    Selective,
    NonSelective,
    Sorted,
}

/// Rounds of the non-selective search (see the module doc).
const ROUNDS: usize = 3;

impl Search {
    const ALL: [Search; 3] = [Search::Selective, Search::NonSelective, Search::Sorted];

    /// How many alternating rounds this search runs (see the module doc).
    fn rounds(self) -> usize {
        match self {
            Search::NonSelective => ROUNDS,
            Search::Selective | Search::Sorted => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Search::Selective => "selective",
            Search::NonSelective => "nonselective",
            Search::Sorted => "sorted",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Search::Selective => "state Search {\"n\": <random>}: one record matches",
            Search::NonSelective => "state Search {\"group\": \"g<k>\"}: one in ten match, first page of 10 in key order",
            Search::Sorted => "state Search {\"group\": \"g<k>\"} sorted by n descending, first 10",
        }
    }

    /// The request for a random draw `r`, and how many states it must return.
    fn request(self, records: usize, r: usize) -> (pb::SearchStateOpts, usize) {
        let base = pb::SearchStateOpts {
            domain: DOMAIN.into(),
            r#type: RECORD_TYPE.into(),
            limit: 10,
            ..Default::default()
        };
        let group = format!(r#"{{"group":"g{}"}}"#, r % GROUPS);
        let page = (records / GROUPS).min(10);
        match self {
            Search::Selective => (pb::SearchStateOpts { query_string: format!(r#"{{"n":{}}}"#, r % records), ..base }, 1),
            Search::NonSelective => (pb::SearchStateOpts { query_string: group, ..base }, page),
            Search::Sorted => (
                pb::SearchStateOpts { query_string: group, sort_by: "n".into(), sort_descending: true, ..base },
                page,
            ),
        }
    }
}

impl Bench {
    pub(super) async fn search_index(&mut self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let base = self.args.external_disk_dir.clone();
        for records in self.args.search_index_records.clone() {
            let data = tempfile::Builder::new().prefix("stategate-bench-search-index").tempdir_in(&base)?;
            let (scan_dir, index_dir) = (data.path().join("scans"), data.path().join("indexed"));
            let scan = SqliteConfig { auto_index: Some(false), ..Default::default() };
            let indexed = SqliteConfig { index_fields: vec!["n".into(), "group".into()], auto_index: Some(false), ..Default::default() };
            for dir in [&scan_dir, &index_dir] {
                self.seed_store(dir, scan.clone(), records).await?;
            }
            let (scans, _) = self.open_store(&scan_dir, scan).await?;
            let (by_index, opened) = match self.open_store(&index_dir, indexed).await {
                Ok(gw) => gw,
                Err(e) => {
                    self.server_rt.spawn(scans.shutdown()).await?;
                    return Err(e);
                }
            };
            let measured = self.search_index_rounds(scans.addr, by_index.addr, records).await;
            self.server_rt.spawn(scans.shutdown()).await?;
            self.server_rt.spawn(by_index.shutdown()).await?;
            for (search, mut rounds) in Search::ALL.into_iter().zip(measured?) {
                let ratios: Vec<f64> = rounds.iter().map(|(on, off)| on.ops_per_sec() / off.ops_per_sec()).collect();
                // A row shows one round but owns up to failures in any.
                let errors: u64 = rounds.iter().map(|(on, off)| on.errors + off.errors).sum();
                let first_error = rounds.iter().flat_map(|(on, off)| [&on.first_error, &off.first_error]).find_map(|e| e.clone());
                let (mut on, off) = rounds.swap_remove(super::external::median_index(&ratios));
                // ... and names the first of them when its own round had none.
                if on.first_error.is_none() && off.first_error.is_none() {
                    on.first_error = first_error;
                }
                let rounds_note = super::external::rounds_note(&ratios, "the scan, then the index search,");
                let mut row = super::relative_row(
                    format!("search-index-{}-{records}", search.name()),
                    CLIENTS,
                    on,
                    off,
                    1.0,
                    &format!(
                        "{} over {records} records of ~{FILLER} B, embedded sqlite on disk ({}); ceiling = the same search \
                         without field indexes (auto_index off), ratio = times faster with them; starting on the file with \
                         index_fields [\"n\",\"group\"] (building both indexes) took {opened:.1} s{rounds_note}",
                        search.what(),
                        base.display()
                    ),
                );
                row.errors = errors;
                row.meets_target = row.meets_target.map(|met| met && errors == 0);
                row.target = Some("ratio >= 1 (faster with the index)".into());
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Writes `records` records into a new store in `dir` through a
    /// gateway on `sqlite`, then stops it.
    async fn seed_store(&self, dir: &std::path::Path, sqlite: SqliteConfig, records: usize) -> Result<()> {
        let (gw, _) = self.open_store(dir, sqlite).await?;
        let seeded = self.seed_range(gw.gateway.storage(), RECORD_TYPE, 0..records, usize::MAX, FILLER).await;
        self.server_rt.spawn(gw.shutdown()).await?;
        eprintln!("   search-index: {}", seeded?);
        Ok(())
    }

    /// Starts a gateway on `dir` with `sqlite`. Returns it and how long the
    /// start took (s).
    async fn open_store(&self, dir: &std::path::Path, sqlite: SqliteConfig) -> Result<(stategate::server::Running, f64)> {
        let mut config = self.config.clone();
        config.data_dir = dir.to_path_buf();
        config.storage_provider = Some(StorageSpec::Sqlite(sqlite));
        let t0 = Instant::now();
        let gw = self.server_rt.spawn(stategate::server::start(config)).await?.context("starting the search-index gateway")?;
        Ok((gw, t0.elapsed().as_secs_f64()))
    }

    /// Each search's rounds as (index search, scan) measurements: in each
    /// round the scan, then the index search. A search of several rounds
    /// splits `--secs` between them, so the step takes as long as one run.
    async fn search_index_rounds(&self, scans: SocketAddr, by_index: SocketAddr, records: usize) -> Result<Vec<Vec<(Measured, Measured)>>> {
        let mut out = Vec::new();
        for search in Search::ALL {
            let rounds = search.rounds();
            let secs = self.args.secs / rounds as f64;
            let mut measured = Vec::with_capacity(rounds);
            for round in 0..rounds {
                // The first round warms each gateway up; later ones follow it.
                let warmup = if round == 0 { self.args.warmup } else { 0.0 };
                let off = measure(scans, search, records, warmup, secs).await?;
                let on = measure(by_index, search, records, warmup, secs).await?;
                measured.push((on, off));
            }
            out.push(measured);
        }
        Ok(out)
    }
}

async fn measure(addr: SocketAddr, search: Search, records: usize, warmup: f64, secs: f64) -> Result<Measured> {
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        conns.push(Clients::new(connect(addr).await?));
    }
    closed_loop(conns, warmup, secs, move |cl, _c, _i, rng| {
        Box::pin(async move {
            let (opts, want) = search.request(records, rng.below(records));
            let found = cl.state.search(cl.req(opts)).await.map_err(|s| s.to_string())?.into_inner();
            match found.state_values.len() {
                n if n == want => Ok(()),
                n => Err(format!("{} search returned {n} states, not {want}", search.name())),
            }
        })
    })
    .await
}

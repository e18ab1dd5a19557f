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
//! The store is seeded once per size through a gateway with `auto_index`
//! off, which then measures the scans; a second gateway opened on the same
//! file with `index_fields` ["n", "group"] (building both indexes at start,
//! timed) measures the index searches. Rows: the index searches, with the
//! scans as their ceiling columns, so ratio = how many times faster.

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

impl Search {
    const ALL: [Search; 3] = [Search::Selective, Search::NonSelective, Search::Sorted];

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
            let scan = SqliteConfig { auto_index: Some(false), ..Default::default() };
            let (scans, _) = self.search_index_gateway(data.path(), scan, records, true).await?;
            let indexed = SqliteConfig { index_fields: vec!["n".into(), "group".into()], auto_index: Some(false), ..Default::default() };
            let (by_index, opened) = self.search_index_gateway(data.path(), indexed, records, false).await?;
            for ((search, on), (_, off)) in by_index.into_iter().zip(scans) {
                let mut row = super::relative_row(
                    format!("search-index-{}-{records}", search.name()),
                    CLIENTS,
                    on,
                    off,
                    1.0,
                    &format!(
                        "{} over {records} records of ~{FILLER} B, embedded sqlite on disk ({}); ceiling = the same search \
                         without field indexes (auto_index off), ratio = times faster with them; starting on the file with \
                         index_fields [\"n\",\"group\"] (building both indexes) took {opened:.1} s",
                        search.what(),
                        base.display()
                    ),
                );
                row.target = Some("ratio >= 1 (faster with the index)".into());
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Starts a gateway on `dir` with `sqlite`, seeds `records` records if
    /// `seed`, measures every search and stops it. Returns the measurements
    /// and how long the start took (s).
    async fn search_index_gateway(
        &mut self,
        dir: &std::path::Path,
        sqlite: SqliteConfig,
        records: usize,
        seed: bool,
    ) -> Result<(Vec<(Search, Measured)>, f64)> {
        let mut config = self.config.clone();
        config.data_dir = dir.to_path_buf();
        config.storage_provider = Some(StorageSpec::Sqlite(sqlite));
        let t0 = Instant::now();
        let gw = self.server_rt.spawn(stategate::server::start(config)).await?.context("starting the search-index gateway")?;
        let started = t0.elapsed().as_secs_f64();
        let measured = async {
            if seed {
                let line = self.seed_range(gw.gateway.storage(), RECORD_TYPE, 0..records, usize::MAX, FILLER).await?;
                eprintln!("   search-index: {line}");
            }
            let mut out = Vec::new();
            for search in Search::ALL {
                out.push((search, measure(gw.addr, search, records, self.args.warmup, self.args.secs).await?));
            }
            anyhow::Ok(out)
        }
        .await;
        self.server_rt.spawn(gw.shutdown()).await?;
        Ok((measured?, started))
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

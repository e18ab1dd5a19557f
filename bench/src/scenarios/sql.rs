//! The `postgres` and `mysql` scenarios: the gateway on a shared SQL
//! storage provider, against the database itself and against the embedded
//! sqlite, in the same run, at the same concurrency.
//!
//! For each server (`--postgres-url`, `--mysql-url`; a server that cannot
//! be reached gives one row saying "skipped: …"):
//! - a gateway whose storage is the provider, in a schema (PostgreSQL) or
//!   database (MySQL/MariaDB) made for this run and dropped at its end,
//!   however the run ends; and a gateway on a fresh embedded sqlite on disk
//!   (`--data-dir`, else /var/tmp: not tmpfs, since the servers' data is on
//!   disk too). Both are seeded through the `Storage` API with the same
//!   `--sql-records` records and `--sql-events` events;
//! - at each `--sql-clients` count (default 16 and 64; the targets are at
//!   64): `Set` and `Get` on the provider's gateway against the bare
//!   database client (`sql_bare`: the same transaction and the same point
//!   read, one connection per client; targets at 64 clients: Set ≥ 0.8,
//!   Get ≥ 0.7), and state and event `Search` against the sqlite gateway
//!   (no target: the comparison is the figure);
//! - a `health` row: the same gateway's gRPC health check against the bare
//!   point read (the get row's measurement of it). A health check is all
//!   transport (the same tonic clients and server, no storage), so its
//!   ratio is the most any `Get` over gRPC could reach against that
//!   ceiling on this machine: when it is below 0.7, so is every possible
//!   `Get`, whatever the storage code does.
//!
//! The servers run as they are configured on the machine (durable commits
//! are what the providers expect; they warn otherwise); each row's note
//! names the server's version and the filesystem of its data directory.

use super::sql_bare::{Bare, Conn, Db, Place};
use crate::bench::Bench;
use crate::load::{Load, drive};
use crate::measure::{Measured, anon_rss_mib, reset_peak, rss_mib};
use crate::report::Row;
use crate::requests::{EVENT_KEYS, EVENT_TYPE, Op, RECORD_TYPE};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound on reaching the server, and on a gateway's start (migrations).
const CONNECT: Duration = Duration::from_secs(5);
const START: Duration = Duration::from_secs(60);

/// The ratio the provider's gateway must reach at 64 clients, if any.
fn target(op: Op) -> Option<f64> {
    match op {
        Op::Set => Some(0.8),
        Op::Get => Some(0.7),
        _ => None,
    }
}

impl Bench {
    pub(super) async fn sql(&mut self, db: Db) -> Result<Vec<Row>> {
        let url = match db {
            Db::Postgres => self.args.postgres_url.clone(),
            Db::Mysql => self.args.mysql_url.clone(),
        };
        let place = Place::new(db, &url);
        let skipped = |why: String| {
            eprintln!("   {}: skipped: {why}", db.name());
            Ok(vec![Row { scenario: db.name().into(), note: format!("skipped: {why}"), ..Row::default() }])
        };
        // The URL may hold a password: name the server by its kind only.
        let mut admin = match tokio::time::timeout(CONNECT, place.connect(false)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return skipped(format!("{} server not reachable: {e:#}", db.name())),
            Err(_) => return skipped(format!("{} server not reachable within {CONNECT:?}", db.name())),
        };
        admin.create(&place).await.with_context(|| format!("creating database {}", place.name))?;
        eprintln!("   {}: data in {} {}", db.name(), if db == Db::Postgres { "schema" } else { "database" }, place.name);
        let result = self.sql_in(&place, &mut admin).await;
        if let Err(e) = admin.drop_place(&place).await {
            eprintln!("   {}: could not drop {}: {e:#} (drop it by hand)", db.name(), place.name);
        }
        match result {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(why)) => skipped(why),
            Err(e) => Err(e),
        }
    }

    /// The scenario inside its place; `Ok(Err(why))` when the provider's
    /// gateway cannot start there (reported as skipped).
    async fn sql_in(&mut self, place: &Place, admin: &mut Conn) -> Result<Result<Vec<Row>, String>> {
        let db = place.db;
        let (version, data_dir) = admin.describe().await;
        let server_disk = data_dir.as_deref().map_or("data directory not visible".into(), |d| format!("data in {d} ({})", fs_type(Path::new(d))));
        let sqlite_base = self.args.data_dir.clone().unwrap_or_else(|| {
            let var_tmp = PathBuf::from("/var/tmp");
            if var_tmp.is_dir() { var_tmp } else { std::env::temp_dir() }
        });
        let data = tempfile::Builder::new().prefix("stategate-bench-sql").tempdir_in(&sqlite_base)?;
        let (sql_dir, sqlite_dir) = (data.path().join(db.name()), data.path().join("sqlite"));
        for d in [&sql_dir, &sqlite_dir] {
            std::fs::create_dir_all(d)?;
        }

        let mut config = self.config.clone();
        config.data_dir = sql_dir;
        let mut spec = place.spec()?;
        if let Some(n) = self.args.sql_writers {
            spec["writers"] = n.into();
        }
        config.storage_provider = Some(stategate::storage::StorageSpec::parse(&spec.to_string())?);
        let gateway = match self.server_rt.spawn(tokio::time::timeout(START, stategate::server::start(config))).await? {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => return Ok(Err(format!("starting a gateway on {}: {e:#}", db.name()))),
            Err(_) => return Ok(Err(format!("starting a gateway on {} timed out after {START:?}", db.name()))),
        };
        let mut sqlite_config = self.config.clone();
        sqlite_config.data_dir = sqlite_dir;
        let sqlite = self.server_rt.spawn(stategate::server::start(sqlite_config)).await?.context("starting the sqlite gateway")?;

        let rows = self.sql_steps(place, &gateway, &sqlite, &version, &server_disk, &sqlite_base).await;
        for g in [gateway, sqlite] {
            self.server_rt.spawn(g.shutdown()).await?;
        }
        rows.map(Ok)
    }

    async fn sql_steps(
        &mut self,
        place: &Place,
        gateway: &stategate::server::Running,
        sqlite: &stategate::server::Running,
        version: &str,
        server_disk: &str,
        sqlite_base: &Path,
    ) -> Result<Vec<Row>> {
        let db = place.db;
        let (records, events) = (self.args.sql_records.max(1), self.args.sql_events);
        for g in [gateway, sqlite] {
            for (ty, count, keys, filler) in [(RECORD_TYPE, records, records, 950), (EVENT_TYPE, events, EVENT_KEYS.min(events.max(1)), 100)] {
                if count == 0 {
                    continue;
                }
                let line = self.seed_into(g.gateway.storage(), ty, count, keys, filler).await?;
                eprintln!("   {line}");
                self.seeding.push(line);
            }
        }
        let bare = Bare::new(place.clone());
        let mut admin = place.connect(true).await?;
        admin.analyze().await.context("analyzing the seeded tables")?;
        admin.create_bare_tables().await.context("creating the bare tables")?;
        let writers = self.args.sql_writers.map_or(String::new(), |n| format!(", {n} writer connections"));
        let server = format!("{} {version}, {server_disk}{writers}", db.name());
        let sqlite_disk = format!("{} ({})", sqlite_base.display(), fs_type(sqlite_base));
        let (warmup, secs) = (self.args.warmup, self.args.secs);
        let mut rows = Vec::new();
        // The bare point read of the get row at each client count, which the
        // health row that follows is reported against too (the same figure,
        // not a second run of it: one step fewer per client count).
        let mut bare_reads: Vec<(usize, Measured)> = Vec::new();
        for op in [Op::Set, Op::Get, Op::Health, Op::Search, Op::EventSearch] {
            for &clients in &self.args.sql_clients.clone() {
                reset_peak();
                let load = Load::new(op, records);
                let g = drive(gateway.addr, clients, warmup, secs, load).await?;
                let (peak, anon) = (rss_mib().1, anon_rss_mib());
                let (ceiling, what) = match op {
                    Op::Set | Op::Get => (
                        {
                            let m = bare.drive(op, clients, warmup, secs, records).await?;
                            if op == Op::Get {
                                bare_reads.push((clients, m.clone()));
                            }
                            m
                        },
                        format!(
                            "\"ceiling\" = a bare sqlx client, one connection per client, {} ({server})",
                            if op == Op::Set {
                                "the provider's Set transaction (event insert + state upsert into copies of its tables)"
                            } else {
                                "the provider's point read of a seeded state"
                            }
                        ),
                    ),
                    Op::Health => (
                        match bare_reads.iter().position(|(c, _)| *c == clients) {
                            Some(i) => bare_reads.swap_remove(i).1,
                            None => bare.drive(Op::Get, clients, warmup, secs, records).await?,
                        },
                        format!(
                            "the gateway's gRPC health check (no storage: the transport's bound on the Get ratio) against \
                             \"ceiling\" = the bare sqlx point read of the get row ({server})"
                        ),
                    ),
                    _ => (
                        drive(sqlite.addr, clients, warmup, secs, load).await?,
                        format!("\"ceiling\" = the same calls on a gateway with embedded sqlite in {sqlite_disk} holding the same data ({server})"),
                    ),
                };
                rows.push(row(db, op, clients, g, ceiling, peak, anon, &what));
            }
        }
        Ok(rows)
    }
}

#[allow(clippy::too_many_arguments)]
fn row(db: Db, op: Op, clients: usize, g: Measured, c: Measured, peak: f64, anon: f64, what: &str) -> Row {
    let ratio = g.ops_per_sec() / c.ops_per_sec();
    let target = target(op).filter(|_| clients == 64);
    let first_error = g
        .first_error
        .as_ref()
        .map(|e| format!("; first gateway error: {e}"))
        .or_else(|| c.first_error.as_ref().map(|e| format!("; first ceiling error: {e}")))
        .unwrap_or_default();
    Row {
        scenario: format!("{}-{}", db.name(), op.label()),
        clients: Some(clients),
        target: target.map(|t| format!("ratio >= {t}")),
        meets_target: target.map(|t| ratio >= t && g.errors == 0),
        peak_rss_mib: Some(peak),
        anon_rss_mib: Some(anon),
        errors: g.errors + c.errors,
        note: format!("{what}{first_error}"),
        ..Row::compared(&g, &c)
    }
}

/// The filesystem type of the mount holding `path` (longest mount point
/// that is a prefix of it, from /proc/mounts), e.g. "ext4" or "tmpfs".
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mount, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount).then(|| (mount.len(), ty.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "filesystem unknown".into(), |(_, ty)| ty)
}

//! The setup every scenario runs on: the gateway (started in-process
//! through `stategate::server::start`, embedded sqlite in a temp dir,
//! `inmem` channel, auth off) and the bare tonic server on one tokio
//! runtime, while the caller's runtime drives the clients.

use crate::args::Args;
use crate::bare::Bare;
use anyhow::{Context, Result};
use stategate::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

pub struct Bench {
    pub args: Args,
    /// Where the first gateway's data dir was made (tmpfs by default).
    pub data_base: PathBuf,
    pub server_rt: tokio::runtime::Runtime,
    pub gateway: stategate::server::Running,
    pub gateway_addr: SocketAddr,
    /// The gateway's config, for the extra gateways of some scenarios.
    pub config: Config,
    pub bare: Bare,
    pub bare_addr: SocketAddr,
    _data: tempfile::TempDir,
    /// The clock of the fan-out's writes and deliveries (`measure::now_us`).
    pub epoch: Instant,
    /// One line per seeding step, for the report.
    pub seeding: Vec<String>,
}

impl Bench {
    /// Starts the gateway and the bare server on `server_rt`, with the data
    /// dir under `--data-dir` (default /dev/shm, else the temp dir).
    pub async fn start(args: Args, server_rt: tokio::runtime::Runtime) -> Result<Bench> {
        let base = args.data_dir.clone().unwrap_or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            if shm.is_dir() { shm } else { std::env::temp_dir() }
        });
        let data = tempfile::Builder::new().prefix("stategate-bench").tempdir_in(&base)?;
        let mut config = Config::defaults();
        config.auth.auth_disabled = true;
        // Every subscriber of the bench is one client (loopback, no token),
        // and the fan-out opens more streams than one caller may by default.
        config.max_streams_per_caller = 0;
        config.bind = "127.0.0.1".into();
        config.port = 0;
        config.ops_port = Some(0);
        config.data_dir = data.path().to_path_buf();
        config.log_format = "text".into();
        let gateway = server_rt
            .spawn(stategate::server::start(config.clone()))
            .await?
            .context("starting the gateway")?;
        let gateway_addr = gateway.addr;
        let bare = Bare::default();
        let bare_addr = server_rt.spawn(bare.clone().serve()).await??;
        eprintln!("gateway on {gateway_addr}, bare tonic on {bare_addr}, data in {}", data.path().display());
        Ok(Bench {
            args,
            data_base: base,
            server_rt,
            gateway,
            gateway_addr,
            config,
            bare,
            bare_addr,
            _data: data,
            epoch: Instant::now(),
            seeding: Vec::new(),
        })
    }

    pub async fn stop(self) -> Result<()> {
        let Bench { server_rt, gateway, .. } = self;
        server_rt.spawn(gateway.shutdown()).await?;
        server_rt.shutdown_background();
        Ok(())
    }
}

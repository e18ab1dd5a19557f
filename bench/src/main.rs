//! stategate-bench: how fast the gateway is, as a fraction of what a bare
//! tonic server does on the same machine with the same client and messages.
//!
//! One process: the gateway (started in-process through
//! `stategate::server::start`, embedded sqlite in a temp dir, `inmem`
//! channel, auth off) and a bare tonic server run on one tokio runtime, the
//! load-generating gRPC clients on another; all traffic is loopback.
//! See docs/bench.md.
//!
//! This file only wires the parts together: `args` (the command line),
//! `bench` (the gateway and bare server every scenario runs on), `seed`,
//! `requests` (the request shapes), `load` (clients and drivers),
//! `measure` (latency, CPU, memory), `scenarios` (the table, one file per
//! scenario), `soak`, `report` (JSON and Markdown), `bare`, `alloc`,
//! `tokens`.

mod alloc;
mod args;
mod bare;
mod bench;
mod h2call;
mod load;
mod measure;
mod report;
mod requests;
mod scenarios;
mod seed;
mod soak;
mod tokens;

use anyhow::Result;
use args::Args;
use bench::Bench;
use clap::Parser;
use std::time::Instant;

fn main() -> Result<()> {
    let args = Args::parse();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("server")
        .on_thread_start(alloc::mark_server_thread)
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("client")
        .enable_all()
        .build()?;
    client_rt.block_on(run(args, server_rt))
}

async fn run(args: Args, server_rt: tokio::runtime::Runtime) -> Result<()> {
    let started = Instant::now();
    let mut bench = Bench::start(args.clone(), server_rt).await?;

    if let Some(duration) = args.soak {
        let soak = bench.soak(duration).await?;
        report::write_json(&args.out, &report::soak_results(soak))?;
        eprintln!("wrote {}", args.out.display());
        return bench.stop().await;
    }

    // On a failed scenario the bench still stops its gateway runtime the
    // way `stop` does (dropping it here, inside async code, would panic and
    // hide the error).
    let ran = match scenarios::run(&mut bench, started).await {
        Ok(ran) => ran,
        Err(e) => {
            bench.stop().await.ok();
            return Err(e);
        }
    };
    let total = started.elapsed();
    let machine = report::machine();
    report::write_json(&args.out, &report::results(&machine, total, &args, &bench.seeding, &ran.described, &ran.rows, &ran.seconds))?;
    let md = report::markdown(&machine, &ran.rows, &ran.described, &ran.seconds, &bench.seeding, &args, total);
    println!("{md}");
    if let Some(path) = &args.markdown {
        report::write_markdown(path, &md)?;
        eprintln!("wrote {} and {}", args.out.display(), path.display());
    }
    bench.stop().await
}

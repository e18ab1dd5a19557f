//! The `stategate` binary: without a subcommand (or with `serve`) parse the
//! configuration, start, stop on a signal; other subcommands are clients of
//! a running gateway (`stategate::cli`).

use clap::Parser;
use stategate::cli::{Cli, Command};
use stategate::config::Config;

/// mimalloc rather than glibc's malloc: under load glibc's took about a
/// tenth of a call's CPU, part of it waiting on arena locks shared by the
/// runtime's threads (measured with perf and callgrind: BENCHMARKS.md).
/// The library leaves the choice to the program (the bench counts
/// allocations with its own).
#[global_allocator]
static ALLOCATOR: stategate::allocator::MiMalloc = stategate::allocator::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before any other thread exists: the `.env` file and empty variables
    // change the process environment the flag parser reads.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // SAFETY: no other thread has started yet (the runtime is built below).
    if let Err(e) = unsafe { stategate::config::env::prepare(&args) } {
        eprintln!("stategate: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| stategate::config::exit_on_flag_error(e));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stategate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> std::process::ExitCode {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(config)) => serve(*config).await,
        Some(command) => match stategate::cli::run(command).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                // The gateway's messages name records, whose keys a writer chose.
                eprintln!("stategate: {}", stategate::cli::printable_message(&format!("{e:#}")));
                std::process::ExitCode::FAILURE
            }
        },
    }
}

async fn serve(config: Config) -> std::process::ExitCode {
    stategate::telemetry::init_logging(config.debug, &config.log_format);
    let variable = stategate::allocator::THP_VARIABLE;
    match stategate::allocator::keep_heap_in_small_pages(std::env::var_os(variable)) {
        Ok(off) => tracing::debug!(huge_pages_off = off, "heap pages"),
        Err(e) => tracing::debug!(error = %e, "cannot turn transparent huge pages off; the heap may hold more memory"),
    }
    // Each connection costs a descriptor: lift a low soft limit to the hard
    // one (the API's connection cap is derived from it).
    let open_files = stategate::server::fds::raise_open_file_limit();
    tracing::debug!(?open_files, "open-file limit");
    if config.dev {
        tracing::warn!(
            "development mode: authentication is disabled and the gateway listens on 127.0.0.1 only; do not use in production"
        );
    }
    // Installed before serving, so a SIGTERM that comes right after start-up
    // is a graceful stop, not the default kill.
    let stop = shutdown_signal();
    let running = match stategate::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "stategate could not start");
            eprintln!("stategate: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let token = running.shutdown_token();
    tokio::spawn(async move {
        stop.await;
        token.cancel();
    });
    running.wait().await;
    std::process::ExitCode::SUCCESS
}

/// Registers the SIGINT and SIGTERM handlers now; the returned future
/// completes when either arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .expect("installing a SIGINT handler");
    async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

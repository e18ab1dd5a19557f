//! The `stategate` binary: parse configuration, start, stop on a signal.

use clap::Parser;
use stategate::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    stategate::telemetry::init_logging(config.debug, config.log_format == "json");
    if config.dev {
        tracing::warn!(
            "development mode: authentication is disabled and the gateway listens on 127.0.0.1 only; do not use in production"
        );
    }
    let running = match stategate::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "stategate could not start");
            eprintln!("stategate: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %running.addr, ops_addr = %running.ops_addr, "stategate is serving gRPC, REST and grpc-web");
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    running.wait().await;
    std::process::ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

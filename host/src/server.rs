//! Listeners: the API port (gRPC, REST and grpc-web on one socket, HTTP/1.1
//! and HTTP/2, optionally TLS) and the ops port (metrics, health, profiles;
//! `ops`). Also the start-up wiring and graceful shutdown. How each
//! listener bounds its connections is `conn`; the descriptor budget behind
//! its caps is `fds`.

mod conn;
pub mod fds;
mod ops;
pub mod summary;

use crate::api::{self, grpc::GrpcApi};
use crate::config::{Config, ConfigError};
use crate::gateway::{Gateway, Limits};
use crate::hub::{Hub, HubConfig};
use crate::telemetry::Metrics;
use crate::storage;
use axum::extract::DefaultBodyLimit;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Graceful shutdown: end streams with UNAVAILABLE, stop accepting, let
    /// in-flight calls finish, then close storage.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until something else stopped the gateway.
    pub async fn wait(self) {
        let _ = self.done.await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Opens providers, binds both ports and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_storage(config, None).await
}

/// Like [`start`], but with a storage the caller already opened (several
/// gateways in one process sharing one storage, e.g. the benchmarks); the
/// caller closes it, the gateway's shutdown does not.
pub async fn start_with_storage(config: Config, shared: Option<storage::DynStorage>) -> anyhow::Result<Running> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    crate::wasm::metrics::register(&metrics.registry);
    // The runtime every wasm guest of this gateway (hooks, providers) runs in.
    let wasm = crate::wasm::WasmRuntime::new(config.wasm_settings())?;
    let auth = crate::auth::stack::build(&config.auth, config.auth_enabled(), metrics.clone(), &wasm).await?;
    let owns_storage = shared.is_none();
    let storage = match shared {
        Some(s) => s,
        None => config
            .storage_spec()
            .open(&config.data_dir, &wasm)
            .await
            .map_err(|e| ConfigError::new("STATEGATE_STORAGE_PROVIDER", e.to_string()))?,
    };
    let channel = config
        .channel_spec()
        .open(&wasm)
        .await
        .map_err(|e| ConfigError::new("STATEGATE_CHANNEL_PROVIDER", e.to_string()))?;
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let ops_token = config.ops_token()?;

    let hub = Hub::new(
        storage.clone(),
        channel.clone(),
        HubConfig {
            sweep_interval: config.sweep_interval(),
            ..HubConfig::default()
        },
        metrics.clone(),
    );
    let gateway = Arc::new(Gateway::new(
        storage.clone(),
        channel,
        hub,
        auth,
        metrics,
        Limits {
            max_search_limit: config.max_search_limit,
            idempotency_window: Duration::from_secs(config.idempotency_window_secs),
            max_streams: config.max_streams,
            max_streams_per_caller: config.max_streams_per_caller,
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst.unwrap_or(config.rate_limit),
            ..Limits::default()
        },
    ));

    let public = api::public::Settings {
        public_metadata: config.public_metadata,
        max_public_streams: config.max_public_streams,
    };
    let host = config.bind_host();
    let listener = TcpListener::bind((host, config.port))
        .await
        .map_err(|e| ConfigError::new("STATEGATE_PORT", format!("cannot listen on {host}:{}: {e}", config.port)))?;
    let ops_host = config.ops_bind_host();
    let ops_listener = TcpListener::bind((ops_host, config.ops_port()))
        .await
        .map_err(|e| ConfigError::new("STATEGATE_OPS_PORT", format!("cannot listen on {ops_host}:{}: {e}", config.ops_port())))?;
    let addr = listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;

    let methods = Arc::new(api::fallback::GrpcMethods::from_descriptor_sets(&[
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]));
    // The gRPC services and their layers, outermost first; a call goes
    // through them as plain calls (`api::HttpService`).
    let grpc = tower::ServiceBuilder::new()
        .layer(api::fallback::known_methods(methods.clone()))
        .layer(api::deadline::layer())
        .layer(api::public::guard_grpc(gateway.clone(), &public))
        .layer(api::grpc::authenticate_first(gateway.clone()))
        .service(api::grpc::services(GrpcApi::new(gateway.clone()), config.max_message_bytes).await);
    // Routes served over plain HTTP; what none of them takes goes to gRPC
    // or gets a JSON error (`api::fallback`).
    let mut routes = api::rest::routes(gateway.clone())
        .merge(api::stats::routes(gateway.clone()))
        .merge(api::public::openapi(gateway.clone(), &public));
    if config.console {
        routes = routes.merge(api::console::routes());
    }
    let app = api::browser::guard(
        api::fallback::serve_unmatched(routes, api::grpc_web::wrap(grpc.clone()), methods, ops_addr.port())
            .layer(DefaultBodyLimit::max(config.max_message_bytes)),
        grpc,
        &api::browser::Rules {
            origins: config.cors_origins.clone(),
            auth_enabled: config.auth_enabled(),
            check_host: !config.auth_enabled() && config.binds_loopback(),
            allowed_hosts: config.allowed_hosts.clone(),
        },
    );
    let ops = ops::routes(gateway.clone(), ops_token.clone());

    warn_about_exposure(&config, addr, ops_addr, ops_token.is_some());
    summary::Summary::new(&config, addr, ops_addr).log();

    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let mut conn = ConnBuilder::new(TokioExecutor::new());
    conn.http1().timer(TokioTimer::new());
    let keepalive = (config.http2_keepalive_interval_secs > 0).then(|| Duration::from_secs(config.http2_keepalive_interval_secs));
    conn.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_streams_per_connection)
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(Duration::from_secs(config.http2_keepalive_timeout_secs.max(1)));

    let conn_metrics = conn::Metrics::register(&gateway.metrics().registry);
    let (api_limits, ops_limits) = connection_limits(&config, grace);
    let api_task = tokio::spawn(conn::serve(
        listener,
        tls.clone(),
        app,
        conn.clone(),
        api_limits,
        conn_metrics.clone(),
        shutdown.clone(),
    ));
    let ops_task = tokio::spawn(conn::serve(ops_listener, tls, ops, conn, ops_limits, conn_metrics, shutdown.clone()));
    let gw = gateway.clone();
    let token = shutdown.clone();
    let done = tokio::spawn(async move {
        token.cancelled().await;
        tracing::info!("shutting down: ending streams, finishing in-flight calls");
        gw.shutdown();
        let _ = api_task.await;
        let _ = ops_task.await;
        if owns_storage && let Err(e) = storage.close().await {
            tracing::error!(error = %e, "closing storage failed");
        }
        tracing::info!("stopped");
    });
    Ok(Running {
        addr,
        ops_addr,
        gateway,
        shutdown,
        done,
    })
}

/// The connection bounds of the API and ops listeners (docs/security.md).
fn connection_limits(config: &Config, grace: Duration) -> (conn::Settings, conn::Settings) {
    let max = config
        .max_connections
        .unwrap_or_else(|| fds::auto_max_connections(fds::open_file_limit(), config.ops_max_connections));
    let api = conn::Settings {
        name: "api",
        max_connections_variable: "STATEGATE_MAX_CONNECTIONS",
        max_connections: max,
        max_per_peer: config.max_connections_per_peer.unwrap_or((max / 4).max(1)),
        handshake_timeout: config.handshake_timeout(),
        idle_timeout: config.idle_timeout(),
        spare_descriptors: 0,
        grace,
    };
    let ops = conn::Settings {
        name: "ops",
        max_connections_variable: "STATEGATE_OPS_MAX_CONNECTIONS",
        max_connections: config.ops_max_connections,
        max_per_peer: config.ops_max_connections,
        spare_descriptors: fds::OPS_SPARES,
        ..api.clone()
    };
    tracing::debug!(
        max_connections = api.max_connections,
        max_per_peer = api.max_per_peer,
        open_file_limit = fds::open_file_limit(),
        "API connection limits"
    );
    (api, ops)
}

/// Says so at start when anyone who can reach a port can use it freely.
fn warn_about_exposure(config: &Config, addr: SocketAddr, ops_addr: SocketAddr, ops_token: bool) {
    if !config.auth_enabled() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "authentication is disabled (STATEGATE_AUTH_DISABLED) on a non-loopback address: anyone who can reach it can read and write every record"
        );
    }
    if !ops_token && !ops_addr.ip().is_loopback() {
        tracing::warn!(
            %ops_addr,
            "the ops port listens on a non-loopback address without STATEGATE_OPS_TOKEN: anyone who can reach it can read /metrics and take CPU profiles"
        );
    }
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use tokio_rustls::rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::new("STATEGATE_TLS_CERT_FILE", format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ConfigError::new("STATEGATE_TLS_KEY_FILE", format!("{}: {e}", key.display())))?;
    let mut tls = ServerConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("STATEGATE_TLS_CERT_FILE", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::new("STATEGATE_TLS_KEY_FILE", format!("does not match the certificate: {e}")))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

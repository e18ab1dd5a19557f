//! Listeners: the API port (gRPC, REST and grpc-web on one socket, HTTP/1.1
//! and HTTP/2, optionally TLS) and the ops port (metrics, health). Also the
//! start-up wiring and graceful shutdown.

use crate::api::{self, grpc::GrpcApi};
use crate::config::{Config, ConfigError};
use crate::gateway::{Gateway, Limits, PEER_HEADER};
use tower::ServiceExt;
use crate::hub::{Hub, HubConfig};
use crate::telemetry::Metrics;
use crate::storage;
use anyhow::Context;
use axum::{Router, extract::DefaultBodyLimit, response::IntoResponse, routing::get};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::service::TowerToHyperService;
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
    crate::wasm::configure(crate::wasm::Settings {
        call_timeout: Duration::from_millis(config.wasm_call_timeout_ms.max(1)),
        memory_bytes: config.wasm_memory_mb.max(1) << 20,
        max_instances: config.wasm_max_instances.max(1),
        cache_dir: Some(config.wasm_cache_dir.clone().unwrap_or_else(|| config.data_dir.join("wasm-cache"))),
        reload_interval: Duration::from_millis(config.wasm_reload_ms),
    });
    // After the wasm settings: the policy hooks are loaded with them.
    let auth = crate::auth::stack::build(&config.auth, config.auth_enabled(), metrics.clone()).await?;
    let owns_storage = shared.is_none();
    let storage = match shared {
        Some(s) => s,
        None => config
            .storage_spec()
            .open(&config.data_dir)
            .await
            .map_err(|e| ConfigError::new("STATEGATE_STORAGE_PROVIDER", e.to_string()))?,
    };
    let channel = config
        .channel_spec()
        .open()
        .await
        .map_err(|e| ConfigError::new("STATEGATE_CHANNEL_PROVIDER", e.to_string()))?;
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };

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
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst.unwrap_or(config.rate_limit),
            ..Limits::default()
        },
    ));

    let grpc = api::grpc::routes(GrpcApi::new(gateway.clone()), config.max_message_bytes)
        .await
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), api::grpc::authenticate_first));
    let app = api::grpc_web::with_cors(
        api::grpc_web::wrap(grpc)
            .merge(api::rest::routes(gateway.clone()))
            .layer(DefaultBodyLimit::max(config.max_message_bytes)),
        &config.cors_origins,
    );
    let ops = ops_routes(gateway.clone());

    let host = config.bind_host();
    let listener = TcpListener::bind((host, config.port))
        .await
        .with_context(|| format!("STATEGATE_PORT: cannot listen on {host}:{}", config.port))?;
    let ops_listener = TcpListener::bind((host, config.ops_port()))
        .await
        .with_context(|| format!("STATEGATE_OPS_PORT: cannot listen on {host}:{}", config.ops_port()))?;
    let addr = listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let mut conn = ConnBuilder::new(TokioExecutor::new());
    conn.http1().timer(TokioTimer::new());
    conn.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_streams_per_connection)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));

    let api_task = tokio::spawn(serve(listener, tls.clone(), app, conn.clone(), shutdown.clone(), grace));
    let ops_task = tokio::spawn(serve(ops_listener, tls, ops, conn, shutdown.clone(), grace));
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

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    conn: ConnBuilder<TokioExecutor>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = socket.set_nodelay(true);
        // Stamp the real peer on every request (replacing any client-sent
        // value): rate limits and policies may key on it.
        let peer_value = http::HeaderValue::from_str(&peer.to_string()).ok();
        let service = TowerToHyperService::new(app.clone().map_request(move |mut req: http::Request<hyper::body::Incoming>| {
            req.headers_mut().remove(PEER_HEADER);
            if let Some(v) = &peer_value {
                req.headers_mut().insert(PEER_HEADER, v.clone());
            }
            req
        }));
        let conn = conn.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(tls) => match tls.accept(socket).await {
                    Ok(stream) => {
                        watcher
                            .watch(conn.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned())
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    watcher
                        .watch(conn.serve_connection_with_upgrades(TokioIo::new(socket), service).into_owned())
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("shutdown grace period over; dropping remaining connections");
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

/// The ops port: `/metrics`, `/healthz` (the process is alive), `/readyz`
/// (storage and channel answer), `/debug/pprof/profile` (a CPU profile).
fn ops_routes(gateway: Arc<Gateway>) -> Router {
    let metrics = gateway.clone();
    Router::new()
        .route("/metrics", get(move || async move { metrics.metrics().render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || readyz(gateway.clone())))
        .route("/debug/pprof/profile", get(crate::profiling::cpu_profile))
}

async fn readyz(gateway: Arc<Gateway>) -> axum::response::Response {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let check = |name: String, ping: futures::future::BoxFuture<'static, crate::model::Result<()>>| async move {
        let error = match tokio::time::timeout(TIMEOUT, ping).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {TIMEOUT:?}")),
        };
        serde_json::json!({ "provider": name, "ready": error.is_none(), "error": error })
    };
    let storage = gateway.storage().clone();
    let channel = gateway.channel().clone();
    let (s, c) = tokio::join!(
        check(storage.name().to_owned(), Box::pin(async move { storage.ping().await })),
        check(channel.name().to_owned(), Box::pin(async move { channel.ping().await })),
    );
    let ready = s["ready"] == true && c["ready"] == true;
    let status = if ready {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::json!({ "ready": ready, "storage": s, "channel": c }))).into_response()
}

//! Test support: a real gateway on random loopback ports, clients for each
//! transport, and access to the shared test backends.

use stategate::config::Config;
use stategate::proto::{event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use stategate::server::Running;
use std::net::SocketAddr;
use tonic::transport::Channel;

/// The address of a shared test backend from `STATEGATE_TEST_<NAME>_URL`.
/// Unset: the test is skipped with a printed reason, unless
/// `STATEGATE_TEST_REQUIRE_BACKENDS=1`, which makes that a failure.
pub fn backend_url(name: &str) -> Option<String> {
    let var = format!("STATEGATE_TEST_{name}_URL");
    match std::env::var(&var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("STATEGATE_TEST_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("{var} is not set but STATEGATE_TEST_REQUIRE_BACKENDS=1");
            }
            eprintln!("SKIPPED: {var} is not set; this test needs that backend");
            None
        }
    }
}

pub struct TestGateway {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    _data: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// A development-mode gateway (auth off) on sqlite in a fresh directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = dev_config(data.path());
        configure(&mut config);
        let mut gw = Self::start_config(config).await;
        gw._data = Some(data);
        gw
    }

    pub async fn start_config(config: Config) -> Self {
        let running = stategate::server::start(config).await.expect("gateway starts");
        TestGateway {
            addr: running.addr,
            ops_addr: running.ops_addr,
            running: Some(running),
            _data: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ops_url(&self) -> String {
        format!("http://{}", self.ops_addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.unwrap()
    }

    pub async fn state_client(&self) -> StateServiceClient<Channel> {
        StateServiceClient::new(self.channel().await)
    }

    pub async fn event_client(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel().await)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// Development settings on random ports with data under `dir`.
pub fn dev_config(dir: &std::path::Path) -> Config {
    let mut config = Config::defaults();
    config.dev = true;
    config.port = 0;
    config.ops_port = Some(0);
    config.data_dir = dir.to_path_buf();
    config.log_format = "text".into();
    config.sweep_interval_ms = 200;
    config
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

//! `stan`: v0.5.0's NATS Streaming channel, served over NATS.
//!
//! NATS Streaming (STAN) is end-of-life upstream and no server for it can
//! be installed where stategate is built and tested. A NATS Streaming server
//! embeds a NATS server, so `{"name":"stan","addr":…,"cluster":…}` (v0.5.0's
//! keys: `addr`, `cluster`, `client_cert_file`, `client_key_file`) connects
//! to NATS on the same address and runs the `nats` channel there: in its
//! durable mode when the server has JetStream (the successor of NATS
//! Streaming, with the same promise: publishes acknowledged by a stream, a
//! reconnected subscriber resuming where it was), else in core NATS mode.
//! `cluster` named the streaming cluster; NATS needs no such name, so it is
//! accepted and only logged. One line at start says all this.
//!
//! Every gateway of a deployment must use the same name (`stan` everywhere,
//! or `nats` with the same `prefix` and `jetstream` setting): the subjects
//! are the `nats` channel's (`<prefix>.<domain>.<type>`), not v0.5.0's
//! single `stategate` channel, so v0.5.0 gateways and these do not see each
//! other's events.

use super::nats::{Mode, NatsChannel, NatsConfig};
use crate::model::{Error, Result};
use serde::Deserialize;

/// `{"name":"stan","addr":…,"cluster":…}`; `cert_file` / `key_file` are
/// accepted for `client_cert_file` / `client_key_file`, and the `nats`
/// channel's `ca_file`, `tls` and `prefix` work too.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StanConfig {
    pub addr: String,
    pub cluster: Option<String>,
    #[serde(alias = "cert_file")]
    pub client_cert_file: Option<String>,
    #[serde(alias = "key_file")]
    pub client_key_file: Option<String>,
    pub ca_file: Option<String>,
    pub tls: bool,
    pub prefix: String,
}

impl Default for StanConfig {
    fn default() -> Self {
        let nats = NatsConfig::default();
        StanConfig {
            addr: nats.addr,
            cluster: None,
            client_cert_file: None,
            client_key_file: None,
            ca_file: None,
            tls: false,
            prefix: nats.prefix,
        }
    }
}

impl StanConfig {
    pub fn validate(&self) -> Result<()> {
        if self.cluster.as_deref() == Some("") {
            return Err(Error::invalid("cluster", "must not be empty (or leave it out)"));
        }
        self.nats().validate()
    }

    /// The `nats` channel's options for the same server.
    pub fn nats(&self) -> NatsConfig {
        NatsConfig {
            addr: self.addr.clone(),
            tls: self.tls,
            ca_file: self.ca_file.clone(),
            cert_file: self.client_cert_file.clone(),
            key_file: self.client_key_file.clone(),
            prefix: self.prefix.clone(),
            ..NatsConfig::default()
        }
    }
}

/// Connects to NATS at `addr` as the `stan` channel.
pub async fn open(config: &StanConfig) -> Result<NatsChannel> {
    config.validate()?;
    let channel = NatsChannel::open_as("stan", &config.nats(), Mode::JetStreamIfAvailable).await?;
    tracing::info!(
        addr = %config.addr,
        cluster = config.cluster.as_deref().unwrap_or("-"),
        jetstream = channel.durable(),
        "stan: NATS Streaming is end-of-life; serving the stan channel over NATS at the same address ({}); the cluster name is not used",
        if channel.durable() { "JetStream, durable" } else { "core NATS: the server has no JetStream" }
    );
    Ok(channel)
}

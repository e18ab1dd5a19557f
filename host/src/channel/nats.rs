//! `nats`: events cross instances through core NATS subjects.
//!
//! `{"name":"nats","addr":"localhost:4222"}`, plus optional credentials
//! (`"credentials"`: path of a `.creds` file; or `"user"` and `"password"`;
//! or `"token"`; or `"nkey"`: a seed), TLS (`"tls": true`, `"ca_file"`,
//! `"cert_file"` + `"key_file"` for a client certificate) and `"prefix"`
//! (default `stategate`, dot-separated tokens allowed).
//!
//! `"jetstream": true` turns on the durable mode (`jetstream.rs`, with the
//! stream options `"stream"`, `"max_age_secs"`, `"max_bytes"`,
//! `"max_msgs"`, `"replicas"`, `"storage"`): publishes are acknowledged by
//! a stream, and a subscription resumes after a disconnect from its last
//! stream sequence instead of ending. What follows describes the default,
//! core NATS mode.
//!
//! Each event goes to the subject `<prefix>.<domain>.<type>`, domain and
//! type escaped by `escape_token` so they are always exactly one token with
//! no `.`, `*` or `>`. A topic subscribes to its subject, with `*` for a
//! wildcard part: an instance receives only what its streams need.
//!
//! The client reconnects by itself and re-subscribes, but messages published
//! while it was away are lost to it. The trait asks that a broken
//! connection end the subscription (so the hub catches up from storage), so
//! every disconnect is counted and ends the subscriptions opened before it.
//! While disconnected, calls fail fast with `Unavailable` instead of
//! queueing in the client.

use super::jetstream::{Durable, StreamOptions};
use super::{Channel, Subscription, decode_event, encode_event, escape_token};
use crate::model::{Error, Event, Result, Topic};
use async_nats::connection::State;
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::watch;

/// Longest wait for any NATS call (connect, round trip).
const TIMEOUT: Duration = Duration::from_secs(2);

/// `{"name":"nats","addr":…}` and its options; `client_cert_file` and
/// `client_key_file` are v0.5.0's names for `cert_file` and `key_file`;
/// `tls_cert` / `tls_key` are accepted as v0.5.0 read them
/// (`model::spec::client_certificate`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `host:port`, a `nats://` / `tls://` URL, or several separated by commas.
    pub addr: String,
    pub credentials: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey: Option<String>,
    pub tls: bool,
    pub ca_file: Option<String>,
    #[serde(alias = "client_cert_file")]
    pub cert_file: Option<String>,
    #[serde(alias = "client_key_file")]
    pub key_file: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// v0.5.0's NATS Streaming cluster id: its `nats` provider accepted and
    /// ignored it (only `stan` used it), so it is accepted and unused here.
    pub cluster: Option<String>,
    pub prefix: String,
    /// The durable mode and its stream options (see `jetstream.rs`).
    pub jetstream: bool,
    pub stream: Option<String>,
    pub max_age_secs: Option<u64>,
    pub max_bytes: Option<i64>,
    pub max_msgs: Option<i64>,
    pub replicas: Option<usize>,
    pub storage: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            addr: "localhost:4222".to_owned(),
            credentials: None,
            user: None,
            password: None,
            token: None,
            nkey: None,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            tls_cert: None,
            tls_key: None,
            cluster: None,
            prefix: "stategate".to_owned(),
            jetstream: false,
            stream: None,
            max_age_secs: None,
            max_bytes: None,
            max_msgs: None,
            replicas: None,
            storage: None,
        }
    }
}

impl NatsConfig {
    /// The client certificate and key files, if any.
    pub fn client_certificate(&self) -> Result<Option<(String, String)>> {
        crate::model::spec::client_certificate(&self.cert_file, &self.key_file, &self.tls_cert, &self.tls_key)
    }

    pub fn validate(&self) -> Result<()> {
        if self.user.is_some() != self.password.is_some() {
            return Err(Error::invalid("user", "\"user\" and \"password\" go together"));
        }
        self.client_certificate()?;
        let bad_token = |t: &str| t.is_empty() || t.contains(['*', '>']) || t.chars().any(char::is_whitespace);
        if self.prefix.split('.').any(bad_token) {
            return Err(Error::invalid(
                "prefix",
                format!("{:?} is not a NATS subject prefix (dot-separated tokens, no wildcards or spaces)", self.prefix),
            ));
        }
        let stream = self.stream_options();
        if !self.jetstream && !stream.is_default() {
            return Err(Error::invalid("jetstream", "stream options (stream, max_age_secs, max_bytes, max_msgs, replicas, storage) need \"jetstream\": true"));
        }
        stream.validate()
    }

    pub fn stream_options(&self) -> StreamOptions {
        StreamOptions {
            stream: self.stream.clone(),
            max_age_secs: self.max_age_secs,
            max_bytes: self.max_bytes,
            max_msgs: self.max_msgs,
            replicas: self.replicas,
            storage: self.storage.clone(),
        }
    }
}

/// Which NATS the channel uses: core subjects, a JetStream stream, or
/// JetStream when the server has it (`stan`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Core,
    JetStream,
    JetStreamIfAvailable,
}

pub struct NatsChannel {
    /// `nats`, or `stan` when serving that name.
    name: &'static str,
    client: async_nats::Client,
    /// The durable mode's stream, if on.
    durable: Option<Durable>,
    prefix: String,
    /// Disconnects so far; a subscription ends when it changes.
    disconnects: watch::Receiver<u64>,
}

impl NatsChannel {
    /// Connects; fails if the server does not answer within `TIMEOUT`.
    pub async fn open(config: &NatsConfig) -> Result<Self> {
        let mode = if config.jetstream { Mode::JetStream } else { Mode::Core };
        Self::open_as("nats", config, mode).await
    }

    /// Connects in `mode`, reporting itself as `name`.
    pub async fn open_as(name: &'static str, config: &NatsConfig, mode: Mode) -> Result<Self> {
        config.validate()?;
        let (count_tx, disconnects) = watch::channel(0u64);
        let mut options = async_nats::ConnectOptions::new()
            .name("stategate")
            .connection_timeout(TIMEOUT)
            .request_timeout(Some(TIMEOUT))
            .max_reconnects(None)
            // Come back quickly once the server is back.
            .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(1000)))
            .event_callback(move |event| {
                let count_tx = count_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("nats: disconnected; reconnecting");
                            count_tx.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Connected => tracing::info!("nats: connected"),
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            });
        if let Some(path) = &config.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| Error::invalid("credentials", format!("{path}: {e}")))?;
        }
        if let (Some(u), Some(p)) = (&config.user, &config.password) {
            options = options.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &config.token {
            options = options.token(t.clone());
        }
        if let Some(seed) = &config.nkey {
            options = options.nkey(seed.clone());
        }
        if config.tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.into());
        }
        if let Some((cert, key)) = config.client_certificate()? {
            // A client certificate means TLS, as in v0.5.0 (nats.ClientCert).
            options = options.require_tls(true).add_client_certificate(cert.into(), key.into());
        }
        let addrs: Vec<async_nats::ServerAddr> = config
            .addr
            .split(',')
            .map(|a| {
                let a = a.trim();
                a.parse()
                    .map_err(|e| Error::invalid("addr", format!("{a:?} is not a NATS address: {e}")))
            })
            .collect::<Result<_>>()?;
        let client = tokio::time::timeout(TIMEOUT * 2, options.connect(addrs))
            .await
            .map_err(|_| Error::unavailable(format!("nats: no connection to {} within {:?}", config.addr, TIMEOUT * 2)))?
            .map_err(|e| Error::unavailable(format!("nats: cannot connect to {}: {e}", config.addr)))?;
        let jetstream = match mode {
            Mode::Core => false,
            Mode::JetStream => true,
            Mode::JetStreamIfAvailable => Durable::available(client.clone()).await,
        };
        let durable = match jetstream {
            true => Some(Durable::open(client.clone(), &config.prefix, &config.stream_options()).await?),
            false => None,
        };
        Ok(NatsChannel {
            name,
            client,
            durable,
            prefix: config.prefix.clone(),
            disconnects,
        })
    }

    /// Whether the durable (JetStream) mode is on.
    pub fn durable(&self) -> bool {
        self.durable.is_some()
    }

    fn connected(&self) -> Result<()> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(Error::unavailable(format!("nats: {state:?}; reconnecting"))),
        }
    }

    /// A round trip through the server: a message to our own inbox comes
    /// back only after the server processed everything sent before it.
    async fn round_trip(&self) -> Result<()> {
        self.connected()?;
        let run = async {
            let inbox = self.client.new_inbox();
            let mut sub = self.client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
            self.client.publish(inbox, bytes::Bytes::new()).await.map_err(|e| e.to_string())?;
            self.client.flush().await.map_err(|e| e.to_string())?;
            sub.next().await.ok_or_else(|| "connection closed".to_owned())?;
            let _ = sub.unsubscribe().await;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(TIMEOUT, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::unavailable(format!("nats: {e}"))),
            Err(_) => Err(Error::unavailable(format!("nats: no answer within {TIMEOUT:?}"))),
        }
    }
}

#[async_trait]
impl Channel for NatsChannel {
    fn name(&self) -> &str {
        self.name
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        let subject = format!(
            "{}.{}.{}",
            self.prefix,
            escape_token(&event.record.domain),
            escape_token(&event.record.ty)
        );
        let payload = encode_event(event);
        if let Some(durable) = &self.durable {
            // No fast failure while disconnected: the client holds the
            // message until it reconnects (bounded by the durable publish).
            return durable.publish(subject, event, payload.into()).await;
        }
        self.connected()?;
        match tokio::time::timeout(TIMEOUT, self.client.publish(subject, payload.into())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::unavailable(format!("nats publish: {e}"))),
            Err(_) => Err(Error::unavailable(format!("nats publish: no answer within {TIMEOUT:?}"))),
        }
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription> {
        let part = |p: &Option<String>| p.as_deref().map_or_else(|| "*".to_owned(), escape_token);
        let subject = format!("{}.{}.{}", self.prefix, part(&topic.domain), part(&topic.ty));
        if let Some(durable) = &self.durable {
            self.connected()?;
            return durable.subscribe(subject, topic, self.disconnects.clone()).await;
        }
        let mut disconnects = self.disconnects.clone();
        disconnects.mark_unchanged();
        self.connected()?;
        let sub = tokio::time::timeout(TIMEOUT, self.client.subscribe(subject))
            .await
            .map_err(|_| Error::unavailable("nats subscribe: no answer"))?
            .map_err(|e| Error::unavailable(format!("nats subscribe: {e}")))?;
        // Active only once the server has processed the SUB.
        self.round_trip().await?;
        let topic = topic.clone();
        let stream = futures::stream::unfold(Some((sub, disconnects)), move |state| {
            let topic = topic.clone();
            async move {
                let (mut sub, mut disconnects) = state?;
                loop {
                    tokio::select! {
                        msg = sub.next() => {
                            let msg = msg?;
                            match decode_event(&msg.payload) {
                                Ok(e) if topic.matches(&e.record) => return Some((Ok(e), Some((sub, disconnects)))),
                                Ok(_) => {}
                                Err(e) => tracing::warn!(error = %e, subject = %msg.subject, "dropping a malformed nats message"),
                            }
                        }
                        _ = disconnects.changed() => {
                            let err = Error::unavailable("nats: the connection broke; events may have been missed");
                            return Some((Err(err), None));
                        }
                    }
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn ping(&self) -> Result<()> {
        self.round_trip().await
    }
}

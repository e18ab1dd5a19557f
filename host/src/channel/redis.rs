//! `redis`: events cross instances through Redis pub/sub.
//!
//! `{"name":"redis","addr":"localhost:6379"}`, plus optional `"password"`,
//! `"username"` (Redis 6 ACL), `"db"` (a number), `"tls": true` (connect
//! with TLS, `rediss://`), `"cert_file"` + `"key_file"` (a client
//! certificate, PEM; implies TLS) and `"prefix"` (default `stategate`).
//! v0.5.0's keys are accepted with its meaning: `user` (the username),
//! `client_cert_file` + `client_key_file` (the client certificate), and
//! `tls_cert` + `tls_key`, which v0.5.0 loaded as that certificate.
//!
//! Each event goes to the channel `<prefix>:<domain>:<type>` (domain and
//! type escaped by `escape_token`, so they hold no `:` and no glob
//! character). A topic subscribes to exactly its channel, or to a pattern
//! (`<prefix>:*:<type>`, `<prefix>:<domain>:*`, `<prefix>:*:*`) when it has
//! wildcards: an instance receives only what its streams need.
//!
//! Publishing uses a `ConnectionManager`, which reconnects by itself; each
//! subscription has its own pub/sub connection, whose stream ends when the
//! connection breaks (the hub then catches up from storage and subscribes
//! again). Every call is bounded by `TIMEOUT`, so while Redis is down calls
//! fail fast with `Unavailable`.
//!
//! Pub/sub is fire-and-forget: a message published while a subscriber is
//! reconnecting is lost to it. That is fine here: the channel is not the
//! source of truth, and the hub delivers such events from storage.

use super::{Channel, Subscription, decode_event, encode_event, escape_token};
use crate::model::{Error, Event, Result, Topic};
use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo};
use serde::Deserialize;
use std::time::Duration;

/// Longest wait for any Redis call (connect, publish, subscribe, ping).
const TIMEOUT: Duration = Duration::from_secs(2);

/// `{"name":"redis","addr":…}` and its options; `user` is v0.5.0's name
/// for `username`, `client_cert_file` / `client_key_file` its names for
/// `cert_file` / `key_file`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `host:port` (or a full `redis://` / `rediss://` URL).
    pub addr: String,
    #[serde(alias = "user")]
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database number (a number, or a string holding one).
    #[serde(deserialize_with = "database_number")]
    pub db: i64,
    pub tls: bool,
    /// A client certificate (PEM) and its key, for servers that ask for one.
    #[serde(alias = "client_cert_file")]
    pub cert_file: Option<String>,
    #[serde(alias = "client_key_file")]
    pub key_file: Option<String>,
    /// v0.5.0 loaded its client certificate from these keys (see
    /// `model::spec::client_certificate`).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addr: "localhost:6379".to_owned(),
            username: None,
            password: None,
            db: 0,
            tls: false,
            cert_file: None,
            key_file: None,
            tls_cert: None,
            tls_key: None,
            prefix: "stategate".to_owned(),
        }
    }
}

impl RedisConfig {
    pub fn validate(&self) -> Result<()> {
        if self.prefix.is_empty() {
            return Err(Error::invalid("prefix", "must not be empty"));
        }
        self.client_certificate()?;
        Ok(())
    }

    /// The client certificate and key files, if any.
    pub fn client_certificate(&self) -> Result<Option<(String, String)>> {
        crate::model::spec::client_certificate(&self.cert_file, &self.key_file, &self.tls_cert, &self.tls_key)
    }
}

fn database_number<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match &v {
        serde_json::Value::Null => Some(0),
        other => other.as_i64().or_else(|| other.as_str().and_then(|s| s.parse().ok())),
    }
    .filter(|n| *n >= 0)
    .ok_or_else(|| serde::de::Error::custom(format!("db must be a database number >= 0, got {v}")))
}

pub struct RedisChannel {
    client: redis::Client,
    publisher: ConnectionManager,
    prefix: String,
}

impl RedisChannel {
    /// Connects; fails if Redis does not answer within `TIMEOUT`.
    pub async fn open(config: &RedisConfig) -> Result<Self> {
        config.validate()?;
        let url = if config.addr.contains("://") {
            config.addr.clone()
        } else {
            format!("{}://{}", if config.tls { "rediss" } else { "redis" }, config.addr)
        };
        let mut info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| Error::invalid("addr", format!("{:?} is not a Redis address: {e}", config.addr)))?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &config.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &config.password {
            settings = settings.set_password(p);
        }
        if config.db != 0 {
            settings = settings.set_db(config.db);
        }
        info = info.set_redis_settings(settings);
        let client = match config.client_certificate()? {
            None => redis::Client::open(info),
            Some((cert, key)) => {
                // A client certificate means TLS, as in v0.5.0.
                if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                    let tls_url = format!("rediss://{}", config.addr.split_once("://").map_or(config.addr.as_str(), |(_, a)| a));
                    let settings = info.redis_settings().clone();
                    info = tls_url
                        .as_str()
                        .into_connection_info()
                        .map_err(|e| Error::invalid("addr", e.to_string()))?
                        .set_redis_settings(settings);
                }
                let read = |field: &'static str, path: &str| {
                    std::fs::read(path).map_err(|e| Error::invalid(field, format!("{path}: {e}")))
                };
                let certs = redis::TlsCertificates {
                    client_tls: Some(redis::ClientTlsConfig {
                        client_cert: read("cert_file", &cert)?,
                        client_key: read("key_file", &key)?,
                    }),
                    root_cert: None,
                };
                redis::Client::build_with_tls(info, certs)
            }
        }
        .map_err(|e| Error::invalid("addr", e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let publisher = bounded("connect", client.get_connection_manager_with_config(manager)).await?;
        Ok(RedisChannel {
            client,
            publisher,
            prefix: escape_token(&config.prefix),
        })
    }

    fn channel_of(&self, event: &Event) -> String {
        format!("{}:{}:{}", self.prefix, escape_token(&event.record.domain), escape_token(&event.record.ty))
    }
}

async fn bounded<T>(what: &str, f: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::unavailable(format!("redis {what}: {e}"))),
        Err(_) => Err(Error::unavailable(format!("redis {what}: no answer within {TIMEOUT:?}"))),
    }
}

#[async_trait]
impl Channel for RedisChannel {
    fn name(&self) -> &str {
        "redis"
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        let mut conn = self.publisher.clone();
        let channel = self.channel_of(event);
        let payload = encode_event(event);
        bounded("publish", async move { conn.publish::<_, _, i64>(channel, payload).await }).await?;
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription> {
        let part = |p: &Option<String>| p.as_deref().map_or_else(|| "*".to_owned(), escape_token);
        let name = format!("{}:{}:{}", self.prefix, part(&topic.domain), part(&topic.ty));
        let exact = topic.domain.is_some() && topic.ty.is_some();
        let client = self.client.clone();
        let pubsub = bounded("subscribe", async move {
            let mut pubsub = client.get_async_pubsub().await?;
            // SUBSCRIBE answers once the server registered it: from here on
            // every publish reaches this connection.
            if exact {
                pubsub.subscribe(&name).await?;
            } else {
                pubsub.psubscribe(&name).await?;
            }
            Ok(pubsub)
        })
        .await?;
        let topic = topic.clone();
        let stream = pubsub
            .into_on_message()
            .filter_map(move |msg| {
                let out = match decode_event(msg.get_payload_bytes()) {
                    Ok(e) if topic.matches(&e.record) => Some(Ok(e)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, channel = msg.get_channel_name(), "dropping a malformed redis message");
                        None
                    }
                };
                futures::future::ready(out)
            });
        // The stream ends when the connection breaks, as the trait asks.
        Ok(stream.boxed())
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.publisher.clone();
        bounded("ping", async move { redis::cmd("PING").query_async::<String>(&mut conn).await }).await?;
        Ok(())
    }
}

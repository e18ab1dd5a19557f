//! Channel providers: how an event appended on one gateway instance reaches
//! the streams of every instance.
//!
//! A channel is a best-effort broadcast; it is not the source of truth. The
//! hub repairs what a channel may do wrong (lose, duplicate or reorder
//! events) from storage, so a provider only has to keep two promises:
//! - when `subscribe` returns, the subscription is active: anything published
//!   after that reaches it, unless the connection breaks;
//! - when the connection breaks, the subscription's stream ends (or yields an
//!   error), so the hub knows to catch up from storage.

#[cfg(feature = "nats")]
pub mod jetstream;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "amqp")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "nats")]
pub mod stan;
#[cfg(any(feature = "kafka", feature = "amqp"))]
mod tls;
#[cfg(feature = "wasm")]
pub mod wasm;

use crate::model::{Error, Event, Result, Topic};
use crate::wasm::WasmRuntime;
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::sync::Arc;

/// Events received by a subscription; ends when the subscription breaks.
pub type Subscription = BoxStream<'static, Result<Event>>;

#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The provider's name, for logs, metrics and `/readyz`.
    fn name(&self) -> &str;

    /// Broadcasts an event to the subscribers of its domain and type.
    async fn publish(&self, event: &Event) -> Result<()>;

    /// Receives events of a topic (`None` parts are wildcards).
    async fn subscribe(&self, topic: &Topic) -> Result<Subscription>;

    /// Cheap round trip to the backend, for `/readyz`.
    async fn ping(&self) -> Result<()>;
}

pub type DynChannel = Arc<dyn Channel>;

crate::provider_spec! {
    /// `STATEGATE_CHANNEL_PROVIDER`, parsed once when the configuration is read:
    /// one variant per provider, each with its own typed options, unknown keys
    /// refused (naming the key and listing the known ones). Each options struct
    /// builds its provider.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ChannelSpec {
        /// In-process only: the default, for one instance.
        Inmem(memory::MemoryConfig) = "inmem" | "memory",
        Redis(redis::RedisConfig) = "redis" if feature = "redis",
        Nats(nats::NatsConfig) = "nats" if feature = "nats",
        Kafka(kafka::KafkaConfig) = "kafka" if feature = "kafka",
        RabbitMq(rabbitmq::RabbitMqConfig) = "rabbitmq" | "amqp" if feature = "amqp",
        /// v0.5.0's NATS Streaming, served over NATS (see `stan.rs`).
        Stan(stan::StanConfig) = "stan" if feature = "nats",
        Wasm(wasm::WasmChannelConfig) = "wasm" if feature = "wasm",
    }
}

impl Default for ChannelSpec {
    fn default() -> Self {
        ChannelSpec::Inmem(memory::MemoryConfig::default())
    }
}

impl ChannelSpec {
    /// Parses and checks the JSON object of `STATEGATE_CHANNEL_PROVIDER`.
    pub fn parse(text: &str) -> Result<ChannelSpec> {
        let spec: ChannelSpec = crate::model::spec::parse("STATEGATE_CHANNEL_PROVIDER", text, &[])?;
        let checked: std::result::Result<(), Error> = match &spec {
            #[cfg(feature = "redis")]
            ChannelSpec::Redis(c) => c.validate(),
            #[cfg(feature = "nats")]
            ChannelSpec::Nats(c) => c.validate(),
            #[cfg(feature = "kafka")]
            ChannelSpec::Kafka(c) => c.validate(),
            #[cfg(feature = "amqp")]
            ChannelSpec::RabbitMq(c) => c.validate(),
            #[cfg(feature = "nats")]
            ChannelSpec::Stan(c) => c.validate(),
            _ => Ok(()),
        };
        checked.map_err(|e| Error::invalid("STATEGATE_CHANNEL_PROVIDER", e.to_string()))?;
        Ok(spec)
    }


    /// Where the provider reaches its broker, for the start-up summary
    /// (passwords in addresses replaced by `***`).
    #[cfg_attr(not(any(feature = "redis", feature = "nats", feature = "kafka", feature = "amqp")), allow(unused_variables))]
    pub fn location(&self) -> String {
        let addr = crate::model::spec::redacted_address;
        match self {
            ChannelSpec::Inmem(_) => "in-process (this instance only)".to_owned(),
            #[cfg(feature = "redis")]
            ChannelSpec::Redis(c) => addr(&c.addr),
            #[cfg(feature = "nats")]
            ChannelSpec::Nats(c) => addr(&c.addr),
            #[cfg(feature = "kafka")]
            ChannelSpec::Kafka(c) => format!("{} topic {}", addr(&c.addr), c.topic),
            #[cfg(feature = "amqp")]
            ChannelSpec::RabbitMq(c) => format!("{} exchange {}", addr(&c.addr), c.exchange),
            #[cfg(feature = "nats")]
            ChannelSpec::Stan(c) => addr(&c.addr),
            #[cfg(feature = "wasm")]
            ChannelSpec::Wasm(c) => c.guest.path.display().to_string(),
        }
    }

    /// Connects the provider; `wasm` runs a wasm provider.
    #[cfg_attr(not(feature = "wasm"), allow(unused_variables))]
    pub async fn open(&self, wasm: &WasmRuntime) -> Result<DynChannel> {
        Ok(match self {
            ChannelSpec::Inmem(_) => Arc::new(memory::MemoryChannel::new()),
            #[cfg(feature = "redis")]
            ChannelSpec::Redis(c) => Arc::new(redis::RedisChannel::open(c).await?),
            #[cfg(feature = "nats")]
            ChannelSpec::Nats(c) => Arc::new(nats::NatsChannel::open(c).await?),
            #[cfg(feature = "kafka")]
            ChannelSpec::Kafka(c) => Arc::new(kafka::KafkaChannel::open(c).await?),
            #[cfg(feature = "amqp")]
            ChannelSpec::RabbitMq(c) => Arc::new(rabbitmq::RabbitMqChannel::open(c).await?),
            #[cfg(feature = "nats")]
            ChannelSpec::Stan(c) => Arc::new(stan::open(c).await?),
            #[cfg(feature = "wasm")]
            ChannelSpec::Wasm(c) => Arc::new(wasm::WasmChannel::open(c, wasm).await?),
        })
    }
}

/// The bytes of an event on a broker: its proto3 JSON form (`model::json`).
pub fn encode_event(event: &Event) -> Vec<u8> {
    serde_json::to_vec(&crate::model::json::event(event)).unwrap_or_default()
}

pub fn decode_event(bytes: &[u8]) -> Result<Event> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("a broker message is not an event: {e}")))?;
    crate::model::json::parse_event(&value)
}

/// Escapes a domain or type into a broker name token that holds only
/// `[A-Za-z0-9_-]` and `%XX` escapes: no separator (`.`, `:`), wildcard
/// (`*`, `>`, `?`, `[`) or white space of any broker syntax survives, and
/// distinct names stay distinct.
pub fn escape_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A subscription fed by an in-process broadcast of every event of the
/// channel: keeps those of `topic`, and ends after the first error (a
/// subscriber that lagged behind the buffer), as the trait promises.
pub(crate) fn broadcast_subscription(rx: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>, topic: Topic) -> Subscription {
    use futures::StreamExt;
    use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
    BroadcastStream::new(rx)
        .filter_map(move |item| {
            let out = match item {
                Ok(e) if topic.matches(&e.record) => Some(Ok(Event::clone(&e))),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Err(Error::ResourceExhausted(format!("subscriber lagged by {n} events"))))
                }
            };
            futures::future::ready(out)
        })
        .scan(false, |failed, item| {
            let out = if *failed { None } else { Some(item) };
            if matches!(out, Some(Err(_))) {
                *failed = true;
            }
            futures::future::ready(out)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_tokens_are_safe_and_distinct() {
        let names = ["a.b", "a%2Eb", "a*", "a>", "a b", "a:b", "é", "a_b-C9"];
        let escaped: Vec<String> = names.iter().map(|n| escape_token(n)).collect();
        for e in &escaped {
            assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-%".contains(&b)), "{e}");
        }
        let unique: std::collections::HashSet<_> = escaped.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(escape_token("a_b-C9"), "a_b-C9");
    }

    #[cfg(any(feature = "kafka", feature = "amqp", feature = "nats"))]
    fn refused(text: &str) -> String {
        match ChannelSpec::parse(text) {
            Err(Error::InvalidArgument { field, reason }) => format!("{field}: {reason}"),
            other => panic!("{text} was not refused: {other:?}"),
        }
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_takes_v050_keys_and_checks_its_options() {
        let spec = ChannelSpec::parse(r#"{"name":"kafka","addr":"k1:9092, k2:9093","client_cert_file":"c.pem","client_key_file":"k.pem"}"#).unwrap();
        let ChannelSpec::Kafka(k) = spec else { panic!("{spec:?}") };
        assert_eq!((k.topic.as_str(), k.cert_file.as_deref(), k.key_file.as_deref()), ("stategate", Some("c.pem"), Some("k.pem")));
        for (bad, names) in [
            (r#"{"name":"kafka","addr":"k1"}"#, "host:port"),
            (r#"{"name":"kafka","addr":"k:9092","topic":"a b"}"#, "topic"),
            (r#"{"name":"kafka","addr":"k:9092","partitions":0}"#, "partitions"),
            (r#"{"name":"kafka","addr":"k:9092","sasl_mechanism":"GSSAPI","sasl_username":"u","sasl_password":"p"}"#, "GSSAPI"),
            (r#"{"name":"kafka","addr":"k:9092","sasl_mechanism":"PLAIN"}"#, "sasl_username"),
            (r#"{"name":"kafka","addr":"k:9092","sasl_username":"u"}"#, "sasl_mechanism"),
            (r#"{"name":"kafka","addr":"k:9092","cert_file":"c.pem"}"#, "key_file"),
            (r#"{"name":"kafka","addr":"k:9092","group":"g"}"#, "group"),
            (r#"{"name":"kafka","addr":"k:9092","fetch_wait_ms":0}"#, "fetch_wait_ms"),
            (r#"{"name":"kafka","addr":"k:9092","fetch_wait_ms":60000}"#, "fetch_wait_ms"),
        ] {
            let e = refused(bad);
            assert!(e.contains(names), "{bad}: {e}");
        }
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn rabbitmq_reads_its_url_and_checks_its_options() {
        for name in ["rabbitmq", "amqp"] {
            let spec = ChannelSpec::parse(&format!(r#"{{"name":"{name}","addr":"amqp://u%40x:p%2Fw@h:5673/%2f"}}"#)).unwrap();
            let ChannelSpec::RabbitMq(r) = spec else { panic!("{spec:?}") };
            assert_eq!(r.exchange, "stategate");
        }
        for (bad, names) in [
            (r#"{"name":"rabbitmq","addr":"http://h/"}"#, "scheme"),
            (r#"{"name":"rabbitmq","addr":"not a url"}"#, "addr"),
            (r#"{"name":"rabbitmq","addr":"amqp://h/%zz"}"#, "escape"),
            (r#"{"name":"rabbitmq","addr":"amqp://h/","exchange":"amq.topic"}"#, "exchange"),
            (r#"{"name":"amqp","addr":"amqp://h/","queue":"q"}"#, "queue"),
        ] {
            let e = refused(bad);
            assert!(e.contains(names), "{bad}: {e}");
        }
    }

    #[cfg(feature = "nats")]
    #[test]
    fn nats_durable_mode_and_stan_options() {
        let spec = ChannelSpec::parse(r#"{"name":"nats","addr":"n:4222","jetstream":true,"stream":"EVENTS","max_age_secs":60,"storage":"memory"}"#).unwrap();
        let ChannelSpec::Nats(n) = spec else { panic!("{spec:?}") };
        assert!(n.jetstream);
        assert_eq!(n.stream.as_deref(), Some("EVENTS"));
        for (bad, names) in [
            (r#"{"name":"nats","addr":"n:4222","stream":"EVENTS"}"#, "jetstream"),
            (r#"{"name":"nats","addr":"n:4222","jetstream":true,"stream":"a.b"}"#, "stream"),
            (r#"{"name":"nats","addr":"n:4222","jetstream":true,"storage":"disk"}"#, "storage"),
            (r#"{"name":"nats","addr":"n:4222","jetstream":true,"replicas":0}"#, "replicas"),
            (r#"{"name":"stan","addr":"n:4222","cluster":""}"#, "cluster"),
            (r#"{"name":"stan","addr":"n:4222","client_id":"x"}"#, "client_id"),
        ] {
            let e = refused(bad);
            assert!(e.contains(names), "{bad}: {e}");
        }
        let spec = ChannelSpec::parse(r#"{"name":"stan","addr":"nats://n:4222","cluster":"test-cluster","client_cert_file":"c.pem","client_key_file":"k.pem"}"#).unwrap();
        let ChannelSpec::Stan(s) = spec else { panic!("{spec:?}") };
        let nats = s.nats();
        assert_eq!((nats.addr.as_str(), nats.cert_file.as_deref(), nats.jetstream), ("nats://n:4222", Some("c.pem"), false));
    }
}

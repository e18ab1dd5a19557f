//! `kafka`: events cross instances through one Kafka topic.
//!
//! `{"name":"kafka","addr":"host:9092"}` as v0.5.0 configured it, plus
//! options: `"topic"` (default `stategate`), several bootstrap brokers in
//! `addr` separated by commas, `"partitions"` and `"replication_factor"`
//! (used only when the gateway creates a missing topic; default 1 and 1),
//! TLS (`"tls": true`, `"ca_file"`, `"cert_file"` + `"key_file"`, v0.5.0's
//! `client_cert_file` / `client_key_file` as aliases; a client certificate
//! or a CA file implies TLS) and SASL (`"sasl_mechanism"`: `PLAIN`,
//! `SCRAM-SHA-256` or `SCRAM-SHA-512`, with `"sasl_username"` and
//! `"sasl_password"`), and `"fetch_wait_ms"` (see Reading).
//!
//! **Client.** [rskafka](https://docs.rs/rskafka): pure Rust, so no C
//! toolchain and no librdkafka on any build (the `rdkafka` crate compiles its
//! bundled librdkafka on every clean build, and Debian's librdkafka 2.0.2
//! cannot talk to the Tansu broker the tests use), TLS through rustls on
//! `ring` like the rest of the gateway. It has no consumer groups, which we
//! do not want anyway, and no compression codecs are built in: gateways
//! write uncompressed records, and only gateways write to the topic.
//!
//! **Publishing.** Each event is one record, keyed by its record (domain,
//! type and key), in partition `fnv1a(key) % partitions`: all events of a
//! record go to one partition, so they keep their order. A publish returns
//! once the leader has it and every in-sync replica has acknowledged it
//! (`acks = all`, rskafka's only mode); `min.insync.replicas` on the topic
//! decides how many replicas that is at least.
//!
//! **Reading.** Every gateway must see every event, so there is no consumer
//! group: one reader task per gateway fetches every partition from its own
//! position, starting at the end of each partition when it starts, and
//! broadcasts to the subscriptions in the process, which filter by topic.
//! A fetch asks the broker to hold it open for up to `fetch_wait_ms`
//! (default 100) while a partition has nothing new. Apache Kafka answers
//! such a fetch as soon as a record arrives, so the wait costs no latency
//! there; Tansu 0.6 (the test broker) holds it for the whole wait, which
//! makes the wait the delivery latency's floor (measured: a 2 s wait gave a
//! 500 ms p50, a 20 ms wait 12 ms). A shorter wait costs more idle fetch
//! requests: one per partition per wait per gateway.
//! A subscription is active when `subscribe` returns: the reader's position
//! is at or before the end of each partition at that moment, so anything
//! published later reaches it. (It may also receive a few events published
//! just before it; the hub drops what it already has.)
//!
//! **Faults.** rskafka reconnects by itself; every call here is bounded by
//! `TIMEOUT`. When a fetch fails (broker gone, partition moved beyond
//! reach, offsets reset by a broker that lost its data), the reader ends,
//! which ends every subscription (the trait's promise: the hub then catches
//! up from storage and subscribes again, which starts a new reader at the
//! partitions' ends). A publish or a fetch that finds the topic gone (a
//! broker with in-memory storage restarted) creates it again. The partition
//! count is read at start: restart the gateways after adding partitions.

use super::tls::{TlsFiles, client_config};
use super::{Channel, Subscription, decode_event, encode_event};
use crate::model::{Error, Event, Result, Topic};
use async_trait::async_trait;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Longest wait for any Kafka call (connect, produce, metadata, offsets).
const TIMEOUT: Duration = Duration::from_secs(3);
/// The longest `fetch_wait_ms` accepted (Kafka's own request timeout
/// default is 30 s; past a few seconds a held fetch only delays noticing a
/// broker that is gone).
const MAX_FETCH_WAIT_MS: i32 = 10_000;
/// At most this many bytes per fetch of one partition.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;
/// Events buffered for a subscription that is behind (as `inmem`).
const CAPACITY: usize = 16 * 1024;

/// `{"name":"kafka","addr":…}` and its options (see the module doc).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`, separated by commas.
    pub addr: String,
    pub topic: String,
    /// Partitions of the topic when the gateway creates it.
    pub partitions: i32,
    /// Replication factor of the topic when the gateway creates it.
    pub replication_factor: i16,
    pub tls: bool,
    pub ca_file: Option<String>,
    #[serde(alias = "client_cert_file")]
    pub cert_file: Option<String>,
    #[serde(alias = "client_key_file")]
    pub key_file: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    /// How long the broker may hold a fetch open while a partition has
    /// nothing new, in milliseconds (see the module doc).
    pub fetch_wait_ms: i32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            addr: "localhost:9092".to_owned(),
            topic: "stategate".to_owned(),
            partitions: 1,
            replication_factor: 1,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            fetch_wait_ms: 100,
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<()> {
        if self.brokers().is_empty() {
            return Err(Error::invalid("addr", "no broker address (host:port, separated by commas)"));
        }
        if let Some(bad) = self.brokers().into_iter().find(|b| b.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())) {
            return Err(Error::invalid("addr", format!("{bad:?} is not host:port")));
        }
        // Kafka's own rule for topic names.
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.topic.is_empty() || self.topic.len() > 249 || !self.topic.chars().all(legal) || self.topic == "." || self.topic == ".." {
            return Err(Error::invalid("topic", format!("{:?} is not a Kafka topic name ([A-Za-z0-9._-], 1 to 249 characters)", self.topic)));
        }
        if self.partitions < 1 {
            return Err(Error::invalid("partitions", "must be at least 1"));
        }
        if self.replication_factor < 1 {
            return Err(Error::invalid("replication_factor", "must be at least 1"));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::invalid("cert_file", "\"cert_file\" and \"key_file\" go together"));
        }
        if !(1..=MAX_FETCH_WAIT_MS).contains(&self.fetch_wait_ms) {
            return Err(Error::invalid("fetch_wait_ms", format!("{} is not between 1 and {MAX_FETCH_WAIT_MS}", self.fetch_wait_ms)));
        }
        self.sasl()?;
        Ok(())
    }

    fn brokers(&self) -> Vec<String> {
        self.addr.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect()
    }

    fn uses_tls(&self) -> bool {
        self.tls || self.ca_file.is_some() || self.cert_file.is_some()
    }

    fn sasl(&self) -> Result<Option<SaslConfig>> {
        let Some(mechanism) = &self.sasl_mechanism else {
            if self.sasl_username.is_some() || self.sasl_password.is_some() {
                return Err(Error::invalid("sasl_mechanism", "SASL credentials need a \"sasl_mechanism\" (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"));
            }
            return Ok(None);
        };
        let (Some(user), Some(password)) = (&self.sasl_username, &self.sasl_password) else {
            return Err(Error::invalid("sasl_username", "SASL needs \"sasl_username\" and \"sasl_password\""));
        };
        let credentials = Credentials::new(user.clone(), password.clone());
        Ok(Some(match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => SaslConfig::Plain(credentials),
            "SCRAM-SHA-256" => SaslConfig::ScramSha256(credentials),
            "SCRAM-SHA-512" => SaslConfig::ScramSha512(credentials),
            other => {
                return Err(Error::invalid("sasl_mechanism", format!("{other:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")));
            }
        }))
    }
}

pub struct KafkaChannel {
    client: Client,
    config: KafkaConfig,
    /// One client per partition, in partition order (fixed at start).
    partitions: Vec<Arc<PartitionClient>>,
    /// The running reader's sender, held weakly: the reader task owns the
    /// only strong one, so its end closes every subscription.
    reader: Mutex<Option<broadcast::WeakSender<Arc<Event>>>>,
    /// The reader task, stopped when the channel is dropped.
    reader_task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for KafkaChannel {
    fn drop(&mut self) {
        if let Some(task) = self.reader_task.lock().unwrap().take() {
            task.abort();
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("kafka {what}: {e}"))
}

/// Runs a Kafka call bounded by `TIMEOUT`.
async fn bounded<T>(what: &str, f: impl Future<Output = std::result::Result<T, KafkaError>>) -> Result<T> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, format!("no answer within {TIMEOUT:?}"))),
    }
}

fn topic_missing(e: &KafkaError) -> bool {
    matches!(e, KafkaError::ServerError { protocol_error: ProtocolError::UnknownTopicOrPartition, .. })
}

impl KafkaChannel {
    /// Connects, creates the topic if it is missing and reads its
    /// partitions; fails if the brokers do not answer within a few seconds.
    pub async fn open(config: &KafkaConfig) -> Result<Self> {
        config.validate()?;
        let mut builder = ClientBuilder::new(config.brokers())
            .client_id("stategate")
            // rskafka retries failed calls; stop before our own bound.
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
                deadline: Some(TIMEOUT),
            });
        if config.uses_tls() {
            let files = TlsFiles {
                ca_file: config.ca_file.as_deref(),
                cert_file: config.cert_file.as_deref(),
                key_file: config.key_file.as_deref(),
            };
            builder = builder.tls_config(client_config(&files)?);
        }
        if let Some(sasl) = config.sasl()? {
            builder = builder.sasl_config(sasl);
        }
        let client = bounded("connect", builder.build())
            .await
            .map_err(|e| e.at(format_args!("brokers {}", config.addr)))?;
        let count = ensure_topic(&client, config).await?;
        let mut partitions = Vec::with_capacity(count);
        for p in 0..count as i32 {
            let pc = bounded("partition", client.partition_client(config.topic.clone(), p, UnknownTopicHandling::Error)).await?;
            partitions.push(Arc::new(pc));
        }
        tracing::info!(topic = %config.topic, partitions = count, brokers = %config.addr, "kafka channel ready");
        Ok(KafkaChannel {
            client,
            config: config.clone(),
            partitions,
            reader: Mutex::new(None),
            reader_task: Mutex::new(None),
        })
    }

    /// The partition of a record: FNV-1a of its key bytes. Only gateways
    /// write the topic, so only they need to agree on it.
    fn partition_of(&self, key: &[u8]) -> usize {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        (h % self.partitions.len() as u64) as usize
    }

    /// The running reader's sender, starting a reader at the end of every
    /// partition if none runs.
    async fn reader(&self) -> Result<broadcast::Sender<Arc<Event>>> {
        if let Some(tx) = self.reader.lock().unwrap().as_ref().and_then(|w| w.upgrade()) {
            return Ok(tx);
        }
        let mut starts = Vec::with_capacity(self.partitions.len());
        for pc in &self.partitions {
            starts.push(self.end_of(pc).await?);
        }
        let mut slot = self.reader.lock().unwrap();
        // Another subscribe may have started one meanwhile.
        if let Some(tx) = slot.as_ref().and_then(|w| w.upgrade()) {
            return Ok(tx);
        }
        let (tx, _) = broadcast::channel(CAPACITY);
        *slot = Some(tx.downgrade());
        let task = tokio::spawn(read_all(self.partitions.clone(), starts, self.config.fetch_wait_ms, tx.clone()));
        if let Some(old) = self.reader_task.lock().unwrap().replace(task.abort_handle()) {
            old.abort();
        }
        Ok(tx)
    }

    /// The offset the next record of a partition will get; creates the
    /// topic again if a broker lost it.
    async fn end_of(&self, pc: &PartitionClient) -> Result<i64> {
        match tokio::time::timeout(TIMEOUT, pc.get_offset(OffsetAt::Latest)).await {
            Ok(Ok(offset)) => Ok(offset),
            Ok(Err(e)) if topic_missing(&e) => {
                ensure_topic(&self.client, &self.config).await?;
                bounded("offsets", pc.get_offset(OffsetAt::Latest)).await
            }
            Ok(Err(e)) => Err(unavailable("offsets", e)),
            Err(_) => Err(unavailable("offsets", format!("no answer within {TIMEOUT:?}"))),
        }
    }
}

/// Creates the topic if it does not exist; returns its partition count.
async fn ensure_topic(client: &Client, config: &KafkaConfig) -> Result<usize> {
    for attempt in 0..20 {
        let topics = bounded("metadata", client.list_topics()).await?;
        if let Some(t) = topics.iter().find(|t| t.name == config.topic) {
            if !t.partitions.is_empty() {
                return Ok(t.partitions.len());
            }
        } else if attempt == 0 {
            let controller = client.controller_client().map_err(|e| unavailable("controller", e))?;
            let created = tokio::time::timeout(
                TIMEOUT,
                controller.create_topic(config.topic.clone(), config.partitions, config.replication_factor, TIMEOUT.as_millis() as i32),
            )
            .await;
            match created {
                Ok(Ok(())) => tracing::info!(topic = %config.topic, partitions = config.partitions, "kafka: created the topic"),
                // Another gateway created it first.
                Ok(Err(KafkaError::ServerError { protocol_error: ProtocolError::TopicAlreadyExists, .. })) => {}
                Ok(Err(e)) => return Err(unavailable(&format!("creating topic {}", config.topic), e)),
                Err(_) => return Err(unavailable(&format!("creating topic {}", config.topic), "no answer")),
            }
        }
        // Metadata may lag behind a topic just created.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::unavailable(format!("kafka: topic {} has no partitions", config.topic)))
}

/// The reader: fetches every partition from `starts` and broadcasts what
/// it reads, until a fetch fails; then it returns, dropping the only strong
/// sender, which ends every subscription.
async fn read_all(partitions: Vec<Arc<PartitionClient>>, starts: Vec<i64>, wait_ms: i32, tx: broadcast::Sender<Arc<Event>>) {
    let loops = partitions.into_iter().zip(starts).map(|(pc, start)| read_partition(pc, start, wait_ms, tx.clone()));
    let e = match futures::future::try_join_all(loops).await {
        Err(e) => e,
        // Only with no partition at all, which `ensure_topic` rules out.
        Ok(_) => return,
    };
    tracing::warn!(error = %e, "kafka: the reader stopped; subscriptions end and the hub catches up from storage");
}

async fn read_partition(pc: Arc<PartitionClient>, mut offset: i64, wait_ms: i32, tx: broadcast::Sender<Arc<Event>>) -> std::result::Result<std::convert::Infallible, Error> {
    loop {
        let fetch = pc.fetch_records(offset, 1..FETCH_BYTES, wait_ms);
        let (records, _high) = match tokio::time::timeout(TIMEOUT + Duration::from_millis(wait_ms as u64), fetch).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(unavailable(&format!("fetch of partition {}", pc.partition()), e)),
            Err(_) => return Err(unavailable(&format!("fetch of partition {}", pc.partition()), "no answer")),
        };
        for r in records {
            if r.offset < offset {
                continue;
            }
            offset = r.offset + 1;
            match r.record.value.as_deref().map(decode_event) {
                Some(Ok(e)) => {
                    // No subscriber is not an error.
                    let _ = tx.send(Arc::new(e));
                }
                Some(Err(e)) => tracing::warn!(error = %e, partition = pc.partition(), offset = r.offset, "dropping a malformed kafka record"),
                None => tracing::warn!(partition = pc.partition(), offset = r.offset, "dropping a kafka record without a value"),
            }
        }
    }
}

#[async_trait]
impl Channel for KafkaChannel {
    fn name(&self) -> &str {
        "kafka"
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        let r = &event.record;
        let key = serde_json::to_vec(&[&r.domain, &r.ty, &r.key]).unwrap_or_default();
        let pc = &self.partitions[self.partition_of(&key)];
        let record = Record {
            key: Some(key),
            value: Some(encode_event(event)),
            headers: Default::default(),
            // The event's own time (nanoseconds) in milliseconds.
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(event.time / 1_000_000).unwrap_or_default(),
        };
        match tokio::time::timeout(TIMEOUT, pc.produce(vec![record.clone()], Compression::NoCompression)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if topic_missing(&e) => {
                ensure_topic(&self.client, &self.config).await?;
                bounded("produce", pc.produce(vec![record], Compression::NoCompression)).await.map(|_| ())
            }
            Ok(Err(e)) => Err(unavailable("produce", e)),
            Err(_) => Err(unavailable("produce", format!("no answer within {TIMEOUT:?}"))),
        }
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription> {
        let tx = self.reader().await?;
        Ok(super::broadcast_subscription(tx.subscribe(), topic.clone()))
    }

    async fn ping(&self) -> Result<()> {
        bounded("metadata", self.client.list_topics()).await?;
        Ok(())
    }
}

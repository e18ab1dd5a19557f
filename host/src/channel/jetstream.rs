//! The durable mode of the `nats` channel (`"jetstream": true`), also used
//! by `stan`: events go through a JetStream stream instead of plain subjects.
//!
//! **The stream** (`"stream"`, default: the prefix in upper case with every
//! other character than `[A-Za-z0-9_-]` as `_`, e.g. `STATEGATE`) holds the
//! subjects `<prefix>.>`, with limits retention: every gateway reads it on
//! its own, nothing is removed by reading. Its limits bound how long an
//! instance can be away and still resume: `"max_age_secs"` (default 86400),
//! `"max_bytes"` (default 1 GiB), `"max_msgs"` (default unlimited), and
//! `"replicas"` (default 1) and `"storage"` (`file`, the default, or
//! `memory`). The gateway creates the stream if it is missing; an existing
//! stream is used as it is (its limits are the operator's).
//!
//! **Publishing** waits for the stream's acknowledgement: the event is
//! stored (on every replica the stream has) when `publish` returns. The
//! message carries the event id as `Nats-Msg-Id`, so a publish retried after
//! a lost acknowledgement is stored once (within the stream's duplicate
//! window). While the connection is down the client holds the message and
//! retries until `TIMEOUT`: a broker restart shorter than that loses nothing
//! and only delays the writes that wait for it.
//!
//! **Reading.** Each subscription is an ordered consumer (ephemeral, no
//! acks, filtered by the topic's subject, delivering what is stored after
//! its creation). When the connection breaks, the subscription drops it and,
//! as soon as the connection is back, starts a new one from the stream
//! sequence after the last one it delivered, so it does not end: events
//! stored while it was away arrive late but in order, and the hub's storage
//! sweep stays a rare fallback (for publishes that failed outright, or
//! events older than the stream keeps). A stream that was lost and created
//! again (memory storage on a restarted server) is read from its start.

use crate::model::{Error, Event, Result, Topic};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use std::time::{Duration, Instant};

use super::{Subscription, decode_event};
use tokio::sync::watch;

/// Longest wait for a durable publish (all its attempts), stream or
/// consumer creation.
const TIMEOUT: Duration = Duration::from_secs(2);
/// One publish attempt waits this long for the stream's acknowledgement.
const ATTEMPT: Duration = Duration::from_millis(500);

/// The stream options of the `nats` channel's durable mode (keys of the
/// `nats` object); `None` means the default (see the module doc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamOptions {
    pub stream: Option<String>,
    pub max_age_secs: Option<u64>,
    pub max_bytes: Option<i64>,
    pub max_msgs: Option<i64>,
    pub replicas: Option<usize>,
    pub storage: Option<String>,
}

impl StreamOptions {
    pub fn is_default(&self) -> bool {
        *self == StreamOptions::default()
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.stream
            && (name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(Error::invalid("stream", format!("{name:?} is not a JetStream stream name ([A-Za-z0-9_-])")));
        }
        if let Some(s) = &self.storage
            && s != "file"
            && s != "memory"
        {
            return Err(Error::invalid("storage", format!("{s:?} is neither \"file\" nor \"memory\"")));
        }
        if self.replicas == Some(0) {
            return Err(Error::invalid("replicas", "must be at least 1"));
        }
        for (key, v) in [("max_bytes", self.max_bytes), ("max_msgs", self.max_msgs)] {
            if v.is_some_and(|v| v == 0 || v < -1) {
                return Err(Error::invalid(key, "must be positive (or -1: unlimited)"));
            }
        }
        Ok(())
    }

    fn name(&self, prefix: &str) -> String {
        self.stream.clone().unwrap_or_else(|| {
            prefix
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c.to_ascii_uppercase() } else { '_' })
                .collect()
        })
    }

    fn config(&self, prefix: &str) -> stream::Config {
        stream::Config {
            name: self.name(prefix),
            subjects: vec![format!("{prefix}.>")],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(self.max_age_secs.unwrap_or(86_400)),
            max_bytes: self.max_bytes.unwrap_or(1 << 30),
            max_messages: self.max_msgs.unwrap_or(-1),
            num_replicas: self.replicas.unwrap_or(1),
            storage: match self.storage.as_deref() {
                Some("memory") => stream::StorageType::Memory,
                _ => stream::StorageType::File,
            },
            ..Default::default()
        }
    }
}

/// A connection's JetStream side: the context and the stream.
pub struct Durable {
    client: async_nats::Client,
    js: jetstream::Context,
    config: stream::Config,
}

impl Durable {
    /// Finds or creates the stream; fails (`Unavailable`) if the server
    /// has no JetStream.
    pub async fn open(client: async_nats::Client, prefix: &str, options: &StreamOptions) -> Result<Durable> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ATTEMPT);
        let config = options.config(prefix);
        let name = config.name.clone();
        tokio::time::timeout(TIMEOUT * 2, js.get_or_create_stream(config.clone()))
            .await
            .map_err(|_| Error::unavailable(format!("nats jetstream: stream {name}: no answer")))?
            .map_err(|e| Error::unavailable(format!("nats jetstream: stream {name}: {e}")))?;
        tracing::info!(stream = %name, subjects = %format!("{prefix}.>"), "nats: durable mode (JetStream)");
        Ok(Durable { client, js, config })
    }

    /// Whether the server behind `client` has JetStream enabled for us: the
    /// JetStream API answers its account-info request without an error
    /// (read raw: the client's typed account info expects fields that older
    /// servers do not send).
    pub async fn available(client: async_nats::Client) -> bool {
        let answer = tokio::time::timeout(TIMEOUT, client.request("$JS.API.INFO", bytes::Bytes::new())).await;
        match answer {
            Ok(Ok(msg)) => serde_json::from_slice::<serde_json::Value>(&msg.payload).is_ok_and(|v| v.get("error").is_none()),
            _ => false,
        }
    }

    /// Publishes and waits for the stream's acknowledgement, retrying (with
    /// the same message id) until `TIMEOUT`.
    pub async fn publish(&self, subject: String, event: &Event, payload: bytes::Bytes) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.id.as_str());
            let attempt = async {
                let ack = self.js.publish_with_headers(subject.clone(), headers, payload.clone()).await.map_err(|e| e.to_string())?;
                ack.await.map_err(|e| e.to_string())
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(ATTEMPT.min(left), attempt).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "no acknowledgement".to_owned(),
            };
            if Instant::now() + Duration::from_millis(50) >= deadline {
                return Err(Error::unavailable(format!("nats jetstream publish: {error} (for {TIMEOUT:?})")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An ordered consumer of `subject` delivering what is stored from now
    /// on, recreated from the last stream sequence it delivered whenever the
    /// connection comes back (`disconnects` counts the breaks), so the
    /// subscription survives them (see the module doc).
    pub async fn subscribe(&self, subject: String, topic: &Topic, mut disconnects: watch::Receiver<u64>) -> Result<Subscription> {
        disconnects.mark_unchanged();
        let (messages, last) = tokio::time::timeout(TIMEOUT, self.consume(&subject, None))
            .await
            .map_err(|_| Error::unavailable("nats jetstream subscribe: no answer"))?
            .map_err(|e| Error::unavailable(format!("nats jetstream subscribe: {e}")))?;
        let state = Resuming {
            js: self.js.clone(),
            config: self.config.clone(),
            client: self.client.clone(),
            subject,
            topic: topic.clone(),
            last,
            messages: Some(messages),
            disconnects,
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            let event = s.next().await;
            Some((Ok(event), s))
        })
        .boxed())
    }

    /// An ordered consumer of `subject` from the stream sequence after
    /// `last` (from now on when `None`), and the sequence it starts after.
    async fn consume(&self, subject: &str, last: Option<u64>) -> std::result::Result<(consumer::pull::Ordered, u64), String> {
        start_consumer(&self.js, &self.config, subject, last).await
    }
}

async fn start_consumer(
    js: &jetstream::Context,
    config: &stream::Config,
    subject: &str,
    last: Option<u64>,
) -> std::result::Result<(consumer::pull::Ordered, u64), String> {
    // Created again if a server that kept it in memory lost it.
    let mut stream = js.get_or_create_stream(config.clone()).await.map_err(|e| e.to_string())?;
    let head = stream.info().await.map_err(|e| e.to_string())?.state.last_sequence;
    let deliver_policy = match last {
        // A stream that restarted its sequences (it was lost and created
        // again) is new to us from its start.
        Some(last) if last > head => consumer::DeliverPolicy::All,
        Some(last) => consumer::DeliverPolicy::ByStartSequence { start_sequence: last + 1 },
        None => consumer::DeliverPolicy::ByStartSequence { start_sequence: head + 1 },
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok((messages, last.filter(|l| *l <= head).unwrap_or(head)))
}

/// A durable subscription's state: the consumer, if one runs, and the
/// last stream sequence it delivered.
struct Resuming {
    js: jetstream::Context,
    config: stream::Config,
    client: async_nats::Client,
    subject: String,
    topic: Topic,
    last: u64,
    messages: Option<consumer::pull::Ordered>,
    disconnects: watch::Receiver<u64>,
}

impl Resuming {
    /// The next event of the topic; waits through disconnects.
    async fn next(&mut self) -> Event {
        let mut warned = false;
        loop {
            let Some(messages) = self.messages.as_mut() else {
                // Wait for the connection, then start again after `last`.
                if self.client.connection_state() != async_nats::connection::State::Connected {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                self.disconnects.mark_unchanged();
                match tokio::time::timeout(TIMEOUT, start_consumer(&self.js, &self.config, &self.subject, Some(self.last))).await {
                    Ok(Ok((messages, last))) => {
                        tracing::info!(subject = %self.subject, after = last, "nats jetstream: consumer resumed");
                        self.last = last;
                        self.messages = Some(messages);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "nats jetstream: cannot resume the consumer yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(_) => tracing::debug!("nats jetstream: no answer while resuming the consumer"),
                }
                continue;
            };
            tokio::select! {
                item = messages.next() => match item {
                    Some(Ok(msg)) => {
                        if let Ok(info) = msg.info() {
                            self.last = self.last.max(info.stream_sequence);
                        }
                        match decode_event(&msg.payload) {
                            Ok(e) if self.topic.matches(&e.record) => return e,
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, subject = %msg.subject, "dropping a malformed nats message"),
                        }
                    }
                    // The consumer noticed trouble; it may recover by itself,
                    // and a disconnect makes us start a new one anyway.
                    Some(Err(e)) => {
                        if !warned {
                            tracing::warn!(error = %e, "nats jetstream consumer interrupted");
                            warned = true;
                        }
                    }
                    None => self.messages = None,
                },
                _ = self.disconnects.changed() => {
                    tracing::warn!(subject = %self.subject, after = self.last, "nats: disconnected; the consumer resumes from its last stream sequence");
                    self.messages = None;
                }
            }
        }
    }
}

//! `rabbitmq` (alias `amqp`): events cross instances through a RabbitMQ
//! topic exchange (AMQP 0-9-1).
//!
//! `{"name":"rabbitmq","addr":"amqp://guest:guest@127.0.0.1:5672/%2f"}`,
//! plus `"exchange"` (default `stategate`), `"heartbeat_secs"` (default 10),
//! TLS (`amqps://` or `"tls": true`, `"ca_file"`, `"cert_file"` +
//! `"key_file"` for a client certificate, also under v0.5.0's names
//! `client_cert_file` / `client_key_file`). User, password and virtual host
//! come from the URL (percent-decoded; `%2f` is the default vhost `/`).
//!
//! **Client.** [amqprs](https://docs.rs/amqprs): tokio-native, TLS through
//! the gateway's own tokio-rustls on `ring`. (lapin, the other common
//! client, brings a second executor layer and, with TLS, a PKCS#12 and
//! X.509 parsing stack that duplicates crates already in the build.)
//!
//! **Routing.** The exchange is a durable topic exchange. Each event is
//! published with the routing key `<domain>.<type>`, both escaped by
//! `escape_token` (so each is exactly one word, with no `.`, `*` or `#`).
//! Each gateway instance declares one exclusive, auto-delete, server-named
//! queue and binds it once per distinct topic its subscriptions watch
//! (`*` for a wildcard part); a binding is removed when its last
//! subscription is dropped. One consumer per instance reads the queue and
//! broadcasts to the subscriptions, which filter by topic. A subscription is
//! active when `subscribe` returns: its binding is confirmed by the broker
//! (`queue.bind-ok`) before that.
//!
//! **Publishing** waits for the broker's publisher confirm (the channel is
//! in confirm mode): a publish returns once RabbitMQ has routed the message
//! to every bound queue, and fails (`Unavailable`) on a nack or after
//! `TIMEOUT`. Messages are transient: the queues are too.
//!
//! **Faults.** When the connection breaks (network failure, broker gone,
//! the server closing a channel or cancelling the consumer), the consumer
//! task ends, which ends every subscription (the trait's promise: the hub
//! catches up from storage and subscribes again). The next call connects
//! again and declares a new queue; the hub's new subscriptions bind it.
//! Events published while no queue existed are lost to that instance, and
//! the hub's storage sweep delivers them. Every call is bounded by
//! `TIMEOUT`, so while the broker is down calls fail fast with
//! `Unavailable`.

use super::tls::{TlsFiles, client_config};
use super::{Channel, Subscription, decode_event, encode_event, escape_token};
use crate::model::{Error, Event, Result, Topic};
use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{
    BasicConsumeArguments, BasicPublishArguments, Channel as AmqpChan, ConfirmSelectArguments, ExchangeDeclareArguments,
    QueueBindArguments, QueueDeclareArguments, QueueUnbindArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::tls::TlsAdaptor;
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;
use tokio::sync::{Mutex, broadcast, oneshot};
use tokio_util::sync::CancellationToken;

/// Longest wait for any AMQP call (connect, declare, bind, confirm).
const TIMEOUT: Duration = Duration::from_secs(2);
/// Events buffered for a subscription that is behind (as `inmem`).
const CAPACITY: usize = 16 * 1024;

/// `{"name":"rabbitmq","addr":…}` and its options (see the module doc).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://…`.
    pub addr: String,
    pub exchange: String,
    pub heartbeat_secs: u16,
    pub tls: bool,
    pub ca_file: Option<String>,
    #[serde(alias = "client_cert_file")]
    pub cert_file: Option<String>,
    #[serde(alias = "client_key_file")]
    pub key_file: Option<String>,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        RabbitMqConfig {
            addr: "amqp://guest:guest@localhost:5672/%2f".to_owned(),
            exchange: "stategate".to_owned(),
            heartbeat_secs: 10,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// Where and as whom to connect, from `addr`.
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
    vhost: String,
    tls: bool,
}

impl RabbitMqConfig {
    pub fn validate(&self) -> Result<()> {
        self.target()?;
        if self.exchange.is_empty() || self.exchange.len() > 255 || self.exchange.starts_with("amq.") {
            return Err(Error::invalid("exchange", format!("{:?} is not a usable exchange name (1 to 255 bytes, not amq.*)", self.exchange)));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::invalid("cert_file", "\"cert_file\" and \"key_file\" go together"));
        }
        Ok(())
    }

    fn target(&self) -> Result<Target> {
        let bad = |why: &str| Error::invalid("addr", format!("{why}; expected amqp://user:password@host:5672/vhost"));
        let url = url::Url::parse(&self.addr).map_err(|e| bad(&format!("not a URL ({e})")))?;
        let tls = match url.scheme() {
            "amqp" => self.tls || self.ca_file.is_some() || self.cert_file.is_some(),
            "amqps" => true,
            other => return Err(bad(&format!("scheme {other:?} is neither amqp nor amqps"))),
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?;
        let decode = |s: &str| percent_decode(s).ok_or_else(|| bad("a bad %-escape"));
        let user = if url.username().is_empty() { "guest".to_owned() } else { decode(url.username())? };
        let password = url.password().map(decode).transpose()?.unwrap_or_else(|| "guest".to_owned());
        // The path is the vhost, percent-decoded; none means the default `/`.
        let path = url.path().strip_prefix('/').unwrap_or(url.path());
        let vhost = if path.is_empty() { "/".to_owned() } else { decode(path)? };
        Ok(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port: url.port().unwrap_or(if tls { 5671 } else { 5672 }),
            user,
            password,
            vhost,
            tls,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Publisher confirms waiting for the broker, by delivery tag.
#[derive(Default)]
struct Confirms {
    pending: SyncMutex<BTreeMap<u64, oneshot::Sender<bool>>>,
}

impl Confirms {
    fn settle(&self, tag: u64, multiple: bool, acked: bool) {
        let mut pending = self.pending.lock().unwrap();
        let settled: Vec<oneshot::Sender<bool>> = if multiple {
            let rest = pending.split_off(&(tag + 1));
            std::mem::replace(&mut *pending, rest).into_values().collect()
        } else {
            pending.remove(&tag).into_iter().collect()
        };
        for s in settled {
            let _ = s.send(acked);
        }
    }
}

/// Server notices on the connection and its channels: acks and nacks settle
/// confirms; a close or a cancelled consumer marks the link broken.
struct Callbacks {
    confirms: Arc<Confirms>,
    broken: CancellationToken,
}

#[async_trait]
impl ConnectionCallback for Callbacks {
    async fn close(&mut self, _: &Connection, close: Close) -> std::result::Result<(), amqprs::error::Error> {
        tracing::warn!(reason = %close, "rabbitmq: the server closed the connection");
        self.broken.cancel();
        Ok(())
    }
    async fn blocked(&mut self, _: &Connection, reason: String) {
        tracing::warn!(%reason, "rabbitmq: the server blocked publishing");
    }
    async fn unblocked(&mut self, _: &Connection) {
        tracing::info!("rabbitmq: the server unblocked publishing");
    }
    async fn secret_updated(&mut self, _: &Connection) {}
}

#[async_trait]
impl ChannelCallback for Callbacks {
    async fn close(&mut self, _: &AmqpChan, close: CloseChannel) -> std::result::Result<(), amqprs::error::Error> {
        tracing::warn!(reason = %close, "rabbitmq: the server closed a channel");
        self.broken.cancel();
        Ok(())
    }
    async fn cancel(&mut self, _: &AmqpChan, cancel: Cancel) -> std::result::Result<(), amqprs::error::Error> {
        tracing::warn!(consumer = cancel.consumer_tag(), "rabbitmq: the server cancelled our consumer");
        self.broken.cancel();
        Ok(())
    }
    async fn flow(&mut self, _: &AmqpChan, active: bool) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &AmqpChan, ack: Ack) {
        self.confirms.settle(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _: &AmqpChan, nack: Nack) {
        self.confirms.settle(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(&mut self, _: &AmqpChan, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// One connection with its publishing channel (confirm mode), its queue
/// and consumer; replaced by a new one when it breaks.
struct Link {
    conn: Connection,
    publisher: AmqpChan,
    /// Delivery tag of the last publish; held while publishing, so tags
    /// follow the order in which the broker receives the messages.
    last_tag: Mutex<u64>,
    confirms: Arc<Confirms>,
    binder: AmqpChan,
    queue: String,
    /// Bindings of the queue: routing pattern → live subscriptions.
    bindings: Arc<Mutex<HashMap<String, usize>>>,
    /// The consumer task's sender, held weakly: its end closes every
    /// subscription.
    deliveries: broadcast::WeakSender<Arc<Event>>,
    broken: CancellationToken,
}

impl Link {
    fn alive(&self) -> bool {
        !self.broken.is_cancelled() && self.conn.is_open()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Ends the consumer task; dropping the connection closes it.
        self.broken.cancel();
    }
}

pub struct RabbitMqChannel {
    config: RabbitMqConfig,
    link: Mutex<Option<Arc<Link>>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("rabbitmq {what}: {e}"))
}

async fn bounded<T>(what: &str, f: impl Future<Output = std::result::Result<T, amqprs::error::Error>>) -> Result<T> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, format!("no answer within {TIMEOUT:?}"))),
    }
}

impl RabbitMqChannel {
    /// Connects and declares the exchange; fails if the broker does not
    /// answer within a few seconds.
    pub async fn open(config: &RabbitMqConfig) -> Result<Self> {
        config.validate()?;
        let channel = RabbitMqChannel {
            config: config.clone(),
            link: Mutex::new(None),
        };
        channel.link().await?;
        Ok(channel)
    }

    /// The live link, connecting a new one if there is none or it broke.
    async fn link(&self) -> Result<Arc<Link>> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| l.alive()) {
            return Ok(link.clone());
        }
        *slot = None;
        let link = Arc::new(self.connect().await?);
        *slot = Some(link.clone());
        Ok(link)
    }

    async fn connect(&self) -> Result<Link> {
        let t = self.config.target()?;
        let mut args = OpenConnectionArguments::new(&t.host, t.port, &t.user, &t.password);
        args.virtual_host(&t.vhost).heartbeat(self.config.heartbeat_secs).connection_name("stategate");
        if t.tls {
            let files = TlsFiles {
                ca_file: self.config.ca_file.as_deref(),
                cert_file: self.config.cert_file.as_deref(),
                key_file: self.config.key_file.as_deref(),
            };
            let connector = tokio_rustls::TlsConnector::from(client_config(&files)?);
            args.tls_adaptor(TlsAdaptor::new(connector, t.host.clone()));
        }
        let where_ = format!("{}:{} vhost {:?}", t.host, t.port, t.vhost);
        let conn = bounded("connect", Connection::open(&args)).await.map_err(|e| e.at(&where_))?;
        let confirms = Arc::new(Confirms::default());
        let broken = CancellationToken::new();
        let callbacks = || Callbacks { confirms: confirms.clone(), broken: broken.clone() };
        bounded("connect", conn.register_callback(callbacks())).await?;

        let publisher = bounded("open channel", conn.open_channel(None)).await?;
        bounded("open channel", publisher.register_callback(callbacks())).await?;
        let exchange = ExchangeDeclareArguments::new(&self.config.exchange, "topic").durable(true).finish();
        bounded("declare exchange", publisher.exchange_declare(exchange)).await?;
        bounded("confirm mode", publisher.confirm_select(ConfirmSelectArguments::default())).await?;

        let binder = bounded("open channel", conn.open_channel(None)).await?;
        bounded("open channel", binder.register_callback(callbacks())).await?;
        let declare = QueueDeclareArguments::exclusive_server_named().auto_delete(true).finish();
        let (queue, _, _) = bounded("declare queue", binder.queue_declare(declare))
            .await?
            .ok_or_else(|| unavailable("declare queue", "no queue name in the answer"))?;
        let consume = BasicConsumeArguments::new(&queue, "").manual_ack(false).exclusive(true).finish();
        let (_, mut messages) = bounded("consume", binder.basic_consume_rx(consume)).await?;

        let (tx, _) = broadcast::channel(CAPACITY);
        let deliveries = tx.downgrade();
        let (watch_conn, stop) = (conn.clone(), broken.clone());
        tokio::spawn(async move {
            let failure = watch_conn.listen_network_io_failure();
            tokio::pin!(failure);
            loop {
                tokio::select! {
                    msg = messages.recv() => {
                        let Some(msg) = msg else { break };
                        match msg.content.as_deref().map(decode_event) {
                            // No subscriber is not an error.
                            Some(Ok(e)) => { let _ = tx.send(Arc::new(e)); }
                            Some(Err(e)) => tracing::warn!(error = %e, "dropping a malformed rabbitmq message"),
                            None => {}
                        }
                    }
                    _ = &mut failure => break,
                    _ = stop.cancelled() => break,
                }
            }
            // Ends every subscription (and marks the link broken).
            stop.cancel();
            tracing::warn!("rabbitmq: the consumer stopped; subscriptions end and the hub catches up from storage");
        });
        tracing::info!(queue = %queue, exchange = %self.config.exchange, "rabbitmq: connected");
        Ok(Link {
            conn,
            publisher,
            last_tag: Mutex::new(0),
            confirms,
            binder,
            queue,
            bindings: Arc::default(),
            deliveries,
            broken,
        })
    }

    /// Binds the queue to `pattern` unless a live subscription already did.
    async fn bind(&self, link: &Link, pattern: &str) -> Result<()> {
        let mut bindings = link.bindings.lock().await;
        let count = bindings.entry(pattern.to_owned()).or_insert(0);
        if *count == 0 {
            let args = QueueBindArguments::new(&link.queue, &self.config.exchange, pattern);
            bounded("bind", link.binder.queue_bind(args)).await?;
        }
        *count += 1;
        Ok(())
    }
}

/// Removes a subscription's binding when it was the last one using it.
struct Unbind {
    link: std::sync::Weak<Link>,
    exchange: String,
    pattern: String,
}

impl Drop for Unbind {
    fn drop(&mut self) {
        let Some(link) = self.link.upgrade() else { return };
        // Dropped outside a runtime (at exit): the connection goes anyway.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (exchange, pattern) = (std::mem::take(&mut self.exchange), std::mem::take(&mut self.pattern));
        runtime.spawn(async move {
            let mut bindings = link.bindings.lock().await;
            let Some(count) = bindings.get_mut(&pattern) else { return };
            *count -= 1;
            if *count == 0 {
                bindings.remove(&pattern);
                if link.alive() {
                    let args = QueueUnbindArguments::new(&link.queue, &exchange, &pattern);
                    if let Err(e) = bounded("unbind", link.binder.queue_unbind(args)).await {
                        tracing::debug!(error = %e, %pattern, "rabbitmq: unbind failed");
                    }
                }
            }
        });
    }
}

#[async_trait]
impl Channel for RabbitMqChannel {
    fn name(&self) -> &str {
        "rabbitmq"
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        let link = self.link().await?;
        let key = format!("{}.{}", escape_token(&event.record.domain), escape_token(&event.record.ty));
        let props = BasicProperties::default().with_content_type("application/json").finish();
        let args = BasicPublishArguments::new(&self.config.exchange, &key);
        let confirmed = {
            let mut last = link.last_tag.lock().await;
            let tag = *last + 1;
            let (tx, rx) = oneshot::channel();
            link.confirms.pending.lock().unwrap().insert(tag, tx);
            if let Err(e) = bounded("publish", link.publisher.basic_publish(props, encode_event(event), args)).await {
                link.confirms.pending.lock().unwrap().remove(&tag);
                link.broken.cancel();
                return Err(e);
            }
            *last = tag;
            rx
        };
        match tokio::time::timeout(TIMEOUT, confirmed).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(unavailable("publish", "the broker refused the message (nack)")),
            Ok(Err(_)) => Err(unavailable("publish", "the connection closed before the broker confirmed")),
            Err(_) => Err(unavailable("publish", format!("no confirm within {TIMEOUT:?}"))),
        }
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription> {
        let link = self.link().await?;
        let rx = link
            .deliveries
            .upgrade()
            .ok_or_else(|| unavailable("subscribe", "the connection broke"))?
            .subscribe();
        let part = |p: &Option<String>| p.as_deref().map_or_else(|| "*".to_owned(), escape_token);
        let pattern = format!("{}.{}", part(&topic.domain), part(&topic.ty));
        self.bind(&link, &pattern).await?;
        let unbind = Unbind {
            link: Arc::downgrade(&link),
            exchange: self.config.exchange.clone(),
            pattern,
        };
        // The guard lives as long as the stream.
        let stream = super::broadcast_subscription(rx, topic.clone()).map(move |item| {
            let _ = &unbind;
            item
        });
        Ok(stream.boxed())
    }

    async fn ping(&self) -> Result<()> {
        let link = self.link().await?;
        // A passive declare is a round trip that changes nothing.
        let check = ExchangeDeclareArguments::new(&self.config.exchange, "topic").durable(true).passive(true).finish();
        bounded("ping", link.publisher.exchange_declare(check)).await
    }
}

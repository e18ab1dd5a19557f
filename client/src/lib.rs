//! The Rust client of stategate, the application state gateway (its
//! documentation: `docs/clients.md` in the stategate repository, beside
//! this crate, and this crate's `README.md`): the tonic client generated
//! from `proto/stategate.proto`, plus a small layer that makes the common
//! calls one line each.
//!
//! - [`Client::connect`] / [`Client::builder`]: a gateway address and a
//!   [`TokenSource`] (none, a static token, or a callback asked on every
//!   call, so a refreshed token is picked up without reconnecting).
//! - Typed calls: [`Client::set`] takes any `Serialize` value (it must be a
//!   JSON object), [`State::values_as`] / [`Event::values_as`] give it back
//!   as your type.
//! - [`Client::stream`]: live events that survive a disconnect. After a
//!   dropped connection or a gateway restart the stream reconnects and
//!   resumes from its resume point (`Event.resume_after`, as
//!   `StreamOpts.after_sequence`), so the server replays what was missed,
//!   and skips what it already delivered: no gap, no duplicate.
//! - [`Client::watch`]: a snapshot of a domain and type, then every change
//!   after it, applied to a local view ([`Watch`]).
//!
//! ```no_run
//! use stategate_client::{Client, StreamOpts};
//! use futures::StreamExt;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User { name: String }
//!
//! # async fn demo() -> Result<(), stategate_client::Error> {
//! let client = Client::builder("http://127.0.0.1:8080")
//!     .token(std::env::var("STATEGATE_TOKEN").ok())
//!     .connect()
//!     .await?;
//! let mut events = client.stream(StreamOpts::new("users", "user")).await?;
//! let event = client.set("users", "user", "alice", &User { name: "Alice".into() }).await?;
//! println!("version {}", event.version);
//! let alice: User = client.get("users", "user", "alice").await?.values_as()?;
//! assert_eq!(alice.name, "Alice");
//! let first = events.next().await.unwrap()?;
//! assert_eq!(first.id, event.id);
//! # Ok(()) }
//! ```
//!
//! The generated messages and service clients are in [`proto`] for anything
//! the convenience layer does not cover.

mod json;
mod stream;
mod watch;

use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use json::{json_to_struct, struct_to_json};
pub use stream::{EventStream, Notice, Observer, Resume};
pub use watch::Watch;

/// Code generated from `proto/stategate.proto` (messages and tonic clients).
pub mod proto {
    tonic::include_proto!("stategate");
}

pub use proto::{Catalog, CatalogEntry, CatalogOpts, Event, EventKind, SearchEventOpts, SearchStateOpts, Sort, State, StateRef, StreamOpts};

type Svc = InterceptedService<Channel, Auth>;
pub type StateServiceClient = proto::state_service_client::StateServiceClient<Svc>;
pub type EventServiceClient = proto::event_service_client::EventServiceClient<Svc>;
pub type CatalogServiceClient = proto::catalog_service_client::CatalogServiceClient<Svc>;

/// What can go wrong talking to a gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid gateway address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    /// The gateway answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    #[error("{0}")]
    Json(String),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(s)
    }
}

/// The innermost cause of an error (transport errors nest the same words
/// several times; the last one says what happened).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Error {
    /// The gRPC code when the gateway answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }
}

/// The canonical upper-snake name of a gRPC code (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the bearer token of each call comes from.
#[derive(Clone, Default)]
pub enum TokenSource {
    /// No `authorization` header (a gateway in development mode or with
    /// authentication disabled).
    #[default]
    None,
    /// The same token on every call.
    Static(String),
    /// Asked on every call; return `None` to send no token. Keep it cheap
    /// (read a cached token that a background task refreshes).
    Callback(Arc<dyn Fn() -> Option<String> + Send + Sync>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenSource::None => "None",
            TokenSource::Static(_) => "Static(<redacted>)",
            TokenSource::Callback(_) => "Callback",
        })
    }
}

impl TokenSource {
    fn token(&self) -> Option<String> {
        match self {
            TokenSource::None => None,
            TokenSource::Static(t) => Some(t.clone()),
            TokenSource::Callback(f) => f(),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone, Debug)]
pub struct Auth(TokenSource);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0.token().filter(|t| !t.is_empty()) {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::unauthenticated("the token holds characters a header cannot carry"))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

/// Settings for [`Client`]; start with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    address: String,
    token: TokenSource,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    ca_pem: Option<Vec<u8>>,
    lazy: bool,
    resume: Resume,
}

impl ClientBuilder {
    /// A static bearer token; `None` or an empty string sends none.
    pub fn token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = match token.map(Into::into) {
            Some(t) if !t.is_empty() => TokenSource::Static(t),
            _ => TokenSource::None,
        };
        self
    }

    /// A callback asked for the token on every call.
    pub fn token_fn(mut self, f: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        self.token = TokenSource::Callback(Arc::new(f));
        self
    }

    pub fn token_source(mut self, source: TokenSource) -> Self {
        self.token = source;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// A deadline for every unary call (default none). Streams have none.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Trust this CA (PEM) for an `https://` address.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Do not connect until the first call (and do not fail if the gateway
    /// is down now).
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// How [`Client::stream`] reconnects (default: resume, backing off from
    /// 100 ms to 5 s).
    pub fn resume(mut self, resume: Resume) -> Self {
        self.resume = resume;
        self
    }

    pub async fn connect(self) -> Result<Client> {
        let bad = |reason: String| Error::Address { address: self.address.clone(), reason };
        let mut endpoint = Endpoint::from_shared(self.address.clone())
            .map_err(|e| bad(format!("{e} (expected e.g. http://127.0.0.1:8080)")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if let Some(t) = self.timeout {
            endpoint = endpoint.timeout(t);
        }
        match endpoint.uri().scheme_str() {
            Some("http") => {}
            Some("https") => {
                let mut tls = tonic::transport::ClientTlsConfig::new();
                if let Some(pem) = &self.ca_pem {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                }
                endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
            }
            _ => return Err(bad("the scheme must be http or https".into())),
        }
        let channel = if self.lazy {
            endpoint.connect_lazy()
        } else {
            endpoint.connect().await.map_err(|e| Error::Connect {
                address: self.address.clone(),
                reason: root_cause(&e),
            })?
        };
        Ok(Client::from_channel(channel, self.token).with_resume(self.resume))
    }
}

/// A connection to a gateway. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    state: StateServiceClient,
    events: EventServiceClient,
    catalog: CatalogServiceClient,
    resume: Resume,
}

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

impl Client {
    pub fn builder(address: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            address: address.into(),
            token: TokenSource::None,
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            ca_pem: None,
            lazy: false,
            resume: Resume::default(),
        }
    }

    /// Connects without a token (development mode).
    pub async fn connect(address: impl Into<String>) -> Result<Client> {
        Client::builder(address).connect().await
    }

    /// Wraps a channel you built yourself.
    pub fn from_channel(channel: Channel, token: TokenSource) -> Client {
        let auth = Auth(token);
        Client {
            channel: channel.clone(),
            state: proto::state_service_client::StateServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_MESSAGE),
            events: proto::event_service_client::EventServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_MESSAGE),
            catalog: proto::catalog_service_client::CatalogServiceClient::with_interceptor(channel, auth)
                .max_decoding_message_size(MAX_MESSAGE),
            resume: Resume::default(),
        }
    }

    /// This client with another [`Resume`] for the streams it opens from now
    /// on (e.g. one with an observer, [`Resume::on_notice`]).
    pub fn with_resume(mut self, resume: Resume) -> Self {
        self.resume = resume;
        self
    }

    /// The underlying channel (for other services on the same port, such as
    /// `grpc.health.v1.Health`). It carries no token by itself.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The generated `StateService` client, for options the helpers do not
    /// take (expected versions, idempotency keys, edit, revert).
    pub fn state_service(&self) -> StateServiceClient {
        self.state.clone()
    }

    /// The generated `EventService` client.
    pub fn event_service(&self) -> EventServiceClient {
        self.events.clone()
    }

    /// Sets the current state of a record; `values` must serialize to a
    /// JSON object. Returns the event the write appended.
    pub async fn set(&self, domain: &str, ty: &str, key: &str, values: &impl serde::Serialize) -> Result<Event> {
        let values = json::object_struct(values)?;
        self.set_state(State {
            domain: domain.into(),
            r#type: ty.into(),
            key: key.into(),
            values: Some(values),
            ..Default::default()
        })
        .await
    }

    /// `Set` with every field under your control.
    pub async fn set_state(&self, state: State) -> Result<Event> {
        Ok(self.state.clone().set(state).await?.into_inner())
    }

    /// The current state of a record; [`Error::is_not_found`] when it has none.
    pub async fn get(&self, domain: &str, ty: &str, key: &str) -> Result<State> {
        Ok(self.state.clone().get(state_ref(domain, ty, key)).await?.into_inner())
    }

    /// Removes the current state of a record (its history is kept); returns
    /// the deletion event.
    pub async fn del(&self, domain: &str, ty: &str, key: &str) -> Result<Event> {
        Ok(self.state.clone().del(state_ref(domain, ty, key)).await?.into_inner())
    }

    /// Current states of a domain and type whose values hold every pair of
    /// `query` (a JSON object; `{}` matches all).
    pub async fn search(&self, opts: SearchStateOpts) -> Result<Vec<State>> {
        Ok(self.state.clone().search(opts).await?.into_inner().state_values)
    }

    /// The event history, oldest first.
    pub async fn search_events(&self, opts: SearchEventOpts) -> Result<Vec<Event>> {
        Ok(self.events.clone().search(opts).await?.into_inner().events)
    }

    /// The domains and types the caller may read, with their record and
    /// event counts; `domain` empty (or `"*"`) for every domain.
    pub async fn catalog(&self, domain: &str) -> Result<Catalog> {
        Ok(self.catalog.clone().list(CatalogOpts { domain: domain.into() }).await?.into_inner())
    }

    /// One event by id.
    pub async fn get_event(&self, id: &str) -> Result<Event> {
        Ok(self.events.clone().get(proto::EventRef { id: id.into() }).await?.into_inner())
    }

    /// Events of a domain and type (`"*"` for any) as they happen, from the
    /// position `opts` names (`after_event_id`, `from_time`) or from now.
    /// The first call is made before this returns, so a bad request or a
    /// refused token is an error here; later disconnects are resumed
    /// transparently as [`Resume`] says.
    pub async fn stream(&self, opts: StreamOpts) -> Result<EventStream> {
        EventStream::open(self.events.clone(), opts, self.resume.clone()).await
    }

    /// A local view of one domain and type kept current: a snapshot
    /// (`Search`, which names the store position it was read at), then
    /// every change after that position, applied as
    /// [`Watch::next_change`] hands it over. Disconnects are resumed as
    /// [`Resume`] says, without a change missed or applied twice.
    pub async fn watch(&self, domain: &str, ty: &str) -> Result<Watch> {
        Watch::open(self, domain, ty).await
    }
}

fn state_ref(domain: &str, ty: &str, key: &str) -> StateRef {
    StateRef {
        domain: domain.into(),
        r#type: ty.into(),
        key: key.into(),
        ..Default::default()
    }
}

impl StreamOpts {
    /// Live events of one domain and type (either may be `"*"`).
    pub fn new(domain: impl Into<String>, ty: impl Into<String>) -> Self {
        StreamOpts {
            domain: domain.into(),
            r#type: ty.into(),
            ..Default::default()
        }
    }

    /// Replay the history after this event first.
    pub fn after(mut self, event_id: impl Into<String>) -> Self {
        self.after_event_id = event_id.into();
        self
    }

    /// Replay the history from this time (Unix nanoseconds) first.
    pub fn from_time(mut self, unix_nanos: i64) -> Self {
        self.from_time = unix_nanos;
        self
    }

    /// Only events of this record.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }
}

impl SearchStateOpts {
    /// Every state of a domain and type, up to `limit`.
    pub fn new(domain: impl Into<String>, ty: impl Into<String>, limit: i64) -> Self {
        SearchStateOpts {
            domain: domain.into(),
            r#type: ty.into(),
            limit,
            ..Default::default()
        }
    }

    /// Only states whose values hold every pair of this JSON object.
    pub fn query(mut self, query: &serde_json::Value) -> Self {
        self.query_string = query.to_string();
        self
    }
}

impl SearchEventOpts {
    /// The history of a domain and type, oldest first, up to `limit`.
    pub fn new(domain: impl Into<String>, ty: impl Into<String>, limit: i64) -> Self {
        SearchEventOpts {
            domain: domain.into(),
            r#type: ty.into(),
            limit,
            ..Default::default()
        }
    }

    /// Only the history of this record.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Only events whose state values hold every pair of this JSON object.
    pub fn query(mut self, query: &serde_json::Value) -> Self {
        self.query_string = query.to_string();
        self
    }

    /// In the order of `field`: `"time"`, or `"values.<dot path>"` for a
    /// field of the values; `reverse` for newest (largest) first.
    pub fn sort(mut self, field: impl Into<String>, reverse: bool) -> Self {
        self.sort = Some(Sort { field: field.into(), reverse });
        self
    }
}

impl State {
    /// The values as JSON (an object; `null` when absent).
    pub fn values_json(&self) -> serde_json::Value {
        self.values.as_ref().map(struct_to_json).unwrap_or(serde_json::Value::Null)
    }

    /// The values as your type.
    pub fn values_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.values_json()).map_err(|e| Error::Json(format!("state values: {e}")))
    }

    /// The state in the gateway's REST (proto3 JSON) form.
    pub fn to_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        o.insert("domain".into(), self.domain.clone().into());
        o.insert("type".into(), self.r#type.clone().into());
        o.insert("key".into(), self.key.clone().into());
        if self.values.is_some() {
            o.insert("values".into(), self.values_json());
        }
        o.insert("version".into(), self.version.to_string().into());
        serde_json::Value::Object(o)
    }
}

impl Event {
    /// The values of the state after this change (`null` for a deletion).
    pub fn values_json(&self) -> serde_json::Value {
        self.state.as_ref().map(State::values_json).unwrap_or(serde_json::Value::Null)
    }

    pub fn values_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.values_json()).map_err(|e| Error::Json(format!("event values: {e}")))
    }

    /// The event in the gateway's REST (proto3 JSON) form.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "state": self.state.as_ref().map(State::to_json).unwrap_or(serde_json::Value::Null),
            "claims": self.claims.as_ref().map(struct_to_json).unwrap_or(serde_json::json!({})),
            "time": self.time.to_string(),
            "version": self.version.to_string(),
            "kind": self.kind().as_str_name(),
            "method": self.method,
            "sequence": self.sequence.to_string(),
        })
    }
}

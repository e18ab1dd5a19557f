//! Load generation: gRPC clients (one loopback connection each), the
//! closed-loop driver of the unary steps, and stream opening for the fan-out
//! and memory scenarios.

use crate::measure::{Measured, histogram, process_cpu_secs};
use crate::requests::{
    DOMAIN, GROUPS, Op, event_search_request, full_page, get_request, set_request, state_search_request,
};
use anyhow::{Context, Result};
use futures::StreamExt;
use stategate::proto as pb;
use stategate::proto::{event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Streams per client connection in the fan-out and idle-stream scenarios.
pub const STREAMS_PER_CONNECTION: usize = 125;

/// A small fast PRNG (xorshift64*), one per client.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

pub async fn connect(addr: SocketAddr) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

#[derive(Clone)]
pub struct Clients {
    pub state: StateServiceClient<Channel>,
    pub events: EventServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    /// `authorization` header value sent with every call, if any.
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Clients {
    pub fn new(ch: Channel) -> Self {
        Clients {
            state: StateServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            events: EventServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            health: HealthClient::new(ch),
            auth: None,
        }
    }
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.auth = token.map(|t| format!("Bearer {t}").parse().expect("a token is ASCII"));
        self
    }
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }
}

/// What the closed-loop clients of a step call, and as whom.
#[derive(Clone, Copy)]
pub struct Load<'a> {
    pub op: Op,
    /// Records seeded under `bench/rec` (keys `record_key(0..records)`):
    /// `Get` picks one of them at random.
    pub records: usize,
    /// Bearer token sent with every call.
    pub token: Option<&'a str>,
}

impl Load<'_> {
    pub fn new(op: Op, records: usize) -> Load<'static> {
        Load { op, records: records.max(1), token: None }
    }
}

/// Runs `clients` closed-loop clients (one connection each) for warm-up +
/// measured time; latencies of the measured part only.
pub async fn drive(addr: SocketAddr, clients: usize, warmup: f64, secs: f64, load: Load<'_>) -> Result<Measured> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Clients::new(connect(addr).await?).with_token(load.token));
    }
    let (op, records) = (load.op, load.records);
    closed_loop(conns, warmup, secs, move |cl, c, i, rng| Box::pin(call(cl, op, records, c, i, rng))).await
}

/// Runs one closed-loop client task per state for warm-up + measured time,
/// each making `call` back to back; latencies, errors and the process's CPU
/// of the measured part only. Shared by the gateway and bare-database loads
/// so both are measured the same way.
pub async fn closed_loop<S, F>(states: Vec<S>, warmup: f64, secs: f64, call: F) -> Result<Measured>
where
    S: Send + 'static,
    F: for<'a> Fn(&'a mut S, usize, u64, &'a mut Rng) -> futures::future::BoxFuture<'a, Result<(), String>>
        + Clone
        + Send
        + 'static,
{
    let start = Instant::now() + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = states
        .into_iter()
        .enumerate()
        .map(|(c, mut state)| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
                let mut rng = Rng::new(c as u64 + 1);
                let mut i = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let result = call(&mut state, c, i, &mut rng).await;
                    i += 1;
                    if t0 >= start {
                        match result {
                            Ok(()) => {
                                ops += 1;
                                let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                            }
                            Err(e) => {
                                errors += 1;
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                }
                (hist, ops, errors, first_error)
            })
        })
        .collect();
    tokio::time::sleep_until(start.into()).await;
    let cpu_start = process_cpu_secs();
    tokio::time::sleep_until(end.into()).await;
    let cpu_secs = process_cpu_secs() - cpu_start;
    let mut m = Measured { ops: 0, errors: 0, secs, hist: histogram(), first_error: None, cpu_secs, writes: None };
    for t in tasks {
        let (h, ops, errors, first_error) = t.await?;
        m.hist.add(&h)?;
        m.ops += ops;
        m.errors += errors;
        if m.first_error.is_none() {
            m.first_error = first_error;
        }
    }
    Ok(m)
}

async fn call(cl: &mut Clients, op: Op, records: usize, client: usize, i: u64, rng: &mut Rng) -> Result<(), String> {
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match op {
        Op::Set => {
            let r = cl.req(set_request(client, i));
            cl.state.set(r).await.map_err(status)?;
        }
        Op::Get => {
            let r = cl.req(get_request(rng.below(records)));
            cl.state.get(r).await.map_err(status)?;
        }
        Op::Search => {
            let r = cl.req(state_search_request(rng.below(GROUPS)));
            let n = cl.state.search(r).await.map_err(status)?.into_inner().state_values.len();
            full_page("search", n)?;
        }
        Op::EventSearch => {
            let r = cl.req(event_search_request(rng.below(GROUPS)));
            let n = cl.events.search(r).await.map_err(status)?.into_inner().events.len();
            full_page("event search", n)?;
        }
        Op::Health => {
            let r = cl.req(HealthCheckRequest { service: String::new() });
            cl.health.check(r).await.map_err(status)?;
        }
    }
    Ok(())
}

/// Opens `n` streams of `bench/<ty>`, STREAMS_PER_CONNECTION per connection;
/// returns once every one has its response headers (is subscribed).
pub async fn open_streams(addr: SocketAddr, n: usize, ty: &str) -> Result<Vec<tonic::Streaming<pb::Event>>> {
    open_filtered_streams(addr, n, ty, 0).await
}

/// The same, stream `i` filtered to `group` = `g{i % filters}` (one of the
/// values the writers' `values_1k` cycle through) when `filters` > 0.
pub async fn open_filtered_streams(addr: SocketAddr, n: usize, ty: &str, filters: usize) -> Result<Vec<tonic::Streaming<pb::Event>>> {
    let mut conns = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_CONNECTION) {
        conns.push(Clients::new(connect(addr).await?));
    }
    let opens = (0..n).map(|i| {
        let mut c = conns[i / STREAMS_PER_CONNECTION].clone();
        let ty = ty.to_owned();
        async move {
            c.events
                .stream(pb::StreamOpts {
                    domain: DOMAIN.into(),
                    r#type: ty,
                    query_string: if filters > 0 { format!(r#"{{"group":"g{}"}}"#, i % filters) } else { String::new() },
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    });
    let streams: Vec<_> = futures::stream::iter(opens).buffer_unordered(256).collect().await;
    streams
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|s| anyhow::anyhow!("opening a stream: {:?}: {}", s.code(), s.message()))
}

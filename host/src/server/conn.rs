//! Serving one listening socket so that a peer, before any token is
//! checked, can hold only bounded resources for a bounded time.
//!
//! Invariants:
//! - A connection holds a slot of its listener's cap and of its peer
//!   address's cap from accept to close; past either cap a new connection
//!   is closed as soon as it is accepted (`stategate_connections_refused_total`).
//! - A new connection must finish its TLS handshake and start talking HTTP
//!   (send a whole request, or as many bytes as the HTTP/2 preface) within
//!   the handshake timeout; a peer that trickles a few bytes does not count
//!   as started. After that, a connection with no call
//!   open for the idle timeout is shut down gracefully (HTTP/2 GOAWAY;
//!   HTTP/1 closes between requests) and dropped if it has not closed one
//!   handshake timeout later. A call is open from its request head to the
//!   end of its response body, so a long stream keeps its connection; HTTP/2
//!   pings (set on the builder) find peers that vanished mid-stream.
//! - A failing `accept` (mostly: out of descriptors, which repeats until one
//!   is freed) backs off exponentially up to a second and logs once per
//!   episode instead of spinning. A listener with spare descriptors (the
//!   ops port) gives one up and accepts again, so health checks and metrics
//!   answer while the API port has used up the process's descriptors.
//! - Shutdown: stop accepting, ask every connection to finish (graceful),
//!   wait up to the grace period for them, then drop the rest.
//!
//! Over 500 lines on purpose: the caps, the timeouts and the accept loop
//! share one connection lifecycle, and each invariant above is kept only
//! by all of them together.

use super::fds::{self, Spares};
use crate::api::HttpService;
use crate::gateway::PEER_HEADER;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How one listener bounds its connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `api` or `ops`: the `listener` label of the metrics and logs.
    pub name: &'static str,
    /// The variable that sets `max_connections`, for the refusal log.
    pub max_connections_variable: &'static str,
    pub max_connections: usize,
    pub max_per_peer: usize,
    pub handshake_timeout: Duration,
    /// `None`: connections with no open call stay open.
    pub idle_timeout: Option<Duration>,
    /// Spare descriptors kept for accepting when out of them (0: none).
    pub spare_descriptors: usize,
    /// How long shutdown waits for open connections.
    pub grace: Duration,
}

/// Connection metrics, one set per gateway registry.
#[derive(Clone)]
pub struct Metrics {
    open: IntGaugeVec,
    refused: IntCounterVec,
    closed: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Self {
        let m = Metrics {
            open: IntGaugeVec::new(Opts::new("connections", "Open connections by listener"), &["listener"]).unwrap(),
            refused: IntCounterVec::new(
                Opts::new("connections_refused_total", "Connections closed on accept by listener and cap (max_connections, max_per_peer)"),
                &["listener", "reason"],
            )
            .unwrap(),
            closed: IntCounterVec::new(
                Opts::new("connections_timed_out_total", "Connections the server closed by listener and timeout (handshake, idle)"),
                &["listener", "reason"],
            )
            .unwrap(),
        };
        for c in [
            Box::new(m.open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.refused.clone()),
            Box::new(m.closed.clone()),
        ] {
            // A second gateway in the same registry shares the first's.
            let _ = registry.register(c);
        }
        m
    }
}

/// Accepts and serves connections on `listener` until `shutdown`, then
/// drains them (see the module docs).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: impl HttpService,
    builder: ConnBuilder<TokioExecutor>,
    settings: Settings,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let settings = Arc::new(settings);
    let max = settings.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let peers = Peers::default();
    let spares = Spares::new(settings.spare_descriptors);
    let force = CancellationToken::new();
    let mut failures = AcceptFailures::new(settings.name);
    let mut refusals = Refusals::new(settings.name);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(a) => {
                failures.recovered();
                a
            }
            Err(e) => {
                if fds::out_of_descriptors(&e) && spares.release() {
                    continue;
                }
                let wait = failures.failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refused(&metrics, "max_connections", settings.max_connections_variable, peer);
            continue;
        };
        let Some(peer_slot) = peers.acquire(peer.ip(), settings.max_per_peer) else {
            refusals.refused(&metrics, "max_per_peer", "STATEGATE_MAX_CONNECTIONS_PER_PEER", peer);
            continue;
        };
        let conn = Connection {
            peer,
            settings: settings.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            force: force.clone(),
            _slots: (slot, peer_slot),
        };
        let (tls, app, builder, spares) = (tls.clone(), app.clone(), builder.clone(), spares.clone());
        tokio::spawn(async move {
            conn.run(socket, tls, app, builder).await;
            spares.refill();
        });
    }
    drop(listener);
    let everyone = max as u32;
    if tokio::time::timeout(settings.grace, slots.acquire_many(everyone)).await.is_err() {
        tracing::warn!(listener = settings.name, "shutdown grace period over; dropping remaining connections");
        force.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(everyone)).await;
    }
}

struct Connection {
    peer: SocketAddr,
    settings: Arc<Settings>,
    metrics: Metrics,
    shutdown: CancellationToken,
    force: CancellationToken,
    _slots: (OwnedSemaphorePermit, PeerSlot),
}

impl Connection {
    async fn run(self, socket: TcpStream, tls: Option<TlsAcceptor>, app: impl HttpService, builder: ConnBuilder<TokioExecutor>) {
        let open = self.metrics.open.with_label_values(&[self.settings.name]);
        open.inc();
        let accepted = tokio::time::Instant::now();
        let _ = socket.set_nodelay(true);
        match tls {
            None => self.serve(socket, accepted, app, &builder).await,
            Some(tls) => {
                let handshake = tls.accept(socket);
                match tokio::time::timeout_at(accepted + self.settings.handshake_timeout, handshake).await {
                    Ok(Ok(stream)) => self.serve(stream, accepted, app, &builder).await,
                    Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
                    Err(_) => self.timed_out("handshake"),
                }
            }
        }
        open.dec();
    }

    fn timed_out(&self, reason: &'static str) {
        self.metrics.closed.with_label_values(&[self.settings.name, reason]).inc();
        tracing::debug!(peer = %self.peer, listener = self.settings.name, reason, "closing a connection that timed out");
    }

    async fn serve<I>(&self, io: I, accepted: tokio::time::Instant, app: impl HttpService, builder: &ConnBuilder<TokioExecutor>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new(accepted));
        let service = Tracked {
            app,
            activity: activity.clone(),
            peer: HeaderValue::from_str(&self.peer.to_string()).ok(),
        };
        let io = TokioIo::new(Watched {
            inner: io,
            activity: activity.clone(),
            seen: 0,
            write_put_off: false,
        });
        let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
        tokio::pin!(conn);
        let far = accepted + Duration::from_secs(100 * 365 * 24 * 3600);
        // Set once the connection was asked to close because it timed out:
        // after this it is dropped even if the peer does not cooperate.
        let mut drop_at: Option<tokio::time::Instant> = None;
        let mut draining = false;
        loop {
            let check_at = activity.next_check(&self.settings);
            let watching = drop_at.is_none() && !draining;
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = self.force.cancelled() => return,
                _ = activity.idle.notified(), if watching => {}
                _ = tokio::time::sleep_until(check_at.unwrap_or(far)), if watching && check_at.is_some() => {
                    if let Some(reason) = activity.expired(&self.settings) {
                        self.timed_out(reason);
                        conn.as_mut().graceful_shutdown();
                        drop_at = Some(tokio::time::Instant::now() + self.settings.handshake_timeout);
                    }
                }
                _ = tokio::time::sleep_until(drop_at.unwrap_or(far)), if drop_at.is_some() => return,
            }
        }
    }
}

/// What the idle and handshake timeouts look at: whether the peer has
/// started talking HTTP, how many calls are open and when the last one
/// started or ended.
struct Activity {
    /// The accept time: the millisecond clock below counts from it.
    accepted: tokio::time::Instant,
    /// A call has started, or [`STARTED_AFTER`] bytes arrived.
    started: AtomicBool,
    open_calls: AtomicUsize,
    /// Milliseconds from accept to the last call's start or end.
    last_call_ms: AtomicU64,
    /// Woken when the last open call ends (the idle clock starts).
    idle: Notify,
}

impl Activity {
    fn new(accepted: tokio::time::Instant) -> Self {
        Activity {
            accepted,
            started: AtomicBool::new(false),
            open_calls: AtomicUsize::new(0),
            last_call_ms: AtomicU64::new(0),
            idle: Notify::new(),
        }
    }

    /// When the connection may next have timed out; `None` while a call is
    /// open (the end of the last one wakes `idle`).
    fn next_check(&self, s: &Settings) -> Option<tokio::time::Instant> {
        let accepted = self.accepted;
        if !self.started.load(Ordering::Acquire) {
            return Some(accepted + s.handshake_timeout);
        }
        if self.open_calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_call_ms.load(Ordering::Acquire));
        s.idle_timeout.map(|idle| accepted + last + idle)
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, s: &Settings) -> Option<&'static str> {
        let now = tokio::time::Instant::now();
        if !self.started.load(Ordering::Acquire) {
            return (now >= self.accepted + s.handshake_timeout).then_some("handshake");
        }
        let due = self.next_check(s)?;
        (now >= due).then_some("idle")
    }
}

/// One open call: counted from its request head until its response body
/// is finished or dropped.
struct CallGuard {
    activity: Arc<Activity>,
}

impl CallGuard {
    fn start(activity: Arc<Activity>) -> Self {
        activity.open_calls.fetch_add(1, Ordering::AcqRel);
        activity.started.store(true, Ordering::Release);
        let guard = CallGuard { activity };
        guard.touch();
        guard
    }

    fn touch(&self) {
        let ms = self.activity.accepted.elapsed().as_millis().min(u64::MAX as u128) as u64;
        self.activity.last_call_ms.fetch_max(ms, Ordering::AcqRel);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // Stamp the time before the count falls, so a watcher that sees no
        // open call also sees this call's end.
        self.touch();
        if self.activity.open_calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.activity.idle.notify_one();
        }
    }
}

/// Bytes after which a connection counts as started: the length of the
/// HTTP/2 client preface (an HTTP/1 request starts a call sooner).
const STARTED_AFTER: usize = 24;

/// The socket (or TLS stream), counting the first bytes the peer sends.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
    /// Bytes read so far, counted up to [`STARTED_AFTER`].
    seen: usize,
    /// This flush's write was put off once already ([`Watched::put_off_write`]).
    write_put_off: bool,
}

impl<I> Watched<I> {
    /// Whether to put this write off by one turn of the scheduler, so that
    /// the responses of the connection's other calls leave with it.
    ///
    /// The connection task writes as soon as one call's response is ready,
    /// and it runs as soon as a call's task wakes it (tokio runs a task
    /// woken by a task on the same thread next): so each response left in
    /// a write of its own even when the calls answered by one commit were
    /// all ready to run, 0.86 `sendto` a `Set` (0.25 now). When other calls
    /// are still open on the connection, the first write of a flush yields
    /// once: the task wakes itself and returns `Pending`, which sends it
    /// behind the tasks already queued on its thread; their responses join
    /// h2's buffer, and the next poll writes them all. The delay is bounded
    /// by that queue, never a timer, and a connection with no other call
    /// open (one call at a time, HTTP/1) writes at once. BENCHMARKS.md,
    /// session 46.
    fn put_off_write(&mut self, cx: &mut Context<'_>) -> bool {
        // The call being answered may still count as open (HTTP/1 writes
        // its body from the connection task), so put off only for another.
        if self.write_put_off || self.activity.open_calls.load(Ordering::Relaxed) < 2 {
            return false;
        }
        self.write_put_off = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.seen < STARTED_AFTER {
            self.seen += buf.filled().len() - before;
            if self.seen >= STARTED_AFTER {
                self.activity.started.store(true, Ordering::Release);
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.put_off_write(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.put_off_write(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// Says no: h2 decides from this how to buffer a DATA frame. Told yes,
    /// it keeps every payload of 256 bytes or more aside and must write it
    /// out before it takes the next frame, so each such response (a `Get`
    /// or `Set` of a few hundred bytes of values) costs a write of its own:
    /// 1.69 per `Get` against 0.73 per health check, whose reply is smaller.
    /// Told no, it copies payloads under 1 KiB into its write buffer, and
    /// the responses finished while the connection was busy leave together
    /// in one write (BENCHMARKS.md, session 16). The price: a payload over
    /// 1 KiB (a search's page) is written by a second `write` after the
    /// buffer's instead of one `writev` with it, and HTTP/1 (REST) copies a
    /// response's body into its head's buffer.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A flush ends the writes it put off: the next write starts a new one.
        self.write_put_off = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The app as one connection's service: stamps the real peer on every
/// request (replacing any client-sent value: rate limits and policies may
/// key on it) and counts the call as open until its response body ends.
#[derive(Clone)]
struct Tracked<S> {
    app: S,
    activity: Arc<Activity>,
    peer: Option<HeaderValue>,
}

impl<S: HttpService> tower::Service<http::Request<Incoming>> for Tracked<S> {
    type Response = http::Response<OpenCall>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // What the listeners serve is always ready (a Router, `api::browser::Browser`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        let call = CallGuard::start(self.activity.clone());
        // `insert` replaces every value a client sent under the name. The
        // name is made once: by `&str` each call parsed and hashed it
        // twice (0.4k instructions).
        static PEER: HeaderName = HeaderName::from_static(PEER_HEADER);
        match &self.peer {
            Some(v) => req.headers_mut().insert(PEER.clone(), v.clone()),
            None => req.headers_mut().remove(&PEER),
        };
        TrackedFuture {
            inner: tower::Service::call(&mut self.app, req),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        call: Option<CallGuard>,
    }
}

impl<F: std::future::Future<Output = Result<http::Response<Body>, Infallible>>> std::future::Future for TrackedFuture<F> {
    type Output = Result<http::Response<OpenCall>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        let call = this.call.take();
        Poll::Ready(Ok(response.map(|body| OpenCall { body, _call: call })))
    }
}

/// A response body that keeps its call counted as open. hyper serves it
/// as it is; boxing it again as a `Body` cost every call one more
/// allocation and one more dynamic call per frame.
struct OpenCall {
    body: Body,
    _call: Option<CallGuard>,
}

impl http_body::Body for OpenCall {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Open connections per peer address.
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl Peers {
    fn acquire(&self, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let ip = ip.to_canonical();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot { peers: self.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Back-off after failed accepts, logged once per run of failures.
struct AcceptFailures {
    listener: &'static str,
    streak: u32,
}

impl AcceptFailures {
    const FIRST: Duration = Duration::from_millis(5);
    const LONGEST: Duration = Duration::from_secs(1);

    fn new(listener: &'static str) -> Self {
        AcceptFailures { listener, streak: 0 }
    }

    /// Records a failure; returns how long to wait before the next accept.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.streak += 1;
        if self.streak == 1 {
            tracing::warn!(
                listener = self.listener,
                error = %e,
                "accept failed; backing off (up to 1 s between tries) until it succeeds"
            );
        } else {
            tracing::debug!(listener = self.listener, error = %e, failures = self.streak, "accept failed again");
        }
        Self::FIRST.saturating_mul(1 << (self.streak - 1).min(10)).min(Self::LONGEST)
    }

    fn recovered(&mut self) {
        if self.streak > 0 {
            tracing::info!(listener = self.listener, failures = self.streak, "accepting connections again");
            self.streak = 0;
        }
    }
}

/// Connections closed at a cap: counted always, logged at most every 10 s.
struct Refusals {
    listener: &'static str,
    since_log: u64,
    logged: Option<Instant>,
}

impl Refusals {
    const EVERY: Duration = Duration::from_secs(10);

    fn new(listener: &'static str) -> Self {
        Refusals { listener, since_log: 0, logged: None }
    }

    fn refused(&mut self, metrics: &Metrics, reason: &'static str, variable: &'static str, peer: SocketAddr) {
        metrics.refused.with_label_values(&[self.listener, reason]).inc();
        self.since_log += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            tracing::warn!(
                listener = self.listener,
                %peer,
                refused = self.since_log,
                "connection limit reached ({variable}); closing new connections"
            );
            self.logged = Some(Instant::now());
            self.since_log = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_capped_and_released() {
        let peers = Peers::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = peers.acquire(ip, 2).unwrap();
        let _b = peers.acquire(ip, 2).unwrap();
        assert!(peers.acquire(ip, 2).is_none());
        // An IPv4-mapped IPv6 address is the same peer.
        assert!(peers.acquire("::ffff:10.0.0.1".parse().unwrap(), 2).is_none());
        assert!(peers.acquire("10.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(peers.acquire(ip, 2).is_some());
    }

    #[test]
    fn accept_back_off_grows_to_a_second() {
        let mut f = AcceptFailures::new("test");
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let waits: Vec<Duration> = (0..12).map(|_| f.failed(&e)).collect();
        assert_eq!(waits[0], AcceptFailures::FIRST);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), AcceptFailures::LONGEST);
        f.recovered();
        assert_eq!(f.failed(&e), AcceptFailures::FIRST);
    }

    /// A socket that keeps what each write was given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_write_waits_one_turn_only_while_another_call_is_open() {
        let activity = Arc::new(Activity::new(tokio::time::Instant::now()));
        let mut io = Watched { inner: Writes::default(), activity: activity.clone(), seen: 0, write_put_off: false };
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut write = |io: &mut Watched<Writes>, bytes: &[u8]| Pin::new(io).poll_write(&mut cx, bytes);

        // The call being answered alone: written at once.
        let answered = CallGuard::start(activity.clone());
        assert!(matches!(write(&mut io, b"a"), Poll::Ready(Ok(1))));
        assert_eq!(io.inner.0, [b"a".to_vec()]);

        // Another call open: the flush's first write yields once (its task
        // woken, nothing written), the next goes out, and so does the rest
        // of the same flush.
        let other = CallGuard::start(activity.clone());
        assert!(write(&mut io, b"b").is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert_eq!(io.inner.0.len(), 1);
        assert!(matches!(write(&mut io, b"bc"), Poll::Ready(Ok(2))));
        assert!(matches!(write(&mut io, b"d"), Poll::Ready(Ok(1))));
        assert_eq!(io.inner.0, [b"a".to_vec(), b"bc".to_vec(), b"d".to_vec()]);

        // A flush ends it: the next flush's first write yields again.
        let mut cx2 = Context::from_waker(&waker);
        assert!(Pin::new(&mut io).poll_flush(&mut cx2).is_ready());
        assert!(write(&mut io, b"e").is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);

        // The other call ended, the answered one still open: the next
        // flush writes at once.
        drop(other);
        assert!(Pin::new(&mut io).poll_flush(&mut cx2).is_ready());
        assert!(matches!(write(&mut io, b"f"), Poll::Ready(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
        drop(answered);
    }
}

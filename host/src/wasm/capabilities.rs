//! The WASI capabilities a guest store gets, each checked against the
//! guest's grants, and how a refused use is recorded so the call fails with
//! `PERMISSION_DENIED` naming what was tried (the guest itself only sees an
//! ordinary WASI error, which it may well swallow).
//!
//! - Files: only `grants.dir`, preopened at `/data`. wasmtime-wasi (cap-std)
//!   refuses paths that lead out of the preopen (`..`, absolute symlinks);
//!   `open-at` and `stat-at` are wrapped to record such a refusal. A path
//!   that matches no preopen at all (`/etc/passwd`) is refused inside the
//!   guest by wasi-libc without asking the host, so it cannot be recorded:
//!   the guest sees "no such file" and whatever it does with that (a trap
//!   is `UNAVAILABLE`) is the call's outcome.
//! - TCP (wasi:sockets): only the `grants.net` addresses.
//! - HTTP (wasi:http): only the `grants.http` authorities. Requests are sent
//!   by the host, not through wasi:sockets, so `grants.net` does not allow
//!   HTTP and `grants.http` does not allow raw TCP. A host given by name is
//!   resolved first, and refused if any of its addresses is not public
//!   (loopback, private, link-local, …: [`super::grants::is_public`]) unless
//!   the grants say `http_private`; a plain-HTTP request then goes to the
//!   address that was checked (the `Host` header keeps the name), so a
//!   second lookup cannot lead it elsewhere. An HTTPS request connects by
//!   name (its certificate is verified for that name), after the same
//!   check. A host given as an IP address can only match an entry that
//!   names that address, and is taken as meant.

use super::grants::{Grants, is_public};
use http::Uri;
use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::sync::filesystem::types as fs;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtxBuilder, WasiView};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// The first capability a call used without a grant, shared by the checks
/// of one store. The host reads and clears it around every call.
#[derive(Clone, Default)]
pub struct Denied(Arc<Mutex<Option<String>>>);

impl Denied {
    pub fn record(&self, what: String) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(what);
        }
    }

    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Something in a store that can record a denial (the store data).
pub trait RecordsDenial {
    fn denied(&self) -> &Denied;
}

/// Grants `dir` and `net` on a WASI context builder; refused socket use is
/// recorded in `denied`.
pub fn grant_wasi(b: &mut WasiCtxBuilder, grants: &Grants, net: Arc<Vec<SocketAddr>>, denied: &Denied) -> wasmtime::Result<()> {
    if let Some(dir) = &grants.dir {
        b.preopened_dir(dir, "/data", wasmtime_wasi::FsPerms::ReadWrite)
            .map_err(|e| wasmtime::Error::msg(format!("cannot open grants.dir {}: {e}", dir.display())))?;
    }
    let flag = denied.clone();
    // TCP stays "allowed" so every attempt reaches the address check, which
    // refuses what is not granted and records it.
    b.allow_tcp(true);
    b.allow_ip_name_lookup(!net.is_empty());
    b.socket_addr_check(move |addr, use_| {
        let ok = match use_ {
            SocketAddrUse::TcpBind => !net.is_empty(),
            SocketAddrUse::TcpConnect => net.contains(&addr),
            _ => false,
        };
        if !ok {
            flag.record(format!("network access ({use_:?} {addr})"));
        }
        Box::pin(async move { ok })
    });
    Ok(())
}

/// The wasi:http hooks of one store: sends only requests the grants allow,
/// and only until the current call's deadline.
pub struct HttpGate {
    pub grants: Arc<Grants>,
    pub denied: Denied,
    /// When the current call's time is up (set as each call starts). A
    /// guest blocked in the host is not interrupted by the epoch deadline,
    /// so every wait of a request is bounded by this instead...
    pub deadline: Instant,
    /// ... and a request cut short by it marks the call as out of time,
    /// whatever the guest then makes of the error.
    pub expired: Arc<AtomicBool>,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        // The check uses the parsed URI, the one the request is sent to (so
        // userinfo or a Host header cannot redirect it).
        let authority = request.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        if !self.grants.allows_http(request.uri()) {
            self.denied.record(format!("outbound HTTP to {authority}"));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let host = request.uri().host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_owned();
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = request.uri().port_u16().unwrap_or(if https { 443 } else { 80 });
        let check = !self.grants.http_private && host.parse::<IpAddr>().is_err();
        let denied = self.denied.clone();
        let deadline = self.deadline;
        let budget = deadline.saturating_duration_since(Instant::now());
        let cap = |asked: Option<Duration>| Some(asked.map_or(budget, |d| d.min(budget)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        // A request or body read that failed once the call's time was up
        // failed because of it.
        let expired = self.expired.clone();
        let out_of_time = move |e: wasmtime_wasi_http::Error| {
            if Instant::now() >= deadline {
                expired.store(true, Ordering::SeqCst);
            }
            e
        };
        Box::new(async move {
            let mut request = request;
            if check {
                let resolved = match tokio::time::timeout(budget, tokio::net::lookup_host((host.as_str(), port))).await {
                    Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
                    Ok(Err(_)) => return Err(wasmtime_wasi_http::Error::DestinationNotFound),
                    Err(_) => return Err(out_of_time(wasmtime_wasi_http::Error::DnsTimeout)),
                };
                if let Some(inside) = resolved.iter().find(|a| !is_public(a.ip())) {
                    denied.record(format!(
                        "outbound HTTP to {authority}, which resolves to the non-public address {} (grant http_private to allow it)",
                        inside.ip()
                    ));
                    return Err(wasmtime_wasi_http::Error::DestinationIpProhibited);
                }
                if !https && let Some(checked) = resolved.first() {
                    pin(&mut request, *checked)?;
                }
            }
            let sent = tokio::time::timeout(budget, wasmtime_wasi_http::default_send_request(request, Some(options)));
            let (response, io) = match sent.await {
                Ok(r) => r.map_err(out_of_time.clone())?,
                Err(_) => return Err(out_of_time(wasmtime_wasi_http::Error::ConnectionTimeout)),
            };
            Ok((
                response.map(|body| body.map_err(out_of_time).boxed_unsync()),
                Box::new(io) as Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            ))
        })
    }
}

/// Points a plain-HTTP request at the address its host name was checked
/// at (the `Host` header, set from the name, stays).
fn pin(request: &mut http::Request<WasiBody>, addr: SocketAddr) -> wasmtime_wasi_http::Result<()> {
    let mut parts = request.uri().clone().into_parts();
    parts.authority = Some(addr.to_string().parse().map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?);
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
    Ok(())
}

/// Replaces wasi:filesystem `open-at` and `stat-at` with versions that
/// record a path refused for leading out of the preopen. Call after the WASI
/// interfaces are linked (`add_to_linker_sync`).
pub fn record_filesystem_escapes<T>(linker: &mut Linker<T>) -> wasmtime::Result<()>
where
    T: WasiView + RecordsDenial + 'static,
{
    linker.allow_shadowing(true);
    let mut types = linker.instance(FS_TYPES)?;
    types.func_wrap(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, T>, (fd, path_flags, path, open_flags, flags): OpenAt| {
            let shown = path.clone();
            let r = fs::HostDescriptor::open_at(&mut store.data_mut().filesystem(), fd, path_flags, path, open_flags, flags);
            Ok((checked(store, r, &shown)?,))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.stat-at",
        |mut store: StoreContextMut<'_, T>, (fd, path_flags, path): StatAt| {
            let shown = path.clone();
            let r = fs::HostDescriptor::stat_at(&mut store.data_mut().filesystem(), fd, path_flags, path);
            Ok((checked(store, r, &shown)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// [`record_filesystem_escapes`] for a linker of async calls
/// (`add_to_linker_async`).
pub fn record_filesystem_escapes_async<T>(linker: &mut Linker<T>) -> wasmtime::Result<()>
where
    T: WasiView + RecordsDenial + Send + 'static,
{
    use wasmtime_wasi::p2::bindings::filesystem::types::{self as afs, HostDescriptor};
    // The async bindings have their own copies of the flag types.
    type OpenAt = (Resource<afs::Descriptor>, afs::PathFlags, String, afs::OpenFlags, afs::DescriptorFlags);
    type StatAt = (Resource<afs::Descriptor>, afs::PathFlags, String);
    linker.allow_shadowing(true);
    let mut types = linker.instance(FS_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, T>, (fd, path_flags, path, open_flags, flags): OpenAt| {
            Box::new(async move {
                let shown = path.clone();
                let r = {
                    let mut view = store.data_mut().filesystem();
                    HostDescriptor::open_at(&mut view, fd, path_flags, path, open_flags, flags).await
                };
                Ok((checked(store, r, &shown)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.stat-at",
        |mut store: StoreContextMut<'_, T>, (fd, path_flags, path): StatAt| {
            Box::new(async move {
                let shown = path.clone();
                let r = {
                    let mut view = store.data_mut().filesystem();
                    HostDescriptor::stat_at(&mut view, fd, path_flags, path).await
                };
                Ok((checked(store, r, &shown)?,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

const FS_TYPES: &str = "wasi:filesystem/types@0.2.12";
type OpenAt = (Resource<fs::Descriptor>, fs::PathFlags, String, fs::OpenFlags, fs::DescriptorFlags);
type StatAt = (Resource<fs::Descriptor>, fs::PathFlags, String);

/// The guest-visible result of a filesystem call; `not-permitted` (what
/// cap-std answers for an escape; writes are always permitted under
/// `/data`) is recorded as a denial.
fn checked<T, V>(
    mut store: StoreContextMut<'_, T>,
    r: wasmtime_wasi::p2::FsResult<V>,
    path: &str,
) -> wasmtime::Result<Result<V, fs::ErrorCode>>
where
    T: WasiView + RecordsDenial + 'static,
{
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) => {
            let code = fs::Host::convert_error_code(&mut store.data_mut().filesystem(), e)?;
            if code == fs::ErrorCode::NotPermitted {
                store.data().denied().record(format!("file access to {path:?} outside grants.dir"));
            }
            Ok(Err(code))
        }
    }
}

//! What a web page may make a browser do to the gateway. Browsers attach
//! no credentials of ours (tokens travel in the `authorization` header,
//! which a page on another origin cannot set without a CORS preflight), so
//! the risks are the requests a page can send without asking — "simple"
//! GETs and POSTs — and DNS rebinding against a gateway without
//! authentication on loopback. In order, before any handler runs:
//!
//! 1. Host: when authentication is off and the API listens on loopback,
//!    the `Host` (HTTP/2 `:authority`) must be a loopback name (`localhost`,
//!    `*.localhost`, `127.0.0.0/8`, `[::1]`) or one of
//!    STATEGATE_ALLOWED_HOSTS. A page whose own name was re-pointed at
//!    127.0.0.1 sends its own name and gets 403.
//! 2. Origin: when authentication is off, a request whose `Origin` is not
//!    allowed (below) gets 403, preflights included.
//! 3. Content type: a POST, PUT or PATCH needs a JSON content type
//!    (`application/json` or `…+json`) on the REST API and a gRPC one
//!    (`application/grpc…`) elsewhere; anything else — the text/plain,
//!    form and multipart bodies a page can send without a preflight — gets
//!    415. Always, whatever the authentication.
//! 4. CORS (REST and grpc-web): the origins in STATEGATE_CORS_ORIGINS;
//!    unset, any origin while authentication is on and loopback pages
//!    (`http(s)://localhost|127.x|[::1]` on any port) while it is off.
//!    Native gRPC, which no browser speaks, skips CORS: it would add three
//!    response headers to every call that both ends encode and decode for
//!    nothing, 7–10 % of the CPU of a `Get` (BENCHMARKS.md, round 5). Its
//!    responses are POST responses, never cached, so leaving them without
//!    CORS headers cannot reach a browser through a cache either.
//!
//! Refusals are the REST error envelope (`{"code","message","details"}`),
//! or a gRPC status for a request with a gRPC content type.

use super::status;
use crate::model::{Denial, Error};
use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use http::header::{CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The settings the rules depend on.
#[derive(Debug, Clone)]
pub struct Rules {
    /// STATEGATE_CORS_ORIGINS (empty: unset).
    pub origins: Vec<String>,
    pub auth_enabled: bool,
    /// Check `Host` (authentication off on a loopback address).
    pub check_host: bool,
    /// STATEGATE_ALLOWED_HOSTS.
    pub allowed_hosts: Vec<String>,
}

/// `app` behind the rules above, with native gRPC (POSTs) over HTTP/2 sent
/// straight to `grpc`, the gRPC services: `app` serves it too, but behind
/// its REST routes, a second look at the content type and grpc-web's
/// translation, which every such call paid for (a miss in the REST
/// routes' table, the request and its futures moved through each layer,
/// the response body wrapped once more): with the allocation-free host
/// check below, a health check went from 72.8k to 66.6k instructions and
/// a `Set` from 123.9k to 116.6k (callgrind, BENCHMARKS.md session 29).
/// Anything else (REST, grpc-web, gRPC over HTTP/1.1, which `app` answers
/// with an error) goes to `app`.
/// What it returns is served as it is, not inside another router: an
/// empty router in front cost every call a boxed service and its boxed
/// future (BENCHMARKS.md, session 38).
pub fn guard<G: super::HttpService>(app: Router, grpc: G, rules: &Rules) -> Browser<G> {
    let policy = Arc::new(Policy::new(rules));
    Browser { browsers: app.layer(cors(&policy.origins)), native: grpc, policy }
}

/// Which origins CORS allows.
#[derive(Debug, Clone)]
enum Origins {
    Any,
    Loopback,
    List(Vec<HeaderValue>),
}

impl Origins {
    fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Origins::Any => true,
            Origins::Loopback => is_loopback_origin(origin),
            Origins::List(list) => list.iter().any(|o| o == origin),
        }
    }
}

#[derive(Debug)]
struct Policy {
    origins: Origins,
    /// Refuse requests from origins CORS does not allow.
    refuse_other_origins: bool,
    /// `Some`: the Host check is on, with these extra names (lower case).
    hosts: Option<Vec<String>>,
}

impl Policy {
    fn new(rules: &Rules) -> Self {
        let origins = if rules.origins.iter().any(|o| o == "*") {
            Origins::Any
        } else if !rules.origins.is_empty() {
            Origins::List(rules.origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect())
        } else if rules.auth_enabled {
            Origins::Any
        } else {
            Origins::Loopback
        };
        Policy {
            origins,
            refuse_other_origins: !rules.auth_enabled,
            hosts: rules
                .check_host
                .then(|| rules.allowed_hosts.iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect()),
        }
    }

    /// The refusal for a request the rules do not let through; `media` is
    /// its [`content_type`].
    fn check(&self, req: &Request<Body>, media: Option<&str>) -> Option<Response> {
        let grpc = media.is_some_and(is_grpc);
        if let Some(extra) = &self.hosts
            && let Some(host) = request_host(req)
            && !is_loopback_host(host)
            && !extra.iter().any(|e| e.eq_ignore_ascii_case(host))
        {
            let host = host.to_ascii_lowercase();
            return Some(refuse(
                grpc,
                StatusCode::FORBIDDEN,
                Error::denied(Denial::Browser, format!(
                    "host {host:?} is not a loopback name; with authentication off on loopback only loopback host names (and STATEGATE_ALLOWED_HOSTS) are served"
                )),
            ));
        }
        if self.refuse_other_origins
            && let Some(origin) = req.headers().get(ORIGIN)
            && !self.origins.allows(origin)
        {
            return Some(refuse(
                grpc,
                StatusCode::FORBIDDEN,
                Error::denied(Denial::Browser, format!(
                    "origin {:?} may not call this gateway: with authentication off only loopback pages (and STATEGATE_CORS_ORIGINS) may",
                    origin.to_str().unwrap_or("?")
                )),
            ));
        }
        if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            let rest = req.uri().path().starts_with("/api/");
            let ok = match media {
                Some(ct) if rest => is_json(ct),
                Some(ct) => is_grpc(ct),
                None => false,
            };
            if !ok {
                let want = if rest { "application/json" } else { "application/grpc (or grpc-web)" };
                let got = media.unwrap_or("none");
                return Some(refuse(
                    false,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Error::invalid("content-type", format!("must be {want}, got {got}")),
                ));
            }
        }
        None
    }
}

/// The media type of the request, without parameters (checked on every
/// call, so compared without allocating; media types ignore case).
pub(crate) fn content_type(req: &Request<Body>) -> Option<&str> {
    let value = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim())
}

/// Whether `text` starts with `prefix`, ignoring ASCII case.
pub(crate) fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len() && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// gRPC or grpc-web (`application/grpc…`).
pub(crate) fn is_grpc(media_type: &str) -> bool {
    starts_with_ignoring_case(media_type, "application/grpc")
}

/// grpc-web (`application/grpc-web…`), which browsers send over HTTP/1.1
/// too and which `api::grpc_web` translates.
pub(crate) fn is_grpc_web(media_type: &str) -> bool {
    starts_with_ignoring_case(media_type, "application/grpc-web")
}

fn is_json(media_type: &str) -> bool {
    let suffix = media_type.len().saturating_sub("+json".len());
    media_type.eq_ignore_ascii_case("application/json")
        || (starts_with_ignoring_case(media_type, "application/")
            && media_type.len() > "application/+json".len()
            && media_type.as_bytes()[suffix..].eq_ignore_ascii_case(b"+json"))
}

/// The host the request names (`:authority` or `Host`), without port or
/// trailing dot, as sent: every call with the check on asks, so it is
/// compared ignoring case rather than copied to lower case.
fn request_host(req: &Request<Body>) -> Option<&str> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    Some(strip_port(authority).trim_end_matches('.'))
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(authority: &str) -> &str {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// `localhost`, `*.localhost` (RFC 6761: always loopback), 127.0.0.0/8 and
/// `[::1]`, in any case.
fn is_loopback_host(host: &str) -> bool {
    let suffix = host.len().saturating_sub(".localhost".len());
    if host.eq_ignore_ascii_case("localhost")
        || (host.len() > ".localhost".len() && host.as_bytes()[suffix..].eq_ignore_ascii_case(b".localhost"))
        || host == "[::1]"
    {
        return true;
    }
    host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// `http(s)://<loopback host>[:port]`.
fn is_loopback_origin(origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else { return false };
    let Some(rest) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else {
        return false;
    };
    !rest.contains('/') && is_loopback_host(strip_port(rest))
}

fn refuse(grpc: bool, http_status: StatusCode, e: Error) -> Response {
    if grpc {
        return status::to_status(e).into_http::<Body>();
    }
    (http_status, axum::Json(status::error_body(&e))).into_response()
}

/// The two ways in: with CORS, and straight to the gRPC services for
/// native gRPC.
#[derive(Clone)]
pub struct Browser<G> {
    browsers: Router,
    native: G,
    policy: Arc<Policy>,
}

impl<G: super::HttpService> tower::Service<Request<Body>> for Browser<G> {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Either<G::Future, axum::routing::future::RouteFuture<Infallible>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A Router and the gRPC services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let media = content_type(&req);
        if let Some(refusal) = self.policy.check(&req, media) {
            return Either::Left(ready(Ok(refusal)));
        }
        // Native gRPC over HTTP/2: where `api::fallback` would send it too.
        // gRPC calls are POSTs: a GET or DELETE that carries a gRPC content
        // type (a client's default header) is plain HTTP, served by the REST
        // routes as it is over HTTP/1.1, or told by `api::fallback` to POST.
        let native = req.method() == Method::POST
            && media.is_some_and(|m| is_grpc(m) && !is_grpc_web(m))
            && req.version() == http::Version::HTTP_2;
        Either::Right(if native { Either::Left(self.native.call(req)) } else { Either::Right(self.browsers.call(req)) })
    }
}

/// CORS for browsers (no credentials are involved: tokens travel in the
/// `authorization` header).
fn cors(origins: &Origins) -> CorsLayer {
    let allow_origin = match origins.clone() {
        Origins::Any => AllowOrigin::any(),
        Origins::List(list) => AllowOrigin::list(list),
        Origins::Loopback => AllowOrigin::predicate(|origin: &HeaderValue, _| is_loopback_origin(origin)),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
        .expose_headers(
            ["grpc-status", "grpc-message", "grpc-status-details-bin", "content-type"]
                .map(HeaderName::from_static),
        )
        .max_age(std::time::Duration::from_secs(24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Policy::check` as `Browser::call` asks it.
    fn check(policy: &Policy, req: &Request<Body>) -> Option<Response> {
        policy.check(req, content_type(req))
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    fn policy(auth_enabled: bool, check_host: bool, origins: &[&str]) -> Policy {
        Policy::new(&Rules {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            auth_enabled,
            check_host,
            allowed_hosts: vec!["gw.test".into()],
        })
    }

    #[test]
    fn loopback_names_and_origins() {
        for host in ["localhost", "LocalHost", "app.localhost", "App.LOCALHOST", "127.0.0.1", "127.9.9.9", "[::1]"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["evil.test", "localhost.evil.test", ".localhost", "xlocalhost", "128.0.0.1", "0.0.0.0", "[::2]", "10.0.0.1"] {
            assert!(!is_loopback_host(host), "{host}");
        }
        for origin in ["http://localhost:3000", "http://127.0.0.1:8080", "https://[::1]:1", "http://localhost"] {
            assert!(is_loopback_origin(&HeaderValue::from_static(origin)), "{origin}");
        }
        for origin in ["http://evil.test", "null", "http://localhost.evil.test", "file://", "http://127.0.0.1.evil.test:80"] {
            assert!(!is_loopback_origin(&HeaderValue::from_static(origin)), "{origin}");
        }
        assert_eq!(strip_port("localhost:8080"), "localhost");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn writes_need_a_json_or_grpc_content_type() {
        let p = policy(true, false, &[]);
        let refused = |r: Request<Body>| check(&p, &r).map(|resp| resp.status().as_u16());
        assert_eq!(refused(request("POST", "/api/state/ref/d/t/k", &[("content-type", "text/plain")])), Some(415));
        assert_eq!(refused(request("POST", "/api/state/ref/d/t/k", &[])), Some(415));
        assert_eq!(refused(request("PATCH", "/api/state/ref/d/t/k", &[("content-type", "application/x-www-form-urlencoded")])), Some(415));
        assert_eq!(refused(request("POST", "/api/state/ref/d/t/k", &[("content-type", "Application/JSON; charset=utf-8")])), None);
        assert_eq!(refused(request("PATCH", "/api/state/ref/d/t/k", &[("content-type", "application/merge-patch+json")])), None);
        assert_eq!(refused(request("POST", "/stategate.StateService/Set", &[("content-type", "text/plain")])), Some(415));
        assert_eq!(refused(request("POST", "/stategate.StateService/Set", &[("content-type", "application/grpc-web-text")])), None);
        assert_eq!(refused(request("POST", "/api/state/ref/d/t/k", &[("content-type", "application/+json")])), Some(415));
        assert_eq!(refused(request("POST", "/api/state/ref/d/t/k", &[("content-type", "text/json")])), Some(415));
        assert_eq!(refused(request("POST", "/stategate.StateService/Set", &[("content-type", "Application/GRPC")])), None);
        assert_eq!(refused(request("DELETE", "/api/state/ref/d/t/k", &[])), None);
        assert_eq!(refused(request("GET", "/api/state/ref/d/t/k", &[])), None);
    }

    #[test]
    fn hosts_and_origins_when_auth_is_off() {
        let p = policy(false, true, &[]);
        let status = |r: Request<Body>| check(&p, &r).map(|resp| resp.status().as_u16());
        assert_eq!(status(request("GET", "/api/state/ref/d/t/k", &[("host", "evil.test:8080")])), Some(403));
        assert_eq!(status(request("GET", "http://evil.test:8080/api/state/ref/d/t/k", &[])), Some(403), ":authority");
        assert_eq!(status(request("GET", "/api/state/ref/d/t/k", &[("host", "localhost:8080")])), None);
        assert_eq!(status(request("GET", "/api/state/ref/d/t/k", &[("host", "LocalHost.:8080")])), None, "in any case");
        assert_eq!(status(request("GET", "/api/state/ref/d/t/k", &[("host", "GW.test.")])), None, "an allowed host");
        assert_eq!(status(request("GET", "/api/state/ref/d/t/k", &[("origin", "http://evil.test")])), Some(403));
        assert_eq!(status(request("GET", "/api/state/ref/d/t/k", &[("origin", "http://localhost:5173")])), None);
        // A gRPC request gets a gRPC status.
        let r = check(&p, &request("POST", "/x.S/M", &[("host", "evil.test"), ("content-type", "application/grpc")])).unwrap();
        assert_eq!(r.headers()["grpc-status"], "7");
        // With authentication on, neither host nor origin is refused.
        let on = policy(true, false, &[]);
        assert!(check(&on, &request("GET", "/api/x", &[("host", "evil.test"), ("origin", "http://evil.test")])).is_none());
        // An explicit list replaces the loopback default.
        let listed = policy(false, true, &["https://app.test"]);
        assert!(check(&listed, &request("GET", "/api/x", &[("origin", "https://app.test")])).is_none());
        assert!(check(&listed, &request("GET", "/api/x", &[("origin", "http://localhost:1")])).is_some());
    }
}

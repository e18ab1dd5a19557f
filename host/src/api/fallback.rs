//! What the main port answers to a request no REST route takes, so that a
//! first curl against it says where to go instead of an empty 400:
//!
//! - a gRPC or grpc-web request (content type `application/grpc…`) goes to
//!   the gRPC services; a method they do not have is `UNIMPLEMENTED` naming
//!   it and the services there are (`known_methods`, inside grpc-web's
//!   translation so grpc-web clients get it as trailers too); gRPC or
//!   grpc-web with another method than POST is 405 with `Allow: POST` and
//!   `UNIMPLEMENTED` (a GET or DELETE with a gRPC content type reaches
//!   here only when no REST route takes it); native gRPC needs HTTP/2 (the
//!   server's `api::browser::guard` sends native gRPC POSTs over HTTP/2
//!   straight to the gRPC routes, so here it is answered only over
//!   HTTP/1.1);
//! - a REST path with a method it does not take is 405 with `Allow`;
//! - a REST record path missing a part (`/api/state/ref/users/user/`) is
//!   400 naming the part;
//! - a gRPC method's path requested as plain HTTP is 405 (`Allow: POST`)
//!   saying how to call it;
//! - anything else is 404, pointing at `/openapi.json` and at the ops port
//!   (`/healthz`, `/readyz`, `/metrics` live there, not here).
//!
//! Every REST answer is the error envelope `{"code","message","details"}`.
//! `serve_unmatched` adds this behind the routes it is given, so another
//! route (the web console under `/console/`) is added by merging it into
//! those routes; it then never reaches this fallback.

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use http::header::ALLOW;
use http::{HeaderValue, Method, Request, StatusCode, Version};
use prost::Message;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Code;

/// `routes` (the REST API and whatever else is served over plain HTTP),
/// with `grpc` (the gRPC routes, grpc-web included) and the answers above
/// behind them. `ops_port` is named in the 404 hint.
pub fn serve_unmatched(routes: Router, grpc: Router, methods: Arc<GrpcMethods>, ops_port: u16) -> Router {
    let hint = Arc::new(format!(
        "REST routes are under /api/ (the OpenAPI document is at /openapi.json); gRPC and grpc-web calls are POSTs \
         with content-type application/grpc or application/grpc-web; /healthz, /readyz and /metrics are on the ops \
         port ({ops_port}, STATEGATE_OPS_PORT, by default this port + 1)"
    ));
    routes.method_not_allowed_fallback(method_not_allowed).fallback_service(Unmatched { grpc, methods, hint })
}

/// The full method paths (`/package.Service/Method`) the gRPC routes serve,
/// read from the descriptor sets they were built from.
#[derive(Debug)]
pub struct GrpcMethods {
    paths: BTreeSet<String>,
    services: Vec<String>,
}

impl GrpcMethods {
    /// From encoded `FileDescriptorSet`s (the ones reflection serves).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Self {
        let mut paths = BTreeSet::new();
        let mut services = Vec::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else { continue };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = match package.as_str() {
                        "" => service.name().to_owned(),
                        p => format!("{p}.{}", service.name()),
                    };
                    for method in &service.method {
                        paths.insert(format!("/{name}/{}", method.name()));
                    }
                    services.push(name);
                }
            }
        }
        GrpcMethods { paths, services }
    }

    pub fn contains(&self, path: &str) -> bool {
        self.paths.contains(path)
    }

    fn unknown(&self, path: &str) -> tonic::Status {
        tonic::Status::unimplemented(format!(
            "unknown method {path}; this gateway serves {}",
            self.services.join(", ")
        ))
    }
}

/// Layer of the gRPC services: a method they do not serve is
/// `UNIMPLEMENTED` with a message (tonic's own answer has none). A plain
/// tower service rather than `axum::middleware::from_fn`, which clones and
/// boxes the inner service and boxes a future for every call.
pub fn known_methods<S>(methods: Arc<GrpcMethods>) -> impl tower::Layer<S, Service = KnownMethods<S>> + Clone {
    tower::layer::layer_fn(move |inner| KnownMethods { inner, methods: methods.clone() })
}

/// The service [`known_methods`] wraps the gRPC services in.
#[derive(Clone)]
pub struct KnownMethods<S> {
    inner: S,
    methods: Arc<GrpcMethods>,
}

impl<S: super::HttpService> tower::Service<Request<Body>> for KnownMethods<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The gRPC services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if !self.methods.contains(path) {
            return Either::Right(ready(Ok(self.methods.unknown(path).into_http::<Body>())));
        }
        Either::Left(self.inner.call(request))
    }
}

/// A REST path asked with a method it does not take; axum adds `Allow`.
async fn method_not_allowed(method: Method, uri: http::Uri) -> Response {
    envelope(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        format!("{} does not take {method} (the Allow header lists what it takes)", uri.path()),
    )
}

/// The error envelope with an explicit HTTP status (these answers come
/// from routing, not from a call, so they have no `model::Error`).
fn envelope(http: StatusCode, code: Code, message: String) -> Response {
    let body = serde_json::json!({ "code": code as i32, "message": message, "details": [] });
    (http, axum::Json(body)).into_response()
}

#[derive(Clone)]
struct Unmatched {
    grpc: Router,
    methods: Arc<GrpcMethods>,
    hint: Arc<String>,
}

impl tower::Service<Request<Body>> for Unmatched {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<<Router as tower::Service<Request<Body>>>::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A Router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Every grpc-web call and every request no route took passes here
        // (native gRPC over HTTP/2 goes straight to the gRPC routes,
        // `api::browser`): compared in place, no allocation.
        let media = super::browser::content_type(&req);
        let grpc = media.is_some_and(super::browser::is_grpc);
        let web = media.is_some_and(super::browser::is_grpc_web);
        let answer = match (grpc, web) {
            (true, _) if req.method() != Method::POST => {
                let kind = if web { "grpc-web" } else { "gRPC" };
                let mut r = tonic::Status::unimplemented(format!("{kind} calls are POSTs, not {}", req.method()))
                    .into_http::<Body>();
                *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
                r
            }
            (_, true) => return Either::Left(self.grpc.call(req)),
            (true, _) if req.version() == Version::HTTP_2 => return Either::Left(self.grpc.call(req)),
            (true, _) => envelope(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                format!(
                    "gRPC needs HTTP/2 and this request is {:?}; over HTTP/1.1 use grpc-web \
                     (content-type application/grpc-web) or the REST API (/openapi.json)",
                    req.version()
                ),
            ),
            _ => self.plain(req.method(), req.uri().path()),
        };
        Either::Right(ready(Ok(answer)))
    }
}

impl Unmatched {
    /// A plain HTTP request no route took.
    fn plain(&self, method: &Method, path: &str) -> Response {
        if self.methods.contains(path) {
            let mut r = envelope(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!(
                    "{path} is a gRPC method: POST it with content-type application/grpc (HTTP/2) or \
                     application/grpc-web, or use its REST route ({})",
                    self.hint
                ),
            );
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        if let Some((part, route)) = missing_part(path) {
            return envelope(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                format!("invalid {part}: missing from the path {path:?} (the route is {route})"),
            );
        }
        envelope(StatusCode::NOT_FOUND, Code::NotFound, format!("no route for {method} {path}: {}", self.hint))
    }
}

/// The REST routes whose path holds parts of a name, and those parts.
const NAMED_ROUTES: [(&str, &[&str], &str); 2] = [
    ("/api/state/ref", &["domain", "type", "key"], "/api/state/ref/{domain}/{type}/{key}"),
    ("/api/events/ref", &["id"], "/api/events/ref/{id}"),
];

/// The first part a record or event path lacks (`/api/state/ref/users/user/`
/// lacks the key), with the route it was meant for.
fn missing_part(path: &str) -> Option<(&'static str, &'static str)> {
    for (prefix, parts, route) in NAMED_ROUTES {
        let Some(rest) = path.strip_prefix(prefix) else { continue };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        let given: Vec<&str> = rest.split('/').skip(1).collect();
        return parts
            .iter()
            .enumerate()
            .find(|(i, _)| given.get(*i).is_none_or(|p| p.is_empty()))
            .map(|(_, part)| (*part, route));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_parts_are_named() {
        assert_eq!(missing_part("/api/state/ref/users/user/"), Some(("key", NAMED_ROUTES[0].2)));
        assert_eq!(missing_part("/api/state/ref/users/user"), Some(("key", NAMED_ROUTES[0].2)));
        assert_eq!(missing_part("/api/state/ref/users//alice"), Some(("type", NAMED_ROUTES[0].2)));
        assert_eq!(missing_part("/api/state/ref"), Some(("domain", NAMED_ROUTES[0].2)));
        assert_eq!(missing_part("/api/events/ref/"), Some(("id", NAMED_ROUTES[1].2)));
        assert_eq!(missing_part("/api/state/ref/a/b/c/d/e"), None);
        assert_eq!(missing_part("/api/state/reference/a"), None);
        assert_eq!(missing_part("/api/nope"), None);
    }

    #[test]
    fn methods_come_from_the_descriptors() {
        let m = GrpcMethods::from_descriptor_sets(&[crate::proto::FILE_DESCRIPTOR_SET]);
        assert!(m.contains("/stategate.StateService/Set"));
        assert!(m.contains("/stategate.CatalogService/List"));
        assert!(!m.contains("/stategate.StateService/Nope"));
        let msg = m.unknown("/x.Y/Z").message().to_owned();
        assert!(msg.contains("/x.Y/Z") && msg.contains("stategate.EventService"), "{msg}");
    }
}

//! grpc-web (binary and text modes, server streaming included) on the same
//! port as gRPC: tonic-web translates grpc-web requests, HTTP/1.1 or HTTP/2,
//! to gRPC in front of the same services; CORS lets browser pages on other
//! origins call them (grpc-web and REST; native gRPC is no browser's).

use axum::Router;
use axum::body::Body;
use http::{HeaderName, HeaderValue, Method, Request, header::CONTENT_TYPE};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Wraps the gRPC routes so they also answer grpc-web.
pub fn wrap(grpc: Router) -> Router {
    grpc.layer(tonic_web::GrpcWebLayer::new())
}

/// `app` with CORS on what a browser can send (REST, grpc-web, preflights).
/// Native gRPC, which no browser speaks, skips it: CORS would add three
/// response headers to every call that both ends encode and decode for
/// nothing, 7–10 % of the CPU of a `Get` (BENCHMARKS.md, round 5).
/// Its responses are POST responses, never cached, so leaving them without
/// CORS headers cannot reach a browser through a cache either.
pub fn with_cors(app: Router, origins: &[String]) -> Router {
    Router::new().fallback_service(BrowserCors {
        browsers: app.clone().layer(cors(origins)),
        native: app,
    })
}

/// The two ways in: with CORS, and without it for native gRPC.
#[derive(Clone)]
struct BrowserCors {
    browsers: Router,
    native: Router,
}

impl tower::Service<Request<Body>> for BrowserCors {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = <Router as tower::Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // A Router is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if is_native_grpc(&req) { self.native.call(req) } else { self.browsers.call(req) }
    }
}

/// `application/grpc` and its `+proto` / `;…` forms, not `application/grpc-web…`.
fn is_native_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
}

/// CORS for browsers: `origins` empty allows any origin (no credentials are
/// involved: tokens travel in the `authorization` header).
fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.is_empty() || origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
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

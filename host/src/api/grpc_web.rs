//! grpc-web (binary and text modes, server streaming included) on the same
//! port as gRPC: tonic-web translates grpc-web requests, HTTP/1.1 or HTTP/2,
//! to gRPC in front of the same services; CORS lets browser pages on other
//! origins call them.

use axum::Router;
use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Wraps the gRPC routes so they also answer grpc-web.
pub fn wrap(grpc: Router) -> Router {
    grpc.layer(tonic_web::GrpcWebLayer::new())
}

/// CORS for browsers: `origins` empty allows any origin (no credentials are
/// involved: tokens travel in the `authorization` header).
pub fn cors(origins: &[String]) -> CorsLayer {
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

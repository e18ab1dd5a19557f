//! grpc-web (binary and text modes, server streaming included) on the same
//! port as gRPC: tonic-web translates grpc-web requests, HTTP/1.1 or HTTP/2,
//! to gRPC in front of the same services. What browser pages may call
//! (CORS, origins, hosts, content types) is `browser`.

use axum::Router;

/// The gRPC services as a router that also answers grpc-web.
pub fn wrap(grpc: impl super::HttpService) -> Router {
    Router::new().fallback_service(grpc).layer(tonic_web::GrpcWebLayer::new())
}

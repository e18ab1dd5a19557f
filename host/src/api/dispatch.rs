//! One port, every protocol: which router a request goes to.
//!
//! Native gRPC (`application/grpc`, `application/grpc+proto`, …) goes
//! straight to the gRPC services. Browsers cannot send it (they speak
//! grpc-web), so the CORS layer has nothing to do for it, and the gRPC
//! codec bounds each message itself; skipping the outer router saves a
//! route lookup, the CORS headers on every response and their HPACK work.
//! Everything else (REST, grpc-web, CORS preflights) goes through the full
//! router. Every request is stamped with the peer address first.

use crate::gateway::PEER_HEADER;
use axum::Router;
use axum::routing::future::RouteFuture;
use http::{HeaderMap, HeaderValue, Request, header::CONTENT_TYPE};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct Dispatch {
    /// Every route, with the CORS and body-limit layers.
    pub app: Router,
    /// The gRPC services alone; `None` on a port without them.
    pub grpc: Option<Router>,
}

impl Dispatch {
    /// The service for one connection from `peer`.
    pub fn for_peer(&self, peer: std::net::SocketAddr) -> PeerDispatch {
        PeerDispatch {
            routes: self.clone(),
            peer: HeaderValue::from_str(&peer.to_string()).ok(),
        }
    }
}

#[derive(Clone)]
pub struct PeerDispatch {
    routes: Dispatch,
    peer: Option<HeaderValue>,
}

impl<B> Service<Request<B>> for PeerDispatch
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The real peer replaces any client-sent value: rate limits and
        // policies may key on it.
        req.headers_mut().remove(PEER_HEADER);
        if let Some(v) = &self.peer {
            req.headers_mut().insert(PEER_HEADER, v.clone());
        }
        match &mut self.routes.grpc {
            Some(grpc) if is_native_grpc(req.headers()) => grpc.call(req),
            _ => self.routes.app.call(req),
        }
    }
}

/// `application/grpc` or `application/grpc+<codec>` / `;params`, but not
/// `application/grpc-web…`.
fn is_native_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes) else {
        return false;
    };
    let base = b"application/grpc";
    ct.len() >= base.len()
        && ct[..base.len()].eq_ignore_ascii_case(base)
        && matches!(ct.get(base.len()), None | Some(b'+') | Some(b';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn native_grpc_is_told_from_grpc_web_and_rest() {
        for native in ["application/grpc", "application/grpc+proto", "application/grpc;charset=utf-8", "Application/GRPC"] {
            assert!(is_native_grpc(&with(native)), "{native}");
        }
        for other in ["application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text", "application/json", "application/grpcx"] {
            assert!(!is_native_grpc(&with(other)), "{other}");
        }
        assert!(!is_native_grpc(&HeaderMap::new()));
    }
}

//! The calls that need no token: gRPC health always (Kubernetes probes,
//! load balancers and `stategate health` call it without credentials), and
//! the service descriptions — gRPC reflection and `/openapi.json` — unless
//! STATEGATE_PUBLIC_METADATA=false, which makes them need a valid token
//! (no policy runs on them: they describe the API, not the data).
//!
//! Their streams (health `Watch`, reflection) are counted like event
//! streams: each takes a slot of STATEGATE_MAX_STREAMS, and, because
//! anyone can open them, one of STATEGATE_MAX_PUBLIC_STREAMS too, so
//! anonymous callers can take at most that share of the instance's streams.
//! A refused call is `RESOURCE_EXHAUSTED` (or `UNAUTHENTICATED`) like any
//! other; at shutdown they end with `UNAVAILABLE` as event streams do.

use super::{metadata, status};
use crate::gateway::Gateway;
use crate::model::Error;
use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use http::{Request, header};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::WaitForCancellationFutureOwned;

const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
const REFLECTION: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];
const OPENAPI: &str = "/openapi.json";

#[derive(Debug, Clone)]
pub struct Settings {
    /// Reflection and /openapi.json answer without a token.
    pub public_metadata: bool,
    pub max_public_streams: usize,
}

/// Layer of the gRPC services: health and reflection guarded as above
/// (inside grpc-web's translation, so a refusal reaches grpc-web clients
/// too).
pub fn guard_grpc<S>(gateway: Arc<Gateway>, settings: &Settings) -> impl tower::Layer<S, Service = Guard<S>> + Clone {
    let public_streams = Arc::new(Semaphore::new(settings.max_public_streams.max(1)));
    let (public_metadata, max_public_streams) = (settings.public_metadata, settings.max_public_streams);
    tower::layer::layer_fn(move |inner| Guard {
        inner,
        gateway: gateway.clone(),
        public_metadata,
        public_streams: public_streams.clone(),
        max_public_streams,
    })
}

/// `GET /openapi.json`: the REST API's description (kept beside the
/// routes, checked by the schemathesis test).
pub fn openapi(gateway: Arc<Gateway>, settings: &Settings) -> Router {
    let public = settings.public_metadata;
    Router::new().route(
        OPENAPI,
        axum::routing::get(move |headers: http::HeaderMap| async move {
            if !public && let Err(e) = gateway.verify_token(OPENAPI, &metadata(&gateway, &headers)).await {
                return super::rest::error_response(&e);
            }
            ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
        }),
    )
}

/// The service [`guard_grpc`] wraps the gRPC services in.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    gateway: Arc<Gateway>,
    public_metadata: bool,
    public_streams: Arc<Semaphore>,
    max_public_streams: usize,
}

impl<S: super::HttpService> tower::Service<Request<Body>> for Guard<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The gRPC services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let reflection = REFLECTION.contains(&path);
        if !reflection && path != HEALTH_WATCH {
            return Either::Left(self.inner.call(req));
        }
        let this = self.clone();
        Either::Right(Box::pin(async move { Ok(this.stream(req, reflection).await) }))
    }
}

impl<S: super::HttpService> Guard<S> {
    async fn stream(mut self, req: Request<Body>, reflection: bool) -> Response {
        if reflection && !self.public_metadata {
            let method = req.uri().path().to_owned();
            if let Err(e) = self.gateway.verify_token(&method, &metadata(&self.gateway, req.headers())).await {
                return refuse(e);
            }
        }
        let Ok(public) = self.public_streams.clone().try_acquire_owned() else {
            return refuse(Error::ResourceExhausted(format!(
                "this gateway already serves {} streams that need no token (STATEGATE_MAX_PUBLIC_STREAMS)",
                self.max_public_streams
            )));
        };
        let instance = match self.gateway.stream_slot() {
            Ok(slot) => slot,
            Err(e) => return refuse(e),
        };
        let response = match tower::Service::call(&mut self.inner, req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let shutdown = Box::pin(self.gateway.shutting_down().clone().cancelled_owned());
        response.map(|body| {
            Body::new(Holding {
                body,
                shutdown: Some(shutdown),
                _slots: (public, instance),
            })
        })
    }
}

/// A refusal as gRPC's trailers-only response (grpc-web translates it).
fn refuse(e: Error) -> Response {
    status::to_status(e).into_http::<Body>()
}

/// A response body that keeps its stream slots until it ends, and ends
/// with `UNAVAILABLE` trailers when the gateway shuts down.
struct Holding {
    body: Body,
    /// `None` once the shutdown trailers were sent.
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let Some(shutdown) = self.shutdown.as_mut() else { return Poll::Ready(None) };
        if shutdown.as_mut().poll(cx).is_ready() {
            self.shutdown = None;
            let status = tonic::Status::unavailable("the gateway is shutting down; reconnect to resume");
            let mut trailers = http::HeaderMap::new();
            if status.add_header(&mut trailers).is_ok() {
                return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.shutdown.is_none() || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

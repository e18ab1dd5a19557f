//! gRPC: `StateService`, `EventService` and `CatalogService` on the generated tonic servers,
//! plus health and reflection.

use super::body_memo::BodyMemo;
use super::encode::{EventMessage, StateMessage};
use super::values_request::{EditCall, SetCall};
use super::{convert, measured, metadata, record, status::to_status};
use crate::gateway::{self as gw, Gateway, methods};
use crate::hub::SharedEvent;
use crate::proto as pb;
use futures::future::Either;
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct GrpcApi {
    gateway: Arc<Gateway>,
    /// The encodings of the values `Get` answered lately (`body_memo`).
    bodies: Arc<BodyMemo>,
}

impl GrpcApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let bodies = Arc::new(BodyMemo::new(gateway.metrics()));
        GrpcApi { gateway, bodies }
    }

    /// Runs a gateway call, measured, and wraps its answer.
    ///
    /// The gateway's future is boxed here, once: a `Gateway::set` future is
    /// 2 KB, and unboxed it was carried (and copied) in every layer above
    /// it, which made `set_direct`'s own future 6.7 KB. Boxed, a Set costs
    /// 2.0k fewer instructions and ~3 % less CPU from outside (BENCHMARKS.md,
    /// session 18).
    fn call<'a, T: 'a, R: 'a>(
        &'a self,
        method: &'static str,
        call: impl Future<Output = crate::model::Result<T>> + Send + 'a,
        wrap: impl FnOnce(T) -> R + Send + 'a,
    ) -> impl Future<Output = Result<Response<R>, Status>> + Send + 'a {
        let call = Box::pin(call);
        async move {
            measured(self.gateway.metrics(), method, call)
                .await
                .map(|out| Response::new(wrap(out)))
                .map_err(to_status)
        }
    }
}

/// The headers `authenticate_first` read, as policy input.
#[derive(Clone)]
struct ReadMetadata(crate::auth::Metadata);

/// The call's headers as policy input: those `authenticate_first` already
/// read, else read now.
fn call_metadata<T>(gateway: &Gateway, request: &mut Request<T>) -> crate::auth::Metadata {
    match request.extensions_mut().remove::<ReadMetadata>() {
        Some(ReadMetadata(md)) => md,
        None => metadata(gateway, request.metadata().as_ref()),
    }
}

/// One message as another with the same fields (a generated one as a
/// direct route's, or back), decoded again from its bytes: the generated
/// entry points, which use it, are not served.
fn recoded<T: prost::Message + Default>(m: &impl prost::Message) -> Result<T, Status> {
    T::decode(m.encode_to_vec().as_slice()).map_err(|e| Status::internal(format!("re-decoding a message: {e}")))
}

/// A generated request as the direct route's (see `recoded`).
fn reencoded<M: prost::Message, T: prost::Message + Default>(request: Request<M>) -> Result<Request<T>, Status> {
    let message = recoded(request.get_ref())?;
    Ok(request.map(|_| message))
}

fn ref_request(r: pb::StateRef) -> gw::RefRequest {
    gw::RefRequest {
        domain: r.domain,
        ty: r.r#type,
        key: r.key,
        expected_version: r.expected_version,
        idempotency_key: r.idempotency_key,
        as_of: gw::AsOf {
            as_of_sequence: r.as_of_sequence,
            as_of_time: r.as_of_time,
        },
    }
}

impl GrpcApi {
    async fn set_direct(&self, mut request: Request<SetCall>) -> Result<Response<EventMessage>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let mut s = request.into_inner();
        let (values, body) = match s.values_and_body()? {
            Some((values, body)) => (Some(values), body),
            None => (None, None),
        };
        // The event a Set answers with holds the values it was sent: a new
        // event is made from the request, and a replayed one (same
        // idempotency key) matched the request's fingerprint, which covers
        // them. So, unless a response policy may redact the event, its
        // values go back as the bytes they came in.
        let body = body.filter(|_| !self.gateway.inspects_responses());
        let req = gw::SetRequest {
            values,
            domain: s.domain,
            ty: s.ty,
            key: s.key,
            version: None,
            expected_version: s.expected_version,
            idempotency_key: s.idempotency_key,
        };
        self.call(methods::STATE_SET, self.gateway.set(md, req), |event| EventMessage::with_values_body(event, body)).await
    }

    async fn get_direct(&self, mut request: Request<pb::StateRef>) -> Result<Response<StateMessage>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let req = ref_request(request.into_inner());
        let read = async { StateMessage::new(self.gateway.get(md, req).await?, &self.bodies) };
        self.call(methods::STATE_GET, read, |m| m).await
    }

    async fn del_direct(&self, mut request: Request<pb::StateRef>) -> Result<Response<EventMessage>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let req = ref_request(request.into_inner());
        self.call(methods::STATE_DEL, self.gateway.del(md, req), EventMessage::from).await
    }

    async fn edit_direct(&self, mut request: Request<EditCall>) -> Result<Response<EventMessage>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let mut e = request.into_inner();
        let req = gw::EditRequest {
            patch: e.values()?,
            domain: e.domain,
            ty: e.ty,
            key: e.key,
            expected_version: e.expected_version,
            idempotency_key: e.idempotency_key,
        };
        self.call(methods::STATE_EDIT, self.gateway.edit(md, req), EventMessage::from).await
    }

    async fn revert_direct(&self, mut request: Request<pb::RevertRequest>) -> Result<Response<EventMessage>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let r = request.into_inner();
        let req = gw::RevertRequest {
            domain: r.domain,
            ty: r.r#type,
            key: r.key,
            event_id: r.event_id,
            expected_version: r.expected_version,
            idempotency_key: r.idempotency_key,
        };
        self.call(methods::STATE_REVERT, self.gateway.revert(md, req), EventMessage::from).await
    }
}

/// The generated entry points; `DirectRoutes` serves these methods through
/// `*_direct` (the same call, encoded from the model by `api::encode`) and
/// leaves the generated ones for completeness.
#[tonic::async_trait]
impl pb::state_service_server::StateService for GrpcApi {
    async fn set(&self, request: Request<pb::State>) -> Result<Response<pb::Event>, Status> {
        Ok(self.set_direct(reencoded(request)?).await?.map(|m| convert::event(m.event)))
    }

    async fn get(&self, request: Request<pb::StateRef>) -> Result<Response<pb::State>, Status> {
        // The direct message's bytes are a `pb::State`'s.
        Ok(Response::new(recoded(&self.get_direct(request).await?.into_inner())?))
    }

    async fn del(&self, request: Request<pb::StateRef>) -> Result<Response<pb::Event>, Status> {
        Ok(self.del_direct(request).await?.map(|m| convert::event(m.event)))
    }

    async fn search(&self, mut request: Request<pb::SearchStateOpts>) -> Result<Response<pb::StateValues>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let o = request.into_inner();
        let req = gw::SearchStatesRequest {
            domain: o.domain,
            ty: o.r#type,
            query_string: o.query_string,
            limit: o.limit,
            offset: o.offset,
            sort_by: o.sort_by,
            sort_descending: o.sort_descending,
            as_of: gw::AsOf {
                as_of_sequence: o.as_of_sequence,
                as_of_time: o.as_of_time,
            },
        };
        self.call(methods::STATE_SEARCH, self.gateway.search_states(md, req), |read| pb::StateValues {
            state_values: read.value.into_iter().map(convert::state).collect(),
            sequence: read.seq as i64,
        })
        .await
    }

    async fn edit(&self, request: Request<pb::EditRequest>) -> Result<Response<pb::Event>, Status> {
        Ok(self.edit_direct(reencoded(request)?).await?.map(|m| convert::event(m.event)))
    }

    async fn revert(&self, request: Request<pb::RevertRequest>) -> Result<Response<pb::Event>, Status> {
        Ok(self.revert_direct(request).await?.map(|m| convert::event(m.event)))
    }
}

type EventStreamResponse = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type SharedStream = Pin<Box<dyn Stream<Item = Result<SharedEvent, Status>> + Send>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl GrpcApi {
    async fn get_event_direct(&self, mut request: Request<pb::EventRef>) -> Result<Response<EventMessage>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let req = gw::EventRefRequest { id: request.into_inner().id };
        self.call(methods::EVENT_GET, self.gateway.get_event(md, req), EventMessage::from).await
    }

    async fn open_stream(&self, mut request: Request<pb::StreamOpts>) -> Result<Response<SharedStream>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let o = request.into_inner();
        let req = gw::StreamRequest {
            domain: o.domain,
            ty: o.r#type,
            after_event_id: o.after_event_id,
            from_time: o.from_time,
            key: o.key,
            query_string: o.query_string,
            claims_query: o.claims_query,
            kinds: o.kinds.into_iter().map(convert::kind_name).collect(),
            after_sequence: o.after_sequence,
            group: o.group,
            member: o.member,
            ack_timeout_ms: o.ack_timeout_ms,
            max_deliveries: o.max_deliveries,
            max_in_flight: o.max_in_flight,
        };
        self.call(methods::EVENT_STREAM, self.gateway.stream(md, req), |events| {
            Box::pin(events.map(|item| item.map_err(to_status))) as SharedStream
        })
        .await
    }
}

/// A generated service whose hot methods are served here instead: unary
/// calls answer with messages encoded straight from the model
/// (`api::encode`: no `Struct` tree per call), and `EventService/Stream`
/// goes through `SharedEventCodec`, so an event that a thousand streams send
/// is encoded once, not a thousand times. Every other method goes to the
/// generated server. Each call is still the same `GrpcApi` function, with
/// the same codec rules (`StrictCodec`) and size limits.
#[derive(Clone)]
struct DirectRoutes<S> {
    generated: S,
    api: GrpcApi,
    max_message_bytes: usize,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for DirectRoutes<S> {
    const NAME: &'static str = S::NAME;
}

type HttpFuture = BoxFuture<Result<http::Response<tonic::body::Body>, std::convert::Infallible>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for DirectRoutes<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future = HttpFuture,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = HttpFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let (api, max) = (self.api.clone(), self.max_message_bytes);
        macro_rules! direct {
            ($f:ident) => {
                unary(req, max, move |r| {
                    let api = api.clone();
                    async move { api.$f(r).await }
                })
            };
        }
        match req.uri().path() {
            methods::STATE_SET => direct!(set_direct),
            methods::STATE_GET => direct!(get_direct),
            methods::STATE_DEL => direct!(del_direct),
            methods::STATE_EDIT => direct!(edit_direct),
            methods::STATE_REVERT => direct!(revert_direct),
            methods::EVENT_GET => direct!(get_event_direct),
            methods::EVENT_STREAM => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(super::codec::SharedEventCodec)
                    .apply_max_message_size_config(Some(max), Some(max));
                Ok(grpc.server_streaming(SharedStreamSvc(api), req).await)
            }),
            _ => self.generated.call(req),
        }
    }
}

/// Serves one unary call with `call`, decoding `Req` and encoding `Resp`
/// by `StrictCodec`, as the generated servers do.
fn unary<Req, Resp, F, Fut>(req: http::Request<tonic::body::Body>, max: usize, call: F) -> HttpFuture
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnMut(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(super::codec::StrictCodec::<Resp, Req>::default())
            .apply_max_message_size_config(Some(max), Some(max));
        Ok(grpc.unary(UnaryFn(call), req).await)
    })
}

struct UnaryFn<F>(F);

impl<Req, Resp, F, Fut> tonic::server::UnaryService<Req> for UnaryFn<F>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    type Response = Resp;
    type Future = Fut;

    fn call(&mut self, request: Request<Req>) -> Fut {
        (self.0)(request)
    }
}

struct SharedStreamSvc(GrpcApi);

impl tonic::server::ServerStreamingService<pb::StreamOpts> for SharedStreamSvc {
    type Response = SharedEvent;
    type ResponseStream = SharedStream;
    type Future = BoxFuture<Result<Response<SharedStream>, Status>>;

    fn call(&mut self, request: Request<pb::StreamOpts>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.open_stream(request).await })
    }
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for GrpcApi {
    type StreamStream = EventStreamResponse;

    /// Served by `DirectRoutes` through `SharedEventCodec`; this generated
    /// entry point (per-stream encoding) is kept for completeness.
    async fn stream(&self, request: Request<pb::StreamOpts>) -> Result<Response<Self::StreamStream>, Status> {
        let events = self.open_stream(request).await?.into_inner();
        Ok(Response::new(Box::pin(
            events.map(|item| item.map(|e| convert::event(crate::model::Event::clone(&e)))),
        )))
    }

    async fn search(&self, mut request: Request<pb::SearchEventOpts>) -> Result<Response<pb::Events>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let o = request.into_inner();
        let req = gw::SearchEventsRequest {
            domain: o.domain,
            ty: o.r#type,
            key: o.key,
            query_string: o.query_string,
            min: o.min,
            max: o.max,
            limit: o.limit,
            offset: o.offset,
            claims_query: o.claims_query,
            sort: o.sort.map(|s| gw::EventSortRequest { field: s.field, reverse: s.reverse }),
            min_version: o.min_version,
            max_version: o.max_version,
        };
        self.call(methods::EVENT_SEARCH, self.gateway.search_events(md, req), |events| pb::Events {
            events: events.into_iter().map(convert::event).collect(),
        })
        .await
    }

    async fn get(&self, request: Request<pb::EventRef>) -> Result<Response<pb::Event>, Status> {
        Ok(self.get_event_direct(request).await?.map(|m| convert::event(m.event)))
    }

    async fn ack(&self, mut request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let a = request.into_inner();
        let req = gw::AckRequest { domain: a.domain, ty: a.r#type, group: a.group, event_ids: a.event_ids, nack: a.nack };
        self.call(methods::EVENT_ACK, self.gateway.ack(md, req), |out| pb::AckResponse {
            applied: out.applied,
            unknown: out.unknown,
        })
        .await
    }

    async fn parked(&self, mut request: Request<pb::ParkedRequest>) -> Result<Response<pb::ParkedEvents>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let p = request.into_inner();
        let req = gw::ParkedRequest {
            domain: p.domain,
            ty: p.r#type,
            group: p.group,
            replay_ids: p.replay_ids,
            replay_all: p.replay_all,
        };
        self.call(methods::EVENT_PARKED, self.gateway.parked(md, req), |(parked, replayed)| pb::ParkedEvents {
            parked: parked
                .into_iter()
                .map(|(e, n)| pb::ParkedEvent { event: Some(convert::event(e)), deliveries: n as i64 })
                .collect(),
            replayed,
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for GrpcApi {
    async fn list(&self, mut request: Request<pb::CatalogOpts>) -> Result<Response<pb::Catalog>, Status> {
        let md = call_metadata(&self.gateway, &mut request);
        let req = gw::CatalogRequest { domain: request.into_inner().domain };
        self.call(methods::CATALOG_LIST, self.gateway.catalog(md, req), convert::catalog).await
    }
}

/// Refuses a stategate call whose token does not verify before its body is
/// read or decoded: only the headers are looked at, so an anonymous peer
/// cannot make the gateway spend memory on a message it will refuse anyway.
/// Health and reflection are not stategate calls and pass.
///
/// A call refused here is counted in `requests_total` with its code; a call
/// let through is counted once, when it ends. The headers read as policy
/// input travel on in the request's extensions, so the handler does not
/// read them again.
///
/// A plain tower service rather than `axum::middleware::from_fn`, which
/// clones and boxes the inner service and boxes a future for every call:
/// only a token to verify takes a boxed future here.
pub fn authenticate_first<S>(gateway: Arc<Gateway>) -> impl tower::Layer<S, Service = AuthenticateFirst<S>> + Clone {
    tower::layer::layer_fn(move |inner| AuthenticateFirst { inner, gateway: gateway.clone() })
}

/// The service [`authenticate_first`] wraps the gRPC services in.
#[derive(Clone)]
pub struct AuthenticateFirst<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S: super::HttpService> tower::Service<axum::extract::Request> for AuthenticateFirst<S> {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<Result<axum::response::Response, Infallible>>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        // The gRPC services are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: axum::extract::Request) -> Self::Future {
        let path = request.uri().path();
        let Some(method) = methods::ALL.iter().copied().find(|m| *m == path) else {
            return Either::Left(self.inner.call(request));
        };
        let md = metadata(&self.gateway, request.headers());
        if !self.gateway.verifies_tokens() {
            request.extensions_mut().insert(ReadMetadata(md));
            return Either::Left(self.inner.call(request));
        }
        // The inner service is called once the token verified: this one
        // (ready) goes with the call, a clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gateway = self.gateway.clone();
        Either::Right(Box::pin(async move {
            let started = std::time::Instant::now();
            if let Err(e) = gateway.verify_token(method, &md).await {
                record(gateway.metrics(), method, Err(&e), started.elapsed());
                return Ok(to_status(e).into_http());
            }
            request.extensions_mut().insert(ReadMetadata(md));
            inner.call(request).await
        }))
    }
}

/// The gRPC services: the three stategate services, health and reflection
/// (v1 and v1alpha, so both current and older grpcurl/Postman can list them).
pub async fn services(
    api: GrpcApi,
    max_message_bytes: usize,
) -> GrpcServices<impl TonicService, impl TonicService, impl TonicService> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::state_service_server::StateServiceServer<GrpcApi>>()
        .await;
    health
        .set_serving::<pb::event_service_server::EventServiceServer<GrpcApi>>()
        .await;
    health
        .set_serving::<pb::catalog_service_server::CatalogServiceServer<GrpcApi>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    GrpcServices {
        state: DirectRoutes {
            generated: pb::state_service_server::StateServiceServer::new(api.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            api: api.clone(),
            max_message_bytes,
        },
        catalog: pb::catalog_service_server::CatalogServiceServer::new(api.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes),
        event: DirectRoutes {
            generated: pb::event_service_server::EventServiceServer::new(api.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            api,
            max_message_bytes,
        },
        health: health_service,
        reflection_v1: reflection().build_v1().expect("embedded descriptors are valid"),
        reflection_v1alpha: reflection().build_v1alpha().expect("embedded descriptors are valid"),
    }
}

/// A generated tonic server, as `GrpcServices` calls it.
pub trait TonicService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = HttpFuture,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> TonicService for T where
    T: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future = HttpFuture,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The gRPC services, each called by the name in the path
/// (`/<service>/<method>`): one string match, no allocation. tonic's
/// `Routes` does this with an axum router, whose wildcard routes cost every
/// call a path match, its capture stored as URL parameters in the
/// request's extensions, and boxed services, each cloned per call, with a
/// boxed future each. With the empty routers that stood in front of it
/// (the layers were axum `Route`s), that was 9.5k instructions of a health
/// check's 63.3k (BENCHMARKS.md, session 38).
#[derive(Clone)]
pub struct GrpcServices<H, V1, V1a> {
    state: DirectRoutes<pb::state_service_server::StateServiceServer<GrpcApi>>,
    catalog: pb::catalog_service_server::CatalogServiceServer<GrpcApi>,
    event: DirectRoutes<pb::event_service_server::EventServiceServer<GrpcApi>>,
    health: H,
    reflection_v1: V1,
    reflection_v1alpha: V1a,
}

type IntoAxum = fn(http::Response<tonic::body::Body>) -> axum::response::Response;

impl<H: TonicService, V1: TonicService, V1a: TonicService> tower::Service<axum::extract::Request>
    for GrpcServices<H, V1, V1a>
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = futures::future::MapOk<HttpFuture, IntoAxum>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        // Every service here is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        use futures::TryFutureExt;
        let request = request.map(tonic::body::Body::new);
        let service = request.uri().path().strip_prefix('/').and_then(|p| p.split_once('/')).map_or("", |(s, _)| s);
        let call = match service {
            pb::state_service_server::SERVICE_NAME => self.state.call(request),
            pb::event_service_server::SERVICE_NAME => self.event.call(request),
            pb::catalog_service_server::SERVICE_NAME => self.catalog.call(request),
            tonic_health::pb::health_server::SERVICE_NAME => self.health.call(request),
            tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME => self.reflection_v1.call(request),
            tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME => {
                self.reflection_v1alpha.call(request)
            }
            // `api::fallback::known_methods` answers these first, with a message.
            other => {
                let status = Status::unimplemented(format!("this gateway serves no gRPC service {other:?}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        };
        call.map_ok(into_axum as IntoAxum)
    }
}

fn into_axum(response: http::Response<tonic::body::Body>) -> axum::response::Response {
    response.map(axum::body::Body::new)
}

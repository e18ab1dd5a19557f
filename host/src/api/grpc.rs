//! gRPC: `StateService`, `EventService` and `CatalogService` on the generated tonic servers,
//! plus health and reflection.

use super::{convert, measured, metadata, status::to_status};
use crate::gateway::{self as gw, Gateway, methods};
use crate::hub::SharedEvent;
use crate::proto as pb;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct GrpcApi {
    gateway: Arc<Gateway>,
}

impl GrpcApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        GrpcApi { gateway }
    }

    async fn call<T, R>(
        &self,
        method: &str,
        call: impl Future<Output = crate::model::Result<T>>,
        wrap: impl FnOnce(T) -> R,
    ) -> Result<Response<R>, Status> {
        measured(self.gateway.metrics(), method, call)
            .await
            .map(|out| Response::new(wrap(out)))
            .map_err(to_status)
    }
}

fn values(field: &str, s: Option<prost_types::Struct>) -> Result<Option<crate::model::Values>, Status> {
    s.map(|s| convert::struct_to_json(field, s)).transpose().map_err(to_status)
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

#[tonic::async_trait]
impl pb::state_service_server::StateService for GrpcApi {
    async fn set(&self, request: Request<pb::State>) -> Result<Response<pb::Event>, Status> {
        let md = metadata(request.metadata().as_ref());
        let s = request.into_inner();
        let req = gw::SetRequest {
            domain: s.domain,
            ty: s.r#type,
            key: s.key,
            values: values("values", s.values)?,
            version: None,
            expected_version: s.expected_version,
            idempotency_key: s.idempotency_key,
        };
        self.call(methods::STATE_SET, self.gateway.set(md, req), convert::event).await
    }

    async fn get(&self, request: Request<pb::StateRef>) -> Result<Response<pb::State>, Status> {
        let md = metadata(request.metadata().as_ref());
        let req = ref_request(request.into_inner());
        self.call(methods::STATE_GET, self.gateway.get(md, req), |read| pb::State {
            sequence: read.seq as i64,
            ..convert::state(read.value)
        })
        .await
    }

    async fn del(&self, request: Request<pb::StateRef>) -> Result<Response<pb::Event>, Status> {
        let md = metadata(request.metadata().as_ref());
        let req = ref_request(request.into_inner());
        self.call(methods::STATE_DEL, self.gateway.del(md, req), convert::event).await
    }

    async fn search(&self, request: Request<pb::SearchStateOpts>) -> Result<Response<pb::StateValues>, Status> {
        let md = metadata(request.metadata().as_ref());
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
        let md = metadata(request.metadata().as_ref());
        let e = request.into_inner();
        let req = gw::EditRequest {
            domain: e.domain,
            ty: e.r#type,
            key: e.key,
            patch: values("patch", e.patch)?,
            expected_version: e.expected_version,
            idempotency_key: e.idempotency_key,
        };
        self.call(methods::STATE_EDIT, self.gateway.edit(md, req), convert::event).await
    }

    async fn revert(&self, request: Request<pb::RevertRequest>) -> Result<Response<pb::Event>, Status> {
        let md = metadata(request.metadata().as_ref());
        let r = request.into_inner();
        let req = gw::RevertRequest {
            domain: r.domain,
            ty: r.r#type,
            key: r.key,
            event_id: r.event_id,
            expected_version: r.expected_version,
            idempotency_key: r.idempotency_key,
        };
        self.call(methods::STATE_REVERT, self.gateway.revert(md, req), convert::event).await
    }
}

type EventStreamResponse = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type SharedStream = Pin<Box<dyn Stream<Item = Result<SharedEvent, Status>> + Send>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl GrpcApi {
    async fn open_stream(&self, request: Request<pb::StreamOpts>) -> Result<Response<SharedStream>, Status> {
        let md = metadata(request.metadata().as_ref());
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
        };
        self.call(methods::EVENT_STREAM, self.gateway.stream(md, req), |events| {
            Box::pin(events.map(|item| item.map_err(to_status))) as SharedStream
        })
        .await
    }
}

/// `EventService` as generated, except `Stream`: it goes through
/// `SharedEventCodec`, so an event that a thousand streams send is converted
/// and encoded once, not a thousand times.
#[derive(Clone)]
struct EventRoutes {
    generated: pb::event_service_server::EventServiceServer<GrpcApi>,
    api: GrpcApi,
    max_message_bytes: usize,
}

impl tonic::server::NamedService for EventRoutes {
    const NAME: &'static str =
        <pb::event_service_server::EventServiceServer<GrpcApi> as tonic::server::NamedService>::NAME;
}

impl tower::Service<http::Request<tonic::body::Body>> for EventRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != methods::EVENT_STREAM {
            return self.generated.call(req);
        }
        let api = self.api.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(super::codec::SharedEventCodec)
                .apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.server_streaming(SharedStreamSvc(api), req).await)
        })
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

    /// Served by `EventRoutes` through `SharedEventCodec`; this generated
    /// entry point (per-stream encoding) is kept for completeness.
    async fn stream(&self, request: Request<pb::StreamOpts>) -> Result<Response<Self::StreamStream>, Status> {
        let events = self.open_stream(request).await?.into_inner();
        Ok(Response::new(Box::pin(
            events.map(|item| item.map(|e| convert::event(crate::model::Event::clone(&e)))),
        )))
    }

    async fn search(&self, request: Request<pb::SearchEventOpts>) -> Result<Response<pb::Events>, Status> {
        let md = metadata(request.metadata().as_ref());
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
        let md = metadata(request.metadata().as_ref());
        let req = gw::EventRefRequest { id: request.into_inner().id };
        self.call(methods::EVENT_GET, self.gateway.get_event(md, req), convert::event).await
    }
}

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for GrpcApi {
    async fn list(&self, request: Request<pb::CatalogOpts>) -> Result<Response<pb::Catalog>, Status> {
        let md = metadata(request.metadata().as_ref());
        let req = gw::CatalogRequest { domain: request.into_inner().domain };
        self.call(methods::CATALOG_LIST, self.gateway.catalog(md, req), convert::catalog).await
    }
}

/// Refuses a stategate call whose token does not verify before its body is
/// read or decoded: only the headers are looked at, so an anonymous peer
/// cannot make the gateway spend memory on a message it will refuse anyway.
/// Health and reflection are not stategate calls and pass.
pub async fn authenticate_first(
    axum::extract::State(gateway): axum::extract::State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    if let Some(method) = methods::ALL.iter().find(|m| **m == path) {
        let md = metadata(request.headers());
        if let Err(e) = measured(gateway.metrics(), method, gateway.verify_token(method, &md)).await {
            return to_status(e).into_http();
        }
    }
    next.run(request).await
}

/// The gRPC routes: the two stategate services, health and reflection
/// (v1 and v1alpha, so both current and older grpcurl/Postman can list them).
pub async fn routes(api: GrpcApi, max_message_bytes: usize) -> tonic::service::Routes {
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
    let v1 = reflection().build_v1().expect("embedded descriptors are valid");
    let v1alpha = reflection().build_v1alpha().expect("embedded descriptors are valid");
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(
            pb::state_service_server::StateServiceServer::new(api.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
        .add_service(
            pb::catalog_service_server::CatalogServiceServer::new(api.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
        .add_service(EventRoutes {
            generated: pb::event_service_server::EventServiceServer::new(api.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            api,
            max_message_bytes,
        })
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha);
    routes.routes()
}

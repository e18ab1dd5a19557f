//! The ceiling: a bare tonic server with the stategate services that does no
//! work beyond the transport. Unary calls answer with a copy of a response
//! the gateway gave to the same request (same message, same size); `Set`
//! echoes its request as an event and broadcasts it to every `Stream` of the
//! same type, so the fan-out ceiling is tonic's own server streaming.

use crate::load::{Clients, Rng};
use crate::requests::{Op, event_search_request, get_request, state_search_request};
use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use stategate::proto as pb;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Templates {
    get: Option<pb::State>,
    search: Option<pb::StateValues>,
    events: Option<pb::Events>,
}

#[derive(Clone)]
pub struct Bare {
    templates: Arc<Mutex<Templates>>,
    tx: broadcast::Sender<pb::Event>,
}

impl Default for Bare {
    fn default() -> Self {
        Bare {
            templates: Arc::default(),
            tx: broadcast::channel(16 * 1024).0,
        }
    }
}

impl Bare {
    pub async fn serve(self) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::state_service_server::StateServiceServer::new(self.clone()))
                .add_service(pb::event_service_server::EventServiceServer::new(self))
                .serve_with_incoming(incoming),
        );
        Ok(addr)
    }

    /// Asks the gateway once and keeps its answer as the bare answer.
    pub async fn learn(&self, op: Op, records: usize, cl: &mut Clients, rng: &mut Rng) -> Result<()> {
        match op {
            Op::Set | Op::Health => {}
            Op::Get => {
                let s = cl.state.get(get_request(rng.below(records))).await.context("template Get")?.into_inner();
                self.templates.lock().unwrap().get = Some(s);
            }
            Op::Search => {
                let s = cl.state.search(state_search_request(1)).await.context("template Search")?.into_inner();
                self.templates.lock().unwrap().search = Some(s);
            }
            Op::EventSearch => {
                let s = cl.events.search(event_search_request(1)).await.context("template event Search")?.into_inner();
                self.templates.lock().unwrap().events = Some(s);
            }
        }
        Ok(())
    }

    fn template<T: Clone>(&self, pick: impl FnOnce(&Templates) -> &Option<T>) -> Result<Response<T>, Status> {
        pick(&self.templates.lock().unwrap())
            .clone()
            .map(Response::new)
            .ok_or_else(|| Status::failed_precondition("no template learned"))
    }
}

#[tonic::async_trait]
impl pb::state_service_server::StateService for Bare {
    async fn set(&self, request: Request<pb::State>) -> Result<Response<pb::Event>, Status> {
        let state = request.into_inner();
        let event = pb::Event {
            id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            claims: Some(Default::default()),
            time: 1,
            version: 1,
            kind: pb::EventKind::Set as i32,
            method: "/stategate.StateService/Set".into(),
            sequence: 1,
            state: Some(state),
            resume_after: 0,
        };
        let _ = self.tx.send(event.clone());
        Ok(Response::new(event))
    }

    async fn get(&self, _: Request<pb::StateRef>) -> Result<Response<pb::State>, Status> {
        self.template(|t| &t.get)
    }

    async fn del(&self, _: Request<pb::StateRef>) -> Result<Response<pb::Event>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn search(&self, _: Request<pb::SearchStateOpts>) -> Result<Response<pb::StateValues>, Status> {
        self.template(|t| &t.search)
    }

    async fn edit(&self, _: Request<pb::EditRequest>) -> Result<Response<pb::Event>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn revert(&self, _: Request<pb::RevertRequest>) -> Result<Response<pb::Event>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for Bare {
    type StreamStream = EventStream;

    async fn stream(&self, request: Request<pb::StreamOpts>) -> Result<Response<EventStream>, Status> {
        let ty = request.into_inner().r#type;
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.tx.subscribe());
        let s = rx.filter_map(move |e| {
            let out = match e {
                Ok(e) if e.state.as_ref().is_some_and(|s| s.r#type == ty) => Some(Ok(e)),
                Ok(_) => None,
                Err(_) => Some(Err(Status::data_loss("bare stream lagged"))),
            };
            futures::future::ready(out)
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn search(&self, _: Request<pb::SearchEventOpts>) -> Result<Response<pb::Events>, Status> {
        self.template(|t| &t.events)
    }

    async fn get(&self, _: Request<pb::EventRef>) -> Result<Response<pb::Event>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn ack(&self, _: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn parked(&self, _: Request<pb::ParkedRequest>) -> Result<Response<pb::ParkedEvents>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

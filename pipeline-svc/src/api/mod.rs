//! The gRPC layer: authorization, request mapping, status codes. Thin by design: every
//! rule lives in `domain`.

mod convert;
mod provisioning;
mod status;

use std::{pin::Pin, sync::Arc};

use capstan_proto::pipeline::v1::{
    self as pb, operations_service_server::OperationsService,
    pipeline_service_server::PipelineService,
};
use capstan_server::auth::{Principal, Role};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::engine::{Engine, ListOperations, StartOperation},
    error::Error,
    store::OpFilter,
};

pub use capstan_proto::pipeline::v1::{
    operations_service_server::OperationsServiceServer,
    pipeline_service_server::PipelineServiceServer,
};
pub use provisioning::{ProvisioningApi, ProvisioningServiceServer};

type ApiResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A `user` sees only its own operations; `admin` and `service` see all.
fn owner_filter(p: &Principal) -> Option<&str> {
    match p.role {
        Role::User => Some(p.subject.as_str()),
        Role::Admin | Role::Service => None,
    }
}

fn operation_id(value: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(value).map_err(|_| {
        Error::invalid(
            "operation_id",
            format!(
                "is not a UUID: {:?}",
                value.chars().take(64).collect::<String>()
            ),
        )
    })
}

fn event_stream(
    rx: tokio::sync::mpsc::Receiver<crate::domain::operation::Event>,
) -> BoxStream<pb::OperationEvent> {
    Box::pin(ReceiverStream::new(rx).map(|e| Ok(convert::event_to_pb(e))))
}

pub struct OperationsApi {
    engine: Arc<Engine>,
}

impl OperationsApi {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl OperationsService for OperationsApi {
    async fn get_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        let id = operation_id(&req.get_ref().operation_id)?;
        let op = self.engine.get(id, owner_filter(&p)).await?;
        Ok(Response::new(convert::operation_to_pb(op)))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> ApiResult<pb::ListOperationsResponse> {
        let p = Principal::of(&req)?;
        let r = req.into_inner();
        let query = ListOperations {
            filter: OpFilter {
                owner: owner_filter(&p).map(str::to_owned),
                status: convert::status_from_pb("status", r.status)?,
                kind: (!r.kind.is_empty()).then_some(r.kind),
            },
            page_size: r.page_size,
            page_token: r.page_token,
        };
        let (ops, next_page_token) = self.engine.list(&query).await?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: ops.into_iter().map(convert::operation_to_pb).collect(),
            next_page_token,
        }))
    }

    type WatchOperationStream = BoxStream<pb::OperationEvent>;

    async fn watch_operation(
        &self,
        req: Request<pb::WatchOperationRequest>,
    ) -> ApiResult<Self::WatchOperationStream> {
        let p = Principal::of(&req)?;
        let r = req.get_ref();
        let id = operation_id(&r.operation_id)?;
        let rx = self
            .engine
            .watch(id, owner_filter(&p), r.after_sequence)
            .await?;
        Ok(Response::new(event_stream(rx)))
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::CancelOperationRequest>,
    ) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        let r = req.get_ref();
        let id = operation_id(&r.operation_id)?;
        let op = self.engine.cancel(id, owner_filter(&p), &r.reason).await?;
        Ok(Response::new(convert::operation_to_pb(op)))
    }
}

pub struct PipelineApi {
    engine: Arc<Engine>,
}

impl PipelineApi {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    async fn start(
        &self,
        p: &Principal,
        r: pb::StartDemoRequest,
    ) -> Result<crate::domain::operation::Operation, Status> {
        let (params, request_id, mode) = convert::demo_from_pb(r)?;
        let req = StartOperation {
            kind: params.scenario.kind(),
            params: serde_json::to_value(&params)
                .map_err(|e| Status::internal(format!("cannot encode the parameters: {e}")))?,
            request_id,
            mode,
        };
        Ok(self.engine.start(&p.subject, req).await?)
    }
}

#[tonic::async_trait]
impl PipelineService for PipelineApi {
    async fn start_demo(&self, req: Request<pb::StartDemoRequest>) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        let op = self.start(&p, req.into_inner()).await?;
        Ok(Response::new(convert::operation_to_pb(op)))
    }

    type RunDemoStream = BoxStream<pb::OperationEvent>;

    async fn run_demo(&self, req: Request<pb::RunDemoRequest>) -> ApiResult<Self::RunDemoStream> {
        let p = Principal::of(&req)?;
        let demo = req.into_inner().demo.unwrap_or_default();
        let op = self.start(&p, demo).await?;
        let rx = self.engine.watch(op.id, Some(&p.subject), 0).await?;
        Ok(Response::new(event_stream(rx)))
    }
}

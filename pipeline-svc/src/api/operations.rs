//! `OperationsService`: get, list, watch, cancel and retry operations of any kind; and the wire
//! form of operations and events, which the other services' replies share.

use std::sync::Arc;

use capstan_proto::pipeline::v1::{self as pb, operations_service_server::OperationsService};
use capstan_server::auth::Principal;
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response};

pub use capstan_proto::pipeline::v1::operations_service_server::OperationsServiceServer;

use super::{operation_id, owner_filter, request_id, timestamp, ApiResult, BoxStream, Results};
use crate::{
    domain::engine::{
        operation::{
            Event, EventType, ExecutionMode, OpStatus, Operation, OperationError, Step, StepStatus,
        },
        ports::OpFilter,
        Engine, ListOperations,
    },
    error::{Error, Result},
};

pub struct OperationsApi {
    engine: Arc<Engine>,
    results: Results,
}

impl OperationsApi {
    pub fn new(engine: Arc<Engine>, results: Results) -> Self {
        Self { engine, results }
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
        Ok(Response::new(operation_to_pb(op, &self.results)?))
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
                status: status_from_pb("status", r.status)?,
                kind: (!r.kind.is_empty()).then_some(r.kind),
            },
            page_size: r.page_size,
            page_token: r.page_token,
        };
        let (ops, next_page_token) = self.engine.list(&query).await?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: ops
                .into_iter()
                .map(|op| operation_to_pb(op, &self.results))
                .collect::<Result<_>>()?,
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
        Ok(Response::new(operation_to_pb(op, &self.results)?))
    }

    async fn retry_operation(
        &self,
        req: Request<pb::RetryOperationRequest>,
    ) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        let r = req.into_inner();
        let id = operation_id(&r.operation_id)?;
        let op = self
            .engine
            .retry(id, owner_filter(&p), request_id(r.request_id))
            .await?;
        Ok(Response::new(operation_to_pb(op, &self.results)?))
    }
}

pub(super) fn event_stream(
    rx: tokio::sync::mpsc::Receiver<Event>,
) -> BoxStream<pb::OperationEvent> {
    Box::pin(ReceiverStream::new(rx).map(|e| Ok(event_to_pb(e))))
}

fn status_to_pb(s: OpStatus) -> pb::OperationStatus {
    match s {
        OpStatus::Pending => pb::OperationStatus::Pending,
        OpStatus::Running => pb::OperationStatus::Running,
        OpStatus::Succeeded => pb::OperationStatus::Succeeded,
        OpStatus::Failed => pb::OperationStatus::Failed,
        OpStatus::Cancelled => pb::OperationStatus::Cancelled,
    }
}

/// `UNSPECIFIED` is `None`; numbers outside the enum are refused.
fn status_from_pb(field: &str, value: i32) -> Result<Option<OpStatus>> {
    Ok(match pb::OperationStatus::try_from(value) {
        Ok(pb::OperationStatus::Unspecified) => None,
        Ok(pb::OperationStatus::Pending) => Some(OpStatus::Pending),
        Ok(pb::OperationStatus::Running) => Some(OpStatus::Running),
        Ok(pb::OperationStatus::Succeeded) => Some(OpStatus::Succeeded),
        Ok(pb::OperationStatus::Failed) => Some(OpStatus::Failed),
        Ok(pb::OperationStatus::Cancelled) => Some(OpStatus::Cancelled),
        Err(_) => {
            return Err(Error::invalid(
                field,
                format!("{value} is not an OperationStatus"),
            ))
        }
    })
}

fn step_status_to_pb(s: StepStatus) -> pb::StepStatus {
    match s {
        StepStatus::Pending => pb::StepStatus::Pending,
        StepStatus::Running => pb::StepStatus::Running,
        StepStatus::Passed => pb::StepStatus::Passed,
        StepStatus::Failed => pb::StepStatus::Failed,
        StepStatus::Skipped => pb::StepStatus::Skipped,
    }
}

fn mode_to_pb(m: ExecutionMode) -> pb::ExecutionMode {
    match m {
        ExecutionMode::Direct => pb::ExecutionMode::Direct,
        ExecutionMode::Queued => pb::ExecutionMode::Queued,
    }
}

fn event_type_to_pb(t: EventType) -> pb::OperationEventType {
    match t {
        EventType::Created => pb::OperationEventType::Created,
        EventType::Started => pb::OperationEventType::Started,
        EventType::StepStarted => pb::OperationEventType::StepStarted,
        EventType::StepFinished => pb::OperationEventType::StepFinished,
        EventType::Progress => pb::OperationEventType::Progress,
        EventType::Compensation => pb::OperationEventType::Compensation,
        EventType::CancelRequested => pb::OperationEventType::CancelRequested,
        EventType::Finished => pb::OperationEventType::Finished,
        EventType::Heartbeat => pb::OperationEventType::Heartbeat,
        EventType::Retried => pb::OperationEventType::Retried,
    }
}

fn step_to_pb(s: Step) -> pb::Step {
    pb::Step {
        name: s.name,
        phase: s.phase,
        status: step_status_to_pb(s.status) as i32,
        detail: s.detail,
        start_time: s.start_time.and_then(timestamp),
        end_time: s.end_time.and_then(timestamp),
        attempt: s.attempt as i32,
    }
}

fn error_to_pb(e: OperationError) -> pb::OperationError {
    pb::OperationError {
        step: e.step.unwrap_or_default(),
        message: e.message,
        compensation_errors: e.compensation_errors,
    }
}

/// The wire form of an operation; its result is typed here, by its kind's mapping.
pub(super) fn operation_to_pb(op: Operation, results: &Results) -> Result<pb::Operation> {
    let result = match &op.result {
        Some(r) => results.to_pb(&op.kind, r)?,
        None => None,
    };
    Ok(pb::Operation {
        operation_id: op.id.to_string(),
        kind: op.kind,
        status: status_to_pb(op.status) as i32,
        progress_percent: op.progress_percent as i32,
        message: op.message,
        steps: op.steps.into_iter().map(step_to_pb).collect(),
        result,
        error: op.error.map(error_to_pb),
        owner: op.owner,
        execution_mode: mode_to_pb(op.execution_mode) as i32,
        create_time: timestamp(op.create_time),
        update_time: timestamp(op.update_time),
        request_id: op.request_id.unwrap_or_default(),
        last_sequence: op.last_sequence,
        start_time: op.start_time.and_then(timestamp),
        end_time: op.end_time.and_then(timestamp),
        attempts: op.attempts as i32,
        cancel_requested: op.cancel_requested,
        deadline: op.deadline.and_then(timestamp),
    })
}

pub fn event_to_pb(e: Event) -> pb::OperationEvent {
    pb::OperationEvent {
        operation_id: e.operation_id.to_string(),
        sequence: e.sequence,
        time: timestamp(e.time),
        r#type: event_type_to_pb(e.kind) as i32,
        step: e.step,
        phase: e.phase,
        status: status_to_pb(e.status) as i32,
        step_status: e
            .step_status
            .map_or(pb::StepStatus::Unspecified, step_status_to_pb) as i32,
        percent: e.percent as i32,
        message: e.message,
    }
}

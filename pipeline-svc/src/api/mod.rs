//! The gRPC layer: authorization, request mapping, status codes. Thin by design: every
//! rule lives in `domain`. One file per service: `operations` (OperationsService, and the
//! wire form of operations and events), `showcase` (PipelineService: StartDemo, RunDemo),
//! `provisioning` (ProvisioningService); `status` maps the crate's errors to statuses.

mod operations;
mod provisioning;
mod showcase;
mod status;

use std::{
    collections::HashMap,
    pin::Pin,
    time::{Duration, UNIX_EPOCH},
};

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::{Principal, Role};
use futures::Stream;
use prost_types::Timestamp;
use tonic::{Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        engine::{operation::ExecutionMode, RunOptions},
        Micros,
    },
    error::{Error, Result},
};

pub use self::{
    operations::{OperationsApi, OperationsServiceServer},
    provisioning::{
        result_to_pb as provisioning_result, ProvisioningApi, ProvisioningServiceServer,
    },
    showcase::{result_to_pb as demo_result, PipelineServiceServer, ShowcaseApi},
};

type ApiResult<T> = std::result::Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// How a feature's stored operation result becomes the `oneof` of `OperationResult`.
pub type ResultToPb = fn(&serde_json::Value) -> Result<pb::operation_result::Result>;

/// The result mapping of every operation kind that has one (`app` registers them with
/// their workflows); an operation of another kind is sent without a result.
#[derive(Clone, Default)]
pub struct Results(HashMap<String, ResultToPb>);

impl Results {
    pub fn new(kinds: impl IntoIterator<Item = (String, ResultToPb)>) -> Self {
        Self(kinds.into_iter().collect())
    }

    fn to_pb(&self, kind: &str, result: &serde_json::Value) -> Result<Option<pb::OperationResult>> {
        let Some(to_pb) = self.0.get(kind) else {
            return Ok(None);
        };
        Ok(Some(pb::OperationResult {
            result: Some(to_pb(result)?),
        }))
    }
}

/// A typed result read back from its stored JSON (which the workflow wrote itself).
fn stored_result<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T> {
    serde_json::from_value(value.clone())
        .map_err(|e| Error::internal_from("stored operation result unreadable", e))
}

/// A `user` sees only its own operations and graphs; `admin` and `service` see all.
fn owner_filter(p: &Principal) -> Option<&str> {
    match p.role {
        Role::User => Some(p.subject.as_str()),
        Role::Admin | Role::Service => None,
    }
}

fn operation_id(value: &str) -> Result<Uuid> {
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

fn timestamp(micros: Micros) -> Option<Timestamp> {
    let t = if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    };
    Some(Timestamp::from(t))
}

/// `UNSPECIFIED` is `None` (the server's default); numbers outside the enum are refused.
fn mode_from_pb(field: &str, value: i32) -> Result<Option<ExecutionMode>> {
    match pb::ExecutionMode::try_from(value) {
        Ok(pb::ExecutionMode::Unspecified) => Ok(None),
        Ok(pb::ExecutionMode::Direct) => Ok(Some(ExecutionMode::Direct)),
        Ok(pb::ExecutionMode::Queued) => Ok(Some(ExecutionMode::Queued)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{value} is not an ExecutionMode"),
        )),
    }
}

/// How long a new operation may take: unset is the server's default (the engine checks
/// the range).
fn timeout_from_pb(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>> {
    let Some(d) = d else {
        return Ok(None);
    };
    match Duration::try_from(*d) {
        Ok(t) => Ok(Some(t)),
        Err(_) => Err(Error::invalid(
            field,
            format!(
                "must be a positive duration, got {}s {}ns",
                d.seconds, d.nanos
            ),
        )),
    }
}

/// Where a new operation runs and how long it may take, from its request's fields.
fn run_options(mode: i32, timeout: Option<&prost_types::Duration>) -> Result<RunOptions> {
    Ok(RunOptions {
        mode: mode_from_pb("execution_mode", mode)?,
        timeout: timeout_from_pb("timeout", timeout)?,
    })
}

/// An optional request id: empty is none.
fn request_id(r: String) -> Option<String> {
    (!r.is_empty()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn timestamps_keep_microseconds(m in -1_000_000_000_000_000i64..4_000_000_000_000_000i64) {
            let t = timestamp(m).unwrap();
            prop_assert_eq!(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000, m);
        }
    }
}

//! Mapping between protobuf messages and domain types (wire input is validated on the
//! way in).

use std::time::{Duration, UNIX_EPOCH};

use capstan_proto::pipeline::v1 as pb;
use prost_types::Timestamp;

use crate::{
    domain::{
        operation::{
            Event, EventType, ExecutionMode, OpStatus, Operation, OperationError, OperationResult,
            Step, StepStatus,
        },
        provisioning::ProvisioningResult,
        workflows::showcase::{DemoModel, DemoParams, DemoResult, Scenario},
        Micros,
    },
    error::{Error, Result, Validator},
};

pub fn timestamp(micros: Micros) -> Option<Timestamp> {
    let t = if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    };
    Some(Timestamp::from(t))
}

pub fn status_to_pb(s: OpStatus) -> pb::OperationStatus {
    match s {
        OpStatus::Pending => pb::OperationStatus::Pending,
        OpStatus::Running => pb::OperationStatus::Running,
        OpStatus::Succeeded => pb::OperationStatus::Succeeded,
        OpStatus::Failed => pb::OperationStatus::Failed,
        OpStatus::Cancelled => pb::OperationStatus::Cancelled,
    }
}

/// `UNSPECIFIED` is `None`; numbers outside the enum are refused.
pub fn status_from_pb(field: &str, value: i32) -> Result<Option<OpStatus>> {
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

pub fn mode_from_pb(field: &str, value: i32) -> Result<Option<ExecutionMode>> {
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

fn model_to_pb(m: DemoModel) -> pb::DemoModel {
    pb::DemoModel {
        model_type: m.model_type,
        run_id: m.run_id,
        wape: m.wape,
        mae: m.mae,
        bias: m.bias,
        artifact_uri: m.artifact_uri,
    }
}

fn demo_to_pb(d: DemoResult) -> pb::DemoResult {
    pb::DemoResult {
        scenario: d.scenario,
        winning_run_id: d.winning_run_id,
        champion: d.champion.map(model_to_pb),
        candidates: d.candidates.into_iter().map(model_to_pb).collect(),
        baseline_wape: d.baseline_wape,
        challenger_run_id: d.challenger_run_id,
        scenario_run_id: d.scenario_run_id,
        chart_run_id: d.chart_run_id,
        chart_artifact_uri: d.chart_artifact_uri,
        scenarios: d
            .scenarios
            .into_iter()
            .map(|s| pb::DemoScenarioOutcome {
                name: s.name,
                total_units: s.total_units,
                delta_pct: s.delta_pct,
            })
            .collect(),
        briefing: d.briefing,
        alias_run_id: d.alias_run_id,
        alias_revision: d.alias_revision,
    }
}

fn provisioning_to_pb(p: ProvisioningResult) -> pb::ProvisioningResult {
    pb::ProvisioningResult {
        graph_id: p.graph_id,
        subscription_id: p.subscription_id,
        credit_pool_id: p.credit_pool_id,
        schema_type: p.schema_type,
        database_backend: p.database_backend,
        database_location: p.database_location,
        tables: p.tables,
        deprovisioned: p.deprovisioned,
    }
}

fn error_to_pb(e: OperationError) -> pb::OperationError {
    pb::OperationError {
        step: e.step.unwrap_or_default(),
        message: e.message,
        compensation_errors: e.compensation_errors,
    }
}

pub fn operation_to_pb(op: Operation) -> pb::Operation {
    pb::Operation {
        operation_id: op.id.to_string(),
        kind: op.kind,
        status: status_to_pb(op.status) as i32,
        progress_percent: op.progress_percent as i32,
        message: op.message,
        steps: op.steps.into_iter().map(step_to_pb).collect(),
        result: op.result.map(|r| pb::OperationResult {
            result: Some(match r {
                OperationResult::Demo(d) => pb::operation_result::Result::Demo(demo_to_pb(d)),
                OperationResult::Provisioning(p) => {
                    pb::operation_result::Result::Provisioning(provisioning_to_pb(p))
                }
            }),
        }),
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
    }
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

/// A non-negative count where 0 means the default.
fn count(v: &mut Validator, field: &str, value: i32, default: usize) -> usize {
    v.check(value >= 0, field, || {
        format!("must not be negative, got {value}")
    });
    if value <= 0 {
        default
    } else {
        value as usize
    }
}

/// The demo's parameters, request id and execution mode.
pub fn demo_from_pb(
    r: pb::StartDemoRequest,
) -> Result<(DemoParams, Option<String>, Option<ExecutionMode>)> {
    let defaults = DemoParams::default();
    let mut v = Validator::default();
    let scenario = if r.scenario.is_empty() {
        Some(defaults.scenario)
    } else {
        Scenario::parse(&r.scenario)
    };
    v.check(scenario.is_some(), "scenario", || {
        format!(
            "must be showcase_minimal or showcase_rich, got {:?}",
            r.scenario.chars().take(64).collect::<String>()
        )
    });
    let params = DemoParams {
        scenario: scenario.unwrap_or(defaults.scenario),
        seed: r.seed.unwrap_or(defaults.seed),
        series: count(&mut v, "series_count", r.series_count, defaults.series),
        days: count(&mut v, "days", r.days, defaults.days),
        horizon: count(&mut v, "horizon", r.horizon, defaults.horizon),
    };
    let mode = mode_from_pb("execution_mode", r.execution_mode).ok();
    v.check(mode.is_some(), "execution_mode", || {
        format!("{} is not an ExecutionMode", r.execution_mode)
    });
    v.finish()?;
    params.validate()?;
    let request_id = (!r.request_id.is_empty()).then_some(r.request_id);
    Ok((params, request_id, mode.flatten()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives on the wire is either accepted as valid parameters or refused
        /// with INVALID_ARGUMENT, never a panic.
        #[test]
        fn demo_requests_are_validated(
            scenario in prop_oneof![Just(String::new()), Just("showcase_rich".to_string()), Just("showcase_minimal".to_string()), ".{0,20}"],
            seed in proptest::option::of(any::<u64>()),
            series in any::<i32>(), days in any::<i32>(), horizon in any::<i32>(), mode in any::<i32>(),
        ) {
            let r = pb::StartDemoRequest {
                request_id: String::new(), scenario, seed, series_count: series, days, horizon,
                execution_mode: mode,
            };
            match demo_from_pb(r) {
                Ok((p, _, _)) => prop_assert!(p.validate().is_ok()),
                Err(Error::InvalidArgument(v)) => prop_assert!(!v.is_empty()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        #[test]
        fn timestamps_keep_microseconds(m in -1_000_000_000_000_000i64..4_000_000_000_000_000i64) {
            let t = timestamp(m).unwrap();
            prop_assert_eq!(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000, m);
        }
    }
}

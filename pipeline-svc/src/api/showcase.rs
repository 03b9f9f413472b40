//! `PipelineService`: StartDemo and RunDemo (start, then watch), the demo's parameters
//! read from the wire, and its result as the wire shows it.

use std::sync::Arc;

use capstan_proto::pipeline::v1::{self as pb, pipeline_service_server::PipelineService};
use capstan_server::auth::Principal;
use tonic::{Request, Response};

pub use capstan_proto::pipeline::v1::pipeline_service_server::PipelineServiceServer;

use super::{
    mode_from_pb,
    operations::{event_stream, operation_to_pb},
    request_id, stored_result, timeout_from_pb, ApiResult, BoxStream, Results,
};
use crate::{
    domain::{
        engine::{
            operation::{ExecutionMode, Operation},
            workflow, Engine, StartOperation,
        },
        showcase::{
            params::{DemoParams, Scenario},
            state::{DemoModel, DemoResult},
        },
    },
    error::{Result, Validator},
};

pub struct ShowcaseApi {
    engine: Arc<Engine>,
    results: Results,
}

impl ShowcaseApi {
    pub fn new(engine: Arc<Engine>, results: Results) -> Self {
        Self { engine, results }
    }

    async fn start(&self, p: &Principal, r: pb::StartDemoRequest) -> Result<Operation> {
        let timeout = timeout_from_pb("timeout", r.timeout.as_ref())?;
        let (params, request_id, mode) = demo_from_pb(r)?;
        let req = StartOperation {
            kind: params.scenario.kind(),
            params: workflow::encode(&params, "demo parameters"),
            request_id,
            mode,
            timeout,
        };
        self.engine.start(&p.subject, req).await
    }
}

#[tonic::async_trait]
impl PipelineService for ShowcaseApi {
    async fn start_demo(&self, req: Request<pb::StartDemoRequest>) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        let op = self.start(&p, req.into_inner()).await?;
        Ok(Response::new(operation_to_pb(op, &self.results)?))
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
fn demo_from_pb(
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
        alias: if r.alias.is_empty() {
            defaults.alias
        } else {
            r.alias
        },
    };
    let mode = mode_from_pb("execution_mode", r.execution_mode).ok();
    v.check(mode.is_some(), "execution_mode", || {
        format!("{} is not an ExecutionMode", r.execution_mode)
    });
    v.finish()?;
    params.validate()?;
    Ok((params, request_id(r.request_id), mode.flatten()))
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

/// A demo operation's stored result as the `demo` case of the result `oneof`.
pub fn result_to_pb(stored: &serde_json::Value) -> Result<pb::operation_result::Result> {
    let d: DemoResult = stored_result(stored)?;
    Ok(pb::operation_result::Result::Demo(pb::DemoResult {
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
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives on the wire is either accepted as valid parameters or refused
        /// with INVALID_ARGUMENT, never a panic.
        #[test]
        fn demo_requests_are_validated(
            scenario in prop_oneof![Just(String::new()), Just("showcase_rich".to_string()), Just("showcase_minimal".to_string()), ".{0,20}"],
            seed in proptest::option::of(any::<u64>()),
            series in any::<i32>(), days in any::<i32>(), horizon in any::<i32>(), mode in any::<i32>(),
            alias in prop_oneof![Just(String::new()), "[a-z0-9][a-z0-9_.-]{0,70}", ".{0,8}"],
        ) {
            let r = pb::StartDemoRequest {
                request_id: String::new(), scenario, seed, series_count: series, days, horizon,
                execution_mode: mode, alias, timeout: None,
            };
            match demo_from_pb(r) {
                Ok((p, _, _)) => prop_assert!(p.validate().is_ok()),
                Err(Error::Invalid(v)) => prop_assert!(!v.is_empty()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}

//! `scenario_simulate_and_save`: what-if planning from the recorded champion: its artifact is downloaded and verified,
//! the scenarios simulated, and the results saved as a registry run with the chart attached
//! to it (artifact `chart`).

use std::collections::BTreeMap;

use capstan_proto::artifact_uri::ArtifactUri;

use super::super::{
    demo::{compute, metric_key, sha256_hex, short, Demo},
    registry::{ArtifactFile, NewRun},
    science::{chart, models::FittedModel, scenario},
    state::DemoScenarioOutcome,
    MAX_MODEL_BYTES,
};
use crate::{
    domain::engine::workflow::{StepCx, StepOutcome},
    error::{Error, Result},
};

/// The scenario chart, attached to the scenario run beside its results.
const CHART: ArtifactFile<'static> = ArtifactFile {
    file_name: "chart.svg",
    artifact: "chart",
    media_type: "image/svg+xml",
};

impl Demo {
    pub(in crate::domain::showcase) async fn scenario_simulate_and_save(
        &mut self,
        cx: &StepCx<'_>,
    ) -> Result<StepOutcome> {
        // The recorded champion, never the live alias: the drill left a worse run there.
        let (champion_id, source) = match &self.state.winning_run_id {
            Some(id) => (id.clone(), "recorded winning_run_id"),
            None => match self.registry.get_alias(&self.params.alias).await? {
                Some(a) => (a.run_id, "live alias (no champion recorded)"),
                None => {
                    return Err(Error::Precondition(format!(
                        "no champion recorded and {alias_name} does not exist",
                        alias_name = self.params.alias
                    )))
                }
            },
        };
        let run = self.registry.get_run(&champion_id).await?;
        let uri = ArtifactUri::parse(&run.artifact_uri).map_err(|e| {
            Error::Corrupt(format!(
                "champion run {champion_id} has an unparseable artifact URI {:?}: {e}",
                run.artifact_uri
            ))
        })?;
        let (meta, bytes) = self
            .registry
            .download_artifact(&champion_id, MAX_MODEL_BYTES)
            .await?;
        let sha = sha256_hex(&bytes);
        if sha != meta.sha256 || sha != run.artifact_sha256 || bytes.len() as i64 != meta.size_bytes
        {
            return Err(Error::Corrupt(format!(
                "champion artifact {uri} failed verification: content SHA-256 {sha} ({} bytes), \
                 registry says {} ({} bytes)",
                bytes.len(),
                run.artifact_sha256,
                meta.size_bytes
            )));
        }
        let model = FittedModel::from_bytes(&bytes)
            .map_err(|e| Error::Corrupt(format!("champion artifact {uri} does not load: {e}")))?;
        if model.kind().as_str() != run.model_type {
            return Err(Error::Corrupt(format!(
                "champion artifact holds a {} model, the run says {}",
                model.kind().as_str(),
                run.model_type
            )));
        }
        cx.progress(format!(
            "loaded champion {} from run {} ({source}); SHA-256 verified",
            run.model_type,
            short(&champion_id)
        ))
        .await?;
        let horizon = self.params.horizon;
        let panel = self.panel().await?;
        let (baseline, results, svg) = compute(cx.cancellation(), move |stop| {
            let mut baseline = vec![0.0; horizon];
            for s in 0..panel.series.len() {
                for (day, v) in model.forecast(s, horizon).into_iter().enumerate() {
                    if let Some(b) = baseline.get_mut(day) {
                        *b += v;
                    }
                }
            }
            let results = scenario::simulate(
                &model,
                &panel,
                horizon,
                &scenario::default_scenarios(),
                stop,
            );
            let svg = chart::svg(&panel, &baseline, &results);
            (baseline, results, svg)
        })
        .await?;
        let outcomes: Vec<DemoScenarioOutcome> = results
            .into_iter()
            .map(|r| DemoScenarioOutcome {
                name: r.name,
                total_units: r.total_units,
                delta_pct: r.delta_pct,
                daily: r.daily,
            })
            .collect();
        let report = serde_json::json!({
            "champion_run_id": champion_id,
            "model_type": run.model_type,
            "horizon": horizon,
            "baseline": baseline,
            "scenarios": outcomes,
        });
        let report = serde_json::to_vec_pretty(&report)
            .map_err(|e| Error::internal(format!("cannot serialize the scenarios: {e}")))?;
        let mut metrics: BTreeMap<String, f64> = outcomes
            .iter()
            .map(|o| (format!("delta_pct.{}", metric_key(&o.name)), o.delta_pct))
            .collect();
        metrics.insert("baseline_units".into(), baseline.iter().sum());
        let scenario_run = self
            .publish_run(
                NewRun {
                    request_id: self.request_id("scenarios"),
                    name: format!("showcase scenarios ({})", run.model_type),
                    model_type: "scenario_plan".into(),
                    params: self.run_params(),
                    tags: self.tags("scenarios"),
                },
                "scenarios.json",
                report,
                metrics,
                vec![(CHART, svg.into_bytes())],
            )
            .await?;
        let chart_uri = scenario_run
            .artifacts
            .get(CHART.artifact)
            .cloned()
            .ok_or_else(|| {
                Error::internal(format!(
                    "scenario run {} lists no {:?} artifact after its upload",
                    scenario_run.run_id, CHART.artifact
                ))
            })?;
        let summary = outcomes
            .iter()
            .map(|o| format!("{} {:+.1}%", o.name, o.delta_pct))
            .collect::<Vec<_>>()
            .join(", ");
        self.state.scenarios = outcomes;
        self.state.scenario_run_id = Some(scenario_run.run_id.clone());
        self.state.chart_run_id = Some(scenario_run.run_id.clone());
        self.state.chart_artifact_uri = Some(chart_uri.clone());
        Ok(StepOutcome::Passed(format!(
            "champion {} loaded by {source} and verified; {summary}; results in run {}, chart {chart_uri}",
            run.model_type,
            short(&scenario_run.run_id),
        )))
    }
}

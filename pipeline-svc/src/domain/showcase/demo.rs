//! One demo's execution: the state its steps share, the helpers they use (the panel and
//! the fitted models, recomputed on a resume; registry runs; the alias), the step
//! dispatch and the failure safeguard. The steps themselves are in `steps/`.

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    embedder::Embedder,
    params::DemoParams,
    registry::{AliasRef, ArtifactFile, ModelRegistry, NewRun, RunRef},
    science::{
        data::{self, Panel, PanelSpec},
        models::{FittedModel, ModelKind},
    },
    state::{DemoModel, DemoResult, DemoState},
    FOLDS, NAMESPACE,
};
use crate::{
    domain::engine::workflow::{self, Execution, StepCx, StepOutcome},
    error::{Error, Result},
};

/// The execution of one demo operation.
pub(super) struct Demo {
    pub(super) registry: Arc<dyn ModelRegistry>,
    pub(super) embedder: Arc<dyn Embedder>,
    pub(super) operation_id: Uuid,
    pub(super) params: DemoParams,
    pub(super) state: DemoState,
    panel: Option<Arc<Panel>>,
    fitted: Option<Vec<FittedModel>>,
    /// The running step's cancellation signal, for its computations.
    interrupt: CancellationToken,
}

/// Runs CPU-heavy science (panels, fits, backtests, simulations) on a blocking thread,
/// off the runtime's workers. `f` gets `stop` to ask between units of work, so that a
/// cancelled step frees its thread at once; what it returns then is partial and refused.
pub(super) async fn compute<T: Send + 'static>(
    stop: &CancellationToken,
    f: impl FnOnce(&CancellationToken) -> T + Send + 'static,
) -> Result<T> {
    let token = stop.clone();
    let out = tokio::task::spawn_blocking(move || f(&token))
        .await
        .map_err(|e| Error::internal_from("the computation panicked", e))?;
    if stop.is_cancelled() {
        return Err(Error::Precondition(
            "the step was cancelled mid-computation".into(),
        ));
    }
    Ok(out)
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Scenario names become metric keys, which allow `[A-Za-z0-9_.-/]`.
pub(super) fn metric_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(super) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

impl Demo {
    pub(super) fn new(
        registry: Arc<dyn ModelRegistry>,
        embedder: Arc<dyn Embedder>,
        operation_id: Uuid,
        params: DemoParams,
        state: DemoState,
    ) -> Self {
        Self {
            registry,
            embedder,
            operation_id,
            params,
            state,
            panel: None,
            fitted: None,
            interrupt: CancellationToken::new(),
        }
    }

    /// The synthetic panel (deterministic, so a resume makes it again).
    pub(super) async fn panel(&mut self) -> Result<Arc<Panel>> {
        if let Some(p) = &self.panel {
            return Ok(p.clone());
        }
        let spec = PanelSpec {
            seed: self.params.seed,
            series: self.params.series,
            days: self.params.days,
        };
        let panel = Arc::new(compute(&self.interrupt, move |_| data::generate(&spec)).await?);
        self.panel = Some(panel.clone());
        Ok(panel)
    }

    /// Every candidate fitted on the full history (deterministic, so a resume refits).
    pub(super) async fn fitted(&mut self) -> Result<&[FittedModel]> {
        if self.fitted.is_none() {
            let days = self.params.days;
            let panel = self.panel().await?;
            let models = compute(&self.interrupt, move |stop| {
                ModelKind::ALL
                    .iter()
                    .map(|k| FittedModel::fit(*k, &panel, days, stop))
                    .collect()
            })
            .await?;
            self.fitted = Some(models);
        }
        Ok(self.fitted.as_deref().unwrap_or_default())
    }

    pub(super) async fn fitted_of(&mut self, model_type: &str) -> Result<FittedModel> {
        self.fitted()
            .await?
            .iter()
            .find(|m| m.kind().as_str() == model_type)
            .cloned()
            .ok_or_else(|| Error::internal(format!("no fitted model of type {model_type}")))
    }

    pub(super) fn request_id(&self, what: &str) -> String {
        format!("{}:{what}", self.operation_id)
    }

    pub(super) fn tags(&self, role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("operation_id".to_string(), self.operation_id.to_string()),
            (
                "workflow".to_string(),
                self.params.scenario.as_str().to_string(),
            ),
            ("role".to_string(), role.to_string()),
        ])
    }

    pub(super) fn run_params(&self) -> BTreeMap<String, String> {
        let p = &self.params;
        BTreeMap::from([
            ("seed".to_string(), p.seed.to_string()),
            ("series".to_string(), p.series.to_string()),
            ("days".to_string(), p.days.to_string()),
            ("horizon".to_string(), p.horizon.to_string()),
            ("folds".to_string(), FOLDS.to_string()),
        ])
    }

    /// Creates (or, on a resume, finds) a run, attaches its model and the `others`
    /// (what a resumed step attached already is not sent again) and marks it SUCCEEDED
    /// with `metrics`.
    pub(super) async fn publish_run(
        &self,
        new: NewRun,
        file_name: &str,
        content: Vec<u8>,
        metrics: BTreeMap<String, f64>,
        others: Vec<(ArtifactFile<'_>, Vec<u8>)>,
    ) -> Result<RunRef> {
        let run = self.registry.create_run(new).await?;
        if run.succeeded && !run.artifact_uri.is_empty() {
            return Ok(run);
        }
        let model = (ArtifactFile::model(file_name), content);
        for (file, content) in std::iter::once(model).chain(others) {
            let name = match file.artifact {
                "" => "model",
                named => named,
            };
            if !run.artifacts.contains_key(name) {
                self.registry
                    .upload_artifact(&run.run_id, file, NAMESPACE, content)
                    .await?;
            }
        }
        self.registry.finish_run(&run.run_id, metrics).await
    }

    pub(super) fn champion(&self) -> Result<DemoModel> {
        let id = self.state.winning_run_id.as_deref().ok_or_else(|| {
            Error::Precondition("no champion recorded: register_candidates has not run".into())
        })?;
        self.state
            .candidates
            .iter()
            .find(|c| c.run_id == id)
            .cloned()
            .ok_or_else(|| Error::internal(format!("champion run {id} is not a candidate")))
    }

    /// Points the alias at `target` unless it is there already, compare-and-swap on the
    /// revision it read (retrying when another writer got in between).
    pub(super) async fn restore_alias(
        &self,
        target: &str,
        reason: &str,
    ) -> Result<(AliasRef, bool)> {
        let mut last = None;
        for _ in 0..5 {
            let current = self.registry.get_alias(&self.params.alias).await?;
            if let Some(a) = &current {
                if a.run_id == target {
                    return Ok((a.clone(), false));
                }
            }
            let expected = current.map_or(0, |a| a.revision);
            match self
                .registry
                .set_alias(&self.params.alias, target, expected, reason)
                .await
            {
                Ok(a) => return Ok((a, true)),
                Err(Error::Conflict(m)) => last = Some(m),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "{alias_name} kept changing while restoring it to run {target}: {}",
            last.unwrap_or_default(),
            alias_name = self.params.alias
        )))
    }

    /// The failure safeguard: the champion back on the alias, or the alias's value before
    /// the demo when no champion was recorded.
    async fn safeguard(&self) -> Result<Option<String>> {
        let (target, what) = match (&self.state.winning_run_id, &self.state.alias_before) {
            (Some(id), _) => (id.clone(), "champion"),
            (None, Some(Some(before))) => (before.clone(), "its value before the run"),
            // Nothing recorded: this run never moved the alias.
            (None, _) => return Ok(None),
        };
        let (alias, changed) = self
            .restore_alias(&target, "showcase safeguard: restore after a failed step")
            .await?;
        Ok(Some(if changed {
            format!(
                "{alias_name} restored to {what} (run {}) at r{}",
                short(&target),
                alias.revision,
                alias_name = self.params.alias
            )
        } else {
            format!(
                "{alias_name} already on {what} (run {})",
                short(&target),
                alias_name = self.params.alias
            )
        }))
    }
}

#[async_trait]
impl Execution for Demo {
    async fn run_step(&mut self, step: &str, cx: &StepCx<'_>) -> Result<StepOutcome> {
        self.interrupt = cx.cancellation().clone();
        match step {
            "generate_data" => self.generate_data().await,
            "train_and_backtest" => self.train_and_backtest(cx).await,
            "register_candidates" => self.register_candidates(cx).await,
            "safer_promote_flow" => self.safer_promote_flow(cx).await,
            "scenario_simulate_and_save" => self.scenario_simulate_and_save(cx).await,
            "index_and_retrieve" => self.index_and_retrieve().await,
            "briefing" => self.briefing().await,
            "ops_checks" => self.ops_checks().await,
            "cleanup" => self.cleanup().await,
            other => Err(Error::internal(format!(
                "the showcase has no step {other:?}"
            ))),
        }
    }

    async fn compensate(&mut self, step: &str) -> Result<Option<String>> {
        match step {
            "register_candidates" | "safer_promote_flow" => self.safeguard().await,
            _ => Ok(None),
        }
    }

    fn state(&self) -> serde_json::Value {
        workflow::encode(&self.state, "demo state")
    }

    fn result(&self) -> Option<serde_json::Value> {
        let s = &self.state;
        let baseline_wape = s
            .candidates
            .iter()
            .find(|c| c.model_type == ModelKind::SeasonalNaive.as_str())
            .map_or(0.0, |c| c.wape);
        let (alias_run_id, alias_revision) = s.final_alias.clone().unwrap_or_default();
        Some(workflow::encode(
            &DemoResult {
                scenario: self.params.scenario.as_str().to_string(),
                winning_run_id: s.winning_run_id.clone().unwrap_or_default(),
                champion: self.champion().ok(),
                candidates: s.candidates.clone(),
                baseline_wape,
                challenger_run_id: s.challenger_run_id.clone().unwrap_or_default(),
                scenario_run_id: s.scenario_run_id.clone().unwrap_or_default(),
                chart_run_id: s.chart_run_id.clone().unwrap_or_default(),
                chart_artifact_uri: s.chart_artifact_uri.clone().unwrap_or_default(),
                scenarios: s.scenarios.clone(),
                briefing: s.briefing.clone().unwrap_or_default(),
                alias_run_id,
                alias_revision,
            },
            "demo result",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::showcase::{
        embedder::LocalEmbedder,
        registry::{ArtifactMeta, HistoryEntry},
    };
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn metric_keys_are_registry_safe(name in ".{0,40}") {
            prop_assert!(metric_key(&name).chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
        }
    }

    /// A registry whose alias writes fail, for the safeguard's failure path.
    struct BrokenRegistry;

    #[async_trait]
    impl ModelRegistry for BrokenRegistry {
        async fn health(&self) -> Result<String> {
            Ok("SERVING".into())
        }
        async fn create_run(&self, _: NewRun) -> Result<RunRef> {
            Err(Error::unavailable("registry down"))
        }
        async fn get_run(&self, _: &str) -> Result<RunRef> {
            Err(Error::unavailable("registry down"))
        }
        async fn upload_artifact(
            &self,
            _: &str,
            _: ArtifactFile<'_>,
            _: &str,
            _: Vec<u8>,
        ) -> Result<String> {
            Err(Error::unavailable("registry down"))
        }
        async fn finish_run(&self, _: &str, _: BTreeMap<String, f64>) -> Result<RunRef> {
            Err(Error::unavailable("registry down"))
        }
        async fn download_artifact(&self, _: &str, _: usize) -> Result<(ArtifactMeta, Vec<u8>)> {
            Err(Error::unavailable("registry down"))
        }
        async fn get_alias(&self, _: &str) -> Result<Option<AliasRef>> {
            Ok(Some(AliasRef {
                run_id: "worse".into(),
                revision: 3,
            }))
        }
        async fn set_alias(&self, _: &str, _: &str, _: i64, _: &str) -> Result<AliasRef> {
            Err(Error::unavailable("registry down"))
        }
        async fn promote(&self, _: &str, _: &str, _: bool, _: &str) -> Result<AliasRef> {
            Err(Error::unavailable("registry down"))
        }
        async fn alias_history(&self, _: &str, _: usize) -> Result<Vec<HistoryEntry>> {
            Ok(Vec::new())
        }
    }

    fn run_with(state: DemoState) -> Demo {
        Demo::new(
            Arc::new(BrokenRegistry),
            Arc::new(LocalEmbedder),
            Uuid::nil(),
            DemoParams::default(),
            state,
        )
    }

    #[tokio::test]
    async fn safeguard_reports_its_own_failure() {
        let mut run = run_with(DemoState {
            winning_run_id: Some("champion".into()),
            ..Default::default()
        });
        let err = run.compensate("safer_promote_flow").await.unwrap_err();
        assert!(err.to_string().contains("registry down"), "{err}");
        assert_eq!(run.compensate("briefing").await.unwrap(), None);
        // Nothing recorded: the run never moved the alias, so there is nothing to undo.
        let mut fresh = run_with(DemoState::default());
        assert_eq!(fresh.compensate("register_candidates").await.unwrap(), None);
        let mut before = run_with(DemoState {
            alias_before: Some(Some("worse".into())),
            ..Default::default()
        });
        let done = before
            .compensate("register_candidates")
            .await
            .unwrap()
            .unwrap();
        assert!(
            done.contains("already on its value before the run"),
            "{done}"
        );
    }
}

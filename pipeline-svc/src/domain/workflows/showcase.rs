//! The showcase demo (SPEC §3.1): synthetic sales data, three backtested models, their
//! registry runs and the champion's promotion, the guarded-promotion drill, what-if
//! planning from the recorded champion, knowledge retrieval, a briefing, ops checks and
//! cleanup. Every step is idempotent (registry writes carry request ids derived from the
//! operation id), so a resumed operation re-does only unfinished steps.
//!
//! `demo-production` is never left on the worse run: cleanup restores the champion, and
//! the compensation of every step that moves the alias (the failure safeguard) restores
//! the champion, or the value before the run when no champion was recorded yet.

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::registry::{AliasRef, ModelRegistry, NewRun, RunRef};
use crate::{
    domain::{
        demo::{
            backtest, briefing, chart,
            data::{self, Panel, PanelSpec},
            knowledge::{self, KnowledgeOutcome, Passage, Provider},
            models::{FittedModel, ModelKind},
            scenario::{self, ScenarioResult},
        },
        operation::{Operation, OperationResult},
        workflow::{Execution, StepCx, StepOutcome, StepSpec, Workflow},
    },
    error::{Error, Result, Validator},
};
use capstan_proto::artifact_uri::ArtifactUri;

/// The alias the demo promotes to and restores.
pub const ALIAS: &str = "demo-production";
/// Registry namespace of every artifact the demo uploads.
const NAMESPACE: &str = "demo";
/// Rolling-origin folds of the backtest.
pub const FOLDS: usize = 3;
/// The largest champion model the planning step downloads.
const MAX_MODEL_BYTES: usize = 64 << 20;
/// Passages retrieved per query.
const PASSAGES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    ShowcaseMinimal,
    ShowcaseRich,
}

impl Scenario {
    pub const ALL: [Scenario; 2] = [Scenario::ShowcaseMinimal, Scenario::ShowcaseRich];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShowcaseMinimal => "showcase_minimal",
            Self::ShowcaseRich => "showcase_rich",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The operation kind this scenario runs as.
    pub fn kind(self) -> String {
        format!("demo.{}", self.as_str())
    }

    fn steps(self) -> &'static [StepSpec] {
        match self {
            Self::ShowcaseMinimal => &MINIMAL_STEPS,
            Self::ShowcaseRich => &RICH_STEPS,
        }
    }
}

const fn step(name: &'static str, phase: &'static str) -> StepSpec {
    StepSpec { name, phase }
}

pub const RICH_STEPS: [StepSpec; 9] = [
    step("generate_data", "data"),
    step("train_and_backtest", "training"),
    step("register_candidates", "registry"),
    step("safer_promote_flow", "decision"),
    step("scenario_simulate_and_save", "planning"),
    step("index_and_retrieve", "knowledge"),
    step("briefing", "agents"),
    step("ops_checks", "ops"),
    step("cleanup", "cleanup"),
];

pub const MINIMAL_STEPS: [StepSpec; 4] =
    [RICH_STEPS[0], RICH_STEPS[1], RICH_STEPS[2], RICH_STEPS[8]];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoParams {
    pub scenario: Scenario,
    pub seed: u64,
    pub series: usize,
    pub days: usize,
    pub horizon: usize,
}

impl Default for DemoParams {
    /// The science's showcase panel and a four-week horizon.
    fn default() -> Self {
        let panel = PanelSpec::default();
        Self {
            scenario: Scenario::ShowcaseRich,
            seed: panel.seed,
            series: panel.series,
            days: panel.days,
            horizon: 28,
        }
    }
}

impl DemoParams {
    /// Bounds what one request may make the workers compute.
    pub const MAX_SERIES: usize = 500;
    pub const MAX_HORIZON: usize = 180;

    /// Field names are the wire names of `StartDemoRequest`.
    pub fn validate(&self) -> Result<()> {
        let mut v = Validator::default();
        v.check(
            (1..=Self::MAX_SERIES).contains(&self.series),
            "series_count",
            || format!("must be 1-{}, got {}", Self::MAX_SERIES, self.series),
        );
        v.check(self.days <= data::MAX_DAYS, "days", || {
            format!("must be at most {}, got {}", data::MAX_DAYS, self.days)
        });
        v.check(
            (1..=Self::MAX_HORIZON).contains(&self.horizon),
            "horizon",
            || format!("must be 1-{}, got {}", Self::MAX_HORIZON, self.horizon),
        );
        // The backtest's own rule: every fold keeps enough days to train on.
        v.check(
            self.days > data::MAX_DAYS
                || backtest::cutoffs(self.days, self.horizon, FOLDS).len() == FOLDS,
            "days",
            || {
                format!(
                    "{} days of history cannot backtest a {}-day horizon over {FOLDS} folds \
                     (each needs {} days to train on); add days or shorten the horizon",
                    self.days,
                    self.horizon,
                    backtest::MIN_TRAIN_DAYS
                )
            },
        );
        Ok(v.finish()?)
    }
}

/// Where the knowledge step gets embeddings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KnowledgeConfig {
    /// The built-in local embedder.
    #[default]
    Local,
    /// An external provider; an empty URL means "selected but not configured".
    External {
        url: String,
        api_key: Option<String>,
    },
}

impl KnowledgeConfig {
    fn provider(&self) -> Provider {
        match self {
            Self::Local => Provider::Local,
            Self::External { url, api_key } => Provider::External {
                url: url.clone(),
                api_key: api_key.clone(),
            },
        }
    }
}

/// A backtested model and its registry run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoModel {
    pub model_type: String,
    pub run_id: String,
    pub wape: f64,
    pub mae: f64,
    pub bias: f64,
    pub artifact_uri: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoScenarioOutcome {
    pub name: String,
    pub total_units: f64,
    pub delta_pct: f64,
    pub daily: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoPassage {
    pub title: String,
    pub text: String,
    pub score: f32,
}

/// What the demo produced (the operation's result).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DemoResult {
    pub scenario: String,
    pub winning_run_id: String,
    pub champion: Option<DemoModel>,
    pub candidates: Vec<DemoModel>,
    pub baseline_wape: f64,
    pub challenger_run_id: String,
    pub scenario_run_id: String,
    pub chart_run_id: String,
    pub chart_artifact_uri: String,
    pub scenarios: Vec<DemoScenarioOutcome>,
    pub briefing: String,
    pub alias_run_id: String,
    pub alias_revision: i64,
}

/// What finished steps saved: everything later steps and a resume need that cannot be
/// recomputed from the parameters (the panel and the fitted models can).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DemoState {
    /// `Some(None)`: the alias did not exist before the run.
    alias_before: Option<Option<String>>,
    candidates: Vec<DemoModel>,
    /// The backtest's champion (lowest WAPE, by the science's rule).
    champion_model_type: Option<String>,
    winning_run_id: Option<String>,
    champion_revision: Option<i64>,
    challenger_run_id: Option<String>,
    challenger_revision: Option<i64>,
    scenario_run_id: Option<String>,
    chart_run_id: Option<String>,
    chart_artifact_uri: Option<String>,
    scenarios: Vec<DemoScenarioOutcome>,
    passages: Vec<DemoPassage>,
    briefing: Option<String>,
    final_alias: Option<(String, i64)>,
}

pub struct ShowcaseWorkflow {
    registry: Arc<dyn ModelRegistry>,
    knowledge: KnowledgeConfig,
}

impl ShowcaseWorkflow {
    pub fn new(registry: Arc<dyn ModelRegistry>, knowledge: KnowledgeConfig) -> Arc<Self> {
        Arc::new(Self {
            registry,
            knowledge,
        })
    }
}

impl Workflow for ShowcaseWorkflow {
    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>> {
        let p: DemoParams = serde_json::from_value(params.clone())
            .map_err(|e| Error::invalid("params", e.to_string()))?;
        p.validate()?;
        Ok(p.scenario.steps().to_vec())
    }

    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        let params: DemoParams = serde_json::from_value(op.params.clone())
            .map_err(|e| Error::Internal(format!("stored demo parameters unreadable: {e}")))?;
        let state: DemoState = if op.state.is_null() {
            DemoState::default()
        } else {
            serde_json::from_value(op.state.clone())
                .map_err(|e| Error::Internal(format!("stored demo state unreadable: {e}")))?
        };
        Ok(Box::new(DemoRun {
            registry: self.registry.clone(),
            knowledge: self.knowledge.clone(),
            operation_id: op.id,
            params,
            state,
            panel: None,
            fitted: None,
        }))
    }
}

struct DemoRun {
    registry: Arc<dyn ModelRegistry>,
    knowledge: KnowledgeConfig,
    operation_id: Uuid,
    params: DemoParams,
    state: DemoState,
    panel: Option<Panel>,
    fitted: Option<Vec<FittedModel>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Scenario names become metric keys, which allow `[A-Za-z0-9_.-/]`.
fn metric_key(name: &str) -> String {
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

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

impl DemoRun {
    fn panel(&mut self) -> &Panel {
        let p = &self.params;
        self.panel.get_or_insert_with(|| {
            data::generate(&PanelSpec {
                seed: p.seed,
                series: p.series,
                days: p.days,
            })
        })
    }

    /// Every candidate fitted on the full history (deterministic, so a resume refits).
    fn fitted(&mut self) -> &[FittedModel] {
        if self.fitted.is_none() {
            let days = self.params.days;
            let panel = self.panel();
            let models = ModelKind::ALL
                .iter()
                .map(|k| FittedModel::fit(*k, panel, days))
                .collect();
            self.fitted = Some(models);
        }
        self.fitted.as_deref().unwrap_or_default()
    }

    fn fitted_of(&mut self, model_type: &str) -> Result<FittedModel> {
        self.fitted()
            .iter()
            .find(|m| m.kind().as_str() == model_type)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("no fitted model of type {model_type}")))
    }

    fn request_id(&self, what: &str) -> String {
        format!("{}:{what}", self.operation_id)
    }

    fn tags(&self, role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("operation_id".to_string(), self.operation_id.to_string()),
            (
                "workflow".to_string(),
                self.params.scenario.as_str().to_string(),
            ),
            ("role".to_string(), role.to_string()),
        ])
    }

    fn run_params(&self) -> BTreeMap<String, String> {
        let p = &self.params;
        BTreeMap::from([
            ("seed".to_string(), p.seed.to_string()),
            ("series".to_string(), p.series.to_string()),
            ("days".to_string(), p.days.to_string()),
            ("horizon".to_string(), p.horizon.to_string()),
            ("folds".to_string(), FOLDS.to_string()),
        ])
    }

    /// Creates (or, on a resume, finds) a run, attaches its artifact and marks it
    /// SUCCEEDED with `metrics`.
    async fn publish_run(
        &self,
        new: NewRun,
        file_name: &str,
        content: Vec<u8>,
        metrics: BTreeMap<String, f64>,
    ) -> Result<RunRef> {
        let run = self.registry.create_run(new).await?;
        if run.succeeded && !run.artifact_uri.is_empty() {
            return Ok(run);
        }
        if run.artifact_uri.is_empty() {
            self.registry
                .upload_artifact(&run.run_id, file_name, NAMESPACE, content)
                .await?;
        }
        self.registry.finish_run(&run.run_id, metrics).await
    }

    fn champion(&self) -> Result<DemoModel> {
        let id = self.state.winning_run_id.as_deref().ok_or_else(|| {
            Error::FailedPrecondition(
                "no champion recorded: register_candidates has not run".into(),
            )
        })?;
        self.state
            .candidates
            .iter()
            .find(|c| c.run_id == id)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("champion run {id} is not a candidate")))
    }

    /// Points the alias at `target` unless it is there already, compare-and-swap on the
    /// revision it read (retrying when another writer got in between).
    async fn restore_alias(&self, target: &str, reason: &str) -> Result<(AliasRef, bool)> {
        let mut last = None;
        for _ in 0..5 {
            let current = self.registry.get_alias(ALIAS).await?;
            if let Some(a) = &current {
                if a.run_id == target {
                    return Ok((a.clone(), false));
                }
            }
            let expected = current.map_or(0, |a| a.revision);
            match self
                .registry
                .set_alias(ALIAS, target, expected, reason)
                .await
            {
                Ok(a) => return Ok((a, true)),
                Err(Error::Aborted(m)) => last = Some(m),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Aborted(format!(
            "{ALIAS} kept changing while restoring it to run {target}: {}",
            last.unwrap_or_default()
        )))
    }

    async fn generate_data(&mut self) -> Result<StepOutcome> {
        let summary = data::validate(self.panel()).map_err(|e| {
            Error::FailedPrecondition(format!("the generated panel is invalid: {e}"))
        })?;
        Ok(StepOutcome::Passed(format!(
            "{} series × {} days, {:.0} units, {} promotion days (seed {})",
            summary.series, summary.days, summary.total_units, summary.promo_days, self.params.seed
        )))
    }

    async fn train_and_backtest(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let horizon = self.params.horizon;
        let mut candidates = Vec::new();
        let mut results = Vec::new();
        for kind in ModelKind::ALL {
            let r = backtest::rolling_origin(self.panel(), kind, horizon, FOLDS);
            if r.folds == 0 || !(r.wape.is_finite() && r.mae.is_finite() && r.bias.is_finite()) {
                return Err(Error::FailedPrecondition(format!(
                    "the backtest of {} evaluated nothing usable ({} folds, WAPE {})",
                    kind.as_str(),
                    r.folds,
                    r.wape
                )));
            }
            cx.progress(format!(
                "backtested {}: WAPE {:.4}, MAE {:.3}, bias {:+.4} over {} folds",
                kind.as_str(),
                r.wape,
                r.mae,
                r.bias,
                r.folds
            ))
            .await?;
            candidates.push(DemoModel {
                model_type: kind.as_str().to_string(),
                run_id: String::new(),
                wape: r.wape,
                mae: r.mae,
                bias: r.bias,
                artifact_uri: String::new(),
            });
            results.push(r);
        }
        let champion = backtest::champion(&results)
            .ok_or_else(|| Error::FailedPrecondition("no candidate could be evaluated".into()))?;
        self.state.champion_model_type = Some(champion.kind.as_str().to_string());
        self.fitted();
        let mut ranked: Vec<&DemoModel> = candidates.iter().collect();
        ranked.sort_by(|a, b| a.wape.total_cmp(&b.wape));
        let detail = ranked
            .iter()
            .map(|c| format!("{} WAPE {:.4}", c.model_type, c.wape))
            .collect::<Vec<_>>()
            .join(", ");
        self.state.candidates = candidates;
        Ok(StepOutcome::Passed(format!(
            "{detail} ({FOLDS}-fold rolling origin, {horizon}-day horizon)"
        )))
    }

    async fn register_candidates(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        if self.state.alias_before.is_none() {
            let before = self.registry.get_alias(ALIAS).await?.map(|a| a.run_id);
            self.state.alias_before = Some(before);
            cx.checkpoint(&self.state()).await?;
        }
        if self.state.candidates.is_empty() {
            return Err(Error::FailedPrecondition(
                "no backtested candidates: train_and_backtest has not run".into(),
            ));
        }
        for i in 0..self.state.candidates.len() {
            let c = self.state.candidates[i].clone();
            let model = self.fitted_of(&c.model_type)?;
            let new = NewRun {
                request_id: self.request_id(&format!("candidate:{}", c.model_type)),
                name: format!("showcase {}", c.model_type),
                model_type: c.model_type.clone(),
                params: self.run_params(),
                tags: self.tags("candidate"),
            };
            let metrics = BTreeMap::from([
                ("wape".to_string(), c.wape),
                ("mae".to_string(), c.mae),
                ("bias".to_string(), c.bias),
            ]);
            let run = self
                .publish_run(new, "model.bin", model.to_bytes(), metrics)
                .await?;
            let cand = &mut self.state.candidates[i];
            cand.run_id = run.run_id;
            cand.artifact_uri = run.artifact_uri;
        }
        let best = self.state.champion_model_type.as_deref();
        let champion = self
            .state
            .candidates
            .iter()
            .find(|c| Some(c.model_type.as_str()) == best)
            .cloned()
            .ok_or_else(|| Error::Internal("the backtest champion is not a candidate".into()))?;
        self.state.winning_run_id = Some(champion.run_id.clone());
        cx.checkpoint(&self.state()).await?;
        let reason = format!("showcase {}: champion by backtest WAPE", self.operation_id);
        let (alias, how) = match self
            .registry
            .promote(ALIAS, &champion.run_id, false, &reason)
            .await
        {
            Ok(a) => (a, "promoted"),
            // A better model of an earlier demo holds the alias: the demo owns it, so it
            // takes it over as an operator would.
            Err(Error::FailedPrecondition(_)) => (
                self.registry
                    .promote(
                        ALIAS,
                        &champion.run_id,
                        true,
                        &format!("{reason} (takes over {ALIAS})"),
                    )
                    .await?,
                "promoted (forced over an earlier demo's run)",
            ),
            Err(e) => return Err(e),
        };
        self.state.champion_revision = Some(alias.revision);
        Ok(StepOutcome::Passed(format!(
            "{} runs registered with model artifacts; champion {} (run {}, WAPE {:.4}) {how} to {ALIAS} r{}",
            self.state.candidates.len(),
            champion.model_type,
            short(&champion.run_id),
            champion.wape,
            alias.revision
        )))
    }

    async fn safer_promote_flow(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let champion = self.champion()?;
        // A resumed step starts over from the champion holding the alias.
        self.restore_alias(
            &champion.run_id,
            "showcase: champion holds the alias before the drill",
        )
        .await?;
        let worst = self
            .state
            .candidates
            .iter()
            .max_by(|a, b| a.wape.total_cmp(&b.wape))
            .cloned()
            .ok_or_else(|| Error::Internal("no candidates".into()))?;
        if worst.wape <= champion.wape {
            return Err(Error::FailedPrecondition(format!(
                "no candidate is worse than the champion (WAPE {:.4}); the guard cannot be shown",
                champion.wape
            )));
        }
        let model = self.fitted_of(&worst.model_type)?;
        let new = NewRun {
            request_id: self.request_id("challenger"),
            name: format!("showcase challenger ({})", worst.model_type),
            model_type: worst.model_type.clone(),
            params: self.run_params(),
            tags: self.tags("challenger"),
        };
        let metrics = BTreeMap::from([
            ("wape".to_string(), worst.wape),
            ("mae".to_string(), worst.mae),
            ("bias".to_string(), worst.bias),
        ]);
        let challenger = self
            .publish_run(new, "model.bin", model.to_bytes(), metrics)
            .await?;
        ArtifactUri::parse(&challenger.artifact_uri)
            .map_err(|e| Error::DataLoss(format!("challenger artifact URI does not parse: {e}")))?;
        self.state.challenger_run_id = Some(challenger.run_id.clone());
        let refusal = match self
            .registry
            .promote(
                ALIAS,
                &challenger.run_id,
                false,
                "showcase: guarded promotion of a worse challenger",
            )
            .await
        {
            Err(Error::FailedPrecondition(m)) => m,
            Ok(a) => {
                return Err(Error::FailedPrecondition(format!(
                    "the guarded PromoteRun accepted a worse challenger ({ALIAS} r{} → run {})",
                    a.revision, a.run_id
                )))
            }
            Err(e) => return Err(e),
        };
        cx.progress(format!(
            "guarded PromoteRun refused the challenger: {refusal}"
        ))
        .await?;
        let forced = self
            .registry
            .promote(
                ALIAS,
                &challenger.run_id,
                true,
                "showcase: operator forces the worse challenger",
            )
            .await?;
        self.state.challenger_revision = Some(forced.revision);
        Ok(StepOutcome::Passed(format!(
            "guard refused challenger {} (WAPE {:.4} vs champion {:.4}); forced as an operator would: {ALIAS} r{} → run {}",
            worst.model_type,
            worst.wape,
            champion.wape,
            forced.revision,
            short(&challenger.run_id)
        )))
    }

    async fn scenario_simulate_and_save(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        // The recorded champion, never the live alias: the drill left a worse run there.
        let (champion_id, source) = match &self.state.winning_run_id {
            Some(id) => (id.clone(), "recorded winning_run_id"),
            None => match self.registry.get_alias(ALIAS).await? {
                Some(a) => (a.run_id, "live alias (no champion recorded)"),
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "no champion recorded and {ALIAS} does not exist"
                    )))
                }
            },
        };
        let run = self.registry.get_run(&champion_id).await?;
        let uri = ArtifactUri::parse(&run.artifact_uri).map_err(|e| {
            Error::DataLoss(format!(
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
            return Err(Error::DataLoss(format!(
                "champion artifact {uri} failed verification: content SHA-256 {sha} ({} bytes), \
                 registry says {} ({} bytes)",
                bytes.len(),
                run.artifact_sha256,
                meta.size_bytes
            )));
        }
        let model = FittedModel::from_bytes(&bytes)
            .map_err(|e| Error::DataLoss(format!("champion artifact {uri} does not load: {e}")))?;
        if model.kind().as_str() != run.model_type {
            return Err(Error::DataLoss(format!(
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
        let panel = self.panel();
        let mut baseline = vec![0.0; horizon];
        for s in 0..panel.series.len() {
            for (day, v) in model.forecast(s, horizon).into_iter().enumerate() {
                if let Some(b) = baseline.get_mut(day) {
                    *b += v;
                }
            }
        }
        let results = scenario::simulate(&model, panel, horizon, &scenario::default_scenarios());
        let svg = chart::svg(panel, &baseline, &results);
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
            .map_err(|e| Error::Internal(format!("cannot serialize the scenarios: {e}")))?;
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
            )
            .await?;
        let chart_run = self
            .publish_run(
                NewRun {
                    request_id: self.request_id("chart"),
                    name: "showcase scenario chart".into(),
                    model_type: "scenario_chart".into(),
                    params: self.run_params(),
                    tags: self.tags("chart"),
                },
                "chart.svg",
                svg.into_bytes(),
                BTreeMap::new(),
            )
            .await?;
        let summary = outcomes
            .iter()
            .map(|o| format!("{} {:+.1}%", o.name, o.delta_pct))
            .collect::<Vec<_>>()
            .join(", ");
        self.state.scenarios = outcomes;
        self.state.scenario_run_id = Some(scenario_run.run_id.clone());
        self.state.chart_run_id = Some(chart_run.run_id.clone());
        self.state.chart_artifact_uri = Some(chart_run.artifact_uri.clone());
        Ok(StepOutcome::Passed(format!(
            "champion {} loaded by {source} and verified; {summary}; results in run {}, chart {}",
            run.model_type,
            short(&scenario_run.run_id),
            chart_run.artifact_uri
        )))
    }

    async fn index_and_retrieve(&mut self) -> Result<StepOutcome> {
        let champion = self.champion()?;
        let queries = vec![
            format!(
                "when to promote a {} forecasting model on WAPE",
                champion.model_type
            ),
            format!("roll back the {ALIAS} alias after a bad promotion"),
            "plan price changes and promotions with scenarios".to_string(),
        ];
        let docs = knowledge::runbooks();
        match knowledge::index_and_retrieve(&self.knowledge.provider(), &docs, &queries, PASSAGES)
            .await
        {
            Ok(KnowledgeOutcome::Retrieved(passages)) => {
                let titles = passages
                    .iter()
                    .map(|p| p.title.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                let n = passages.len();
                self.state.passages = passages
                    .into_iter()
                    .map(|p| DemoPassage {
                        title: p.title,
                        text: p.text,
                        score: p.score,
                    })
                    .collect();
                Ok(StepOutcome::Passed(format!(
                    "indexed {} runbooks; retrieved {n} passages: {titles}",
                    docs.len()
                )))
            }
            Ok(KnowledgeOutcome::Skipped(reason)) => {
                self.state.passages.clear();
                Ok(StepOutcome::Skipped(reason))
            }
            Err(e) => Err(Error::Unavailable(format!(
                "knowledge retrieval failed: {e}"
            ))),
        }
    }

    async fn briefing(&mut self) -> Result<StepOutcome> {
        let champion = self.champion()?;
        let scenarios: Vec<ScenarioResult> = self
            .state
            .scenarios
            .iter()
            .map(|s| ScenarioResult {
                name: s.name.clone(),
                total_units: s.total_units,
                delta_pct: s.delta_pct,
                daily: s.daily.clone(),
            })
            .collect();
        let passages: Vec<Passage> = self
            .state
            .passages
            .iter()
            .map(|p| Passage {
                title: p.title.clone(),
                text: p.text.clone(),
                score: p.score,
            })
            .collect();
        let text = briefing::render(
            &champion.model_type,
            champion.wape,
            champion.mae,
            champion.bias,
            &scenarios,
            &passages,
        );
        let detail = format!(
            "{} characters from the champion's metrics, {} scenarios and {} passages",
            text.chars().count(),
            scenarios.len(),
            passages.len()
        );
        self.state.briefing = Some(text);
        Ok(StepOutcome::Passed(detail))
    }

    async fn ops_checks(&mut self) -> Result<StepOutcome> {
        let health = self.registry.health().await?;
        if health != "SERVING" {
            return Err(Error::Unavailable(format!("registry health is {health}")));
        }
        let history = self.registry.alias_history(ALIAS, 1000).await?;
        let mut checked = Vec::new();
        let swaps = [
            (
                self.state.champion_revision,
                self.state.winning_run_id.as_deref(),
                "champion",
            ),
            (
                self.state.challenger_revision,
                self.state.challenger_run_id.as_deref(),
                "forced challenger",
            ),
        ];
        for (revision, run_id, what) in swaps {
            let (Some(revision), Some(run_id)) = (revision, run_id) else {
                continue;
            };
            let found = history
                .iter()
                .any(|h| h.revision == revision && h.run_id == run_id);
            if !found {
                return Err(Error::FailedPrecondition(format!(
                    "{ALIAS} history lacks r{revision} → run {run_id} ({what})"
                )));
            }
            checked.push(format!("r{revision} {what}"));
        }
        Ok(StepOutcome::Passed(format!(
            "registry {health}; {ALIAS} history ({} entries) records every swap: {}",
            history.len(),
            checked.join(", ")
        )))
    }

    async fn cleanup(&mut self) -> Result<StepOutcome> {
        let champion = self.champion()?;
        let (alias, changed) = self
            .restore_alias(&champion.run_id, "showcase cleanup: restore the champion")
            .await?;
        self.state.final_alias = Some((alias.run_id.clone(), alias.revision));
        Ok(StepOutcome::Passed(if changed {
            format!(
                "{ALIAS} restored to champion {} (run {}) at r{} by compare-and-swap",
                champion.model_type,
                short(&champion.run_id),
                alias.revision
            )
        } else {
            format!(
                "{ALIAS} already on champion {} (run {}, r{})",
                champion.model_type,
                short(&champion.run_id),
                alias.revision
            )
        }))
    }

    /// The failure safeguard: the champion back on the alias, or the alias's value before
    /// the run when no champion was recorded.
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
                "{ALIAS} restored to {what} (run {}) at r{}",
                short(&target),
                alias.revision
            )
        } else {
            format!("{ALIAS} already on {what} (run {})", short(&target))
        }))
    }
}

#[async_trait]
impl Execution for DemoRun {
    async fn run_step(&mut self, step: &str, cx: &StepCx<'_>) -> Result<StepOutcome> {
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
            other => Err(Error::Internal(format!(
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
        serde_json::to_value(&self.state).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialize the demo state");
            serde_json::Value::Null
        })
    }

    fn result(&self) -> Option<OperationResult> {
        let s = &self.state;
        let baseline_wape = s
            .candidates
            .iter()
            .find(|c| c.model_type == ModelKind::SeasonalNaive.as_str())
            .map_or(0.0, |c| c.wape);
        let (alias_run_id, alias_revision) = s.final_alias.clone().unwrap_or_default();
        Some(OperationResult::Demo(DemoResult {
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
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minimal_is_data_training_registry_cleanup() {
        let phases: Vec<_> = Scenario::ShowcaseMinimal
            .steps()
            .iter()
            .map(|s| s.phase)
            .collect();
        assert_eq!(phases, ["data", "training", "registry", "cleanup"]);
        assert_eq!(Scenario::ShowcaseRich.steps().len(), 9);
        assert_eq!(RICH_STEPS[3].name, "safer_promote_flow");
        assert_eq!(RICH_STEPS[4].name, "scenario_simulate_and_save");
    }

    proptest! {
        #[test]
        fn params_validation_never_panics(series in 0usize..1000, days in 0usize..5000, horizon in 0usize..400) {
            let p = DemoParams { series, days, horizon, ..DemoParams::default() };
            if p.validate().is_ok() {
                prop_assert_eq!(backtest::cutoffs(days, horizon, FOLDS).len(), FOLDS);
                prop_assert!(series >= 1 && horizon >= 1);
            }
        }

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
            Err(Error::Unavailable("registry down".into()))
        }
        async fn get_run(&self, _: &str) -> Result<RunRef> {
            Err(Error::Unavailable("registry down".into()))
        }
        async fn upload_artifact(&self, _: &str, _: &str, _: &str, _: Vec<u8>) -> Result<String> {
            Err(Error::Unavailable("registry down".into()))
        }
        async fn finish_run(&self, _: &str, _: BTreeMap<String, f64>) -> Result<RunRef> {
            Err(Error::Unavailable("registry down".into()))
        }
        async fn download_artifact(
            &self,
            _: &str,
            _: usize,
        ) -> Result<(super::super::registry::ArtifactMeta, Vec<u8>)> {
            Err(Error::Unavailable("registry down".into()))
        }
        async fn get_alias(&self, _: &str) -> Result<Option<AliasRef>> {
            Ok(Some(AliasRef {
                run_id: "worse".into(),
                revision: 3,
            }))
        }
        async fn set_alias(&self, _: &str, _: &str, _: i64, _: &str) -> Result<AliasRef> {
            Err(Error::Unavailable("registry down".into()))
        }
        async fn promote(&self, _: &str, _: &str, _: bool, _: &str) -> Result<AliasRef> {
            Err(Error::Unavailable("registry down".into()))
        }
        async fn alias_history(
            &self,
            _: &str,
            _: usize,
        ) -> Result<Vec<super::super::registry::HistoryEntry>> {
            Ok(Vec::new())
        }
    }

    fn run_with(state: DemoState) -> DemoRun {
        DemoRun {
            registry: Arc::new(BrokenRegistry),
            knowledge: KnowledgeConfig::Local,
            operation_id: Uuid::nil(),
            params: DemoParams::default(),
            state,
            panel: None,
            fitted: None,
        }
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

    #[test]
    fn default_params_are_valid() {
        DemoParams::default().validate().unwrap();
        assert_eq!(
            Scenario::parse("showcase_rich"),
            Some(Scenario::ShowcaseRich)
        );
        assert_eq!(Scenario::parse("nope"), None);
    }
}

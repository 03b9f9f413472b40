//! What a demo keeps: the state its finished steps saved, and its result.

use serde::{Deserialize, Serialize};

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

/// What the demo produced (the operation's result). Stored with `"type": "demo"`, as
/// results have always been.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "demo")]
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
pub(super) struct DemoState {
    /// `Some(None)`: the alias did not exist before the demo.
    pub(super) alias_before: Option<Option<String>>,
    pub(super) candidates: Vec<DemoModel>,
    /// The backtest's champion (lowest WAPE, by the science's rule).
    pub(super) champion_model_type: Option<String>,
    pub(super) winning_run_id: Option<String>,
    pub(super) champion_revision: Option<i64>,
    pub(super) challenger_run_id: Option<String>,
    pub(super) challenger_revision: Option<i64>,
    pub(super) scenario_run_id: Option<String>,
    pub(super) chart_run_id: Option<String>,
    pub(super) chart_artifact_uri: Option<String>,
    pub(super) scenarios: Vec<DemoScenarioOutcome>,
    pub(super) passages: Vec<DemoPassage>,
    pub(super) briefing: Option<String>,
    pub(super) final_alias: Option<(String, i64)>,
}

//! `briefing`: writes the briefing from the champion's metrics, the scenarios and the passages.

use super::super::{
    demo::Demo,
    science::{briefing, knowledge::Passage, scenario::ScenarioResult},
};
use crate::{domain::engine::workflow::StepOutcome, error::Result};

impl Demo {
    pub(in crate::domain::showcase) async fn briefing(&mut self) -> Result<StepOutcome> {
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
}

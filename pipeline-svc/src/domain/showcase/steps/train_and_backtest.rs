//! `train_and_backtest`: backtests every candidate model with a rolling origin and picks the champion by WAPE.

use super::super::{
    demo::{compute, Demo},
    science::{backtest, models::ModelKind},
    state::DemoModel,
    FOLDS,
};
use crate::{
    domain::engine::workflow::{StepCx, StepOutcome},
    error::{Error, Result},
};

impl Demo {
    pub(in crate::domain::showcase) async fn train_and_backtest(
        &mut self,
        cx: &StepCx<'_>,
    ) -> Result<StepOutcome> {
        let horizon = self.params.horizon;
        let panel = self.panel().await?;
        let backtests = compute(cx.cancellation(), move |stop| {
            ModelKind::ALL.map(|kind| backtest::rolling_origin(&panel, kind, horizon, FOLDS, stop))
        })
        .await?;
        let mut candidates = Vec::new();
        let mut results = Vec::new();
        for (kind, r) in ModelKind::ALL.into_iter().zip(backtests) {
            if r.folds == 0 || !(r.wape.is_finite() && r.mae.is_finite() && r.bias.is_finite()) {
                return Err(Error::Precondition(format!(
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
            .ok_or_else(|| Error::Precondition("no candidate could be evaluated".into()))?;
        self.state.champion_model_type = Some(champion.kind.as_str().to_string());
        self.fitted().await?;
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
}

//! `register_candidates`: registers every candidate as a registry run with its model artifact, and promotes the
//! champion to the alias (taking it over from an earlier demo when that one was better).

use std::collections::BTreeMap;

use super::super::{
    demo::{short, Demo},
    registry::NewRun,
};
use crate::{
    domain::engine::workflow::{Execution, StepCx, StepOutcome},
    error::{Error, Result},
};

impl Demo {
    pub(in crate::domain::showcase) async fn register_candidates(
        &mut self,
        cx: &StepCx<'_>,
    ) -> Result<StepOutcome> {
        if self.state.alias_before.is_none() {
            let before = self
                .registry
                .get_alias(&self.params.alias)
                .await?
                .map(|a| a.run_id);
            self.state.alias_before = Some(before);
            cx.checkpoint(&self.state()).await?;
        }
        if self.state.candidates.is_empty() {
            return Err(Error::Precondition(
                "no backtested candidates: train_and_backtest has not run".into(),
            ));
        }
        for i in 0..self.state.candidates.len() {
            let c = self.state.candidates[i].clone();
            let model = self.fitted_of(&c.model_type).await?;
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
                .publish_run(new, "model.bin", model.to_bytes(), metrics, Vec::new())
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
            .ok_or_else(|| Error::internal("the backtest champion is not a candidate"))?;
        self.state.winning_run_id = Some(champion.run_id.clone());
        cx.checkpoint(&self.state()).await?;
        let reason = format!("showcase {}: champion by backtest WAPE", self.operation_id);
        let (alias, how) = match self
            .registry
            .promote(&self.params.alias, &champion.run_id, false, &reason)
            .await
        {
            Ok(a) => (a, "promoted"),
            // A better model of an earlier demo holds the alias: the demo owns it, so it
            // takes it over as an operator would.
            Err(Error::Precondition(_)) => (
                self.registry
                    .promote(
                        &self.params.alias,
                        &champion.run_id,
                        true,
                        &format!(
                            "{reason} (takes over {alias_name})",
                            alias_name = self.params.alias
                        ),
                    )
                    .await?,
                "promoted (forced over an earlier demo's run)",
            ),
            Err(e) => return Err(e),
        };
        self.state.champion_revision = Some(alias.revision);
        Ok(StepOutcome::Passed(format!(
            "{} runs registered with model artifacts; champion {} (run {}, WAPE {:.4}) {how} to {alias_name} r{}",
            self.state.candidates.len(),
            champion.model_type,
            short(&champion.run_id),
            champion.wape,
            alias.revision, alias_name = self.params.alias
        )))
    }
}

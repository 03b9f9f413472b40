//! `ops_checks`: checks that the registry is SERVING and that the alias history records every swap.

use super::super::demo::Demo;
use crate::{
    domain::engine::workflow::StepOutcome,
    error::{Error, Result},
};

impl Demo {
    pub(in crate::domain::showcase) async fn ops_checks(&mut self) -> Result<StepOutcome> {
        let health = self.registry.health().await?;
        if health != "SERVING" {
            return Err(Error::unavailable(format!("registry health is {health}")));
        }
        let history = self
            .registry
            .alias_history(&self.params.alias, 1000)
            .await?;
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
                return Err(Error::Precondition(format!(
                    "{alias_name} history lacks r{revision} → run {run_id} ({what})",
                    alias_name = self.params.alias
                )));
            }
            checked.push(format!("r{revision} {what}"));
        }
        Ok(StepOutcome::Passed(format!(
            "registry {health}; {alias_name} history ({} entries) records every swap: {}",
            history.len(),
            checked.join(", "),
            alias_name = self.params.alias
        )))
    }
}

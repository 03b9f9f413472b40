//! `cleanup`: restores the champion on the alias.

use super::super::demo::{short, Demo};
use crate::{domain::engine::workflow::StepOutcome, error::Result};

impl Demo {
    pub(in crate::domain::showcase) async fn cleanup(&mut self) -> Result<StepOutcome> {
        let champion = self.champion()?;
        let (alias, changed) = self
            .restore_alias(&champion.run_id, "showcase cleanup: restore the champion")
            .await?;
        self.state.final_alias = Some((alias.run_id.clone(), alias.revision));
        Ok(StepOutcome::Passed(if changed {
            format!(
                "{alias_name} restored to champion {} (run {}) at r{} by compare-and-swap",
                champion.model_type,
                short(&champion.run_id),
                alias.revision,
                alias_name = self.params.alias
            )
        } else {
            format!(
                "{alias_name} already on champion {} (run {}, r{})",
                champion.model_type,
                short(&champion.run_id),
                alias.revision,
                alias_name = self.params.alias
            )
        }))
    }
}

//! `generate_data`: validates the generated panel (its series, days, units and promotions).

use super::super::{demo::Demo, science::data};
use crate::{
    domain::engine::workflow::StepOutcome,
    error::{Error, Result},
};

impl Demo {
    pub(in crate::domain::showcase) async fn generate_data(&mut self) -> Result<StepOutcome> {
        let panel = self.panel().await?;
        let summary = data::validate(&panel)
            .map_err(|e| Error::Precondition(format!("the generated panel is invalid: {e}")))?;
        Ok(StepOutcome::Passed(format!(
            "{} series × {} days, {:.0} units, {} promotion days (seed {})",
            summary.series, summary.days, summary.total_units, summary.promo_days, self.params.seed
        )))
    }
}

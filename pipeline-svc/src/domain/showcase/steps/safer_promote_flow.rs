//! `safer_promote_flow`: the guarded-promotion drill: a worse challenger is refused by PromoteRun, then forced
//! as an operator would (the alias holds the worse run until cleanup or the safeguard).

use std::collections::BTreeMap;

use capstan_proto::artifact_uri::ArtifactUri;

use super::super::{
    demo::{short, Demo},
    registry::NewRun,
};
use crate::{
    domain::engine::workflow::{StepCx, StepOutcome},
    error::{Error, Result},
};

impl Demo {
    pub(in crate::domain::showcase) async fn safer_promote_flow(
        &mut self,
        cx: &StepCx<'_>,
    ) -> Result<StepOutcome> {
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
            .ok_or_else(|| Error::internal("no candidates"))?;
        if worst.wape <= champion.wape {
            return Err(Error::Precondition(format!(
                "no candidate is worse than the champion (WAPE {:.4}); the guard cannot be shown",
                champion.wape
            )));
        }
        let model = self.fitted_of(&worst.model_type).await?;
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
            .publish_run(new, "model.bin", model.to_bytes(), metrics, Vec::new())
            .await?;
        ArtifactUri::parse(&challenger.artifact_uri)
            .map_err(|e| Error::Corrupt(format!("challenger artifact URI does not parse: {e}")))?;
        self.state.challenger_run_id = Some(challenger.run_id.clone());
        let refusal = match self
            .registry
            .promote(
                &self.params.alias,
                &challenger.run_id,
                false,
                "showcase: guarded promotion of a worse challenger",
            )
            .await
        {
            Err(Error::Precondition(m)) => m,
            Ok(a) => {
                return Err(Error::Precondition(format!(
                "the guarded PromoteRun accepted a worse challenger ({alias_name} r{} → run {})",
                a.revision,
                a.run_id,
                alias_name = self.params.alias
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
                &self.params.alias,
                &challenger.run_id,
                true,
                "showcase: operator forces the worse challenger",
            )
            .await?;
        self.state.challenger_revision = Some(forced.revision);
        Ok(StepOutcome::Passed(format!(
            "guard refused challenger {} (WAPE {:.4} vs champion {:.4}); forced as an operator would: {alias_name} r{} → run {}",
            worst.model_type,
            worst.wape,
            champion.wape,
            forced.revision,
            short(&challenger.run_id), alias_name = self.params.alias
        )))
    }
}

//! `index_and_retrieve`: retrieves the runbook passages about the champion, promotion and rollback; skipped when
//! the embedding provider cannot be used.

use super::super::{
    demo::Demo,
    science::knowledge::{self, KnowledgeOutcome},
    state::DemoPassage,
    PASSAGES,
};
use crate::{
    domain::engine::workflow::StepOutcome,
    error::{Error, Result},
};

impl Demo {
    pub(in crate::domain::showcase) async fn index_and_retrieve(&mut self) -> Result<StepOutcome> {
        let champion = self.champion()?;
        let queries = vec![
            format!(
                "when to promote a {} forecasting model on WAPE",
                champion.model_type
            ),
            format!(
                "roll back the {alias_name} alias after a bad promotion",
                alias_name = self.params.alias
            ),
            "plan price changes and promotions with scenarios".to_string(),
        ];
        let docs = knowledge::runbooks();
        match knowledge::index_and_retrieve(self.embedder.as_ref(), &docs, &queries, PASSAGES).await
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
            Err(e) => Err(Error::unavailable(format!(
                "knowledge retrieval failed: {e}"
            ))),
        }
    }
}

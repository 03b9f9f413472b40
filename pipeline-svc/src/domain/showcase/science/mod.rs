//! The science of the showcase demo: synthetic data, forecasting models, backtests,
//! what-if scenarios, the chart, runbook retrieval and the briefing.
//!
//! Everything here is pure and deterministic (same inputs, same bytes out) except the
//! embedding provider `knowledge` is handed (an external one does I/O). The workflow that sequences these
//! pieces, talks to the registry and records steps lives elsewhere.

pub mod backtest;
pub mod briefing;
pub mod chart;
pub mod data;
pub mod knowledge;
pub mod models;
pub mod scenario;

/// Asked between units of long work (a series, a fold): `true` stops it early, for an
/// operation that was cancelled, and the caller discards the partial result. One atomic
/// load, so the loops ask often.
pub trait Interrupt: Sync {
    fn interrupted(&self) -> bool;
}

/// Work that nothing interrupts.
pub struct Never;

impl Interrupt for Never {
    fn interrupted(&self) -> bool {
        false
    }
}

impl Interrupt for tokio_util::sync::CancellationToken {
    fn interrupted(&self) -> bool {
        self.is_cancelled()
    }
}

/// Weekly seasonality period of the daily panel; day `t` falls on weekday `t % 7`.
pub const WEEK: usize = 7;

#[cfg(test)]
mod tests {
    use super::backtest::{champion, rolling_origin};
    use super::data::{generate, validate, PanelSpec};
    use super::knowledge::{index_and_retrieve, runbooks, KnowledgeOutcome};
    use super::models::{FittedModel, ModelKind};
    use super::scenario::{default_scenarios, simulate};
    use super::{briefing, chart, Never};

    /// The showcase chain end to end, as the pipeline runs it, on the default parameters.
    #[tokio::test]
    async fn showcase_science_end_to_end() {
        let panel = generate(&PanelSpec::default());
        let summary = validate(&panel).unwrap();
        assert_eq!(summary.series, 24);

        let results: Vec<_> = ModelKind::ALL
            .map(|k| rolling_origin(&panel, k, 28, 3, &Never))
            .into();
        let best = champion(&results).unwrap().clone();
        let artifact = FittedModel::fit(best.kind, &panel, panel.days, &Never).to_bytes();

        // Planning works from the downloaded artifact, not from the in-memory model.
        let model = FittedModel::from_bytes(&artifact).unwrap();
        assert_eq!(model.kind(), best.kind);
        let scenarios = simulate(&model, &panel, 28, &default_scenarios(), &Never);
        let svg = chart::svg(&panel, &scenarios[0].daily, &scenarios);
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));

        let queries = vec!["roll back the production alias after a forced promotion".to_string()];
        let KnowledgeOutcome::Retrieved(passages) = index_and_retrieve(
            &crate::domain::showcase::embedder::LocalEmbedder,
            &runbooks(),
            &queries,
            3,
        )
        .await
        .unwrap() else {
            panic!("the local provider never skips");
        };
        assert!(!passages.is_empty());

        let text = briefing::render(
            best.kind.as_str(),
            best.wape,
            best.mae,
            best.bias,
            &scenarios,
            &passages,
        );
        assert!(text.contains(best.kind.as_str()) && text.contains("promotion"));
        assert!(text.contains(&passages[0].title));
    }
}

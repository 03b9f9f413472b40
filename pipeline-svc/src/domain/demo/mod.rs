// STUB: replaced by the demo-science branch
//! Placeholder for the forecasting science, with the agreed signatures and simple values,
//! so that the engine and the workflow compile and run until the real modules merge.

pub mod data {
    pub struct PanelSpec {
        pub seed: u64,
        pub series: usize,
        pub days: usize,
    }
    pub struct Series {
        pub id: String,
        pub sales: Vec<f64>,
        pub price: Vec<f64>,
        pub promo: Vec<bool>,
    }
    pub struct Panel {
        pub series: Vec<Series>,
        pub days: usize,
    }
    pub struct PanelSummary {
        pub series: usize,
        pub days: usize,
        pub total_units: f64,
        pub promo_days: usize,
    }
    pub fn generate(spec: &PanelSpec) -> Panel {
        let series = (0..spec.series)
            .map(|s| Series {
                id: format!("s{s}"),
                sales: (0..spec.days)
                    .map(|d| 10.0 + ((d % 7) as f64) + ((spec.seed as usize + s) % 5) as f64)
                    .collect(),
                price: vec![1.0; spec.days],
                promo: (0..spec.days).map(|d| d % 30 == 0).collect(),
            })
            .collect();
        Panel {
            series,
            days: spec.days,
        }
    }
    pub fn validate(panel: &Panel) -> Result<PanelSummary, String> {
        if panel.series.is_empty() {
            return Err("empty panel".into());
        }
        Ok(PanelSummary {
            series: panel.series.len(),
            days: panel.days,
            total_units: panel.series.iter().flat_map(|s| &s.sales).sum(),
            promo_days: panel
                .series
                .iter()
                .flat_map(|s| &s.promo)
                .filter(|p| **p)
                .count(),
        })
    }
}

pub mod models {
    use super::data;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub enum ModelKind {
        SeasonalNaive,
        MovingAverage,
        ExpSmoothing,
    }
    impl ModelKind {
        pub const ALL: [ModelKind; 3] = [
            ModelKind::SeasonalNaive,
            ModelKind::MovingAverage,
            ModelKind::ExpSmoothing,
        ];
        pub fn as_str(self) -> &'static str {
            match self {
                ModelKind::SeasonalNaive => "seasonal_naive",
                ModelKind::MovingAverage => "moving_average",
                ModelKind::ExpSmoothing => "exp_smoothing",
            }
        }
    }
    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub struct FittedModel {
        kind: ModelKind,
        levels: Vec<f64>,
    }
    impl FittedModel {
        pub fn fit(kind: ModelKind, panel: &data::Panel, train_days: usize) -> FittedModel {
            let levels = panel
                .series
                .iter()
                .map(|s| {
                    let n = train_days.min(s.sales.len()).max(1);
                    s.sales[..n].iter().sum::<f64>() / n as f64
                })
                .collect();
            FittedModel { kind, levels }
        }
        pub fn kind(&self) -> ModelKind {
            self.kind
        }
        pub fn forecast(&self, series: usize, horizon: usize) -> Vec<f64> {
            vec![self.levels.get(series).copied().unwrap_or(0.0); horizon]
        }
        pub fn to_bytes(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
        pub fn from_bytes(b: &[u8]) -> Result<FittedModel, String> {
            serde_json::from_slice(b).map_err(|e| e.to_string())
        }
    }
}

pub mod backtest {
    use super::{data, models};
    pub struct BacktestResult {
        pub kind: models::ModelKind,
        pub wape: f64,
        pub mae: f64,
        pub bias: f64,
        pub folds: usize,
    }
    pub fn rolling_origin(
        _panel: &data::Panel,
        kind: models::ModelKind,
        _horizon: usize,
        folds: usize,
    ) -> BacktestResult {
        let wape = match kind {
            models::ModelKind::SeasonalNaive => 0.30,
            models::ModelKind::MovingAverage => 0.25,
            models::ModelKind::ExpSmoothing => 0.20,
        };
        BacktestResult {
            kind,
            wape,
            mae: wape * 10.0,
            bias: 0.01,
            folds,
        }
    }
}

pub mod scenario {
    use super::{data, models};
    pub struct Scenario {
        pub name: String,
        pub price_change_pct: f64,
        pub promo: bool,
    }
    pub struct ScenarioResult {
        pub name: String,
        pub total_units: f64,
        pub delta_pct: f64,
        pub daily: Vec<f64>,
    }
    pub fn default_scenarios() -> Vec<Scenario> {
        vec![
            Scenario {
                name: "price_minus_10".into(),
                price_change_pct: -10.0,
                promo: false,
            },
            Scenario {
                name: "promo".into(),
                price_change_pct: 0.0,
                promo: true,
            },
        ]
    }
    pub fn simulate(
        model: &models::FittedModel,
        panel: &data::Panel,
        horizon: usize,
        scenarios: &[Scenario],
    ) -> Vec<ScenarioResult> {
        let base: f64 = (0..panel.series.len())
            .map(|s| model.forecast(s, horizon).iter().sum::<f64>())
            .sum();
        scenarios
            .iter()
            .map(|s| {
                let lift = -s.price_change_pct / 100.0 + if s.promo { 0.2 } else { 0.0 };
                ScenarioResult {
                    name: s.name.clone(),
                    total_units: base * (1.0 + lift),
                    delta_pct: lift * 100.0,
                    daily: vec![base * (1.0 + lift) / horizon.max(1) as f64; horizon],
                }
            })
            .collect()
    }
}

pub mod chart {
    use super::{data, scenario};
    pub fn svg(
        panel: &data::Panel,
        baseline: &[f64],
        scenarios: &[scenario::ScenarioResult],
    ) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><!-- {} series, {} days, {} scenarios --></svg>",
            panel.series.len(),
            baseline.len(),
            scenarios.len()
        )
    }
}

pub mod knowledge {
    pub struct Passage {
        pub title: String,
        pub text: String,
        pub score: f32,
    }
    pub enum Provider {
        Local,
        External {
            url: String,
            api_key: Option<String>,
        },
    }
    pub enum KnowledgeOutcome {
        Retrieved(Vec<Passage>),
        Skipped(String),
    }
    pub async fn index_and_retrieve(
        provider: &Provider,
        docs: &[(String, String)],
        queries: &[String],
        k: usize,
    ) -> Result<KnowledgeOutcome, String> {
        match provider {
            Provider::Local => Ok(KnowledgeOutcome::Retrieved(
                docs.iter()
                    .take(k.min(queries.len().max(1)))
                    .map(|(t, x)| Passage {
                        title: t.clone(),
                        text: x.clone(),
                        score: 1.0,
                    })
                    .collect(),
            )),
            Provider::External { url, .. } if url.is_empty() => Ok(KnowledgeOutcome::Skipped(
                "external embedding provider is not configured".into(),
            )),
            Provider::External { url, api_key } => Ok(KnowledgeOutcome::Skipped(format!(
                "external embedding provider {url} unreachable (stub; key set: {})",
                api_key.is_some()
            ))),
        }
    }
    pub fn runbooks() -> Vec<(String, String)> {
        vec![
            (
                "Promotion".into(),
                "Promote only runs that beat the incumbent on WAPE.".into(),
            ),
            (
                "Rollback".into(),
                "Roll demo-production back to the champion with RollbackAlias.".into(),
            ),
        ]
    }
}

pub mod briefing {
    use super::{knowledge, scenario};
    pub fn render(
        champion: &str,
        wape: f64,
        mae: f64,
        bias: f64,
        scenarios: &[scenario::ScenarioResult],
        passages: &[knowledge::Passage],
    ) -> String {
        format!(
            "# Briefing\nChampion {champion}: WAPE {wape:.3}, MAE {mae:.2}, bias {bias:.3}. {} scenarios, {} passages.\n",
            scenarios.len(),
            passages.len()
        )
    }
}

//! Rolling-origin backtest: refit before each cut-off, forecast the next `horizon` days,
//! score against what actually sold.

use serde::{Deserialize, Serialize};

use super::data::Panel;
use super::models::{FittedModel, ModelKind};
use super::{Interrupt, WEEK};

/// A fold needs two weeks of history: what every model needs to see a weekly season.
pub const MIN_TRAIN_DAYS: usize = 2 * WEEK;

/// Metrics over every series, day and fold. `folds == 0` means nothing could be evaluated
/// (horizon 0, too little data): the metrics are then 0 and carry no information.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BacktestResult {
    pub kind: ModelKind,
    /// Σ|forecast − actual| / Σ|actual|.
    pub wape: f64,
    /// Mean |forecast − actual| per series-day.
    pub mae: f64,
    /// Σ(forecast − actual) / Σ|actual|: positive means over-forecasting.
    pub bias: f64,
    pub folds: usize,
}

/// Cut-offs (training lengths) of the folds that fit in `days`, oldest first: the last
/// fold ends on the last day, earlier ones step back by `horizon`, and folds with fewer
/// than `MIN_TRAIN_DAYS` of history are dropped.
pub fn cutoffs(days: usize, horizon: usize, folds: usize) -> Vec<usize> {
    if horizon == 0 {
        return Vec::new();
    }
    let mut cuts: Vec<usize> = (1..=folds)
        .map_while(|j| days.checked_sub(horizon.checked_mul(j)?))
        .filter(|c| *c >= MIN_TRAIN_DAYS)
        .collect();
    cuts.reverse();
    cuts
}

/// Error sums behind WAPE, MAE and bias.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorTotals {
    abs_error: f64,
    error: f64,
    abs_actual: f64,
    points: usize,
}

impl ErrorTotals {
    pub fn add(&mut self, forecast: &[f64], actual: &[f64]) {
        for (f, a) in forecast.iter().zip(actual) {
            self.abs_error += (f - a).abs();
            self.error += f - a;
            self.abs_actual += a.abs();
            self.points += 1;
        }
    }

    /// With no sales at all WAPE is undefined; the absolute error itself keeps models
    /// comparable on the same data (and stays 0 for a perfect forecast).
    pub fn wape(&self) -> f64 {
        self.ratio(self.abs_error)
    }

    pub fn bias(&self) -> f64 {
        self.ratio(self.error)
    }

    pub fn mae(&self) -> f64 {
        if self.points == 0 {
            0.0
        } else {
            self.abs_error / self.points as f64
        }
    }

    fn ratio(&self, numerator: f64) -> f64 {
        if self.abs_actual > 0.0 {
            numerator / self.abs_actual
        } else {
            numerator
        }
    }
}

pub fn rolling_origin(
    panel: &Panel,
    kind: ModelKind,
    horizon: usize,
    folds: usize,
    stop: &dyn Interrupt,
) -> BacktestResult {
    let cuts = cutoffs(panel.days, horizon, folds);
    let mut totals = ErrorTotals::default();
    for &cut in &cuts {
        let model = FittedModel::fit(kind, panel, cut, stop);
        for (i, s) in panel.series.iter().enumerate().take(model.series_count()) {
            let actual = s.sales.get(cut..cut + horizon).unwrap_or_default();
            totals.add(&model.forecast(i, horizon), actual);
        }
    }
    BacktestResult {
        kind,
        wape: totals.wape(),
        mae: totals.mae(),
        bias: totals.bias(),
        folds: cuts.len(),
    }
}

/// The result with the lowest WAPE among those evaluated on at least one fold; ties go to
/// the earlier result.
pub fn champion(results: &[BacktestResult]) -> Option<&BacktestResult> {
    results
        .iter()
        .filter(|r| r.folds > 0 && r.wape.is_finite())
        .fold(None, |best: Option<&BacktestResult>, r| match best {
            Some(b) if b.wape <= r.wape => Some(b),
            _ => Some(r),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::showcase::science::data::{generate, PanelSpec};
    use crate::domain::showcase::science::Never;
    use proptest::prelude::*;

    #[test]
    fn cutoffs_step_back_from_the_end() {
        assert_eq!(cutoffs(365, 28, 3), vec![281, 309, 337]);
        assert_eq!(cutoffs(60, 28, 3), vec![32]);
        assert_eq!(cutoffs(42, 28, 1), vec![14]);
        assert_eq!(cutoffs(41, 28, 1), Vec::<usize>::new());
        assert!(cutoffs(365, 0, 3).is_empty());
        assert!(cutoffs(365, 28, 0).is_empty());
        assert!(cutoffs(365, usize::MAX, 3).is_empty());
        assert!(cutoffs(usize::MAX, usize::MAX / 2, usize::MAX).len() <= 2);
    }

    #[test]
    fn metrics_follow_their_definitions() {
        let mut t = ErrorTotals::default();
        t.add(&[12.0, 8.0, 10.0], &[10.0, 10.0, 10.0]);
        assert!((t.wape() - 4.0 / 30.0).abs() < 1e-12);
        assert!((t.mae() - 4.0 / 3.0).abs() < 1e-12);
        assert!(t.bias().abs() < 1e-12);
        t.add(&[5.0], &[0.0]);
        assert!((t.bias() - 5.0 / 30.0).abs() < 1e-12);
        let mut zero = ErrorTotals::default();
        assert_eq!((zero.wape(), zero.mae(), zero.bias()), (0.0, 0.0, 0.0));
        zero.add(&[2.0], &[0.0]);
        assert_eq!(zero.wape(), 2.0);
    }

    /// Product requirement: on the default demo data the champion beats seasonal naive.
    #[test]
    fn best_model_beats_seasonal_naive_on_default_data() {
        let panel = generate(&PanelSpec::default());
        let results: Vec<_> = ModelKind::ALL
            .map(|k| rolling_origin(&panel, k, 28, 3, &Never))
            .into();
        for r in &results {
            eprintln!(
                "{:<15} wape {:.4} mae {:.3} bias {:+.4} folds {}",
                r.kind.as_str(),
                r.wape,
                r.mae,
                r.bias,
                r.folds
            );
            assert_eq!(r.folds, 3);
            assert!(r.wape > 0.05 && r.wape < 1.0, "{r:?}");
        }
        let best = champion(&results).unwrap();
        let naive = &results[0];
        assert_eq!(naive.kind, ModelKind::SeasonalNaive);
        assert_ne!(best.kind, ModelKind::SeasonalNaive);
        assert!(best.wape < naive.wape, "{best:?} vs {naive:?}");
    }

    #[test]
    fn perfect_weekly_data_scores_zero_for_seasonal_naive() {
        let mut panel = generate(&PanelSpec {
            seed: 5,
            series: 2,
            days: 70,
        });
        for s in &mut panel.series {
            s.sales = (0..70).map(|t| (10 + t % WEEK) as f64).collect();
        }
        let r = rolling_origin(&panel, ModelKind::SeasonalNaive, 14, 2, &Never);
        assert_eq!((r.wape, r.mae, r.bias, r.folds), (0.0, 0.0, 0.0, 2));
    }

    #[test]
    fn odd_parameters_give_zero_folds() {
        let panel = generate(&PanelSpec {
            seed: 1,
            series: 2,
            days: 30,
        });
        for (h, f) in [(0, 3), (28, 3), (7, 0)] {
            let r = rolling_origin(&panel, ModelKind::ExpSmoothing, h, f, &Never);
            assert_eq!(r.folds, 0, "{h} {f}");
        }
        let empty = generate(&PanelSpec {
            seed: 1,
            series: 0,
            days: 0,
        });
        assert_eq!(
            rolling_origin(&empty, ModelKind::MovingAverage, 7, 3, &Never).folds,
            0
        );
        assert!(champion(&[rolling_origin(
            &empty,
            ModelKind::MovingAverage,
            7,
            3,
            &Never
        )])
        .is_none());
    }

    #[test]
    fn champion_prefers_lowest_wape_then_order() {
        let r = |kind, wape, folds| BacktestResult {
            kind,
            wape,
            mae: 0.0,
            bias: 0.0,
            folds,
        };
        let rs = [
            r(ModelKind::SeasonalNaive, 0.3, 3),
            r(ModelKind::MovingAverage, 0.2, 3),
            r(ModelKind::ExpSmoothing, 0.2, 3),
        ];
        assert_eq!(champion(&rs).unwrap().kind, ModelKind::MovingAverage);
        let rs = [
            r(ModelKind::SeasonalNaive, 0.0, 0),
            r(ModelKind::ExpSmoothing, 0.4, 1),
        ];
        assert_eq!(champion(&rs).unwrap().kind, ModelKind::ExpSmoothing);
    }

    proptest! {
        #[test]
        fn metrics_are_finite_and_wape_non_negative(
            seed in any::<u64>(), series in 0usize..4, days in 0usize..120,
            horizon in 0usize..40, folds in 0usize..5, kind in 0usize..3,
        ) {
            let panel = generate(&PanelSpec { seed, series, days });
            let r = rolling_origin(&panel, ModelKind::ALL[kind], horizon, folds, &Never);
            prop_assert!(r.wape >= 0.0 && r.wape.is_finite());
            prop_assert!(r.mae >= 0.0 && r.mae.is_finite());
            prop_assert!(r.bias.is_finite());
            prop_assert!(r.folds <= folds);
            prop_assert_eq!(r.folds, cutoffs(days, horizon, folds).len());
        }
    }
}

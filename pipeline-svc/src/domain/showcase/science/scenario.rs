//! What-if planning: the champion's baseline forecast, reshaped by a price change and/or a
//! promotion, with effects estimated from the panel's own history.
//!
//! For every series an ordinary least-squares regression of `ln(1 + sales)` on weekday
//! intercepts, a linear trend, `ln(price / median price)` and a promotion flag separates
//! the price response (elasticity) from the non-price promotion lift. The medians across
//! series are the panel's effects: robust to the odd series with too little variation.

use serde::{Deserialize, Serialize};

use super::data::Panel;
use super::models::FittedModel;
use super::{Interrupt, WEEK};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    /// Price change applied over the whole horizon, in percent (−10 = 10 % cheaper).
    pub price_change_pct: f64,
    /// Whether the products are on promotion (display, feature) over the horizon.
    pub promo: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    /// Units over the horizon, all series.
    pub total_units: f64,
    /// Change of `total_units` against the unchanged baseline forecast, in percent.
    pub delta_pct: f64,
    /// Units per day over the horizon, all series.
    pub daily: Vec<f64>,
}

/// Baseline, a 10 % price cut, a 10 % price rise, and a promotion as the panel runs them
/// (a typical 15 % discount plus display).
pub fn default_scenarios() -> Vec<Scenario> {
    [
        ("baseline", 0.0, false),
        ("price_minus_10pct", -10.0, false),
        ("price_plus_10pct", 10.0, false),
        ("promotion", -15.0, true),
    ]
    .into_iter()
    .map(|(name, price_change_pct, promo)| Scenario {
        name: name.into(),
        price_change_pct,
        promo,
    })
    .collect()
}

/// Demand response estimated from a panel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    /// Own-price elasticity: % change in units per % change in price (≤ 0).
    pub elasticity: f64,
    /// Sales multiplier of a promotion beyond its price cut (≥ 1).
    pub promo_lift: f64,
    /// Series whose regression was solvable; 0 means no evidence, hence no effects.
    pub series_used: usize,
}

/// Economically sensible bounds: demand does not rise with price, promotions do not hurt,
/// and one noisy panel does not justify extreme responses.
const ELASTICITY_BOUNDS: (f64, f64) = (-5.0, 0.0);
const PROMO_LIFT_BOUNDS: (f64, f64) = (1.0, 5.0);
/// Price ratios a scenario may apply (−95 % … +900 %).
const PRICE_RATIO_BOUNDS: (f64, f64) = (0.05, 10.0);

pub fn estimate_effects(panel: &Panel) -> Effects {
    let mut elasticities = Vec::new();
    let mut lifts = Vec::new();
    for s in &panel.series {
        let n = s.sales.len().min(s.price.len()).min(s.promo.len());
        let mut prices: Vec<f64> = s.price[..n]
            .iter()
            .copied()
            .filter(|p| *p > 0.0 && p.is_finite())
            .collect();
        prices.sort_by(f64::total_cmp);
        let Some(&reference) = prices.get(prices.len() / 2) else {
            continue;
        };
        let mut ols = Ols::default();
        for t in 0..n {
            let (sales, price) = (s.sales[t], s.price[t]);
            if !(sales.is_finite() && sales >= 0.0 && price.is_finite() && price > 0.0) {
                continue;
            }
            let mut x = [0.0; REGRESSORS];
            x[t % WEEK] = 1.0;
            x[WEEK] = t as f64 / n as f64;
            x[PRICE] = (price / reference).ln();
            x[PROMO] = if s.promo[t] { 1.0 } else { 0.0 };
            ols.add(&x, sales.ln_1p());
        }
        let Some(beta) = ols.solve() else { continue };
        if let Some(e) = beta[PRICE] {
            elasticities.push(e);
        }
        if let Some(g) = beta[PROMO] {
            lifts.push(g.exp());
        }
    }
    Effects {
        elasticity: median(&mut elasticities)
            .unwrap_or(0.0)
            .clamp(ELASTICITY_BOUNDS.0, ELASTICITY_BOUNDS.1),
        promo_lift: median(&mut lifts)
            .unwrap_or(1.0)
            .clamp(PROMO_LIFT_BOUNDS.0, PROMO_LIFT_BOUNDS.1),
        series_used: elasticities.len().max(lifts.len()),
    }
}

/// Sales multiplier of `scenario` under `effects`.
pub fn multiplier(effects: &Effects, scenario: &Scenario) -> f64 {
    let ratio = 1.0 + scenario.price_change_pct / 100.0;
    let ratio = if ratio.is_finite() {
        ratio.clamp(PRICE_RATIO_BOUNDS.0, PRICE_RATIO_BOUNDS.1)
    } else {
        1.0
    };
    let lift = if scenario.promo {
        effects.promo_lift
    } else {
        1.0
    };
    ratio.powf(effects.elasticity) * lift
}

/// Applies each scenario to the model's baseline forecast over `horizon` days, with the
/// effects estimated from `panel` (the data the model was trained on).
pub fn simulate(
    model: &FittedModel,
    panel: &Panel,
    horizon: usize,
    scenarios: &[Scenario],
    stop: &dyn Interrupt,
) -> Vec<ScenarioResult> {
    let effects = estimate_effects(panel);
    let mut baseline = vec![0.0; horizon];
    for i in (0..model.series_count()).take_while(|_| !stop.interrupted()) {
        for (b, f) in baseline.iter_mut().zip(model.forecast(i, horizon)) {
            *b += f;
        }
    }
    let baseline_total: f64 = baseline.iter().sum();
    scenarios
        .iter()
        .map(|sc| {
            let m = multiplier(&effects, sc);
            let daily: Vec<f64> = baseline.iter().map(|b| b * m).collect();
            let total_units = daily.iter().sum();
            ScenarioResult {
                name: sc.name.clone(),
                total_units,
                delta_pct: if baseline_total > 0.0 {
                    (total_units / baseline_total - 1.0) * 100.0
                } else {
                    0.0
                },
                daily,
            }
        })
        .collect()
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Weekday intercepts, trend, log price, promotion flag.
const REGRESSORS: usize = WEEK + 3;
const PRICE: usize = WEEK + 1;
const PROMO: usize = WEEK + 2;

/// Least squares through the normal equations; fine for ten well-scaled regressors.
#[derive(Default)]
struct Ols {
    xtx: [[f64; REGRESSORS]; REGRESSORS],
    xty: [f64; REGRESSORS],
}

impl Ols {
    fn add(&mut self, x: &[f64; REGRESSORS], y: f64) {
        for i in 0..REGRESSORS {
            for j in 0..REGRESSORS {
                self.xtx[i][j] += x[i] * x[j];
            }
            self.xty[i] += x[i] * y;
        }
    }

    /// Coefficients, `None` for a regressor the data cannot identify (no price variation,
    /// no promotion days); `None` overall when nothing is identifiable.
    fn solve(&self) -> Option<[Option<f64>; REGRESSORS]> {
        let mut a = self.xtx;
        let mut b = self.xty;
        let scale = (0..REGRESSORS).map(|i| a[i][i]).fold(0.0, f64::max);
        if !scale.is_finite() || scale <= 0.0 {
            return None;
        }
        let tolerance = scale * 1e-10;
        let mut pivot_of: [Option<usize>; REGRESSORS] = [None; REGRESSORS];
        let mut row = 0;
        // Gauss-Jordan elimination with partial pivoting; columns without a usable pivot
        // are left unidentified and contribute nothing.
        for col in 0..REGRESSORS {
            let Some(p) =
                (row..REGRESSORS).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            else {
                break;
            };
            if a[p][col].abs() <= tolerance {
                continue;
            }
            a.swap(row, p);
            b.swap(row, p);
            let (pivot, pivot_b) = (a[row], b[row]);
            for (r, (a_r, b_r)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
                if r != row && a_r[col] != 0.0 {
                    let f = a_r[col] / pivot[col];
                    for (x, p) in a_r[col..].iter_mut().zip(&pivot[col..]) {
                        *x -= f * p;
                    }
                    *b_r -= f * pivot_b;
                }
            }
            pivot_of[col] = Some(row);
            row += 1;
        }
        let coefficients = pivot_of.map(|r| r.map(|r| b[r] / a[r][r]).filter(|v| v.is_finite()));
        coefficients
            .iter()
            .any(Option::is_some)
            .then_some(coefficients)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::showcase::science::data::{
        generate, PanelSpec, ELASTICITY_RANGE, PROMO_LIFT_RANGE,
    };
    use crate::domain::showcase::science::models::ModelKind;
    use crate::domain::showcase::science::Never;

    #[test]
    fn effects_recover_the_generator_truth() {
        let panel = generate(&PanelSpec::default());
        let e = estimate_effects(&panel);
        assert_eq!(e.series_used, 24);
        // Elasticities are drawn from −2…−1 and lifts from 1.2…1.6 per series; the median
        // estimate must land inside, near the middle.
        assert!(
            (ELASTICITY_RANGE.0..ELASTICITY_RANGE.1).contains(&e.elasticity),
            "{e:?}"
        );
        assert!(
            (PROMO_LIFT_RANGE.0..PROMO_LIFT_RANGE.1).contains(&e.promo_lift),
            "{e:?}"
        );
    }

    #[test]
    fn default_scenarios_move_demand_the_right_way() {
        let panel = generate(&PanelSpec::default());
        let model = FittedModel::fit(ModelKind::MovingAverage, &panel, panel.days, &Never);
        let res = simulate(&model, &panel, 28, &default_scenarios(), &Never);
        let names: Vec<_> = res.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "baseline",
                "price_minus_10pct",
                "price_plus_10pct",
                "promotion"
            ]
        );
        let by = |n: &str| res.iter().find(|r| r.name == n).unwrap();
        let base = by("baseline");
        assert_eq!(base.delta_pct, 0.0);
        assert_eq!(base.daily.len(), 28);
        let expected: f64 = (0..24).flat_map(|i| model.forecast(i, 28)).sum();
        assert!((base.total_units - expected).abs() < 1e-6 * expected);
        // Elastic demand (−2…−1): a 10 % cut sells 10-25 % more, a rise 9-18 % less.
        assert!(
            (10.0..25.0).contains(&by("price_minus_10pct").delta_pct),
            "{res:?}"
        );
        assert!(
            (-18.0..-9.0).contains(&by("price_plus_10pct").delta_pct),
            "{res:?}"
        );
        assert!(by("promotion").delta_pct > by("price_minus_10pct").delta_pct);
        for r in &res {
            assert!((r.daily.iter().sum::<f64>() - r.total_units).abs() < 1e-6);
        }
    }

    #[test]
    fn no_evidence_means_no_effect() {
        let mut panel = generate(&PanelSpec {
            seed: 9,
            series: 2,
            days: 60,
        });
        for s in &mut panel.series {
            s.price = vec![3.0; 60];
            s.promo = vec![false; 60];
        }
        let e = estimate_effects(&panel);
        assert_eq!((e.elasticity, e.promo_lift), (0.0, 1.0));
        let empty = Panel {
            series: vec![],
            days: 0,
        };
        assert_eq!(estimate_effects(&empty).series_used, 0);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let panel = generate(&PanelSpec {
            seed: 2,
            series: 3,
            days: 30,
        });
        let model = FittedModel::fit(ModelKind::ExpSmoothing, &panel, 30, &Never);
        let odd = [
            Scenario {
                name: "free".into(),
                price_change_pct: -100.0,
                promo: false,
            },
            Scenario {
                name: "nan".into(),
                price_change_pct: f64::NAN,
                promo: true,
            },
            Scenario {
                name: "inf".into(),
                price_change_pct: f64::INFINITY,
                promo: false,
            },
        ];
        let res = simulate(&model, &panel, 0, &odd, &Never);
        assert!(res
            .iter()
            .all(|r| r.daily.is_empty() && r.total_units == 0.0 && r.delta_pct == 0.0));
        let res = simulate(&model, &panel, 10, &odd, &Never);
        assert!(res
            .iter()
            .all(|r| r.total_units.is_finite() && r.delta_pct.is_finite()));
        assert!(simulate(&model, &panel, 10, &[], &Never).is_empty());
        // A model with more series than the panel is still simulated from its own state.
        let short = Panel {
            series: vec![],
            days: 0,
        };
        assert_eq!(
            simulate(&model, &short, 5, &default_scenarios(), &Never)[0]
                .daily
                .len(),
            5
        );
    }

    #[test]
    fn ols_recovers_exact_coefficients() {
        let mut ols = Ols::default();
        for t in 0..70 {
            let mut x = [0.0; REGRESSORS];
            x[t % WEEK] = 1.0;
            x[WEEK] = t as f64 / 70.0;
            x[PRICE] = ((t * 7919) % 13) as f64 / 50.0;
            x[PROMO] = if t % 9 == 0 { 1.0 } else { 0.0 };
            let y = 2.0 + 0.1 * (t % WEEK) as f64 + 0.5 * x[WEEK] - 1.5 * x[PRICE] + 0.3 * x[PROMO];
            ols.add(&x, y);
        }
        let beta = ols.solve().unwrap();
        assert!((beta[PRICE].unwrap() + 1.5).abs() < 1e-9);
        assert!((beta[PROMO].unwrap() - 0.3).abs() < 1e-9);
        assert!((beta[WEEK].unwrap() - 0.5).abs() < 1e-9);
        assert!(Ols::default().solve().is_none());
    }
}

//! Deterministic synthetic daily sales panel.
//!
//! Each series is a product whose expected demand is
//! `base × growth(t) × weekday(t) × annual(t) × (price / list price)^elasticity × promo uplift`,
//! observed through multiplicative log-normal noise and rounded to whole units. Shelf
//! prices move from time to time and promotions cut the price for a few days, so the
//! panel carries the signal that `scenario` needs to estimate elasticity and uplift.

use serde::{Deserialize, Serialize};

use super::WEEK;

/// Largest panel `generate` builds; bigger requests are clamped so a bad parameter can
/// never exhaust memory. Callers should reject such requests before they get here.
pub const MAX_SERIES: usize = 10_000;
pub const MAX_DAYS: usize = 3_660;
/// Shortest panel `validate` accepts: two weeks to fit on plus one week to test on.
pub const MIN_DAYS: usize = 3 * WEEK;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanelSpec {
    pub seed: u64,
    pub series: usize,
    pub days: usize,
}

impl Default for PanelSpec {
    /// The showcase defaults: a year of 24 products.
    fn default() -> Self {
        PanelSpec {
            seed: 42,
            series: 24,
            days: 365,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub id: String,
    pub sales: Vec<f64>,
    pub price: Vec<f64>,
    pub promo: Vec<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Panel {
    pub series: Vec<Series>,
    pub days: usize,
}

impl Panel {
    /// Units sold per day summed over all series (length `days`).
    pub fn aggregate_sales(&self) -> Vec<f64> {
        let mut total = vec![0.0; self.days];
        for s in &self.series {
            for (t, v) in total.iter_mut().zip(&s.sales) {
                *t += v;
            }
        }
        total
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PanelSummary {
    pub series: usize,
    pub days: usize,
    pub total_units: f64,
    pub promo_days: usize,
}

/// SplitMix64: tiny, fast and good enough for synthetic data; its output is fixed by the
/// algorithm, so a seed reproduces the same panel on every platform and Rust version.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal by Box-Muller (one value per call; simplicity beats speed here).
    pub(crate) fn normal(&mut self) -> f64 {
        // 1 - unit() is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Per-series seed: series `i` is the same product whatever the panel's size.
fn series_seed(seed: u64, index: usize) -> u64 {
    let mut mix = Rng::new(seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    mix.next_u64()
}

/// Monday-to-Sunday shape of retail demand (busy Friday and Saturday).
const WEEKDAY_SHAPE: [f64; WEEK] = [0.85, 0.88, 0.92, 0.97, 1.15, 1.35, 0.88];
/// A promotion starts on a given non-promotion day with this probability (about one a
/// month), lasts `PROMO_DAYS` and cuts the price by `PROMO_DISCOUNT`.
const PROMO_START: f64 = 1.0 / 30.0;
const PROMO_DAYS: (usize, usize) = (3, 7);
const PROMO_DISCOUNT: (f64, f64) = (0.10, 0.30);
/// Each week the shelf price is re-set with this probability, within ±`PRICE_MOVE`.
const PRICE_RESET: f64 = 0.2;
const PRICE_MOVE: f64 = 0.10;
/// Own-price elasticity of each product is drawn from this range.
pub const ELASTICITY_RANGE: (f64, f64) = (-2.0, -1.0);
/// Non-price promotion lift (display, feature) is drawn from this multiplier range.
pub const PROMO_LIFT_RANGE: (f64, f64) = (1.2, 1.6);

/// Generates the panel described by `spec` (sizes above the `MAX_*` limits are clamped).
pub fn generate(spec: &PanelSpec) -> Panel {
    let days = spec.days.min(MAX_DAYS);
    let series = (0..spec.series.min(MAX_SERIES))
        .map(|i| generate_series(&mut Rng::new(series_seed(spec.seed, i)), i, days))
        .collect();
    Panel { series, days }
}

fn generate_series(rng: &mut Rng, index: usize, days: usize) -> Series {
    let base = (40f64.ln() + 0.7 * rng.normal()).exp();
    let yearly_growth = rng.uniform(-0.15, 0.35);
    let annual_amplitude = rng.uniform(0.0, 0.15);
    let annual_phase = rng.uniform(0.0, std::f64::consts::TAU);
    let elasticity = rng.uniform(ELASTICITY_RANGE.0, ELASTICITY_RANGE.1);
    let promo_lift = rng.uniform(PROMO_LIFT_RANGE.0, PROMO_LIFT_RANGE.1);
    let noise_sd = rng.uniform(0.15, 0.30);
    let list_price = (rng.uniform(2.0, 15.0) * 100.0).round() / 100.0;

    let mut weekday = [0.0; WEEK];
    for (w, shape) in weekday.iter_mut().zip(WEEKDAY_SHAPE) {
        *w = shape * (1.0 + 0.05 * rng.normal()).max(0.5);
    }
    let mean_weekday = weekday.iter().sum::<f64>() / WEEK as f64;
    weekday.iter_mut().for_each(|w| *w /= mean_weekday);

    let mut sales = Vec::with_capacity(days);
    let mut price = Vec::with_capacity(days);
    let mut promo = Vec::with_capacity(days);
    let mut shelf_price = list_price;
    let mut promo_left = 0usize;
    let mut discount = 0.0;
    for t in 0..days {
        if t % WEEK == 0 && t > 0 && rng.chance(PRICE_RESET) {
            shelf_price = round_cents(list_price * rng.uniform(1.0 - PRICE_MOVE, 1.0 + PRICE_MOVE));
        }
        if promo_left == 0 && rng.chance(PROMO_START) {
            promo_left =
                PROMO_DAYS.0 + (rng.next_u64() % (PROMO_DAYS.1 - PROMO_DAYS.0 + 1) as u64) as usize;
            discount = rng.uniform(PROMO_DISCOUNT.0, PROMO_DISCOUNT.1);
        }
        let on_promo = promo_left > 0;
        promo_left = promo_left.saturating_sub(1);
        let p = if on_promo {
            round_cents(shelf_price * (1.0 - discount))
        } else {
            shelf_price
        };

        let years = t as f64 / 365.0;
        let expected = base
            * (1.0 + yearly_growth).powf(years)
            * weekday[t % WEEK]
            * (1.0 + annual_amplitude * (std::f64::consts::TAU * years + annual_phase).sin())
            * (p / list_price).powf(elasticity)
            * if on_promo { promo_lift } else { 1.0 };
        // Mean-one log-normal noise, then whole units: demand is counted, not measured.
        let noisy = expected * (noise_sd * rng.normal() - 0.5 * noise_sd * noise_sd).exp();
        sales.push(noisy.round().max(0.0));
        price.push(p);
        promo.push(on_promo);
    }
    Series {
        id: format!("sku-{:04}", index + 1),
        sales,
        price,
        promo,
    }
}

fn round_cents(p: f64) -> f64 {
    ((p * 100.0).round() / 100.0).max(0.01)
}

/// Checks that `panel` is usable by the demo: at least one series, at least `MIN_DAYS`
/// days, consistent lengths, unique ids, finite non-negative sales and positive prices.
pub fn validate(panel: &Panel) -> Result<PanelSummary, String> {
    if panel.series.is_empty() {
        return Err("panel has no series".into());
    }
    if panel.days < MIN_DAYS {
        return Err(format!(
            "panel has {} days; at least {MIN_DAYS} are needed to fit and backtest",
            panel.days
        ));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut total_units = 0.0;
    let mut promo_days = 0;
    for s in &panel.series {
        if s.id.is_empty() {
            return Err("a series has an empty id".into());
        }
        if !ids.insert(s.id.as_str()) {
            return Err(format!("series id {} appears twice", s.id));
        }
        for (what, len) in [
            ("sales", s.sales.len()),
            ("price", s.price.len()),
            ("promo", s.promo.len()),
        ] {
            if len != panel.days {
                return Err(format!(
                    "series {}: {what} has {len} values, expected {}",
                    s.id, panel.days
                ));
            }
        }
        if let Some(t) = s.sales.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!(
                "series {}: sales on day {t} is {}",
                s.id, s.sales[t]
            ));
        }
        if let Some(t) = s.price.iter().position(|v| !v.is_finite() || *v <= 0.0) {
            return Err(format!(
                "series {}: price on day {t} is {}",
                s.id, s.price[t]
            ));
        }
        total_units += s.sales.iter().sum::<f64>();
        promo_days += s.promo.iter().filter(|p| **p).count();
    }
    Ok(PanelSummary {
        series: panel.series.len(),
        days: panel.days,
        total_units,
        promo_days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    #[test]
    fn default_panel_is_valid_and_realistic() {
        let panel = generate(&PanelSpec::default());
        let summary = validate(&panel).unwrap();
        assert_eq!((summary.series, summary.days), (24, 365));
        // About one promotion a month of ~5 days: 10-20 % of days.
        let share = summary.promo_days as f64 / (24.0 * 365.0);
        assert!((0.08..0.25).contains(&share), "promo share {share}");
        assert!(summary.total_units > 24.0 * 365.0 * 10.0);
        assert!(panel
            .series
            .iter()
            .all(|s| s.sales.iter().all(|v| v.fract() == 0.0)));
    }

    #[test]
    fn weekly_seasonality_is_visible_in_the_aggregate() {
        let total = generate(&PanelSpec::default()).aggregate_sales();
        let by_day = |d: usize| {
            mean(
                &total
                    .iter()
                    .skip(d)
                    .step_by(WEEK)
                    .copied()
                    .collect::<Vec<_>>(),
            )
        };
        // Saturday (5) is the busiest day, Monday (0) among the quietest.
        assert!(
            by_day(5) > 1.3 * by_day(0),
            "sat {} mon {}",
            by_day(5),
            by_day(0)
        );
    }

    #[test]
    fn promotions_lift_sales_and_cut_prices() {
        let panel = generate(&PanelSpec::default());
        let mut lifted = 0;
        for s in &panel.series {
            let pick = |want: bool, v: &[f64]| {
                v.iter()
                    .zip(&s.promo)
                    .filter(|(_, p)| **p == want)
                    .map(|(x, _)| *x)
                    .collect::<Vec<_>>()
            };
            assert!(
                mean(&pick(true, &s.price)) < mean(&pick(false, &s.price)),
                "{}",
                s.id
            );
            if mean(&pick(true, &s.sales)) > mean(&pick(false, &s.sales)) {
                lifted += 1;
            }
        }
        assert!(
            lifted >= 22,
            "only {lifted} of 24 series sell more on promotion"
        );
    }

    #[test]
    fn series_do_not_depend_on_panel_size() {
        let small = generate(&PanelSpec {
            seed: 7,
            series: 2,
            days: 60,
        });
        let big = generate(&PanelSpec {
            seed: 7,
            series: 5,
            days: 60,
        });
        assert_eq!(small.series[..], big.series[..2]);
        let other = generate(&PanelSpec {
            seed: 8,
            series: 2,
            days: 60,
        });
        assert_ne!(small, other);
    }

    #[test]
    fn odd_specs_do_not_panic_and_fail_validation() {
        for (series, days) in [(0, 365), (3, 0), (3, 1), (3, MIN_DAYS - 1)] {
            let panel = generate(&PanelSpec {
                seed: 1,
                series,
                days,
            });
            assert_eq!(panel.series.len(), series);
            assert!(validate(&panel).is_err(), "{series}x{days}");
        }
        let huge = generate(&PanelSpec {
            seed: 1,
            series: 1,
            days: usize::MAX,
        });
        assert_eq!(huge.days, MAX_DAYS);
        assert!(validate(&generate(&PanelSpec {
            seed: 1,
            series: 1,
            days: MIN_DAYS
        }))
        .is_ok());
    }

    #[test]
    fn validate_names_the_problem() {
        let good = generate(&PanelSpec {
            seed: 3,
            series: 2,
            days: 30,
        });
        let mut p = good.clone();
        p.series[1].sales[4] = f64::NAN;
        assert!(validate(&p).unwrap_err().contains("day 4"));
        let mut p = good.clone();
        p.series[0].sales[0] = -1.0;
        assert!(validate(&p).unwrap_err().contains("sku-0001"));
        let mut p = good.clone();
        p.series[0].price.pop();
        assert!(validate(&p).unwrap_err().contains("price has 29"));
        let mut p = good.clone();
        p.series[0].price[2] = 0.0;
        assert!(validate(&p).is_err());
        let mut p = good.clone();
        p.series[1].id = p.series[0].id.clone();
        assert!(validate(&p).unwrap_err().contains("twice"));
        let mut p = good;
        p.series[1].id.clear();
        assert!(validate(&p).is_err());
    }

    proptest! {
        #[test]
        fn generate_is_deterministic(seed in any::<u64>(), series in 0usize..6, days in 0usize..120) {
            let spec = PanelSpec { seed, series, days };
            let a = generate(&spec);
            prop_assert_eq!(&a, &generate(&spec));
            prop_assert_eq!(a.series.len(), series);
            for s in &a.series {
                prop_assert_eq!(s.sales.len(), days);
                prop_assert!(s.sales.iter().all(|v| v.is_finite() && *v >= 0.0));
                prop_assert!(s.price.iter().all(|v| v.is_finite() && *v > 0.0));
            }
            prop_assert_eq!(validate(&a).is_ok(), series > 0 && days >= MIN_DAYS);
        }
    }
}

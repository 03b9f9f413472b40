//! What a demo is asked to do: its scenario (which decides its steps) and the size of its
//! synthetic panel and forecast.

use serde::{Deserialize, Serialize};

use super::{
    science::{
        backtest,
        data::{self, PanelSpec},
    },
    FOLDS,
};
use crate::{
    domain::engine::workflow::StepSpec,
    error::{Result, Validator},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    ShowcaseMinimal,
    ShowcaseRich,
}

impl Scenario {
    pub const ALL: [Scenario; 2] = [Scenario::ShowcaseMinimal, Scenario::ShowcaseRich];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShowcaseMinimal => "showcase_minimal",
            Self::ShowcaseRich => "showcase_rich",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The operation kind this scenario runs as.
    pub fn kind(self) -> String {
        format!("demo.{}", self.as_str())
    }

    pub fn steps(self) -> &'static [StepSpec] {
        match self {
            Self::ShowcaseMinimal => &MINIMAL_STEPS,
            Self::ShowcaseRich => &RICH_STEPS,
        }
    }
}

const fn step(name: &'static str, phase: &'static str) -> StepSpec {
    StepSpec { name, phase }
}

pub const RICH_STEPS: [StepSpec; 9] = [
    step("generate_data", "data"),
    step("train_and_backtest", "training"),
    step("register_candidates", "registry"),
    step("safer_promote_flow", "decision"),
    step("scenario_simulate_and_save", "planning"),
    step("index_and_retrieve", "knowledge"),
    step("briefing", "agents"),
    step("ops_checks", "ops"),
    step("cleanup", "cleanup"),
];

pub const MINIMAL_STEPS: [StepSpec; 4] =
    [RICH_STEPS[0], RICH_STEPS[1], RICH_STEPS[2], RICH_STEPS[8]];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoParams {
    pub scenario: Scenario,
    pub seed: u64,
    pub series: usize,
    pub days: usize,
    pub horizon: usize,
    /// The registry alias the demo promotes to and restores; demos of one alias run one
    /// at a time (its concurrency key). Stored parameters from before it existed mean
    /// the default.
    #[serde(default = "default_alias")]
    pub alias: String,
}

/// The alias of a demo that names none.
pub const DEFAULT_ALIAS: &str = "demo-production";

fn default_alias() -> String {
    DEFAULT_ALIAS.to_string()
}

/// The registry's rule for alias names, checked before the demo starts rather than at
/// its first promotion.
fn alias_ok(alias: &str) -> bool {
    let b = alias.as_bytes();
    (1..=MAX_ALIAS_CHARS).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

const MAX_ALIAS_CHARS: usize = 63;

impl Default for DemoParams {
    /// The science's showcase panel and a four-week horizon.
    fn default() -> Self {
        let panel = PanelSpec::default();
        Self {
            scenario: Scenario::ShowcaseRich,
            seed: panel.seed,
            series: panel.series,
            days: panel.days,
            horizon: 28,
            alias: default_alias(),
        }
    }
}

impl DemoParams {
    /// Bounds what one request may make the workers compute.
    pub const MAX_SERIES: usize = 500;
    pub const MAX_HORIZON: usize = 180;

    /// Field names are the wire names of `StartDemoRequest`.
    pub fn validate(&self) -> Result<()> {
        let mut v = Validator::default();
        v.check(
            (1..=Self::MAX_SERIES).contains(&self.series),
            "series_count",
            || format!("must be 1-{}, got {}", Self::MAX_SERIES, self.series),
        );
        v.check(alias_ok(&self.alias), "alias", || {
            format!(
                "must be 1-{MAX_ALIAS_CHARS} characters of [a-z0-9_.-] starting with a letter or digit"
            )
        });
        v.check(self.days <= data::MAX_DAYS, "days", || {
            format!("must be at most {}, got {}", data::MAX_DAYS, self.days)
        });
        v.check(
            (1..=Self::MAX_HORIZON).contains(&self.horizon),
            "horizon",
            || format!("must be 1-{}, got {}", Self::MAX_HORIZON, self.horizon),
        );
        // The backtest's own rule: every fold keeps enough days to train on.
        v.check(
            self.days > data::MAX_DAYS
                || backtest::cutoffs(self.days, self.horizon, FOLDS).len() == FOLDS,
            "days",
            || {
                format!(
                    "{} days of history cannot backtest a {}-day horizon over {FOLDS} folds \
                     (each needs {} days to train on); add days or shorten the horizon",
                    self.days,
                    self.horizon,
                    backtest::MIN_TRAIN_DAYS
                )
            },
        );
        Ok(v.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minimal_is_data_training_registry_cleanup() {
        let phases: Vec<_> = Scenario::ShowcaseMinimal
            .steps()
            .iter()
            .map(|s| s.phase)
            .collect();
        assert_eq!(phases, ["data", "training", "registry", "cleanup"]);
        assert_eq!(Scenario::ShowcaseRich.steps().len(), 9);
        assert_eq!(RICH_STEPS[3].name, "safer_promote_flow");
        assert_eq!(RICH_STEPS[4].name, "scenario_simulate_and_save");
    }

    proptest! {
        #[test]
        fn params_validation_never_panics(series in 0usize..1000, days in 0usize..5000, horizon in 0usize..400) {
            let p = DemoParams { series, days, horizon, ..DemoParams::default() };
            if p.validate().is_ok() {
                prop_assert_eq!(backtest::cutoffs(days, horizon, FOLDS).len(), FOLDS);
                prop_assert!(series >= 1 && horizon >= 1);
            }
        }
    }

    #[test]
    fn default_params_are_valid() {
        DemoParams::default().validate().unwrap();
        assert_eq!(
            Scenario::parse("showcase_rich"),
            Some(Scenario::ShowcaseRich)
        );
        assert_eq!(Scenario::parse("nope"), None);
    }

    #[test]
    fn alias_defaults_when_absent_and_is_checked() {
        let mut stored = serde_json::to_value(DemoParams::default()).unwrap();
        stored.as_object_mut().unwrap().remove("alias");
        let p: DemoParams = serde_json::from_value(stored).unwrap();
        assert_eq!(p.alias, DEFAULT_ALIAS);
        for bad in ["", "Demo", "-x", "a b", &"a".repeat(64)] {
            let p = DemoParams {
                alias: bad.to_string(),
                ..DemoParams::default()
            };
            assert!(p.validate().is_err(), "{bad:?} accepted");
        }
        let p = DemoParams {
            alias: "team-a.prod_2".into(),
            ..DemoParams::default()
        };
        p.validate().unwrap();
    }
}

//! Aliases: named pointers to runs, changed only by compare-and-swap writes that each
//! append a history entry.

use uuid::Uuid;

use super::Micros;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub alias: String,
    pub run_id: Uuid,
    pub description: String,
    pub revision: i64,
    pub update_time: Micros,
    pub updated_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasAction {
    Set,
    Rollback,
    Promote,
    Delete,
}

impl AliasAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Set => "SET",
            Self::Rollback => "ROLLBACK",
            Self::Promote => "PROMOTE",
            Self::Delete => "DELETE",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Set, Self::Rollback, Self::Promote, Self::Delete]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AliasHistoryEntry {
    pub alias: String,
    pub revision: i64,
    /// None for a deletion.
    pub run_id: Option<Uuid>,
    pub previous_run_id: Option<Uuid>,
    pub action: AliasAction,
    pub reason: String,
    pub actor: String,
    pub description: String,
    pub time: Micros,
}

/// One alias change, applied by the store atomically with its history entry.
#[derive(Debug, Clone)]
pub struct AliasWrite {
    pub alias: String,
    /// None deletes the alias.
    pub run_id: Option<Uuid>,
    pub description: String,
    /// `Some(0)`: must not exist; `Some(n)`: must be at revision n; None: unconditional.
    pub expected_revision: Option<i64>,
    pub action: AliasAction,
    pub reason: String,
    pub actor: String,
    pub time: Micros,
}

impl AliasWrite {
    /// The history entry this write becomes at `revision`.
    pub fn entry(&self, revision: i64, previous_run_id: Option<Uuid>) -> AliasHistoryEntry {
        AliasHistoryEntry {
            alias: self.alias.clone(),
            revision,
            run_id: self.run_id,
            previous_run_id,
            action: self.action,
            reason: self.reason.clone(),
            actor: self.actor.clone(),
            description: self.description.clone(),
            time: self.time,
        }
    }

    /// The compare-and-swap rule, given the alias's current revision (None: absent).
    pub fn check_revision(&self, current: Option<i64>) -> Result<()> {
        match (self.expected_revision, current) {
            (None, _) => Ok(()),
            (Some(0), None) => Ok(()),
            (Some(0), Some(cur)) => Err(Error::Aborted(format!(
                "alias {:?} already exists at revision {cur}; expected_revision 0 means it must not exist",
                self.alias
            ))),
            (Some(exp), None) => Err(Error::Aborted(format!(
                "alias {:?} does not exist; expected revision {exp}",
                self.alias
            ))),
            (Some(exp), Some(cur)) if exp != cur => Err(Error::Aborted(format!(
                "alias {:?} is at revision {cur}, not the expected {exp}",
                self.alias
            ))),
            _ => Ok(()),
        }
    }
}

/// Outcome of comparing a challenger with the incumbent on one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionDecision {
    pub challenger_value: Option<f64>,
    pub incumbent_value: Option<f64>,
    /// Whether the challenger may replace the incumbent without `force`.
    pub allowed: bool,
    pub explanation: String,
}

/// A worse challenger is refused; an equal one is not worse. Without an incumbent any
/// challenger that has the metric wins; an incumbent without the metric cannot be
/// compared, so only `force` replaces it.
pub fn decide_promotion(
    metric: &str,
    higher_is_better: bool,
    challenger: (Uuid, Option<f64>),
    incumbent: Option<(Uuid, Option<f64>)>,
) -> PromotionDecision {
    let (cid, cval) = challenger;
    let incumbent_value = incumbent.and_then(|(_, v)| v);
    let (allowed, explanation) = match (cval, incumbent) {
        (None, _) => (false, format!("challenger run {cid} has no metric {metric:?}")),
        (Some(c), None) => (true, format!("no incumbent; challenger {metric}={c}")),
        (Some(_), Some((iid, _))) if iid == cid => (true, format!("run {cid} already holds the alias")),
        (Some(c), Some((iid, None))) => (
            false,
            format!("incumbent run {iid} has no metric {metric:?} to compare with challenger {metric}={c}"),
        ),
        (Some(c), Some((iid, Some(i)))) => {
            let worse = if higher_is_better { c < i } else { c > i };
            let dir = if higher_is_better { "higher" } else { "lower" };
            if worse {
                (false, format!(
                    "challenger run {cid} has {metric}={c}, worse than incumbent run {iid} with {metric}={i} ({dir} is better)"
                ))
            } else {
                (true, format!(
                    "challenger run {cid} has {metric}={c}, not worse than incumbent run {iid} with {metric}={i} ({dir} is better)"
                ))
            }
        }
    };
    PromotionDecision {
        challenger_value: cval,
        incumbent_value,
        allowed,
        explanation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn worse_is_refused_better_or_equal_allowed(c in -1e6f64..1e6, i in -1e6f64..1e6, hib: bool) {
            let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
            let d = decide_promotion("wape", hib, (a, Some(c)), Some((b, Some(i))));
            let worse = if hib { c < i } else { c > i };
            prop_assert_eq!(d.allowed, !worse);
            if worse {
                // The refusal names both values.
                prop_assert!(d.explanation.contains(&c.to_string()) && d.explanation.contains(&i.to_string()));
            }
        }

        #[test]
        fn cas_rule(expected in proptest::option::of(0i64..4), current in proptest::option::of(1i64..4)) {
            let w = AliasWrite {
                alias: "a".into(), run_id: None, description: String::new(), expected_revision: expected,
                action: AliasAction::Set, reason: String::new(), actor: String::new(), time: 0,
            };
            let ok = match expected { None => true, Some(0) => current.is_none(), Some(e) => current == Some(e) };
            prop_assert_eq!(w.check_revision(current).is_ok(), ok);
        }
    }

    #[test]
    fn missing_metrics_refuse() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(!decide_promotion("m", true, (a, None), None).allowed);
        assert!(!decide_promotion("m", true, (a, Some(1.0)), Some((b, None))).allowed);
        assert!(decide_promotion("m", true, (a, Some(1.0)), None).allowed);
    }
}

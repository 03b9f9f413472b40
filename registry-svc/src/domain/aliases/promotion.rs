//! Guarded promotion: a challenger run replaces the alias's run only when it is not
//! worse on a metric (or when forced), decided and written as one compare-and-swap.

use uuid::Uuid;

use super::{Alias, AliasAction, AliasWrite};
use crate::{
    domain::{now_micros, registry::Registry, runs::ModelRun, validate, WRITE_RETRIES},
    error::{Error, Result},
};

#[derive(Debug, Clone)]
pub struct PromoteRun {
    /// The alias's namespace, which the run must be in.
    pub namespace: String,
    pub alias: String,
    pub run_id: Uuid,
    pub metric: String,
    pub higher_is_better: bool,
    pub force: bool,
    pub dry_run: bool,
    pub reason: String,
    pub expected_revision: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Promotion {
    pub alias: Alias,
    pub promoted: bool,
    pub previous_run_id: Option<Uuid>,
    pub decision: PromotionDecision,
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

impl Registry {
    /// Compares and swaps atomically: the write is conditional on the revision the
    /// comparison saw, and re-decided if another writer got there first.
    pub async fn promote_run(&self, req: PromoteRun, actor: &str) -> Result<Promotion> {
        Self::check_alias_fields(&req.alias, "", &req.reason, req.expected_revision)?;
        if !validate::key_ok(&req.metric) {
            return Err(Error::invalid(
                "metric",
                "must be 1-128 characters of [A-Za-z0-9_.-/]",
            ));
        }
        let challenger = self.servable_run(&req.namespace, req.run_id, "run").await?;
        for _ in 0..WRITE_RETRIES {
            let current = self.store.get_alias(&req.namespace, &req.alias).await?;
            let seen_revision = current.as_ref().map_or(0, |a| a.revision);
            if let Some(exp) = req.expected_revision {
                if exp != seen_revision {
                    return Err(Error::Conflict(format!(
                        "alias {:?} is at revision {seen_revision}, not the expected {exp}",
                        req.alias
                    )));
                }
            }
            let decision = self.judge(&req, &challenger, current.as_ref()).await?;
            if !decision.allowed && !req.force {
                return Err(Error::FailedPrecondition(format!(
                    "promotion of run {} to {:?} refused: {}; pass force to override",
                    challenger.id, req.alias, decision.explanation
                )));
            }
            let previous_run_id = current.as_ref().map(|a| a.run_id);
            let description = current.map(|a| a.description).unwrap_or_default();
            if req.dry_run {
                let alias = Alias {
                    namespace: req.namespace.clone(),
                    alias: req.alias.clone(),
                    run_id: challenger.id,
                    description,
                    revision: seen_revision + 1,
                    update_time: now_micros(),
                    updated_by: actor.into(),
                };
                return Ok(Promotion {
                    alias,
                    promoted: false,
                    previous_run_id,
                    decision,
                });
            }
            let write = AliasWrite {
                namespace: req.namespace.clone(),
                alias: req.alias.clone(),
                run_id: Some(challenger.id),
                description,
                expected_revision: Some(seen_revision),
                action: AliasAction::Promote,
                reason: promotion_reason(&decision, &req.reason),
                actor: actor.into(),
                time: now_micros(),
            };
            match self.write_alias(&write).await {
                Ok(entry) => {
                    if !decision.allowed {
                        tracing::warn!(alias = %req.alias, run = %challenger.id, "forced promotion of a worse run");
                    }
                    return Ok(Promotion {
                        alias: Self::alias_of(&entry),
                        promoted: true,
                        previous_run_id,
                        decision,
                    });
                }
                Err(Error::Conflict(_)) if req.expected_revision.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "alias {:?} is changing too fast to promote; retry",
            req.alias
        )))
    }

    /// Compares the challenger with the run the alias points at now, if any.
    async fn judge(
        &self,
        req: &PromoteRun,
        challenger: &ModelRun,
        current: Option<&Alias>,
    ) -> Result<PromotionDecision> {
        let incumbent = match current {
            Some(a) => Some((
                a.run_id,
                self.store
                    .get_run(&a.namespace, a.run_id)
                    .await?
                    .and_then(|r| r.metrics.get(&req.metric).copied()),
            )),
            None => None,
        };
        Ok(decide_promotion(
            &req.metric,
            req.higher_is_better,
            (challenger.id, challenger.metrics.get(&req.metric).copied()),
            incumbent,
        ))
    }
}

/// The history reason of a promotion: why it was allowed (or that it was forced), and
/// the caller's own reason.
fn promotion_reason(decision: &PromotionDecision, reason: &str) -> String {
    format!(
        "{}{}{}",
        if decision.allowed { "" } else { "FORCED: " },
        decision.explanation,
        if reason.is_empty() {
            String::new()
        } else {
            format!(" — {reason}")
        }
    )
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
    }

    #[test]
    fn missing_metrics_refuse() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(!decide_promotion("m", true, (a, None), None).allowed);
        assert!(!decide_promotion("m", true, (a, Some(1.0)), Some((b, None))).allowed);
        assert!(decide_promotion("m", true, (a, Some(1.0)), None).allowed);
    }
}

//! Aliases: named pointers to runs, changed only by compare-and-swap writes that each
//! append a history entry, so that an alias's revisions are gapless.

mod cache;
mod coalesce;
mod promotion;
mod service;
mod watch;

use uuid::Uuid;

use super::Micros;
use crate::error::{Error, Result};

pub(super) use cache::{AliasCache, ServableRuns};
pub use coalesce::CoalescedAliasReads;
pub use promotion::{decide_promotion, PromoteRun, Promotion, PromotionDecision};
pub use service::SetAlias;
pub use watch::{AliasEvent, AliasEventKind, AliasWatch};

/// The key of an alias in this process's maps: namespace and alias names hold no `/`.
fn key(namespace: &str, alias: &str) -> String {
    format!("{namespace}/{alias}")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    /// The alias's namespace, which is its run's; the name is unique within it.
    pub namespace: String,
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
    pub namespace: String,
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
    pub namespace: String,
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
            namespace: self.namespace.clone(),
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
            (Some(0), Some(cur)) => Err(Error::Conflict(format!(
                "alias {:?} already exists at revision {cur}; expected_revision 0 means it must not exist",
                self.alias
            ))),
            (Some(exp), None) => Err(Error::Conflict(format!(
                "alias {:?} does not exist; expected revision {exp}",
                self.alias
            ))),
            (Some(exp), Some(cur)) if exp != cur => Err(Error::Conflict(format!(
                "alias {:?} is at revision {cur}, not the expected {exp}",
                self.alias
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cas_rule(expected in proptest::option::of(0i64..4), current in proptest::option::of(1i64..4)) {
            let w = AliasWrite {
                namespace: "default".into(), alias: "a".into(), run_id: None, description: String::new(), expected_revision: expected,
                action: AliasAction::Set, reason: String::new(), actor: String::new(), time: 0,
            };
            let ok = match expected { None => true, Some(0) => current.is_none(), Some(e) => current == Some(e) };
            prop_assert_eq!(w.check_revision(current).is_ok(), ok);
        }
    }
}

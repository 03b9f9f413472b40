//! Deleting runs (AIP-135): refused while an alias points at the run; a deleted run leaves
//! every read at once, and its rows are purged once the deletion grace period has passed.
//! Retention, when set, deletes terminal runs past it that no alias or alias history needs.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::{micros_ago, now_micros, ports::RunDeletion, registry::Registry},
    error::{Error, Missing, Result},
};

/// Runs purged (or listed for retention) per store call: one short transaction each.
const PURGE_BATCH: usize = 500;
/// Who retention's deletions are recorded as.
const RETENTION_ACTOR: &str = "retention";

impl Registry {
    /// Deletes the run; `etag`, when given, must be its current one.
    pub async fn delete_run(
        &self,
        namespace: &str,
        id: Uuid,
        etag: Option<&str>,
        actor: &str,
    ) -> Result<()> {
        let expected = etag
            .map(|e| {
                e.parse::<i64>().map_err(|_| {
                    Error::invalid("etag", format!("{e:.64?} is not an etag of a run"))
                })
            })
            .transpose()?;
        let outcome = self
            .store
            .delete_run(namespace, id, expected, now_micros(), actor)
            .await?;
        match outcome {
            RunDeletion::Deleted => {
                // Neither guess may serve the run again here.
                self.recent_runs.take(&id);
                self.servable.remove(namespace, &id);
                metrics::counter!("capstan_runs_deleted_total").increment(1);
                Ok(())
            }
            RunDeletion::Missing => Err(Error::NotFound(Missing::Run(id))),
            RunDeletion::Aliased(aliases) => Err(Error::FailedPrecondition(format!(
                "run {id} is in use by {}: move or delete them first",
                aliases
                    .iter()
                    .map(|(ns, a)| format!("alias {a:?} of namespace {ns:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            RunDeletion::Moved(version) => Err(Error::Conflict(format!(
                "run {id} changed: etag is {version}, request expected {}",
                etag.unwrap_or_default()
            ))),
        }
    }

    /// Deletes every terminal run last changed more than `retention` ago that no alias
    /// points at and no alias history entry names; returns how many. Each goes through
    /// [`Registry::delete_run`], whose check is atomic: a run an alias took meanwhile stays
    /// (and its history entry then keeps it).
    pub async fn expire_runs(&self, retention: Duration) -> Result<u64> {
        let before = micros_ago(retention);
        let mut total = 0;
        loop {
            let candidates = self.store.retention_candidates(before, PURGE_BATCH).await?;
            let mut deleted = 0;
            for (namespace, id) in &candidates {
                match self.delete_run(namespace, *id, None, RETENTION_ACTOR).await {
                    Ok(()) => deleted += 1,
                    // Taken by an alias, or deleted, since it was listed.
                    Err(Error::FailedPrecondition(_) | Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            total += deleted;
            // A full page of which some stayed would list them again: stop there.
            if candidates.len() < PURGE_BATCH || deleted < candidates.len() as u64 {
                return Ok(total);
            }
        }
    }

    /// Purges every run deleted more than `grace` ago; returns how many.
    pub async fn purge_deleted_runs(&self, grace: Duration) -> Result<u64> {
        let before = micros_ago(grace);
        let mut total = 0;
        loop {
            let n = self.store.purge_deleted_runs(before, PURGE_BATCH).await?;
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Every `interval` until `shutdown`: deletes runs past `retention` (when given),
    /// then purges deleted runs past `grace`. Every replica may run it: deleting or purging
    /// the same runs twice changes nothing the second time.
    pub fn spawn_purger(
        self: &Arc<Self>,
        interval: Duration,
        grace: Duration,
        retention: Option<Duration>,
        shutdown: CancellationToken,
    ) {
        self.every(interval, shutdown, "purging deleted runs", move |this| async move {
            if let Some(retention) = retention {
                // A failed retention pass leaves the purge to go on.
                match this.expire_runs(retention).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(runs = n, "deleted runs past the retention period");
                        metrics::counter!("capstan_runs_expired_total").increment(n);
                    }
                    Err(e) => {
                        tracing::error!(error = %capstan_server::error::Chain(&e), "run retention failed")
                    }
                }
            }
            let n = this.purge_deleted_runs(grace).await?;
            if n > 0 {
                tracing::info!(runs = n, "purged deleted runs past their grace period");
                metrics::counter!("capstan_runs_purged_total").increment(n);
            }
            Ok(())
        });
    }
}

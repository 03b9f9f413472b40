//! Deleting runs (AIP-135): refused while an alias points at the run; a deleted run leaves
//! every read at once, and its rows are purged once the deletion grace period has passed.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::{now_micros, ports::RunDeletion, registry::Registry},
    error::{Error, Missing, Result},
};

/// Runs purged per store call: one short transaction each.
const PURGE_BATCH: usize = 500;

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

    /// Purges every run deleted more than `grace` ago; returns how many.
    pub async fn purge_deleted_runs(&self, grace: Duration) -> Result<u64> {
        let before = now_micros() - i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let n = self.store.purge_deleted_runs(before, PURGE_BATCH).await?;
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Purges deleted runs past `grace` every `interval` until `shutdown`. Every replica may
    /// run it: purging the same runs twice removes nothing the second time.
    pub fn spawn_purger(
        self: &Arc<Self>,
        interval: Duration,
        grace: Duration,
        shutdown: CancellationToken,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                match this.purge_deleted_runs(grace).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(runs = n, "purged deleted runs past their grace period");
                        metrics::counter!("capstan_runs_purged_total").increment(n);
                    }
                    Err(e) => {
                        tracing::error!(error = %capstan_server::error::Chain(&e), "purging deleted runs failed")
                    }
                }
            }
        });
    }
}

//! The run use cases: create, read, list, update, and the heartbeat reaper.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ListRuns, ModelRun, NewRun, RunPatch};
use crate::{
    domain::{now_micros, registry::Registry, WRITE_RETRIES},
    error::{Error, Missing, Result},
};

impl Registry {
    /// Creates the run, and its namespace when this is the namespace's first run.
    pub async fn create_run(&self, new: NewRun, actor: &str) -> Result<ModelRun> {
        new.validate()?;
        let run = new.into_run(Uuid::new_v4(), now_micros(), actor);
        let (run, created) = self.store.insert_run(&run).await?;
        if created {
            self.recent_runs.keep(&run);
        }
        Ok(run)
    }

    /// The run, if it is in `namespace`.
    pub async fn get_run(&self, namespace: &str, id: Uuid) -> Result<ModelRun> {
        self.store
            .get_run(namespace, id)
            .await?
            .ok_or(Error::NotFound(Missing::Run(id)))
    }

    /// A page of runs and the token of the next page (empty on the last).
    pub async fn list_runs(&self, req: &ListRuns) -> Result<(Vec<ModelRun>, String)> {
        let query = req.checked()?;
        let runs = self
            .store
            .list_runs(
                &req.namespace,
                query.filter.as_ref(),
                &query.order,
                query.after.as_ref(),
                query.limit + 1,
            )
            .await?;
        Ok(query.page(runs))
    }

    /// Read-modify-write with an optimistic version check, retried on races with other
    /// writers (heartbeats, the reaper, other replicas); a client etag mismatch is final.
    /// It starts from this process's last write of the run when it has one (no read);
    /// whatever that copy refuses is tried again from the store.
    pub async fn update_run(
        &self,
        namespace: &str,
        id: Uuid,
        patch: &RunPatch,
        actor: &str,
    ) -> Result<ModelRun> {
        patch.validate()?;
        // A new reference holds its blob against the collector until it is written.
        let referenced = patch
            .artifact
            .as_ref()
            .or(patch.attachment.as_ref().map(|(_, a)| a));
        let lease = match referenced {
            Some(a) => Some(self.lease_blob(&a.sha256).await?),
            None => None,
        };
        let updated = self.apply_update(namespace, id, patch, actor).await;
        if let Some(lease) = lease {
            self.release_blob(lease).await;
        }
        updated
    }

    async fn apply_update(
        &self,
        namespace: &str,
        id: Uuid,
        patch: &RunPatch,
        actor: &str,
    ) -> Result<ModelRun> {
        // A copy from another namespace is no guess at all: the run is not there.
        let mut guess = self
            .recent_runs
            .take(&id)
            .filter(|r| r.namespace == namespace);
        for _ in 0..WRITE_RETRIES {
            let guessed = guess.is_some();
            let mut run = match guess.take() {
                Some(run) => run,
                None => self.get_run(namespace, id).await?,
            };
            let version = run.version;
            match patch.apply(&mut run, now_micros()) {
                Err(_) if guessed => continue,
                applied => applied?,
            }
            run.updated_by = actor.into();
            if self.store.update_run(&run, version).await? {
                self.recent_runs.keep(&run);
                return Ok(run);
            }
        }
        Err(Error::Conflict(format!(
            "run {id} is being changed concurrently; retry"
        )))
    }

    pub async fn fail_expired_runs(&self) -> Result<u64> {
        self.store.fail_expired_runs(now_micros()).await
    }

    /// Runs the heartbeat reaper every `interval` until `shutdown`.
    pub fn spawn_reaper(self: &Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        self.every(interval, shutdown, "heartbeat reaper", |this| async move {
            let n = this.fail_expired_runs().await?;
            if n > 0 {
                tracing::warn!(runs = n, "marked runs FAILED after heartbeat timeout");
                metrics::counter!("capstan_runs_reaped_total").increment(n);
            }
            Ok(())
        });
    }
}

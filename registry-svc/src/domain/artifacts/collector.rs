//! The blob collector. Blobs are content-addressed and shared, so one is removed only when
//! no run (deleted-but-unpurged ones included) refers to it and no upload of the same content
//! holds a lease on it: uploads lease their blob before committing it and keep the lease
//! until the run refers to it; the store orders a lease against a removal of the same blob.
//! Blobs younger than the grace period stay too (written by a replica of an earlier version
//! that takes no leases, during a rolling update). One replica collects at a time.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::{micros_ago, now_micros, registry::Registry, Micros},
    error::{Error, Result},
};

/// A lease outlives any commit and reference write; a crashed holder's expires.
const LEASE_TTL: Micros = 3600 * 1_000_000;
/// A removal mark outlives one blob removal; a crashed collector's expires.
const REMOVAL_TTL: Micros = 300 * 1_000_000;
/// The collector's lease: renewed on every page of blobs.
const COLLECTOR_TTL: Micros = 600 * 1_000_000;
const PAGE: usize = 500;
/// How long a lease is asked for while the collector removes the blob (one removal).
const LEASE_ATTEMPTS: usize = 500;

impl Registry {
    /// Leases the blob `sha256` (waiting while the collector removes it).
    pub(crate) async fn lease_blob(&self, sha256: &str) -> Result<Uuid> {
        let lease = Uuid::new_v4();
        for _ in 0..LEASE_ATTEMPTS {
            let now = now_micros();
            if self
                .store
                .lease_blob(lease, sha256, now, now + LEASE_TTL)
                .await?
            {
                return Ok(lease);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::Unavailable {
            what: format!("blob {sha256} (the collector is removing it)"),
            source: None,
        })
    }

    /// Best effort: a lease left behind expires.
    pub(crate) async fn release_blob(&self, lease: Uuid) {
        if let Err(e) = self.store.release_blob_lease(lease).await {
            tracing::error!(error = %capstan_server::error::Chain(&e), %lease, "cannot release a blob lease; it expires");
        }
    }

    /// One pass of the collector as `holder`: removes every blob older than `grace` that
    /// nothing refers to or leases. `None` when another replica holds the collector's lease.
    pub async fn collect_blobs(&self, holder: &str, grace: Duration) -> Result<Option<u64>> {
        let cutoff = micros_ago(grace);
        let mut after: Option<String> = None;
        let mut removed = 0;
        loop {
            let now = now_micros();
            if !self
                .store
                .claim_collector(holder, now, now + COLLECTOR_TTL)
                .await?
            {
                return Ok(None);
            }
            let page = self.blobs.list(after.as_deref(), PAGE).await?;
            for blob in page.iter().filter(|b| b.written <= cutoff) {
                let now = now_micros();
                if !self
                    .store
                    .begin_blob_removal(&blob.sha256, now, now + REMOVAL_TTL)
                    .await?
                {
                    continue;
                }
                let deleted = self.blobs.delete(&blob.sha256).await;
                // The mark goes whatever happened: a failed removal is tried next pass.
                self.store.end_blob_removal(&blob.sha256).await?;
                deleted?;
                removed += 1;
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.sha256.clone()),
                _ => return Ok(Some(removed)),
            }
        }
    }

    /// Runs the collector every `interval` until `shutdown`.
    pub fn spawn_collector(
        self: &Arc<Self>,
        interval: Duration,
        grace: Duration,
        shutdown: CancellationToken,
    ) {
        let holder = Uuid::new_v4().to_string();
        self.every(interval, shutdown, "blob collection", move |this| {
            let holder = holder.clone();
            async move {
                if let Some(n) = this.collect_blobs(&holder, grace).await? {
                    if n > 0 {
                        tracing::info!(blobs = n, "removed blobs no run refers to");
                        metrics::counter!("capstan_blobs_collected_total").increment(n);
                    }
                }
                Ok(())
            }
        });
    }
}

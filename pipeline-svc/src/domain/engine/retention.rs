//! Retention: a terminal operation (SUCCEEDED, FAILED, CANCELLED) is purged with its
//! events, steps and job once it ended longer ago than the retention, leaving a tombstone
//! so that reads of it say it was purged. One replica purges at a time (the holder of the
//! purger's lease), in small batches of one short transaction each, so live work waits
//! for one batch at most; the store re-checks every operation's status in the statements
//! that delete it (see [`RetentionStore`](super::ports::RetentionStore)).

use std::{sync::Arc, time::Duration};

use tracing::Instrument;

use super::{
    ports::{PurgeBatch, PurgedRows},
    Engine,
};
use crate::{
    domain::{now_micros, Micros},
    error::Result,
};

/// The purger's lease: renewed before every batch, so a crashed holder's runs out soon.
const PURGER_TTL: Micros = 300 * 1_000_000;

/// After a batch that took t, the purger waits this many times t: it takes at most a tenth
/// of the database's time, whatever the backend and the load.
const PAUSE_PER_BATCH_TIME: u32 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Terminal operations that ended longer ago than this are purged (at least 1).
    pub days: u32,
    /// Operations per batch (one transaction each; at least 1).
    pub batch: usize,
}

/// What one pass purged, and in how many batches (transactions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgePass {
    pub batches: u64,
    pub rows: PurgedRows,
}

impl Engine {
    /// One pass: purges batches until one comes back short, or this replica loses the
    /// purger's lease, or the engine shuts down. `None` when another replica holds the
    /// lease (this one purges nothing).
    pub async fn purge_expired(&self, retention: Retention) -> Result<Option<PurgePass>> {
        let span = tracing::info_span!(
            "purge_operations",
            retention_days = retention.days,
            batches = tracing::field::Empty,
            operations = tracing::field::Empty,
            events = tracing::field::Empty,
            steps = tracing::field::Empty,
            jobs = tracing::field::Empty,
        );
        let pass = self.purge_pass(retention).instrument(span.clone()).await?;
        if let Some(p) = &pass {
            span.record("batches", p.batches);
            span.record("operations", p.rows.operations);
            span.record("events", p.rows.events);
            span.record("steps", p.rows.steps);
            span.record("jobs", p.rows.jobs);
        }
        Ok(pass)
    }

    async fn purge_pass(&self, retention: Retention) -> Result<Option<PurgePass>> {
        let holder = &self.cfg.replica_id;
        let days = retention.days.max(1);
        let limit = retention.batch.max(1);
        let ended_before =
            capstan_server::time::micros_ago(Duration::from_secs(u64::from(days) * 24 * 3600));
        let mut pass: Option<PurgePass> = None;
        while !self.shutdown.is_cancelled() {
            let now = now_micros();
            if !self
                .retention
                .claim_purger(holder, now, now + PURGER_TTL)
                .await?
            {
                break;
            }
            let started = std::time::Instant::now();
            let rows = self
                .retention
                .purge_batch(&PurgeBatch {
                    ended_before,
                    limit,
                    time: now,
                    retention_days: i64::from(days),
                })
                .await?;
            let p = pass.get_or_insert_with(PurgePass::default);
            p.batches += 1;
            p.rows.add(rows);
            metrics::counter!("capstan_operations_purged_total").increment(rows.operations);
            if rows.operations < limit as u64 {
                break;
            }
            // Between batches, live work has the database to itself for a while: on
            // SQLite's single writer, back-to-back batches left it a tenth of its rate.
            let pause = started.elapsed() * PAUSE_PER_BATCH_TIME;
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        Ok(pass)
    }

    /// Runs [`Engine::purge_expired`] every `interval` until shutdown.
    pub fn spawn_purger(self: &Arc<Self>, retention: Retention, interval: Duration) {
        let this = self.clone();
        capstan_server::singleton::every(
            interval,
            self.shutdown.clone(),
            "operation retention",
            move || {
                let this = this.clone();
                async move {
                    if let Some(p) = this.purge_expired(retention).await? {
                        if p.rows.operations > 0 {
                            tracing::info!(
                                operations = p.rows.operations,
                                events = p.rows.events,
                                batches = p.batches,
                                retention_days = retention.days,
                                "purged operations past their retention"
                            );
                        }
                    }
                    Ok::<_, crate::error::Error>(())
                }
            },
        );
    }
}

//! The executions of this replica: the worker that claims queued jobs, the listener for
//! other replicas' hints, lease heartbeats, and the tasks that drive executions.

use std::{sync::Arc, time::Duration};

use capstan_server::{
    serve::{self, CallScope},
    telemetry,
};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    driver::Driver,
    ports::{Hint, JobQueue, Lease},
    Engine,
};
use crate::{domain::now_micros, error::Error};

/// How often the queue's depth is read for its gauge.
const QUEUE_MEASURE_EVERY: Duration = Duration::from_secs(5);

impl Engine {
    /// Starts the job worker and, on Postgres, the listener for other replicas' hints.
    pub fn spawn_background(self: &Arc<Self>) {
        if self.cfg.queue_workers {
            let this = self.clone();
            self.tasks.spawn(async move { this.worker_loop().await });
        }
        let this = self.clone();
        self.tasks.spawn(async move { this.follow_hints().await });
        let this = self.clone();
        self.tasks.spawn(async move { this.measure_queue().await });
    }

    /// Keeps the `capstan_jobs_queued` gauge: every replica reports the shared queue.
    async fn measure_queue(self: Arc<Self>) {
        let depth = metrics::gauge!("capstan_jobs_queued");
        loop {
            match self.jobs.depth(now_micros()).await {
                Ok(n) => depth.set(n as f64),
                Err(e) => tracing::warn!(error = %e, "cannot measure the job queue"),
            }
            tokio::select! {
                _ = tokio::time::sleep(QUEUE_MEASURE_EVERY) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Waits until every execution of this replica has stopped (after shutdown they
    /// release their leases at the next step boundary).
    pub async fn drained(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn follow_hints(self: Arc<Self>) {
        let Some(mut hints) = self.store.hints(self.cfg.poll_interval).await else {
            return;
        };
        loop {
            tokio::select! {
                h = hints.next() => match h {
                    Some(Hint::Jobs) => {
                        self.jobs_wake.notify_one();
                        self.admissions_wake.notify_waiters();
                    }
                    Some(Hint::Operation(id)) => {
                        self.hub.wake(id);
                        self.cancel_if_requested(id).await;
                    }
                    Some(Hint::Resync) => {
                        self.jobs_wake.notify_one();
                        self.admissions_wake.notify_waiters();
                        self.hub.wake_all();
                        let here: Vec<uuid::Uuid> = match self.local.lock() {
                            Ok(m) => m.keys().copied().collect(),
                            Err(e) => {
                                tracing::error!(error = %e, "running operations unreadable; their cancellations wait for the next step");
                                Vec::new()
                            }
                        };
                        for id in here {
                            self.cancel_if_requested(id).await;
                        }
                    }
                    None => {
                        tracing::error!("notification stream ended; watchers see only this replica's events");
                        return;
                    }
                },
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Another replica changed operation `id`: if it runs here and somebody asked it to
    /// stop, its step gets the signal (a CancelOperation sent to any replica reaches the
    /// running step).
    async fn cancel_if_requested(&self, id: uuid::Uuid) {
        let Some(token) = self.local.lock().ok().and_then(|m| m.get(&id).cloned()) else {
            return;
        };
        match self.store.get(id, None).await {
            Ok(Some(op)) if op.cancel_requested => token.cancel(),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(operation = %id, error = %e, "cannot read a changed operation; its cancellation waits for the next step")
            }
        }
    }

    /// Claims jobs while there is room, and waits for a wake-up or the poll otherwise.
    async fn worker_loop(self: Arc<Self>) {
        loop {
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = self.shutdown.cancelled() => return,
            };
            let claimed = self
                .jobs
                .claim(
                    &self.cfg.replica_id,
                    now_micros(),
                    self.cfg.lease.as_millis() as i64,
                )
                .await;
            match claimed {
                Ok(Some(lease)) => {
                    metrics::counter!("capstan_jobs_claimed_total").increment(1);
                    // A job claimed again without a release: its last worker lost the
                    // lease (crashed, or stopped heartbeating).
                    if lease.attempts > 1 {
                        metrics::counter!("capstan_lease_takeovers_total").increment(1);
                    }
                    tracing::info!(operation = %lease.operation_id, attempt = lease.attempts, "claimed job");
                    self.spawn_execution(lease, Some(permit), true);
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot claim jobs; retrying"),
            }
            drop(permit);
            tokio::select! {
                _ = self.jobs_wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Runs the leased operation here. `permit`: the slot a worker took for it (DIRECT
    /// work takes one once admitted, so that queued work waits but no slot waits for a
    /// key). `admitted`: whether it may run at once, or must wait for admission first.
    pub(super) fn spawn_execution(
        self: &Arc<Self>,
        lease: Lease,
        permit: Option<OwnedSemaphorePermit>,
        admitted: bool,
    ) {
        let this = self.clone();
        let (span, scope) = execution_span(&lease);
        let execution = async move { this.execute(lease, permit, admitted).await };
        self.tasks
            .spawn(serve::within(scope, execution.instrument(span)));
    }

    async fn execute(
        self: Arc<Self>,
        lease: Lease,
        permit: Option<OwnedSemaphorePermit>,
        admitted: bool,
    ) {
        let id = lease.operation_id;
        let cancel = CancellationToken::new();
        if let Ok(mut m) = self.local.lock() {
            m.insert(id, cancel.clone());
        }
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            self.jobs.clone(),
            lease.clone(),
            self.cfg.lease,
            lost.clone(),
        ));
        let outcome = Driver::new(&self, &lease, cancel, lost)
            .drive(permit, admitted)
            .await;
        heartbeat.abort();
        if let Ok(mut m) = self.local.lock() {
            m.remove(&id);
        }
        match outcome {
            Ok(()) => {}
            Err(Error::LeaseLost(m)) => {
                tracing::warn!(operation = %id, reason = %m, "stopped: another worker owns the operation now")
            }
            Err(e) => tracing::error!(
                operation = %id, error = %e,
                "execution stopped; the lease expires and a worker resumes the operation"
            ),
        }
    }
}

/// The span of one execution (its steps' spans are its children) and the scope its calls
/// carry. An execution a call launched (DIRECT) continues the call's trace and keeps its
/// request id, though it outlives the call; one a worker claimed starts a trace of its
/// own, with the operation id as its request id.
fn execution_span(lease: &Lease) -> (tracing::Span, CallScope) {
    let id: Arc<str> = lease.operation_id.to_string().into();
    let call = serve::current();
    let request_id = call
        .as_ref()
        .map_or_else(|| id.clone(), |c| c.request_id.clone());
    let span = tracing::info_span!(
        parent: None,
        "operation",
        operation_id = %id,
        request_id = %request_id,
        attempt = lease.attempts,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_trace(&span);
    let scope = CallScope {
        request_id,
        operation_id: Some(id),
        step: None,
        dropped_trace: call.and_then(|c| c.dropped_trace),
    };
    (span, scope)
}

/// Extends the lease every third of its length; a refused extension means another
/// worker took over, and `lost` stops this one.
async fn heartbeat(
    jobs: Arc<dyn JobQueue>,
    lease: Lease,
    length: Duration,
    lost: CancellationToken,
) {
    let ms = length.as_millis() as i64;
    loop {
        tokio::time::sleep(length / 3).await;
        match jobs.heartbeat(&lease, now_micros(), ms).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(operation = %lease.operation_id, error = %e, "lease heartbeat failed; retrying")
            }
        }
    }
}

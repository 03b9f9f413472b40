//! One execution of one operation under one lease: restores the workflow's execution,
//! runs the steps not done yet, and ends the operation SUCCEEDED, FAILED or CANCELLED (or
//! hands it back at shutdown).
//!
//! A finished step's change is not written alone: it waits for the next change (the next
//! step's start, or the end) and both commit in one transaction, a commit fewer per step.
//! A crash in between re-runs the step, as a crash before its end was recorded always did.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use capstan_server::serve::{self, CallScope};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    operation::{EventType, OpStatus, Operation, OperationError, Step, StepStatus, NOT_RUN},
    ports::{Admission, Change, Lease, StepChange, StepUpdate},
    retry::RetryPolicy,
    workflow::{Execution, StepCx, StepOutcome, StopReason},
    Engine,
};
use crate::{
    domain::{now_micros, Micros},
    error::{Error, Result},
};

pub(super) struct Driver<'a> {
    engine: &'a Arc<Engine>,
    lease: &'a Lease,
    /// Cancelled by a CancelOperation that reached this replica.
    cancel: CancellationToken,
    /// Cancelled when the heartbeat finds the lease taken over.
    lost: CancellationToken,
    kind: String,
    steps: Vec<Step>,
    cancel_requested: bool,
    /// Set once the operation fails or is cancelled.
    stopping: bool,
    /// Changes waiting to commit with the next one (see the module comment).
    deferred: Vec<Change>,
    started: Instant,
    /// When the operation was created: its duration metric runs from there to its end.
    created: Micros,
    /// The operation's deadline on this process's clock, and what it says once passed.
    deadline: Option<(tokio::time::Instant, String)>,
}

/// Why the operation ends other than by succeeding.
enum Stop {
    /// `step`: the index of the step that failed, if one did.
    Failed {
        step: Option<usize>,
        message: String,
    },
    Cancelled,
}

/// How waiting for admission ended.
enum Admitted {
    Yes,
    CancelRequested,
    Shutdown,
    /// The operation's deadline passed while it waited.
    Expired,
}

/// What happens after a step.
enum Next {
    Continue,
    Stop(Stop),
    /// Shutdown: the job goes back to the queue.
    Release,
}

/// `deadline` (unix microseconds) on this process's clock, with the failure message that
/// names the timeout it came from.
fn deadline_instant(deadline: Micros, timeout: Option<Micros>) -> (tokio::time::Instant, String) {
    let left = Duration::from_micros(deadline.saturating_sub(now_micros()).max(0) as u64);
    let message = match timeout {
        Some(t) => format!(
            "the operation's deadline passed: it did not end within its timeout of {} ms",
            t / 1000
        ),
        None => "the operation's deadline passed".to_string(),
    };
    (tokio::time::Instant::now() + left, message)
}

fn lease_lost() -> Error {
    Error::LeaseLost("the lease heartbeat was refused".into())
}

impl<'a> Driver<'a> {
    pub(super) fn new(
        engine: &'a Arc<Engine>,
        lease: &'a Lease,
        cancel: CancellationToken,
        lost: CancellationToken,
    ) -> Self {
        Self {
            engine,
            lease,
            cancel,
            lost,
            kind: String::new(),
            steps: Vec::new(),
            cancel_requested: false,
            stopping: false,
            deferred: Vec::new(),
            started: Instant::now(),
            created: 0,
            deadline: None,
        }
    }

    pub(super) async fn drive(
        mut self,
        permit: Option<OwnedSemaphorePermit>,
        admitted: bool,
    ) -> Result<()> {
        let mut op = self.engine.get(self.lease.operation_id, None).await?;
        self.deadline = op.deadline.map(|d| deadline_instant(d, op.timeout));
        if !admitted {
            match self.wait_for_admission().await? {
                // An expired operation goes on: its first step boundary fails it.
                Admitted::Yes | Admitted::Expired => {}
                Admitted::CancelRequested => self.cancel_requested = true,
                Admitted::Shutdown => return self.release().await,
            }
            // It may have changed while it waited (a cancellation, its state).
            op = self.engine.get(self.lease.operation_id, None).await?;
        }
        // DIRECT work takes its slot once admitted, so that queued work waits for it.
        let _permit = match permit {
            Some(p) => Some(p),
            None => self.engine.slots.clone().acquire_owned().await.ok(),
        };
        if op.status.is_terminal() {
            return Ok(());
        }
        self.steps = op.steps.clone();
        self.kind = op.kind.clone();
        self.created = op.create_time;
        self.cancel_requested |= op.cancel_requested;
        let mut exec = match self.restore(&op) {
            Ok(e) => e,
            Err(e) => {
                let message = format!("cannot start the workflow: {e}");
                return self.finish_failed(None, None, message, Vec::new()).await;
            }
        };
        self.announce_start();
        if let Some(stop) = self.unfinished_stop() {
            return self.stop(&mut *exec, stop).await;
        }
        for i in 0..self.steps.len() {
            if self.steps[i].status.is_done() {
                continue;
            }
            match self.step(i, &mut *exec).await? {
                Next::Continue => {}
                Next::Stop(stop) => return self.stop(&mut *exec, stop).await,
                Next::Release => return self.release().await,
            }
        }
        self.succeed(&mut *exec).await
    }

    /// Waits, PENDING, until the store admits the operation (its keys are free and its
    /// owner under the limit). The store recorded why it waits; nothing here polls it:
    /// an operation ending wakes the check, and a slow safety net covers lost hints.
    async fn wait_for_admission(&mut self) -> Result<Admitted> {
        let safety_net = self.engine.cfg.poll_interval.max(self.engine.cfg.lease / 3);
        let shutdown = self.engine.shutdown.clone();
        loop {
            let woken = self.engine.admissions_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.engine.jobs.admit(self.lease, now_micros()).await {
                Ok(Admission::Admitted) => return Ok(Admitted::Yes),
                Ok(Admission::CancelRequested) => return Ok(Admitted::CancelRequested),
                Ok(Admission::Waiting(why)) => {
                    tracing::debug!(operation = %self.lease.operation_id, %why, "waiting for admission")
                }
                Err(e @ Error::LeaseLost(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(operation = %self.lease.operation_id, error = %e, "admission check failed; retrying")
                }
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(safety_net) => {}
                _ = self.lost.cancelled() => return Err(lease_lost()),
                _ = self.cancel.cancelled() => return Ok(Admitted::CancelRequested),
                _ = shutdown.cancelled() => return Ok(Admitted::Shutdown),
                _ = self.deadline_passes() => return Ok(Admitted::Expired),
            }
        }
    }

    /// Resolves when the operation's deadline passes; never without one.
    async fn deadline_passes(&self) {
        match &self.deadline {
            Some((at, _)) => tokio::time::sleep_until(*at).await,
            None => std::future::pending().await,
        }
    }

    /// The failure of an operation whose deadline passed (at or in step `step`), if it did.
    fn expired(&self, step: Option<usize>) -> Option<Stop> {
        let (at, message) = self.deadline.as_ref()?;
        (tokio::time::Instant::now() >= *at).then(|| Stop::Failed {
            step,
            message: message.clone(),
        })
    }

    fn restore(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        self.engine
            .workflows
            .get(&op.kind)
            .ok_or_else(|| Error::internal(format!("no workflow runs kind {:?}", op.kind)))?
            .resume(op)
    }

    /// The STARTED event (written with the first step's start).
    fn announce_start(&mut self) {
        let done = self.steps.iter().filter(|s| s.status.is_done()).count();
        let replica = &self.engine.cfg.replica_id;
        let message = if self.lease.attempts > 1 || done > 0 {
            format!(
                "resumed on {replica} (attempt {}); {done} of {} steps already done",
                self.lease.attempts,
                self.steps.len()
            )
        } else {
            format!("started on {replica}")
        };
        self.deferred.push(Change {
            status: Some(OpStatus::Running),
            ..Change::new(EventType::Started, message, now_micros())
        });
    }

    /// An operation that must not run its steps again: a worker crashed while it was
    /// failing (its compensations are idempotent, so those already done run again
    /// harmlessly), or its workers kept crashing.
    fn unfinished_stop(&self) -> Option<Stop> {
        if let Some(i) = self
            .steps
            .iter()
            .position(|s| s.status == StepStatus::Failed)
        {
            return Some(Stop::Failed {
                step: Some(i),
                message: self.steps[i].detail.clone(),
            });
        }
        if self.lease.attempts > self.engine.cfg.max_attempts {
            return Some(Stop::Failed {
                step: None,
                message: format!(
                    "given up after {} attempts (the workers running it kept crashing)",
                    self.lease.attempts - 1
                ),
            });
        }
        None
    }

    /// Starts, runs and (on success, deferred) finishes step `i`, running it again by its
    /// retry policy after a failure; each run is a new attempt (`STEP_STARTED`).
    async fn step(&mut self, i: usize, exec: &mut dyn Execution) -> Result<Next> {
        let policy = self.policy(i);
        loop {
            if self.cancel.is_cancelled() || self.cancel_requested {
                return Ok(Next::Stop(Stop::Cancelled));
            }
            if self.engine.shutdown.is_cancelled() {
                return Ok(Next::Release);
            }
            if let Some(stop) = self.expired(None) {
                return Ok(Next::Stop(stop));
            }
            self.start_step(i).await?;
            // A cancellation seen while recording the start stops the step before it runs.
            if self.cancel_requested {
                return Ok(Next::Stop(Stop::Cancelled));
            }
            let attempt = u32::try_from(self.steps[i].attempt).unwrap_or(u32::MAX);
            let Some(outcome) = self.run_step(i, exec).await? else {
                return Ok(Next::Stop(Stop::Cancelled));
            };
            // A step stopped by the deadline fails the operation whatever its policy says.
            if let (Err(_), Some(stop)) = (&outcome, self.expired(Some(i))) {
                return Ok(Next::Stop(stop));
            }
            match outcome {
                Ok(outcome) => {
                    self.defer_step_end(i, outcome, exec);
                    return Ok(Next::Continue);
                }
                Err(Error::LeaseLost(m)) => return Err(Error::LeaseLost(m)),
                Err(e) if policy.retries(&e, attempt) => {
                    if let Some(next) = self.back_off(i, attempt, &policy, &e).await? {
                        return Ok(next);
                    }
                }
                Err(e) => {
                    let message = if attempt > 1 {
                        format!("{e} (attempt {attempt} of {})", policy.max_attempts)
                    } else {
                        e.to_string()
                    };
                    return Ok(Next::Stop(Stop::Failed {
                        step: Some(i),
                        message,
                    }));
                }
            }
        }
    }

    /// Step `i`'s time limit from start to finish: its workflow's, or the engine's default.
    fn step_limit(&self, i: usize) -> Option<Duration> {
        self.engine
            .workflows
            .get(&self.kind)
            .and_then(|w| w.step_timeout(&self.steps[i].name))
            .or(self.engine.cfg.step_timeout)
    }

    /// Step `i`'s retry policy: its workflow's, or the engine's default.
    fn policy(&self, i: usize) -> RetryPolicy {
        self.engine
            .workflows
            .get(&self.kind)
            .and_then(|w| w.retry_policy(&self.steps[i].name))
            .unwrap_or(self.engine.cfg.step_retry)
    }

    /// Waits before running step `i` again after attempt `attempt` failed with `e`, and
    /// says so to watchers (the error and the delay). `Some`: what to do instead of
    /// running it again (the operation was cancelled or the replica is shutting down).
    async fn back_off(
        &mut self,
        i: usize,
        attempt: u32,
        policy: &RetryPolicy,
        e: &Error,
    ) -> Result<Option<Next>> {
        let wait = policy.delay(attempt);
        let message = format!(
            "{} failed on attempt {attempt} of {} ({e}); attempt {} in {} ms",
            self.steps[i].name,
            policy.max_attempts,
            attempt + 1,
            wait.as_millis(),
        );
        tracing::warn!(operation = %self.lease.operation_id, step = %self.steps[i].name, error = %e, attempt, "step failed; retrying by its policy");
        metrics::counter!("capstan_operation_step_retries_total", "kind" => self.kind.clone(), "step" => self.steps[i].name.clone()).increment(1);
        self.record(Change {
            step: Some(self.step_ref(i)),
            ..Change::new(EventType::Progress, message, now_micros())
        })
        .await?;
        let shutdown = self.engine.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.lost.cancelled() => return Err(lease_lost()),
            _ = self.cancel.cancelled() => return Ok(Some(Next::Stop(Stop::Cancelled))),
            _ = shutdown.cancelled() => return Ok(Some(Next::Release)),
            _ = self.deadline_passes() => return Ok(self.expired(Some(i)).map(Next::Stop)),
        }
        Ok(self.cancel_requested.then_some(Next::Stop(Stop::Cancelled)))
    }

    async fn start_step(&mut self, i: usize) -> Result<()> {
        let name = self.steps[i].name.clone();
        let attempt = self.steps[i].attempt + 1;
        let message = if attempt > 1 {
            format!("{name} started (attempt {attempt})")
        } else {
            format!("{name} started")
        };
        let update = StepUpdate {
            status: StepStatus::Running,
            detail: None,
            started: true,
            ended: false,
        };
        self.move_step(i, EventType::StepStarted, update, message, None)
            .await?;
        self.steps[i].attempt = attempt;
        // After the start is recorded: the crash leaves the step RUNNING, as a real one
        // mid-step would.
        if self.engine.cfg.faults.abort_at_step.as_deref() == Some(name.as_str()) {
            tracing::error!(step = %name, "aborting the process (--abort-at-step)");
            std::process::abort();
        }
        Ok(())
    }

    /// The workflow's step, stopped early when the lease is lost or the operation is
    /// cancelled (`None`: cancelled, its signal passed to the step). The outer error is
    /// the driver's own (it stops the execution); the inner result is the step's.
    async fn run_step(
        &mut self,
        i: usize,
        exec: &mut dyn Execution,
    ) -> Result<Option<Result<StepOutcome>>> {
        let name = self.steps[i].name.clone();
        let cancel = self.cancel.child_token();
        let cx = StepCx {
            engine: self.engine,
            lease: self.lease,
            step: self.step_ref(i),
            cancel: cancel.clone(),
        };
        let began = Instant::now();
        let hang = self.engine.cfg.faults.hang_step.as_deref() == Some(name.as_str());
        let limit = self.step_limit(i);
        let id = self.lease.operation_id;
        let scope = serve::current().unwrap_or_else(|| CallScope {
            request_id: id.to_string().into(),
            operation_id: Some(id.to_string().into()),
            step: None,
            dropped_trace: None,
        });
        let span = tracing::info_span!(
            "step",
            otel.name = %format_args!("step {name}"),
            step = %name,
            kind = %self.kind,
            operation_id = %id,
            request_id = %scope.request_id,
        );
        let scope = CallScope {
            step: Some(name.as_str().into()),
            ..scope
        };
        let run = serve::within(scope, exec.run_step(&name, &cx).instrument(span));
        let outcome = tokio::select! {
            o = run, if !hang => o,
            _ = self.lost.cancelled() => return Err(lease_lost()),
            _ = self.cancel.cancelled() => {
                cancel.cancel();
                return Ok(None);
            }
            // Past the operation's deadline the step is cancelled and the operation fails.
            _ = self.deadline_passes() => {
                cancel.cancel();
                Err(Error::unavailable("the operation's deadline passed mid-step"))
            }
            // Past its limit the step is cancelled; its retry policy decides what next.
            _ = tokio::time::sleep(limit.unwrap_or_default()), if limit.is_some() => {
                cancel.cancel();
                Err(Error::unavailable(format!(
                    "{name} exceeded its time limit of {} ms and was cancelled",
                    limit.unwrap_or_default().as_millis()
                )))
            }
        };
        let faults = &self.engine.cfg.faults;
        let outcome = match outcome {
            Ok(_) if faults.fail_step.as_deref() == Some(name.as_str()) => {
                Err(match faults.fail_step_times {
                    // A transient failure: the step's retry policy runs it again.
                    Some(times) if self.steps[i].attempt <= i64::from(times) => {
                        Error::unavailable(format!(
                            "injected failure {} of {times} (--fail-step {name} --fail-step-times {times})",
                            self.steps[i].attempt
                        ))
                    }
                    Some(_) => return Ok(Some(outcome)),
                    None => Error::Precondition(format!("injected failure (--fail-step {name})")),
                })
            }
            o => o,
        };
        let status = match &outcome {
            Ok(StepOutcome::Passed(_)) => "PASSED",
            Ok(StepOutcome::Skipped(_)) => "SKIPPED",
            Err(_) => "FAILED",
        };
        metrics::histogram!("capstan_operation_step_duration_seconds", "kind" => self.kind.clone(), "step" => name, "status" => status)
            .record(began.elapsed().as_secs_f64());
        Ok(Some(outcome))
    }

    /// The step's end with the workflow's state, written with the next change.
    fn defer_step_end(&mut self, i: usize, outcome: StepOutcome, exec: &dyn Execution) {
        let (status, detail) = match outcome {
            StepOutcome::Passed(d) => (StepStatus::Passed, d),
            StepOutcome::Skipped(d) => (StepStatus::Skipped, d),
        };
        let message = format!(
            "{} {}: {detail}",
            self.steps[i].name,
            status.as_str().to_lowercase()
        );
        let update = StepUpdate {
            status,
            detail: Some(detail),
            started: false,
            ended: true,
        };
        let change = self.step_change(
            i,
            EventType::StepFinished,
            update,
            message,
            Some(exec.state()),
        );
        self.steps[i].status = status;
        self.deferred.push(change);
    }

    async fn succeed(&mut self, exec: &mut dyn Execution) -> Result<()> {
        let elapsed = self.started.elapsed();
        self.record(Change {
            status: Some(OpStatus::Succeeded),
            percent: Some(100),
            result: exec.result(),
            state: Some(exec.state()),
            ..Change::new(
                EventType::Finished,
                format!("succeeded in {} ms", elapsed.as_millis()),
                now_micros(),
            )
        })
        .await
    }

    /// Ends the operation FAILED or CANCELLED: marks the failed step, undoes what was done
    /// (in reverse), skips what was not, and records the terminal event. A failing
    /// compensation is logged and recorded, and never replaces the original failure.
    async fn stop(&mut self, exec: &mut dyn Execution, stop: Stop) -> Result<()> {
        let (failed, reason) = match &stop {
            Stop::Failed { step, message } => (*step, message.clone()),
            Stop::Cancelled => (None, "the operation was cancelled".to_string()),
        };
        self.stopping = true;
        exec.stopping(&StopReason {
            cancelled: matches!(stop, Stop::Cancelled),
            step: failed.map(|i| self.steps[i].name.as_str()),
            message: &reason,
        });
        if let Some(i) = failed {
            self.fail_step(i, &reason, exec).await?;
        }
        let compensation_errors = self.compensate(exec).await?;
        self.skip_rest(&stop, failed).await?;
        let step = failed.map(|i| self.steps[i].name.clone());
        match stop {
            Stop::Failed { .. } => {
                self.finish_failed(step, Some(exec), reason, compensation_errors)
                    .await
            }
            Stop::Cancelled => {
                let change = Change {
                    status: Some(OpStatus::Cancelled),
                    result: exec.result(),
                    error: Some(OperationError {
                        step: None,
                        message: reason.clone(),
                        compensation_errors,
                    }),
                    ..Change::new(EventType::Finished, "cancelled", now_micros())
                };
                self.record(change).await
            }
        }
    }

    /// Records step `i` FAILED, unless a resumed failure recorded it already.
    async fn fail_step(&mut self, i: usize, reason: &str, exec: &mut dyn Execution) -> Result<()> {
        if self.steps[i].status == StepStatus::Failed {
            return Ok(());
        }
        let message = format!("{} failed: {reason}", self.steps[i].name);
        let update = StepUpdate {
            status: StepStatus::Failed,
            detail: Some(reason.to_string()),
            started: false,
            ended: true,
        };
        self.move_step(
            i,
            EventType::StepFinished,
            update,
            message,
            Some(exec.state()),
        )
        .await
    }

    /// Runs the compensations of every step that did (or may have done) something, last
    /// first; returns the ones that failed.
    async fn compensate(&mut self, exec: &mut dyn Execution) -> Result<Vec<String>> {
        let mut errors = Vec::new();
        for i in (0..self.steps.len()).rev() {
            // A failed step, or one a crashed worker left RUNNING, may have done part of
            // its work, so it is compensated too.
            let touched = matches!(
                self.steps[i].status,
                StepStatus::Passed | StepStatus::Running | StepStatus::Failed
            );
            if !touched {
                continue;
            }
            let name = self.steps[i].name.clone();
            let message = match exec.compensate(&name).await {
                Ok(None) => continue,
                Ok(Some(detail)) => format!("compensated {name}: {detail}"),
                Err(e) => {
                    tracing::error!(operation = %self.lease.operation_id, step = %name, error = %e, "compensation failed");
                    metrics::counter!("capstan_compensation_failures_total", "kind" => self.kind.clone(), "step" => name.clone()).increment(1);
                    errors.push(format!("{name}: {e}"));
                    format!("compensation of {name} failed: {e}")
                }
            };
            let change = Change {
                step: Some(self.step_ref(i)),
                ..Change::new(EventType::Compensation, message, now_micros())
            };
            self.record(change).await?;
        }
        Ok(errors)
    }

    /// Records every step that did not finish SKIPPED, saying why.
    async fn skip_rest(&mut self, stop: &Stop, failed: Option<usize>) -> Result<()> {
        let why = match (stop, failed) {
            (_, Some(i)) => format!("{NOT_RUN}{} failed", self.steps[i].name),
            (Stop::Failed { message, .. }, None) => format!("{NOT_RUN}{message}"),
            (Stop::Cancelled, None) => format!("{NOT_RUN}the operation was cancelled"),
        };
        for i in 0..self.steps.len() {
            if self.steps[i].status.is_terminal() {
                continue;
            }
            let message = format!("{} skipped: {why}", self.steps[i].name);
            let update = StepUpdate {
                status: StepStatus::Skipped,
                detail: Some(why.clone()),
                started: false,
                ended: true,
            };
            self.move_step(i, EventType::StepFinished, update, message, None)
                .await?;
        }
        Ok(())
    }

    async fn finish_failed(
        &mut self,
        step: Option<String>,
        exec: Option<&mut dyn Execution>,
        message: String,
        compensation_errors: Vec<String>,
    ) -> Result<()> {
        let summary = match &step {
            Some(s) => format!("failed at step {s}: {message}"),
            None => format!("failed: {message}"),
        };
        let change = Change {
            status: Some(OpStatus::Failed),
            result: exec.and_then(|e| e.result()),
            error: Some(OperationError {
                step,
                message,
                compensation_errors,
            }),
            ..Change::new(EventType::Finished, summary, now_micros())
        };
        self.record(change).await
    }

    /// Shutdown: hand the job back so that another replica resumes it at once.
    async fn release(&mut self) -> Result<()> {
        let replica = self.engine.cfg.replica_id.clone();
        self.record(Change::new(
            EventType::Progress,
            format!("{replica} is shutting down; the operation goes back to the queue"),
            now_micros(),
        ))
        .await?;
        if !self.engine.jobs.release(self.lease, now_micros()).await? {
            tracing::warn!(operation = %self.lease.operation_id, "lease was already gone at release");
        }
        Ok(())
    }

    /// Records the deferred changes and `change`, in one transaction.
    async fn record(&mut self, change: Change) -> Result<()> {
        if self.lost.is_cancelled() {
            return Err(lease_lost());
        }
        let mut changes = std::mem::take(&mut self.deferred);
        changes.push(change);
        for r in self.engine.record_all(self.lease, &changes).await? {
            self.cancel_requested |= r.cancel_requested;
        }
        for (status, at) in changes.iter().filter_map(|c| Some((c.status?, c.time))) {
            if status.is_terminal() {
                metrics::counter!("capstan_operations_finished_total", "kind" => self.kind.clone(), "status" => status.as_str()).increment(1);
                let seconds = (at - self.created).max(0) as f64 / 1e6;
                // In the operation's span: the line names its trace.
                tracing::info!(kind = %self.kind, status = status.as_str(), seconds, "operation finished");
                metrics::histogram!("capstan_operation_duration_seconds", "kind" => self.kind.clone(), "status" => status.as_str()).record(seconds);
            }
        }
        Ok(())
    }

    fn step_ref(&self, i: usize) -> StepChange {
        StepChange {
            index: self.steps[i].index,
            name: self.steps[i].name.clone(),
            phase: self.steps[i].phase.clone(),
            update: None,
        }
    }

    /// The change moving step `i`; a finished step advances the percent unless the
    /// operation is stopping (steps skipped after a failure are not progress).
    fn step_change(
        &self,
        i: usize,
        event: EventType,
        update: StepUpdate,
        message: String,
        state: Option<serde_json::Value>,
    ) -> Change {
        let mut percent = None;
        if update.status.is_terminal() && !self.stopping {
            let done = self.steps.iter().filter(|s| s.status.is_terminal()).count() + 1;
            percent = Some((done * 100 / self.steps.len().max(1)) as i64);
        }
        Change {
            step: Some(StepChange {
                update: Some(update),
                ..self.step_ref(i)
            }),
            percent,
            state,
            ..Change::new(event, message, now_micros())
        }
    }

    /// Moves step `i` (see `step_change`).
    async fn move_step(
        &mut self,
        i: usize,
        event: EventType,
        update: StepUpdate,
        message: String,
        state: Option<serde_json::Value>,
    ) -> Result<()> {
        let status = update.status;
        let change = self.step_change(i, event, update, message, state);
        self.record(change).await?;
        self.steps[i].status = status;
        Ok(())
    }
}

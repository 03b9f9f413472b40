//! The durable operations engine: creates operations, runs them (DIRECT on this replica,
//! QUEUED through leased jobs that any replica's worker claims), records every change
//! with its event, resumes crashed work from the last finished step, and cancels.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use super::{
    now_micros,
    operation::{EventType, ExecutionMode, OpStatus, Operation, OperationError, Step, StepStatus},
    paging,
    watch::Hub,
    workflow::{Execution, StepCx, StepOutcome, StopReason, Workflow},
    Micros,
};
use crate::{
    error::{Error, Result, Validator},
    store::{
        Change, Created, Hint, JobStart, Lease, NewOperation, OpCursor, OpFilter, OperationStore,
        Recorded, StepChange, StepUpdate,
    },
};

/// Fault injection for tests and drills; both off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// This step fails after doing its work, so compensations have something to undo.
    pub fail_step: Option<String>,
    /// The process aborts when this step starts: a crash, for resume drills.
    pub abort_at_step: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this process in leases and notifications.
    pub replica_id: String,
    pub default_mode: ExecutionMode,
    /// A worker that stops heartbeating loses its job after this long.
    pub lease: Duration,
    /// Operations this replica runs at once (DIRECT ones count too).
    pub worker_concurrency: usize,
    /// Whether this replica claims queued jobs; `false` makes an API-only replica that
    /// runs only its own DIRECT work.
    pub queue_workers: bool,
    /// How often idle workers look for jobs and watchers re-read the store when no
    /// notification woke them.
    pub poll_interval: Duration,
    /// Idle watch streams get a heartbeat this often.
    pub watch_heartbeat: Duration,
    /// A job claimed more often than this (a crash loop) is failed instead of run again.
    pub max_attempts: i64,
    pub faults: Faults,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            replica_id: format!("replica-{}", Uuid::new_v4().simple()),
            default_mode: ExecutionMode::Direct,
            lease: Duration::from_secs(30),
            worker_concurrency: 4,
            queue_workers: true,
            poll_interval: Duration::from_secs(1),
            watch_heartbeat: Duration::from_secs(15),
            max_attempts: 5,
            faults: Faults::default(),
        }
    }
}

/// A request to start an operation.
#[derive(Debug, Clone)]
pub struct StartOperation {
    pub kind: String,
    pub params: serde_json::Value,
    pub request_id: Option<String>,
    /// `None`: the configured default.
    pub mode: Option<ExecutionMode>,
}

#[derive(Debug, Clone, Default)]
pub struct ListOperations {
    pub filter: OpFilter,
    pub page_size: i32,
    pub page_token: String,
}

pub struct Engine {
    store: Arc<dyn OperationStore>,
    workflows: HashMap<String, Arc<dyn Workflow>>,
    pub(super) cfg: EngineConfig,
    pub(super) hub: Hub,
    jobs_wake: Notify,
    /// Cancellation signals of the operations running here.
    local: Mutex<HashMap<Uuid, CancellationToken>>,
    /// Bounds what runs here at once, DIRECT and QUEUED alike.
    slots: Arc<Semaphore>,
    pub(super) watch_slots: Arc<Semaphore>,
    pub(super) shutdown: CancellationToken,
    tasks: TaskTracker,
}

const MAX_REQUEST_ID_CHARS: usize = 128;
const MAX_WATCHERS: usize = 10_000;

impl Engine {
    pub fn new(
        store: Arc<dyn OperationStore>,
        cfg: EngineConfig,
        workflows: impl IntoIterator<Item = (String, Arc<dyn Workflow>)>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            workflows: workflows.into_iter().collect(),
            slots: Arc::new(Semaphore::new(cfg.worker_concurrency.max(1))),
            cfg,
            hub: Hub::default(),
            jobs_wake: Notify::new(),
            local: Mutex::new(HashMap::new()),
            watch_slots: Arc::new(Semaphore::new(MAX_WATCHERS)),
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    pub fn store(&self) -> &Arc<dyn OperationStore> {
        &self.store
    }

    /// Starts the job worker and, on Postgres, the listener for other replicas' hints.
    pub fn spawn_background(self: &Arc<Self>) {
        if self.cfg.queue_workers {
            let this = self.clone();
            self.tasks.spawn(async move { this.worker_loop().await });
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let Some(mut hints) = this.store.hints().await else {
                return;
            };
            loop {
                tokio::select! {
                    h = hints.next() => match h {
                        Some(Hint::Jobs) => this.jobs_wake.notify_one(),
                        Some(Hint::Operation(id)) => this.hub.wake(id),
                        None => {
                            tracing::warn!("notification stream ended; workers and watchers fall back to polling");
                            return;
                        }
                    },
                    _ = this.shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Waits until every execution of this replica has stopped (after shutdown they
    /// release their leases at the next step boundary).
    pub async fn drained(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub async fn start(self: &Arc<Self>, owner: &str, req: StartOperation) -> Result<Operation> {
        let new = self.prepare(owner, req)?;
        let created = self.store.create(&new).await?;
        Ok(self.launch(created))
    }

    /// The operation `req` would create, checked and planned but not stored yet: callers
    /// that store other rows with it (atomically) use this, then [`Engine::launch`].
    pub fn prepare(&self, owner: &str, req: StartOperation) -> Result<NewOperation> {
        let mut v = Validator::default();
        v.check(self.workflows.contains_key(&req.kind), "kind", || {
            format!("unknown operation kind {:?}", req.kind)
        });
        if let Some(r) = &req.request_id {
            v.check(
                !r.is_empty() && r.chars().count() <= MAX_REQUEST_ID_CHARS,
                "request_id",
                || format!("must be 1-{MAX_REQUEST_ID_CHARS} characters"),
            );
        }
        v.finish()?;
        let workflow = self
            .workflows
            .get(&req.kind)
            .ok_or_else(|| Error::invalid("kind", "unknown operation kind"))?;
        let plan = workflow.plan(&req.params)?;
        let mode = req.mode.unwrap_or(self.cfg.default_mode);
        let now = now_micros();
        let op = Operation {
            id: Uuid::now_v7(),
            kind: req.kind.clone(),
            status: OpStatus::Pending,
            progress_percent: 0,
            message: format!("created ({})", mode.as_str()),
            owner: owner.to_string(),
            execution_mode: mode,
            request_id: req.request_id,
            params: req.params,
            state: serde_json::Value::Null,
            result: None,
            error: None,
            cancel_requested: false,
            last_sequence: 0,
            attempts: 0,
            create_time: now,
            update_time: now,
            start_time: None,
            end_time: None,
            steps: plan
                .iter()
                .enumerate()
                .map(|(i, s)| Step {
                    index: i as i64,
                    name: s.name.into(),
                    phase: s.phase.into(),
                    status: StepStatus::Pending,
                    detail: String::new(),
                    start_time: None,
                    end_time: None,
                    attempt: 0,
                })
                .collect(),
        };
        let job = match mode {
            ExecutionMode::Direct => JobStart::Leased {
                owner: self.cfg.replica_id.clone(),
                expires: now + self.lease_micros(),
            },
            ExecutionMode::Queued => JobStart::Queued,
        };
        Ok(NewOperation { op, job })
    }

    /// Runs (DIRECT) or announces (QUEUED) what a store created from
    /// [`Engine::prepare`]; an operation that existed already is returned as it is.
    pub fn launch(self: &Arc<Self>, created: Created) -> Operation {
        match created {
            Created::Existing(op) => op,
            Created::New { op, event, lease } => {
                metrics::counter!("capstan_operations_started_total", "kind" => op.kind.clone(), "mode" => op.execution_mode.as_str()).increment(1);
                self.hub.publish(event);
                match lease {
                    Some(lease) => self.spawn_execution(lease, None),
                    None => self.jobs_wake.notify_one(),
                }
                op
            }
        }
    }

    pub async fn get(&self, id: Uuid, owner: Option<&str>) -> Result<Operation> {
        self.store
            .get(id, owner)
            .await?
            .ok_or_else(|| Error::NotFound(format!("operation {id} does not exist")))
    }

    pub async fn list(&self, req: &ListOperations) -> Result<(Vec<Operation>, String)> {
        let size = paging::page_size(req.page_size)?;
        let query = format!(
            "owner={:?};status={:?};kind={:?}",
            req.filter.owner, req.filter.status, req.filter.kind
        );
        let after: Option<OpCursor> = paging::decode(&req.page_token, &query)?;
        let mut ops = self
            .store
            .list(&req.filter, after.as_ref(), size + 1)
            .await?;
        let next = if ops.len() > size {
            ops.truncate(size);
            ops.last()
                .map(|o| paging::encode(&query, &OpCursor(o.create_time, o.id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((ops, next))
    }

    pub async fn cancel(&self, id: Uuid, owner: Option<&str>, reason: &str) -> Result<Operation> {
        let mut v = Validator::default();
        v.check(reason.chars().count() <= 1024, "reason", || {
            "must be at most 1024 characters".into()
        });
        v.finish()?;
        if let Some(event) = self.store.cancel(id, owner, reason, now_micros()).await? {
            self.hub.publish(event);
        }
        let local = self.local.lock().ok().and_then(|m| m.get(&id).cloned());
        if let Some(token) = local {
            token.cancel();
        }
        self.get(id, owner).await
    }

    fn lease_micros(&self) -> Micros {
        self.cfg.lease.as_micros() as Micros
    }

    /// Records changes under `lease` in one transaction and tells local watchers.
    async fn record_all(&self, lease: &Lease, changes: &[Change]) -> Result<Vec<Recorded>> {
        let recorded = self
            .store
            .record_all(lease.operation_id, Some(lease), changes)
            .await?;
        for r in &recorded {
            self.hub.publish(r.event.clone());
        }
        Ok(recorded)
    }

    /// Records a change under `lease` and tells local watchers.
    pub(super) async fn record(&self, lease: &Lease, change: &Change) -> Result<Recorded> {
        let recorded = self
            .store
            .record(lease.operation_id, Some(lease), change)
            .await?;
        self.hub.publish(recorded.event.clone());
        Ok(recorded)
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
                .store
                .claim(
                    &self.cfg.replica_id,
                    now_micros(),
                    self.cfg.lease.as_millis() as i64,
                )
                .await;
            match claimed {
                Ok(Some(lease)) => {
                    metrics::counter!("capstan_jobs_claimed_total").increment(1);
                    tracing::info!(operation = %lease.operation_id, attempt = lease.attempts, "claimed job");
                    self.spawn_execution(lease, Some(permit));
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

    fn spawn_execution(
        self: &Arc<Self>,
        lease: Lease,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let this = self.clone();
        self.tasks.spawn(async move {
            // DIRECT work runs at once, but still takes a slot so that queued work waits.
            let _permit = match permit {
                Some(p) => Some(p),
                None => this.slots.clone().acquire_owned().await.ok(),
            };
            this.execute(lease).await
        });
    }

    async fn execute(self: Arc<Self>, lease: Lease) {
        let id = lease.operation_id;
        let cancel = CancellationToken::new();
        if let Ok(mut m) = self.local.lock() {
            m.insert(id, cancel.clone());
        }
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            self.store.clone(),
            lease.clone(),
            self.cfg.lease,
            lost.clone(),
        ));
        let outcome = Run::new(&self, &lease, cancel, lost).drive().await;
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

/// Extends the lease every third of its length; a refused extension means another
/// worker took over, and `lost` stops this one.
async fn heartbeat(
    store: Arc<dyn OperationStore>,
    lease: Lease,
    length: Duration,
    lost: CancellationToken,
) {
    let ms = length.as_millis() as i64;
    loop {
        tokio::time::sleep(length / 3).await;
        match store.heartbeat(&lease, now_micros(), ms).await {
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

/// One execution of one operation under one lease.
struct Run<'a> {
    engine: &'a Arc<Engine>,
    lease: &'a Lease,
    cancel: CancellationToken,
    lost: CancellationToken,
    kind: String,
    steps: Vec<Step>,
    cancel_requested: bool,
    /// Set once the operation fails or is cancelled.
    stopping: bool,
    /// A finished step's change, written with the next change (the next step's start or
    /// the end) in one transaction: a commit fewer per step. A crash in between re-runs
    /// the step, as a crash before its end was recorded always did.
    deferred: Vec<Change>,
}

enum Stop {
    /// `step`: the step that failed, if one did.
    Failed {
        step: Option<usize>,
        message: String,
    },
    Cancelled,
}

impl<'a> Run<'a> {
    fn new(
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
        }
    }

    /// Records the deferred changes and `change`, in one transaction.
    async fn record(&mut self, change: Change) -> Result<()> {
        if self.lost.is_cancelled() {
            return Err(Error::LeaseLost("the lease heartbeat was refused".into()));
        }
        let mut changes = std::mem::take(&mut self.deferred);
        changes.push(change);
        for r in self.engine.record_all(self.lease, &changes).await? {
            self.cancel_requested |= r.cancel_requested;
        }
        for status in changes.iter().filter_map(|c| c.status) {
            if status.is_terminal() {
                metrics::counter!("capstan_operations_finished_total", "kind" => self.kind.clone(), "status" => status.as_str()).increment(1);
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

    async fn drive(mut self) -> Result<()> {
        let engine = self.engine;
        let id = self.lease.operation_id;
        let op = engine.get(id, None).await?;
        if op.status.is_terminal() {
            return Ok(());
        }
        self.steps = op.steps.clone();
        self.kind = op.kind.clone();
        self.cancel_requested = op.cancel_requested;
        let started = Instant::now();
        let done = self.steps.iter().filter(|s| s.status.is_done()).count();
        let exec = engine
            .workflows
            .get(&op.kind)
            .ok_or_else(|| Error::Internal(format!("no workflow runs kind {:?}", op.kind)))
            .and_then(|w| w.resume(&op));
        let mut exec = match exec {
            Ok(e) => e,
            Err(e) => {
                let message = format!("cannot start the workflow: {e}");
                return self.finish_failed(None, None, message, Vec::new()).await;
            }
        };
        let replica = &engine.cfg.replica_id;
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
        // A worker crashed while this operation was failing: finish the failure (its
        // compensations are idempotent, so those already done run again harmlessly).
        if let Some(i) = self
            .steps
            .iter()
            .position(|s| s.status == StepStatus::Failed)
        {
            let message = self.steps[i].detail.clone();
            return self
                .stop(
                    &mut *exec,
                    Stop::Failed {
                        step: Some(i),
                        message,
                    },
                )
                .await;
        }
        if self.lease.attempts > engine.cfg.max_attempts {
            let message = format!(
                "given up after {} attempts (the workers running it kept crashing)",
                self.lease.attempts - 1
            );
            return self
                .stop(
                    &mut *exec,
                    Stop::Failed {
                        step: None,
                        message,
                    },
                )
                .await;
        }

        for i in 0..self.steps.len() {
            if self.steps[i].status.is_done() {
                continue;
            }
            if self.cancel.is_cancelled() || self.cancel_requested {
                return self.stop(&mut *exec, Stop::Cancelled).await;
            }
            if engine.shutdown.is_cancelled() {
                return self.release().await;
            }
            let name = self.steps[i].name.clone();
            let attempt = self.steps[i].attempt + 1;
            self.move_step(
                i,
                EventType::StepStarted,
                StepUpdate {
                    status: StepStatus::Running,
                    detail: None,
                    started: true,
                    ended: false,
                },
                if attempt > 1 {
                    format!("{name} started (attempt {attempt})")
                } else {
                    format!("{name} started")
                },
                None,
            )
            .await?;
            // A cancellation seen while recording the start stops the step before it runs.
            if self.cancel_requested {
                return self.stop(&mut *exec, Stop::Cancelled).await;
            }
            // After the start is recorded: the crash leaves the step RUNNING, as a real
            // one mid-step would.
            if engine.cfg.faults.abort_at_step.as_deref() == Some(name.as_str()) {
                tracing::error!(step = %name, "aborting the process (--abort-at-step)");
                std::process::abort();
            }
            let cx = StepCx {
                engine,
                lease: self.lease,
                step: self.step_ref(i),
            };
            let step_started = Instant::now();
            let outcome = tokio::select! {
                o = exec.run_step(&name, &cx) => o,
                _ = self.lost.cancelled() => {
                    return Err(Error::LeaseLost("the lease heartbeat was refused".into()))
                }
            };
            let outcome = match outcome {
                Ok(_) if engine.cfg.faults.fail_step.as_deref() == Some(name.as_str()) => Err(
                    Error::FailedPrecondition(format!("injected failure (--fail-step {name})")),
                ),
                o => o,
            };
            let status = match &outcome {
                Ok(StepOutcome::Passed(_)) => "PASSED",
                Ok(StepOutcome::Skipped(_)) => "SKIPPED",
                Err(_) => "FAILED",
            };
            metrics::histogram!("capstan_operation_step_duration_seconds", "kind" => self.kind.clone(), "step" => name.clone(), "status" => status)
                .record(step_started.elapsed().as_secs_f64());
            match outcome {
                Ok(outcome) => {
                    let (status, detail) = match outcome {
                        StepOutcome::Passed(d) => (StepStatus::Passed, d),
                        StepOutcome::Skipped(d) => (StepStatus::Skipped, d),
                    };
                    let message = format!("{name} {}: {detail}", status.as_str().to_lowercase());
                    let change = self.step_change(
                        i,
                        EventType::StepFinished,
                        StepUpdate {
                            status,
                            detail: Some(detail),
                            started: false,
                            ended: true,
                        },
                        message,
                        Some(exec.state()),
                    );
                    self.steps[i].status = status;
                    self.deferred.push(change);
                }
                Err(Error::LeaseLost(m)) => return Err(Error::LeaseLost(m)),
                Err(e) => {
                    let message = e.to_string();
                    return self
                        .stop(
                            &mut *exec,
                            Stop::Failed {
                                step: Some(i),
                                message,
                            },
                        )
                        .await;
                }
            }
        }
        let elapsed = started.elapsed();
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
        // A resumed failure has its failed step recorded already.
        if let Some(i) = failed.filter(|&i| self.steps[i].status != StepStatus::Failed) {
            let name = self.steps[i].name.clone();
            self.move_step(
                i,
                EventType::StepFinished,
                StepUpdate {
                    status: StepStatus::Failed,
                    detail: Some(reason.clone()),
                    started: false,
                    ended: true,
                },
                format!("{name} failed: {reason}"),
                Some(exec.state()),
            )
            .await?;
        }
        // A failed step, or one a crashed worker left RUNNING, may have done part of its
        // work, so it is compensated too.
        let mut compensation_errors = Vec::new();
        for i in (0..self.steps.len()).rev() {
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
                    compensation_errors.push(format!("{name}: {e}"));
                    format!("compensation of {name} failed: {e}")
                }
            };
            let change = Change {
                step: Some(self.step_ref(i)),
                ..Change::new(EventType::Compensation, message, now_micros())
            };
            self.record(change).await?;
        }
        let why = match (&stop, failed) {
            (_, Some(i)) => format!("not run: {} failed", self.steps[i].name),
            (Stop::Failed { message, .. }, None) => format!("not run: {message}"),
            (Stop::Cancelled, None) => "not run: the operation was cancelled".to_string(),
        };
        for i in 0..self.steps.len() {
            if self.steps[i].status.is_terminal() {
                continue;
            }
            let name = self.steps[i].name.clone();
            self.move_step(
                i,
                EventType::StepFinished,
                StepUpdate {
                    status: StepStatus::Skipped,
                    detail: Some(why.clone()),
                    started: false,
                    ended: true,
                },
                format!("{name} skipped: {why}"),
                None,
            )
            .await?;
        }
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
        if !self.engine.store.release(self.lease, now_micros()).await? {
            tracing::warn!(operation = %self.lease.operation_id, "lease was already gone at release");
        }
        Ok(())
    }
}

//! The durable operations engine: creates operations, runs them (DIRECT on this replica,
//! QUEUED through leased jobs that any replica's worker claims), records every change
//! with its event, resumes crashed work from the last finished step, and cancels. It
//! knows no workflow: each registers its kinds, steps and codecs ([`workflow`]).
//!
//! - [`operation`]: operations, steps, events and their state machines;
//! - [`ports`]: the storage it needs (operation store, job queue);
//! - [`retry`]: how failed steps run again;
//! - [`retention`]: purging terminal operations past their retention;
//! - this file: the facade the API and the workflows' services call;
//! - `worker`: the job worker, lease heartbeats and the executions of this replica;
//! - `driver`: one execution of one operation, step by step, and how it stops;
//! - [`watch`]: event streams for watchers.

mod driver;
pub mod operation;
pub mod ports;
pub mod retention;
pub mod retry;
pub mod watch;
mod worker;
pub mod workflow;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use self::{
    operation::{ExecutionMode, OpStatus, Operation, Step},
    ports::{
        Change, Created, JobQueue, JobStart, Lease, NewOperation, OpCursor, OpFilter,
        OperationStore, Recorded, RetentionStore, Retry,
    },
    retry::RetryPolicy,
    watch::Hub,
    workflow::Workflows,
};
use crate::{
    domain::{now_micros, paging, Micros},
    error::{Error, Result, Validator},
};

/// Fault injection for tests and drills; both off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// This step fails after doing its work, so compensations have something to undo.
    pub fail_step: Option<String>,
    /// `Some(n)`: `fail_step` fails only its first `n` attempts, as a transient failure
    /// that its retry policy runs again; `None`: every attempt, for good.
    pub fail_step_times: Option<u32>,
    /// The process aborts when this step starts: a crash, for resume drills.
    pub abort_at_step: Option<String>,
    /// This step never finishes by itself: it waits until cancelled.
    pub hang_step: Option<String>,
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
    /// How a failed step runs again, unless its workflow gives it a policy of its own
    /// ([`workflow::Workflow::retry_policy`]).
    pub step_retry: RetryPolicy,
    /// How long one attempt of a step may run, unless its workflow says otherwise; past
    /// it the step is cancelled and its retry policy decides. `None`: no limit.
    pub step_timeout: Option<Duration>,
    /// How long an operation may take from its creation (or its retry) to its end, unless
    /// its request says otherwise; past it the operation fails and its compensations
    /// run. `None`: no limit.
    pub operation_timeout: Option<Duration>,
    /// Operations of one owner admitted to run at once, across every replica (0: no
    /// limit); later ones stay PENDING until one ends. Applies to operations created
    /// after it is set.
    pub max_running_per_owner: u32,
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
            step_retry: RetryPolicy::default(),
            step_timeout: None,
            operation_timeout: None,
            max_running_per_owner: 0,
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
    /// How long it may take from now to its end; `None`: the configured default.
    pub timeout: Option<Duration>,
}

/// Where a new operation runs and how long it may take, as its request asked (`None`s:
/// the configured defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub mode: Option<ExecutionMode>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct ListOperations {
    pub filter: OpFilter,
    pub page_size: i32,
    pub page_token: String,
}

pub struct Engine {
    store: Arc<dyn OperationStore>,
    jobs: Arc<dyn JobQueue>,
    retention: Arc<dyn RetentionStore>,
    workflows: Workflows,
    cfg: EngineConfig,
    hub: Hub,
    jobs_wake: Notify,
    /// Wakes every execution waiting for admission: an operation ended (here, or on
    /// another replica as its hint says), so keys or an owner's slot may be free.
    admissions_wake: Notify,
    /// Cancellation signals of the operations running here.
    local: Mutex<HashMap<Uuid, CancellationToken>>,
    /// Bounds what runs here at once, DIRECT and QUEUED alike.
    slots: Arc<Semaphore>,
    watch_slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

const MAX_REQUEST_ID_CHARS: usize = 128;
const MAX_WATCHERS: usize = 10_000;
const MAX_REASON_CHARS: usize = 1024;
/// Longer timeouts are refused: a deadline a year out is a mistake, not a limit.
const MAX_TIMEOUT: Duration = Duration::from_secs(366 * 24 * 3600);

fn check_request_id_in(v: &mut Validator, request_id: Option<&str>) {
    if let Some(r) = request_id {
        v.check(
            !r.is_empty() && r.chars().count() <= MAX_REQUEST_ID_CHARS,
            "request_id",
            || format!("must be 1-{MAX_REQUEST_ID_CHARS} characters"),
        );
    }
}

fn check_request_id(request_id: Option<&str>) -> Result<()> {
    let mut v = Validator::default();
    check_request_id_in(&mut v, request_id);
    Ok(v.finish()?)
}

impl Engine {
    /// An engine on `store` (its operation store, job queue and retention), running
    /// `workflows`.
    pub fn new<S: OperationStore + JobQueue + RetentionStore>(
        store: Arc<S>,
        cfg: EngineConfig,
        workflows: Workflows,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store: store.clone(),
            jobs: store.clone(),
            retention: store,
            workflows,
            slots: Arc::new(Semaphore::new(cfg.worker_concurrency.max(1))),
            cfg,
            hub: Hub::default(),
            jobs_wake: Notify::new(),
            admissions_wake: Notify::new(),
            local: Mutex::new(HashMap::new()),
            watch_slots: Arc::new(Semaphore::new(MAX_WATCHERS)),
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    pub fn store(&self) -> &Arc<dyn OperationStore> {
        &self.store
    }

    pub fn jobs(&self) -> &Arc<dyn JobQueue> {
        &self.jobs
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
        let workflow = self.workflows.get(&req.kind);
        v.check(workflow.is_some(), "kind", || {
            format!("unknown operation kind {:?}", req.kind)
        });
        check_request_id_in(&mut v, req.request_id.as_deref());
        if let Some(t) = req.timeout {
            v.check(!t.is_zero() && t <= MAX_TIMEOUT, "timeout", || {
                format!(
                    "must be positive and at most {} days",
                    MAX_TIMEOUT.as_secs() / 86_400
                )
            });
        }
        v.finish()?;
        let workflow = workflow.ok_or_else(|| Error::invalid("kind", "unknown operation kind"))?;
        let plan = workflow.plan(&req.params)?;
        let keys = workflow.concurrency_keys(owner, &req.params)?;
        let mode = req.mode.unwrap_or(self.cfg.default_mode);
        let now = now_micros();
        let timeout = req
            .timeout
            .or(self.cfg.operation_timeout)
            .map(|t| t.as_micros() as Micros);
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
            deadline: timeout.map(|t| now + t),
            timeout,
            steps: plan
                .iter()
                .enumerate()
                .map(|(i, s)| Step::pending(i, s.name, s.phase))
                .collect(),
        };
        let job = self.job_start(mode, now);
        Ok(NewOperation {
            op,
            job,
            keys,
            owner_limit: self.cfg.max_running_per_owner,
        })
    }

    /// Runs (DIRECT) or announces (QUEUED) what a store created from
    /// [`Engine::prepare`]; an operation that existed already is returned as it is.
    pub fn launch(self: &Arc<Self>, created: Created) -> Operation {
        if let Created::New { op, .. } = &created {
            metrics::counter!("capstan_operations_started_total", "kind" => op.kind.clone(), "mode" => op.execution_mode.as_str()).increment(1);
        }
        self.run_created(created)
    }

    /// RetryOperation: runs a FAILED or CANCELLED operation again from the step its
    /// workflow names (by default its first unfinished one), as a new attempt of the
    /// same operation: the steps before it keep their outcome, the event log goes on.
    /// Idempotent on `request_id`; another status is refused (`Precondition`).
    pub async fn retry(
        self: &Arc<Self>,
        id: Uuid,
        owner: Option<&str>,
        request_id: Option<String>,
    ) -> Result<Operation> {
        check_request_id(request_id.as_deref())?;
        let op = self.get(id, owner).await?;
        let workflow = self
            .workflows
            .get(&op.kind)
            .ok_or_else(|| Error::internal(format!("no workflow runs kind {:?}", op.kind)))?;
        // A repeated request changes nothing, whatever the operation's status now.
        let repeated = request_id.is_some();
        let from_step = if op.status.is_terminal() && op.status != OpStatus::Succeeded {
            workflow.retry_from(&op)?
        } else if repeated {
            0
        } else {
            return Err(ports::retry_refused(op.id, op.status));
        };
        let now = now_micros();
        let message = match op.steps.get(from_step) {
            Some(s) => format!(
                "retried from step {} (after {})",
                s.name,
                op.status.as_str()
            ),
            None => format!("retried (after {})", op.status.as_str()),
        };
        let retry = Retry {
            owner: owner.map(str::to_owned),
            request_id,
            expected_sequence: op.last_sequence,
            from_step: from_step as i64,
            job: self.job_start(op.execution_mode, now),
            keys: workflow.concurrency_keys(&op.owner, &op.params)?,
            deadline: op.timeout.map(|t| now + t),
            message,
            time: now,
        };
        let created = self
            .explained(self.store.retry(id, &retry).await, id, owner)
            .await?;
        if let Created::New { op, .. } = &created {
            metrics::counter!("capstan_operations_retried_total", "kind" => op.kind.clone(), "mode" => op.execution_mode.as_str()).increment(1);
        }
        Ok(self.run_created(created))
    }

    fn job_start(&self, mode: ExecutionMode, now: Micros) -> JobStart {
        match mode {
            ExecutionMode::Direct => JobStart::Leased {
                owner: self.cfg.replica_id.clone(),
                expires: now + self.lease_micros(),
            },
            ExecutionMode::Queued => JobStart::Queued,
        }
    }

    /// Runs or announces a created (or retried) operation.
    fn run_created(self: &Arc<Self>, created: Created) -> Operation {
        match created {
            Created::Existing(op) => op,
            Created::New {
                op,
                event,
                lease,
                waiting,
            } => {
                self.hub.publish(event);
                let admitted = waiting.is_none();
                if let Some(w) = waiting {
                    self.hub.publish(*w);
                }
                match lease {
                    Some(lease) => self.spawn_execution(lease, None, admitted),
                    None => self.jobs_wake.notify_one(),
                }
                op
            }
        }
    }

    pub async fn get(&self, id: Uuid, owner: Option<&str>) -> Result<Operation> {
        match self.store.get(id, owner).await? {
            Some(op) => Ok(op),
            None => Err(self.missing(id, owner).await),
        }
    }

    /// Why operation `id` is not there for `owner`: purged by retention (its tombstone,
    /// which only its owner sees), or it never was.
    async fn missing(&self, id: Uuid, owner: Option<&str>) -> Error {
        match self.retention.purged(id, owner).await {
            Ok(Some(t)) => Error::Purged {
                id: id.to_string(),
                retention_days: t.retention_days,
            },
            Ok(None) => Error::not_found("operation", id),
            Err(e) => e,
        }
    }

    /// A store's answer about operation `id`, its NOT_FOUND explained by [`Self::missing`]
    /// (the operation may have been purged between the engine's read and the write).
    async fn explained<T>(&self, r: Result<T>, id: Uuid, owner: Option<&str>) -> Result<T> {
        match r {
            Err(Error::NotFound {
                kind: "operation", ..
            }) => Err(self.missing(id, owner).await),
            r => r,
        }
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
        v.check(reason.chars().count() <= MAX_REASON_CHARS, "reason", || {
            format!("must be at most {MAX_REASON_CHARS} characters")
        });
        v.finish()?;
        let cancelled = self.store.cancel(id, owner, reason, now_micros()).await;
        if let Some(event) = self.explained(cancelled, id, owner).await? {
            let ended = event.is_terminal();
            self.hub.publish(event);
            if ended {
                self.ended_here();
            }
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
            self.published(r);
        }
        Ok(recorded)
    }

    /// Records a change under `lease` and tells local watchers.
    async fn record(&self, lease: &Lease, change: &Change) -> Result<Recorded> {
        let recorded = self
            .store
            .record(lease.operation_id, Some(lease), change)
            .await?;
        self.published(&recorded);
        Ok(recorded)
    }

    /// Tells local watchers what a write recorded; an operation that ended may have freed
    /// keys or its owner's slot, so admissions and the worker look again.
    fn published(&self, r: &Recorded) {
        self.hub.publish(r.event.clone());
        for e in &r.announced {
            self.hub.publish(e.clone());
        }
        if r.event.is_terminal() {
            self.ended_here();
        }
    }

    fn ended_here(&self) {
        self.admissions_wake.notify_waiters();
        self.jobs_wake.notify_one();
    }
}

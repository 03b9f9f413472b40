//! What a workflow gives the engine: the operation kinds it runs, its plan of steps, and
//! an execution that runs one step at a time and undoes its effects on failure.
//!
//! The engine owns durability: it records each step's start and end with the workflow's
//! state, skips the steps a resumed operation already finished, runs compensations in
//! reverse, and keeps status and percent moving forward. A workflow only has to make
//! each step and each compensation idempotent. Its parameters, state and result are
//! JSON the engine stores without reading; the workflow encodes and decodes them.
//!
//! # Adding a workflow
//!
//! 1. A folder `domain/<feature>/`: a type implementing [`Workflow`] (the kinds it runs,
//!    every step it may plan, `plan` refusing parameters it cannot run, `resume` restoring
//!    an [`Execution`] from the operation's parameters and state) and that execution, one
//!    idempotent step at a time. The ports it needs live in the folder; their adapters
//!    in `store/` or `clients/`.
//! 2. When clients start it or see its result: its messages and its case of the
//!    `OperationResult` oneof in `proto/capstan/pipeline/v1/`, and `api/<feature>.rs`
//!    with its RPCs and the result's mapping to the wire.
//! 3. One line in `app::features`: the workflow and its result mapping. (`domain/noop/`
//!    is the smallest example: no proto, no API, registered by the tests that run it.)
//!
//! Nothing in `domain/engine/` changes.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    operation::{EventType, Operation},
    ports::{Change, Lease, StepChange},
    retry::RetryPolicy,
    Engine,
};
use crate::{
    domain::now_micros,
    error::{Error, Result},
};

/// One planned step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSpec {
    pub name: &'static str,
    pub phase: &'static str,
}

/// How a step ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Passed(String),
    /// Not applicable here (for example an unconfigured external provider), with why.
    Skipped(String),
}

pub trait Workflow: Send + Sync + 'static {
    /// The operation kinds this workflow runs (several requests may share one workflow).
    fn kinds(&self) -> Vec<String>;

    /// Every step any of its plans may contain (fault injection names one of them).
    fn steps(&self) -> Vec<StepSpec>;

    /// The steps an operation with these parameters runs, in order; refuses parameters
    /// it cannot run.
    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>>;

    /// The concurrency keys an operation of `owner` with these (planned) parameters holds
    /// while it runs: operations sharing a key run one at a time, in order of arrival,
    /// across every replica. Keys are the workflow's own names (a demo's alias, a graph).
    fn concurrency_keys(&self, _owner: &str, _params: &serde_json::Value) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// How `step` runs again after a failure; `None`: the engine's default policy.
    fn retry_policy(&self, _step: &str) -> Option<RetryPolicy> {
        None
    }

    /// How long one attempt of `step` may run before it is cancelled (and retried or
    /// failed by its policy); `None`: the engine's default.
    fn step_timeout(&self, _step: &str) -> Option<std::time::Duration> {
        None
    }

    /// The step a RetryOperation of `op` (FAILED or CANCELLED, its compensations done)
    /// runs again from; it and every step after it run, the ones before do not. By
    /// default the first step not finished for good: right for a workflow whose
    /// compensations leave what passed steps made usable for the steps after them (or
    /// whose later steps restore it). One whose compensations undo passed steps' work
    /// returns an earlier step, or refuses (`Precondition`, saying why).
    fn retry_from(&self, op: &Operation) -> Result<usize> {
        Ok(op
            .steps
            .iter()
            .position(|s| !s.finished_for_good())
            .unwrap_or(op.steps.len()))
    }

    /// An execution of `op`, restored from its parameters and the state that its finished
    /// steps saved.
    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>>;
}

#[async_trait]
pub trait Execution: Send {
    async fn run_step(&mut self, step: &str, cx: &StepCx<'_>) -> Result<StepOutcome>;

    /// Undoes what `step` did, idempotently. `Ok(None)`: nothing to undo.
    async fn compensate(&mut self, step: &str) -> Result<Option<String>>;

    /// What later steps (and a resumed execution) need; saved with every finished step.
    fn state(&self) -> serde_json::Value;

    /// The operation's result so far, encoded by the workflow.
    fn result(&self) -> Option<serde_json::Value>;

    /// Told why the operation stops, before its compensations run (which may record it).
    fn stopping(&mut self, _why: &StopReason<'_>) {}
}

/// Why an operation stops: cancelled, or failed (at `step`, when a step failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReason<'a> {
    pub cancelled: bool,
    pub step: Option<&'a str>,
    pub message: &'a str,
}

impl std::fmt::Display for StopReason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.cancelled, self.step) {
            (true, _) => write!(f, "cancelled: {}", self.message),
            (false, Some(step)) => write!(f, "step {step} failed: {}", self.message),
            (false, None) => write!(f, "failed: {}", self.message),
        }
    }
}

/// What a running step may do besides returning: report progress, save its state, and
/// notice that it should stop.
pub struct StepCx<'a> {
    pub(super) engine: &'a Arc<Engine>,
    pub(super) lease: &'a Lease,
    pub(super) step: StepChange,
    pub(super) cancel: CancellationToken,
}

impl StepCx<'_> {
    /// Cancelled when the step must stop (the operation was cancelled, on any replica).
    /// The engine stops awaiting the step at once; work on blocking threads asks it
    /// between units (`is_cancelled` is one atomic load) and returns early.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The lease the step runs under: writes that fence on it fail once another worker
    /// has taken the operation over.
    pub fn lease(&self) -> &Lease {
        self.lease
    }

    /// Records a PROGRESS event for watchers.
    pub async fn progress(&self, message: impl Into<String>) -> Result<()> {
        let change = Change {
            step: Some(self.step.clone()),
            ..Change::new(EventType::Progress, message, now_micros())
        };
        self.engine.record(self.lease, &change).await.map(|_| ())
    }

    /// Saves state mid-step, so that a resume after a crash knows what the step already
    /// did outside (for example the alias value before the demo changed it).
    pub async fn checkpoint(&self, state: &serde_json::Value) -> Result<()> {
        self.engine.store().checkpoint(self.lease, state).await
    }
}

/// The workflows an engine runs, by operation kind.
#[derive(Clone, Default)]
pub struct Workflows {
    by_kind: HashMap<String, Arc<dyn Workflow>>,
    /// In registration order, for listing their steps.
    all: Vec<Arc<dyn Workflow>>,
}

impl Workflows {
    /// Registers each workflow under its kinds; a kind claimed twice is a wiring bug.
    pub fn new(workflows: impl IntoIterator<Item = Arc<dyn Workflow>>) -> Result<Self> {
        let mut this = Self::default();
        for w in workflows {
            for kind in w.kinds() {
                if this.by_kind.insert(kind.clone(), w.clone()).is_some() {
                    return Err(Error::internal(format!(
                        "two workflows run operation kind {kind:?}"
                    )));
                }
            }
            this.all.push(w);
        }
        Ok(this)
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Workflow>> {
        self.by_kind.get(kind)
    }

    /// Every step name of every workflow, each once.
    pub fn step_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for s in self.all.iter().flat_map(|w| w.steps()) {
            if !names.contains(&s.name) {
                names.push(s.name);
            }
        }
        names
    }
}

/// Parameters as a workflow planned them: a request the workflow cannot read is refused.
pub fn params<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| Error::invalid("params", e.to_string()))
}

/// Stored JSON of an operation (its parameters) that the workflow wrote itself; `what`
/// names it in the error.
pub fn stored<T: DeserializeOwned>(value: &serde_json::Value, what: &str) -> Result<T> {
    serde_json::from_value(value.clone())
        .map_err(|e| Error::internal_from(format!("stored {what} unreadable"), e))
}

/// [`stored`] state, where `null` (no step saved any yet) is the default.
pub fn stored_state<T: DeserializeOwned + Default>(
    value: &serde_json::Value,
    what: &str,
) -> Result<T> {
    if value.is_null() {
        return Ok(T::default());
    }
    stored(value, what)
}

/// A workflow's state or result as the engine stores it.
pub fn encode<T: Serialize>(value: &T, what: &str) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize the {what}");
        serde_json::Value::Null
    })
}

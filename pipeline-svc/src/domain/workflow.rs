//! What a workflow gives the engine: its plan of steps, and an execution that runs one
//! step at a time and undoes its effects on failure.
//!
//! The engine owns durability: it records each step's start and end with the workflow's
//! state, skips the steps a resumed operation already finished, runs compensations in
//! reverse, and keeps status and percent moving forward. A workflow only has to make
//! each step and each compensation idempotent.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    engine::Engine,
    now_micros,
    operation::{EventType, Operation, OperationResult},
};
use crate::{
    error::Result,
    store::{Change, Lease, StepChange},
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
    /// The steps an operation with these parameters runs, in order.
    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>>;

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

    /// The operation's result so far.
    fn result(&self) -> Option<OperationResult>;

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

/// What a running step may do besides returning: report progress and save its state.
pub struct StepCx<'a> {
    pub(super) engine: &'a Arc<Engine>,
    pub(super) lease: &'a Lease,
    pub(super) step: StepChange,
}

impl StepCx<'_> {
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
    /// did outside (for example the alias value before the run changed it).
    pub async fn checkpoint(&self, state: &serde_json::Value) -> Result<()> {
        self.engine.store().checkpoint(self.lease, state).await
    }
}

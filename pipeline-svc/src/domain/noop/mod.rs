//! `noop`: a workflow of N steps (`s0`, `s1`, …) that do nothing but what their
//! parameters ask (sleep, report progress, fail for good or for a while, fail a
//! compensation). It shows what the
//! engine itself costs and does, with no science or provisioning in the way: the engine's
//! behaviour tests and the pipeline benchmark run it. The server does not register it;
//! whoever wants it does (`app::start_with`, `Engine::new`).
//!
//! A [`Probe`] sees each step and compensation as it happens, and can hold a step
//! mid-way: a test uses it to crash, cancel or shut down at a precise point.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    domain::engine::{
        operation::Operation,
        workflow::{self, Execution, StepCx, StepOutcome, StepSpec, Workflow},
    },
    error::{Error, Result},
};

pub const KIND: &str = "noop";
pub const MAX_STEPS: usize = 200;

/// What a noop operation does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NoopParams {
    /// 1 to [`MAX_STEPS`].
    pub steps: usize,
    /// Each step sleeps this long.
    pub sleep_ms: u64,
    /// PROGRESS events each step records.
    pub progress_per_step: usize,
    /// This step fails (after its progress and sleep), for good.
    pub fail_at: Option<usize>,
    /// `(step, times)`: the step fails as unavailable its first `times` runs in an
    /// execution (as when a dependency is down for a while), then passes.
    pub unavailable: Option<(usize, usize)>,
    /// This step's compensation fails.
    pub fail_compensation_at: Option<usize>,
    /// Concurrency keys the operation holds while it runs.
    pub keys: Vec<String>,
}

impl NoopParams {
    pub fn steps(steps: usize) -> Self {
        Self {
            steps,
            ..Self::default()
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        workflow::encode(self, "noop parameters")
    }
}

/// Sees a noop execution from inside; every method does nothing unless overridden.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// Step `index` did its progress and sleep; it finishes (or fails) when this returns.
    async fn step(&self, _index: usize) {}
    /// Step `index` is being compensated.
    fn compensation(&self, _index: usize) {}
}

struct Unobserved;
impl Probe for Unobserved {}

pub struct Noop {
    probe: Arc<dyn Probe>,
}

impl Noop {
    pub fn new() -> Arc<Self> {
        Self::observed(Arc::new(Unobserved))
    }

    pub fn observed(probe: Arc<dyn Probe>) -> Arc<Self> {
        Arc::new(Self { probe })
    }
}

/// `s0` … `s199`, made once: step names are `'static` like every workflow's.
fn all_steps() -> &'static [StepSpec] {
    static STEPS: OnceLock<Vec<StepSpec>> = OnceLock::new();
    STEPS.get_or_init(|| {
        (0..MAX_STEPS)
            .map(|i| StepSpec {
                name: Box::leak(format!("s{i}").into_boxed_str()),
                phase: "noop",
            })
            .collect()
    })
}

fn index_of(step: &str) -> Result<usize> {
    step.strip_prefix('s')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::internal(format!("noop has no step {step:?}")))
}

impl Workflow for Noop {
    fn kinds(&self) -> Vec<String> {
        vec![KIND.to_string()]
    }

    fn steps(&self) -> Vec<StepSpec> {
        all_steps().to_vec()
    }

    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>> {
        let p: NoopParams = workflow::params(params)?;
        if !(1..=MAX_STEPS).contains(&p.steps) {
            return Err(Error::invalid("steps", format!("must be 1-{MAX_STEPS}")));
        }
        Ok(all_steps()[..p.steps].to_vec())
    }

    fn concurrency_keys(&self, _owner: &str, params: &serde_json::Value) -> Result<Vec<String>> {
        Ok(workflow::params::<NoopParams>(params)?.keys)
    }

    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        Ok(Box::new(NoopExecution {
            params: workflow::stored(&op.params, "noop parameters")?,
            state: workflow::stored_state(&op.state, "noop state")?,
            probe: self.probe.clone(),
            unavailable_runs: 0,
        }))
    }
}

/// Saved with every finished step, so that a resume carries it over.
#[derive(Debug, Default, Serialize, Deserialize)]
struct NoopState {
    done: usize,
}

struct NoopExecution {
    params: NoopParams,
    state: NoopState,
    probe: Arc<dyn Probe>,
    /// How often the `unavailable` step failed in this execution.
    unavailable_runs: usize,
}

#[async_trait]
impl Execution for NoopExecution {
    async fn run_step(&mut self, step: &str, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let i = index_of(step)?;
        for k in 0..self.params.progress_per_step {
            cx.progress(format!("{step} progress {k}")).await?;
        }
        if self.params.sleep_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.params.sleep_ms)).await;
        }
        self.probe.step(i).await;
        if self.params.fail_at == Some(i) {
            return Err(Error::Precondition(format!("{step} exploded")));
        }
        if let Some((at, times)) = self.params.unavailable {
            if at == i && self.unavailable_runs < times {
                self.unavailable_runs += 1;
                return Err(Error::unavailable(format!(
                    "{step}'s dependency is down (run {})",
                    self.unavailable_runs
                )));
            }
        }
        self.state.done += 1;
        Ok(StepOutcome::Passed(format!("{step} done")))
    }

    async fn compensate(&mut self, step: &str) -> Result<Option<String>> {
        let i = index_of(step)?;
        self.probe.compensation(i);
        if self.params.fail_compensation_at == Some(i) {
            return Err(Error::unavailable(format!("undo of {step} exploded")));
        }
        Ok(Some(format!("undid {step}")))
    }

    fn state(&self) -> serde_json::Value {
        workflow::encode(&self.state, "noop state")
    }

    fn result(&self) -> Option<serde_json::Value> {
        None
    }
}

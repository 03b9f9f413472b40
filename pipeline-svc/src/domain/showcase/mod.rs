//! The showcase demo: synthetic sales data, three backtested models, their registry runs
//! and the champion's promotion, the guarded-promotion drill, what-if planning from the
//! recorded champion, knowledge retrieval, a briefing, ops checks and cleanup. Every step
//! is idempotent (registry writes carry request ids derived from the operation id), so a
//! resumed operation re-does only unfinished steps.
//!
//! The demo's alias (`demo-production` unless the request names another) is never left on
//! the worse run: cleanup restores the champion, and
//! the compensation of every step that moves the alias (the failure safeguard) restores
//! the champion, or the value before the demo when no champion was recorded yet.
//!
//! - `params`, `state`: what a demo is asked to do, and what its steps keep;
//! - `demo`: one demo's execution, its shared helpers and its safeguard;
//! - `steps/`: one file per step;
//! - `science/`: the pure, deterministic data science the steps call;
//! - ports: [`registry::ModelRegistry`] (registry-svc) and [`embedder::Embedder`] (the
//!   knowledge step's embedding provider).

mod demo;
pub mod embedder;
pub mod params;
pub mod registry;
pub mod science;
pub mod state;
mod steps;

use std::sync::Arc;

use self::{
    demo::Demo, embedder::Embedder, params::DemoParams, params::Scenario, registry::ModelRegistry,
};
use crate::{
    domain::engine::{
        operation::Operation,
        workflow::{self, Execution, StepSpec, Workflow},
    },
    error::Result,
};

/// The alias the demo promotes to and restores.
pub const ALIAS: &str = "demo-production";
/// Registry namespace of the demo's runs, aliases and artifacts: `default`, which a
/// service token without namespace grants may write.
const NAMESPACE: &str = "default";
/// Rolling-origin folds of the backtest.
pub const FOLDS: usize = 3;
/// The largest champion model the planning step downloads.
const MAX_MODEL_BYTES: usize = 64 << 20;
/// Passages retrieved per query.
const PASSAGES: usize = 3;

/// Runs both scenarios, one operation kind each.
pub struct ShowcaseWorkflow {
    registry: Arc<dyn ModelRegistry>,
    embedder: Arc<dyn Embedder>,
}

impl ShowcaseWorkflow {
    pub fn new(registry: Arc<dyn ModelRegistry>, embedder: Arc<dyn Embedder>) -> Arc<Self> {
        Arc::new(Self { registry, embedder })
    }
}

impl Workflow for ShowcaseWorkflow {
    fn kinds(&self) -> Vec<String> {
        Scenario::ALL.iter().map(|s| s.kind()).collect()
    }

    fn steps(&self) -> Vec<StepSpec> {
        params::RICH_STEPS.to_vec()
    }

    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>> {
        let p: DemoParams = workflow::params(params)?;
        p.validate()?;
        Ok(p.scenario.steps().to_vec())
    }

    /// A demo holds its alias: another demo's promotions would make its guarded
    /// promotion compare against the wrong champion and its restore fight theirs.
    fn concurrency_keys(&self, _owner: &str, params: &serde_json::Value) -> Result<Vec<String>> {
        let p: DemoParams = workflow::params(params)?;
        Ok(vec![format!("alias:{}", p.alias)])
    }

    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        Ok(Box::new(Demo::new(
            self.registry.clone(),
            self.embedder.clone(),
            op.id,
            workflow::stored(&op.params, "demo parameters")?,
            workflow::stored_state(&op.state, "demo state")?,
        )))
    }
}

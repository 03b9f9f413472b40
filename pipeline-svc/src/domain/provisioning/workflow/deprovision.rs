//! `provisioning.deprovision_graph`: the graph marked DEPROVISIONING, its database
//! dropped, and its records removed with its subscriptions CANCELLED.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    DeprovisionParams, ProvisioningResult, DEPROVISION_KIND, DEPROVISION_STEPS, DROP_DATABASE,
    MARK_GRAPH, REMOVE_RECORDS, STATE,
};
use crate::{
    domain::{
        engine::{
            operation::Operation,
            workflow::{self, Execution, StepCx, StepOutcome, StepSpec, Workflow},
        },
        now_micros,
        provisioning::{
            model::GraphStatus,
            ports::{GraphDatabases, ProvisioningStore},
        },
    },
    error::{Error, Result},
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DeprovisionState {
    backend: String,
    location: String,
    /// Whether the graph was ACTIVE before this operation marked it (so a failure before
    /// anything was removed can put it back).
    was_active: bool,
    dropped: bool,
    cancelled_subscriptions: u64,
}

pub struct DeprovisionWorkflow {
    store: Arc<dyn ProvisioningStore>,
    databases: Arc<dyn GraphDatabases>,
}

impl DeprovisionWorkflow {
    pub fn new(store: Arc<dyn ProvisioningStore>, databases: Arc<dyn GraphDatabases>) -> Arc<Self> {
        Arc::new(Self { store, databases })
    }
}

impl Workflow for DeprovisionWorkflow {
    fn kinds(&self) -> Vec<String> {
        vec![DEPROVISION_KIND.into()]
    }

    fn steps(&self) -> Vec<StepSpec> {
        DEPROVISION_STEPS.to_vec()
    }

    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>> {
        workflow::params::<DeprovisionParams>(params)?;
        Ok(DEPROVISION_STEPS.to_vec())
    }

    fn retry_from(&self, op: &Operation) -> Result<usize> {
        Err(super::not_retried(op))
    }

    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        Ok(Box::new(Deprovision {
            store: self.store.clone(),
            databases: self.databases.clone(),
            operation_id: op.id,
            params: workflow::stored(&op.params, "deprovisioning parameters")?,
            state: workflow::stored_state(&op.state, STATE)?,
        }))
    }
}

/// The execution of one deprovisioning operation.
struct Deprovision {
    store: Arc<dyn ProvisioningStore>,
    databases: Arc<dyn GraphDatabases>,
    operation_id: Uuid,
    params: DeprovisionParams,
    state: DeprovisionState,
}

impl Deprovision {
    async fn mark_graph(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let id = self.params.graph_id;
        let graph = self
            .store
            .graph(id, None)
            .await?
            .ok_or_else(|| Error::not_found("graph", id))?;
        if !(graph.ready || graph.status == GraphStatus::Deprovisioning) {
            return Err(Error::Precondition(format!(
                "graph {id} is {} and its provisioning has not succeeded; it cannot be deprovisioned now",
                graph.status.as_str()
            )));
        }
        self.state.was_active |= graph.status == GraphStatus::Active;
        self.state.backend = graph.backend.clone();
        self.state.location = graph.location.clone();
        self.store
            .move_graph(
                id,
                GraphStatus::Deprovisioning,
                now_micros(),
                Some(cx.lease()),
            )
            .await?;
        Ok(StepOutcome::Passed(format!(
            "graph {id} \"{}\" is DEPROVISIONING",
            graph.name
        )))
    }

    async fn drop_database(&mut self) -> Result<StepOutcome> {
        let existed = self.databases.remove(self.params.graph_id).await?;
        self.state.dropped = true;
        Ok(StepOutcome::Passed(if existed {
            format!("database {} removed", self.state.location)
        } else {
            format!("database {} was already gone", self.state.location)
        }))
    }

    async fn remove_records(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let reason = format!(
            "graph {} deprovisioned by operation {}",
            self.params.graph_id, self.operation_id
        );
        self.state.cancelled_subscriptions = self
            .store
            .remove_graph(
                self.params.graph_id,
                &reason,
                now_micros(),
                Some(cx.lease()),
            )
            .await?;
        Ok(StepOutcome::Passed(format!(
            "schema record, credit pools and graph row removed; {} subscriptions CANCELLED",
            self.state.cancelled_subscriptions
        )))
    }
}

#[async_trait]
impl Execution for Deprovision {
    async fn run_step(&mut self, step: &str, cx: &StepCx<'_>) -> Result<StepOutcome> {
        match step {
            MARK_GRAPH => self.mark_graph(cx).await,
            DROP_DATABASE => self.drop_database().await,
            REMOVE_RECORDS => self.remove_records(cx).await,
            other => Err(Error::internal(format!(
                "deprovisioning has no step {other:?}"
            ))),
        }
    }

    async fn compensate(&mut self, step: &str) -> Result<Option<String>> {
        if step != MARK_GRAPH || !self.state.was_active {
            // Removing a database or records cannot be undone; a repeated
            // DeprovisionGraph finishes the job.
            return Ok(None);
        }
        let id = self.params.graph_id;
        // The database itself says whether the drop happened (a crash may have hidden it
        // from the state).
        if self.state.dropped || !self.databases.exists(id).await? {
            return Ok(Some(format!(
                "graph {id} stays DEPROVISIONING: its database is gone; call DeprovisionGraph again to finish"
            )));
        }
        match self
            .store
            .move_graph(id, GraphStatus::Active, now_micros(), None)
            .await
        {
            Ok(_) => Ok(Some(format!("graph {id} is ACTIVE again"))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn state(&self) -> serde_json::Value {
        workflow::encode(&self.state, STATE)
    }

    fn result(&self) -> Option<serde_json::Value> {
        Some(super::result(ProvisioningResult {
            graph_id: self.params.graph_id.to_string(),
            database_backend: self.state.backend.clone(),
            database_location: self.state.location.clone(),
            deprovisioned: self.state.dropped,
            ..Default::default()
        }))
    }
}

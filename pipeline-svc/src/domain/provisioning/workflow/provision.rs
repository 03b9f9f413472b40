//! `provisioning.graph` and `provisioning.repository_access`: a graph, its database and
//! schema, its schema record, a credit pool and an ACTIVE subscription, or a subscription to
//! the shared repository graph (created on first use).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    spec_violations, ProvisionParams, ProvisioningResult, ACTIVATE_SUBSCRIPTION, ALLOCATE_GRAPH,
    APPLY_SCHEMA, CREATE_CREDIT_POOL, CREATE_DATABASE, PERSIST_SCHEMA, PROVISION_KIND,
    PROVISION_STEPS, REPOSITORY_ACCESS_KIND, STATE, SUBSCRIPTION_PROVISIONING, VALIDATE_SPEC,
};
use crate::{
    domain::{
        engine::{
            operation::Operation,
            workflow::{self, Execution, StepCx, StepOutcome, StepSpec, StopReason, Workflow},
        },
        now_micros,
        provisioning::{
            ddl,
            model::{CreditPool, GraphKind, SchemaRecord, SubscriptionStatus, REPOSITORY_OWNER},
            ports::{GraphDatabases, NewGraph, ProvisioningStore},
            ValidSchema,
        },
    },
    error::{Error, Result},
};

/// How often a request for a repository graph that another operation is creating looks
/// again, and for how long.
const REPOSITORY_POLL: Duration = Duration::from_millis(50);
const REPOSITORY_WAIT: Duration = Duration::from_secs(60);

/// Why the operation stopped, as the subscription's reason will say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Stopped {
    cancelled: bool,
    reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ProvisionState {
    /// Whether this operation created the graph (always, unless it reuses a repository's).
    owns_graph: Option<bool>,
    backend: String,
    location: String,
    tables: Vec<String>,
    stopped: Option<Stopped>,
}

pub struct ProvisionWorkflow {
    store: Arc<dyn ProvisioningStore>,
    databases: Arc<dyn GraphDatabases>,
}

impl ProvisionWorkflow {
    pub fn new(store: Arc<dyn ProvisioningStore>, databases: Arc<dyn GraphDatabases>) -> Arc<Self> {
        Arc::new(Self { store, databases })
    }
}

impl Workflow for ProvisionWorkflow {
    fn kinds(&self) -> Vec<String> {
        vec![PROVISION_KIND.into(), REPOSITORY_ACCESS_KIND.into()]
    }

    fn steps(&self) -> Vec<StepSpec> {
        PROVISION_STEPS.to_vec()
    }

    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>> {
        let p: ProvisionParams = workflow::params(params)?;
        p.spec.validate().map_err(spec_violations)?;
        Ok(PROVISION_STEPS.to_vec())
    }

    /// A provisioning holds its graph's name within its owner: two requests for one
    /// name never race to allocate it or its database.
    fn concurrency_keys(&self, _owner: &str, params: &serde_json::Value) -> Result<Vec<String>> {
        let p: ProvisionParams = workflow::params(params)?;
        let owner = match p.repository {
            Some(_) => REPOSITORY_OWNER,
            None => p.user_id.as_str(),
        };
        Ok(vec![format!("graph:{owner}/{}", p.graph_name)])
    }

    fn retry_from(&self, op: &Operation) -> Result<usize> {
        Err(super::not_retried(op))
    }

    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        Ok(Box::new(Provision {
            store: self.store.clone(),
            databases: self.databases.clone(),
            operation_id: op.id,
            params: workflow::stored(&op.params, "provisioning parameters")?,
            state: workflow::stored_state(&op.state, STATE)?,
            valid: None,
        }))
    }
}

/// The execution of one provisioning operation.
struct Provision {
    store: Arc<dyn ProvisioningStore>,
    databases: Arc<dyn GraphDatabases>,
    operation_id: Uuid,
    params: ProvisionParams,
    state: ProvisionState,
    valid: Option<ValidSchema>,
}

impl Provision {
    /// The validated schema (validation is pure, so a resumed run repeats it).
    fn valid(&mut self) -> Result<&ValidSchema> {
        if self.valid.is_none() {
            self.valid = Some(self.params.spec.validate().map_err(spec_violations)?);
        }
        self.valid
            .as_ref()
            .ok_or_else(|| Error::internal("no validated schema"))
    }

    /// Whether this operation created the graph. Known from the state once
    /// `allocate_graph` finished; before (a crash inside it), the graph row says.
    async fn owns_graph(&self) -> Result<bool> {
        if self.params.repository.is_none() {
            // The id was made for this operation alone.
            return Ok(true);
        }
        if let Some(owns) = self.state.owns_graph {
            return Ok(owns);
        }
        Ok(self
            .store
            .graph(self.params.graph_id, None)
            .await?
            .is_some_and(|g| g.operation_id == self.operation_id))
    }

    fn new_graph(&self) -> NewGraph {
        let p = &self.params;
        NewGraph {
            id: p.graph_id,
            owner: match p.repository {
                Some(_) => REPOSITORY_OWNER.to_string(),
                None => p.user_id.clone(),
            },
            name: p.graph_name.clone(),
            kind: match p.repository {
                Some(_) => GraphKind::Repository,
                None => GraphKind::User,
            },
            repository: p.repository.clone(),
            backend: self.databases.backend().to_string(),
            location: self.databases.location(p.graph_id),
            operation_id: self.operation_id,
            time: now_micros(),
        }
    }

    async fn validate_spec(&mut self) -> Result<StepOutcome> {
        let valid = self.valid()?;
        let tables: Vec<String> = valid.tables().into_iter().map(|t| t.name).collect();
        Ok(StepOutcome::Passed(format!(
            "{} schema \"{}\" {}: {} tables ({})",
            valid.schema_type(),
            valid.name(),
            valid.version(),
            tables.len(),
            tables.join(", ")
        )))
    }

    async fn subscription_provisioning(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let sub = self
            .store
            .move_subscription(
                self.params.subscription_id,
                SubscriptionStatus::Provisioning,
                "",
                now_micros(),
                Some(cx.lease()),
            )
            .await?;
        Ok(StepOutcome::Passed(format!(
            "subscription {} is {} (plan {})",
            sub.id,
            sub.status.as_str(),
            sub.plan.as_str()
        )))
    }

    async fn allocate_graph(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let new = self.new_graph();
        let deadline = tokio::time::Instant::now() + REPOSITORY_WAIT;
        let mut announced = false;
        loop {
            if self.store.insert_graph(&new, Some(cx.lease())).await? {
                break self.allocated(true);
            }
            let Some(g) = self.store.graph(new.id, None).await? else {
                // Its creator failed and removed it just now: create it here.
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Precondition(format!(
                        "repository graph {} kept changing hands; retry later",
                        new.id
                    )));
                }
                tokio::time::sleep(REPOSITORY_POLL).await;
                continue;
            };
            if g.operation_id == self.operation_id {
                break self.allocated(true);
            }
            if self.params.repository.is_none() {
                return Err(Error::Precondition(format!(
                    "graph {} belongs to operation {}",
                    g.id, g.operation_id
                )));
            }
            if g.ready {
                break self.allocated(false);
            }
            if tokio::time::Instant::now() >= deadline {
                // Precondition, not unavailable: the step waited long enough; running it
                // again would only wait longer.
                return Err(Error::Precondition(format!(
                    "repository graph {} is still being provisioned by operation {} after {} s; retry later",
                    g.id,
                    g.operation_id,
                    REPOSITORY_WAIT.as_secs()
                )));
            }
            if !announced {
                cx.progress(format!(
                    "waiting for operation {}, which provisions the repository graph {}",
                    g.operation_id, g.id
                ))
                .await?;
                announced = true;
            }
            tokio::time::sleep(REPOSITORY_POLL).await;
        }
    }

    fn allocated(&mut self, owns: bool) -> Result<StepOutcome> {
        self.state.owns_graph = Some(owns);
        self.state.backend = self.databases.backend().to_string();
        self.state.location = self.databases.location(self.params.graph_id);
        Ok(StepOutcome::Passed(if owns {
            format!(
                "graph {} \"{}\" allocated ({} at {})",
                self.params.graph_id,
                self.params.graph_name,
                self.state.backend,
                self.state.location
            )
        } else {
            format!(
                "repository graph {} exists and is active; it is shared",
                self.params.graph_id
            )
        }))
    }

    async fn create_database(&mut self) -> Result<StepOutcome> {
        if !self.owns_graph().await? {
            return Ok(StepOutcome::Skipped(
                "the shared repository graph has its database".into(),
            ));
        }
        self.databases.create(self.params.graph_id).await?;
        Ok(StepOutcome::Passed(format!(
            "{} database created at {}",
            self.databases.backend(),
            self.databases.location(self.params.graph_id)
        )))
    }

    async fn apply_schema(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        if !self.owns_graph().await? {
            return Ok(StepOutcome::Skipped(
                "the shared repository graph has its schema".into(),
            ));
        }
        let graph_id = self.params.graph_id;
        let dialect = self.databases.dialect(graph_id);
        let valid = self.valid()?.clone();
        // Dropping first makes a re-run after a crash start from the empty database the
        // first run found (nobody can have used a graph that is still provisioning).
        let statements: Vec<String> = ddl::drop_statements(&valid, &dialect)
            .into_iter()
            .chain(ddl::generate(&valid, &dialect))
            .collect();
        cx.progress(format!(
            "applying {} statements in one transaction",
            statements.len()
        ))
        .await?;
        self.databases.execute(graph_id, &statements).await?;
        let expected: Vec<String> = valid.tables().into_iter().map(|t| t.name).collect();
        let present = self.databases.tables(graph_id).await?;
        let missing: Vec<&String> = expected.iter().filter(|t| !present.contains(t)).collect();
        if !missing.is_empty() {
            return Err(Error::internal(format!(
                "the schema was applied but tables are missing: {missing:?}"
            )));
        }
        self.state.tables = expected;
        Ok(StepOutcome::Passed(format!(
            "{} tables created: {}",
            self.state.tables.len(),
            self.state.tables.join(", ")
        )))
    }

    async fn persist_schema(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        if !self.owns_graph().await? {
            return Ok(StepOutcome::Skipped(
                "the shared repository graph has its schema record".into(),
            ));
        }
        let graph_id = self.params.graph_id;
        let dialect = self.databases.dialect(graph_id);
        let valid = self.valid()?.clone();
        let record = SchemaRecord {
            graph_id,
            schema_type: valid.schema_type().to_string(),
            name: valid.name().to_string(),
            version: valid.version().to_string(),
            ddl: ddl::generate(&valid, &dialect),
            spec_json: valid.spec_json(),
            tables: valid.tables().into_iter().map(|t| t.name).collect(),
        };
        self.store
            .put_schema(&record, now_micros(), Some(cx.lease()))
            .await?;
        Ok(StepOutcome::Passed(format!(
            "{} schema \"{}\" {} recorded with {} DDL statements",
            record.schema_type,
            record.name,
            record.version,
            record.ddl.len()
        )))
    }

    async fn create_credit_pool(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let p = &self.params;
        let credits = p.plan.credits();
        let pool = self
            .store
            .create_pool(
                &CreditPool {
                    id: p.credit_pool_id,
                    subscription_id: p.subscription_id,
                    graph_id: p.graph_id,
                    user_id: p.user_id.clone(),
                    plan: p.plan,
                    allocated: credits,
                    remaining: credits,
                    create_time: now_micros(),
                },
                Some(cx.lease()),
            )
            .await?;
        Ok(StepOutcome::Passed(format!(
            "credit pool {} with {} credits (plan {})",
            pool.id,
            pool.allocated,
            pool.plan.as_str()
        )))
    }

    async fn activate_subscription(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let p = &self.params;
        self.store
            .activate(
                p.subscription_id,
                p.graph_id,
                now_micros(),
                Some(cx.lease()),
            )
            .await?;
        Ok(StepOutcome::Passed(format!(
            "subscription {} and graph {} are ACTIVE",
            p.subscription_id, p.graph_id
        )))
    }

    /// The subscription's end after a failure or cancellation; idempotent.
    async fn end_subscription(&self) -> Result<Option<String>> {
        let (to, reason) = match &self.state.stopped {
            Some(s) if s.cancelled => (SubscriptionStatus::Cancelled, s.reason.clone()),
            Some(s) => (SubscriptionStatus::Failed, s.reason.clone()),
            None => (
                SubscriptionStatus::Failed,
                format!("provisioning operation {} failed", self.operation_id),
            ),
        };
        match self
            .store
            .move_subscription(self.params.subscription_id, to, &reason, now_micros(), None)
            .await
        {
            Ok(sub) => Ok(Some(format!(
                "subscription {} is {}: {}",
                sub.id,
                sub.status.as_str(),
                sub.reason
            ))),
            // Already ended the other way (cancelled, then failed): it stays ended.
            Err(Error::Precondition(m)) => Ok(Some(m)),
            Err(e) => Err(e),
        }
    }

    async fn undo(&mut self, step: &str) -> Result<Option<String>> {
        let p = self.params.clone();
        Ok(match step {
            VALIDATE_SPEC | ACTIVATE_SUBSCRIPTION => self.end_subscription().await?,
            CREATE_CREDIT_POOL => self
                .store
                .delete_pool(p.subscription_id)
                .await?
                .then(|| format!("credit pool {} deleted", p.credit_pool_id)),
            PERSIST_SCHEMA if self.owns_graph().await? => self
                .store
                .delete_schema(p.graph_id)
                .await?
                .then(|| "schema record deleted".to_string()),
            APPLY_SCHEMA if self.owns_graph().await? => {
                if !self.databases.exists(p.graph_id).await? {
                    return Ok(None);
                }
                let dialect = self.databases.dialect(p.graph_id);
                let drops = ddl::drop_statements(self.valid()?, &dialect);
                self.databases.execute(p.graph_id, &drops).await?;
                Some(format!("{} tables dropped", drops.len()))
            }
            CREATE_DATABASE if self.owns_graph().await? => {
                let location = self.databases.location(p.graph_id);
                self.databases
                    .remove(p.graph_id)
                    .await?
                    .then(|| format!("database {location} removed"))
            }
            ALLOCATE_GRAPH => self
                .store
                .delete_graph(p.graph_id, self.operation_id)
                .await?
                .then(|| format!("graph {} deleted", p.graph_id)),
            _ => None,
        })
    }
}

#[async_trait]
impl Execution for Provision {
    async fn run_step(&mut self, step: &str, cx: &StepCx<'_>) -> Result<StepOutcome> {
        match step {
            VALIDATE_SPEC => self.validate_spec().await,
            SUBSCRIPTION_PROVISIONING => self.subscription_provisioning(cx).await,
            ALLOCATE_GRAPH => self.allocate_graph(cx).await,
            CREATE_DATABASE => self.create_database().await,
            APPLY_SCHEMA => self.apply_schema(cx).await,
            PERSIST_SCHEMA => self.persist_schema(cx).await,
            CREATE_CREDIT_POOL => self.create_credit_pool(cx).await,
            ACTIVATE_SUBSCRIPTION => self.activate_subscription(cx).await,
            other => Err(Error::internal(format!(
                "provisioning has no step {other:?}"
            ))),
        }
    }

    async fn compensate(&mut self, step: &str) -> Result<Option<String>> {
        self.undo(step).await
    }

    fn state(&self) -> serde_json::Value {
        workflow::encode(&self.state, STATE)
    }

    fn result(&self) -> Option<serde_json::Value> {
        let p = &self.params;
        Some(super::result(ProvisioningResult {
            graph_id: p.graph_id.to_string(),
            subscription_id: p.subscription_id.to_string(),
            credit_pool_id: p.credit_pool_id.to_string(),
            schema_type: p.spec.schema_type().to_string(),
            database_backend: self.state.backend.clone(),
            database_location: self.state.location.clone(),
            tables: self.state.tables.clone(),
            deprovisioned: false,
        }))
    }

    fn stopping(&mut self, why: &StopReason<'_>) {
        self.state.stopped = Some(Stopped {
            cancelled: why.cancelled,
            reason: format!("provisioning {why}"),
        });
    }
}

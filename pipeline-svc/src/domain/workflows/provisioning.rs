//! Graph provisioning and deprovisioning (SPEC §3.2) as durable workflows.
//!
//! Every id (subscription, graph, credit pool) is chosen when the operation is created and
//! travels in its parameters, so each step is idempotent: a resumed step finds what it
//! created before and carries on. Each step has a compensation that removes exactly what
//! it created; they run in reverse, and the first step's compensation — the last to run —
//! leaves the subscription FAILED (or CANCELLED) with the reason once nothing is left.
//!
//! A shared repository graph is created by the first operation that needs it; later ones
//! wait for that operation to succeed and only add their subscription and credit pool. The
//! graph row records its creating operation, and only that operation's compensations ever
//! remove the graph, so a failed access request never takes a shared graph down.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    domain::{
        now_micros,
        operation::{Operation, OperationResult},
        provisioning::{
            ddl,
            model::{
                CreditPool, GraphKind, GraphStatus, Plan, Repository, SchemaRecord,
                SubscriptionStatus, REPOSITORY_OWNER,
            },
            ProvisioningResult, SchemaSpec, ValidSchema,
        },
        workflow::{Execution, StepCx, StepOutcome, StepSpec, StopReason, Workflow},
    },
    error::{Error, FieldViolation, Result},
    store::{GraphDatabases, NewGraph, ProvisioningStore},
};

/// `CompleteCheckout` and `ProvisionGraph`.
pub const PROVISION_KIND: &str = "provisioning.graph";
/// `ProvisionRepositoryAccess`.
pub const REPOSITORY_ACCESS_KIND: &str = "provisioning.repository_access";
/// `DeprovisionGraph`.
pub const DEPROVISION_KIND: &str = "provisioning.deprovision_graph";

const fn step(name: &'static str, phase: &'static str) -> StepSpec {
    StepSpec { name, phase }
}

pub const VALIDATE_SPEC: &str = "provision.validate_spec";
pub const SUBSCRIPTION_PROVISIONING: &str = "provision.subscription_provisioning";
pub const ALLOCATE_GRAPH: &str = "provision.allocate_graph";
pub const CREATE_DATABASE: &str = "provision.create_database";
pub const APPLY_SCHEMA: &str = "provision.apply_schema";
pub const PERSIST_SCHEMA: &str = "provision.persist_schema";
pub const CREATE_CREDIT_POOL: &str = "provision.create_credit_pool";
pub const ACTIVATE_SUBSCRIPTION: &str = "provision.activate_subscription";

pub const PROVISION_STEPS: [StepSpec; 8] = [
    step(VALIDATE_SPEC, "validate"),
    step(SUBSCRIPTION_PROVISIONING, "subscription"),
    step(ALLOCATE_GRAPH, "graph"),
    step(CREATE_DATABASE, "database"),
    step(APPLY_SCHEMA, "database"),
    step(PERSIST_SCHEMA, "schema"),
    step(CREATE_CREDIT_POOL, "billing"),
    step(ACTIVATE_SUBSCRIPTION, "subscription"),
];

pub const MARK_GRAPH: &str = "deprovision.mark_graph";
pub const DROP_DATABASE: &str = "deprovision.drop_database";
pub const REMOVE_RECORDS: &str = "deprovision.remove_records";

pub const DEPROVISION_STEPS: [StepSpec; 3] = [
    step(MARK_GRAPH, "graph"),
    step(DROP_DATABASE, "database"),
    step(REMOVE_RECORDS, "graph"),
];

/// How often a request for a repository graph that another operation is creating looks
/// again, and for how long.
const REPOSITORY_POLL: Duration = Duration::from_millis(50);
const REPOSITORY_WAIT: Duration = Duration::from_secs(60);

/// A provisioning operation's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionParams {
    pub subscription_id: Uuid,
    pub graph_id: Uuid,
    pub credit_pool_id: Uuid,
    pub user_id: String,
    pub plan: Plan,
    pub graph_name: String,
    pub spec: SchemaSpec,
    /// Repository access: the repository, whose graph is shared.
    pub repository: Option<String>,
}

impl ProvisionParams {
    /// What the operation reports from the start: the ids it provisions.
    pub fn initial_result(&self) -> OperationResult {
        OperationResult::Provisioning(ProvisioningResult {
            graph_id: self.graph_id.to_string(),
            subscription_id: self.subscription_id.to_string(),
            credit_pool_id: self.credit_pool_id.to_string(),
            schema_type: self.spec.schema_type().to_string(),
            ..Default::default()
        })
    }
}

/// Turns spec violations into request field violations.
pub fn spec_violations(violations: Vec<super::super::provisioning::Violation>) -> Error {
    Error::InvalidArgument(
        violations
            .into_iter()
            .map(|v| FieldViolation::new(v.field, v.description))
            .collect(),
    )
}

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

fn read_state<T: Default + serde::de::DeserializeOwned>(op: &Operation) -> Result<T> {
    if op.state.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(op.state.clone())
        .map_err(|e| Error::Internal(format!("stored provisioning state unreadable: {e}")))
}

fn write_state<T: Serialize>(state: &T) -> serde_json::Value {
    serde_json::to_value(state).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize the provisioning state");
        serde_json::Value::Null
    })
}

impl Workflow for ProvisionWorkflow {
    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>> {
        let p: ProvisionParams = serde_json::from_value(params.clone())
            .map_err(|e| Error::invalid("params", e.to_string()))?;
        p.spec.validate().map_err(spec_violations)?;
        Ok(PROVISION_STEPS.to_vec())
    }

    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        let params: ProvisionParams = serde_json::from_value(op.params.clone()).map_err(|e| {
            Error::Internal(format!("stored provisioning parameters unreadable: {e}"))
        })?;
        Ok(Box::new(ProvisionRun {
            store: self.store.clone(),
            databases: self.databases.clone(),
            operation_id: op.id,
            params,
            state: read_state(op)?,
            valid: None,
        }))
    }
}

struct ProvisionRun {
    store: Arc<dyn ProvisioningStore>,
    databases: Arc<dyn GraphDatabases>,
    operation_id: Uuid,
    params: ProvisionParams,
    state: ProvisionState,
    valid: Option<ValidSchema>,
}

impl ProvisionRun {
    /// The validated schema (validation is pure, so a resumed run repeats it).
    fn valid(&mut self) -> Result<&ValidSchema> {
        if self.valid.is_none() {
            self.valid = Some(self.params.spec.validate().map_err(spec_violations)?);
        }
        self.valid
            .as_ref()
            .ok_or_else(|| Error::Internal("no validated schema".into()))
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
                    return Err(Error::Unavailable(format!(
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
                return Err(Error::FailedPrecondition(format!(
                    "graph {} belongs to operation {}",
                    g.id, g.operation_id
                )));
            }
            if g.ready {
                break self.allocated(false);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
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
            return Err(Error::Internal(format!(
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
            Err(Error::FailedPrecondition(m)) => Ok(Some(m)),
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
impl Execution for ProvisionRun {
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
            other => Err(Error::Internal(format!(
                "provisioning has no step {other:?}"
            ))),
        }
    }

    async fn compensate(&mut self, step: &str) -> Result<Option<String>> {
        self.undo(step).await
    }

    fn state(&self) -> serde_json::Value {
        write_state(&self.state)
    }

    fn result(&self) -> Option<OperationResult> {
        let p = &self.params;
        Some(OperationResult::Provisioning(ProvisioningResult {
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

/// A deprovisioning operation's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeprovisionParams {
    pub graph_id: Uuid,
}

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
    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>> {
        serde_json::from_value::<DeprovisionParams>(params.clone())
            .map_err(|e| Error::invalid("params", e.to_string()))?;
        Ok(DEPROVISION_STEPS.to_vec())
    }

    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        let params: DeprovisionParams = serde_json::from_value(op.params.clone()).map_err(|e| {
            Error::Internal(format!("stored deprovisioning parameters unreadable: {e}"))
        })?;
        Ok(Box::new(DeprovisionRun {
            store: self.store.clone(),
            databases: self.databases.clone(),
            operation_id: op.id,
            params,
            state: read_state(op)?,
        }))
    }
}

struct DeprovisionRun {
    store: Arc<dyn ProvisioningStore>,
    databases: Arc<dyn GraphDatabases>,
    operation_id: Uuid,
    params: DeprovisionParams,
    state: DeprovisionState,
}

impl DeprovisionRun {
    async fn mark_graph(&mut self, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let id = self.params.graph_id;
        let graph = self
            .store
            .graph(id, None)
            .await?
            .ok_or_else(|| Error::NotFound(format!("graph {id} does not exist")))?;
        if !(graph.ready || graph.status == GraphStatus::Deprovisioning) {
            return Err(Error::FailedPrecondition(format!(
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
impl Execution for DeprovisionRun {
    async fn run_step(&mut self, step: &str, cx: &StepCx<'_>) -> Result<StepOutcome> {
        match step {
            MARK_GRAPH => self.mark_graph(cx).await,
            DROP_DATABASE => self.drop_database().await,
            REMOVE_RECORDS => self.remove_records(cx).await,
            other => Err(Error::Internal(format!(
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
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn state(&self) -> serde_json::Value {
        write_state(&self.state)
    }

    fn result(&self) -> Option<OperationResult> {
        Some(OperationResult::Provisioning(ProvisioningResult {
            graph_id: self.params.graph_id.to_string(),
            database_backend: self.state.backend.clone(),
            database_location: self.state.location.clone(),
            deprovisioned: self.state.dropped,
            ..Default::default()
        }))
    }
}

/// Repository access parameters for `repository`'s shared graph.
pub fn repository_params(
    repository: Repository,
    user_id: &str,
    plan: Plan,
    subscription_id: Uuid,
    credit_pool_id: Uuid,
) -> ProvisionParams {
    ProvisionParams {
        subscription_id,
        graph_id: repository.graph_id(),
        credit_pool_id,
        user_id: user_id.to_string(),
        plan,
        graph_name: repository.name.to_string(),
        spec: repository.spec(),
        repository: Some(repository.name.to_string()),
    }
}

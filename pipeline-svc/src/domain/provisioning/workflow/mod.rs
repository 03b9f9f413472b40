//! Graph provisioning and deprovisioning as durable workflows: their kinds, steps,
//! parameters and result. `provision` creates a graph (or a subscription to a shared
//! repository graph), `deprovision` removes one.
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

mod deprovision;
mod provision;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::{deprovision::DeprovisionWorkflow, provision::ProvisionWorkflow};
use super::{
    model::{Plan, Repository},
    SchemaSpec, Violation,
};
use crate::{
    domain::engine::workflow::{self, StepSpec},
    error::{Error, FieldViolation},
};

/// `CompleteCheckout` and `ProvisionGraph`.
/// RetryOperation on a provisioning or deprovisioning: refused, because their
/// compensations removed what the passed steps built (the database, the subscription's
/// progress), so no step could go on from there; a new request starts afresh.
fn not_retried(op: &crate::domain::engine::operation::Operation) -> crate::error::Error {
    Error::Precondition(format!(
        "operation {} ({}) is not retried: its compensations undid what its steps built; \
         start a new one",
        op.id, op.kind
    ))
}

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
    pub fn initial_result(&self) -> serde_json::Value {
        result(ProvisioningResult {
            graph_id: self.graph_id.to_string(),
            subscription_id: self.subscription_id.to_string(),
            credit_pool_id: self.credit_pool_id.to_string(),
            schema_type: self.spec.schema_type().to_string(),
            ..Default::default()
        })
    }
}

/// A deprovisioning operation's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeprovisionParams {
    pub graph_id: Uuid,
}

/// What a provisioning operation produced: the ids from the start, the rest on success.
/// Stored with `"type": "provisioning"`, as results have always been.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "provisioning")]
pub struct ProvisioningResult {
    pub graph_id: String,
    pub subscription_id: String,
    pub credit_pool_id: String,
    pub schema_type: String,
    pub database_backend: String,
    pub database_location: String,
    pub tables: Vec<String>,
    pub deprovisioned: bool,
}

/// The result as an operation stores it.
pub fn result(r: ProvisioningResult) -> serde_json::Value {
    workflow::encode(&r, "provisioning result")
}

/// What an operation's state is called in errors.
const STATE: &str = "provisioning state";

/// Turns spec violations into request field violations.
pub fn spec_violations(violations: Vec<Violation>) -> Error {
    Error::Invalid(
        violations
            .into_iter()
            .map(|v| FieldViolation::new(v.field, v.description))
            .collect(),
    )
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

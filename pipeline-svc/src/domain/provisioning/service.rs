//! What `ProvisioningService` does, free of gRPC: requests are checked here (with field
//! names as the wire spells them), then become operations of the provisioning workflows,
//! created in one transaction with their subscription (and checkout claim).
//!
//! Callers pass the scope of the principal: `None` for admin and service callers, the
//! user id for users. The scope goes into every store query, so a user never reads
//! another's graph or subscription, whichever handler asks.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    model::{Graph, GraphKind, GraphStatus, Plan, Repository, Subscription},
    ports::{GraphCursor, NewCheckout, NewSubscription, ProvisioningStore},
    spec::shown,
    workflow::{
        self, repository_params, spec_violations, DeprovisionParams, ProvisionParams,
        ProvisioningResult, DEPROVISION_KIND, PROVISION_KIND, REPOSITORY_ACCESS_KIND,
    },
    SchemaSpec, Violation,
};
use crate::{
    domain::{
        engine::{operation::Operation, Engine, RunOptions, StartOperation},
        paging,
    },
    error::{Error, FieldViolation, Result, Validator},
};

const MAX_ID_CHARS: usize = 128;
const MAX_NAME_CHARS: usize = 128;
/// Violations reported for one request; the rest are counted.
const MAX_REPORTED: usize = 20;

/// A graph to provision: its name and schema. `schema_field` is where the schema sat in
/// the request (`graph.custom`, `graph.extensions`, `graph.schema_json`), so that a spec
/// violation at `schema.nodes[0].name` is reported as `graph.custom.nodes[0].name`.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphRequest {
    pub name: String,
    /// The schema as read from the request, or why it could not be read (violations with
    /// paths from `schema`); `None` when the request has none.
    pub spec: Option<std::result::Result<SchemaSpec, Vec<Violation>>>,
    pub schema_field: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutRequest {
    pub checkout_id: String,
    pub user_id: String,
    pub plan: String,
    pub graph: GraphRequest,
    pub run: RunOptions,
}

pub struct ProvisioningService {
    engine: Arc<Engine>,
    store: Arc<dyn ProvisioningStore>,
}

/// Checks a name a person chose (user ids, checkout ids, graph names).
fn check_text(v: &mut Validator, field: &str, value: &str, max: usize) {
    let len = value.chars().count();
    v.check(!value.trim().is_empty(), field, || {
        "must not be empty".into()
    });
    v.check(len <= max, field, || {
        format!("is {len} characters long; at most {max} are allowed")
    });
    v.check(!value.chars().any(char::is_control), field, || {
        format!("{} contains control characters", shown(value))
    });
}

fn plan(v: &mut Validator, field: &str, value: &str) -> Plan {
    let plan = if value.is_empty() {
        Some(Plan::Free)
    } else {
        Plan::parse(value)
    };
    v.check(plan.is_some(), field, || {
        format!(
            "{} is not a plan; plans are {}",
            shown(value),
            Plan::names()
        )
    });
    plan.unwrap_or(Plan::Free)
}

fn uuid_field(field: &str, value: &str) -> Result<Uuid> {
    Uuid::parse_str(value)
        .map_err(|_| Error::invalid(field, format!("is not a UUID: {}", shown(value))))
}

fn graph_name(graph: &Graph) -> &str {
    graph.repository.as_deref().unwrap_or(&graph.name)
}

impl ProvisioningService {
    pub fn new(engine: Arc<Engine>, store: Arc<dyn ProvisioningStore>) -> Self {
        Self { engine, store }
    }

    /// The graph request's checks on top of `v`'s, all reported together.
    fn graph_spec(&self, mut v: Validator, graph: &GraphRequest) -> Result<SchemaSpec> {
        check_text(&mut v, "graph.name", &graph.name, MAX_NAME_CHARS);
        v.check(graph.spec.is_some(), "graph", || {
            "must have a schema: custom, extensions or schema_json".into()
        });
        let (spec, spec_errors) = match &graph.spec {
            None => (None, Vec::new()),
            Some(Err(read)) => (None, read.clone()),
            Some(Ok(spec)) => (Some(spec), spec.validate().err().unwrap_or_default()),
        };
        let mut violations = v.finish().err().unwrap_or_default();
        // Descriptions name other fields too ("clashes with schema.nodes[0]").
        let rebase = |text: &str| text.replace("schema.", &format!("{}.", graph.schema_field));
        violations.extend(spec_errors.into_iter().map(|e| {
            let field = match e.field.strip_prefix("schema") {
                Some(rest) => format!("{}{rest}", graph.schema_field),
                None => e.field,
            };
            FieldViolation::new(field, rebase(&e.description))
        }));
        if !violations.is_empty() {
            // They travel twice in one status's trailers (message and details), and
            // HTTP/2 refuses header blocks past 16 KiB.
            if violations.len() > MAX_REPORTED {
                let hidden = violations.len() - (MAX_REPORTED - 1);
                violations.truncate(MAX_REPORTED - 1);
                violations.push(FieldViolation::new(
                    "graph",
                    format!("{hidden} more violations are not shown; fix these first"),
                ));
            }
            return Err(Error::Invalid(violations));
        }
        spec.cloned()
            .ok_or_else(|| Error::invalid("graph", "must have a schema"))
    }

    /// Creates the operation with its subscription (and checkout claim) atomically, and
    /// starts it.
    async fn start(
        &self,
        owner: &str,
        kind: &str,
        params: ProvisionParams,
        request_id: Option<String>,
        run: RunOptions,
        checkout: Option<NewCheckout>,
    ) -> Result<Operation> {
        let subscription = NewSubscription {
            id: params.subscription_id,
            user_id: params.user_id.clone(),
            plan: params.plan,
            graph_id: params.graph_id,
            checkout_id: checkout.as_ref().map(|c| c.checkout_id.clone()),
            repository: params.repository.clone(),
        };
        let initial = params.initial_result();
        let mut new = self.engine.prepare(
            owner,
            StartOperation {
                kind: kind.to_string(),
                params: serde_json::to_value(&params)
                    .map_err(|e| Error::internal(format!("cannot encode the parameters: {e}")))?,
                request_id,
                mode: run.mode,
                timeout: run.timeout,
            },
        )?;
        new.op.result = Some(initial);
        let created = self
            .store
            .create_provisioning(&new, &subscription, checkout.as_ref())
            .await?;
        let op = self.engine.launch(created);
        if op.kind != kind {
            return Err(Error::Precondition(format!(
                "request_id {:?} was used for another request (operation {}, {})",
                new.op.request_id.unwrap_or_default(),
                op.id,
                op.kind
            )));
        }
        Ok(op)
    }

    /// The billing webhook: a subscription to `plan` for `user_id`, with a new graph.
    pub async fn complete_checkout(&self, req: CheckoutRequest) -> Result<Operation> {
        let mut v = Validator::default();
        check_text(&mut v, "checkout_id", &req.checkout_id, MAX_ID_CHARS);
        check_text(&mut v, "user_id", &req.user_id, MAX_ID_CHARS);
        let plan = plan(&mut v, "plan", &req.plan);
        v.check(!req.plan.is_empty(), "plan", || {
            format!("must be set; plans are {}", Plan::names())
        });
        let spec = self.graph_spec(v, &req.graph)?;
        let params = ProvisionParams {
            subscription_id: Uuid::now_v7(),
            graph_id: Uuid::now_v7(),
            credit_pool_id: Uuid::now_v7(),
            user_id: req.user_id.clone(),
            plan,
            graph_name: req.graph.name.clone(),
            spec,
            repository: None,
        };
        let spec_json = params.spec.validate().map_err(spec_violations)?.spec_json();
        let fingerprint = hex::encode(Sha256::digest(
            serde_json::json!([req.user_id, plan.as_str(), req.graph.name, spec_json]).to_string(),
        ));
        let checkout = NewCheckout {
            checkout_id: req.checkout_id.clone(),
            user_id: req.user_id.clone(),
            fingerprint,
        };
        self.start(
            &req.user_id,
            PROVISION_KIND,
            params,
            None,
            req.run,
            Some(checkout),
        )
        .await
    }

    /// `owner` provisions a graph of its own.
    pub async fn provision_graph(
        &self,
        owner: &str,
        request_id: Option<String>,
        plan_name: &str,
        graph: GraphRequest,
        run: RunOptions,
    ) -> Result<Operation> {
        let mut v = Validator::default();
        let plan = plan(&mut v, "plan", plan_name);
        let spec = self.graph_spec(v, &graph)?;
        let params = ProvisionParams {
            subscription_id: Uuid::now_v7(),
            graph_id: Uuid::now_v7(),
            credit_pool_id: Uuid::now_v7(),
            user_id: owner.to_string(),
            plan,
            graph_name: graph.name,
            spec,
            repository: None,
        };
        self.start(owner, PROVISION_KIND, params, request_id, run, None)
            .await
    }

    /// `user_id` gets access to a shared repository graph (created on first use).
    pub async fn provision_repository_access(
        &self,
        user_id: &str,
        request_id: Option<String>,
        repository: &str,
        plan_name: &str,
        run: RunOptions,
    ) -> Result<Operation> {
        let mut v = Validator::default();
        check_text(&mut v, "user_id", user_id, MAX_ID_CHARS);
        let plan = plan(&mut v, "plan", plan_name);
        let found = Repository::find(repository);
        v.check(found.is_some(), "repository", || {
            format!(
                "{} is not a repository; repositories are {}",
                shown(repository),
                Repository::names()
            )
        });
        v.finish()?;
        let repository =
            found.ok_or_else(|| Error::invalid("repository", "is not a repository"))?;
        let params = repository_params(repository, user_id, plan, Uuid::now_v7(), Uuid::now_v7());
        self.start(
            user_id,
            REPOSITORY_ACCESS_KIND,
            params,
            request_id,
            run,
            None,
        )
        .await
    }

    pub async fn get_graph(&self, graph_id: &str, scope: Option<&str>) -> Result<Graph> {
        let id = uuid_field("graph_id", graph_id)?;
        self.store
            .graph(id, scope)
            .await?
            .ok_or_else(|| Error::not_found("graph", id))
    }

    pub async fn list_graphs(
        &self,
        scope: Option<&str>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Graph>, String)> {
        let size = paging::page_size(page_size)?;
        let query = format!("graphs;scope={scope:?}");
        let after: Option<GraphCursor> = paging::decode(page_token, &query)?;
        let mut graphs = self
            .store
            .list_graphs(scope, after.as_ref(), size + 1)
            .await?;
        let next = if graphs.len() > size {
            graphs.truncate(size);
            graphs
                .last()
                .map(|g| paging::encode(&query, &GraphCursor(g.create_time, g.id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((graphs, next))
    }

    /// Removes the graph. `caller` owns the operation unless the graph is a user's (then
    /// the user does, so that it can follow it); shared repository graphs are removed only
    /// when `may_remove_repositories`.
    pub async fn deprovision_graph(
        &self,
        graph_id: &str,
        scope: Option<&str>,
        caller: &str,
        may_remove_repositories: bool,
        request_id: Option<String>,
        run: RunOptions,
    ) -> Result<Operation> {
        let graph = self.get_graph(graph_id, scope).await?;
        if graph.kind == GraphKind::Repository && !may_remove_repositories {
            return Err(Error::PermissionDenied(format!(
                "graph {} is the shared repository graph of {:?}; only an admin removes it",
                graph.id,
                graph_name(&graph)
            )));
        }
        if !(graph.ready || graph.status == GraphStatus::Deprovisioning) {
            return Err(Error::Precondition(format!(
                "graph {} is {} and its provisioning (operation {}) has not succeeded; \
                 it can be deprovisioned once it is ACTIVE",
                graph.id,
                graph.status.as_str(),
                graph.operation_id
            )));
        }
        let owner = match graph.kind {
            GraphKind::User => graph.owner.as_str(),
            GraphKind::Repository => caller,
        };
        let mut new = self.engine.prepare(
            owner,
            StartOperation {
                kind: DEPROVISION_KIND.to_string(),
                params: serde_json::to_value(DeprovisionParams { graph_id: graph.id })
                    .map_err(|e| Error::internal(format!("cannot encode the parameters: {e}")))?,
                request_id,
                mode: run.mode,
                timeout: run.timeout,
            },
        )?;
        new.op.result = Some(workflow::result(ProvisioningResult {
            graph_id: graph.id.to_string(),
            database_backend: graph.backend.clone(),
            database_location: graph.location.clone(),
            ..Default::default()
        }));
        let created = self.engine.store().create(&new).await?;
        let op = self.engine.launch(created);
        if op.kind != DEPROVISION_KIND {
            return Err(Error::Precondition(format!(
                "request_id was used for another request (operation {}, {})",
                op.id, op.kind
            )));
        }
        Ok(op)
    }

    pub async fn get_subscription(
        &self,
        subscription_id: &str,
        scope: Option<&str>,
    ) -> Result<Subscription> {
        let id = uuid_field("subscription_id", subscription_id)?;
        self.store
            .subscription(id, scope)
            .await?
            .ok_or_else(|| Error::not_found("subscription", id))
    }
}

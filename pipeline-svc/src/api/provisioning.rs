//! `ProvisioningService` over gRPC: who may call what, and proto <-> domain. Tenancy
//! itself is enforced below, in the store queries, with the scope passed from here.

use std::sync::Arc;

use capstan_proto::pipeline::v1::{
    self as pb, provisioning_service_server::ProvisioningService as ProvisioningRpc,
};
use capstan_server::auth::{Principal, Role};
use tonic::{Request, Response};

use super::{
    operations::operation_to_pb, owner_filter, request_id, run_options, stored_result, timestamp,
    ApiResult, Results,
};
use crate::{
    domain::provisioning::{
        model::{
            CreditPool, Graph, GraphKind, GraphStatus, Plan, SchemaRecord, Subscription,
            SubscriptionStatus,
        },
        service::{CheckoutRequest, GraphRequest, ProvisioningService},
        CustomSchema, NodeType, Property, PropertyType, ProvisioningResult, RelationshipType,
        SchemaSpec, Violation,
    },
    error::{Error, Result},
};

pub use capstan_proto::pipeline::v1::provisioning_service_server::ProvisioningServiceServer;

pub struct ProvisioningApi {
    service: Arc<ProvisioningService>,
    results: Results,
}

impl ProvisioningApi {
    pub fn new(service: Arc<ProvisioningService>, results: Results) -> Self {
        Self { service, results }
    }
}

/// A provisioning operation's stored result as the `provisioning` case of the result
/// `oneof`.
pub fn result_to_pb(stored: &serde_json::Value) -> Result<pb::operation_result::Result> {
    let p: ProvisioningResult = stored_result(stored)?;
    Ok(pb::operation_result::Result::Provisioning(
        pb::ProvisioningResult {
            graph_id: p.graph_id,
            subscription_id: p.subscription_id,
            credit_pool_id: p.credit_pool_id,
            schema_type: p.schema_type,
            database_backend: p.database_backend,
            database_location: p.database_location,
            tables: p.tables,
            deprovisioned: p.deprovisioned,
        },
    ))
}

/// Paid plans come through the billing webhook; a user provisions on `free` only.
fn user_plan(p: &Principal, plan: &str) -> Result<()> {
    if p.role == Role::User && !(plan.is_empty() || plan == Plan::Free.as_str()) {
        return Err(Error::PermissionDenied(format!(
            "users provision on the free plan; plan {:?} comes through checkout",
            plan.chars().take(32).collect::<String>()
        )));
    }
    Ok(())
}

fn property_type(value: i32) -> Option<PropertyType> {
    match pb::PropertyType::try_from(value) {
        Ok(pb::PropertyType::String) => Some(PropertyType::String),
        Ok(pb::PropertyType::Int64) => Some(PropertyType::Int64),
        Ok(pb::PropertyType::Float64) => Some(PropertyType::Float64),
        Ok(pb::PropertyType::Bool) => Some(PropertyType::Bool),
        Ok(pb::PropertyType::Timestamp) => Some(PropertyType::Timestamp),
        Ok(pb::PropertyType::Date) => Some(PropertyType::Date),
        Ok(pb::PropertyType::Json) => Some(PropertyType::Json),
        Ok(pb::PropertyType::Unspecified) | Err(_) => None,
    }
}

/// Properties with their types; an unset or unknown type is a violation at `path`.
fn properties(list: Vec<pb::Property>, path: &str, bad: &mut Vec<Violation>) -> Vec<Property> {
    list.into_iter()
        .enumerate()
        .filter_map(|(i, p)| match property_type(p.r#type) {
            Some(ty) => Some(Property {
                name: p.name,
                ty,
                required: p.required,
            }),
            None => {
                bad.push(Violation::new(
                    format!("{path}.properties[{i}].type"),
                    format!(
                        "must be one of PROPERTY_TYPE_STRING, _INT64, _FLOAT64, _BOOL, _TIMESTAMP, _DATE, _JSON (got {})",
                        p.r#type
                    ),
                ));
                None
            }
        })
        .collect()
}

/// A proto custom schema as the domain's spec (paths from `schema`, like the domain's).
fn custom_spec(c: pb::CustomSchema) -> Result<SchemaSpec, Vec<Violation>> {
    let mut bad = Vec::new();
    let nodes = c
        .nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| NodeType {
            name: n.name,
            primary_key: n.primary_key,
            properties: properties(n.properties, &format!("schema.nodes[{i}]"), &mut bad),
        })
        .collect();
    let relationships = c
        .relationships
        .into_iter()
        .enumerate()
        .map(|(i, r)| RelationshipType {
            name: r.name,
            from: r.from,
            to: r.to,
            properties: properties(
                r.properties,
                &format!("schema.relationships[{i}]"),
                &mut bad,
            ),
        })
        .collect();
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(SchemaSpec::Custom(CustomSchema {
        name: c.name,
        version: c.version,
        nodes,
        relationships,
    }))
}

fn graph_request(graph: Option<pb::GraphSpec>) -> GraphRequest {
    let Some(g) = graph else {
        return GraphRequest {
            name: String::new(),
            spec: None,
            schema_field: "graph".into(),
        };
    };
    use pb::graph_spec::Schema;
    let (spec, field) = match g.schema {
        None => (None, "graph"),
        Some(Schema::Custom(c)) => (Some(custom_spec(c)), "graph.custom"),
        Some(Schema::Extensions(e)) => (
            Some(Ok(SchemaSpec::Extensions {
                extensions: e.extensions,
            })),
            "graph.extensions",
        ),
        Some(Schema::SchemaJson(text)) => (Some(SchemaSpec::from_json(&text)), "graph.schema_json"),
    };
    GraphRequest {
        name: g.name,
        spec,
        schema_field: field.into(),
    }
}

fn graph_status(s: GraphStatus) -> pb::GraphStatus {
    match s {
        GraphStatus::Provisioning => pb::GraphStatus::Provisioning,
        GraphStatus::Active => pb::GraphStatus::Active,
        GraphStatus::Deprovisioning => pb::GraphStatus::Deprovisioning,
    }
}

fn schema_to_pb(s: SchemaRecord) -> pb::GraphSchema {
    pb::GraphSchema {
        schema_type: s.schema_type,
        name: s.name,
        version: s.version,
        ddl: s
            .ddl
            .iter()
            .map(|d| format!("{d};"))
            .collect::<Vec<_>>()
            .join("\n"),
        spec_json: s.spec_json,
        tables: s.tables,
    }
}

fn graph_to_pb(g: Graph) -> pb::Graph {
    let etag = g.etag();
    pb::Graph {
        graph_id: g.id.to_string(),
        owner: g.owner,
        name: g.name,
        status: graph_status(g.status) as i32,
        kind: match g.kind {
            GraphKind::User => pb::GraphKind::User,
            GraphKind::Repository => pb::GraphKind::Repository,
        } as i32,
        repository: g.repository.unwrap_or_default(),
        schema: g.schema.map(schema_to_pb),
        database_backend: g.backend,
        database_location: g.location,
        operation_id: g.operation_id.to_string(),
        create_time: timestamp(g.create_time),
        update_time: timestamp(g.update_time),
        etag,
    }
}

fn pool_to_pb(p: CreditPool) -> pb::CreditPool {
    pb::CreditPool {
        credit_pool_id: p.id.to_string(),
        subscription_id: p.subscription_id.to_string(),
        graph_id: p.graph_id.to_string(),
        plan: p.plan.as_str().to_string(),
        allocated_credits: p.allocated,
        remaining_credits: p.remaining,
        create_time: timestamp(p.create_time),
    }
}

fn subscription_to_pb(s: Subscription) -> pb::Subscription {
    pb::Subscription {
        subscription_id: s.id.to_string(),
        user_id: s.user_id,
        plan: s.plan.as_str().to_string(),
        status: match s.status {
            SubscriptionStatus::Pending => pb::SubscriptionStatus::Pending,
            SubscriptionStatus::Provisioning => pb::SubscriptionStatus::Provisioning,
            SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
            SubscriptionStatus::Failed => pb::SubscriptionStatus::Failed,
            SubscriptionStatus::Cancelled => pb::SubscriptionStatus::Cancelled,
        } as i32,
        reason: s.reason,
        graph_id: s.graph_id.to_string(),
        checkout_id: s.checkout_id.unwrap_or_default(),
        repository: s.repository.unwrap_or_default(),
        operation_id: s.operation_id.to_string(),
        credit_pool: s.pool.map(pool_to_pb),
        create_time: timestamp(s.create_time),
        update_time: timestamp(s.update_time),
    }
}

#[tonic::async_trait]
impl ProvisioningRpc for ProvisioningApi {
    async fn complete_checkout(
        &self,
        req: Request<pb::CompleteCheckoutRequest>,
    ) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        if p.role == Role::User {
            return Err(Error::PermissionDenied(
                "CompleteCheckout is the billing webhook: it needs the service role".into(),
            )
            .into());
        }
        let r = req.into_inner();
        let run = run_options(r.execution_mode, r.timeout.as_ref())?;
        let op = self
            .service
            .complete_checkout(CheckoutRequest {
                checkout_id: r.checkout_id,
                user_id: r.user_id,
                plan: r.plan,
                graph: graph_request(r.graph),
                run,
            })
            .await?;
        Ok(Response::new(operation_to_pb(op, &self.results)?))
    }

    async fn provision_graph(
        &self,
        req: Request<pb::ProvisionGraphRequest>,
    ) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        let r = req.into_inner();
        user_plan(&p, &r.plan)?;
        let run = run_options(r.execution_mode, r.timeout.as_ref())?;
        let op = self
            .service
            .provision_graph(
                &p.subject,
                request_id(r.request_id),
                &r.plan,
                graph_request(r.graph),
                run,
            )
            .await?;
        Ok(Response::new(operation_to_pb(op, &self.results)?))
    }

    async fn provision_repository_access(
        &self,
        req: Request<pb::ProvisionRepositoryAccessRequest>,
    ) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        let r = req.into_inner();
        let user_id = match p.role {
            Role::User if r.user_id.is_empty() || r.user_id == p.subject => p.subject.clone(),
            Role::User => {
                return Err(Error::PermissionDenied(
                    "a user may request repository access only for itself".into(),
                )
                .into())
            }
            Role::Admin | Role::Service => r.user_id,
        };
        user_plan(&p, &r.plan)?;
        let run = run_options(r.execution_mode, r.timeout.as_ref())?;
        let op = self
            .service
            .provision_repository_access(
                &user_id,
                request_id(r.request_id),
                &r.repository,
                &r.plan,
                run,
            )
            .await?;
        Ok(Response::new(operation_to_pb(op, &self.results)?))
    }

    async fn get_graph(&self, req: Request<pb::GetGraphRequest>) -> ApiResult<pb::Graph> {
        let p = Principal::of(&req)?;
        let graph = self
            .service
            .get_graph(&req.get_ref().graph_id, owner_filter(&p))
            .await?;
        Ok(Response::new(graph_to_pb(graph)))
    }

    async fn list_graphs(
        &self,
        req: Request<pb::ListGraphsRequest>,
    ) -> ApiResult<pb::ListGraphsResponse> {
        let p = Principal::of(&req)?;
        let r = req.get_ref();
        let (graphs, next_page_token) = self
            .service
            .list_graphs(owner_filter(&p), r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListGraphsResponse {
            graphs: graphs.into_iter().map(graph_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn deprovision_graph(
        &self,
        req: Request<pb::DeprovisionGraphRequest>,
    ) -> ApiResult<pb::Operation> {
        let p = Principal::of(&req)?;
        let r = req.into_inner();
        let run = run_options(r.execution_mode, r.timeout.as_ref())?;
        let op = self
            .service
            .deprovision_graph(
                &r.graph_id,
                owner_filter(&p),
                &p.subject,
                p.role != Role::User,
                request_id(r.request_id),
                run,
            )
            .await?;
        Ok(Response::new(operation_to_pb(op, &self.results)?))
    }

    async fn get_subscription(
        &self,
        req: Request<pb::GetSubscriptionRequest>,
    ) -> ApiResult<pb::Subscription> {
        let p = Principal::of(&req)?;
        let sub = self
            .service
            .get_subscription(&req.get_ref().subscription_id, owner_filter(&p))
            .await?;
        Ok(Response::new(subscription_to_pb(sub)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any property type number is a type or a violation at its path, never a panic.
        #[test]
        fn property_types_map_or_are_refused(ty in any::<i32>()) {
            let spec = custom_spec(pb::CustomSchema {
                name: "n".into(),
                version: "1".into(),
                nodes: vec![pb::NodeType {
                    name: "A".into(),
                    primary_key: "id".into(),
                    properties: vec![pb::Property { name: "id".into(), r#type: ty, required: true }],
                }],
                relationships: vec![],
            });
            match spec {
                Ok(_) => prop_assert!((1..=7).contains(&ty)),
                Err(v) => {
                    prop_assert!(!(1..=7).contains(&ty));
                    prop_assert_eq!(&v[0].field, "schema.nodes[0].properties[0].type");
                }
            }
        }
    }
}

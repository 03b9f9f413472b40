//! Graph provisioning end to end over gRPC ("Must show 1"): a custom-schema graph
//! (ProvisionGraph) and an extensions graph (CompleteCheckout) are provisioned while their
//! events are streamed to completion, DIRECT and QUEUED; the test then opens the real
//! database (the SQLite file, or the Postgres schema) and finds every declared table and
//! column with its type; DeprovisionGraph removes all of it again.

use crate::common::provisioning::*;
use crate::common::*;
use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use pipeline_svc::domain::provisioning::workflow::PROVISION_STEPS;
use tonic::Code;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    custom_and_extensions_graphs_provision_and_deprovision,
    repository_access_shares_one_graph
);

/// Provisions through `start`, streams it to the end and checks the graph against the
/// real database; returns the final operation and the graph.
async fn provision_and_check(
    env: &Env,
    server: &Server,
    user: &str,
    op: pb::Operation,
    spec: &pipeline_svc::domain::provisioning::SchemaSpec,
    plan: &str,
    mode: pb::ExecutionMode,
) -> (pb::Operation, pb::Graph) {
    assert_eq!(op.execution_mode, mode as i32);
    assert_eq!(op.owner, user);
    let started = provisioning_result(&op);
    assert!(!started.graph_id.is_empty() && !started.subscription_id.is_empty());
    let mut ops = server.operations(user, Role::User).await;
    let (events, op) = watch(&mut ops, &op.operation_id).await;
    assert_well_formed(&events);
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    for step in PROVISION_STEPS {
        for (kind, status) in [
            (pb::OperationEventType::StepStarted, pb::StepStatus::Running),
            (pb::OperationEventType::StepFinished, pb::StepStatus::Passed),
        ] {
            assert!(
                events.iter().any(|e| e.step == step.name
                    && e.r#type == kind as i32
                    && e.step_status == status as i32),
                "{} has no {kind:?} event: {events:#?}",
                step.name
            );
        }
    }
    assert!(
        events
            .iter()
            .any(|e| e.r#type == pb::OperationEventType::Progress as i32),
        "progress inside a step is streamed"
    );
    assert_eq!(events.last().unwrap().percent, 100);
    let result = provisioning_result(&op);
    assert_eq!(result.graph_id, started.graph_id);

    let mut client = server.provisioning(user, Role::User).await;
    let graph = client
        .get_graph(pb::GetGraphRequest {
            graph_id: result.graph_id.clone(),
        })
        .await
        .expect("GetGraph")
        .into_inner();
    assert_eq!(graph.status, pb::GraphStatus::Active as i32);
    assert_eq!(graph.owner, user);
    assert_eq!(graph.operation_id, op.operation_id);
    assert_eq!(
        graph.database_backend,
        if env.postgres() { "postgres" } else { "sqlite" }
    );
    assert_eq!(graph.database_location, result.database_location);
    let schema = graph.schema.clone().expect("schema record");
    let valid = spec.validate().expect("valid");
    assert_eq!(schema.schema_type, valid.schema_type());
    assert_eq!(
        (schema.name.as_str(), schema.version.as_str()),
        (valid.name(), valid.version())
    );
    assert_eq!(schema.spec_json, valid.spec_json());
    let tables: Vec<String> = valid.tables().into_iter().map(|t| t.name).collect();
    assert_eq!(schema.tables, tables);
    assert_eq!(result.tables, tables);
    assert_eq!(schema.ddl.lines().count(), tables.len());
    assert!(schema.ddl.lines().all(|l| l.starts_with("CREATE TABLE")));

    let sub = client
        .get_subscription(pb::GetSubscriptionRequest {
            subscription_id: result.subscription_id.clone(),
        })
        .await
        .expect("GetSubscription")
        .into_inner();
    assert_eq!(
        sub.status,
        pb::SubscriptionStatus::Active as i32,
        "{sub:#?}"
    );
    assert_eq!((sub.user_id.as_str(), sub.plan.as_str()), (user, plan));
    assert_eq!(sub.graph_id, result.graph_id);
    let pool = sub.credit_pool.expect("credit pool");
    let credits = match plan {
        "free" => 1_000,
        "pro" => 100_000,
        _ => 1_000_000,
    };
    assert_eq!(
        (pool.allocated_credits, pool.remaining_credits),
        (credits, credits)
    );
    assert_eq!(pool.credit_pool_id, result.credit_pool_id);

    // The real database: every declared table and column, with its type.
    let db = env.pool().await;
    assert_eq!(
        introspect(env, &db, &graph).await,
        expected_columns(spec, env.postgres()),
        "the graph's database holds exactly the declared tables"
    );
    (op, graph)
}

async fn deprovision_and_check(env: &Env, server: &Server, user: &str, graph: &pb::Graph) {
    let mut client = server.provisioning(user, Role::User).await;
    let op = client
        .deprovision_graph(pb::DeprovisionGraphRequest {
            graph_id: graph.graph_id.clone(),
            request_id: format!("remove-{}", graph.graph_id),
            execution_mode: 0,
            timeout: None,
        })
        .await
        .expect("DeprovisionGraph")
        .into_inner();
    let mut ops = server.operations(user, Role::User).await;
    let (events, op) = watch(&mut ops, &op.operation_id).await;
    assert_well_formed(&events);
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    assert!(provisioning_result(&op).deprovisioned);
    assert_eq!(
        code(
            client
                .get_graph(pb::GetGraphRequest {
                    graph_id: graph.graph_id.clone(),
                })
                .await
        ),
        Code::NotFound
    );
    let db = env.pool().await;
    assert_eq!(graph_rows(&db, &graph.graph_id).await, (0, 0, 0));
    assert!(!graph_database_exists(env, &db, &graph.graph_id).await);
    let cancelled = count(
        &db,
        "SELECT count(*) FROM subscriptions WHERE graph_id = $1 AND status = 'CANCELLED'",
        &graph.graph_id,
    )
    .await;
    assert_eq!(cancelled, 1, "the graph's subscription ends CANCELLED");
}

async fn custom_and_extensions_graphs_provision_and_deprovision(db: TestDb) {
    let env = Env::new(db);
    for mode in [pb::ExecutionMode::Direct, pb::ExecutionMode::Queued] {
        let server = env.server(&[]).await;
        let user = format!("alice-{}", mode.as_str_name().to_lowercase());
        // A user provisions a custom schema.
        let mut client = server.provisioning(&user, Role::User).await;
        let op = client
            .provision_graph(pb::ProvisionGraphRequest {
                request_id: "first".into(),
                graph: Some(custom_graph("people")),
                plan: String::new(),
                execution_mode: mode as i32,
                timeout: None,
            })
            .await
            .expect("ProvisionGraph")
            .into_inner();
        // The same request id returns the same operation.
        let again = client
            .provision_graph(pb::ProvisionGraphRequest {
                request_id: "first".into(),
                graph: Some(custom_graph("people")),
                plan: String::new(),
                execution_mode: mode as i32,
                timeout: None,
            })
            .await
            .expect("ProvisionGraph again")
            .into_inner();
        assert_eq!(again.operation_id, op.operation_id);
        let (_, custom) =
            provision_and_check(&env, &server, &user, op, &custom_spec(), "free", mode).await;

        // Billing completes a checkout with built-in extensions for the same user.
        let mut billing = server.provisioning("billing", Role::Service).await;
        let extensions = ["social", "commerce"];
        let op = billing
            .complete_checkout(pb::CompleteCheckoutRequest {
                checkout_id: format!("cs_{}", uuid::Uuid::new_v4().simple()),
                user_id: user.clone(),
                plan: "pro".into(),
                graph: Some(extensions_graph("shop", &extensions)),
                execution_mode: mode as i32,
                timeout: None,
            })
            .await
            .expect("CompleteCheckout")
            .into_inner();
        let (_, ext) = provision_and_check(
            &env,
            &server,
            &user,
            op,
            &extensions_spec(&extensions),
            "pro",
            mode,
        )
        .await;

        let listed = client
            .list_graphs(pb::ListGraphsRequest {
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .expect("ListGraphs")
            .into_inner();
        assert_eq!(listed.graphs.len(), 1);
        assert_eq!(listed.graphs[0].graph_id, ext.graph_id, "newest first");
        let rest = client
            .list_graphs(pb::ListGraphsRequest {
                page_size: 10,
                page_token: listed.next_page_token,
            })
            .await
            .expect("ListGraphs page 2")
            .into_inner();
        assert_eq!(rest.graphs.len(), 1);
        assert_eq!(rest.graphs[0].graph_id, custom.graph_id);
        assert!(rest.next_page_token.is_empty());

        deprovision_and_check(&env, &server, &user, &custom).await;
        deprovision_and_check(&env, &server, &user, &ext).await;
        server.stop().await;
    }
}

/// Two users get access to one repository: the graph is created once, on first use, and
/// each gets its own subscription and credit pool; a user cannot remove the shared graph.
async fn repository_access_shares_one_graph(db: TestDb) {
    let env = Env::new(db);
    let server = env.server(&[]).await;
    let mut graph_ids = Vec::new();
    let mut starts = Vec::new();
    for user in ["ann", "bob"] {
        let mut client = server.provisioning(user, Role::User).await;
        starts.push((
            user,
            client
                .provision_repository_access(pb::ProvisionRepositoryAccessRequest {
                    request_id: "sec".into(),
                    user_id: String::new(),
                    repository: "sec".into(),
                    plan: String::new(),
                    execution_mode: 0,
                    timeout: None,
                })
                .await
                .expect("ProvisionRepositoryAccess")
                .into_inner(),
        ));
    }
    for (user, op) in starts {
        let mut ops = server.operations(user, Role::User).await;
        let (events, op) = watch(&mut ops, &op.operation_id).await;
        assert_well_formed(&events);
        assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
        let result = provisioning_result(&op);
        graph_ids.push(result.graph_id.clone());
        let mut client = server.provisioning(user, Role::User).await;
        let sub = client
            .get_subscription(pb::GetSubscriptionRequest {
                subscription_id: result.subscription_id,
            })
            .await
            .expect("GetSubscription")
            .into_inner();
        assert_eq!(sub.status, pb::SubscriptionStatus::Active as i32);
        assert_eq!(sub.repository, "sec");
        assert!(sub.credit_pool.is_some());
        let graph = client
            .get_graph(pb::GetGraphRequest {
                graph_id: result.graph_id.clone(),
            })
            .await
            .expect("a user with access sees the repository graph")
            .into_inner();
        assert_eq!(graph.kind, pb::GraphKind::Repository as i32);
        assert_eq!(graph.owner, "system");
        let db = env.pool().await;
        assert_eq!(
            introspect(&env, &db, &graph).await,
            expected_columns(&extensions_spec(&["knowledge"]), env.postgres())
        );
        assert_eq!(
            code(
                client
                    .deprovision_graph(pb::DeprovisionGraphRequest {
                        graph_id: graph.graph_id.clone(),
                        ..Default::default()
                    })
                    .await
            ),
            Code::PermissionDenied
        );
    }
    assert_eq!(graph_ids[0], graph_ids[1], "one shared graph");
    let db = env.pool().await;
    assert_eq!(graph_rows(&db, &graph_ids[0]).await, (1, 1, 2));
    // An outsider sees nothing of it.
    let mut carol = server.provisioning("carol", Role::User).await;
    assert_eq!(
        code(
            carol
                .get_graph(pb::GetGraphRequest {
                    graph_id: graph_ids[0].clone(),
                })
                .await
        ),
        Code::NotFound
    );
    // An admin removes it; both subscriptions end CANCELLED.
    let mut admin = server.provisioning("root", Role::Admin).await;
    let op = admin
        .deprovision_graph(pb::DeprovisionGraphRequest {
            graph_id: graph_ids[0].clone(),
            ..Default::default()
        })
        .await
        .expect("admin DeprovisionGraph")
        .into_inner();
    let mut ops = server.operations("root", Role::Admin).await;
    let (_, op) = watch(&mut ops, &op.operation_id).await;
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    assert_eq!(graph_rows(&db, &graph_ids[0]).await, (0, 0, 0));
    assert!(!graph_database_exists(&env, &db, &graph_ids[0]).await);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM subscriptions WHERE graph_id = $1 AND status = 'CANCELLED'",
            &graph_ids[0],
        )
        .await,
        2
    );
    server.stop().await;
}

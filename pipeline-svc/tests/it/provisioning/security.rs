//! Provisioning security ("Must show 5"): user B reaches none of user A's graphs,
//! subscriptions or operations through any RPC (NOT_FOUND, so existence does not leak,
//! or PERMISSION_DENIED for what a role may never do); schema specs with hostile
//! identifiers are refused with field violations and change nothing.

use crate::common::provisioning::*;
use crate::common::*;
use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use tonic::Code;
use tonic_types::StatusExt;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    another_user_reaches_nothing,
    hostile_specs_are_refused_and_change_nothing
);

async fn another_user_reaches_nothing(db: TestDb) {
    let env = Env::new(db);
    // An API-only replica: it runs its own DIRECT work, and queued work waits.
    let server = env.server(&["--queue-workers", "false"]).await;
    let mut alice = server.provisioning("alice", Role::User).await;
    let started = alice
        .provision_graph(pb::ProvisionGraphRequest {
            request_id: "mine".into(),
            graph: Some(custom_graph("private")),
            ..Default::default()
        })
        .await
        .expect("ProvisionGraph")
        .into_inner();
    let mut alice_ops = server.operations("alice", Role::User).await;
    let (_, op) = watch(&mut alice_ops, &started.operation_id).await;
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32);
    let result = provisioning_result(&op);
    let (graph_id, sub_id, op_id) = (
        result.graph_id.clone(),
        result.subscription_id.clone(),
        op.operation_id.clone(),
    );
    // …and a queued one that is still pending.
    let pending = alice
        .provision_graph(pb::ProvisionGraphRequest {
            graph: Some(custom_graph("later")),
            execution_mode: pb::ExecutionMode::Queued as i32,
            ..Default::default()
        })
        .await
        .expect("queued ProvisionGraph")
        .into_inner();

    {
        let mut bob = server.provisioning("bob", Role::User).await;
        let mut bob_ops = server.operations("bob", Role::User).await;
        let nf = Code::NotFound;
        assert_eq!(
            code(
                bob.get_graph(pb::GetGraphRequest {
                    graph_id: graph_id.clone()
                })
                .await
            ),
            nf
        );
        assert_eq!(
            code(
                bob.get_subscription(pb::GetSubscriptionRequest {
                    subscription_id: sub_id.clone()
                })
                .await
            ),
            nf
        );
        assert_eq!(
            code(
                bob.deprovision_graph(pb::DeprovisionGraphRequest {
                    graph_id: graph_id.clone(),
                    ..Default::default()
                })
                .await
            ),
            nf
        );
        let listed = bob
            .list_graphs(pb::ListGraphsRequest::default())
            .await
            .expect("ListGraphs")
            .into_inner();
        assert!(listed.graphs.is_empty(), "{listed:?}");
        for id in [&op_id, &pending.operation_id] {
            assert_eq!(
                code(
                    bob_ops
                        .get_operation(pb::GetOperationRequest {
                            operation_id: id.clone()
                        })
                        .await
                ),
                nf
            );
            assert_eq!(
                code(
                    bob_ops
                        .watch_operation(pb::WatchOperationRequest {
                            operation_id: id.clone(),
                            after_sequence: 0,
                        })
                        .await
                ),
                nf
            );
            assert_eq!(
                code(
                    bob_ops
                        .cancel_operation(pb::CancelOperationRequest {
                            operation_id: id.clone(),
                            reason: "mine now".into(),
                        })
                        .await
                ),
                nf
            );
        }
        let listed = bob_ops
            .list_operations(pb::ListOperationsRequest::default())
            .await
            .expect("ListOperations")
            .into_inner();
        assert!(listed.operations.is_empty(), "{listed:?}");
        // What a user may never do.
        let pd = Code::PermissionDenied;
        assert_eq!(
            code(
                bob.provision_repository_access(pb::ProvisionRepositoryAccessRequest {
                    user_id: "alice".into(),
                    repository: "sec".into(),
                    ..Default::default()
                })
                .await
            ),
            pd
        );
        assert_eq!(
            code(
                bob.complete_checkout(pb::CompleteCheckoutRequest {
                    checkout_id: "cs_forged".into(),
                    user_id: "bob".into(),
                    plan: "enterprise".into(),
                    graph: Some(custom_graph("free lunch")),
                    execution_mode: 0,
                    timeout: None,
                })
                .await
            ),
            pd
        );
        assert_eq!(
            code(
                bob.provision_graph(pb::ProvisionGraphRequest {
                    graph: Some(custom_graph("free lunch")),
                    plan: "enterprise".into(),
                    ..Default::default()
                })
                .await
            ),
            pd
        );
    }
    // Alice's request id is hers alone: bob using it starts bob's own operation.
    let bobs = server
        .provisioning("bob", Role::User)
        .await
        .provision_graph(pb::ProvisionGraphRequest {
            request_id: "mine".into(),
            graph: Some(custom_graph("bob's")),
            ..Default::default()
        })
        .await
        .expect("bob's ProvisionGraph")
        .into_inner();
    assert_ne!(bobs.operation_id, op_id);
    assert_eq!(bobs.owner, "bob");
    // Nothing of alice's changed.
    let graph = alice
        .get_graph(pb::GetGraphRequest {
            graph_id: graph_id.clone(),
        })
        .await
        .expect("alice's graph")
        .into_inner();
    assert_eq!(graph.status, pb::GraphStatus::Active as i32);
    let still = alice_ops
        .get_operation(pb::GetOperationRequest {
            operation_id: pending.operation_id.clone(),
        })
        .await
        .expect("alice's pending operation")
        .into_inner();
    assert!(!still.cancel_requested);
    assert_eq!(still.status, pb::OperationStatus::Pending as i32);
    // Without a token: UNAUTHENTICATED.
    let mut anonymous = pb::provisioning_service_client::ProvisioningServiceClient::new(
        capstan_client::connect(&server.url, None)
            .await
            .expect("connect"),
    );
    assert_eq!(
        code(
            anonymous
                .get_graph(pb::GetGraphRequest {
                    graph_id: graph_id.clone()
                })
                .await
        ),
        Code::Unauthenticated
    );
    // Admins and services see it.
    for role in [Role::Admin, Role::Service] {
        server
            .provisioning("ops", role)
            .await
            .get_graph(pb::GetGraphRequest {
                graph_id: graph_id.clone(),
            })
            .await
            .expect("admin and service see every graph");
    }
    server.stop().await;
}

fn custom(nodes: serde_json::Value) -> pb::GraphSpec {
    pb::GraphSpec {
        name: "hostile".into(),
        schema: Some(pb::graph_spec::Schema::SchemaJson(
            serde_json::json!({
                "schema_type": "custom", "name": "h", "version": "1", "nodes": nodes
            })
            .to_string(),
        )),
    }
}

fn node(name: &str, prop: &str) -> pb::GraphSpec {
    let mut g = custom_graph("hostile");
    if let Some(pb::graph_spec::Schema::Custom(c)) = &mut g.schema {
        c.nodes[0].name = name.into();
        c.nodes[0].properties[1].name = prop.into();
    }
    g
}

async fn hostile_specs_are_refused_and_change_nothing(db: TestDb) {
    let env = Env::new(db);
    let pool = env.pool().await;
    let server = env.server(&[]).await;
    let long = "x".repeat(5000);
    #[rustfmt::skip]
    let mut cases: Vec<(pb::GraphSpec, &str, &str)> = vec![
        (node("Person\"; DROP TABLE graphs; --", "name"), "graph.custom.nodes[0].name", "'\"'"),
        (node("Person", "name'); DROP SCHEMA capstan_pipeline CASCADE; --"), "graph.custom.nodes[0].properties[1].name", "'''"),
        (node("select", "name"), "graph.custom.nodes[0].name", "reserved word"),
        (node("Person", "xmin"), "graph.custom.nodes[0].properties[1].name", "system column"),
        (node("P\u{0435}rson", "name"), "graph.custom.nodes[0].name", "U+0435"),
        (node("Person", "na\u{200D}me"), "graph.custom.nodes[0].properties[1].name", "U+200D"),
        (node("Person", &long), "graph.custom.nodes[0].properties[1].name", "at most 63"),
        (node("sqlite_master", "name"), "graph.custom.nodes[0].name", "reserved"),
        (node("pg_catalog", "name"), "graph.custom.nodes[0].name", "reserved"),
        (node("Person", ""), "graph.custom.nodes[0].properties[1].name", "must not be empty"),
        (node("Person", "ID"), "graph.custom.nodes[0].properties[1].name", "clashes"),
        (custom(serde_json::json!([{"name": "A", "primary_key": "id", "ddl": "DROP TABLE x",
            "properties": [{"name": "id", "type": "string"}]}])), "graph.schema_json.nodes[0]", "unknown field \"ddl\""),
        (custom(serde_json::json!([{"name": "A", "primary_key": "id",
            "properties": [{"name": "id", "type": "text; DROP TABLE x"}]}])), "graph.schema_json.nodes[0].properties[0].type", "not a property type"),
        (pb::GraphSpec { name: "x".into(), schema: Some(pb::graph_spec::Schema::SchemaJson("CREATE TABLE x (a int);".into())) }, "graph.schema_json", "not valid JSON"),
        (extensions_graph("x", &["social; DROP TABLE graphs"]), "graph.extensions.extensions[0]", "not a built-in extension"),
        (extensions_graph("x", &["social", "social"]), "graph.extensions.extensions[1]", "already listed"),
        (extensions_graph("x", &[]), "graph.extensions.extensions", "at least one"),
        (pb::GraphSpec { name: "no schema".into(), schema: None }, "graph", "must have a schema"),
        (pb::GraphSpec { name: "bell\u{7}".into(), ..extensions_graph("", &["social"]) }, "graph.name", "control characters"),
        (pb::GraphSpec { name: "  ".into(), ..extensions_graph("", &["social"]) }, "graph.name", "must not be empty"),
    ];
    // Thousands of problems come back as a bounded list.
    let mut many = custom_graph("many");
    if let Some(pb::graph_spec::Schema::Custom(c)) = &mut many.schema {
        c.nodes[0].properties = (0..10_000)
            .map(|i| prop(&format!("p{i}"), pb::PropertyType::Unspecified, false))
            .collect();
    }
    cases.push((
        many,
        "graph.custom.nodes[0].properties[0].type",
        "must be one of",
    ));
    let before = snapshot(&env, &pool).await;
    let mut user = server.provisioning("mallory", Role::User).await;
    let mut billing = server.provisioning("billing", Role::Service).await;
    for (i, (graph, field, words)) in cases.into_iter().enumerate() {
        let through_user = user
            .provision_graph(pb::ProvisionGraphRequest {
                request_id: format!("hostile-{i}"),
                graph: Some(graph.clone()),
                ..Default::default()
            })
            .await;
        let through_checkout = billing
            .complete_checkout(pb::CompleteCheckoutRequest {
                checkout_id: format!("cs_hostile_{i}"),
                user_id: "mallory".into(),
                plan: "pro".into(),
                graph: Some(graph),
                execution_mode: 0,
                timeout: None,
            })
            .await;
        for outcome in [through_user, through_checkout] {
            let status = outcome.expect_err("a hostile spec is refused");
            assert_eq!(status.code(), Code::InvalidArgument, "case {i}: {status:?}");
            let violations = status
                .get_error_details()
                .bad_request()
                .map(|b| b.field_violations.clone())
                .unwrap_or_default();
            assert!(
                violations.len() <= 20,
                "case {i}: {} violations",
                violations.len()
            );
            assert!(
                violations
                    .iter()
                    .any(|v| v.field == field && v.description.contains(words)),
                "case {i}: want {field} ({words}) in {violations:#?}"
            );
        }
    }
    // Bad values of the other fields are refused the same way.
    let bad: Vec<(pb::CompleteCheckoutRequest, &str)> = vec![
        (
            pb::CompleteCheckoutRequest {
                checkout_id: "cs\n1".into(),
                ..checkout("ok")
            },
            "checkout_id",
        ),
        (
            pb::CompleteCheckoutRequest {
                checkout_id: "c".repeat(129),
                ..checkout("ok")
            },
            "checkout_id",
        ),
        (
            pb::CompleteCheckoutRequest {
                user_id: String::new(),
                ..checkout("ok")
            },
            "user_id",
        ),
        (
            pb::CompleteCheckoutRequest {
                plan: "platinum'--".into(),
                ..checkout("ok")
            },
            "plan",
        ),
        (
            pb::CompleteCheckoutRequest {
                execution_mode: 99,
                ..checkout("ok")
            },
            "execution_mode",
        ),
    ];
    for (request, field) in bad {
        let status = billing
            .complete_checkout(request)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let fields: Vec<String> = status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default();
        assert!(fields.iter().any(|f| f == field), "{field}: {fields:?}");
    }
    for id in ["", "not-a-uuid", "'; DROP TABLE graphs; --"] {
        assert_eq!(
            code(
                user.get_graph(pb::GetGraphRequest {
                    graph_id: id.into()
                })
                .await
            ),
            Code::InvalidArgument
        );
        assert_eq!(
            code(
                user.get_subscription(pb::GetSubscriptionRequest {
                    subscription_id: id.into()
                })
                .await
            ),
            Code::InvalidArgument
        );
    }
    assert_eq!(
        code(
            user.provision_repository_access(pb::ProvisionRepositoryAccessRequest {
                repository: "../../etc".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(snapshot(&env, &pool).await, before, "nothing changed");
    server.stop().await;
}

fn checkout(id: &str) -> pb::CompleteCheckoutRequest {
    pb::CompleteCheckoutRequest {
        checkout_id: id.into(),
        user_id: "mallory".into(),
        plan: "pro".into(),
        graph: Some(extensions_graph("fine", &["social"])),
        execution_mode: 0,
        timeout: None,
    }
}

/// Row counts of every provisioning and operations table, and the graph databases.
async fn snapshot(env: &Env, pool: &sqlx::AnyPool) -> (Vec<i64>, Vec<String>) {
    let mut counts = Vec::new();
    for table in [
        "operations",
        "jobs",
        "subscriptions",
        "checkouts",
        "graphs",
        "graph_schemas",
        "credit_pools",
    ] {
        counts.push(
            count(
                pool,
                &format!("SELECT count(*) FROM {table} WHERE $1 = $1"),
                "",
            )
            .await,
        );
    }
    (counts, all_graph_databases(env, pool).await)
}

//! Provisioning failures and races ("Must show 2 and 3").
//!
//! - A failure injected at each step (after the step did its work) ends the operation
//!   FAILED naming the step, the subscription FAILED with a reason naming it, and the real
//!   database holds no graph database or schema, credit pool, schema record or graph row.
//! - A failed repository access never removes the shared graph another user relies on.
//! - Deprovisioning that fails part-way leaves a graph that is either intact and ACTIVE or
//!   finished by a second DeprovisionGraph.
//! - A queued provisioning cancelled before any worker took it cancels its subscription.
//! - 100 concurrent CompleteCheckout calls with one checkout_id get one operation, and
//!   one graph and one credit pool exist afterwards.

use std::collections::BTreeSet;

use crate::common::provisioning::*;
use crate::common::*;
use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use pipeline_svc::domain::provisioning::workflow::{DEPROVISION_STEPS, PROVISION_STEPS};
use tonic::Code;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    every_step_failure_leaves_nothing,
    failed_repository_access_keeps_the_shared_graph,
    failed_deprovisioning_is_safe_and_can_be_finished,
    cancelled_before_start_cancels_the_subscription,
    concurrent_checkouts_provision_once
);

async fn subscription(server: &Server, id: &str) -> pb::Subscription {
    server
        .provisioning("billing", Role::Service)
        .await
        .get_subscription(pb::GetSubscriptionRequest {
            subscription_id: id.into(),
        })
        .await
        .expect("GetSubscription")
        .into_inner()
}

async fn every_step_failure_leaves_nothing(db: TestDb) {
    let env = Env::new(db);
    let pool = env.pool().await;
    for (i, step) in PROVISION_STEPS.iter().enumerate() {
        let name = step.name;
        let server = env.server(&["--fail-step", name]).await;
        // One user graph (custom schema) and one checkout (extensions) per step.
        let user = format!("user-{i}");
        let mut client = server.provisioning(&user, Role::User).await;
        let direct = client
            .provision_graph(pb::ProvisionGraphRequest {
                request_id: format!("graph-{i}"),
                graph: Some(custom_graph("doomed")),
                ..Default::default()
            })
            .await
            .expect("ProvisionGraph")
            .into_inner();
        let checkout = server
            .provisioning("billing", Role::Service)
            .await
            .complete_checkout(pb::CompleteCheckoutRequest {
                checkout_id: format!("cs_fail_{i}"),
                user_id: user.clone(),
                plan: "enterprise".into(),
                graph: Some(extensions_graph("doomed shop", &["knowledge", "commerce"])),
                execution_mode: pb::ExecutionMode::Queued as i32,
                timeout: None,
            })
            .await
            .expect("CompleteCheckout")
            .into_inner();
        for started in [direct, checkout] {
            let mut ops = server.operations(&user, Role::User).await;
            let (events, op) = watch(&mut ops, &started.operation_id).await;
            assert_well_formed(&events);
            assert_eq!(
                op.status,
                pb::OperationStatus::Failed as i32,
                "{name}: {op:#?}"
            );
            let error = op.error.clone().expect("error");
            assert_eq!(error.step, name);
            assert!(error.message.contains("injected failure"), "{error:?}");
            assert!(error.compensation_errors.is_empty(), "{name}: {error:?}");
            let last = events.last().unwrap();
            assert!(last.message.contains(name), "{name}: {}", last.message);
            for (j, s) in op.steps.iter().enumerate() {
                let expected = match j.cmp(&i) {
                    std::cmp::Ordering::Less => pb::StepStatus::Passed,
                    std::cmp::Ordering::Equal => pb::StepStatus::Failed,
                    std::cmp::Ordering::Greater => pb::StepStatus::Skipped,
                };
                assert_eq!(s.status, expected as i32, "{name}: step {} {s:?}", s.name);
            }
            // The failed step did its work, so it was compensated too (moving the
            // subscription is undone by ending it, at the first step's compensation).
            let compensated = |step: &str| {
                events.iter().any(|e| {
                    e.step == step && e.r#type == pb::OperationEventType::Compensation as i32
                })
            };
            if name != "provision.subscription_provisioning" {
                assert!(compensated(name), "{name} is compensated: {events:#?}");
            }
            assert!(compensated("provision.validate_spec"), "{events:#?}");

            let result = provisioning_result(&op);
            let sub = subscription(&server, &result.subscription_id).await;
            assert_eq!(
                sub.status,
                pb::SubscriptionStatus::Failed as i32,
                "{name}: {sub:#?}"
            );
            assert!(
                sub.reason.contains(name) && sub.reason.contains("injected failure"),
                "{name}: the reason names the step: {:?}",
                sub.reason
            );
            assert!(sub.credit_pool.is_none(), "{name}: no credit pool");
            assert_eq!(
                graph_rows(&pool, &result.graph_id).await,
                (0, 0, 0),
                "{name}: no graph row, schema record or credit pool"
            );
            assert!(
                !graph_database_exists(&env, &pool, &result.graph_id).await,
                "{name}: no graph database"
            );
            assert_eq!(
                code(
                    client
                        .get_graph(pb::GetGraphRequest {
                            graph_id: result.graph_id.clone(),
                        })
                        .await
                ),
                Code::NotFound
            );
        }
        server.stop().await;
    }
    assert_eq!(all_graph_databases(&env, &pool).await, Vec::<String>::new());
    assert_eq!(
        count(&pool, "SELECT count(*) FROM graphs WHERE $1 = $1", "").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM credit_pools WHERE $1 = $1", "").await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM subscriptions WHERE status <> $1",
            "FAILED"
        )
        .await,
        0
    );
}

async fn access(server: &Server, user: &str) -> pb::Operation {
    let op = server
        .provisioning(user, Role::User)
        .await
        .provision_repository_access(pb::ProvisionRepositoryAccessRequest {
            request_id: "retail".into(),
            repository: "retail".into(),
            ..Default::default()
        })
        .await
        .expect("ProvisionRepositoryAccess")
        .into_inner();
    watch(
        &mut server.operations(user, Role::User).await,
        &op.operation_id,
    )
    .await
    .1
}

async fn failed_repository_access_keeps_the_shared_graph(db: TestDb) {
    let env = Env::new(db);
    let pool = env.pool().await;
    let server = env.server(&[]).await;
    let first = access(&server, "ann").await;
    assert_eq!(first.status, pb::OperationStatus::Succeeded as i32);
    let graph_id = provisioning_result(&first).graph_id;
    server.stop().await;
    for step in [
        "provision.allocate_graph",
        "provision.create_database",
        "provision.apply_schema",
        "provision.persist_schema",
        "provision.activate_subscription",
    ] {
        let server = env.server(&["--fail-step", step]).await;
        let user = format!("bob-{step}");
        let op = access(&server, &user).await;
        assert_eq!(op.status, pb::OperationStatus::Failed as i32, "{step}");
        let result = provisioning_result(&op);
        assert_eq!(result.graph_id, graph_id);
        let sub = subscription(&server, &result.subscription_id).await;
        assert_eq!(sub.status, pb::SubscriptionStatus::Failed as i32);
        assert!(sub.credit_pool.is_none());
        // The shared graph, its schema record and ann's pool are untouched.
        assert_eq!(graph_rows(&pool, &graph_id).await, (1, 1, 1), "{step}");
        assert!(
            graph_database_exists(&env, &pool, &graph_id).await,
            "{step}"
        );
        let ann = subscription(&server, &provisioning_result(&first).subscription_id).await;
        assert_eq!(ann.status, pb::SubscriptionStatus::Active as i32, "{step}");
        server.stop().await;
    }
}

async fn deprovision(server: &Server, user: &str, graph_id: &str) -> pb::Operation {
    let op = server
        .provisioning(user, Role::User)
        .await
        .deprovision_graph(pb::DeprovisionGraphRequest {
            graph_id: graph_id.into(),
            ..Default::default()
        })
        .await
        .expect("DeprovisionGraph")
        .into_inner();
    watch(
        &mut server.operations(user, Role::User).await,
        &op.operation_id,
    )
    .await
    .1
}

async fn failed_deprovisioning_is_safe_and_can_be_finished(db: TestDb) {
    let env = Env::new(db);
    let pool = env.pool().await;
    for step in DEPROVISION_STEPS {
        let server = env.server(&[]).await;
        let mut client = server.provisioning("dora", Role::User).await;
        let op = client
            .provision_graph(pb::ProvisionGraphRequest {
                graph: Some(custom_graph("kept")),
                ..Default::default()
            })
            .await
            .expect("ProvisionGraph")
            .into_inner();
        let (_, op) = watch(
            &mut server.operations("dora", Role::User).await,
            &op.operation_id,
        )
        .await;
        let graph_id = provisioning_result(&op).graph_id;
        server.stop().await;

        let server = env.server(&["--fail-step", step.name]).await;
        let failed = deprovision(&server, "dora", &graph_id).await;
        assert_eq!(
            failed.status,
            pb::OperationStatus::Failed as i32,
            "{}",
            step.name
        );
        assert_eq!(failed.error.clone().expect("error").step, step.name);
        let graph = server
            .provisioning("dora", Role::User)
            .await
            .get_graph(pb::GetGraphRequest {
                graph_id: graph_id.clone(),
            })
            .await;
        if step.name == "deprovision.mark_graph" {
            // Nothing was removed: the graph is whole and ACTIVE again.
            let graph = graph.expect("graph still there").into_inner();
            assert_eq!(graph.status, pb::GraphStatus::Active as i32);
            assert!(graph_database_exists(&env, &pool, &graph_id).await);
            assert_eq!(graph_rows(&pool, &graph_id).await, (1, 1, 1));
        } else if step.name == "deprovision.drop_database" {
            // The database is gone, so the graph must not claim to be ACTIVE.
            let graph = graph.expect("graph row until deprovisioned").into_inner();
            assert_eq!(graph.status, pb::GraphStatus::Deprovisioning as i32);
            assert!(!graph_database_exists(&env, &pool, &graph_id).await);
        } else {
            assert_eq!(code(graph), Code::NotFound);
        }
        server.stop().await;
        // A second DeprovisionGraph finishes whatever is left.
        let server = env.server(&[]).await;
        if step.name != "deprovision.remove_records" {
            let done = deprovision(&server, "dora", &graph_id).await;
            assert_eq!(
                done.status,
                pb::OperationStatus::Succeeded as i32,
                "{done:#?}"
            );
        }
        assert_eq!(graph_rows(&pool, &graph_id).await, (0, 0, 0));
        assert!(!graph_database_exists(&env, &pool, &graph_id).await);
        server.stop().await;
    }
}

async fn cancelled_before_start_cancels_the_subscription(db: TestDb) {
    let env = Env::new(db);
    // An API-only replica: queued work waits for a worker that never comes.
    let server = env.server(&["--queue-workers", "false"]).await;
    let mut client = server.provisioning("erin", Role::User).await;
    let op = client
        .provision_graph(pb::ProvisionGraphRequest {
            graph: Some(custom_graph("never")),
            execution_mode: pb::ExecutionMode::Queued as i32,
            ..Default::default()
        })
        .await
        .expect("ProvisionGraph")
        .into_inner();
    let sub_id = provisioning_result(&op).subscription_id;
    assert_eq!(
        subscription(&server, &sub_id).await.status,
        pb::SubscriptionStatus::Pending as i32
    );
    let mut ops = server.operations("erin", Role::User).await;
    ops.cancel_operation(pb::CancelOperationRequest {
        operation_id: op.operation_id.clone(),
        reason: "changed my mind".into(),
    })
    .await
    .expect("CancelOperation");
    let (_, op) = watch(&mut ops, &op.operation_id).await;
    assert_eq!(op.status, pb::OperationStatus::Cancelled as i32);
    let sub = subscription(&server, &sub_id).await;
    assert_eq!(sub.status, pb::SubscriptionStatus::Cancelled as i32);
    assert!(sub.reason.contains("changed my mind"), "{sub:?}");
    server.stop().await;
}

async fn concurrent_checkouts_provision_once(db: TestDb) {
    let env = Env::new(db);
    let pool = env.pool().await;
    let server = env.server(&[]).await;
    let billing = server.provisioning("billing", Role::Service).await;
    let request = pb::CompleteCheckoutRequest {
        checkout_id: "cs_live_a1b2c3".into(),
        user_id: "frank".into(),
        plan: "pro".into(),
        graph: Some(custom_graph("once")),
        execution_mode: 0,
        timeout: None,
    };
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let mut client = billing.clone();
            let request = request.clone();
            tokio::spawn(async move { client.complete_checkout(request).await })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for call in calls {
        let op = call
            .await
            .expect("task")
            .expect("CompleteCheckout")
            .into_inner();
        ids.insert(op.operation_id);
    }
    assert_eq!(ids.len(), 1, "one operation for one checkout: {ids:?}");
    let id = ids.pop_first().unwrap_or_default();
    let (_, op) = watch(&mut server.operations("frank", Role::User).await, &id).await;
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    // A duplicate after the fact gets the same operation; one asking for another plan
    // is refused and changes nothing.
    let mut client = billing.clone();
    let again = client
        .complete_checkout(request.clone())
        .await
        .expect("duplicate")
        .into_inner();
    assert_eq!(again.operation_id, id);
    let mut other = request.clone();
    other.plan = "enterprise".into();
    assert_eq!(
        code(client.complete_checkout(other).await),
        Code::FailedPrecondition
    );
    for (table, expected) in [
        ("graphs", 1),
        ("credit_pools", 1),
        ("subscriptions", 1),
        ("checkouts", 1),
    ] {
        let column = if table == "graphs" {
            "owner"
        } else {
            "user_id"
        };
        let n = count(
            &pool,
            &format!("SELECT count(*) FROM {table} WHERE {column} = $1"),
            "frank",
        )
        .await;
        assert_eq!(n, expected, "{table}");
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM operations WHERE kind = $1",
            "provisioning.graph"
        )
        .await,
        1
    );
    assert_eq!(all_graph_databases(&env, &pool).await.len(), 1);
    server.stop().await;
}

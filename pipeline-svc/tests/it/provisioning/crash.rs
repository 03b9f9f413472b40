//! Crash drill for provisioning ("Must show 4"): QUEUED mode, two real
//! pipeline-svc processes on one Postgres database. The process holding an operation's
//! lease is killed with SIGKILL inside a step; the survivor resumes the operation from the
//! last finished step and either finishes it or (with a later step failing) compensates
//! everything, including what the dead worker created. No subscription is left PENDING or
//! PROVISIONING.
//!
//! To land the kill inside a step, the test holds a SHARE lock on the table that the step
//! inserts into (reads go on, writes wait): the worker blocks there mid-step, its step
//! start recorded and its lease share-locked, until it is killed.

use std::time::{Duration, Instant};

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use pipeline_svc::store::sql::POSTGRES_SCHEMA;
use sqlx::{Connection, Executor, PgConnection};

use crate::common::{
    channel, operations_client, provisioning::*, replica::Replica, token, ProvisioningClient,
    TestDb,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_provisioning_is_finished_or_compensated_by_the_survivor() {
    let db = TestDb::postgres().await;
    tokio::time::timeout(Duration::from_secs(240), drill(db))
        .await
        .expect("the drill finishes within its time bound");
}

/// A QUEUED pipeline-svc process with short leases, failing `fail_step` when given.
fn replica(env: &Env, id: &str, fail_step: Option<&str>) -> Replica {
    let mut flags = vec![
        "--direct-execution",
        "false",
        "--lease-seconds",
        "2",
        "--poll-interval-millis",
        "100",
    ];
    if let Some(step) = fail_step {
        flags.extend(["--fail-step", step]);
    }
    Replica::spawn(&env.database_url, &env.data_dir, id, &flags)
}

async fn graphs(replica: &Replica, user: &str) -> ProvisioningClient {
    ProvisioningClient::new(channel(&replica.url, &token(user, Role::User)).await)
}

/// Waits until some backend of the database waits for a table lock.
async fn blocked(conn: &mut PgConnection) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND wait_event = 'relation'",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no worker blocked on the table within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Round {
    /// The step the worker is killed in, and the table whose lock holds it there.
    step: &'static str,
    table: &'static str,
    /// The survivor fails this later step, so it must compensate instead of finishing.
    fail_step: Option<&'static str>,
}

async fn drill(db: TestDb) {
    let env = Env::new(db);
    let pool = env.pool().await;
    let mut lock = PgConnection::connect(&env.database_url)
        .await
        .expect("pipeline database");
    // Reads go through another connection: inside the lock's transaction
    // pg_stat_activity would stay at its first snapshot.
    let mut look = PgConnection::connect(&env.database_url)
        .await
        .expect("pipeline database");
    let rounds = [
        Round {
            step: "provision.allocate_graph",
            table: "graphs",
            fail_step: None,
        },
        Round {
            step: "provision.persist_schema",
            table: "graph_schemas",
            fail_step: None,
        },
        Round {
            step: "provision.create_credit_pool",
            table: "credit_pools",
            fail_step: None,
        },
        Round {
            step: "provision.persist_schema",
            table: "graph_schemas",
            fail_step: Some("provision.activate_subscription"),
        },
        Round {
            step: "provision.create_credit_pool",
            table: "credit_pools",
            fail_step: Some("provision.activate_subscription"),
        },
    ];
    for (n, round) in rounds.iter().enumerate() {
        let mut replicas = vec![
            replica(&env, &format!("r{n}-a"), round.fail_step),
            replica(&env, &format!("r{n}-b"), round.fail_step),
        ];
        let user = format!("user-{n}");
        // The step's table is locked before the operation exists: whichever replica
        // claims it blocks inside the step.
        lock.execute("BEGIN").await.expect("begin");
        lock.execute(
            format!("LOCK TABLE {POSTGRES_SCHEMA}.{} IN SHARE MODE", round.table).as_str(),
        )
        .await
        .expect("lock the step's table");
        let op = graphs(&replicas[0], &user)
            .await
            .provision_graph(pb::ProvisionGraphRequest {
                graph: Some(custom_graph("crash")),
                ..Default::default()
            })
            .await
            .expect("ProvisionGraph")
            .into_inner();
        assert_eq!(op.execution_mode, pb::ExecutionMode::Queued as i32);
        blocked(&mut look).await;
        let holder: String = sqlx::query_scalar(&format!(
            "SELECT lease_owner FROM {POSTGRES_SCHEMA}.jobs WHERE operation_id = $1 AND state = 'leased'"
        ))
        .bind(&op.operation_id)
        .fetch_one(&mut look)
        .await
        .expect("the operation is leased");
        let mid = sqlx::query_scalar::<_, String>(&format!(
            "SELECT status FROM {POSTGRES_SCHEMA}.operation_steps WHERE operation_id = $1 AND name = $2"
        ))
        .bind(&op.operation_id)
        .bind(round.step)
        .fetch_one(&mut look)
        .await
        .expect("step");
        assert_eq!(mid, "RUNNING", "the worker is inside {}", round.step);
        let victim = replicas
            .iter()
            .position(|r| r.id == holder)
            .expect("the lease holder is one of the replicas");
        replicas.remove(victim).kill();
        lock.execute("ROLLBACK").await.expect("unlock");
        let survivor = &replicas[0];

        let (events, op) = watch(
            &mut operations_client(&survivor.url, &token(&user, Role::User)).await,
            &op.operation_id,
        )
        .await;
        assert_well_formed(&events);
        assert_eq!(op.attempts, 2, "resumed once after the crash: {op:#?}");
        assert!(
            events
                .iter()
                .any(|e| e.r#type == pb::OperationEventType::Started as i32
                    && e.message.contains(&format!("resumed on {}", survivor.id))),
            "the survivor resumed it: {events:#?}"
        );
        let result = provisioning_result(&op);
        let sub = graphs(survivor, &user)
            .await
            .get_subscription(pb::GetSubscriptionRequest {
                subscription_id: result.subscription_id.clone(),
            })
            .await
            .expect("GetSubscription")
            .into_inner();
        match round.fail_step {
            None => {
                assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
                assert_eq!(sub.status, pb::SubscriptionStatus::Active as i32);
                let graph = graphs(survivor, &user)
                    .await
                    .get_graph(pb::GetGraphRequest {
                        graph_id: result.graph_id.clone(),
                    })
                    .await
                    .expect("GetGraph")
                    .into_inner();
                assert_eq!(
                    introspect(&env, &pool, &graph).await,
                    expected_columns(&custom_spec(), true)
                );
                assert_eq!(graph_rows(&pool, &result.graph_id).await, (1, 1, 1));
            }
            Some(failed) => {
                assert_eq!(op.status, pb::OperationStatus::Failed as i32, "{op:#?}");
                assert_eq!(op.error.clone().expect("error").step, failed);
                assert_eq!(sub.status, pb::SubscriptionStatus::Failed as i32);
                assert!(sub.reason.contains(failed), "{sub:?}");
                // Including what the killed worker created before it died.
                assert_eq!(graph_rows(&pool, &result.graph_id).await, (0, 0, 0));
                assert!(!graph_database_exists(&env, &pool, &result.graph_id).await);
            }
        }
    }
    let unfinished = count(
        &pool,
        "SELECT count(*) FROM subscriptions WHERE status IN ('PENDING', $1)",
        "PROVISIONING",
    )
    .await;
    assert_eq!(
        unfinished, 0,
        "no subscription stays PENDING or PROVISIONING"
    );
}

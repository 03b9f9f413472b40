//! Retention through the engine and over gRPC: a purged operation's reads say it was
//! purged (to its owner; others get the plain NOT_FOUND), and two replicas purging at once
//! share the work through the purger's lease, in batches.

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use pipeline_svc::{
    domain::{
        engine::{operation::OpStatus, retention::Retention, Engine},
        now_micros, Micros,
    },
    store::sql::POSTGRES_SCHEMA,
};
use std::sync::Arc;
use tonic::Code;
use uuid::Uuid;

use crate::common::{
    noop::{collect, engine_config, store, TestFlow},
    operations_client,
    server::{pipeline_args, Server},
    token, TestDb,
};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    reads_of_a_purged_operation_say_so,
    two_replicas_purge_once_in_batches,
);

const DAY: Micros = 24 * 3600 * 1_000_000;
const RETENTION: Retention = Retention { days: 30, batch: 5 };

/// Makes every terminal operation look ended `days` ago.
async fn age_terminal(db: &TestDb, days: i64) {
    let raw = capstan_server::db::pool(&db.url, db.backend(), 1, Some(POSTGRES_SCHEMA))
        .await
        .expect("raw pool");
    sqlx::query(
        "UPDATE operations SET update_time = $1 \
         WHERE status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')",
    )
    .bind(now_micros() - days * DAY)
    .execute(&raw)
    .await
    .expect("age");
}

/// `n` operations of alice run to their end on `engine`.
async fn finished(engine: &Arc<Engine>, flow: &TestFlow, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let op = engine.start("alice", flow.request(2, None)).await.unwrap();
        collect(engine, op.id, 0).await;
        ids.push(op.id);
    }
    ids
}

async fn reads_of_a_purged_operation_say_so(db: TestDb) {
    let flow = TestFlow::default();
    // Its own purger off: this test runs the passes.
    let args = pipeline_args(
        &db.url,
        &db.dir.path().join("pipeline"),
        &["--operation-retention-days", "0"],
    );
    let server = Server::start_with(args, vec![flow.workflow()]).await;
    let engine = server.running.engine.clone();
    let old = finished(&engine, &flow, 1).await[0];
    age_terminal(&db, 31).await;
    let recent = finished(&engine, &flow, 1).await[0];
    let pass = engine
        .purge_expired(RETENTION)
        .await
        .unwrap()
        .expect("the lease");
    assert_eq!((pass.rows.operations, pass.batches), (1, 1));

    let mut alice = operations_client(&server.url, &token("alice", Role::User)).await;
    let mut bob = operations_client(&server.url, &token("bob", Role::User)).await;
    let id = old.to_string();
    let purged = format!("operation {old} was purged after the 30-day retention");
    let get = |id: &str| pb::GetOperationRequest {
        operation_id: id.to_string(),
    };
    let statuses = [
        alice.get_operation(get(&id)).await.unwrap_err(),
        alice
            .watch_operation(pb::WatchOperationRequest {
                operation_id: id.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap_err(),
        alice
            .retry_operation(pb::RetryOperationRequest {
                operation_id: id.clone(),
                request_id: "retry-purged".into(),
            })
            .await
            .unwrap_err(),
        alice
            .cancel_operation(pb::CancelOperationRequest {
                operation_id: id.clone(),
                reason: String::new(),
            })
            .await
            .unwrap_err(),
    ];
    for s in statuses {
        assert_eq!((s.code(), s.message()), (Code::NotFound, purged.as_str()));
    }
    // Another owner learns nothing, not even that it existed.
    let s = bob.get_operation(get(&id)).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    assert!(!s.message().contains("purged"), "{}", s.message());
    let unknown = Uuid::now_v7().to_string();
    let s = alice.get_operation(get(&unknown)).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::NotFound,
            format!("operation {unknown} does not exist").as_str()
        )
    );
    // The recent one is untouched.
    let op = alice
        .get_operation(get(&recent.to_string()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32);
    server.stop().await;
}

/// Two replicas on one database purge at once: one holds the lease and purges every old
/// operation in batches of 5 (12 → 5, 5, 2), the other purges nothing, neither fails.
async fn two_replicas_purge_once_in_batches(db: TestDb) {
    let flow = TestFlow::default();
    let a = flow.engine(store(&db.url, "a").await, engine_config("a"));
    let b = flow.engine(store(&db.url, "b").await, engine_config("b"));
    let ids = finished(&a, &flow, 12).await;
    age_terminal(&db, 45).await;
    let live = a.start("alice", flow.request(2, None)).await.unwrap();
    let (x, y) = tokio::join!(a.purge_expired(RETENTION), b.purge_expired(RETENTION));
    let (x, y) = (x.expect("a's pass"), y.expect("b's pass"));
    let pass = match (x, y) {
        (Some(p), None) | (None, Some(p)) => p,
        other => panic!("exactly one replica holds the lease: {other:?}"),
    };
    assert_eq!((pass.rows.operations, pass.batches), (12, 3));
    for id in ids {
        let e = a.get(id, None).await.unwrap_err();
        assert!(e.to_string().contains("purged"), "{e}");
    }
    // The new one ends and stays: it ended now.
    collect(&a, live.id, 0).await;
    assert_eq!(
        a.get(live.id, None).await.unwrap().status,
        OpStatus::Succeeded
    );
    let holder_again = [
        a.purge_expired(RETENTION).await.unwrap(),
        b.purge_expired(RETENTION).await.unwrap(),
    ];
    assert_eq!(holder_again.iter().filter(|p| p.is_some()).count(), 1);
    assert!(holder_again
        .iter()
        .flatten()
        .all(|p| p.rows.operations == 0));
}

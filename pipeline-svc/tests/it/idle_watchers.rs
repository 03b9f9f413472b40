//! What idle `WatchOperation` streams cost the database: nothing per stream. The replica's
//! one listener probe is the whole safety net, so the transactions the pipeline's
//! database runs while nothing happens are the same with 200 watchers as with none
//! (Postgres' own count, not a time). And they still follow: the next event reaches all.

use std::{sync::Arc, time::Duration};

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use tokio::sync::Semaphore;

use crate::common::{
    noop::TestFlow,
    operations_client,
    server::{pipeline_args, Server},
    token, TestDb,
};

const WATCHERS: usize = 200;
const WINDOW: Duration = Duration::from_secs(8);
/// A backend that reported less than a second ago holds its counts for up to 10 s
/// (Postgres' PGSTAT_IDLE_INTERVAL): the set-up's reads are all counted after this.
const SETTLE: Duration = Duration::from_secs(12);
/// Transactions a second that idle watchers may add: half of one per watcher a second: per-watcher polling (one read each a second) fails it, and
/// counts Postgres reports late under a loaded suite do not.
const PER_SECOND: i64 = WATCHERS as i64 / 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watchers_cost_the_database_nothing() {
    let db = TestDb::postgres().await;
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let args = pipeline_args(&db.url, &db.dir.path().join("pipeline"), &[]);
    let stack = Server::start_with(args, vec![flow.workflow()]).await;
    // The operation waits at its first step: nothing happens until the gate opens.
    let op = stack
        .running
        .engine
        .start("alice", flow.request(3, None))
        .await
        .unwrap();
    tokio::time::sleep(SETTLE).await;
    let without = db.transactions_during(WINDOW).await;

    let client = operations_client(&stack.url, &token("alice", Role::User)).await;
    let stored = stack
        .running
        .engine
        .get(op.id, None)
        .await
        .unwrap()
        .last_sequence;
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let mut s = client
            .clone()
            .watch_operation(pb::WatchOperationRequest {
                operation_id: op.id.to_string(),
                after_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        // The replay of what is stored, then the stream idles.
        while next_event(&mut s).await.sequence < stored {}
        streams.push(s);
    }
    tokio::time::sleep(SETTLE).await;
    let with = db.transactions_during(WINDOW).await;
    let allowed = without + PER_SECOND * WINDOW.as_secs() as i64;
    eprintln!("transactions in {WINDOW:?}: {without} with no watcher, {with} with {WATCHERS}");
    assert!(
        with <= allowed,
        "{WATCHERS} idle watchers cost {with} transactions in {WINDOW:?}, against {without} with none"
    );

    gate.add_permits(1);
    for s in &mut streams {
        assert_eq!(
            next_event(s).await.sequence,
            stored + 1,
            "the next event, live"
        );
    }
    stack.stop().await;
}

/// The next event that is not a heartbeat.
async fn next_event(s: &mut tonic::Streaming<pb::OperationEvent>) -> pb::OperationEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("an event in time")
            .expect("no error")
            .expect("the stream goes on");
        if e.r#type != pb::OperationEventType::Heartbeat as i32 {
            return e;
        }
    }
}

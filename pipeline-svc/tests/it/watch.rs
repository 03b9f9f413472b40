//! `WatchOperation` over gRPC: many watchers see the same gapless log, a slow watcher
//! neither loses events nor slows the operation, reconnecting with `after_sequence`
//! yields each event once, idle streams get heartbeats, shutdown ends streams and
//! releases leases.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use pipeline_svc::domain::{
    engine::{
        operation::{Event, EventType, OpStatus},
        Engine,
    },
    now_micros,
};
use tokio::sync::Semaphore;

use crate::common::{
    eventually,
    noop::TestFlow,
    operations_client,
    server::{pipeline_args, Server},
    token, TestDb,
};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    many_watchers_see_the_same_log,
    slow_watcher_loses_nothing_and_slows_nothing,
    reconnect_resumes_exactly_once,
    heartbeats_shutdown_and_release,
    watchers_on_another_replica_follow_live,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_listener_loses_no_event() {
    let db = TestDb::postgres().await;
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        progress_per_step: 1,
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let a = server(&db, &flow).await;
    // B's poll is slow on purpose: only its listener, or its resync after the listener is
    // back, can make it follow A's work promptly.
    let mut b_args = a.args.clone();
    b_args.poll_interval_millis = 10_000;
    let b = Server::start_with(b_args, vec![flow.workflow()]).await;
    let op = a
        .running
        .engine
        .start("alice", flow.request(5, None))
        .await
        .unwrap();
    // A works at once, while B's listener is gone: the announcements reach nobody.
    let cut = async {
        eventually(Duration::from_secs(10), || async {
            (db.terminate_listeners().await >= 2).then_some(())
        })
        .await
    };
    let (_, took) = follow_on(&a, &b.url, op.id, &gate, cut).await;
    assert!(
        took < Duration::from_secs(5),
        "B followed only by its 10 s poll: {took:?}"
    );
    b.stop().await;
    a.stop().await;
}

/// Watches `op` on replica `b_url` from the start; once the watch is live, runs
/// `before_work`, then opens the gate for A's work and follows it to the end. Checks that
/// B saw everything A recorded, in order (a step retried under load adds its own
/// events); the sequences, and how long after the gate opened the stream ended.
async fn follow_on(
    a: &Server,
    b_url: &str,
    op: uuid::Uuid,
    gate: &Semaphore,
    before_work: impl std::future::Future<Output = ()>,
) -> (Vec<i64>, Duration) {
    let mut client = operations_client(b_url, &token("alice", Role::User)).await;
    let mut s = client
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.to_string(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = vec![s.message().await.unwrap().unwrap().sequence];
    before_work.await;
    let t = Instant::now();
    gate.add_permits(1);
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), s.message())
        .await
        .expect("watch on B ends")
        .unwrap()
    {
        if !is_heartbeat(&e) {
            seen.push(e.sequence);
        }
    }
    let took = t.elapsed();
    let recorded = a.running.engine.get(op, None).await.unwrap().last_sequence;
    assert_eq!(seen, (1..=recorded).collect::<Vec<_>>());
    (seen, took)
}

/// A pipeline server on `db` that runs `flow`'s noop operations.
async fn server(db: &TestDb, flow: &TestFlow) -> Server {
    let args = pipeline_args(&db.url, &db.dir.path().join("pipeline"), &[]);
    Server::start_with(args, vec![flow.workflow()]).await
}

type Seen = Vec<(i64, i32, String)>;

fn key(e: &pb::OperationEvent) -> (i64, i32, String) {
    (e.sequence, e.r#type, e.message.clone())
}

fn is_heartbeat(e: &pb::OperationEvent) -> bool {
    e.r#type == pb::OperationEventType::Heartbeat as i32
}

async fn many_watchers_see_the_same_log(db: TestDb) {
    const WATCHERS: usize = 200;
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        progress_per_step: 2,
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let stack = server(&db, &flow).await;
    let engine = stack.running.engine.clone();
    let op = engine.start("alice", flow.request(30, None)).await.unwrap();
    let client = operations_client(&stack.url, &token("alice", Role::User)).await;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    let request = pb::WatchOperationRequest {
        operation_id: op.id.to_string(),
        after_sequence: 0,
    };
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let (mut c, ready, request) = (client.clone(), ready_tx.clone(), request.clone());
        watchers.push(tokio::spawn(async move {
            let mut s = c.watch_operation(request).await.unwrap().into_inner();
            let mut seen = Seen::new();
            while let Some(e) = s.message().await.unwrap() {
                if seen.is_empty() {
                    ready.send(()).await.unwrap();
                }
                if !is_heartbeat(&e) {
                    seen.push(key(&e));
                }
            }
            seen
        }));
    }
    // Every watcher is live before the work starts, so the events reach them as they
    // happen, not from the replay.
    for _ in 0..WATCHERS {
        ready_rx.recv().await.unwrap();
    }
    gate.add_permits(1);
    let stored = stored_log(&engine, op.id).await;
    assert_eq!(stored.len(), 2 + 30 * 4 + 1);
    for w in watchers {
        assert_eq!(
            w.await.unwrap(),
            stored,
            "every watcher sees the stored log, once, in order"
        );
    }
    assert_eq!(
        engine.get(op.id, None).await.unwrap().status,
        OpStatus::Succeeded
    );
    stack.stop().await;
}

async fn slow_watcher_loses_nothing_and_slows_nothing(db: TestDb) {
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        progress_per_step: 2,
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let stack = server(&db, &flow).await;
    let engine = stack.running.engine.clone();
    // 40 steps make ~200 events, more than every buffer between the store and this
    // client holds, so an engine that waited for its watchers would stall here.
    let op = engine.start("alice", flow.request(40, None)).await.unwrap();
    let mut client = operations_client(&stack.url, &token("alice", Role::User)).await;
    let mut s = client
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.id.to_string(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    let (finished, wait_finished) = tokio::sync::oneshot::channel::<()>();
    gate.add_permits(1);
    // The slowest watcher there is: it reads nothing more until the operation has ended.
    let slow = tokio::spawn(async move {
        let mut seen = vec![key(&first)];
        wait_finished.await.unwrap();
        while let Some(e) = s.message().await.unwrap() {
            if !is_heartbeat(&e) {
                seen.push(key(&e));
            }
        }
        seen
    });
    eventually(Duration::from_secs(60), || async {
        let op = engine.get(op.id, None).await.unwrap();
        op.status.is_terminal().then_some(())
    })
    .await;
    finished.send(()).unwrap();
    let stored = stored_log(&engine, op.id).await;
    let seen: Seen = slow.await.unwrap().into_iter().collect();
    assert_eq!(seen, stored, "the slow watcher loses nothing");
    stack.stop().await;
}

/// The operation's stored log once it finished, as the wire shows it.
async fn stored_log(engine: &Arc<Engine>, id: uuid::Uuid) -> Seen {
    eventually(Duration::from_secs(30), || async {
        let op = engine.get(id, None).await.unwrap();
        op.status.is_terminal().then_some(())
    })
    .await;
    engine
        .store()
        .events(id, 0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| key(&event_pb(e)))
        .collect()
}

/// The wire form of a stored event, as WatchOperation sends it.
fn event_pb(e: &Event) -> pb::OperationEvent {
    pb::OperationEvent {
        sequence: e.sequence,
        r#type: match e.kind {
            EventType::Created => pb::OperationEventType::Created,
            EventType::Started => pb::OperationEventType::Started,
            EventType::StepStarted => pb::OperationEventType::StepStarted,
            EventType::StepFinished => pb::OperationEventType::StepFinished,
            EventType::Progress => pb::OperationEventType::Progress,
            EventType::Compensation => pb::OperationEventType::Compensation,
            EventType::CancelRequested => pb::OperationEventType::CancelRequested,
            EventType::Finished => pb::OperationEventType::Finished,
            EventType::Heartbeat => pb::OperationEventType::Heartbeat,
            EventType::Retried => pb::OperationEventType::Retried,
        } as i32,
        message: e.message.clone(),
        ..Default::default()
    }
}

async fn reconnect_resumes_exactly_once(db: TestDb) {
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        progress_per_step: 1,
        gate: Some((3, gate.clone())),
        ..Default::default()
    };
    let stack = server(&db, &flow).await;
    let engine = stack.running.engine.clone();
    let op = engine.start("alice", flow.request(8, None)).await.unwrap();
    let mut client = operations_client(&stack.url, &token("alice", Role::User)).await;
    let watch = |after| pb::WatchOperationRequest {
        operation_id: op.id.to_string(),
        after_sequence: after,
    };
    // Read live until the operation blocks in s3, then drop the stream.
    let mut seen = Vec::new();
    {
        let mut s = client.watch_operation(watch(0)).await.unwrap().into_inner();
        while let Some(e) = s.message().await.unwrap() {
            if is_heartbeat(&e) {
                continue;
            }
            let blocked = e.step == "s3" && e.r#type == pb::OperationEventType::Progress as i32;
            seen.push(e.sequence);
            if blocked {
                break;
            }
        }
    }
    let resume_at = *seen.last().unwrap();
    gate.add_permits(1);
    let mut s = client
        .watch_operation(watch(resume_at))
        .await
        .unwrap()
        .into_inner();
    while let Some(e) = s.message().await.unwrap() {
        if !is_heartbeat(&e) {
            seen.push(e.sequence);
        }
    }
    let n = engine.get(op.id, None).await.unwrap().last_sequence;
    assert_eq!(seen, (1..=n).collect::<Vec<_>>(), "each event exactly once");

    // After the terminal event there is nothing more; from the middle, the rest.
    let mut s = client.watch_operation(watch(n)).await.unwrap().into_inner();
    assert!(s.message().await.unwrap().is_none());
    let mut s = client
        .watch_operation(watch(n - 3))
        .await
        .unwrap()
        .into_inner();
    let mut tail = Vec::new();
    while let Some(e) = s.message().await.unwrap() {
        tail.push(e.sequence);
    }
    assert_eq!(tail, [n - 2, n - 1, n]);
    let err = client.watch_operation(watch(-1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    stack.stop().await;
}

async fn heartbeats_shutdown_and_release(db: TestDb) {
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let stack = server(&db, &flow).await;
    let engine = stack.running.engine.clone();
    let op = engine.start("alice", flow.request(3, None)).await.unwrap();
    let mut client = operations_client(&stack.url, &token("alice", Role::User)).await;
    let mut s = client
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.id.to_string(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let t = Instant::now();
    let beat = loop {
        let e = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("an idle stream gets heartbeats")
            .unwrap()
            .unwrap();
        if is_heartbeat(&e) {
            break e;
        }
    };
    assert_eq!(beat.sequence, 0);
    assert_eq!(beat.status, pb::OperationStatus::Running as i32);
    assert!(t.elapsed() < Duration::from_secs(3));

    // Shutdown ends the stream; the running step finishes, and the job goes back to the
    // queue instead of waiting for its lease to expire.
    stack.running.shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "shutdown ends watch streams");
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), engine.drained())
        .await
        .expect("executions drain");
    let op = engine.get(op.id, None).await.unwrap();
    assert_eq!(op.status, OpStatus::Running);
    assert!(op.message.contains("shutting down"), "{}", op.message);
    let lease = engine
        .jobs()
        .claim("other", now_micros(), 1000)
        .await
        .unwrap()
        .expect("released job is claimable at once");
    assert_eq!(lease.operation_id, op.id);
    stack.stop().await;
}

async fn watchers_on_another_replica_follow_live(db: TestDb) {
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        progress_per_step: 1,
        step_delay: Duration::from_millis(5),
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let postgres = db.is_postgres();
    let a = server(&db, &flow).await;
    // Replica B shares A's database. On Postgres its poll is slow on purpose: only
    // LISTEN/NOTIFY can make it follow A's work promptly. SQLite has no notifications,
    // so there B relies on the poll.
    let mut b_args = a.args.clone();
    b_args.poll_interval_millis = if postgres { 10_000 } else { 50 };
    let b = Server::start_with(b_args, vec![flow.workflow()]).await;
    let op = a
        .running
        .engine
        .start("alice", flow.request(10, None))
        .await
        .unwrap();
    let (seen, took) = follow_on(&a, &b.url, op.id, &gate, async {}).await;
    eprintln!("watch on the other replica followed the operation in {took:?}");
    let at_least = 2 + 10 * 3 + 1;
    assert!(seen.len() >= at_least, "{} events", seen.len());
    // B polls every 10 s on Postgres, so following within 5 s shows the notifications
    // carried it. On SQLite B's poll carries it by design; there is nothing to tell apart.
    if postgres {
        assert!(
            took < Duration::from_secs(5),
            "B followed only by polling: {took:?}"
        );
    }
    b.stop().await;
    a.stop().await;
}

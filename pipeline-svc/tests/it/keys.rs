//! Concurrency keys through the engine, on SQLite and Postgres, DIRECT and QUEUED (two
//! replicas on one database): operations of one key run one at a time in order of
//! arrival, waiters stay PENDING naming the operation ahead, other keys run alongside, a
//! cancelled waiter ends without running, and the per-owner limit holds. Waiting costs the
//! database nothing (Postgres counts the transactions).

use std::{sync::Arc, time::Duration};

use pipeline_svc::domain::{
    engine::{
        operation::{Event, EventType, ExecutionMode, OpStatus, StepStatus},
        Engine,
    },
    Micros,
};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::common::{eventually, noop::*, TestDb};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    direct_operations_of_one_key_take_turns,
    queued_operations_of_one_key_take_turns_across_replicas,
    different_keys_run_side_by_side,
    a_cancelled_waiter_ends_without_running,
    the_owner_limit_holds_through_the_engine,
);

/// When each operation ran: from its STARTED event to its FINISHED one.
fn span(events: &[Event]) -> (Micros, Micros) {
    let at = |kind| {
        events
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} in {events:#?}"))
            .time
    };
    (at(EventType::Started), at(EventType::Finished))
}

/// Starts `n` operations of `flow` one after another and waits for all of them; returns
/// their ids (in arrival order) and events.
async fn run_all(
    engines: &[Arc<Engine>],
    flow: &TestFlow,
    n: usize,
    mode: ExecutionMode,
) -> Vec<(Uuid, Vec<Event>)> {
    let mut ids = Vec::new();
    for i in 0..n {
        let engine = &engines[i % engines.len()];
        let op = engine
            .start(&format!("user{i}"), flow.request(3, Some(mode)))
            .await
            .unwrap();
        ids.push(op.id);
    }
    let mut out = Vec::new();
    for id in ids {
        out.push((id, collect(&engines[0], id, 0).await));
    }
    out
}

/// Every operation succeeded, none overlapped another, and they ran in arrival order;
/// each one that waited said, while PENDING, which operation was ahead.
fn assert_took_turns(runs: &[(Uuid, Vec<Event>)]) {
    let mut previous_end = 0;
    for (i, (id, events)) in runs.iter().enumerate() {
        assert_gapless(events, 1);
        let last = events.last().unwrap();
        assert_eq!(last.status, OpStatus::Succeeded, "{id}: {events:#?}");
        let (start, end) = span(events);
        assert!(
            start >= previous_end,
            "operation {i} started before operation {} ended",
            i - 1
        );
        previous_end = end;
        if i > 0 {
            let waited = events
                .iter()
                .find(|e| e.kind == EventType::Progress && e.message.starts_with("waiting"))
                .unwrap_or_else(|| panic!("operation {i} never said it waited: {events:#?}"));
            assert_eq!(waited.status, OpStatus::Pending);
            assert!(
                waited.message.contains(&runs[i - 1].0.to_string())
                    || runs[..i]
                        .iter()
                        .any(|(ahead, _)| waited.message.contains(&ahead.to_string())),
                "{}",
                waited.message
            );
        }
    }
}

fn keyed(key: &str) -> TestFlow {
    TestFlow {
        keys: vec![key.to_string()],
        step_delay: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn direct_operations_of_one_key_take_turns(db: TestDb) {
    let flow = keyed("k");
    let engine = flow.engine(store(&db.url, "r1").await, engine_config("r1"));
    let runs = run_all(&[engine], &flow, 4, ExecutionMode::Direct).await;
    assert_took_turns(&runs);
}

async fn queued_operations_of_one_key_take_turns_across_replicas(db: TestDb) {
    let flow = keyed("k");
    let a = flow.engine(store(&db.url, "r1").await, engine_config("r1"));
    let b = flow.engine(store(&db.url, "r2").await, engine_config("r2"));
    let runs = run_all(&[a, b], &flow, 6, ExecutionMode::Queued).await;
    assert_took_turns(&runs);
}

async fn different_keys_run_side_by_side(db: TestDb) {
    let gate = Arc::new(Semaphore::new(0));
    let flow = |key: &str| TestFlow {
        gate: Some((0, gate.clone())),
        ..keyed(key)
    };
    let (x, y) = (flow("x"), flow("y"));
    let engine = x.engine(store(&db.url, "r1").await, engine_config("r1"));
    let mut ids = Vec::new();
    for f in [&x, &y] {
        ids.push(engine.start("alice", f.request(2, None)).await.unwrap().id);
    }
    // Both hold their step 0 at once: neither waits for the other.
    eventually(Duration::from_secs(10), || async {
        let mut running = 0;
        for id in &ids {
            let op = engine.get(*id, None).await.unwrap();
            running += usize::from(op.steps[0].status == StepStatus::Running);
        }
        (running == 2).then_some(())
    })
    .await;
    gate.add_permits(2);
    for id in ids {
        let events = collect(&engine, id, 0).await;
        assert_eq!(events.last().unwrap().status, OpStatus::Succeeded);
    }
}

async fn a_cancelled_waiter_ends_without_running(db: TestDb) {
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        gate: Some((0, gate.clone())),
        ..keyed("k")
    };
    let engine = flow.engine(store(&db.url, "r1").await, engine_config("r1"));
    let holder = engine.start("alice", flow.request(1, None)).await.unwrap();
    let waiter = engine.start("bob", flow.request(1, None)).await.unwrap();
    assert_eq!(waiter.status, OpStatus::Pending);
    assert!(
        waiter.message.contains(&holder.id.to_string()),
        "{}",
        waiter.message
    );
    engine
        .cancel(waiter.id, None, "no longer needed")
        .await
        .unwrap();
    let events = collect(&engine, waiter.id, 0).await;
    assert_eq!(events.last().unwrap().status, OpStatus::Cancelled);
    assert!(
        events.iter().all(|e| e.kind != EventType::StepStarted),
        "the waiter ran a step: {events:#?}"
    );
    gate.add_permits(1);
    let events = collect(&engine, holder.id, 0).await;
    assert_eq!(events.last().unwrap().status, OpStatus::Succeeded);
    assert_eq!(flow.log(), ["s0"], "only the holder ran");
}

async fn the_owner_limit_holds_through_the_engine(db: TestDb) {
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let mut cfg = engine_config("r1");
    cfg.max_running_per_owner = 1;
    let engine = flow.engine(store(&db.url, "r1").await, cfg);
    let first = engine.start("alice", flow.request(1, None)).await.unwrap();
    let second = engine.start("alice", flow.request(1, None)).await.unwrap();
    let other = engine.start("bob", flow.request(1, None)).await.unwrap();
    assert!(second.message.contains("limit"), "{}", second.message);
    eventually(Duration::from_secs(10), || async {
        let ran = flow.log().len();
        (ran == 2).then_some(())
    })
    .await;
    let waiting = engine.get(second.id, None).await.unwrap();
    assert_eq!(
        waiting.status,
        OpStatus::Pending,
        "alice's second one waits"
    );
    gate.add_permits(3);
    for id in [first.id, second.id, other.id] {
        let events = collect(&engine, id, 0).await;
        assert_eq!(events.last().unwrap().status, OpStatus::Succeeded);
    }
}

/// Commits in the test's database so far, as Postgres counts them. Backends report their
/// counts up to 10 s late when idle (PGSTAT_IDLE_INTERVAL), so readers wait that out.
async fn commits(pool: &sqlx::AnyPool) -> i64 {
    sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_database")
}

/// Commits an idle window may count that are not the waiters': the counter's own read,
/// and counts of earlier work that a loaded server flushes late (up to 21 seen while the
/// whole suite ran); half of what one transaction per waiter would add.
const MAX_IDLE_COMMITS: i64 = 50;

/// Longer than a Postgres backend keeps its counts to itself while idle.
const STATS_SETTLE: Duration = Duration::from_secs(11);

/// An operation waiting behind a key costs the database nothing: with one holder (held
/// mid-step) and 100 DIRECT waiters, an idle window commits no transaction but the
/// counter's own read (within a small allowance for late counts, far below one per
/// waiter); then the holder ends and every waiter is woken and runs, with the poll and
/// the lease heartbeats far beyond the test, so only the wake-ups can do it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_behind_a_key_costs_the_database_nothing() {
    let db = TestDb::postgres().await;
    let backend = capstan_server::db::Backend::of_url(&db.url).unwrap();
    let store = store(&db.url, "waiter").await;
    let meter = capstan_server::db::pool(&db.url, backend, 1, None)
        .await
        .unwrap();
    // Autovacuum would count its own transactions in the window.
    sqlx::query(
        "DO $$ DECLARE t record; BEGIN FOR t IN SELECT schemaname, tablename FROM pg_tables \
         WHERE schemaname = 'capstan_pipeline' LOOP EXECUTE format('ALTER TABLE %I.%I SET \
         (autovacuum_enabled = false)', t.schemaname, t.tablename); END LOOP; END $$",
    )
    .execute(&meter)
    .await
    .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        keys: vec!["alias:busy".into()],
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let mut cfg = engine_config("waiter");
    cfg.poll_interval = Duration::from_secs(600);
    cfg.lease = Duration::from_secs(1800);
    // No worker, no listener, no queue gauge: only the executions touch the database.
    let engine = flow.idle_engine(store, cfg);
    let mut ids = Vec::new();
    for i in 0..101 {
        let op = engine
            .start(
                &format!("user{i}"),
                flow.request(1, Some(ExecutionMode::Direct)),
            )
            .await
            .unwrap();
        ids.push(op.id);
    }
    eventually(Duration::from_secs(60), || async {
        let holder = engine.get(ids[0], None).await.unwrap();
        let waiting = engine.get(ids[100], None).await.unwrap();
        (holder.status == OpStatus::Running && waiting.message.contains("waiting for"))
            .then_some(())
    })
    .await;
    tokio::time::sleep(STATS_SETTLE).await;
    let before = commits(&meter).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::time::sleep(STATS_SETTLE).await;
    let after = commits(&meter).await;
    // Alone it is exactly 1, the counter's own read; under a loaded server a few counts
    // from before the window flush late. A cost per waiter (a poll, a heartbeat) would
    // add at least 100.
    assert!(
        after - before <= MAX_IDLE_COMMITS,
        "101 operations on one key, 100 of them waiting, committed {} transactions in an \
         idle window (1 of them the counter's own read)",
        after - before
    );
    let waiting = engine.get(ids[100], None).await.unwrap();
    assert_eq!(waiting.status, OpStatus::Pending, "{waiting:?}");
    // The key frees: every waiter runs in turn, woken, not polled.
    gate.add_permits(1);
    for id in &ids {
        let events = collect(&engine, *id, 0).await;
        assert_eq!(events.last().unwrap().status, OpStatus::Succeeded);
    }
}

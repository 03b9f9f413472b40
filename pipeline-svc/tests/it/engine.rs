//! Behaviour of the operations engine, through the `noop` workflow, on SQLite and on
//! Postgres: gapless event sequences, forward-only status and percent, idempotent starts,
//! resume after a crash, compensations in reverse, cancellation, queue latency, and a
//! watcher that falls behind. (What the stores themselves guarantee is in `contract`.)

use std::{sync::Arc, time::Duration};

use pipeline_svc::{
    domain::{
        engine::{
            operation::{EventType, ExecutionMode, OpStatus, StepStatus},
            ports::Change,
            retry::RetryPolicy,
            EngineConfig, StartOperation,
        },
        now_micros,
    },
    error::Error,
};
use tokio::sync::Semaphore;

use crate::common::{eventually, noop::*, TestDb};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    gapless_forward_only_run,
    idempotent_start,
    unavailable_steps_run_again,
    injected_failures_pass_after_n_attempts,
    cancel_reaches_a_running_step,
    a_hanging_step_is_cancelled_at_its_limit,
    failure_compensates_in_reverse,
    crash_resumes_from_last_finished_step,
    cancel_queued_and_running,
    queued_jobs_start_promptly,
    stalled_watcher_falls_back_to_the_store,
);

fn rank(s: OpStatus) -> u8 {
    match s {
        OpStatus::Pending => 0,
        OpStatus::Running => 1,
        _ => 2,
    }
}

async fn gapless_forward_only_run(db: TestDb) {
    let url = db.url.clone();
    let flow = TestFlow {
        progress_per_step: 2,
        ..Default::default()
    };
    let engine = flow.engine(store(&url, "r1").await, engine_config("r1"));
    let op = engine.start("alice", flow.request(20, None)).await.unwrap();
    assert_eq!(op.last_sequence, 1);
    let events = collect(&engine, op.id, 0).await;
    assert_gapless(&events, 1);
    // created, started, 20 × (started, 2 progress, finished), finished
    assert_eq!(events.len(), 2 + 20 * 4 + 1);
    assert_eq!(events[0].kind, EventType::Created);
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind, last.status, last.percent),
        (EventType::Finished, OpStatus::Succeeded, 100)
    );
    for w in events.windows(2) {
        assert!(w[1].percent >= w[0].percent, "percent went back: {w:#?}");
        assert!(
            rank(w[1].status) >= rank(w[0].status),
            "status went back: {w:#?}"
        );
    }
    let done = engine.get(op.id, None).await.unwrap();
    assert_eq!(done.status, OpStatus::Succeeded);
    assert_eq!(done.last_sequence, events.len() as i64);
    assert!(done.start_time.is_some() && done.end_time.is_some());
    for s in &done.steps {
        assert_eq!((s.status, s.attempt), (StepStatus::Passed, 1), "{s:?}");
        assert!(s.start_time.is_some() && s.end_time.is_some());
    }
    // A late write cannot touch a finished operation, and writes no event.
    let late = Change {
        status: Some(OpStatus::Running),
        percent: Some(10),
        ..Change::new(EventType::Progress, "late", now_micros())
    };
    let err = engine.store().record(op.id, None, &late).await.unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    assert_eq!(
        engine.store().events(op.id, 0, 1000).await.unwrap().len(),
        events.len()
    );

    // 20 no-op durable steps (timing is asserted in release benchmarks; here it is shown).
    let flow = TestFlow::default();
    let fast = flow.engine(store(&url, "r2").await, engine_config("r2"));
    let t = std::time::Instant::now();
    let op = fast.start("alice", start_request(20, None)).await.unwrap();
    let events = collect(&fast, op.id, 0).await;
    eprintln!(
        "20 no-op durable steps: {:?} ({} events)",
        t.elapsed(),
        events.len()
    );
    assert_eq!(events.last().unwrap().status, OpStatus::Succeeded);
}

async fn idempotent_start(db: TestDb) {
    let url = db.url.clone();
    let engine = idle_engine(store(&url, "r1").await);
    let req = || StartOperation {
        request_id: Some("req-1".into()),
        ..start_request(2, Some(ExecutionMode::Queued))
    };
    let a = engine.start("alice", req()).await.unwrap();
    let again = engine.start("alice", req()).await.unwrap();
    let b = engine.start("bob", req()).await.unwrap();
    assert_eq!(a.id, again.id);
    assert_ne!(a.id, b.id, "request ids are per owner");
    assert_eq!(again.request_id.as_deref(), Some("req-1"));
    assert_eq!(engine.store().events(a.id, 0, 10).await.unwrap().len(), 1);
    // Owners see only their own operations.
    assert!(matches!(
        engine.get(a.id, Some("bob")).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        engine.cancel(a.id, Some("bob"), "").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        engine.watch(a.id, Some("bob"), 0).await,
        Err(Error::NotFound { .. })
    ));
    let bad = engine
        .start(
            "alice",
            StartOperation {
                kind: "nope".into(),
                ..start_request(1, None)
            },
        )
        .await;
    assert!(matches!(bad, Err(Error::Invalid(_))));
}

async fn failure_compensates_in_reverse(db: TestDb) {
    let url = db.url.clone();
    let flow = TestFlow {
        fail_at: Some(3),
        failing_compensation: Some(1),
        ..Default::default()
    };
    let engine = flow.engine(store(&url, "r1").await, engine_config("r1"));
    let op = engine.start("alice", flow.request(6, None)).await.unwrap();
    let events = collect(&engine, op.id, 0).await;
    assert_gapless(&events, 1);
    assert_eq!(
        flow.log(),
        ["s0", "s1", "s2", "s3", "undo:s3", "undo:s2", "undo:s1", "undo:s0"]
    );
    let op = engine.get(op.id, None).await.unwrap();
    assert_eq!(op.status, OpStatus::Failed);
    let err = op.error.clone().unwrap();
    assert_eq!(err.step.as_deref(), Some("s3"));
    assert!(
        err.message.contains("s3 exploded"),
        "the original failure stays: {err:?}"
    );
    assert_eq!(err.compensation_errors.len(), 1);
    assert!(err.compensation_errors[0].contains("undo of s1 exploded"));
    let statuses: Vec<_> = op.steps.iter().map(|s| s.status).collect();
    use StepStatus::*;
    assert_eq!(statuses, [Passed, Passed, Passed, Failed, Skipped, Skipped]);
    let comp: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventType::Compensation)
        .map(|e| (e.step.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(comp.len(), 4);
    assert_eq!(comp[0].0, "s3");
    assert!(comp[2].1.contains("compensation of s1 failed"), "{comp:?}");
    let last = events.last().unwrap();
    assert_eq!(last.status, OpStatus::Failed);
    assert!(
        last.message.contains("failed at step s3"),
        "{}",
        last.message
    );
}

async fn crash_resumes_from_last_finished_step(db: TestDb) {
    let url = db.url.clone();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Replica A runs s0 and s1, hangs in s2 and crashes: its runtime dies mid-step,
    // without releasing the lease.
    let (url_a, log_a) = (url.clone(), log.clone());
    let id = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let id = rt.block_on(async {
            let flow = TestFlow {
                log: log_a.clone(),
                gate: Some((2, Arc::new(Semaphore::new(0)))),
                ..Default::default()
            };
            let engine = flow.engine(store(&url_a, "A").await, engine_config("A"));
            let op = engine
                .start("alice", start_request(5, Some(ExecutionMode::Queued)))
                .await
                .unwrap();
            // The store marks s2 running just before its body runs: wait for the body too,
            // so that the crash is inside the step on a loaded machine as well.
            let entered = log_a.clone();
            eventually(Duration::from_secs(10), || async {
                let op = engine.get(op.id, None).await.unwrap();
                let in_s2 = entered.lock().unwrap().len() == 3;
                (op.steps[2].status == StepStatus::Running && in_s2).then_some(())
            })
            .await;
            op.id
        });
        rt.shutdown_timeout(Duration::from_millis(100));
        id
    })
    .join()
    .unwrap();

    let flow = TestFlow {
        log: log.clone(),
        ..Default::default()
    };
    let b = flow.engine(store(&url, "B").await, engine_config("B"));
    let events = collect(&b, id, 0).await;
    assert_gapless(&events, 1);
    assert_eq!(*log.lock().unwrap(), ["s0", "s1", "s2", "s2", "s3", "s4"]);
    let op = b.get(id, None).await.unwrap();
    assert_eq!(op.status, OpStatus::Succeeded);
    assert_eq!(op.attempts, 2);
    let attempts: Vec<_> = op.steps.iter().map(|s| s.attempt).collect();
    assert_eq!(attempts, [1, 1, 2, 1, 1]);
    assert!(
        events.iter().any(|e| e.kind == EventType::Started
            && e.message.contains("resumed on B (attempt 2); 2 of 5")),
        "{events:#?}"
    );
    assert_eq!(
        op.state["done"], 5,
        "state saved by A's finished steps carried over"
    );
}

async fn cancel_queued_and_running(db: TestDb) {
    let url = db.url.clone();
    let idle = idle_engine(store(&url, "idle").await);
    let queued = idle
        .start("alice", start_request(3, Some(ExecutionMode::Queued)))
        .await
        .unwrap();
    let cancelled = idle
        .cancel(queued.id, Some("alice"), "changed my mind")
        .await
        .unwrap();
    assert_eq!(cancelled.status, OpStatus::Cancelled);
    assert!(cancelled
        .steps
        .iter()
        .all(|s| s.status == StepStatus::Skipped));
    let events = collect(&idle, queued.id, 0).await;
    assert_eq!(events.len(), 2);
    assert!(events[1].message.contains("changed my mind"));
    assert!(
        idle.jobs()
            .claim("w", now_micros(), 1000)
            .await
            .unwrap()
            .is_none(),
        "no job left"
    );

    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        gate: Some((1, gate.clone())),
        ..Default::default()
    };
    let engine = flow.engine(store(&url, "r1").await, engine_config("r1"));
    let op = engine.start("alice", flow.request(4, None)).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        let op = engine.get(op.id, None).await.unwrap();
        (op.steps[1].status == StepStatus::Running).then_some(())
    })
    .await;
    let flagged = engine.cancel(op.id, None, "stop").await.unwrap();
    assert!(flagged.cancel_requested);
    assert_eq!(flagged.status, OpStatus::Running);
    // The cancellation reaches s1 while it waits at the gate: nobody opens it.
    let events = collect(&engine, op.id, 0).await;
    assert_gapless(&events, 1);
    assert_eq!(flow.log(), ["s0", "s1", "undo:s1", "undo:s0"]);
    let op = engine.get(op.id, None).await.unwrap();
    assert_eq!(op.status, OpStatus::Cancelled);
    use StepStatus::*;
    let statuses: Vec<_> = op.steps.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [Passed, Skipped, Skipped, Skipped]);
    assert!(events.iter().any(|e| e.kind == EventType::CancelRequested));
}

async fn queued_jobs_start_promptly(db: TestDb) {
    let url = db.url.clone();
    let mut cfg = engine_config("r1");
    // The poll is slow on purpose: only the wake-up can start jobs promptly.
    cfg.poll_interval = Duration::from_secs(5);
    let engine = TestFlow::default().engine(store(&url, "r1").await, cfg);
    let mut waits = Vec::new();
    for _ in 0..15 {
        let op = engine
            .start("alice", start_request(1, Some(ExecutionMode::Queued)))
            .await
            .unwrap();
        let events = collect(&engine, op.id, 0).await;
        let started = events
            .iter()
            .find(|e| e.kind == EventType::Started)
            .unwrap();
        waits.push(started.time - op.create_time);
    }
    waits.sort();
    let p50_ms = waits[waits.len() / 2] as f64 / 1000.0;
    eprintln!(
        "enqueue-to-start: p50 {p50_ms:.2} ms, max {:.2} ms",
        *waits.last().unwrap() as f64 / 1000.0
    );
    assert!(p50_ms < 100.0, "p50 {p50_ms} ms");
}

async fn stalled_watcher_falls_back_to_the_store(db: TestDb) {
    let url = db.url.clone();
    let gate = Arc::new(Semaphore::new(0));
    let flow = TestFlow {
        progress_per_step: 3,
        gate: Some((0, gate.clone())),
        ..Default::default()
    };
    let engine = flow.engine(store(&url, "r1").await, engine_config("r1"));
    let op = engine
        .start("alice", flow.request(100, None))
        .await
        .unwrap();
    // Subscribed before the work starts, then not read until it ends: far more events
    // than the live buffers hold, so the watcher lags and must catch up from the store.
    let mut rx = engine.watch(op.id, None, 0).await.unwrap();
    gate.add_permits(1);
    let done = eventually(Duration::from_secs(30), || async {
        let op = engine.get(op.id, None).await.unwrap();
        op.status.is_terminal().then_some(op)
    })
    .await;
    assert_eq!(done.status, OpStatus::Succeeded);
    assert_eq!(done.last_sequence, 2 + 100 * 5 + 1);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        if e.kind != EventType::Heartbeat {
            events.push(e);
        }
    }
    assert_gapless(&events, 1);
    assert_eq!(events.len() as i64, done.last_sequence);
}

async fn unavailable_steps_run_again(db: TestDb) {
    let url = db.url.clone();
    // Three engines share the database one after the other, each with its own flow; none
    // runs queue workers, so none takes over another's operation (each checks what its
    // own flow did; takeovers have their own tests).
    let engine_config = |replica: &str| EngineConfig {
        queue_workers: false,
        ..engine_config(replica)
    };
    // Down for two runs, then back: the third attempt passes and the operation succeeds.
    let flow = TestFlow {
        unavailable: Some((2, 2)),
        ..Default::default()
    };
    let mut cfg = engine_config("r1");
    cfg.step_retry = RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(40),
        max_backoff: Duration::from_millis(60),
        multiplier: 2.0,
        jitter: 0.5,
        ..RetryPolicy::default()
    };
    let policy = cfg.step_retry;
    let engine = flow.engine(store(&url, "r1").await, cfg);
    let op = engine.start("alice", flow.request(4, None)).await.unwrap();
    let events = collect(&engine, op.id, 0).await;
    assert_gapless(&events, 1);
    assert_eq!(flow.log(), ["s0", "s1", "s2", "s2", "s2", "s3"]);
    let s2: Vec<_> = events.iter().filter(|e| e.step == "s2").collect();
    let retries: Vec<_> = s2
        .iter()
        .filter(|e| e.kind == EventType::Progress)
        .collect();
    assert_eq!(retries.len(), 2, "{retries:#?}");
    for (n, r) in retries.iter().enumerate() {
        let attempt = n as u32 + 1;
        assert!(
            r.message
                .contains(&format!("dependency is down (run {attempt})"))
                && r.message.contains(&format!("attempt {attempt} of 5"))
                && r.message.contains(&format!("attempt {} in", attempt + 1)),
            "{}",
            r.message
        );
        // The announced delay lies within the policy's bounds, and the next attempt
        // started no earlier than it said.
        let ms: u64 = r
            .message
            .rsplit("in ")
            .next()
            .and_then(|t| t.trim_end_matches(" ms").parse().ok())
            .unwrap_or_else(|| panic!("no delay in {}", r.message));
        let ceiling = policy.ceiling(attempt).as_millis() as u64;
        assert!(
            ms <= ceiling && ms * 2 + 1 >= ceiling,
            "delay {ms} ms outside [{}, {ceiling}]",
            ceiling / 2
        );
        let next = s2
            .iter()
            .find(|e| e.kind == EventType::StepStarted && e.sequence > r.sequence)
            .expect("the next attempt started");
        assert!(next.time - r.time >= (ms as i64) * 1000 - 1000);
    }
    let starts = s2
        .iter()
        .filter(|e| e.kind == EventType::StepStarted)
        .count();
    assert_eq!(starts, 3, "each run is an attempt");
    let done = engine.get(op.id, None).await.unwrap();
    assert_eq!(done.status, OpStatus::Succeeded);
    assert_eq!(done.steps[2].attempt, 3);
    assert_eq!(done.steps[1].attempt, 1);

    // A failure the policy declares final fails at once.
    let flow = TestFlow {
        fail_at: Some(1),
        ..Default::default()
    };
    let engine = flow.engine(store(&url, "r3").await, engine_config("r3"));
    let op = engine.start("alice", flow.request(3, None)).await.unwrap();
    collect(&engine, op.id, 0).await;
    assert_eq!(flow.log(), ["s0", "s1", "undo:s1", "undo:s0"]);
    let failed = engine.get(op.id, None).await.unwrap();
    assert_eq!(failed.status, OpStatus::Failed);
    assert_eq!(
        failed.steps[1].attempt, 1,
        "a failed precondition is not retried"
    );

    // Down for longer than the retries last: the step fails and is compensated.
    let flow = TestFlow {
        unavailable: Some((1, 10)),
        ..Default::default()
    };
    let engine = flow.engine(store(&url, "r2").await, engine_config("r2"));
    let op = engine.start("alice", flow.request(3, None)).await.unwrap();
    collect(&engine, op.id, 0).await;
    assert_eq!(
        flow.log(),
        ["s0", "s1", "s1", "s1", "s1", "undo:s1", "undo:s0"]
    );
    let failed = engine.get(op.id, None).await.unwrap();
    assert_eq!(failed.status, OpStatus::Failed);
    let err = failed.error.unwrap();
    assert_eq!(err.step.as_deref(), Some("s1"));
    assert!(
        err.message.contains("dependency is down (run 4)"),
        "{err:?}"
    );
}

async fn injected_failures_pass_after_n_attempts(db: TestDb) {
    let flow = TestFlow::default();
    let mut cfg = engine_config("r1");
    cfg.faults.fail_step = Some("s1".into());
    cfg.faults.fail_step_times = Some(2);
    let engine = flow.engine(store(&db.url, "r1").await, cfg);
    let op = engine.start("alice", flow.request(3, None)).await.unwrap();
    let events = collect(&engine, op.id, 0).await;
    assert_gapless(&events, 1);
    let done = engine.get(op.id, None).await.unwrap();
    assert_eq!(done.status, OpStatus::Succeeded, "{events:#?}");
    assert_eq!(done.steps[1].attempt, 3);
    assert!(events
        .iter()
        .any(|e| e.message.contains("injected failure 2 of 2")));
}

async fn cancel_reaches_a_running_step(db: TestDb) {
    let flow = TestFlow::default();
    let mut cfg = engine_config("r1");
    cfg.faults.hang_step = Some("s1".into());
    let engine = flow.engine(store(&db.url, "r1").await, cfg);
    let op = engine.start("alice", flow.request(3, None)).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        let op = engine.get(op.id, None).await.unwrap();
        (op.steps[1].status == StepStatus::Running).then_some(())
    })
    .await;
    engine.cancel(op.id, None, "stop the hang").await.unwrap();
    let events = collect(&engine, op.id, 0).await;
    assert_gapless(&events, 1);
    let done = engine.get(op.id, None).await.unwrap();
    assert_eq!(done.status, OpStatus::Cancelled, "{events:#?}");
    // The hanging step was touched, so it is compensated too, then the one before it.
    assert_eq!(flow.log(), ["s0", "undo:s1", "undo:s0"]);
}

/// A CancelOperation received by another replica reaches the step running here (through
/// the database's notifications; one SQLite process is one replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_sent_to_another_replica_reaches_the_step() {
    let db = TestDb::postgres().await;
    let flow = TestFlow::default();
    let mut cfg = engine_config("runner");
    cfg.faults.hang_step = Some("s1".into());
    let runner = flow.engine(store(&db.url, "runner").await, cfg);
    let other = flow.engine(store(&db.url, "other").await, engine_config("other"));
    let op = runner.start("alice", flow.request(3, None)).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        let op = runner.get(op.id, None).await.unwrap();
        (op.steps[1].status == StepStatus::Running).then_some(())
    })
    .await;
    other
        .cancel(op.id, None, "from the other replica")
        .await
        .unwrap();
    let events = collect(&other, op.id, 0).await;
    assert_eq!(events.last().unwrap().status, OpStatus::Cancelled);
    // (Without the notification the hanging step never ends and `collect` fails.)
    assert_eq!(flow.log(), ["s0", "undo:s1", "undo:s0"]);
}

async fn a_hanging_step_is_cancelled_at_its_limit(db: TestDb) {
    let flow = TestFlow::default();
    let mut cfg = engine_config("r1");
    cfg.faults.hang_step = Some("s1".into());
    cfg.step_timeout = Some(Duration::from_millis(150));
    cfg.step_retry.max_attempts = 2;
    let engine = flow.engine(store(&db.url, "r1").await, cfg);
    let op = engine.start("alice", flow.request(3, None)).await.unwrap();
    let events = collect(&engine, op.id, 0).await;
    assert_gapless(&events, 1);
    let done = engine.get(op.id, None).await.unwrap();
    assert_eq!(done.status, OpStatus::Failed, "{events:#?}");
    assert_eq!(
        done.steps[1].attempt, 2,
        "cancelled at its limit, then retried once"
    );
    let error = done.error.unwrap();
    assert!(
        error.message.contains("exceeded its time limit"),
        "{error:?}"
    );
    assert_eq!(flow.log(), ["s0", "undo:s1", "undo:s0"]);
}

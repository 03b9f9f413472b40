//! The [`OperationStore`] contract.

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt;
use pipeline_svc::{
    domain::{
        engine::{
            operation::{EventType, OpStatus, OperationError, StepStatus},
            ports::{Change, Created, Hint, JobStart, OpCursor, OpFilter, Retry},
        },
        now_micros,
    },
    error::Error,
};

use super::{claimed, created, new_operation, queued, step, Stores};
use crate::common::{noop::assert_gapless, TestDb};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    create_numbers_from_one_and_reads_back,
    create_is_idempotent_per_owner_and_request_id,
    get_and_list_scope_filter_and_page,
    store_refuses_backward_and_late_writes,
    record_all_is_all_or_nothing,
    concurrent_writers_get_gapless_sequences,
    checkpoint_saves_state_without_an_event,
    cancel_queued_running_and_finished,
    hints_come_from_other_replicas_only,
    retry_restarts_failed_operations_once_per_request_id,
);

fn progress(message: &str) -> Change {
    Change::new(EventType::Progress, message, now_micros())
}

async fn create_numbers_from_one_and_reads_back(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    s.ops.ping().await.unwrap();
    let new = new_operation("alice", 3, JobStart::Queued);
    let Created::New {
        op, event, lease, ..
    } = s.ops.create(&new).await.unwrap()
    else {
        panic!("a new operation");
    };
    assert!(lease.is_none(), "a queued operation has no lease yet");
    assert_eq!((op.id, op.last_sequence), (new.op.id, 1));
    assert_eq!(
        (event.sequence, event.kind, event.status),
        (1, EventType::Created, OpStatus::Pending)
    );
    let read = s.ops.get(op.id, None).await.unwrap().expect("stored");
    assert_eq!(read.status, OpStatus::Pending);
    assert_eq!(read.params, new.op.params);
    assert_eq!(read.last_sequence, 1);
    let steps: Vec<_> = read
        .steps
        .iter()
        .map(|s| (s.index, s.name.as_str(), s.status, s.attempt))
        .collect();
    assert_eq!(
        steps,
        [
            (0, "s0", StepStatus::Pending, 0),
            (1, "s1", StepStatus::Pending, 0),
            (2, "s2", StepStatus::Pending, 0)
        ]
    );
    let events = s.ops.events(op.id, 0, 100).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0], event);
    assert!(s.ops.events(op.id, 1, 100).await.unwrap().is_empty());
    assert!(s
        .ops
        .get(uuid::Uuid::now_v7(), None)
        .await
        .unwrap()
        .is_none());
    // A DIRECT operation is created leased by the replica that runs it.
    let direct = new_operation(
        "alice",
        1,
        JobStart::Leased {
            owner: "r1".into(),
            expires: now_micros() + 60_000_000,
        },
    );
    let (op, lease) = created(s.ops.create(&direct).await);
    let lease = lease.expect("a leased operation");
    assert_eq!(
        (lease.operation_id, lease.owner.as_str(), lease.attempts),
        (op.id, "r1", 1)
    );
    s.ops
        .record(op.id, Some(&lease), &progress("mine"))
        .await
        .unwrap();
}

async fn create_is_idempotent_per_owner_and_request_id(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let with_id = |owner: &str| {
        let mut n = new_operation(owner, 2, JobStart::Queued);
        n.op.request_id = Some("req-1".into());
        n
    };
    let (a, _) = created(s.ops.create(&with_id("alice")).await);
    match s.ops.create(&with_id("alice")).await.unwrap() {
        Created::Existing(op) => assert_eq!(op.id, a.id),
        Created::New { op, .. } => panic!("a second operation {} for one request id", op.id),
    }
    let (b, _) = created(s.ops.create(&with_id("bob")).await);
    assert_ne!(a.id, b.id, "request ids are per owner");
    assert_eq!(s.ops.events(a.id, 0, 10).await.unwrap().len(), 1);
    // Concurrent duplicates: one inserts, every other gets that operation.
    let results = futures::future::join_all((0..12).map(|_| {
        let ops = s.ops.clone();
        async move {
            let mut n = new_operation("carol", 1, JobStart::Queued);
            n.op.request_id = Some("same".into());
            ops.create(&n).await.unwrap()
        }
    }))
    .await;
    let ids: BTreeSet<_> = results
        .iter()
        .map(|c| match c {
            Created::New { op, .. } | Created::Existing(op) => op.id,
        })
        .collect();
    let inserted = results
        .iter()
        .filter(|c| matches!(c, Created::New { .. }))
        .count();
    assert_eq!((ids.len(), inserted), (1, 1), "{ids:?}");
}

async fn get_and_list_scope_filter_and_page(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let mut ids = Vec::new();
    for owner in ["alice", "bob", "alice", "alice"] {
        ids.push(queued(&s, owner, 1).await.id);
    }
    let first = ids[0];
    assert!(s.ops.get(first, Some("alice")).await.unwrap().is_some());
    assert!(
        s.ops.get(first, Some("bob")).await.unwrap().is_none(),
        "an owner-scoped read of another's operation finds nothing"
    );
    let all = s.ops.list(&OpFilter::default(), None, 100).await.unwrap();
    let listed: Vec<_> = all.iter().map(|o| o.id).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first, "newest first");
    assert!(all.iter().all(|o| o.steps.len() == 1), "with their steps");
    let alice = OpFilter {
        owner: Some("alice".into()),
        ..Default::default()
    };
    let page = s.ops.list(&alice, None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|o| o.id).collect::<Vec<_>>(),
        [ids[3], ids[2]]
    );
    let last = page.last().unwrap();
    let rest = s
        .ops
        .list(&alice, Some(&OpCursor(last.create_time, last.id)), 2)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|o| o.id).collect::<Vec<_>>(), [ids[0]]);
    // Status and kind filters.
    let (claimed_op, lease) = {
        let lease = s
            .jobs
            .claim("w", now_micros(), 60_000)
            .await
            .unwrap()
            .unwrap();
        (lease.operation_id, lease)
    };
    s.ops
        .record(
            claimed_op,
            Some(&lease),
            &Change {
                status: Some(OpStatus::Running),
                ..progress("go")
            },
        )
        .await
        .unwrap();
    let running = OpFilter {
        status: Some(OpStatus::Running),
        ..Default::default()
    };
    let found = s.ops.list(&running, None, 100).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id).collect::<Vec<_>>(), [claimed_op]);
    let other_kind = OpFilter {
        kind: Some("another.kind".into()),
        ..Default::default()
    };
    assert!(s.ops.list(&other_kind, None, 100).await.unwrap().is_empty());
}

async fn store_refuses_backward_and_late_writes(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let op = queued(&s, "alice", 2).await;
    assert_eq!(op.status, OpStatus::Pending);
    let lease = s
        .jobs
        .claim("w1", now_micros(), 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (lease.operation_id, lease.token, lease.attempts),
        (op.id, 1, 1)
    );
    let rec = |c: Change| {
        let store = s.ops.clone();
        let lease = lease.clone();
        async move { store.record(op.id, Some(&lease), &c).await }
    };
    let r = rec(Change {
        status: Some(OpStatus::Running),
        percent: Some(50),
        ..Change::new(EventType::Started, "go", now_micros())
    })
    .await
    .unwrap();
    assert_eq!(
        (r.event.sequence, r.event.status, r.event.percent),
        (2, OpStatus::Running, 50)
    );
    let r = rec(Change {
        percent: Some(10),
        ..Change::new(EventType::Progress, "lower", now_micros())
    })
    .await
    .unwrap();
    assert_eq!(r.event.percent, 50, "percent never goes back");
    for (status, started, ended) in [
        (StepStatus::Running, true, false),
        (StepStatus::Passed, false, true),
    ] {
        rec(Change {
            step: Some(step(0, status, started, ended)),
            ..Change::new(EventType::StepFinished, "step", now_micros())
        })
        .await
        .unwrap();
    }
    let err = rec(Change {
        step: Some(step(0, StepStatus::Running, true, false)),
        ..Change::new(EventType::StepStarted, "again", now_micros())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    let err = rec(Change {
        step: Some(step(1, StepStatus::Pending, false, false)),
        ..Change::new(EventType::StepStarted, "back to pending", now_micros())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    let err = rec(Change {
        status: Some(OpStatus::Pending),
        ..Change::new(EventType::Progress, "back", now_micros())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Precondition(m) if m.contains("from RUNNING to PENDING")),
        "{err}"
    );
    rec(Change {
        status: Some(OpStatus::Succeeded),
        percent: Some(100),
        ..Change::new(EventType::Finished, "done", now_micros())
    })
    .await
    .unwrap();
    for late in [
        Change {
            status: Some(OpStatus::Failed),
            ..Change::new(EventType::Finished, "late failure", now_micros())
        },
        Change::new(EventType::Progress, "late progress", now_micros()),
    ] {
        let err = rec(late.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Precondition(_)), "{err}");
        // Unfenced writes are refused alike.
        let err = s.ops.record(op.id, None, &late).await.unwrap_err();
        assert!(matches!(err, Error::Precondition(_)), "{err}");
    }
    assert!(s
        .ops
        .cancel(op.id, None, "late", now_micros())
        .await
        .unwrap()
        .is_none());
    assert!(
        !s.jobs.heartbeat(&lease, now_micros(), 1000).await.unwrap(),
        "a finished job has no lease"
    );
    let events = s.ops.events(op.id, 0, 100).await.unwrap();
    assert_gapless(&events, 1);
    assert_eq!(events.len(), 6);
    let op = s.ops.get(op.id, None).await.unwrap().unwrap();
    assert_eq!((op.status, op.progress_percent), (OpStatus::Succeeded, 100));
    assert!(op.start_time.is_some() && op.end_time.is_some());
    assert_eq!(op.steps[0].status, StepStatus::Passed);
    assert_eq!(op.steps[0].attempt, 1);
    assert!(op.steps[0].start_time.is_some() && op.steps[0].end_time.is_some());
    let err = s
        .ops
        .record(uuid::Uuid::now_v7(), None, &progress("nobody"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

async fn record_all_is_all_or_nothing(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let (op, lease) = claimed(&s, "w1", 2).await;
    let batch = [
        Change {
            status: Some(OpStatus::Running),
            ..Change::new(EventType::Started, "go", now_micros())
        },
        Change {
            step: Some(step(0, StepStatus::Running, true, false)),
            ..Change::new(EventType::StepStarted, "s0 started", now_micros())
        },
    ];
    let recorded = s.ops.record_all(op.id, Some(&lease), &batch).await.unwrap();
    let seq: Vec<_> = recorded.iter().map(|r| r.event.sequence).collect();
    assert_eq!(seq, [2, 3], "in order, one sequence each");
    // The second change is refused (s0 cannot be started again): the first is not kept.
    let refused = [
        Change {
            step: Some(step(0, StepStatus::Passed, false, true)),
            state: Some(serde_json::json!({ "done": 1 })),
            ..Change::new(EventType::StepFinished, "s0 passed", now_micros())
        },
        Change {
            step: Some(step(0, StepStatus::Running, true, false)),
            ..Change::new(EventType::StepStarted, "s0 again", now_micros())
        },
    ];
    let err = s
        .ops
        .record_all(op.id, Some(&lease), &refused)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    let after = s.ops.get(op.id, None).await.unwrap().unwrap();
    assert_eq!(after.last_sequence, 3);
    assert_eq!(after.steps[0].status, StepStatus::Running);
    assert!(
        after.state.is_null(),
        "the refused batch's state is not kept"
    );
    assert_eq!(s.ops.events(op.id, 0, 100).await.unwrap().len(), 3);
}

async fn concurrent_writers_get_gapless_sequences(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let (op, lease) = claimed(&s, "w1", 1).await;
    const WRITERS: usize = 8;
    const EACH: usize = 10;
    futures::future::join_all((0..WRITERS).map(|w| {
        let (ops, lease) = (s.ops.clone(), lease.clone());
        async move {
            for i in 0..EACH {
                ops.record(op.id, Some(&lease), &progress(&format!("w{w} {i}")))
                    .await
                    .unwrap();
            }
        }
    }))
    .await;
    let events = s.ops.events(op.id, 0, 1000).await.unwrap();
    assert_gapless(&events, 1);
    assert_eq!(events.len(), 1 + WRITERS * EACH);
    let messages: BTreeSet<_> = events.iter().map(|e| e.message.clone()).collect();
    assert_eq!(messages.len(), events.len(), "each write once");
    // Paging through the log from any sequence.
    let tail = s.ops.events(op.id, 40, 5).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [41, 42, 43, 44, 45]
    );
}

async fn checkpoint_saves_state_without_an_event(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let (op, lease) = claimed(&s, "w1", 1).await;
    s.ops
        .checkpoint(&lease, &serde_json::json!({ "alias_before": "r1" }))
        .await
        .unwrap();
    let read = s.ops.get(op.id, None).await.unwrap().unwrap();
    assert_eq!(read.state["alias_before"], "r1");
    assert_eq!(read.last_sequence, 1, "no event");
    s.ops
        .record(
            op.id,
            Some(&lease),
            &Change {
                status: Some(OpStatus::Succeeded),
                ..Change::new(EventType::Finished, "done", now_micros())
            },
        )
        .await
        .unwrap();
    let err = s
        .ops
        .checkpoint(&lease, &serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Precondition(_) | Error::LeaseLost(_)),
        "a finished operation keeps its state: {err}"
    );
}

async fn cancel_queued_running_and_finished(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    // Queued, never claimed: it ends here, CANCELLED, its steps SKIPPED, its job done.
    let op = queued(&s, "alice", 2).await;
    let err = s
        .ops
        .cancel(op.id, Some("bob"), "", now_micros())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let event = s
        .ops
        .cancel(op.id, Some("alice"), "changed my mind", now_micros())
        .await
        .unwrap()
        .expect("cancelled");
    assert_eq!(
        (event.sequence, event.kind, event.status),
        (2, EventType::Finished, OpStatus::Cancelled)
    );
    assert!(
        event.message.contains("changed my mind"),
        "{}",
        event.message
    );
    let read = s.ops.get(op.id, None).await.unwrap().unwrap();
    assert_eq!(read.status, OpStatus::Cancelled);
    assert!(read.cancel_requested);
    assert!(read.steps.iter().all(|s| s.status == StepStatus::Skipped));
    assert!(matches!(
        read.error,
        Some(OperationError { step: None, .. })
    ));
    assert!(
        s.jobs
            .claim("w", now_micros(), 1000)
            .await
            .unwrap()
            .is_none(),
        "no job left"
    );
    assert!(s
        .ops
        .cancel(op.id, None, "again", now_micros())
        .await
        .unwrap()
        .is_none());
    // Claimed: flagged once; the worker learns it from its next write.
    let (op, lease) = claimed(&s, "w1", 2).await;
    let event = s
        .ops
        .cancel(op.id, None, "stop", now_micros())
        .await
        .unwrap()
        .expect("flagged");
    assert_eq!(
        (event.kind, event.status),
        (EventType::CancelRequested, OpStatus::Pending)
    );
    assert!(s
        .ops
        .cancel(op.id, None, "stop again", now_micros())
        .await
        .unwrap()
        .is_none());
    let r = s
        .ops
        .record(op.id, Some(&lease), &progress("still here"))
        .await
        .unwrap();
    assert!(r.cancel_requested);
    let read = s.ops.get(op.id, None).await.unwrap().unwrap();
    assert!(read.cancel_requested);
    assert_eq!(
        read.status,
        OpStatus::Pending,
        "the worker ends it, not cancel"
    );
    let err = s
        .ops
        .cancel(uuid::Uuid::now_v7(), None, "", now_micros())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

async fn hints_come_from_other_replicas_only(db: TestDb) {
    let a = Stores::open(&db, "A").await;
    let mut hints = a
        .ops
        .hints(Duration::from_millis(20))
        .await
        .expect("stores shared between replicas send hints");
    if !db.is_postgres() {
        // SQLite cannot say what changed, only that its event log moved: everyone looks.
        let b = Stores::open(&db, "B").await;
        let next = hints.next();
        tokio::pin!(next);
        tokio::time::timeout(Duration::from_millis(200), &mut next)
            .await
            .expect_err("nothing moved yet");
        queued(&b, "alice", 1).await;
        let hint = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("B's write reaches A as a hint")
            .expect("the hint stream stays open");
        assert_eq!(hint, Hint::Resync);
        return;
    }
    // The listener is up: from here on every change is announced.
    let listening = tokio::time::timeout(Duration::from_secs(10), hints.next()).await;
    assert_eq!(
        listening.expect("a listener within 10 s"),
        Some(Hint::Resync)
    );
    // A's own writes do not wake A.
    let direct = new_operation(
        "alice",
        1,
        JobStart::Leased {
            owner: "A".into(),
            expires: now_micros() + 60_000_000,
        },
    );
    let (mine, lease) = created(a.ops.create(&direct).await);
    a.ops
        .record(mine.id, lease.as_ref(), &progress("from A"))
        .await
        .unwrap();
    let b = Stores::open(&db, "B").await;
    let theirs = queued(&b, "alice", 1).await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&Hint::Jobs) {
        let hint = tokio::time::timeout_at(deadline, hints.next())
            .await
            .expect("B's new job reaches A as a hint")
            .expect("the hint stream stays open");
        seen.push(hint);
    }
    let lease = b
        .jobs
        .claim("B", now_micros(), 60_000)
        .await
        .unwrap()
        .expect("B's queued job");
    assert_eq!(lease.operation_id, theirs.id);
    b.ops
        .record(theirs.id, Some(&lease), &progress("from B"))
        .await
        .unwrap();
    while !seen.contains(&Hint::Operation(theirs.id)) {
        let hint = tokio::time::timeout_at(deadline, hints.next())
            .await
            .expect("B's event reaches A as a hint")
            .expect("the hint stream stays open");
        seen.push(hint);
    }
    assert!(
        !seen.contains(&Hint::Operation(mine.id)),
        "A heard its own write: {seen:?}"
    );
}

fn retry_of(expected_sequence: i64, request_id: Option<&str>) -> Retry {
    Retry {
        owner: None,
        request_id: request_id.map(str::to_owned),
        expected_sequence,
        from_step: 1,
        job: JobStart::Queued,
        keys: vec!["k".into()],
        deadline: None,
        message: "retried from step s1".into(),
        time: now_micros(),
    }
}

/// A FAILED operation goes back to PENDING with a RETRIED event right after its last
/// one; the steps from the retried one on are PENDING again (attempts kept), the earlier
/// ones untouched; the job is claimable again. The same request id again changes nothing,
/// a stale plan is refused, and so is any status but FAILED or CANCELLED.
async fn retry_restarts_failed_operations_once_per_request_id(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let (op, lease) = claimed(&s, "w1", 2).await;
    let pending = s.ops.retry(op.id, &retry_of(1, None)).await.unwrap_err();
    assert!(matches!(pending, Error::Precondition(_)), "{pending}");
    assert!(
        pending.to_string().contains("FAILED or CANCELLED"),
        "{pending}"
    );
    let changes = [
        Change {
            status: Some(OpStatus::Running),
            step: Some(step(0, StepStatus::Running, true, false)),
            ..progress("s0 started")
        },
        Change {
            step: Some(step(0, StepStatus::Passed, false, true)),
            ..progress("s0 passed")
        },
        Change {
            step: Some(step(1, StepStatus::Running, true, false)),
            ..progress("s1 started")
        },
        Change {
            status: Some(OpStatus::Failed),
            step: Some(step(1, StepStatus::Failed, false, true)),
            error: Some(OperationError {
                step: Some("s1".into()),
                message: "boom".into(),
                compensation_errors: Vec::new(),
            }),
            ..Change::new(EventType::Finished, "failed", now_micros())
        },
    ];
    s.ops
        .record_all(op.id, Some(&lease), &changes)
        .await
        .unwrap();
    let failed = s.ops.get(op.id, None).await.unwrap().unwrap();
    let stale = s
        .ops
        .retry(op.id, &retry_of(2, Some("a")))
        .await
        .unwrap_err();
    assert!(matches!(stale, Error::Conflict(_)), "{stale}");
    let Created::New {
        op: retried,
        event,
        lease: none,
        ..
    } = s
        .ops
        .retry(op.id, &retry_of(failed.last_sequence, Some("a")))
        .await
        .unwrap()
    else {
        panic!("a retry");
    };
    assert!(none.is_none(), "queued: no lease");
    assert_eq!(
        (event.sequence, event.kind, event.status),
        (
            failed.last_sequence + 1,
            EventType::Retried,
            OpStatus::Pending
        )
    );
    assert_eq!(retried.status, OpStatus::Pending);
    assert_eq!(retried.error, None);
    assert_eq!(retried.last_sequence, event.sequence);
    let steps: Vec<_> = retried
        .steps
        .iter()
        .map(|s| (s.status, s.attempt))
        .collect();
    assert_eq!(
        steps,
        [(StepStatus::Passed, 1), (StepStatus::Pending, 1)],
        "the passed step stays, the failed one runs again"
    );
    let again = s.ops.retry(op.id, &retry_of(0, Some("a"))).await.unwrap();
    assert!(
        matches!(&again, Created::Existing(o) if o.last_sequence == retried.last_sequence),
        "the same request id retries once: {again:?}"
    );
    let lease = s
        .jobs
        .claim("w2", now_micros(), 60_000)
        .await
        .unwrap()
        .expect("the retried job is claimable");
    assert_eq!((lease.operation_id, lease.attempts), (op.id, 1));
    let events = s.ops.events(op.id, 0, 100).await.unwrap();
    assert_gapless(&events, 1);
}

//! The [`JobQueue`] contract: which job a claim takes, that one claimer gets it, and how
//! leases expire, extend, fence and go back to the queue.

use std::collections::BTreeSet;

use pipeline_svc::{
    domain::{
        engine::{
            operation::{EventType, OpStatus},
            ports::{Change, JobStart},
        },
        now_micros,
    },
    error::Error,
};

use super::{created, new_operation, queued, Stores};
use crate::common::{noop::assert_gapless, TestDb};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    leases_fence_stale_workers,
    one_claim_wins,
    claims_take_the_oldest_job_and_each_job_once,
    direct_operations_are_leased_from_the_start,
    finished_jobs_are_never_claimed,
    depth_counts_the_jobs_waiting_for_a_worker,
);

async fn depth_counts_the_jobs_waiting_for_a_worker(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    assert_eq!(s.jobs.depth(now_micros()).await.unwrap(), 0, "empty queue");
    queued(&s, "alice", 1).await;
    queued(&s, "alice", 1).await;
    let t0 = now_micros();
    assert_eq!(s.jobs.depth(t0).await.unwrap(), 2, "two queued");
    let lease = s.jobs.claim("a", t0, 1000).await.unwrap().unwrap();
    assert_eq!(s.jobs.depth(t0).await.unwrap(), 1, "one leased");
    assert_eq!(
        s.jobs.depth(t0 + 2_000_000).await.unwrap(),
        2,
        "an expired lease waits for a worker again"
    );
    assert!(s.jobs.release(&lease, t0).await.unwrap());
    assert_eq!(s.jobs.depth(t0).await.unwrap(), 2, "released: queued again");
}

async fn leases_fence_stale_workers(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let op = queued(&s, "alice", 2).await;
    let ms = 1000;
    let t0 = now_micros();
    let at = |offset_ms: i64| t0 + offset_ms * 1000;
    let l1 = s.jobs.claim("a", at(0), ms).await.unwrap().unwrap();
    assert_eq!((l1.token, l1.owner.as_str()), (1, "a"));
    assert!(
        s.jobs.claim("b", at(500), ms).await.unwrap().is_none(),
        "leased"
    );
    assert!(
        s.jobs.heartbeat(&l1, at(500), ms).await.unwrap(),
        "heartbeat extends"
    );
    assert!(
        s.jobs.claim("b", at(1400), ms).await.unwrap().is_none(),
        "extended lease holds"
    );
    let l2 = s.jobs.claim("b", at(1600), ms).await.unwrap().unwrap();
    assert_eq!(
        (l2.token, l2.attempts, l2.owner.as_str()),
        (2, 2, "b"),
        "expired lease reclaimed"
    );

    let stale = Change::new(EventType::Progress, "stale worker", now_micros());
    let err = s.ops.record(op.id, Some(&l1), &stale).await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost(_)), "{err}");
    let err = s
        .ops
        .checkpoint(&l1, &serde_json::json!({"x": 1}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost(_)), "{err}");
    assert!(!s.jobs.heartbeat(&l1, at(1700), ms).await.unwrap());
    assert!(!s.jobs.release(&l1, at(1700)).await.unwrap());

    let fresh = Change {
        status: Some(OpStatus::Running),
        ..Change::new(EventType::Started, "new owner", now_micros())
    };
    s.ops.record(op.id, Some(&l2), &fresh).await.unwrap();
    s.ops
        .checkpoint(&l2, &serde_json::json!({"done": 1}))
        .await
        .unwrap();
    assert!(
        s.jobs.release(&l2, at(1800)).await.unwrap(),
        "released at shutdown"
    );
    let l3 = s.jobs.claim("c", at(1800), ms).await.unwrap().unwrap();
    assert_eq!(
        (l3.token, l3.attempts),
        (3, 2),
        "a released job is claimable at once, and the hand-back is no failed attempt"
    );
    let err = s.ops.record(op.id, Some(&l2), &stale).await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost(_)), "{err}");
    let op = s.ops.get(op.id, None).await.unwrap().unwrap();
    assert_eq!(op.state["done"], 1);
    assert_eq!(op.attempts, 2);
    assert_gapless(&s.ops.events(op.id, 0, 100).await.unwrap(), 1);
}

async fn one_claim_wins(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    queued(&s, "alice", 1).await;
    let now = now_micros();
    let claims = futures::future::join_all((0..16).map(|i| {
        let jobs = s.jobs.clone();
        async move { jobs.claim(&format!("w{i}"), now, 60_000).await.unwrap() }
    }))
    .await;
    assert_eq!(claims.iter().flatten().count(), 1, "{claims:?}");
}

async fn claims_take_the_oldest_job_and_each_job_once(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(queued(&s, "alice", 1).await.id);
    }
    let first = s
        .jobs
        .claim("w0", now_micros(), 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.operation_id, ids[0], "the oldest queued job first");
    // Twelve claimers for the five left: each job goes to exactly one of them.
    let now = now_micros();
    let claims = futures::future::join_all((1..=12).map(|i| {
        let jobs = s.jobs.clone();
        async move { jobs.claim(&format!("w{i}"), now, 60_000).await.unwrap() }
    }))
    .await;
    let won: Vec<_> = claims.into_iter().flatten().collect();
    let distinct: BTreeSet<_> = won.iter().map(|l| l.operation_id).collect();
    assert_eq!(won.len(), 5, "{won:?}");
    assert_eq!(distinct, ids[1..].iter().copied().collect());
    assert!(won.iter().all(|l| (l.token, l.attempts) == (1, 1)));
    assert!(s
        .jobs
        .claim("late", now_micros(), 60_000)
        .await
        .unwrap()
        .is_none());
}

async fn direct_operations_are_leased_from_the_start(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let t0 = now_micros();
    let direct = new_operation(
        "alice",
        1,
        JobStart::Leased {
            owner: "r1".into(),
            expires: t0 + 1_000_000,
        },
    );
    let (op, lease) = created(s.ops.create(&direct).await);
    let lease = lease.expect("leased at creation");
    assert_eq!((lease.token, lease.attempts), (1, 1));
    assert!(
        s.jobs
            .claim("w", t0 + 500_000, 1000)
            .await
            .unwrap()
            .is_none(),
        "its creator holds it"
    );
    assert!(s.jobs.heartbeat(&lease, t0 + 500_000, 1000).await.unwrap());
    assert!(
        s.jobs
            .claim("w", t0 + 1_200_000, 1000)
            .await
            .unwrap()
            .is_none(),
        "the heartbeat extended it"
    );
    // Its creator crashed: after expiry a worker takes it over, as a second attempt.
    let taken = s
        .jobs
        .claim("w", t0 + 1_600_000, 1000)
        .await
        .unwrap()
        .expect("an expired lease is claimable");
    assert_eq!(
        (taken.operation_id, taken.token, taken.attempts),
        (op.id, 2, 2)
    );
    let err = s
        .ops
        .record(
            op.id,
            Some(&lease),
            &Change::new(EventType::Progress, "stale", now_micros()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost(_)), "{err}");
}

async fn finished_jobs_are_never_claimed(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let op = queued(&s, "alice", 1).await;
    let lease = s
        .jobs
        .claim("w", now_micros(), 1000)
        .await
        .unwrap()
        .unwrap();
    s.ops
        .record(
            op.id,
            Some(&lease),
            &Change {
                status: Some(OpStatus::Failed),
                ..Change::new(EventType::Finished, "failed", now_micros())
            },
        )
        .await
        .unwrap();
    // Not even once its lease would have expired.
    assert!(s
        .jobs
        .claim("w2", now_micros() + 10_000_000, 1000)
        .await
        .unwrap()
        .is_none());
    assert!(!s.jobs.release(&lease, now_micros()).await.unwrap());
    assert_gapless(&s.ops.events(op.id, 0, 10).await.unwrap(), 1);
}

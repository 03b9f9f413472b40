//! The [`RetentionStore`](pipeline_svc::domain::engine::ports::RetentionStore) contract: what a purge removes and what it never touches, its
//! batches, its tombstones, concurrent purges and RetryOperation racing it, the lease.

use std::time::Duration;

use pipeline_svc::{
    domain::provisioning::{model::Plan, ports::NewSubscription},
    domain::{
        engine::{
            operation::{EventType, OpStatus, Operation, OperationError, StepStatus},
            ports::{Change, JobStart, PurgeBatch, PurgedRows, Retry},
        },
        now_micros, Micros,
    },
    error::Error,
    store::sql::POSTGRES_SCHEMA,
};
use sqlx::AnyPool;
use uuid::Uuid;

use super::{created, new_operation, step, Stores};
use crate::common::TestDb;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    purges_old_terminal_operations_only,
    never_touches_a_live_operation,
    retry_racing_the_purge_keeps_or_purges_whole,
    concurrent_purges_remove_each_operation_once,
    purges_in_batches_of_the_limit,
    one_holder_of_the_purger_lease,
    keeps_operations_a_subscription_names,
);

const DAY: Micros = 24 * 3600 * 1_000_000;

/// The ports of one replica, and a raw pool on its database.
struct Replica {
    s: Stores,
    raw: AnyPool,
}

async fn replica(db: &TestDb, name: &str) -> Replica {
    let s = Stores::open(db, name).await;
    let raw = capstan_server::db::pool(&db.url, db.backend(), 2, Some(POSTGRES_SCHEMA))
        .await
        .expect("raw pool");
    Replica { s, raw }
}

/// A DIRECT operation of `owner` with two steps that ran its first step and ended
/// `status` (or is RUNNING still): six events.
async fn ran(r: &Replica, owner: &str, status: OpStatus) -> Operation {
    let job = JobStart::Leased {
        owner: "w1".into(),
        expires: now_micros() + 60_000_000,
    };
    let (op, lease) = created(r.s.ops.create(&new_operation(owner, 2, job)).await);
    let lease = lease.expect("leased");
    let mut changes = vec![
        Change {
            status: Some(OpStatus::Running),
            step: Some(step(0, StepStatus::Running, true, false)),
            ..Change::new(EventType::StepStarted, "s0", now_micros())
        },
        Change {
            step: Some(step(0, StepStatus::Passed, false, true)),
            ..Change::new(EventType::StepFinished, "s0 passed", now_micros())
        },
    ];
    if status.is_terminal() {
        changes.push(Change {
            status: Some(status),
            error: (status != OpStatus::Succeeded).then(|| OperationError {
                step: None,
                message: "ended".into(),
                compensation_errors: Vec::new(),
            }),
            ..Change::new(EventType::Finished, "ended", now_micros())
        });
    }
    r.s.ops
        .record_all(op.id, Some(&lease), &changes)
        .await
        .expect("record");
    r.s.ops.get(op.id, None).await.unwrap().expect("stored")
}

/// Makes operation `id` look last changed `days` ago.
async fn age(r: &Replica, id: Uuid, days: i64) {
    sqlx::query("UPDATE operations SET update_time = $1 WHERE operation_id = $2")
        .bind(now_micros() - days * DAY)
        .bind(id.to_string())
        .execute(&r.raw)
        .await
        .expect("age");
}

/// Sets the state of operation `id`'s job behind the store's back.
async fn set_job_state(r: &Replica, id: Uuid, state: &str) {
    sqlx::query("UPDATE jobs SET state = $1 WHERE operation_id = $2")
        .bind(state)
        .bind(id.to_string())
        .execute(&r.raw)
        .await
        .expect("job state");
}

/// Rows of operation `id` in every table that holds some, and its tombstones.
async fn rows_of(r: &Replica, id: Uuid) -> [i64; 6] {
    let mut out = [0; 6];
    for (i, table) in [
        "operations",
        "operation_events",
        "operation_steps",
        "jobs",
        "operation_retries",
        "operation_tombstones",
    ]
    .iter()
    .enumerate()
    {
        out[i] = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE operation_id = $1"
        ))
        .bind(id.to_string())
        .fetch_one(&r.raw)
        .await
        .expect("count");
    }
    out
}

fn batch(limit: usize) -> PurgeBatch {
    PurgeBatch {
        ended_before: now_micros() - 30 * DAY,
        limit,
        time: now_micros(),
        retention_days: 30,
    }
}

/// Old terminal operations go with their events, steps and jobs, leaving a tombstone that
/// only their owner reads; a recent terminal one stays, as does a live one.
async fn purges_old_terminal_operations_only(db: TestDb) {
    let r = replica(&db, "r1").await;
    let succeeded = ran(&r, "alice", OpStatus::Succeeded).await;
    let failed = ran(&r, "alice", OpStatus::Failed).await;
    let cancelled = ran(&r, "bob", OpStatus::Cancelled).await;
    let recent = ran(&r, "alice", OpStatus::Succeeded).await;
    let running = ran(&r, "alice", OpStatus::Running).await;
    for op in [&succeeded, &failed, &cancelled] {
        age(&r, op.id, 31).await;
    }
    age(&r, recent.id, 29).await;
    let before_recent = rows_of(&r, recent.id).await;
    let before_running = rows_of(&r, running.id).await;

    let purged = r.s.retention.purge_batch(&batch(100)).await.unwrap();
    assert_eq!(
        purged,
        PurgedRows {
            operations: 3,
            events: 3 * 4,
            steps: 3 * 2,
            jobs: 3,
            keys_and_retries: 0,
        }
    );
    for op in [&succeeded, &failed, &cancelled] {
        assert_eq!(rows_of(&r, op.id).await, [0, 0, 0, 0, 0, 1], "{}", op.id);
        assert!(r.s.ops.get(op.id, None).await.unwrap().is_none());
        let t =
            r.s.retention
                .purged(op.id, Some(&op.owner))
                .await
                .unwrap()
                .expect("a tombstone for its owner");
        assert_eq!(
            (t.operation_id, t.owner.as_str(), t.retention_days),
            (op.id, op.owner.as_str(), 30)
        );
        assert!(t.purge_time > 0);
        assert!(r.s.retention.purged(op.id, None).await.unwrap().is_some());
        assert!(
            r.s.retention
                .purged(op.id, Some("mallory"))
                .await
                .unwrap()
                .is_none(),
            "another owner learns nothing"
        );
    }
    assert_eq!(rows_of(&r, recent.id).await, before_recent);
    assert_eq!(rows_of(&r, running.id).await, before_running);
    assert!(r
        .s
        .retention
        .purged(recent.id, None)
        .await
        .unwrap()
        .is_none());
    assert!(r
        .s
        .retention
        .purged(Uuid::now_v7(), None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        r.s.retention.purge_batch(&batch(100)).await.unwrap(),
        PurgedRows::default()
    );
}

/// Whatever its update time says, an operation that is not terminal, or whose job is not
/// done, stays whole.
async fn never_touches_a_live_operation(db: TestDb) {
    let r = replica(&db, "r1").await;
    let running = ran(&r, "alice", OpStatus::Running).await;
    let pending = created(
        r.s.ops
            .create(&new_operation("alice", 2, JobStart::Queued))
            .await,
    )
    .0;
    // Terminal by its row, yet its job is leased: somebody still works on it.
    let leased = ran(&r, "alice", OpStatus::Failed).await;
    set_job_state(&r, leased.id, "leased").await;
    // Running by its row, though its job says done: the status alone must keep it.
    let running_done = ran(&r, "alice", OpStatus::Running).await;
    set_job_state(&r, running_done.id, "done").await;
    let mut before = Vec::new();
    for op in [&running, &pending, &leased, &running_done] {
        age(&r, op.id, 3650).await;
        before.push((op.id, rows_of(&r, op.id).await));
    }
    assert_eq!(
        r.s.retention.purge_batch(&batch(100)).await.unwrap(),
        PurgedRows::default()
    );
    for (id, rows) in before {
        assert_eq!(rows_of(&r, id).await, rows, "{id} is intact");
        assert!(r.s.ops.get(id, None).await.unwrap().is_some());
    }
    assert_eq!(
        r.s.ops.get(running.id, None).await.unwrap().unwrap().status,
        OpStatus::Running
    );
}

/// RetryOperation and the purge at once on old FAILED operations: each ends either
/// retried with every row (and no tombstone) or purged with none (and its retry refused as
/// not found), never in between.
async fn retry_racing_the_purge_keeps_or_purges_whole(db: TestDb) {
    let a = replica(&db, "r1").await;
    // Postgres: another replica purges. SQLite is one process's one writer.
    let other;
    let b = if db.is_postgres() {
        other = replica(&db, "r2").await;
        &other
    } else {
        &a
    };
    let (mut retried, mut purged) = (0, 0);
    for round in 0..12 {
        let op = ran(&a, "alice", OpStatus::Failed).await;
        age(&a, op.id, 40).await;
        let retry = Retry {
            owner: None,
            request_id: Some(format!("retry-{round}")),
            expected_sequence: op.last_sequence,
            from_step: 1,
            job: JobStart::Queued,
            keys: Vec::new(),
            deadline: None,
            message: "retried".into(),
            time: now_micros(),
        };
        let purge = batch(10);
        let (retrying, purging) = (
            a.s.ops.retry(op.id, &retry),
            b.s.retention.purge_batch(&purge),
        );
        // Each goes first in turn (on SQLite the first to ask gets the one writer).
        let (r, p) = if round % 2 == 0 {
            tokio::join!(retrying, purging)
        } else {
            let (p, r) = tokio::join!(purging, retrying);
            (r, p)
        };
        let p = p.expect("the purge never fails on a race");
        let rows = rows_of(&a, op.id).await;
        match r {
            Ok(_) => {
                assert_eq!(p.operations, 0, "round {round}");
                // 4 events + RETRIED, both steps, the job, the retry's request id.
                assert_eq!(rows, [1, 5, 2, 1, 1, 0], "round {round}: retried whole");
                let now = a.s.ops.get(op.id, None).await.unwrap().unwrap();
                assert_eq!(now.status, OpStatus::Pending);
                retried += 1;
            }
            Err(Error::NotFound { .. }) => {
                assert_eq!(p.operations, 1, "round {round}");
                assert_eq!(rows, [0, 0, 0, 0, 0, 1], "round {round}: purged whole");
                purged += 1;
            }
            Err(e) => panic!("round {round}: retry failed otherwise: {e}"),
        }
        // A retried operation is live now: another purge leaves it.
        b.s.retention.purge_batch(&batch(10)).await.unwrap();
        if retried > 0 {
            assert_eq!(rows_of(&a, op.id).await, rows, "round {round}");
        }
    }
    assert_eq!(retried + purged, 12);
}

/// Two replicas purging the same operations at once: no error, and each operation is
/// purged (and tombstoned) exactly once.
async fn concurrent_purges_remove_each_operation_once(db: TestDb) {
    const N: usize = 20;
    let a = replica(&db, "r1").await;
    let b = replica(&db, "r2").await;
    let mut ids = Vec::new();
    for _ in 0..N {
        let op = ran(&a, "alice", OpStatus::Succeeded).await;
        age(&a, op.id, 60).await;
        ids.push(op.id);
    }
    async fn drain(r: &Replica) -> u64 {
        let mut total = 0;
        loop {
            let n =
                r.s.retention
                    .purge_batch(&batch(3))
                    .await
                    .expect("purge")
                    .operations;
            total += n;
            if n == 0 {
                return total;
            }
        }
    }
    let (x, y) = tokio::join!(drain(&a), drain(&b));
    assert_eq!(x + y, N as u64, "{x} + {y}");
    for id in ids {
        assert_eq!(rows_of(&a, id).await, [0, 0, 0, 0, 0, 1], "{id}");
    }
}

/// A batch purges at most its limit (one transaction each): 7 operations in batches of
/// 3 take three batches, 3, 3 and 1, then none are left.
async fn purges_in_batches_of_the_limit(db: TestDb) {
    let r = replica(&db, "r1").await;
    for _ in 0..7 {
        let op = ran(&r, "alice", OpStatus::Succeeded).await;
        age(&r, op.id, 90).await;
    }
    let mut sizes = Vec::new();
    loop {
        let n =
            r.s.retention
                .purge_batch(&batch(3))
                .await
                .unwrap()
                .operations;
        sizes.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(sizes, [3, 3, 1, 0]);
}

/// The purger's lease: one holder at a time, renewed by its holder, taken over once it
/// expired.
async fn one_holder_of_the_purger_lease(db: TestDb) {
    let a = replica(&db, "r1").await;
    let b = replica(&db, "r2").await;
    let now = now_micros();
    let ttl = Duration::from_secs(60).as_micros() as Micros;
    assert!(a
        .s
        .retention
        .claim_purger("r1", now, now + ttl)
        .await
        .unwrap());
    assert!(!b
        .s
        .retention
        .claim_purger("r2", now, now + ttl)
        .await
        .unwrap());
    assert!(
        a.s.retention
            .claim_purger("r1", now + 1, now + 2 * ttl)
            .await
            .unwrap(),
        "renewed"
    );
    assert!(
        !b.s.retention
            .claim_purger("r2", now + ttl + 1, now + 3 * ttl)
            .await
            .unwrap(),
        "renewal counts"
    );
    assert!(
        b.s.retention
            .claim_purger("r2", now + 2 * ttl, now + 3 * ttl)
            .await
            .unwrap(),
        "expired: taken over"
    );
    assert!(!a
        .s
        .retention
        .claim_purger("r1", now + 2 * ttl, now + 3 * ttl)
        .await
        .unwrap());
}

/// A provisioning operation that ended long ago stays while its subscription names it;
/// a plain one beside it goes.
async fn keeps_operations_a_subscription_names(db: TestDb) {
    let r = replica(&db, "r1").await;
    let new = new_operation("alice", 2, JobStart::Queued);
    let sub = NewSubscription {
        id: Uuid::now_v7(),
        user_id: "alice".into(),
        plan: Plan::Free,
        graph_id: Uuid::now_v7(),
        checkout_id: None,
        repository: None,
    };
    r.s.records
        .create_provisioning(&new, &sub, None)
        .await
        .unwrap();
    r.s.ops
        .cancel(new.op.id, None, "not needed", now_micros())
        .await
        .unwrap()
        .expect("cancelled");
    let plain = ran(&r, "alice", OpStatus::Cancelled).await;
    age(&r, new.op.id, 400).await;
    age(&r, plain.id, 400).await;
    let before = rows_of(&r, new.op.id).await;
    let purged = r.s.retention.purge_batch(&batch(100)).await.unwrap();
    assert_eq!(purged.operations, 1);
    assert_eq!(rows_of(&r, plain.id).await, [0, 0, 0, 0, 0, 1]);
    assert_eq!(rows_of(&r, new.op.id).await, before);
    let kept =
        r.s.records
            .subscription(sub.id, None)
            .await
            .unwrap()
            .expect("kept");
    assert_eq!(kept.operation_id, new.op.id);
}

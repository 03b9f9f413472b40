//! [`JobQueue`] admission: operations sharing a concurrency key run one at a time in order
//! of arrival (queued and leased alike), a crashed holder keeps its key and comes back
//! first, waiters say which operation is ahead, the per-owner limit holds, and no waiter
//! is left behind when the key frees while it arrives.

use pipeline_svc::domain::{
    engine::{
        operation::{EventType, OpStatus, Operation},
        ports::{Admission, Change, Created, JobStart, Lease, NewOperation},
    },
    now_micros,
};

use super::{new_operation, Stores};
use crate::common::TestDb;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    a_key_runs_one_operation_at_a_time_in_arrival_order,
    a_crashed_holder_keeps_its_key_and_resumes_first,
    direct_operations_wait_for_their_key,
    concurrent_claims_never_share_a_key,
    the_owner_limit_bounds_running_operations,
    waiters_created_while_the_key_frees_all_run,
);

fn with_keys(owner: &str, job: JobStart, keys: &[&str]) -> NewOperation {
    NewOperation {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..new_operation(owner, 1, job)
    }
}

async fn create(s: &Stores, new: &NewOperation) -> (Operation, Option<Lease>, Option<String>) {
    match s.ops.create(new).await.expect("create") {
        Created::New {
            op, lease, waiting, ..
        } => (op, lease, waiting.map(|e| e.message)),
        Created::Existing(op) => panic!("expected a new operation, got {}", op.id),
    }
}

async fn claim(s: &Stores, worker: &str) -> Option<Lease> {
    s.jobs
        .claim(worker, now_micros(), 60_000)
        .await
        .expect("claim")
}

async fn finish(s: &Stores, lease: &Lease) {
    let done = Change {
        status: Some(OpStatus::Succeeded),
        ..Change::new(EventType::Finished, "done", now_micros())
    };
    s.ops
        .record(lease.operation_id, Some(lease), &done)
        .await
        .expect("finish");
}

async fn message(s: &Stores, op: &Operation) -> String {
    s.ops.get(op.id, None).await.unwrap().unwrap().message
}

async fn a_key_runs_one_operation_at_a_time_in_arrival_order(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let (a, _, waits) = create(&s, &with_keys("alice", JobStart::Queued, &["k"])).await;
    assert_eq!(waits, None, "the first operation of a key waits for nobody");
    let (b, _, waits) = create(&s, &with_keys("bob", JobStart::Queued, &["k", "x"])).await;
    let waits = waits.expect("the second one says it waits");
    assert!(
        waits.contains("concurrency key k") && waits.contains(&a.id.to_string()),
        "{waits}"
    );
    assert_eq!(b.status, OpStatus::Pending);
    let (c, _, _) = create(&s, &with_keys("carol", JobStart::Queued, &["k"])).await;
    let (other, _, waits) = create(&s, &with_keys("dave", JobStart::Queued, &["other"])).await;
    assert_eq!(waits, None);

    let first = claim(&s, "w").await.expect("the first of k");
    assert_eq!(first.operation_id, a.id);
    let second = claim(&s, "w").await.expect("another key runs alongside");
    assert_eq!(second.operation_id, other.id);
    assert!(claim(&s, "w").await.is_none(), "b and c wait for a");
    assert!(message(&s, &b).await.contains(&a.id.to_string()));

    finish(&s, &first).await;
    let b_message = message(&s, &b).await;
    assert!(
        b_message.contains("free") && b_message.contains(&a.id.to_string()),
        "b is told the key is free: {b_message}"
    );
    let c_message = message(&s, &c).await;
    assert!(
        c_message.contains(&b.id.to_string()),
        "c is told b is ahead now: {c_message}"
    );
    let next = claim(&s, "w").await.expect("b, next in line");
    assert_eq!(next.operation_id, b.id);
    assert!(claim(&s, "w").await.is_none(), "c waits for b");
    finish(&s, &next).await;
    assert_eq!(claim(&s, "w").await.expect("c").operation_id, c.id);
}

async fn a_crashed_holder_keeps_its_key_and_resumes_first(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let (a, _, _) = create(&s, &with_keys("alice", JobStart::Queued, &["k"])).await;
    let (_b, _, _) = create(&s, &with_keys("bob", JobStart::Queued, &["k"])).await;
    let t0 = now_micros();
    let crashed = s.jobs.claim("w1", t0, 1000).await.unwrap().unwrap();
    assert_eq!(crashed.operation_id, a.id);
    assert!(s
        .jobs
        .claim("w2", t0 + 500_000, 1000)
        .await
        .unwrap()
        .is_none());
    // The lease expired: the holder is claimable again, before the waiter.
    let resumed = s.jobs.claim("w2", t0 + 1_500_000, 1000).await.unwrap();
    let resumed = resumed.expect("the crashed holder is claimable again");
    assert_eq!((resumed.operation_id, resumed.attempts), (a.id, 2));
    assert!(
        s.jobs
            .claim("w3", t0 + 1_600_000, 60_000)
            .await
            .unwrap()
            .is_none(),
        "the waiter still waits for the resumed holder"
    );
    // Handed back at shutdown, it keeps the key too.
    assert!(s.jobs.release(&resumed, t0 + 1_700_000).await.unwrap());
    let again = s.jobs.claim("w3", t0 + 1_800_000, 60_000).await.unwrap();
    assert_eq!(again.expect("claimable").operation_id, a.id);
}

async fn direct_operations_wait_for_their_key(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let leased = |who: &str| JobStart::Leased {
        owner: who.into(),
        expires: now_micros() + 60_000_000,
    };
    let (a, a_lease, waits) = create(&s, &with_keys("alice", leased("r1"), &["k"])).await;
    assert_eq!(waits, None, "admitted as it is created");
    let a_lease = a_lease.unwrap();
    assert_eq!(
        s.jobs.admit(&a_lease, now_micros()).await.unwrap(),
        Admission::Admitted
    );
    let (b, b_lease, waits) = create(&s, &with_keys("bob", leased("r2"), &["k"])).await;
    let b_lease = b_lease.unwrap();
    assert!(waits.unwrap().contains(&a.id.to_string()));
    assert_eq!(b.status, OpStatus::Pending);
    match s.jobs.admit(&b_lease, now_micros()).await.unwrap() {
        Admission::Waiting(why) => assert!(why.contains(&a.id.to_string()), "{why}"),
        other => panic!("admitted while a runs: {other:?}"),
    }
    // A queued operation of the key, created later, waits behind both.
    create(&s, &with_keys("carol", JobStart::Queued, &["k"])).await;
    finish(&s, &a_lease).await;
    assert!(claim(&s, "w").await.is_none(), "b arrived first");
    assert_eq!(
        s.jobs.admit(&b_lease, now_micros()).await.unwrap(),
        Admission::Admitted
    );
    s.ops
        .cancel(b.id, None, "", now_micros())
        .await
        .unwrap()
        .expect("flagged");
    assert_eq!(
        s.jobs.admit(&b_lease, now_micros()).await.unwrap(),
        Admission::CancelRequested
    );
}

async fn concurrent_claims_never_share_a_key(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    for i in 0..6 {
        create(&s, &with_keys(&format!("u{i}"), JobStart::Queued, &["k"])).await;
    }
    let claims = futures::future::join_all((0..6).map(|i| {
        let jobs = s.jobs.clone();
        async move {
            jobs.claim(&format!("w{i}"), now_micros(), 60_000)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(claims.iter().flatten().count(), 1, "{claims:?}");
}

async fn the_owner_limit_bounds_running_operations(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let limited = |owner: &str| NewOperation {
        owner_limit: 1,
        ..new_operation(owner, 1, JobStart::Queued)
    };
    let (a1, _, _) = create(&s, &limited("alice")).await;
    let (a2, _, _) = create(&s, &limited("alice")).await;
    let (b1, _, _) = create(&s, &limited("bob")).await;
    let first = claim(&s, "w").await.unwrap();
    assert_eq!(first.operation_id, a1.id);
    let second = claim(&s, "w").await.unwrap();
    assert_eq!(second.operation_id, b1.id, "alice's second one waits");
    assert!(claim(&s, "w").await.is_none());
    finish(&s, &first).await;
    assert_eq!(claim(&s, "w").await.unwrap().operation_id, a2.id);
}

/// A claim skips jobs marked as waiting behind a key, so a waiter marked while the key
/// was freeing would never run: waiters created concurrently with the holder's end must
/// all run, one after another.
async fn waiters_created_while_the_key_frees_all_run(db: TestDb) {
    let s = std::sync::Arc::new(Stores::open(&db, "r1").await);
    let (holder, _, _) = create(&s, &with_keys("alice", JobStart::Queued, &["k"])).await;
    let lease = claim(&s, "w").await.expect("the holder");
    assert_eq!(lease.operation_id, holder.id);
    let creators: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                create(&s, &with_keys(&format!("u{i}"), JobStart::Queued, &["k"]))
                    .await
                    .0
            })
        })
        .collect();
    finish(&s, &lease).await;
    let mut waiters = Vec::new();
    for c in creators {
        waiters.push(c.await.expect("creator"));
    }
    let mut ran = 0;
    while let Some(next) = claim(&s, "w").await {
        finish(&s, &next).await;
        ran += 1;
    }
    assert_eq!(ran, waiters.len(), "every waiter ran, one at a time");
    for w in &waiters {
        let op = s.ops.get(w.id, None).await.unwrap().unwrap();
        assert_eq!(
            op.status,
            OpStatus::Succeeded,
            "{} was left waiting: {}",
            w.id,
            op.message
        );
    }
}

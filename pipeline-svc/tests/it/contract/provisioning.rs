//! The [`ProvisioningStore`] contract: atomic and idempotent creation (on the checkout id
//! across callers, on the request id per owner), state machines that only move forward,
//! tenancy scope on every read, fenced writes, and compensations that remove exactly one
//! thing.

use std::collections::BTreeSet;

use pipeline_svc::{
    domain::{
        engine::{
            operation::{EventType, OpStatus},
            ports::{Change, Created, JobStart, Lease, NewOperation},
        },
        now_micros,
        provisioning::{
            model::{
                CreditPool, GraphKind, GraphStatus, Plan, SchemaRecord, SubscriptionStatus,
                REPOSITORY_OWNER,
            },
            ports::{GraphCursor, NewCheckout, NewGraph, NewSubscription},
        },
    },
    error::Error,
};
use uuid::Uuid;

use super::{new_operation, queued, Stores};
use crate::common::TestDb;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    create_provisioning_is_atomic_and_idempotent,
    concurrent_checkouts_create_one_operation,
    subscriptions_move_only_forward,
    graphs_insert_once_and_move_along_their_state_machine,
    reads_are_scoped_to_what_a_user_may_see,
    schema_pool_and_activation,
    compensations_remove_exactly_what_they_name,
    remove_graph_cancels_its_subscriptions,
    cancelling_an_unstarted_operation_cancels_its_subscription,
    fenced_writes_need_the_current_lease,
);

/// A provisioning request's rows: its operation (queued) and PENDING subscription.
struct Request {
    new: NewOperation,
    sub: NewSubscription,
}

fn request(user: &str, graph_id: Uuid) -> Request {
    let new = new_operation(user, 2, JobStart::Queued);
    let sub = NewSubscription {
        id: Uuid::now_v7(),
        user_id: user.into(),
        plan: Plan::Free,
        graph_id,
        checkout_id: None,
        repository: None,
    };
    Request { new, sub }
}

fn checkout(id: &str, user: &str, fingerprint: &str) -> NewCheckout {
    NewCheckout {
        checkout_id: id.into(),
        user_id: user.into(),
        fingerprint: fingerprint.into(),
    }
}

fn graph(id: Uuid, owner: &str, kind: GraphKind, operation_id: Uuid) -> NewGraph {
    NewGraph {
        id,
        owner: owner.into(),
        name: format!("graph {id}"),
        kind,
        repository: (kind == GraphKind::Repository).then(|| "sec".to_string()),
        backend: "test".into(),
        location: format!("somewhere/{id}"),
        operation_id,
        time: now_micros(),
    }
}

fn pool(subscription_id: Uuid, graph_id: Uuid, user: &str) -> CreditPool {
    CreditPool {
        id: Uuid::now_v7(),
        subscription_id,
        graph_id,
        user_id: user.into(),
        plan: Plan::Pro,
        allocated: 100,
        remaining: 100,
        create_time: now_micros(),
    }
}

/// Creates `r` and claims its job: the lease its steps would write under.
async fn started(s: &Stores, r: &Request) -> Lease {
    match s
        .records
        .create_provisioning(&r.new, &r.sub, None)
        .await
        .unwrap()
    {
        Created::New { .. } => {}
        Created::Existing(op) => panic!("expected a new operation, got {}", op.id),
    }
    let lease = s
        .jobs
        .claim("w", now_micros(), 60_000)
        .await
        .unwrap()
        .expect("the provisioning job");
    assert_eq!(lease.operation_id, r.new.op.id);
    lease
}

fn op_id(c: &Created) -> Uuid {
    match c {
        Created::New { op, .. } | Created::Existing(op) => op.id,
    }
}

async fn create_provisioning_is_atomic_and_idempotent(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let first = request("alice", Uuid::now_v7());
    let c = checkout("chk-1", "alice", "fp-1");
    let created = s
        .records
        .create_provisioning(&first.new, &first.sub, Some(&c))
        .await
        .unwrap();
    assert!(matches!(created, Created::New { .. }));
    let sub = s
        .records
        .subscription(first.sub.id, None)
        .await
        .unwrap()
        .expect("created with the operation");
    assert_eq!(
        (sub.status, sub.operation_id, sub.user_id.as_str()),
        (SubscriptionStatus::Pending, first.new.op.id, "alice")
    );
    assert!(s.ops.get(first.new.op.id, None).await.unwrap().is_some());
    // The same checkout again, from anyone, with the same content: the first operation,
    // and nothing new stored.
    let again = request("billing-retry", Uuid::now_v7());
    let dup = s
        .records
        .create_provisioning(&again.new, &again.sub, Some(&c))
        .await
        .unwrap();
    assert!(matches!(dup, Created::Existing(_)));
    assert_eq!(op_id(&dup), first.new.op.id);
    assert!(s
        .records
        .subscription(again.sub.id, None)
        .await
        .unwrap()
        .is_none());
    assert!(s.ops.get(again.new.op.id, None).await.unwrap().is_none());
    // The same checkout asking for something else is refused.
    let other = request("alice", Uuid::now_v7());
    let err = s
        .records
        .create_provisioning(
            &other.new,
            &other.sub,
            Some(&checkout("chk-1", "alice", "fp-2")),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    assert!(s
        .records
        .subscription(other.sub.id, None)
        .await
        .unwrap()
        .is_none());
    // Idempotent on (owner, request_id) like any operation.
    let mut with_id = request("alice", Uuid::now_v7());
    with_id.new.op.request_id = Some("req-7".into());
    let a = s
        .records
        .create_provisioning(&with_id.new, &with_id.sub, None)
        .await
        .unwrap();
    let mut repeat = request("alice", Uuid::now_v7());
    repeat.new.op.request_id = Some("req-7".into());
    let b = s
        .records
        .create_provisioning(&repeat.new, &repeat.sub, None)
        .await
        .unwrap();
    assert!(matches!(b, Created::Existing(_)));
    assert_eq!(op_id(&a), op_id(&b));
    assert!(s
        .records
        .subscription(repeat.sub.id, None)
        .await
        .unwrap()
        .is_none());
}

async fn concurrent_checkouts_create_one_operation(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let requests: Vec<_> = (0..12).map(|_| request("dave", Uuid::now_v7())).collect();
    let results = futures::future::join_all(requests.iter().map(|r| {
        let records = s.records.clone();
        async move {
            records
                .create_provisioning(&r.new, &r.sub, Some(&checkout("chk-race", "dave", "fp")))
                .await
                .unwrap()
        }
    }))
    .await;
    let ops: BTreeSet<_> = results.iter().map(op_id).collect();
    let new = results
        .iter()
        .filter(|c| matches!(c, Created::New { .. }))
        .count();
    assert_eq!((ops.len(), new), (1, 1), "{ops:?}");
    let mut subscriptions = 0;
    for r in &requests {
        subscriptions += usize::from(
            s.records
                .subscription(r.sub.id, None)
                .await
                .unwrap()
                .is_some(),
        );
    }
    assert_eq!(subscriptions, 1, "only the winner's subscription exists");
}

async fn subscriptions_move_only_forward(db: TestDb) {
    use SubscriptionStatus::*;
    let s = Stores::open(&db, "r1").await;
    let r = request("alice", Uuid::now_v7());
    s.records
        .create_provisioning(&r.new, &r.sub, None)
        .await
        .unwrap();
    let id = r.sub.id;
    let moved = s
        .records
        .move_subscription(id, Provisioning, "", now_micros(), None)
        .await
        .unwrap();
    assert_eq!(moved.status, Provisioning);
    // Staying put is done already (a retried step).
    s.records
        .move_subscription(id, Provisioning, "", now_micros(), None)
        .await
        .unwrap();
    for back in [Pending] {
        let err = s
            .records
            .move_subscription(id, back, "", now_micros(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Precondition(_)), "{back:?}: {err}");
    }
    let failed = s
        .records
        .move_subscription(id, Failed, "step 3 failed", now_micros(), None)
        .await
        .unwrap();
    assert_eq!(
        (failed.status, failed.reason.as_str()),
        (Failed, "step 3 failed")
    );
    for next in [Provisioning, Active, Cancelled] {
        let err = s
            .records
            .move_subscription(id, next, "", now_micros(), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Precondition(_)),
            "FAILED → {next:?}: {err}"
        );
    }
    let err = s
        .records
        .move_subscription(Uuid::now_v7(), Provisioning, "", now_micros(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

async fn graphs_insert_once_and_move_along_their_state_machine(db: TestDb) {
    use GraphStatus::*;
    let s = Stores::open(&db, "r1").await;
    let op = queued(&s, "alice", 1).await.id;
    let g = graph(Uuid::now_v7(), "alice", GraphKind::User, op);
    assert!(s.records.insert_graph(&g, None).await.unwrap());
    assert!(!s.records.insert_graph(&g, None).await.unwrap(), "exists");
    let read = s.records.graph(g.id, None).await.unwrap().expect("stored");
    assert_eq!(
        (
            read.status,
            read.operation_id,
            read.owner.as_str(),
            read.ready
        ),
        (Provisioning, op, "alice", false)
    );
    assert!(read.schema.is_none());
    let err = s
        .records
        .move_graph(g.id, Deprovisioning, now_micros(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    assert_eq!(
        s.records
            .move_graph(g.id, Active, now_micros(), None)
            .await
            .unwrap()
            .status,
        Active
    );
    s.records
        .move_graph(g.id, Active, now_micros(), None)
        .await
        .expect("staying put is done already");
    let err = s
        .records
        .move_graph(g.id, Provisioning, now_micros(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    s.records
        .move_graph(g.id, Deprovisioning, now_micros(), None)
        .await
        .unwrap();
    let back = s
        .records
        .move_graph(g.id, Active, now_micros(), None)
        .await
        .unwrap();
    assert_eq!(back.status, Active, "a failed deprovisioning puts it back");
    let err = s
        .records
        .move_graph(Uuid::now_v7(), Active, now_micros(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

async fn reads_are_scoped_to_what_a_user_may_see(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let own = request("alice", Uuid::now_v7());
    s.records
        .create_provisioning(&own.new, &own.sub, None)
        .await
        .unwrap();
    let mine = graph(own.sub.graph_id, "alice", GraphKind::User, own.new.op.id);
    s.records.insert_graph(&mine, None).await.unwrap();
    let creator = queued(&s, "ops", 1).await.id;
    let repo = graph(
        Uuid::now_v7(),
        REPOSITORY_OWNER,
        GraphKind::Repository,
        creator,
    );
    s.records.insert_graph(&repo, None).await.unwrap();
    assert!(s
        .records
        .graph(mine.id, Some("alice"))
        .await
        .unwrap()
        .is_some());
    assert!(s
        .records
        .graph(mine.id, Some("bob"))
        .await
        .unwrap()
        .is_none());
    assert!(s
        .records
        .subscription(own.sub.id, Some("alice"))
        .await
        .unwrap()
        .is_some());
    assert!(s
        .records
        .subscription(own.sub.id, Some("bob"))
        .await
        .unwrap()
        .is_none());
    // A repository graph is reached through an ACTIVE subscription to it only.
    assert!(s
        .records
        .graph(repo.id, Some("bob"))
        .await
        .unwrap()
        .is_none());
    let access = request("bob", repo.id);
    s.records
        .create_provisioning(&access.new, &access.sub, None)
        .await
        .unwrap();
    assert!(
        s.records
            .graph(repo.id, Some("bob"))
            .await
            .unwrap()
            .is_none(),
        "a PENDING subscription grants nothing"
    );
    s.records
        .move_subscription(
            access.sub.id,
            SubscriptionStatus::Provisioning,
            "",
            now_micros(),
            None,
        )
        .await
        .unwrap();
    s.records
        .move_graph(repo.id, GraphStatus::Active, now_micros(), None)
        .await
        .unwrap();
    s.records
        .activate(access.sub.id, repo.id, now_micros(), None)
        .await
        .expect("a shared graph already ACTIVE stays so");
    assert!(s
        .records
        .graph(repo.id, Some("bob"))
        .await
        .unwrap()
        .is_some());
    assert!(s
        .records
        .graph(repo.id, Some("carol"))
        .await
        .unwrap()
        .is_none());
    // Lists: the same scope, newest first, in pages.
    let bobs: Vec<_> = s
        .records
        .list_graphs(Some("bob"), None, 10)
        .await
        .unwrap()
        .iter()
        .map(|g| g.id)
        .collect();
    assert_eq!(bobs, [repo.id]);
    let all = s.records.list_graphs(None, None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|g| g.id).collect::<Vec<_>>(),
        [repo.id, mine.id]
    );
    let first = s.records.list_graphs(None, None, 1).await.unwrap();
    let after = GraphCursor(first[0].create_time, first[0].id);
    let rest = s.records.list_graphs(None, Some(&after), 10).await.unwrap();
    assert_eq!(rest.iter().map(|g| g.id).collect::<Vec<_>>(), [mine.id]);
}

async fn schema_pool_and_activation(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let r = request("alice", Uuid::now_v7());
    let lease = started(&s, &r).await;
    let g = graph(r.sub.graph_id, "alice", GraphKind::User, r.new.op.id);
    s.records.insert_graph(&g, Some(&lease)).await.unwrap();
    let record = |version: &str| SchemaRecord {
        graph_id: g.id,
        schema_type: "custom".into(),
        name: "crm".into(),
        version: version.into(),
        ddl: vec!["CREATE TABLE \"a\" (\"id\" TEXT)".into()],
        spec_json: "{}".into(),
        tables: vec!["a".into()],
    };
    s.records
        .put_schema(&record("1"), now_micros(), Some(&lease))
        .await
        .unwrap();
    s.records
        .put_schema(&record("2"), now_micros(), Some(&lease))
        .await
        .unwrap();
    let schema = s.records.graph(g.id, None).await.unwrap().unwrap().schema;
    assert_eq!(schema, Some(record("2")), "replaced, not added");
    let first = pool(r.sub.id, g.id, "alice");
    assert_eq!(
        s.records.create_pool(&first, Some(&lease)).await.unwrap(),
        first
    );
    let second = pool(r.sub.id, g.id, "alice");
    assert_eq!(
        s.records
            .create_pool(&second, Some(&lease))
            .await
            .unwrap()
            .id,
        first.id,
        "a subscription has one pool"
    );
    // Activation needs a PROVISIONING subscription; refused, it changes nothing.
    let err = s
        .records
        .activate(r.sub.id, g.id, now_micros(), Some(&lease))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    assert_eq!(
        s.records.graph(g.id, None).await.unwrap().unwrap().status,
        GraphStatus::Provisioning,
        "the graph did not become ACTIVE without its subscription"
    );
    s.records
        .move_subscription(
            r.sub.id,
            SubscriptionStatus::Provisioning,
            "",
            now_micros(),
            Some(&lease),
        )
        .await
        .unwrap();
    s.records
        .activate(r.sub.id, g.id, now_micros(), Some(&lease))
        .await
        .unwrap();
    let sub = s
        .records
        .subscription(r.sub.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sub.status, SubscriptionStatus::Active);
    assert_eq!(sub.pool.map(|p| p.id), Some(first.id));
    let read = s.records.graph(g.id, None).await.unwrap().unwrap();
    assert_eq!(read.status, GraphStatus::Active);
    assert!(!read.ready, "ready once its operation SUCCEEDED too");
    s.ops
        .record(
            r.new.op.id,
            Some(&lease),
            &Change {
                status: Some(OpStatus::Succeeded),
                ..Change::new(EventType::Finished, "done", now_micros())
            },
        )
        .await
        .unwrap();
    assert!(s.records.graph(g.id, None).await.unwrap().unwrap().ready);
}

async fn compensations_remove_exactly_what_they_name(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let r = request("alice", Uuid::now_v7());
    s.records
        .create_provisioning(&r.new, &r.sub, None)
        .await
        .unwrap();
    let g = graph(r.sub.graph_id, "alice", GraphKind::User, r.new.op.id);
    s.records.insert_graph(&g, None).await.unwrap();
    s.records
        .put_schema(
            &SchemaRecord {
                graph_id: g.id,
                schema_type: "extensions".into(),
                name: "x".into(),
                version: "1".into(),
                ddl: vec![],
                spec_json: "{}".into(),
                tables: vec![],
            },
            now_micros(),
            None,
        )
        .await
        .unwrap();
    s.records
        .create_pool(&pool(r.sub.id, g.id, "alice"), None)
        .await
        .unwrap();
    assert!(s.records.delete_pool(r.sub.id).await.unwrap());
    assert!(!s.records.delete_pool(r.sub.id).await.unwrap());
    assert!(s.records.delete_schema(g.id).await.unwrap());
    assert!(!s.records.delete_schema(g.id).await.unwrap());
    assert!(
        !s.records.delete_graph(g.id, Uuid::now_v7()).await.unwrap(),
        "only the operation that created a graph removes it"
    );
    assert!(s.records.graph(g.id, None).await.unwrap().is_some());
    assert!(s.records.delete_graph(g.id, r.new.op.id).await.unwrap());
    assert!(!s.records.delete_graph(g.id, r.new.op.id).await.unwrap());
    assert!(s.records.graph(g.id, None).await.unwrap().is_none());
}

async fn remove_graph_cancels_its_subscriptions(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let creator = queued(&s, "ops", 1).await.id;
    let repo = graph(
        Uuid::now_v7(),
        REPOSITORY_OWNER,
        GraphKind::Repository,
        creator,
    );
    s.records.insert_graph(&repo, None).await.unwrap();
    s.records
        .move_graph(repo.id, GraphStatus::Active, now_micros(), None)
        .await
        .unwrap();
    let mut subs = Vec::new();
    for user in ["bob", "carol"] {
        let r = request(user, repo.id);
        s.records
            .create_provisioning(&r.new, &r.sub, None)
            .await
            .unwrap();
        s.records
            .move_subscription(
                r.sub.id,
                SubscriptionStatus::Provisioning,
                "",
                now_micros(),
                None,
            )
            .await
            .unwrap();
        s.records
            .create_pool(&pool(r.sub.id, repo.id, user), None)
            .await
            .unwrap();
        s.records
            .activate(r.sub.id, repo.id, now_micros(), None)
            .await
            .unwrap();
        subs.push(r.sub.id);
    }
    let cancelled = s
        .records
        .remove_graph(repo.id, "graph removed by ops", now_micros(), None)
        .await
        .unwrap();
    assert_eq!(cancelled, 2);
    assert!(s.records.graph(repo.id, None).await.unwrap().is_none());
    for id in subs {
        let sub = s.records.subscription(id, None).await.unwrap().unwrap();
        assert_eq!(
            (sub.status, sub.reason.as_str()),
            (SubscriptionStatus::Cancelled, "graph removed by ops")
        );
        assert!(sub.pool.is_none(), "its credit pool went with the graph");
    }
}

async fn cancelling_an_unstarted_operation_cancels_its_subscription(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let r = request("alice", Uuid::now_v7());
    s.records
        .create_provisioning(&r.new, &r.sub, None)
        .await
        .unwrap();
    s.ops
        .cancel(r.new.op.id, None, "not needed", now_micros())
        .await
        .unwrap()
        .expect("cancelled");
    let sub = s
        .records
        .subscription(r.sub.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sub.status, SubscriptionStatus::Cancelled);
    assert!(
        sub.reason.contains("cancelled before it started") && sub.reason.contains("not needed"),
        "{}",
        sub.reason
    );
}

async fn fenced_writes_need_the_current_lease(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let r = request("alice", Uuid::now_v7());
    let stale = started(&s, &r).await;
    // The lease expires and another worker takes the operation over.
    let current = s
        .jobs
        .claim("w2", now_micros() + 120_000_000, 60_000)
        .await
        .unwrap()
        .expect("expired lease reclaimed");
    let g = graph(r.sub.graph_id, "alice", GraphKind::User, r.new.op.id);
    let t = now_micros();
    let fenced = [
        s.records
            .move_subscription(
                r.sub.id,
                SubscriptionStatus::Provisioning,
                "",
                t,
                Some(&stale),
            )
            .await
            .map(|_| ()),
        s.records.insert_graph(&g, Some(&stale)).await.map(|_| ()),
        s.records
            .create_pool(&pool(r.sub.id, g.id, "alice"), Some(&stale))
            .await
            .map(|_| ()),
        s.records
            .remove_graph(g.id, "", t, Some(&stale))
            .await
            .map(|_| ()),
    ];
    for (i, result) in fenced.into_iter().enumerate() {
        let err = result.expect_err("a stale lease writes nothing");
        assert!(matches!(err, Error::LeaseLost(_)), "write {i}: {err}");
    }
    let sub = s
        .records
        .subscription(r.sub.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sub.status, SubscriptionStatus::Pending);
    assert!(sub.pool.is_none());
    assert!(s.records.graph(g.id, None).await.unwrap().is_none());
    assert!(s.records.insert_graph(&g, Some(&current)).await.unwrap());
}

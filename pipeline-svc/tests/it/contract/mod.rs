//! The storage contracts: one suite per port of the domain, written against the trait
//! alone (every method, its errors, its concurrency rules) and run on every backend. An
//! implementation that passes its suite is one the engine and the workflows can rely on;
//! the only backend-specific line is [`Stores::open`].
//!
//! - `operations`: [`OperationStore`] (gapless events, forward-only moves, fencing,
//!   idempotent creation, cancellation, hints);
//! - `jobs`: [`JobQueue`] (claim order and exclusivity, lease expiry, heartbeat,
//!   release);
//! - `admission`: [`JobQueue`]'s admission (concurrency keys in order of arrival, one
//!   holder, crashed holders first, waiters told who is ahead, the per-owner limit);
//! - `provisioning`: [`ProvisioningStore`] (state machines, tenancy scope, idempotency on
//!   the checkout id, atomic moves);
//! - `graphs`: [`GraphDatabases`] (idempotent creation, transactional DDL, audit);
//! - `retention`: [`RetentionStore`] (what a purge removes and never touches, batches,
//!   tombstones, concurrent purges and retries, the purger's lease).

mod admission;
mod graphs;
mod jobs;
mod operations;
mod provisioning;
mod retention;

use std::sync::Arc;

use pipeline_svc::{
    domain::{
        engine::{
            operation::{ExecutionMode, OpStatus, Operation, Step, StepStatus},
            ports::{
                Created, JobQueue, JobStart, Lease, NewOperation, OperationStore, RetentionStore,
                StepChange, StepUpdate,
            },
        },
        now_micros,
        provisioning::ports::{GraphDatabases, ProvisioningStore},
    },
    store::sql::SqlStore,
};
use uuid::Uuid;

use crate::common::TestDb;

/// The ports, as one replica of the service sees them.
pub struct Stores {
    pub ops: Arc<dyn OperationStore>,
    pub jobs: Arc<dyn JobQueue>,
    pub retention: Arc<dyn RetentionStore>,
    pub records: Arc<dyn ProvisioningStore>,
    pub graphs: Arc<dyn GraphDatabases>,
}

impl Stores {
    /// The SQL implementations on the test's database (replica `replica`).
    pub async fn open(db: &TestDb, replica: &str) -> Stores {
        let store = Arc::new(
            SqlStore::connect(&db.url, replica)
                .await
                .expect("the store opens"),
        );
        Stores {
            graphs: Arc::new(store.graph_databases(&db.dir.path().join("pipeline"))),
            ops: store.clone(),
            jobs: store.clone(),
            retention: store.clone(),
            records: store,
        }
    }
}

/// An operation as the engine hands it to [`OperationStore::create`]: PENDING, with
/// `steps` PENDING steps `s0`, `s1`…
pub fn new_operation(owner: &str, steps: usize, job: JobStart) -> NewOperation {
    let now = now_micros();
    NewOperation {
        op: Operation {
            id: Uuid::now_v7(),
            kind: "contract.test".into(),
            status: OpStatus::Pending,
            progress_percent: 0,
            message: "created".into(),
            owner: owner.into(),
            execution_mode: match job {
                JobStart::Queued => ExecutionMode::Queued,
                JobStart::Leased { .. } => ExecutionMode::Direct,
            },
            request_id: None,
            params: serde_json::json!({ "steps": steps }),
            state: serde_json::Value::Null,
            result: None,
            error: None,
            cancel_requested: false,
            last_sequence: 0,
            attempts: 0,
            create_time: now,
            update_time: now,
            start_time: None,
            end_time: None,
            deadline: None,
            timeout: None,
            steps: (0..steps)
                .map(|i| Step::pending(i, &format!("s{i}"), "test"))
                .collect(),
        },
        job,
        keys: Vec::new(),
        owner_limit: 0,
    }
}

/// A queued operation of `steps` steps, created.
pub async fn queued(s: &Stores, owner: &str, steps: usize) -> Operation {
    created(
        s.ops
            .create(&new_operation(owner, steps, JobStart::Queued))
            .await,
    )
    .0
}

/// The new operation (and its lease) of a create that must have inserted one.
pub fn created(c: pipeline_svc::error::Result<Created>) -> (Operation, Option<Lease>) {
    match c.expect("create") {
        Created::New { op, lease, .. } => (op, lease),
        Created::Existing(op) => panic!("expected a new operation, got existing {}", op.id),
    }
}

/// A queued operation claimed by `worker`: its id and lease.
pub async fn claimed(s: &Stores, worker: &str, steps: usize) -> (Operation, Lease) {
    let op = queued(s, "alice", steps).await;
    let lease = s
        .jobs
        .claim(worker, now_micros(), 60_000)
        .await
        .expect("claim")
        .expect("the queued job is claimable");
    assert_eq!(lease.operation_id, op.id);
    (op, lease)
}

/// A change of step `index` (`s{index}`) to `status`, starting and/or ending it.
pub fn step(index: i64, status: StepStatus, started: bool, ended: bool) -> StepChange {
    StepChange {
        index,
        name: format!("s{index}"),
        phase: "test".into(),
        update: Some(StepUpdate {
            status,
            detail: Some(format!("{status:?}")),
            started,
            ended,
        }),
    }
}

//! What the engine needs from storage: the [`OperationStore`] (operations, their steps and
//! their event log), the [`JobQueue`] (leases on queued work) and the [`RetentionStore`]
//! (purging old terminal operations), with the types they exchange. `store::sql` implements both on SQLite and Postgres; the contract suites in
//! `tests/it/contract` hold every implementation to the rules written here.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::operation::{Event, EventType, OpStatus, Operation, OperationError, StepStatus};
use crate::{
    domain::Micros,
    error::{Error, Result},
};

/// How a new operation's job starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStart {
    /// Waits for any replica's worker.
    Queued,
    /// Already leased by the replica that creates it (DIRECT execution).
    Leased { owner: String, expires: Micros },
}

#[derive(Debug, Clone)]
pub struct NewOperation {
    /// PENDING, with its steps PENDING and `last_sequence` 0.
    pub op: Operation,
    pub job: JobStart,
    /// The concurrency keys it holds while it runs (see [`JobQueue`]).
    pub keys: Vec<String>,
    /// Admitted operations of the same owner it waits behind before it runs; 0: none.
    pub owner_limit: u32,
}

/// A worker's claim on an operation. `token` fences every write the worker makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub operation_id: Uuid,
    pub token: i64,
    pub owner: String,
    pub attempts: i64,
}

#[derive(Debug, Clone)]
pub enum Created {
    /// The operation, its CREATED event, and the lease when it was created leased.
    New {
        op: Operation,
        event: Event,
        lease: Option<Lease>,
        /// When it cannot run yet: the PROGRESS event (sequence 2) saying what it waits
        /// for. A leased (DIRECT) operation without one was admitted at once.
        waiting: Option<Box<Event>>,
    },
    /// The owner used this request id before: the operation it created then.
    Existing(Operation),
}

/// A RetryOperation, as the engine planned it: the operation goes back to PENDING with a
/// RETRIED event, its steps from `from_step` on back to PENDING (keeping their attempt
/// counts), and its job and keys start again as a new operation's would.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The operation's owner, when the caller may touch only its own.
    pub owner: Option<String>,
    pub request_id: Option<String>,
    /// The sequence the engine planned from: a retry of an operation that changed since
    /// is refused (`Conflict`).
    pub expected_sequence: i64,
    pub from_step: i64,
    pub job: JobStart,
    pub keys: Vec<String>,
    /// The retry's own deadline, as far out as the first one was.
    pub deadline: Option<Micros>,
    pub message: String,
    pub time: Micros,
}

/// Why operation `id`, `status` now, cannot be retried: it has not ended, or it succeeded.
pub fn retry_refused(id: Uuid, status: OpStatus) -> Error {
    Error::Precondition(format!(
        "operation {id} is {}: only a FAILED or CANCELLED operation can be retried",
        status.as_str()
    ))
}

/// The step an event is about, and how it moves (if it does).
#[derive(Debug, Clone, PartialEq)]
pub struct StepChange {
    pub index: i64,
    pub name: String,
    pub phase: String,
    pub update: Option<StepUpdate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepUpdate {
    pub status: StepStatus,
    pub detail: Option<String>,
    /// Sets the start time and counts an attempt.
    pub started: bool,
    /// Sets the end time.
    pub ended: bool,
}

/// One state change of an operation and the event that reports it, written atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub event: EventType,
    /// The event's message; it also becomes the operation's message.
    pub message: String,
    pub status: Option<OpStatus>,
    /// Applied only when above the current percent.
    pub percent: Option<i64>,
    pub step: Option<StepChange>,
    pub state: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    pub error: Option<OperationError>,
    pub cancel_requested: bool,
    pub time: Micros,
}

impl Change {
    pub fn new(event: EventType, message: impl Into<String>, time: Micros) -> Self {
        Self {
            event,
            message: message.into(),
            status: None,
            percent: None,
            step: None,
            state: None,
            result: None,
            error: None,
            cancel_requested: false,
            time,
        }
    }
}

/// What `record` wrote, and whether somebody asked the operation to stop.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub event: Event,
    pub cancel_requested: bool,
    /// Events the change caused on other operations: an operation that ended freed its
    /// concurrency keys, and each one waiting for them was told what it waits for now.
    pub announced: Vec<Event>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpFilter {
    /// Only this owner's operations (callers with the `user` role).
    pub owner: Option<String>,
    pub status: Option<OpStatus>,
    pub kind: Option<String>,
}

/// Where the previous page ended (newest first): create time and operation id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpCursor(pub Micros, pub Uuid);

/// Wake-ups from other replicas (Postgres LISTEN/NOTIFY). Hints only: readers always
/// re-read the store, so a lost hint costs latency, never an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    Operation(Uuid),
    Jobs,
    /// Anything may have changed (the listener is back after a loss, or SQLite's cursor
    /// moved): every watcher and waiter looks again.
    Resync,
}

/// Operations, their steps and their event log.
///
/// Every write appends exactly one event per change, numbered 1, 2, 3… per operation with
/// no gap; status and percent only move forward; a terminal operation refuses every
/// change. Writes `fence`d by a lease happen only while that lease is current.
#[async_trait]
pub trait OperationStore: Send + Sync + 'static {
    /// Succeeds once the database answers.
    async fn ping(&self) -> Result<()>;

    /// Inserts the operation, its steps, its CREATED event (sequence 1) and its job in one
    /// transaction; idempotent on (owner, request_id).
    async fn create(&self, new: &NewOperation) -> Result<Created>;

    /// `owner`: only if the operation belongs to it.
    async fn get(&self, id: Uuid, owner: Option<&str>) -> Result<Option<Operation>>;

    /// Newest first, after `after`.
    async fn list(
        &self,
        filter: &OpFilter,
        after: Option<&OpCursor>,
        limit: usize,
    ) -> Result<Vec<Operation>>;

    /// Stored events with a sequence above `after`, in order.
    async fn events(&self, id: Uuid, after: i64, limit: usize) -> Result<Vec<Event>>;

    /// Applies `change` and appends its event with the next sequence, atomically. Status
    /// and percent only move forward; a terminal operation refuses every change
    /// (`Precondition`), as does a step that cannot make the requested move. With
    /// `fence`, the write happens only while that lease is current (else `LeaseLost`).
    /// A terminal status also finishes the job.
    async fn record(&self, id: Uuid, fence: Option<&Lease>, change: &Change) -> Result<Recorded>;

    /// `record` for several changes in order, in one transaction (one commit where the
    /// engine would otherwise wait for several): all of them or none.
    async fn record_all(
        &self,
        id: Uuid,
        fence: Option<&Lease>,
        changes: &[Change],
    ) -> Result<Vec<Recorded>>;

    /// Saves workflow state mid-step (no event: nothing visible changed); fenced.
    async fn checkpoint(&self, lease: &Lease, state: &serde_json::Value) -> Result<()>;

    /// Cancels a job nobody claimed yet (FINISHED event, CANCELLED, its steps SKIPPED) or
    /// flags a running operation (CANCEL_REQUESTED event). `None` when it was already
    /// finished or flagged.
    async fn cancel(
        &self,
        id: Uuid,
        owner: Option<&str>,
        reason: &str,
        time: Micros,
    ) -> Result<Option<Event>>;

    /// Starts a FAILED or CANCELLED operation again (see [`Retry`]), atomically, and
    /// returns it like [`OperationStore::create`]: `Created::New` with its RETRIED event
    /// (and its lease when leased, and why it waits when it must), or `Created::Existing`
    /// when the operation was retried with this request id before (nothing changes).
    /// Any other status is refused (`Precondition`).
    async fn retry(&self, id: Uuid, retry: &Retry) -> Result<Created>;

    /// Other replicas' wake-ups from the replica's one change source, which costs at most
    /// one round trip per `every` while nothing changes; `None` where only this process
    /// writes.
    async fn hints(&self, every: Duration) -> Option<BoxStream<'static, Hint>>;
}

/// Whether a leased operation may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// It holds its keys and counts against its owner's limit until it ends.
    Admitted,
    /// Why it waits (naming the operation holding the key), for its message.
    Waiting(String),
    /// Somebody asked it to stop while it waited.
    CancelRequested,
}

/// Leases on operations' jobs. A job is queued when created QUEUED (or handed back), and
/// leased to one worker at a time; each claim gets a higher token, so a worker whose
/// lease expired and was claimed again is fenced off by the [`OperationStore`].
///
/// Admission: an operation runs only while it holds every concurrency key it declared
/// and its owner has fewer admitted operations than its limit. A key goes to the unfinished
/// operation that declared it first (create time, then id), and stays with it until it
/// ends: a crashed holder's job is claimable again once its lease expires, and it
/// resumes before any later operation of the key. At most one operation holds a key.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Claims the oldest queued job that may be admitted, or one whose lease expired, for
    /// `owner`, and admits it. Of several concurrent claimers of one job, exactly one
    /// gets it.
    async fn claim(&self, owner: &str, now: Micros, lease_ms: i64) -> Result<Option<Lease>>;

    /// Admits the leased operation if it may run now (see the trait); fenced.
    async fn admit(&self, lease: &Lease, now: Micros) -> Result<Admission>;

    /// Extends the lease; `false` when it is no longer current.
    async fn heartbeat(&self, lease: &Lease, now: Micros, lease_ms: i64) -> Result<bool>;

    /// Gives the job back to the queue (graceful shutdown), not counting this claim as
    /// an attempt; `false` when the lease is not current.
    async fn release(&self, lease: &Lease, now: Micros) -> Result<bool>;

    /// The jobs waiting for a worker at `now`: queued ones, and leased ones whose lease
    /// expired (their worker is gone).
    async fn depth(&self, now: Micros) -> Result<i64>;
}

/// One batch of the purge: terminal operations that ended before `ended_before`, at most
/// `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeBatch {
    pub ended_before: Micros,
    pub limit: usize,
    /// Recorded in the tombstones.
    pub time: Micros,
    pub retention_days: i64,
}

/// Rows one purge removed, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgedRows {
    pub operations: u64,
    pub events: u64,
    pub steps: u64,
    pub jobs: u64,
    /// Concurrency-key rows and RetryOperation request ids.
    pub keys_and_retries: u64,
}

impl PurgedRows {
    pub fn add(&mut self, other: PurgedRows) {
        self.operations += other.operations;
        self.events += other.events;
        self.steps += other.steps;
        self.jobs += other.jobs;
        self.keys_and_retries += other.keys_and_retries;
    }
}

/// What is left of a purged operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub operation_id: Uuid,
    pub owner: String,
    pub purge_time: Micros,
    pub retention_days: i64,
}

/// Retention of terminal operations.
///
/// A purge removes an operation only while it is terminal (SUCCEEDED, FAILED or
/// CANCELLED) with a finished job, and ended before the cutoff: that is checked inside
/// the statements that delete, so an operation a RetryOperation puts back to PENDING at
/// the same moment is either retried (and stays) or purged first (and the retry finds
/// nothing), never half removed. Operations that a subscription, checkout or graph names
/// stay, since those records point at the operation that made them.
#[async_trait]
pub trait RetentionStore: Send + Sync + 'static {
    /// Takes or renews the purger's lease for `holder` until `expire`; `false` while
    /// another holder's lease is current at `now`.
    async fn claim_purger(&self, holder: &str, now: Micros, expire: Micros) -> Result<bool>;

    /// Purges one batch, oldest end first, in one transaction: each operation with its
    /// events, steps, job, keys and retry ids, leaving its [`Tombstone`]. Concurrent
    /// purges never remove one operation twice.
    async fn purge_batch(&self, batch: &PurgeBatch) -> Result<PurgedRows>;

    /// The tombstone of operation `id`; `owner`: only if it belonged to that owner.
    async fn purged(&self, id: Uuid, owner: Option<&str>) -> Result<Option<Tombstone>>;
}

//! Storage of operations, steps, events and jobs: the [`OperationStore`] trait, with
//! SQLite and Postgres behind one SQL implementation. Nothing here knows gRPC.

mod graphs;
pub mod sql;

pub use graphs::{graphs_dir, SqlGraphDatabases};

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    domain::{
        operation::{
            Event, EventType, OpStatus, Operation, OperationError, OperationResult, StepStatus,
        },
        provisioning::{
            ddl::Dialect,
            model::{
                CreditPool, Graph, GraphKind, GraphStatus, Plan, SchemaRecord, Subscription,
                SubscriptionStatus,
            },
        },
        Micros,
    },
    error::Result,
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
    },
    /// The owner used this request id before: the operation it created then.
    Existing(Operation),
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
    pub result: Option<OperationResult>,
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
}

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
    /// (FAILED_PRECONDITION). With `fence`, the write happens only while that lease is
    /// current (else `LeaseLost`). A terminal status also finishes the job.
    async fn record(&self, id: Uuid, fence: Option<&Lease>, change: &Change) -> Result<Recorded>;

    /// `record` for several changes in order, in one transaction (one commit where the
    /// engine would otherwise wait for several).
    async fn record_all(
        &self,
        id: Uuid,
        fence: Option<&Lease>,
        changes: &[Change],
    ) -> Result<Vec<Recorded>>;

    /// Saves workflow state mid-step (no event: nothing visible changed).
    async fn checkpoint(&self, lease: &Lease, state: &serde_json::Value) -> Result<()>;

    /// Cancels a job nobody claimed yet (FINISHED event, CANCELLED) or flags a running
    /// operation (CANCEL_REQUESTED event). `None` when it was already finished or flagged.
    async fn cancel(
        &self,
        id: Uuid,
        owner: Option<&str>,
        reason: &str,
        time: Micros,
    ) -> Result<Option<Event>>;

    /// Claims the oldest queued job, or one whose lease expired, for `owner`.
    async fn claim(&self, owner: &str, now: Micros, lease_ms: i64) -> Result<Option<Lease>>;

    /// Extends the lease; `false` when it is no longer current.
    async fn heartbeat(&self, lease: &Lease, now: Micros, lease_ms: i64) -> Result<bool>;

    /// Gives the job back to the queue (graceful shutdown), not counting this claim as
    /// an attempt; `false` when the lease is not current.
    async fn release(&self, lease: &Lease, now: Micros) -> Result<bool>;

    /// Other replicas' wake-ups; `None` where only this process writes.
    async fn hints(&self) -> Option<BoxStream<'static, Hint>>;
}

/// A subscription as a provisioning request creates it (PENDING).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSubscription {
    pub id: Uuid,
    pub user_id: String,
    pub plan: Plan,
    pub graph_id: Uuid,
    pub checkout_id: Option<String>,
    pub repository: Option<String>,
}

/// The claim of a billing checkout: its id is unique across all callers.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCheckout {
    pub checkout_id: String,
    pub user_id: String,
    /// Digest of what the checkout asked for: a duplicate must ask for the same.
    pub fingerprint: String,
}

/// A graph row as `allocate_graph` inserts it (PROVISIONING).
#[derive(Debug, Clone, PartialEq)]
pub struct NewGraph {
    pub id: Uuid,
    pub owner: String,
    pub name: String,
    pub kind: GraphKind,
    pub repository: Option<String>,
    pub backend: String,
    pub location: String,
    pub operation_id: Uuid,
    pub time: Micros,
}

/// Where the previous page of graphs ended (newest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphCursor(pub Micros, pub Uuid);

/// The records of provisioning. `scope` is the user a read is limited to (`None`: all):
/// a user reaches its own graphs and subscriptions, and the repository graphs it has an
/// ACTIVE subscription to. `fence`d writes happen only while that lease is current (else
/// `LeaseLost`), so a worker that lost its operation cannot change what it provisions.
#[async_trait]
pub trait ProvisioningStore: Send + Sync + 'static {
    /// Inserts the operation, its PENDING subscription and (for a checkout) the checkout
    /// claim in one transaction. Idempotent on the checkout id, whoever sends it (a
    /// duplicate asking for something else is FAILED_PRECONDITION), and like
    /// `OperationStore::create` on (owner, request_id).
    async fn create_provisioning(
        &self,
        new: &NewOperation,
        subscription: &NewSubscription,
        checkout: Option<&NewCheckout>,
    ) -> Result<Created>;

    async fn subscription(&self, id: Uuid, scope: Option<&str>) -> Result<Option<Subscription>>;

    /// Moves a subscription along its state machine and records `reason`; one already at
    /// `to` is left as it is. A move the state machine refuses is FAILED_PRECONDITION.
    async fn move_subscription(
        &self,
        id: Uuid,
        to: SubscriptionStatus,
        reason: &str,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<Subscription>;

    /// Inserts the graph unless a graph with its id exists; `true` when inserted.
    async fn insert_graph(&self, graph: &NewGraph, fence: Option<&Lease>) -> Result<bool>;

    async fn graph(&self, id: Uuid, scope: Option<&str>) -> Result<Option<Graph>>;

    /// Newest first, after `after`.
    async fn list_graphs(
        &self,
        scope: Option<&str>,
        after: Option<&GraphCursor>,
        limit: usize,
    ) -> Result<Vec<Graph>>;

    /// Moves a graph along its state machine; one already at `to` is left as it is.
    async fn move_graph(
        &self,
        id: Uuid,
        to: GraphStatus,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<Graph>;

    /// Stores (or replaces) the graph's schema record.
    async fn put_schema(
        &self,
        record: &SchemaRecord,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<()>;

    /// Creates the subscription's pool unless it has one; returns the pool it has.
    async fn create_pool(&self, pool: &CreditPool, fence: Option<&Lease>) -> Result<CreditPool>;

    /// The subscription and its graph ACTIVE together (the graph only if it was
    /// PROVISIONING: a shared repository graph is active already).
    async fn activate(
        &self,
        subscription_id: Uuid,
        graph_id: Uuid,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<()>;

    /// Compensations: each removes one thing and says whether there was anything.
    async fn delete_pool(&self, subscription_id: Uuid) -> Result<bool>;
    async fn delete_schema(&self, graph_id: Uuid) -> Result<bool>;
    /// Only the graph `operation_id` created (so never somebody else's repository graph).
    async fn delete_graph(&self, graph_id: Uuid, operation_id: Uuid) -> Result<bool>;

    /// Deprovisioning: the graph's schema record, credit pools and row go, and its
    /// subscriptions end CANCELLED with `reason`, in one transaction. Returns how many
    /// subscriptions were cancelled.
    async fn remove_graph(
        &self,
        graph_id: Uuid,
        reason: &str,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<u64>;
}

/// The graphs' own databases: one SQLite file per graph, or one Postgres schema per graph.
/// Every statement is audited (`ddl::audit`) before it runs.
#[async_trait]
pub trait GraphDatabases: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// The file or schema the graph's database is.
    fn location(&self, graph_id: Uuid) -> String;
    fn dialect(&self, graph_id: Uuid) -> Dialect;
    /// Creates the empty database; one that exists is kept.
    async fn create(&self, graph_id: Uuid) -> Result<()>;
    /// Runs `statements` in one transaction in the graph's database, which must exist.
    async fn execute(&self, graph_id: Uuid, statements: &[String]) -> Result<()>;
    /// Removes the database and everything in it; `false` when there was none.
    async fn remove(&self, graph_id: Uuid) -> Result<bool>;
    async fn exists(&self, graph_id: Uuid) -> Result<bool>;
    /// The tables in the graph's database (empty when it does not exist).
    async fn tables(&self, graph_id: Uuid) -> Result<Vec<String>>;
}

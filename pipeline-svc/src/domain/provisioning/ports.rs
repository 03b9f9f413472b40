//! What provisioning needs from storage: the [`ProvisioningStore`] (subscriptions,
//! checkouts, graphs, schema records, credit pools, in the pipeline's database beside the
//! operations) and the [`GraphDatabases`] (each graph's own database), with the types
//! they exchange. `store::sql` and `store::graphs` implement them; the contract suites in
//! `tests/it/contract` hold every implementation to these rules.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    ddl::Dialect,
    model::{
        CreditPool, Graph, GraphKind, GraphStatus, Plan, SchemaRecord, Subscription,
        SubscriptionStatus,
    },
};
use crate::{
    domain::{
        engine::ports::{Created, Lease, NewOperation},
        Micros,
    },
    error::Result,
};

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
    /// duplicate asking for something else is `Precondition`), and like
    /// `OperationStore::create` on (owner, request_id).
    async fn create_provisioning(
        &self,
        new: &NewOperation,
        subscription: &NewSubscription,
        checkout: Option<&NewCheckout>,
    ) -> Result<Created>;

    async fn subscription(&self, id: Uuid, scope: Option<&str>) -> Result<Option<Subscription>>;

    /// Moves a subscription along its state machine and records `reason`; one already at
    /// `to` is left as it is. A move the state machine refuses is `Precondition`.
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

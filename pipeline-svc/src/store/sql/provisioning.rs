//! [`ProvisioningStore`] on the SQL store: subscriptions, checkouts, graphs, schema
//! records and credit pools, in the pipeline's database next to the operations, so that an
//! operation and the subscription it provisions are created in one transaction.
//!
//! Every read a user can reach takes its `scope` into the WHERE clause; every status write
//! is guarded by the domain's state machine in the WHERE clause (a late or repeated write
//! cannot move a row backwards), and step writes are fenced by the worker's lease.

use async_trait::async_trait;
use sqlx::{any::AnyRow, AnyConnection, Row};
use uuid::Uuid;

use super::{db_error, rows::uuid_col, sql_list, SqlStore};
use crate::{
    domain::{
        engine::ports::{Created, Lease, NewOperation, OperationStore},
        provisioning::{
            model::{
                CreditPool, Graph, GraphKind, GraphStatus, Plan, SchemaRecord, Subscription,
                SubscriptionStatus,
            },
            ports::{GraphCursor, NewCheckout, NewGraph, NewSubscription, ProvisioningStore},
        },
        Micros,
    },
    error::{Error, Result},
};

const GRAPH_COLS: &str = "g.graph_id, g.owner, g.name, g.kind, g.repository, g.status, \
     g.backend, g.location, g.operation_id, g.create_time, g.update_time, \
     CAST(CASE WHEN g.status = 'ACTIVE' AND o.status = 'SUCCEEDED' THEN 1 ELSE 0 END AS BIGINT) AS ready, \
     s.schema_type, s.name AS schema_name, s.version AS schema_version, s.ddl, s.spec_json, \
     s.tables AS schema_tables";
const GRAPH_FROM: &str = "graphs g LEFT JOIN operations o ON o.operation_id = g.operation_id \
     LEFT JOIN graph_schemas s ON s.graph_id = g.graph_id";
/// `$1`: the scope ('' for all). A user reaches its own graphs and the (repository)
/// graphs it holds an ACTIVE subscription to.
const GRAPH_SCOPE: &str = "($1 = '' OR g.owner = $1 OR EXISTS (SELECT 1 FROM subscriptions v \
     WHERE v.graph_id = g.graph_id AND v.user_id = $1 AND v.status = 'ACTIVE'))";

const SUB_COLS: &str = "s.subscription_id, s.user_id, s.plan, s.status, s.reason, s.graph_id, \
     s.checkout_id, s.repository, s.operation_id, s.create_time, s.update_time, \
     p.credit_pool_id, p.graph_id AS pool_graph_id, p.user_id AS pool_user_id, p.plan AS pool_plan, \
     p.allocated_credits, p.remaining_credits, p.create_time AS pool_create_time";
const SUB_FROM: &str =
    "subscriptions s LEFT JOIN credit_pools p ON p.subscription_id = s.subscription_id";

fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    super::corrupt(what, detail)
}

fn json_list(items: &[String]) -> String {
    super::to_json(&items)
}

fn list_col(row: &AnyRow, col: &str) -> Result<Vec<String>> {
    let text: String = row.try_get(col).map_err(db_error)?;
    serde_json::from_str(&text).map_err(|e| corrupt(col, e))
}

fn plan_col(row: &AnyRow, col: &str) -> Result<Plan> {
    let s: String = row.try_get(col).map_err(db_error)?;
    Plan::parse(&s).ok_or_else(|| corrupt(col, &s))
}

fn graph_from_row(row: &AnyRow) -> Result<Graph> {
    let status: String = row.try_get("status").map_err(db_error)?;
    let kind: String = row.try_get("kind").map_err(db_error)?;
    let id = uuid_col(row, "graph_id")?;
    let schema_type: Option<String> = row.try_get("schema_type").map_err(db_error)?;
    let schema = match schema_type {
        None => None,
        Some(schema_type) => Some(SchemaRecord {
            graph_id: id,
            schema_type,
            name: row.try_get("schema_name").map_err(db_error)?,
            version: row.try_get("schema_version").map_err(db_error)?,
            ddl: list_col(row, "ddl")?,
            spec_json: row.try_get("spec_json").map_err(db_error)?,
            tables: list_col(row, "schema_tables")?,
        }),
    };
    let ready: i64 = row.try_get("ready").map_err(db_error)?;
    Ok(Graph {
        id,
        owner: row.try_get("owner").map_err(db_error)?,
        name: row.try_get("name").map_err(db_error)?,
        status: GraphStatus::parse(&status).ok_or_else(|| corrupt("graph status", &status))?,
        kind: GraphKind::parse(&kind).ok_or_else(|| corrupt("graph kind", &kind))?,
        repository: row.try_get("repository").map_err(db_error)?,
        backend: row.try_get("backend").map_err(db_error)?,
        location: row.try_get("location").map_err(db_error)?,
        operation_id: uuid_col(row, "operation_id")?,
        create_time: row.try_get("create_time").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        ready: ready != 0,
        schema,
    })
}

fn subscription_from_row(row: &AnyRow) -> Result<Subscription> {
    let status: String = row.try_get("status").map_err(db_error)?;
    let id = uuid_col(row, "subscription_id")?;
    let pool_id: Option<String> = row.try_get("credit_pool_id").map_err(db_error)?;
    let pool = match pool_id {
        None => None,
        Some(pool_id) => Some(CreditPool {
            id: Uuid::parse_str(&pool_id).map_err(|e| corrupt("credit_pool_id", e))?,
            subscription_id: id,
            graph_id: uuid_col(row, "pool_graph_id")?,
            user_id: row.try_get("pool_user_id").map_err(db_error)?,
            plan: plan_col(row, "pool_plan")?,
            allocated: row.try_get("allocated_credits").map_err(db_error)?,
            remaining: row.try_get("remaining_credits").map_err(db_error)?,
            create_time: row.try_get("pool_create_time").map_err(db_error)?,
        }),
    };
    Ok(Subscription {
        id,
        user_id: row.try_get("user_id").map_err(db_error)?,
        plan: plan_col(row, "plan")?,
        status: SubscriptionStatus::parse(&status)
            .ok_or_else(|| corrupt("subscription status", &status))?,
        reason: row.try_get("reason").map_err(db_error)?,
        graph_id: uuid_col(row, "graph_id")?,
        checkout_id: row.try_get("checkout_id").map_err(db_error)?,
        repository: row.try_get("repository").map_err(db_error)?,
        operation_id: uuid_col(row, "operation_id")?,
        create_time: row.try_get("create_time").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        pool,
    })
}

impl SqlStore {
    async fn fence(&self, conn: &mut AnyConnection, fence: Option<&Lease>) -> Result<()> {
        match fence {
            Some(lease) => self.hold_lease(conn, lease).await,
            None => Ok(()),
        }
    }

    /// Moves the subscription inside the caller's transaction (see `move_subscription`).
    async fn move_subscription_in(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        to: SubscriptionStatus,
        reason: &str,
        time: Micros,
    ) -> Result<()> {
        let from: Vec<&str> = SubscriptionStatus::ALL
            .iter()
            .filter(|s| s.can_move_to(to))
            .map(|s| s.as_str())
            .collect();
        if from.is_empty() {
            // Nothing ever moves there; only a row already there is fine.
            return refused_move(conn, "subscription", id, to.as_str()).await;
        }
        let moved = sqlx::query(&format!(
            "UPDATE subscriptions SET status = $2, reason = $3, update_time = $4 \
             WHERE subscription_id = $1 AND status IN ({})",
            sql_list(from)
        ))
        .bind(id.to_string())
        .bind(to.as_str())
        .bind(reason)
        .bind(time)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
        if moved == 1 {
            return Ok(());
        }
        refused_move(conn, "subscription", id, to.as_str()).await
    }

    async fn move_graph_in(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        to: GraphStatus,
        time: Micros,
    ) -> Result<()> {
        let from: Vec<&str> = GraphStatus::ALL
            .iter()
            .filter(|s| s.can_move_to(to))
            .map(|s| s.as_str())
            .collect();
        if from.is_empty() {
            return refused_move(conn, "graph", id, to.as_str()).await;
        }
        let moved = sqlx::query(&format!(
            "UPDATE graphs SET status = $2, update_time = $3 WHERE graph_id = $1 AND status IN ({})",
            sql_list(from)
        ))
        .bind(id.to_string())
        .bind(to.as_str())
        .bind(time)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
        if moved == 1 {
            return Ok(());
        }
        refused_move(conn, "graph", id, to.as_str()).await
    }

    async fn checkout_operation(&self, checkout: &NewCheckout) -> Result<Uuid> {
        let row = sqlx::query(
            "SELECT user_id, fingerprint, operation_id FROM checkouts WHERE checkout_id = $1",
        )
        .bind(&checkout.checkout_id)
        .fetch_one(&self.read)
        .await
        .map_err(db_error)?;
        let user: String = row.try_get("user_id").map_err(db_error)?;
        let fingerprint: String = row.try_get("fingerprint").map_err(db_error)?;
        if user != checkout.user_id || fingerprint != checkout.fingerprint {
            return Err(Error::Precondition(format!(
                "checkout {:?} was already completed with another user, plan or graph",
                checkout.checkout_id
            )));
        }
        uuid_col(&row, "operation_id")
    }
}

#[async_trait]
impl ProvisioningStore for SqlStore {
    async fn create_provisioning(
        &self,
        new: &NewOperation,
        sub: &NewSubscription,
        checkout: Option<&NewCheckout>,
    ) -> Result<Created> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        let Some(created) = self.insert_operation(&mut tx, new).await? else {
            tx.rollback().await.map_err(db_error)?;
            return self
                .existing(&new.op.owner, new.op.request_id.as_deref())
                .await
                .map(Created::Existing);
        };
        let time = new.op.create_time;
        sqlx::query(
            "INSERT INTO subscriptions (subscription_id, user_id, plan, status, reason, graph_id, \
             checkout_id, repository, operation_id, create_time, update_time) \
             VALUES ($1, $2, $3, $4, '', $5, $6, $7, $8, $9, $9)",
        )
        .bind(sub.id.to_string())
        .bind(&sub.user_id)
        .bind(sub.plan.as_str())
        .bind(SubscriptionStatus::Pending.as_str())
        .bind(sub.graph_id.to_string())
        .bind(sub.checkout_id.as_deref())
        .bind(sub.repository.as_deref())
        .bind(new.op.id.to_string())
        .bind(time)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if let Some(c) = checkout {
            // Concurrent duplicates wait here for the first transaction, then insert nothing.
            let claimed = sqlx::query(
                "INSERT INTO checkouts (checkout_id, user_id, fingerprint, subscription_id, \
                 operation_id, create_time) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (checkout_id) DO NOTHING",
            )
            .bind(&c.checkout_id)
            .bind(&c.user_id)
            .bind(&c.fingerprint)
            .bind(sub.id.to_string())
            .bind(new.op.id.to_string())
            .bind(time)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
            if claimed == 0 {
                tx.rollback().await.map_err(db_error)?;
                let id = self.checkout_operation(c).await?;
                return OperationStore::get(self, id, None)
                    .await?
                    .map(Created::Existing)
                    .ok_or_else(|| {
                        Error::internal(format!("checkout operation {id} does not exist"))
                    });
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok(created)
    }

    async fn subscription(&self, id: Uuid, scope: Option<&str>) -> Result<Option<Subscription>> {
        let row = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM {SUB_FROM} WHERE s.subscription_id = $1 \
             AND ($2 = '' OR s.user_id = $2)"
        ))
        .bind(id.to_string())
        .bind(scope.unwrap_or(""))
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn move_subscription(
        &self,
        id: Uuid,
        to: SubscriptionStatus,
        reason: &str,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<Subscription> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.fence(&mut tx, fence).await?;
        self.move_subscription_in(&mut tx, id, to, reason, time)
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM {SUB_FROM} WHERE s.subscription_id = $1"
        ))
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let sub = subscription_from_row(&row)?;
        tx.commit().await.map_err(db_error)?;
        Ok(sub)
    }

    async fn insert_graph(&self, g: &NewGraph, fence: Option<&Lease>) -> Result<bool> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.fence(&mut tx, fence).await?;
        let inserted = sqlx::query(
            "INSERT INTO graphs (graph_id, owner, name, kind, repository, status, backend, \
             location, operation_id, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (graph_id) DO NOTHING",
        )
        .bind(g.id.to_string())
        .bind(&g.owner)
        .bind(&g.name)
        .bind(g.kind.as_str())
        .bind(g.repository.as_deref())
        .bind(GraphStatus::Provisioning.as_str())
        .bind(&g.backend)
        .bind(&g.location)
        .bind(g.operation_id.to_string())
        .bind(g.time)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        tx.commit().await.map_err(db_error)?;
        Ok(inserted == 1)
    }

    async fn graph(&self, id: Uuid, scope: Option<&str>) -> Result<Option<Graph>> {
        let row = sqlx::query(&format!(
            "SELECT {GRAPH_COLS} FROM {GRAPH_FROM} WHERE {GRAPH_SCOPE} AND g.graph_id = $2"
        ))
        .bind(scope.unwrap_or(""))
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(graph_from_row).transpose()
    }

    async fn list_graphs(
        &self,
        scope: Option<&str>,
        after: Option<&GraphCursor>,
        limit: usize,
    ) -> Result<Vec<Graph>> {
        let rows = sqlx::query(&format!(
            "SELECT {GRAPH_COLS} FROM {GRAPH_FROM} WHERE {GRAPH_SCOPE} \
             AND ($2 = 0 OR (g.create_time, g.graph_id) < ($3, $4)) \
             ORDER BY g.create_time DESC, g.graph_id DESC LIMIT $5"
        ))
        .bind(scope.unwrap_or(""))
        .bind(i64::from(after.is_some()))
        .bind(after.map_or(0, |c| c.0))
        .bind(after.map(|c| c.1.to_string()).unwrap_or_default())
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(graph_from_row).collect()
    }

    async fn move_graph(
        &self,
        id: Uuid,
        to: GraphStatus,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<Graph> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.fence(&mut tx, fence).await?;
        self.move_graph_in(&mut tx, id, to, time).await?;
        tx.commit().await.map_err(db_error)?;
        ProvisioningStore::graph(self, id, None)
            .await?
            .ok_or_else(|| Error::not_found("graph", id))
    }

    async fn put_schema(
        &self,
        r: &SchemaRecord,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<()> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.fence(&mut tx, fence).await?;
        sqlx::query(
            "INSERT INTO graph_schemas (graph_id, schema_type, name, version, ddl, spec_json, \
             tables, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (graph_id) DO UPDATE SET schema_type = excluded.schema_type, \
             name = excluded.name, version = excluded.version, ddl = excluded.ddl, \
             spec_json = excluded.spec_json, tables = excluded.tables",
        )
        .bind(r.graph_id.to_string())
        .bind(&r.schema_type)
        .bind(&r.name)
        .bind(&r.version)
        .bind(json_list(&r.ddl))
        .bind(&r.spec_json)
        .bind(json_list(&r.tables))
        .bind(time)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    async fn create_pool(&self, pool: &CreditPool, fence: Option<&Lease>) -> Result<CreditPool> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.fence(&mut tx, fence).await?;
        sqlx::query(
            "INSERT INTO credit_pools (credit_pool_id, subscription_id, graph_id, user_id, plan, \
             allocated_credits, remaining_credits, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (subscription_id) DO NOTHING",
        )
        .bind(pool.id.to_string())
        .bind(pool.subscription_id.to_string())
        .bind(pool.graph_id.to_string())
        .bind(&pool.user_id)
        .bind(pool.plan.as_str())
        .bind(pool.allocated)
        .bind(pool.remaining)
        .bind(pool.create_time)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let row = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM {SUB_FROM} WHERE s.subscription_id = $1"
        ))
        .bind(pool.subscription_id.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        subscription_from_row(&row)?
            .pool
            .ok_or_else(|| Error::internal("the credit pool vanished"))
    }

    async fn activate(
        &self,
        subscription_id: Uuid,
        graph_id: Uuid,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<()> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.fence(&mut tx, fence).await?;
        self.move_graph_in(&mut tx, graph_id, GraphStatus::Active, time)
            .await?;
        self.move_subscription_in(
            &mut tx,
            subscription_id,
            SubscriptionStatus::Active,
            "",
            time,
        )
        .await?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    async fn delete_pool(&self, subscription_id: Uuid) -> Result<bool> {
        let n = sqlx::query("DELETE FROM credit_pools WHERE subscription_id = $1")
            .bind(subscription_id.to_string())
            .execute(&self.write)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn delete_schema(&self, graph_id: Uuid) -> Result<bool> {
        let n = sqlx::query("DELETE FROM graph_schemas WHERE graph_id = $1")
            .bind(graph_id.to_string())
            .execute(&self.write)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn delete_graph(&self, graph_id: Uuid, operation_id: Uuid) -> Result<bool> {
        let n = sqlx::query("DELETE FROM graphs WHERE graph_id = $1 AND operation_id = $2")
            .bind(graph_id.to_string())
            .bind(operation_id.to_string())
            .execute(&self.write)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn remove_graph(
        &self,
        graph_id: Uuid,
        reason: &str,
        time: Micros,
        fence: Option<&Lease>,
    ) -> Result<u64> {
        let gid = graph_id.to_string();
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.fence(&mut tx, fence).await?;
        for statement in [
            "DELETE FROM graph_schemas WHERE graph_id = $1",
            "DELETE FROM credit_pools WHERE graph_id = $1",
        ] {
            sqlx::query(statement)
                .bind(&gid)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        let from = sql_list(
            SubscriptionStatus::ALL
                .iter()
                .filter(|s| s.can_move_to(SubscriptionStatus::Cancelled))
                .map(|s| s.as_str()),
        );
        let cancelled = sqlx::query(&format!(
            "UPDATE subscriptions SET status = 'CANCELLED', reason = $2, update_time = $3 \
             WHERE graph_id = $1 AND status IN ({from})"
        ))
        .bind(&gid)
        .bind(reason)
        .bind(time)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        sqlx::query("DELETE FROM graphs WHERE graph_id = $1")
            .bind(&gid)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(cancelled)
    }
}

/// After a guarded status UPDATE changed no row: already there is success (a retried
/// step), a missing row is NOT_FOUND, any other status is a refused transition.
async fn refused_move(
    conn: &mut AnyConnection,
    kind: &'static str,
    id: Uuid,
    to: &str,
) -> Result<()> {
    // `kind` names the table (plural) and its key column; both are fixed strings.
    let sql = format!("SELECT status FROM {kind}s WHERE {kind}_id = $1");
    let status: Option<String> = sqlx::query_scalar(&sql)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    match status {
        None => Err(Error::not_found(kind, id)),
        Some(s) if s == to => Ok(()),
        Some(s) => Err(Error::Precondition(format!(
            "{kind} {id} is {s}; it cannot become {to}"
        ))),
    }
}

/// The PENDING subscriptions of an operation cancelled before any worker took it end
/// CANCELLED with it (in the cancelling transaction): no step ran, so no compensation
/// will end them.
pub(super) async fn cancel_pending_subscriptions(
    conn: &mut AnyConnection,
    operation_id: Uuid,
    message: &str,
    time: Micros,
) -> Result<()> {
    sqlx::query(
        "UPDATE subscriptions SET status = 'CANCELLED', reason = $2, update_time = $3 \
         WHERE operation_id = $1 AND status = 'PENDING'",
    )
    .bind(operation_id.to_string())
    .bind(format!("provisioning {message}"))
    .bind(time)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

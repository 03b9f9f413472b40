//! [`RetentionStore`] on the SQL store (migration 0005): the purger's lease, batches of
//! purged operations with their tombstones, and reading a tombstone back.
//!
//! A batch is one transaction. It first picks its operations (on Postgres row-locked,
//! skipping rows another transaction holds, such as one a RetryOperation is moving), then
//! every statement that writes repeats the condition on the operation row itself: still
//! terminal, ended before the cutoff, its job finished. So a retry that commits first
//! keeps its operation whole, and one that comes after finds it gone.

use async_trait::async_trait;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{db_error, sql_list, Backend, SqlStore};
use crate::{
    domain::{
        engine::{
            operation::OpStatus,
            ports::{PurgeBatch, PurgedRows, RetentionStore, Tombstone},
        },
        Micros,
    },
    error::Result,
};

const PURGER_LEASE: &str = "operation_purger";

/// The tables that hold rows of an operation, children of `operations`: purged first.
const CHILDREN: [&str; 5] = [
    "operation_events",
    "operation_steps",
    "jobs",
    "operation_keys",
    "operation_retries",
];

/// Operation `o` may be purged: `$1` is the cutoff. Terminal and ended before it, its job
/// done, and no subscription, checkout or graph naming it.
fn expired() -> String {
    let terminal = sql_list(
        OpStatus::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str()),
    );
    format!(
        "o.status IN ({terminal}) AND o.update_time < $1 \
         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.operation_id = o.operation_id AND j.state <> 'done') \
         AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.operation_id = o.operation_id) \
         AND NOT EXISTS (SELECT 1 FROM checkouts c WHERE c.operation_id = o.operation_id) \
         AND NOT EXISTS (SELECT 1 FROM graphs g WHERE g.operation_id = o.operation_id)"
    )
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `sql`, whose `$1` is the cutoff, then the `extra` values, then the batch's ids,
/// and returns the rows it changed.
async fn run(
    conn: &mut AnyConnection,
    sql: &str,
    cutoff: Micros,
    extra: &[i64],
    ids: &[String],
) -> Result<u64> {
    let mut q = sqlx::query(sql).bind(cutoff);
    for v in extra {
        q = q.bind(*v);
    }
    for id in ids {
        q = q.bind(id);
    }
    Ok(q.execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected())
}

impl SqlStore {
    async fn purge_in(&self, conn: &mut AnyConnection, batch: &PurgeBatch) -> Result<PurgedRows> {
        let lock = match self.backend {
            Backend::Sqlite => {
                // Takes the file's write lock before reading (waiting for another process's
                // writer if need be), so nothing writes between the choice and the deletes.
                sqlx::query("UPDATE replica_leases SET holder = holder WHERE 1 = 0")
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                ""
            }
            Backend::Postgres => " FOR UPDATE OF o SKIP LOCKED",
        };
        let expired = expired();
        let ids: Vec<String> = sqlx::query(&format!(
            "SELECT o.operation_id FROM operations o WHERE {expired} \
             ORDER BY o.update_time, o.operation_id LIMIT $2{lock}"
        ))
        .bind(batch.ended_before)
        .bind(batch.limit as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| r.try_get("operation_id").map_err(db_error))
        .collect::<Result<_>>()?;
        if ids.is_empty() {
            return Ok(PurgedRows::default());
        }
        // Every write names the batch and repeats the condition on the operation row.
        let still = |first: usize| {
            format!(
                "SELECT o.operation_id FROM operations o WHERE o.operation_id IN ({}) AND {expired}",
                placeholders(first, ids.len())
            )
        };
        run(
            conn,
            &format!(
                "INSERT INTO operation_tombstones (operation_id, owner, purge_time, retention_days) \
                 SELECT o.operation_id, o.owner, $2, $3 FROM operations o \
                 WHERE o.operation_id IN ({})",
                still(4)
            ),
            batch.ended_before,
            &[batch.time, batch.retention_days],
            &ids,
        )
        .await?;
        let mut children = [0; CHILDREN.len()];
        for (n, table) in children.iter_mut().zip(CHILDREN) {
            let sql = format!("DELETE FROM {table} WHERE operation_id IN ({})", still(2));
            *n = run(conn, &sql, batch.ended_before, &[], &ids).await?;
        }
        let [events, steps, jobs, keys, retries] = children;
        let sql = format!(
            "DELETE FROM operations WHERE operation_id IN ({})",
            still(2)
        );
        Ok(PurgedRows {
            operations: run(conn, &sql, batch.ended_before, &[], &ids).await?,
            events,
            steps,
            jobs,
            keys_and_retries: keys + retries,
        })
    }
}

#[async_trait]
impl RetentionStore for SqlStore {
    async fn claim_purger(&self, holder: &str, now: Micros, expire: Micros) -> Result<bool> {
        let n = sqlx::query(&capstan_server::singleton::claim_statement(
            "replica_leases",
        ))
        .bind(PURGER_LEASE)
        .bind(holder)
        .bind(expire)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(db_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn purge_batch(&self, batch: &PurgeBatch) -> Result<PurgedRows> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        let rows = self.purge_in(&mut tx, batch).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(rows)
    }

    async fn purged(&self, id: Uuid, owner: Option<&str>) -> Result<Option<Tombstone>> {
        let row = sqlx::query(
            "SELECT owner, purge_time, retention_days FROM operation_tombstones \
             WHERE operation_id = $1 AND ($2 = '' OR owner = $2)",
        )
        .bind(id.to_string())
        .bind(owner.unwrap_or(""))
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.map(|r| {
            Ok(Tombstone {
                operation_id: id,
                owner: r.try_get("owner").map_err(db_error)?,
                purge_time: r.try_get("purge_time").map_err(db_error)?,
                retention_days: r.try_get("retention_days").map_err(db_error)?,
            })
        })
        .transpose()
    }
}

//! [`JobQueue`] on the SQL store: claims take the oldest claimable job (on Postgres with
//! `SKIP LOCKED`, so concurrent claimers never wait on each other or take the same job),
//! and every claim raises the lease token that fences the previous holder's writes. A
//! claim takes only a job that may be admitted (`admission`); jobs known to wait behind a
//! concurrency key are not even looked at (`blocked`, kept by `admission`).

use async_trait::async_trait;
use sqlx::Row;

use super::{admission, db_error, rows::uuid_col, SqlStore, JOBS_CHANNEL};
use crate::{
    domain::{
        engine::ports::{Admission, JobQueue, Lease},
        Micros,
    },
    error::Result,
};

#[async_trait]
impl JobQueue for SqlStore {
    async fn claim(&self, owner: &str, now: Micros, lease_ms: i64) -> Result<Option<Lease>> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        // Expired leases first (crashed work resumes before new work starts), then the
        // oldest queued job: two subqueries, each walking its own index in order and
        // stopping at the first admissible job, the second asked only when the first finds
        // none. One condition with both as an OR made every claim read and sort every
        // pending job.
        let oldest_admissible = |candidates: &str, order: &str| {
            format!(
                "(SELECT j.job_id FROM jobs j JOIN operations o ON o.operation_id = j.operation_id \
                   WHERE {candidates} AND {} ORDER BY {order} LIMIT 1{})",
                admission::admissible("$3"),
                self.skip_locked()
            )
        };
        // A job without keys or limit is admitted by the claim itself; any other is
        // admitted below, under the locks that make its check exact.
        let sql =
            format!(
            "UPDATE jobs SET state = 'leased', lease_owner = $1, lease_token = lease_token + 1, \
               lease_expires = $2, attempts = attempts + 1, update_time = $3, \
               admitted = CASE WHEN owner_limit = 0 AND NOT EXISTS (SELECT 1 FROM operation_keys k \
                 WHERE k.operation_id = jobs.operation_id) THEN 1 ELSE admitted END \
             WHERE job_id = COALESCE({}, {}) \
             RETURNING operation_id, lease_token, attempts, admitted",
            oldest_admissible("j.state = 'leased' AND j.lease_expires < $3", "j.lease_expires"),
            oldest_admissible(
                "j.state = 'queued' AND j.blocked = 0 AND j.available_time <= $3",
                "j.available_time"
            ),
        );
        let row = sqlx::query(&sql)
            .bind(owner)
            .bind(now + lease_ms * 1000)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some(r) = row else {
            tx.rollback().await.map_err(db_error)?;
            return Ok(None);
        };
        let lease = Lease {
            operation_id: uuid_col(&r, "operation_id")?,
            token: r.try_get("lease_token").map_err(db_error)?,
            owner: owner.to_string(),
            attempts: r.try_get("attempts").map_err(db_error)?,
        };
        let admitted: i64 = r.try_get("admitted").map_err(db_error)?;
        if admitted == 0 {
            if let Admission::Waiting(why) = self.admit_in(&mut tx, lease.operation_id, now).await?
            {
                // Another replica admitted a rival between the filter and the locks.
                tracing::debug!(operation = %lease.operation_id, %why, "claim lost an admission race");
                tx.rollback().await.map_err(db_error)?;
                return Ok(None);
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Some(lease))
    }

    async fn admit(&self, lease: &Lease, now: Micros) -> Result<Admission> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.hold_lease(&mut tx, lease).await?;
        let admission = self.admit_in(&mut tx, lease.operation_id, now).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(admission)
    }

    async fn heartbeat(&self, lease: &Lease, now: Micros, lease_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE jobs SET lease_expires = $3, update_time = $4 \
             WHERE operation_id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(lease.operation_id.to_string())
        .bind(lease.token)
        .bind(now + lease_ms * 1000)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(db_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn release(&self, lease: &Lease, now: Micros) -> Result<bool> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        let sid = lease.operation_id.to_string();
        let n = sqlx::query(
            "UPDATE jobs SET state = 'queued', lease_owner = '', lease_expires = 0, \
               attempts = attempts - 1, admitted = 0, available_time = $3, update_time = $3 \
             WHERE operation_id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(&sid)
        .bind(lease.token)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if n == 1 {
            self.notify(&mut tx, JOBS_CHANNEL, &sid).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(n == 1)
    }

    async fn depth(&self, now: Micros) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs \
             WHERE state = 'queued' OR (state = 'leased' AND lease_expires < $1)",
        )
        .bind(now)
        .fetch_one(&self.read)
        .await
        .map_err(db_error)
    }
}

//! [`JobQueue`] on the SQL store: claims take the oldest claimable job (on Postgres with
//! `SKIP LOCKED`, so concurrent claimers never wait on each other or take the same job),
//! and every claim raises the lease token that fences the previous holder's writes.

use async_trait::async_trait;
use sqlx::Row;

use super::{db_error, rows::uuid_col, SqlStore, JOBS_CHANNEL};
use crate::{
    domain::{
        engine::ports::{JobQueue, Lease},
        Micros,
    },
    error::Result,
};

#[async_trait]
impl JobQueue for SqlStore {
    async fn claim(&self, owner: &str, now: Micros, lease_ms: i64) -> Result<Option<Lease>> {
        let row = sqlx::query(&format!(
            "UPDATE jobs SET state = 'leased', lease_owner = $1, lease_token = lease_token + 1, \
               lease_expires = $2, attempts = attempts + 1, update_time = $3 \
             WHERE job_id = (SELECT job_id FROM jobs \
               WHERE (state = 'queued' AND available_time <= $3) OR (state = 'leased' AND lease_expires < $3) \
               ORDER BY available_time LIMIT 1{}) \
             RETURNING operation_id, lease_token, attempts",
            self.skip_locked()
        ))
        .bind(owner)
        .bind(now + lease_ms * 1000)
        .bind(now)
        .fetch_optional(&self.write)
        .await
        .map_err(db_error)?;
        row.map(|r| {
            Ok(Lease {
                operation_id: uuid_col(&r, "operation_id")?,
                token: r.try_get("lease_token").map_err(db_error)?,
                owner: owner.to_string(),
                attempts: r.try_get("attempts").map_err(db_error)?,
            })
        })
        .transpose()
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
               attempts = attempts - 1, available_time = $3, update_time = $3 \
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

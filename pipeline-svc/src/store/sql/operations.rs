//! [`OperationStore`] on the SQL store: creating operations with their steps, first event
//! and job; reading them; recording changes; cancelling; and the notification stream.

use std::time::Duration;

use async_trait::async_trait;
use capstan_server::fanout::{self, Notice};
use futures::{stream::BoxStream, StreamExt};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{
    db_error,
    record::insert_event,
    rows::{event_from_row, status_col, EVENT_COLS, OP_COLS, OP_FROM},
    to_json, Backend, SqlStore, JOBS_CHANNEL, OPS_CHANNEL,
};
use crate::{
    domain::{
        engine::{
            operation::{Event, EventType, OpStatus, Operation, OperationError},
            ports::{
                retry_refused, Change, Created, Hint, JobStart, Lease, NewOperation, OpCursor,
                OpFilter, OperationStore, Recorded, Retry,
            },
        },
        Micros,
    },
    error::{Error, Result},
};

impl SqlStore {
    /// Inserts the operation, its steps, its CREATED event and its job inside the caller's
    /// transaction; `None` when the owner used the request id before (nothing inserted).
    pub(super) async fn insert_operation(
        &self,
        conn: &mut AnyConnection,
        new: &NewOperation,
    ) -> Result<Option<Created>> {
        let op = &new.op;
        let sid = op.id.to_string();
        let inserted = sqlx::query(
            "INSERT INTO operations (operation_id, kind, status, progress_percent, message, owner, \
             execution_mode, request_id, params, state, result, cancel_requested, last_sequence, \
             create_time, update_time, deadline, timeout_micros) \
             VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, $9, $10, 0, 1, $11, $11, $12, $13) \
             ON CONFLICT (owner, request_id) DO NOTHING",
        )
        .bind(&sid)
        .bind(&op.kind)
        .bind(OpStatus::Pending.as_str())
        .bind(&op.message)
        .bind(&op.owner)
        .bind(op.execution_mode.as_str())
        .bind(op.request_id.as_deref())
        .bind(to_json(&op.params))
        .bind(to_json(&op.state))
        .bind(op.result.as_ref().map(to_json))
        .bind(op.create_time)
        .bind(op.deadline)
        .bind(op.timeout)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        if !op.steps.is_empty() {
            // One statement for every step: creation is on the path to the first event.
            let rows: Vec<String> = (0..op.steps.len())
                .map(|i| {
                    format!(
                        "($1, ${}, ${}, ${}, 'PENDING', '', 0)",
                        3 * i + 2,
                        3 * i + 3,
                        3 * i + 4
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO operation_steps (operation_id, step_index, name, phase, status, detail, attempt) \
                 VALUES {}",
                rows.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(&sid);
            for s in &op.steps {
                q = q.bind(s.index).bind(&s.name).bind(&s.phase);
            }
            q.execute(&mut *conn).await.map_err(db_error)?;
        }
        let event = Event {
            operation_id: op.id,
            sequence: 1,
            time: op.create_time,
            kind: EventType::Created,
            step: String::new(),
            phase: String::new(),
            status: OpStatus::Pending,
            step_status: None,
            percent: 0,
            message: op.message.clone(),
        };
        insert_event(conn, &event).await?;
        let (state, owner, token, expires, attempts) = match &new.job {
            JobStart::Queued => ("queued", "", 0, 0, 0),
            JobStart::Leased { owner, expires } => ("leased", owner.as_str(), 1, *expires, 1),
        };
        let leased = matches!(new.job, JobStart::Leased { .. });
        // Without keys or a limit a DIRECT operation is admitted as it is created.
        let unrestricted = new.keys.is_empty() && new.owner_limit == 0;
        sqlx::query(
            "INSERT INTO jobs (job_id, idempotency_key, operation_id, state, lease_owner, lease_token, \
             lease_expires, attempts, available_time, update_time, admitted, owner_limit) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(format!("operation:{sid}"))
        .bind(&sid)
        .bind(state)
        .bind(owner)
        .bind(token)
        .bind(expires)
        .bind(attempts)
        .bind(op.create_time)
        .bind(i64::from(leased && unrestricted))
        .bind(i64::from(new.owner_limit))
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        let mut waiting = None;
        if !unrestricted {
            self.insert_keys(conn, op.id, &new.keys, op.create_time)
                .await?;
            waiting = self.admit_new(conn, op.id, leased, op.create_time).await?;
        }
        if new.job == JobStart::Queued {
            self.notify(conn, JOBS_CHANNEL, &sid).await?;
        }
        let lease = match &new.job {
            JobStart::Queued => None,
            JobStart::Leased { owner, .. } => Some(Lease {
                operation_id: op.id,
                token,
                owner: owner.clone(),
                attempts,
            }),
        };
        let mut created = op.clone();
        created.last_sequence = 1;
        created.attempts = attempts;
        if let Some(w) = &waiting {
            created.last_sequence = w.sequence;
            created.message = w.message.clone();
        }
        Ok(Some(Created::New {
            op: created,
            event,
            lease,
            waiting: waiting.map(Box::new),
        }))
    }

    /// The operation the owner created with `request_id` before.
    pub(super) async fn existing(
        &self,
        owner: &str,
        request_id: Option<&str>,
    ) -> Result<Operation> {
        let row = sqlx::query(&format!(
            "SELECT {OP_COLS} FROM {OP_FROM} WHERE o.owner = $1 AND o.request_id = $2"
        ))
        .bind(owner)
        .bind(request_id)
        .fetch_one(&self.read)
        .await
        .map_err(db_error)?;
        self.with_steps(&[row])
            .await?
            .pop()
            .ok_or_else(|| Error::internal("existing operation vanished"))
    }
}

#[async_trait]
impl OperationStore for SqlStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn create(&self, new: &NewOperation) -> Result<Created> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        match self.insert_operation(&mut tx, new).await? {
            Some(created) => {
                tx.commit().await.map_err(db_error)?;
                Ok(created)
            }
            None => {
                tx.rollback().await.map_err(db_error)?;
                self.existing(&new.op.owner, new.op.request_id.as_deref())
                    .await
                    .map(Created::Existing)
            }
        }
    }

    async fn get(&self, id: Uuid, owner: Option<&str>) -> Result<Option<Operation>> {
        let row = sqlx::query(&format!(
            "SELECT {OP_COLS} FROM {OP_FROM} WHERE o.operation_id = $1 AND ($2 = '' OR o.owner = $2)"
        ))
        .bind(id.to_string())
        .bind(owner.unwrap_or(""))
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        match row {
            Some(row) => Ok(self.with_steps(&[row]).await?.pop()),
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        filter: &OpFilter,
        after: Option<&OpCursor>,
        limit: usize,
    ) -> Result<Vec<Operation>> {
        let rows = sqlx::query(&format!(
            "SELECT {OP_COLS} FROM {OP_FROM} \
             WHERE ($1 = '' OR o.owner = $1) AND ($2 = '' OR o.status = $2) AND ($3 = '' OR o.kind = $3) \
               AND ($4 = 0 OR (o.create_time, o.operation_id) < ($5, $6)) \
             ORDER BY o.create_time DESC, o.operation_id DESC LIMIT $7"
        ))
        .bind(filter.owner.as_deref().unwrap_or(""))
        .bind(filter.status.map_or("", OpStatus::as_str))
        .bind(filter.kind.as_deref().unwrap_or(""))
        .bind(i64::from(after.is_some()))
        .bind(after.map_or(0, |c| c.0))
        .bind(after.map(|c| c.1.to_string()).unwrap_or_default())
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        self.with_steps(&rows).await
    }

    async fn events(&self, id: Uuid, after: i64, limit: usize) -> Result<Vec<Event>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLS} FROM operation_events WHERE operation_id = $1 AND sequence > $2 \
             ORDER BY sequence LIMIT $3"
        ))
        .bind(id.to_string())
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn record(&self, id: Uuid, fence: Option<&Lease>, change: &Change) -> Result<Recorded> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        let recorded = self.record_in(&mut tx, id, fence, change).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(recorded)
    }

    async fn record_all(
        &self,
        id: Uuid,
        fence: Option<&Lease>,
        changes: &[Change],
    ) -> Result<Vec<Recorded>> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        let mut recorded = Vec::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            // The lease is held (share-locked) from the first check to the commit.
            let fence = if i == 0 { fence } else { None };
            recorded.push(self.record_in(&mut tx, id, fence, change).await?);
        }
        tx.commit().await.map_err(db_error)?;
        Ok(recorded)
    }

    async fn checkpoint(&self, lease: &Lease, state: &serde_json::Value) -> Result<()> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        self.hold_lease(&mut tx, lease).await?;
        let n = sqlx::query(
            "UPDATE operations SET state = $2 WHERE operation_id = $1 \
               AND status IN ('PENDING', 'RUNNING')",
        )
        .bind(lease.operation_id.to_string())
        .bind(to_json(state))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if n == 0 {
            return Err(self.refusal(&mut tx, lease.operation_id, None).await?);
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    async fn cancel(
        &self,
        id: Uuid,
        owner: Option<&str>,
        reason: &str,
        time: Micros,
    ) -> Result<Option<Event>> {
        let mut tx = self.write.begin().await.map_err(db_error)?;
        let row = sqlx::query(&format!(
            "SELECT status, cancel_requested FROM operations WHERE operation_id = $1 \
             AND ($2 = '' OR owner = $2){}",
            self.for_update()
        ))
        .bind(id.to_string())
        .bind(owner.unwrap_or(""))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("operation", id))?;
        let requested: i64 = row.try_get("cancel_requested").map_err(db_error)?;
        if status_col(&row)?.is_terminal() || requested != 0 {
            return Ok(None);
        }
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        let change = if take_unclaimed(&mut tx, id, time).await? {
            let message = format!("cancelled before it started{why}");
            skip_pending_steps(&mut tx, id, &message).await?;
            // No step ran, so no compensation will: what the operation was to provision
            // ends with it, in this transaction.
            super::provisioning::cancel_pending_subscriptions(&mut tx, id, &message, time).await?;
            Change {
                status: Some(OpStatus::Cancelled),
                error: Some(OperationError {
                    step: None,
                    message: message.clone(),
                    compensation_errors: Vec::new(),
                }),
                cancel_requested: true,
                ..Change::new(EventType::Finished, message, time)
            }
        } else {
            Change {
                cancel_requested: true,
                ..Change::new(
                    EventType::CancelRequested,
                    format!("cancellation requested{why}"),
                    time,
                )
            }
        };
        let recorded = self.record_in(&mut tx, id, None, &change).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(recorded.event))
    }

    async fn retry(&self, id: Uuid, retry: &Retry) -> Result<Created> {
        let sid = id.to_string();
        let mut tx = self.write.begin().await.map_err(db_error)?;
        let row = sqlx::query(&format!(
            "SELECT status, last_sequence, progress_percent FROM operations WHERE operation_id = $1 \
             AND ($2 = '' OR owner = $2){}",
            self.for_update()
        ))
        .bind(&sid)
        .bind(retry.owner.as_deref().unwrap_or(""))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("operation", id))?;
        if let Some(request_id) = &retry.request_id {
            let seen: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM operation_retries WHERE operation_id = $1 AND request_id = $2",
            )
            .bind(&sid)
            .bind(request_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
            if seen > 0 {
                tx.rollback().await.map_err(db_error)?;
                let op = self.get(id, None).await?;
                return op
                    .map(Created::Existing)
                    .ok_or_else(|| Error::not_found("operation", id));
            }
        }
        let status = status_col(&row)?;
        if !matches!(status, OpStatus::Failed | OpStatus::Cancelled) {
            return Err(retry_refused(id, status));
        }
        let sequence: i64 = row.try_get("last_sequence").map_err(db_error)?;
        let percent: i64 = row.try_get("progress_percent").map_err(db_error)?;
        if sequence != retry.expected_sequence {
            return Err(Error::Conflict(format!(
                "operation {id} changed while its retry was planned; retry again"
            )));
        }
        if let Some(request_id) = &retry.request_id {
            sqlx::query(
                "INSERT INTO operation_retries (operation_id, request_id, retry_time) VALUES ($1, $2, $3)",
            )
            .bind(&sid)
            .bind(request_id)
            .bind(retry.time)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        // Out of the terminal status the state machine never leaves: only a retry does.
        sqlx::query(
            "UPDATE operations SET status = 'PENDING', message = $2, error = NULL, \
               cancel_requested = 0, end_time = NULL, deadline = $3, update_time = $4, \
               last_sequence = last_sequence + 1 WHERE operation_id = $1",
        )
        .bind(&sid)
        .bind(&retry.message)
        .bind(retry.deadline)
        .bind(retry.time)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query(
            "UPDATE operation_steps SET status = 'PENDING', detail = '', end_time = NULL \
             WHERE operation_id = $1 AND step_index >= $2",
        )
        .bind(&sid)
        .bind(retry.from_step)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let (state, owner, expires, attempts) = match &retry.job {
            JobStart::Queued => ("queued", "", 0, 0),
            JobStart::Leased { owner, expires } => ("leased", owner.as_str(), *expires, 1),
        };
        let leased = matches!(retry.job, JobStart::Leased { .. });
        let job = sqlx::query(
            "UPDATE jobs SET state = $2, lease_owner = $3, \
               lease_token = lease_token + CASE WHEN $4 = 1 THEN 1 ELSE 0 END, \
               lease_expires = $5, attempts = $6, available_time = $7, update_time = $7, \
               admitted = CASE WHEN $4 = 1 AND owner_limit = 0 AND $8 = 0 THEN 1 ELSE 0 END \
             WHERE operation_id = $1 RETURNING lease_token, owner_limit",
        )
        .bind(&sid)
        .bind(state)
        .bind(owner)
        .bind(i64::from(leased))
        .bind(expires)
        .bind(attempts)
        .bind(retry.time)
        .bind(retry.keys.len() as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let token: i64 = job.try_get("lease_token").map_err(db_error)?;
        let owner_limit: i64 = job.try_get("owner_limit").map_err(db_error)?;
        let event = Event {
            operation_id: id,
            sequence: sequence + 1,
            time: retry.time,
            kind: EventType::Retried,
            step: String::new(),
            phase: String::new(),
            status: OpStatus::Pending,
            step_status: None,
            percent,
            message: retry.message.clone(),
        };
        insert_event(&mut tx, &event).await?;
        self.notify(&mut tx, OPS_CHANNEL, &sid).await?;
        // The retry queues behind the key's current holders and waiters: it arrives now.
        let mut waiting = None;
        if !retry.keys.is_empty() || owner_limit > 0 {
            self.insert_keys(&mut tx, id, &retry.keys, retry.time)
                .await?;
            waiting = self.admit_new(&mut tx, id, leased, retry.time).await?;
        }
        if !leased {
            self.notify(&mut tx, JOBS_CHANNEL, &sid).await?;
        }
        tx.commit().await.map_err(db_error)?;
        let op = self
            .get(id, None)
            .await?
            .ok_or_else(|| Error::internal("retried operation vanished"))?;
        let lease = leased.then(|| Lease {
            operation_id: id,
            token,
            owner: owner.to_string(),
            attempts,
        });
        Ok(Created::New {
            op,
            event,
            lease,
            waiting: waiting.map(Box::new),
        })
    }

    async fn hints(&self, every: Duration) -> Option<BoxStream<'static, Hint>> {
        if self.backend != Backend::Postgres {
            // SQLite cannot announce, but other processes may share the file: one read of
            // the event log's newest row id per interval says whether anything moved.
            let read = self.read.clone();
            let polled = fanout::polled(every, move || {
                let read = read.clone();
                async move {
                    sqlx::query("SELECT COALESCE(MAX(rowid), 0) AS n FROM operation_events")
                        .fetch_one(&read)
                        .await
                        .and_then(|r| r.try_get::<i64, _>("n"))
                        .map_err(db_error)
                }
            });
            return Some(
                polled
                    .filter_map(|n| async move { (n == Notice::Moved).then_some(Hint::Resync) })
                    .boxed(),
            );
        }
        let me = self.replica.clone();
        let listener = fanout::postgres(self.url.clone(), &[OPS_CHANNEL, JOBS_CHANNEL], every);
        Some(
            listener
                .filter_map(move |n| {
                    let hint = match n {
                        Notice::Message { channel, payload } => {
                            let (from, what) = payload.split_once(' ').unwrap_or(("", &payload));
                            if from == me {
                                None
                            } else if channel == JOBS_CHANNEL {
                                Some(Hint::Jobs)
                            } else {
                                Uuid::parse_str(what).ok().map(Hint::Operation)
                            }
                        }
                        // Whatever was announced while nobody listened is read again.
                        Notice::Listening | Notice::Moved => Some(Hint::Resync),
                        Notice::Lost => None,
                    };
                    async move { hint }
                })
                .boxed(),
        )
    }
}

/// Ends the job if no worker claimed it yet; `true` when it did (the operation never ran).
async fn take_unclaimed(conn: &mut AnyConnection, id: Uuid, time: Micros) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE jobs SET state = 'done', update_time = $2 WHERE operation_id = $1 AND state = 'queued'",
    )
    .bind(id.to_string())
    .bind(time)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?
    .rows_affected();
    Ok(n == 1)
}

async fn skip_pending_steps(conn: &mut AnyConnection, id: Uuid, detail: &str) -> Result<()> {
    sqlx::query(
        "UPDATE operation_steps SET status = 'SKIPPED', detail = $2 \
         WHERE operation_id = $1 AND status = 'PENDING'",
    )
    .bind(id.to_string())
    .bind(detail)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

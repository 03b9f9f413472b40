//! How one [`Change`] is written, inside the caller's transaction: the lease is checked
//! (and held), the operation row moves (guarded by its state machine), the step moves
//! (guarded by its own), the event is appended with the sequence the row handed out, a
//! terminal status finishes the job and frees its concurrency keys, and other replicas get
//! a hint at commit.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{db_error, rows::status_col, sql_list, to_json, SqlStore, OPS_CHANNEL};
use crate::{
    domain::{
        engine::{
            operation::{Event, OpStatus, StepStatus},
            ports::{Change, Lease, Recorded, StepChange},
        },
        Micros,
    },
    error::{Error, Result},
};

/// The operation row after a change: what its event reports.
struct Moved {
    sequence: i64,
    status: OpStatus,
    percent: i64,
    cancel_requested: bool,
}

impl SqlStore {
    /// The body of [`OperationStore::record`](crate::domain::engine::ports::OperationStore::record).
    pub(super) async fn record_in(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        fence: Option<&Lease>,
        c: &Change,
    ) -> Result<Recorded> {
        if let Some(lease) = fence {
            self.hold_lease(conn, lease).await?;
        }
        let (event, cancel_requested) = self.append(conn, id, c).await?;
        let mut announced = Vec::new();
        if event.status.is_terminal() {
            finish_job(conn, id, c.time).await?;
            announced = self.release_keys(conn, id, c.time).await?;
        }
        Ok(Recorded {
            event,
            cancel_requested,
            announced,
        })
    }

    /// Moves the operation and its step, appends the event and hints other replicas:
    /// a change with nothing more to it (the job and keys are the caller's). Returns the
    /// event and whether a cancellation was requested.
    pub(super) async fn append(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        c: &Change,
    ) -> Result<(Event, bool)> {
        let moved = self.move_operation(conn, id, c).await?;
        let step_status = match &c.step {
            Some(s) => move_step(conn, id, s, c.time).await?,
            None => None,
        };
        let event = Event {
            operation_id: id,
            sequence: moved.sequence,
            time: c.time,
            kind: c.event,
            step: c.step.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            phase: c.step.as_ref().map(|s| s.phase.clone()).unwrap_or_default(),
            status: moved.status,
            step_status,
            percent: moved.percent,
            message: c.message.clone(),
        };
        insert_event(conn, &event).await?;
        self.notify(conn, OPS_CHANNEL, &id.to_string()).await?;
        Ok((event, moved.cancel_requested))
    }

    /// Applies the change to the operation row and takes the next sequence. The guard
    /// comes from the domain's state machine: the row moves only from a status that may
    /// move to the requested one (any non-terminal one when the status stays).
    async fn move_operation(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        c: &Change,
    ) -> Result<Moved> {
        let from = sql_list(
            OpStatus::ALL
                .iter()
                .filter(|s| c.status.map_or(!s.is_terminal(), |n| s.can_move_to(n)))
                .map(|s| s.as_str()),
        );
        let row = sqlx::query(&format!(
            "UPDATE operations SET \
               status = COALESCE($2, status), \
               progress_percent = CASE WHEN $3 > progress_percent THEN $3 ELSE progress_percent END, \
               message = $4, \
               state = COALESCE($5, state), \
               result = COALESCE($6, result), \
               error = COALESCE($7, error), \
               cancel_requested = CASE WHEN $8 = 1 THEN 1 ELSE cancel_requested END, \
               start_time = CASE WHEN start_time IS NULL AND COALESCE($2, '') = 'RUNNING' THEN $9 ELSE start_time END, \
               end_time = CASE WHEN COALESCE($2, '') IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN $9 ELSE end_time END, \
               update_time = $9, \
               last_sequence = last_sequence + 1 \
             WHERE operation_id = $1 AND status IN ({from}) \
             RETURNING last_sequence, status, progress_percent, cancel_requested"
        ))
        .bind(id.to_string())
        .bind(c.status.map(OpStatus::as_str))
        .bind(c.percent)
        .bind(&c.message)
        .bind(c.state.as_ref().map(to_json))
        .bind(c.result.as_ref().map(to_json))
        .bind(c.error.as_ref().map(to_json))
        .bind(i64::from(c.cancel_requested))
        .bind(c.time)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            return Err(self.refusal(conn, id, c.status).await?);
        };
        let cancel_requested: i64 = row.try_get("cancel_requested").map_err(db_error)?;
        Ok(Moved {
            sequence: row.try_get("last_sequence").map_err(db_error)?,
            status: status_col(&row)?,
            percent: row.try_get("progress_percent").map_err(db_error)?,
            cancel_requested: cancel_requested != 0,
        })
    }
}

/// Moves the step the change is about, if it moves it, guarded by the step's state
/// machine; returns the status it moved to.
async fn move_step(
    conn: &mut AnyConnection,
    id: Uuid,
    s: &StepChange,
    time: Micros,
) -> Result<Option<StepStatus>> {
    let Some(u) = &s.update else {
        return Ok(None);
    };
    let from: Vec<&str> = StepStatus::ALL
        .iter()
        .filter(|from| from.can_move_to(u.status))
        .map(|from| from.as_str())
        .collect();
    if from.is_empty() {
        return Err(Error::Precondition(format!(
            "no step ever moves to {}",
            u.status.as_str()
        )));
    }
    let n = sqlx::query(&format!(
        "UPDATE operation_steps SET status = $3, detail = COALESCE($4, detail), \
           start_time = CASE WHEN $5 = 1 THEN $7 ELSE start_time END, \
           attempt = attempt + $5, \
           end_time = CASE WHEN $6 = 1 THEN $7 ELSE end_time END \
         WHERE operation_id = $1 AND step_index = $2 AND status IN ({})",
        sql_list(from)
    ))
    .bind(id.to_string())
    .bind(s.index)
    .bind(u.status.as_str())
    .bind(u.detail.as_deref())
    .bind(i64::from(u.started))
    .bind(i64::from(u.ended))
    .bind(time)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?
    .rows_affected();
    if n != 1 {
        return Err(Error::Precondition(format!(
            "step {} of operation {id} is already finished",
            s.name
        )));
    }
    Ok(Some(u.status))
}

pub(super) async fn insert_event(conn: &mut AnyConnection, e: &Event) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO operation_events ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        super::rows::EVENT_COLS
    ))
    .bind(e.operation_id.to_string())
    .bind(e.sequence)
    .bind(e.time)
    .bind(e.kind.as_str())
    .bind(&e.step)
    .bind(&e.phase)
    .bind(e.status.as_str())
    .bind(e.step_status.map_or("", StepStatus::as_str))
    .bind(e.percent)
    .bind(&e.message)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// A finished operation's job is done: nobody claims it again, and it no longer counts
/// against its owner's limit.
async fn finish_job(conn: &mut AnyConnection, id: Uuid, time: Micros) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'done', admitted = 0, blocked = 0, update_time = $2 WHERE operation_id = $1",
    )
    .bind(id.to_string())
    .bind(time)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

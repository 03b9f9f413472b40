//! Reading rows back into domain types. A row that does not parse is corrupt: an
//! internal error that names the column, logged where it is found.

use std::collections::HashMap;

use sqlx::{any::AnyRow, Row};
use uuid::Uuid;

use super::{corrupt, db_error, SqlStore};
use crate::{
    domain::engine::operation::{
        Event, EventType, ExecutionMode, OpStatus, Operation, OperationError, Step, StepStatus,
    },
    error::Result,
};

pub(super) const OP_COLS: &str =
    "o.operation_id, o.kind, o.status, o.progress_percent, o.message, o.owner, \
     o.execution_mode, o.request_id, o.params, o.state, o.result, o.error, o.cancel_requested, \
     o.last_sequence, o.create_time, o.update_time, o.start_time, o.end_time, o.deadline, o.timeout_micros, \
     COALESCE(j.attempts, 0) AS attempts";
pub(super) const OP_FROM: &str = "operations o LEFT JOIN jobs j ON j.operation_id = o.operation_id";
pub(super) const EVENT_COLS: &str =
    "operation_id, sequence, time, type, step, phase, status, step_status, percent, message";

pub(super) fn json_col<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &str,
) -> Result<Option<T>> {
    let s: Option<String> = row.try_get(col).map_err(db_error)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(col, e)))
        .transpose()
}

pub(super) fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col).map_err(db_error)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(col, e))
}

pub(super) fn status_col(row: &AnyRow) -> Result<OpStatus> {
    let s: String = row.try_get("status").map_err(db_error)?;
    OpStatus::parse(&s).ok_or_else(|| corrupt("status", &s))
}

pub(super) fn op_from_row(row: &AnyRow) -> Result<Operation> {
    let mode: String = row.try_get("execution_mode").map_err(db_error)?;
    let cancel: i64 = row.try_get("cancel_requested").map_err(db_error)?;
    Ok(Operation {
        id: uuid_col(row, "operation_id")?,
        kind: row.try_get("kind").map_err(db_error)?,
        status: status_col(row)?,
        progress_percent: row.try_get("progress_percent").map_err(db_error)?,
        message: row.try_get("message").map_err(db_error)?,
        owner: row.try_get("owner").map_err(db_error)?,
        execution_mode: ExecutionMode::parse(&mode)
            .ok_or_else(|| corrupt("execution_mode", &mode))?,
        request_id: row.try_get("request_id").map_err(db_error)?,
        params: json_col(row, "params")?.unwrap_or(serde_json::Value::Null),
        state: json_col(row, "state")?.unwrap_or(serde_json::Value::Null),
        result: json_col::<serde_json::Value>(row, "result")?,
        error: json_col::<OperationError>(row, "error")?,
        cancel_requested: cancel != 0,
        last_sequence: row.try_get("last_sequence").map_err(db_error)?,
        attempts: row.try_get("attempts").map_err(db_error)?,
        create_time: row.try_get("create_time").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        start_time: row.try_get("start_time").map_err(db_error)?,
        end_time: row.try_get("end_time").map_err(db_error)?,
        deadline: row.try_get("deadline").map_err(db_error)?,
        timeout: row.try_get("timeout_micros").map_err(db_error)?,
        steps: Vec::new(),
    })
}

pub(super) fn event_from_row(row: &AnyRow) -> Result<Event> {
    let kind: String = row.try_get("type").map_err(db_error)?;
    let step_status: String = row.try_get("step_status").map_err(db_error)?;
    Ok(Event {
        operation_id: uuid_col(row, "operation_id")?,
        sequence: row.try_get("sequence").map_err(db_error)?,
        time: row.try_get("time").map_err(db_error)?,
        kind: EventType::parse(&kind).ok_or_else(|| corrupt("event type", &kind))?,
        step: row.try_get("step").map_err(db_error)?,
        phase: row.try_get("phase").map_err(db_error)?,
        status: status_col(row)?,
        step_status: if step_status.is_empty() {
            None
        } else {
            Some(
                StepStatus::parse(&step_status)
                    .ok_or_else(|| corrupt("step status", &step_status))?,
            )
        },
        percent: row.try_get("percent").map_err(db_error)?,
        message: row.try_get("message").map_err(db_error)?,
    })
}

impl SqlStore {
    async fn steps_of(&self, ids: &[String]) -> Result<Vec<(String, Step)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT operation_id, step_index, name, phase, status, detail, start_time, end_time, attempt \
             FROM operation_steps WHERE operation_id IN ({}) ORDER BY operation_id, step_index",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id.as_str());
        }
        let rows = q.fetch_all(&self.read).await.map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status").map_err(db_error)?;
                Ok((
                    r.try_get("operation_id").map_err(db_error)?,
                    Step {
                        index: r.try_get("step_index").map_err(db_error)?,
                        name: r.try_get("name").map_err(db_error)?,
                        phase: r.try_get("phase").map_err(db_error)?,
                        status: StepStatus::parse(&status)
                            .ok_or_else(|| corrupt("step status", &status))?,
                        detail: r.try_get("detail").map_err(db_error)?,
                        start_time: r.try_get("start_time").map_err(db_error)?,
                        end_time: r.try_get("end_time").map_err(db_error)?,
                        attempt: r.try_get("attempt").map_err(db_error)?,
                    },
                ))
            })
            .collect()
    }

    /// Operations of `rows` with their steps.
    pub(super) async fn with_steps(&self, rows: &[AnyRow]) -> Result<Vec<Operation>> {
        let mut ops = rows.iter().map(op_from_row).collect::<Result<Vec<_>>>()?;
        let ids: Vec<String> = ops.iter().map(|o| o.id.to_string()).collect();
        let mut by_op: HashMap<String, Vec<Step>> = Default::default();
        for (id, step) in self.steps_of(&ids).await? {
            by_op.entry(id).or_default().push(step);
        }
        for (op, id) in ops.iter_mut().zip(&ids) {
            op.steps = by_op.remove(id).unwrap_or_default();
        }
        Ok(ops)
    }
}

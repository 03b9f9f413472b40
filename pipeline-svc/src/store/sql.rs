//! The SQL store: SQLite and Postgres through sqlx's `Any` driver, with `$n` placeholders
//! both accept. Dialect differences (row locks, SKIP LOCKED, notifications, pool shape)
//! are switched on [`Backend`], shared with registry-svc through capstan-server.

mod provisioning;

use std::path::Path;

use async_trait::async_trait;
use capstan_server::db::{Backend, DbFailure};
use futures::{stream::BoxStream, StreamExt};
use sqlx::{any::AnyRow, AnyConnection, AnyPool, Executor, Row};
use uuid::Uuid;

use super::{
    graphs::{graphs_dir, SqlGraphDatabases},
    Change, Created, Hint, JobStart, Lease, NewOperation, OpCursor, OpFilter, OperationStore,
    Recorded,
};
use crate::{
    domain::{
        operation::{
            Event, EventType, ExecutionMode, OpStatus, Operation, OperationError, OperationResult,
            Step, StepStatus,
        },
        Micros,
    },
    error::{Error, Result},
};

const OPS_CHANNEL: &str = "capstan_operations";
const JOBS_CHANNEL: &str = "capstan_jobs";

/// Maps a database error, logging it where it becomes a status.
fn db_error(e: sqlx::Error) -> Error {
    match capstan_server::db::classify(&e) {
        DbFailure::Unavailable => {
            tracing::warn!(error = %e, "database unavailable");
            Error::Unavailable(format!("database unavailable: {e}"))
        }
        DbFailure::Conflict => Error::Aborted(format!("a concurrent transaction won: {e}")),
        DbFailure::UniqueViolation | DbFailure::Other => {
            tracing::error!(error = %e, "database error");
            Error::Internal(format!("database error: {e}"))
        }
    }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    tracing::error!(what, %detail, "corrupt row");
    Error::Internal(format!("stored {what} is unreadable: {detail}"))
}

pub struct SqlStore {
    read: AnyPool,
    write: AnyPool,
    backend: Backend,
    url: String,
    /// Tags this process's notifications so that it does not wake itself.
    replica: String,
}

/// On Postgres the pipeline's tables (and its migration history) live in their own
/// schema, so that registry-svc and pipeline-svc may share one database.
pub const POSTGRES_SCHEMA: &str = "capstan_pipeline";

async fn ensure_schema(url: &str) -> Result<()> {
    let mut conn = <AnyConnection as sqlx::Connection>::connect(url)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot connect to the database: {e}")))?;
    match conn
        .execute(format!("CREATE SCHEMA IF NOT EXISTS {POSTGRES_SCHEMA}").as_str())
        .await
    {
        Ok(_) => Ok(()),
        // Replicas starting together race on the catalog; the schema exists either way.
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            Ok(())
        }
        Err(e) => Err(db_error(e)),
    }
}

/// Opens a pool whose every connection gets WAL and a busy timeout (SQLite) or the
/// pipeline's schema (Postgres).
async fn pool(url: &str, backend: Backend, max: u32) -> Result<AnyPool> {
    capstan_server::db::pool(url, backend, max, Some(POSTGRES_SCHEMA))
        .await
        .map_err(|e| Error::Unavailable(format!("cannot connect to the database: {e}")))
}

impl SqlStore {
    /// Connects and applies the embedded migrations of the backend. Safe when several
    /// replicas start at once: Postgres migrations run under sqlx's advisory lock.
    pub async fn connect(url: &str, replica: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| {
            Error::invalid("database_url", "must start with sqlite: or postgres://")
        })?;
        if backend == Backend::Postgres {
            ensure_schema(url).await?;
        }
        let (read, write) = match backend {
            // SQLite allows one writer: a single write connection queues writers in the
            // process instead of failing them with SQLITE_BUSY; WAL lets readers go on.
            Backend::Sqlite => {
                let write = pool(url, backend, 1).await?;
                (pool(url, backend, 4).await?, write)
            }
            // Separate pools: however many watchers read, operations keep connections to
            // write their progress.
            Backend::Postgres => (pool(url, backend, 12).await?, pool(url, backend, 8).await?),
        };
        capstan_server::db::migrate(
            &write,
            backend,
            &sqlx::migrate!("./migrations/sqlite"),
            &sqlx::migrate!("./migrations/postgres"),
        )
        .await
        .map_err(|e| Error::Unavailable(format!("database migration failed: {e}")))?;
        Ok(Self {
            read,
            write,
            backend,
            url: url.to_string(),
            replica: replica.to_string(),
        })
    }

    /// The graphs' databases that go with this store: SQLite files under
    /// `{data_dir}/graphs`, or one schema per graph in this Postgres database.
    pub fn graph_databases(&self, data_dir: &Path) -> SqlGraphDatabases {
        match self.backend {
            Backend::Sqlite => SqlGraphDatabases::Sqlite {
                dir: graphs_dir(data_dir),
            },
            Backend::Postgres => SqlGraphDatabases::Postgres {
                pool: self.write.clone(),
            },
        }
    }

    fn skip_locked(&self) -> &'static str {
        match self.backend {
            // One write connection: claims are serialized anyway.
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Checks that `lease` is current and keeps it so until the transaction ends: on
    /// Postgres the job row is share-locked, so a claim cannot slip in between this
    /// check and the write it fences (SQLite's single writer serializes them anyway).
    async fn hold_lease(&self, conn: &mut AnyConnection, lease: &Lease) -> Result<()> {
        let held = sqlx::query(&format!(
            "SELECT lease_token FROM jobs WHERE operation_id = $1 AND lease_token = $2 \
             AND state = 'leased'{}",
            match self.backend {
                Backend::Sqlite => "",
                Backend::Postgres => " FOR SHARE",
            }
        ))
        .bind(lease.operation_id.to_string())
        .bind(lease.token)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        match held {
            Some(_) => Ok(()),
            None => Err(self.refusal(conn, lease.operation_id, None).await?),
        }
    }

    fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Wakes other replicas (Postgres only), inside the caller's transaction so that the
    /// hint is sent only if the change commits.
    async fn notify(&self, conn: &mut AnyConnection, channel: &str, what: &str) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(format!("{} {what}", self.replica))
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Tells why a guarded write touched no row: the operation is gone, finished, cannot
    /// make the requested move, or (when none of those) is leased by another worker.
    async fn refusal(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        requested: Option<OpStatus>,
    ) -> Result<Error> {
        let row = sqlx::query("SELECT status FROM operations WHERE operation_id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(Error::NotFound(format!("operation {id} does not exist")));
        };
        let status = status_col(&row)?;
        Ok(match requested {
            _ if status.is_terminal() => Error::FailedPrecondition(format!(
                "operation {id} is already {}; it cannot change",
                status.as_str()
            )),
            Some(next) if !status.can_move_to(next) => Error::FailedPrecondition(format!(
                "operation {id} cannot move from {} to {}",
                status.as_str(),
                next.as_str()
            )),
            _ => Error::LeaseLost(format!("operation {id} is leased by another worker now")),
        })
    }

    /// The body of [`OperationStore::record`], inside the caller's transaction.
    async fn record_in(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        fence: Option<&Lease>,
        c: &Change,
    ) -> Result<Recorded> {
        if let Some(lease) = fence {
            self.hold_lease(conn, lease).await?;
        }
        let sid = id.to_string();
        // The guards come from the domain's state machines: a row moves only from a
        // status that may move to the requested one.
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
        .bind(&sid)
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
        let sequence: i64 = row.try_get("last_sequence").map_err(db_error)?;
        let status = status_col(&row)?;
        let percent: i64 = row.try_get("progress_percent").map_err(db_error)?;
        let cancel_requested: i64 = row.try_get("cancel_requested").map_err(db_error)?;

        let (mut step, mut phase, mut step_status) = (String::new(), String::new(), None);
        if let Some(s) = &c.step {
            step.clone_from(&s.name);
            phase.clone_from(&s.phase);
            if let Some(u) = &s.update {
                let from: Vec<&str> = StepStatus::ALL
                    .iter()
                    .filter(|from| from.can_move_to(u.status))
                    .map(|from| from.as_str())
                    .collect();
                if from.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
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
                .bind(&sid)
                .bind(s.index)
                .bind(u.status.as_str())
                .bind(u.detail.as_deref())
                .bind(i64::from(u.started))
                .bind(i64::from(u.ended))
                .bind(c.time)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?
                .rows_affected();
                if n != 1 {
                    return Err(Error::FailedPrecondition(format!(
                        "step {} of operation {id} is already finished",
                        s.name
                    )));
                }
                step_status = Some(u.status);
            }
        }
        let event = Event {
            operation_id: id,
            sequence,
            time: c.time,
            kind: c.event,
            step,
            phase,
            status,
            step_status,
            percent,
            message: c.message.clone(),
        };
        insert_event(conn, &event).await?;
        if status.is_terminal() {
            sqlx::query("UPDATE jobs SET state = 'done', update_time = $2 WHERE operation_id = $1")
                .bind(&sid)
                .bind(c.time)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        self.notify(conn, OPS_CHANNEL, &sid).await?;
        Ok(Recorded {
            event,
            cancel_requested: cancel_requested != 0,
        })
    }

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
             create_time, update_time) VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, $9, $10, 0, 1, $11, $11) \
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
        sqlx::query(
            "INSERT INTO jobs (job_id, idempotency_key, operation_id, state, lease_owner, lease_token, \
             lease_expires, attempts, available_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
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
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
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
        Ok(Some(Created::New {
            op: created,
            event,
            lease,
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
            .ok_or_else(|| Error::Internal("existing operation vanished".into()))
    }

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
    async fn with_steps(&self, rows: &[AnyRow]) -> Result<Vec<Operation>> {
        let mut ops = rows.iter().map(op_from_row).collect::<Result<Vec<_>>>()?;
        let ids: Vec<String> = ops.iter().map(|o| o.id.to_string()).collect();
        let mut by_op: std::collections::HashMap<String, Vec<Step>> = Default::default();
        for (id, step) in self.steps_of(&ids).await? {
            by_op.entry(id).or_default().push(step);
        }
        for (op, id) in ops.iter_mut().zip(&ids) {
            op.steps = by_op.remove(id).unwrap_or_default();
        }
        Ok(ops)
    }
}

const OP_COLS: &str = "o.operation_id, o.kind, o.status, o.progress_percent, o.message, o.owner, \
     o.execution_mode, o.request_id, o.params, o.state, o.result, o.error, o.cancel_requested, \
     o.last_sequence, o.create_time, o.update_time, o.start_time, o.end_time, \
     COALESCE(j.attempts, 0) AS attempts";
const OP_FROM: &str = "operations o LEFT JOIN jobs j ON j.operation_id = o.operation_id";
const EVENT_COLS: &str =
    "operation_id, sequence, time, type, step, phase, status, step_status, percent, message";

/// `'A', 'B'` from status names (constants of the domain, never user input).
fn sql_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items
        .into_iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize a stored value");
        "null".into()
    })
}

fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<Option<T>> {
    let s: Option<String> = row.try_get(col).map_err(db_error)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(col, e)))
        .transpose()
}

fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col).map_err(db_error)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(col, e))
}

fn status_col(row: &AnyRow) -> Result<OpStatus> {
    let s: String = row.try_get("status").map_err(db_error)?;
    OpStatus::parse(&s).ok_or_else(|| corrupt("status", &s))
}

fn op_from_row(row: &AnyRow) -> Result<Operation> {
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
        result: json_col::<OperationResult>(row, "result")?,
        error: json_col::<OperationError>(row, "error")?,
        cancel_requested: cancel != 0,
        last_sequence: row.try_get("last_sequence").map_err(db_error)?,
        attempts: row.try_get("attempts").map_err(db_error)?,
        create_time: row.try_get("create_time").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        start_time: row.try_get("start_time").map_err(db_error)?,
        end_time: row.try_get("end_time").map_err(db_error)?,
        steps: Vec::new(),
    })
}

fn event_from_row(row: &AnyRow) -> Result<Event> {
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

async fn insert_event(conn: &mut AnyConnection, e: &Event) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO operation_events ({EVENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
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
        let sid = id.to_string();
        let mut tx = self.write.begin().await.map_err(db_error)?;
        let row = sqlx::query(&format!(
            "SELECT status, cancel_requested FROM operations WHERE operation_id = $1 \
             AND ($2 = '' OR owner = $2){}",
            self.for_update()
        ))
        .bind(&sid)
        .bind(owner.unwrap_or(""))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::NotFound(format!("operation {id} does not exist")))?;
        let requested: i64 = row.try_get("cancel_requested").map_err(db_error)?;
        if status_col(&row)?.is_terminal() || requested != 0 {
            return Ok(None);
        }
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        let unclaimed = sqlx::query(
            "UPDATE jobs SET state = 'done', update_time = $2 WHERE operation_id = $1 AND state = 'queued'",
        )
        .bind(&sid)
        .bind(time)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected()
            == 1;
        let change = if unclaimed {
            let message = format!("cancelled before it started{why}");
            sqlx::query(
                "UPDATE operation_steps SET status = 'SKIPPED', detail = $2 \
                 WHERE operation_id = $1 AND status = 'PENDING'",
            )
            .bind(&sid)
            .bind(&message)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            // No step ran, so no compensation will: what the operation was to provision
            // ends with it, in this transaction.
            sqlx::query(
                "UPDATE subscriptions SET status = 'CANCELLED', reason = $2, update_time = $3 \
                 WHERE operation_id = $1 AND status = 'PENDING'",
            )
            .bind(&sid)
            .bind(format!("provisioning {message}"))
            .bind(time)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
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

    async fn hints(&self) -> Option<BoxStream<'static, Hint>> {
        if self.backend != Backend::Postgres {
            return None;
        }
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(&self.url).await?;
            l.listen_all([OPS_CHANNEL, JOBS_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let me = self.replica.clone();
        match listener.await {
            Ok(l) => Some(
                l.into_stream()
                    .filter_map(move |n| {
                        let hint = match n {
                            Ok(n) => {
                                let (from, what) =
                                    n.payload().split_once(' ').unwrap_or(("", n.payload()));
                                if from == me {
                                    None
                                } else if n.channel() == JOBS_CHANNEL {
                                    Some(Hint::Jobs)
                                } else {
                                    Uuid::parse_str(what).ok().map(Hint::Operation)
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "operation notification listener error; polling covers it");
                                None
                            }
                        };
                        async move { hint }
                    })
                    .boxed(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for operation changes; relying on polling");
                None
            }
        }
    }
}
